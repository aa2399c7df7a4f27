"""Renderers of the agent plane's results: the dispatch report, sessions, server status, abort
and teardown lines. They read results and decide nothing; every text through :func:`cell`."""
from __future__ import annotations

from typing import Any

from fleet.agent.review import files_summary
from fleet.cli.render import age_text, cell, first_line, lines_of, table, usage_cells
from fleet.ops.canary_rest import state_of

STATE_TEXT = {"sent": "SENT", "waiting_for_canary": "waiting for the canary"}


def dispatch_report(run: Any) -> str:
    """One host: the agent's answer, then a line of outcome, tokens, cost; many: a table."""
    if len(run.results) == 1 and run.results[0].ok and not run.results[0].waited:
        r = run.results[0]
        return cell(f"{r.host}: sent, session={r.session_id}; the agent works on: follow it with 'fleet wait "
                    f"--session {r.session_id}' (or fleet watch)") + (
                        "\n" + cell(f"worktree: {r.worktree} (branch {r.branch})") if r.worktree else "")
    if len(run.results) == 1:
        r = run.results[0]
        tok = r.tokens or {}
        head = (lines_of(r.answer) + "\n") if r.waited and r.answer else ""
        changed = "".join("\n  " + cell(f"{f['status'] or 'changed':<8} {f['file']} +{f['additions']} "
                                        f"-{f['deletions']}") for f in r.files)
        todo = "".join("\n  " + cell(f"[{t['status']}] {t['content']}") for t in r.todo)
        return (head + cell(f"{r.host}: {r.outcome.value} session={r.session_id or '-'} "
                            f"tokens={tok.get('total', '-')} (in {tok.get('input', '-')}, out "
                            f"{tok.get('output', '-')}) cost=${r.cost:.4f} duration={r.duration_ms / 1000:.1f}s")
                + ("\n" + cell(f"worktree: {r.worktree} (branch {r.branch})") if r.worktree else "")
                + (f"\nchanged:{changed}" if changed else "")
                + (f"\ntodo:{todo}" if todo else "") + ("\n" + cell(f"error: {r.error}") if r.error else ""))
    body = table([[r.host, STATE_TEXT.get(state_of(r), r.outcome.value), r.session_id or "-",
                   f"{r.duration_ms / 1000:.1f}s",
                   files_summary(r.files) or "-", first_line(r.answer, 50) or "-", first_line(r.error, 80)]
                  for r in run.results], ["HOST", "STATE", "SESSION", "DURATION", "CHANGED", "ANSWER", "ERROR"])
    files = [f for r in run.results for f in r.files]
    cost = sum(r.cost for r in run.results)
    toks = sum(int((r.tokens or {}).get("total") or 0) for r in run.results)
    held = [r.host for r in run.results if state_of(r) == "waiting_for_canary"]
    if held and all(not r.waited for r in run.results):
        sent = [r.host for r in run.results if state_of(r) == "sent"]
        why = next((n for n in run.notes if "waiting for the canary" in n), "")
        return body + "\n" + cell(f"{', '.join(sent) or 'no host'}: sent; {', '.join(held)}: waiting for the canary"
                                   + (f": {why.split('; ', 1)[-1]}" if why else "")
                                   + f"; follow them with 'fleet wait --dispatch {run.dispatch_id}' (or fleet watch)")
    if all(not r.waited for r in run.results):
        return body + (f"\n{len(run.results)} hosts; the agents work on: follow them with 'fleet wait --dispatch "
                       f"{run.dispatch_id}' (or fleet watch)")
    return body + (f"\ntotal: {len(run.results)} hosts, {files_summary(files) or 'no files changed'}, "
                   f"{toks} tokens, ${cost:.4f}")


def dispatch_json(run: Any) -> dict[str, Any]:
    """A dispatch run as JSON: its fields, and each host's ``state`` (sent, waiting_for_canary,
    not_sent, ended): a handed-over host is never reported as done."""
    d: dict[str, Any] = run.to_dict()
    for row, r in zip(d["results"], run.results, strict=True):
        row["state"] = state_of(r)
    return d


def sessions_table(rows: list[Any]) -> str:
    """``sessions``: one line per session."""
    return table([[r.host, r.repo or "-", r.session_id or "-", r.state + (f" ({r.waiting})" if r.waiting else ""),
                   age_text(r.age_s), *usage_cells({"tokens": r.tokens, "cost": r.cost}),
                   (r.machine or "yes") if r.fleet else "", r.branch or "-", r.title[:50]] for r in rows],
                 ["HOST", "REPO", "SESSION", "STATE", "AGE", "TOKENS", "COST", "FLEET (BY)", "WORKTREE BRANCH",
                  "TITLE"])


def status_table(servers: list[dict[str, Any]]) -> str:
    """``status``: health, version and round trip of each OpenCode server."""
    return table([[r["host"], "healthy" if r["healthy"] else "DOWN", r["version"] or "-", f"{r['ms']}ms",
                   r["url"], r["error"][:100]] for r in servers], ["HOST", "STATE", "VERSION", "RTT", "URL", "ERROR"])


def abort_line(host: str, aborted: list[str]) -> str:
    """``abort``: what was stopped."""
    return cell(f"{host}: aborted {len(aborted)} session(s)" + (": " + ", ".join(aborted) if aborted else ""))


def teardown_lines(out: list[Any]) -> str:
    """``teardown``: per host, what was aborted and deleted, or the error."""
    lines = []
    for r in out:
        if r.error:
            lines.append(cell(f"{r.host}: error: {r.error}"))
            continue
        lines.append(cell(f"{r.host}: aborted {len(r.aborted)}, deleted {len(r.deleted)} session(s)"))
        for w in r.worktrees:
            lines.append("  " + cell(f"worktree kept: {w['path']} (branch {w['branch'] or '-'}); remove it with: "
                                     f"fleet worktrees.remove --hosts {r.host} --repo {w['repo']} "
                                     f"--name {w['name']}"))
    return "\n".join(lines)

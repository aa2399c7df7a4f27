"""Operations over SSH under modes and gates: fanout (plain, canary, rolling batches), blow-away."""
from __future__ import annotations

import posixpath
import shlex
from typing import Any

from .errors import BadInput, Refused
from .fanout import FanoutOptions, FanoutRunner, OutputHook, ResultHook
from .inventory import Host
from .modes import Plan, guarded, parse_batch, parse_max_fail
from .results import FanoutOutcome, FanoutRun


def _run_plan(plan: Plan, command: Any, label: str, options: FanoutOptions | None,
              on_output: OutputHook | None, on_result: ResultHook | None, log_stream: Any,
              batch: str | None, max_fail: str | float | None) -> FanoutRun:
    runner = FanoutRunner(plan.inventory, label, options, on_output, on_result, log_stream, mode=plan.mode)
    runner.run.notes.extend(plan.notes)
    try:
        if plan.local:
            runner.add_local("local")
            return runner.run
        hosts = list(plan.hosts)
        if plan.canary is not None:
            c = plan.canary
            first = runner.run_hosts([c], command)[0]
            rest = [h for h in hosts if h.name != c.name]
            if not first.ok:
                if not runner.run.interrupted:
                    runner.skip(rest, FanoutOutcome.ABORTED,
                                f"not run: canary {c.name} ended {first.outcome.value}"
                                f"{': ' + first.error if first.error else ''}", "canary_failed")
                    runner.run.notes.append(f"canary {c.name} ended {first.outcome.value}; "
                                            f"{len(rest)} other host(s) were not touched")
                else:
                    runner.skip(rest, FanoutOutcome.ABORTED, "not started: the run was interrupted (Ctrl-C)",
                                "aborted")
                return runner.run
            hosts = rest
        size = parse_batch(batch, len(hosts))
        limit = parse_max_fail(max_fail)
        if size is None:
            runner.run_hosts(hosts, command)
            return runner.run
        done: list = []
        for i in range(0, len(hosts), size):
            chunk = hosts[i:i + size]
            done += runner.run_hosts(chunk, command)
            if runner.run.interrupted:
                runner.skip(hosts[i + size:], FanoutOutcome.ABORTED, "not started: the run was interrupted", "aborted")
                break
            failed = sum(1 for r in runner.run.results if not r.ok)
            total = len(runner.run.results)
            pct = 100.0 * failed / total if total else 0.0
            if limit is not None and pct > limit and i + size < len(hosts):
                left = hosts[i + size:]
                runner.skip(left, FanoutOutcome.ABORTED,
                            f"not run: {failed} of {total} hosts failed ({pct:.0f}%) > --max-fail {limit:g}%",
                            "max_fail")
                runner.run.notes.append(f"stopped after batch {i // size + 1}: {failed}/{total} failed "
                                        f"({pct:.0f}% > {limit:g}%); {len(left)} host(s) not touched")
                break
        return runner.run
    finally:
        runner.finish()


def _validate_fanout_flags(kw: dict[str, Any]) -> None:
    parse_batch(kw.get("batch"), 1)
    parse_max_fail(kw.get("max_fail"))


@guarded("fanout", validate=_validate_fanout_flags)
def fanout(plan: Plan, *, options: FanoutOptions | None = None, on_output: OutputHook | None = None,
           on_result: ResultHook | None = None, log_stream: Any = None, batch: str | None = None,
           max_fail: str | float | None = None) -> FanoutRun:
    """Run ``args['command']`` on the selected hosts under the mode (canary first, batches)."""
    cmd = plan.args["command"]
    return _run_plan(plan, cmd, cmd, options, on_output, on_result, log_stream, batch, max_fail)


def blow_away_command(path: str, root: str) -> str:
    """A POSIX-sh script that removes ``path`` only if, after resolving ``..`` and symlinks on
    the host, it lies strictly inside ``root`` (and is neither ``/`` nor ``~`` nor the root)."""
    def q(p: str) -> str:
        if p == "~":
            return '"$HOME"'
        if p.startswith("~/"):
            return '"$HOME"/' + shlex.quote(p[2:])
        return shlex.quote(p)
    return (
        f"root=$(cd -- {q(root)} 2>/dev/null && pwd -P) || "
        f"{{ echo \"refused: repos root {root} does not exist on this host\" >&2; exit 91; }}; "
        f"if [ -L {q(path)} ]; then echo \"refused: {path} is a symlink\" >&2; exit 92; fi; "
        f"if [ ! -e {q(path)} ]; then echo \"nothing to remove: {path} does not exist\"; exit 0; fi; "
        f"target=$(cd -- {q(path)} 2>/dev/null && pwd -P) || "
        f"{{ echo \"refused: {path} is not a directory\" >&2; exit 93; }}; "
        f"home=$(cd -- \"$HOME\" 2>/dev/null && pwd -P); "
        f"case \"$target\" in \"$root\"/?*) ;; *) echo \"refused: {path} resolves to $target, "
        f"not strictly inside $root\" >&2; exit 94;; esac; "
        f"if [ \"$target\" = / ] || [ \"$target\" = \"$home\" ] || [ \"$target\" = \"$root\" ]; then "
        f"echo \"refused: will not remove $target\" >&2; exit 95; fi; "
        f"rm -rf -- \"$target\" && echo \"removed $target\""
    )


def blow_away_paths(hosts: list[Host], repo: str) -> dict[str, tuple[str, str]]:
    """(path, root) per host, checked lexically before anything runs."""
    out: dict[str, tuple[str, str]] = {}
    missing = []
    for h in hosts:
        path = h.repo_path(repo)
        if path is None or h.repos_root is None:
            missing.append(h.name)
            continue
        root = h.repos_root.rstrip("/") or "/"
        norm = posixpath.normpath(path)
        nroot = posixpath.normpath(root)
        if nroot in ("/", "~") or norm in ("/", "~", nroot) or not norm.startswith(nroot.rstrip("/") + "/"):
            raise Refused(f"blow-away refused on {h.name}: {path} is not strictly inside the repos root "
                          f"{root} (after resolving '..'); nothing was removed on any host")
        out[h.name] = (path, root)
    if missing:
        raise BadInput(f"no path for repo '{repo}' on {', '.join(missing)}: add repos: {{root: /path}} "
                       f"(or repos: {{paths: {{{repo}: /path}}}}) for them in the inventory")
    return out


def _check_blow_away(plan: Plan) -> None:
    paths = blow_away_paths(plan.hosts, plan.args["repo"])
    plan.canary = None
    plan.notes.extend(f"{h}: removes {p} (root {r})" for h, (p, r) in paths.items())


@guarded("blow-away", local_ok=False, check=_check_blow_away)
def blow_away(plan: Plan, *, options: FanoutOptions | None = None, on_output: OutputHook | None = None,
              on_result: ResultHook | None = None, log_stream: Any = None) -> FanoutRun:
    """Remove ``args['repo']``'s working copy on the selected hosts (gated, strictly inside root)."""
    repo = plan.args["repo"]
    paths = blow_away_paths(plan.hosts, repo)
    plan.canary = None
    return _run_plan(plan, lambda h: blow_away_command(*paths[h.name]), f"blow-away {repo}", options,
                     on_output, on_result, log_stream, None, None)


def check_repo_name(repo: str) -> str:
    """Repo names are plain names (they become path components)."""
    import re
    if not repo or not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", repo) or repo in (".", ".."):
        raise BadInput(f"--repo '{repo}' is not a plain repo name: write e.g. --repo affordabot")
    return repo


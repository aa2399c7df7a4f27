"""Renderers: read result objects and print them. They decide nothing.

What hosts and servers say (remote output, session titles, agents' answers, errors) reaches a
terminal only escaped: every table cell and live line through :func:`cell` (no control
character, no newline: one row per result, nothing can move the cursor or colour the screen),
gathered output bodies through :func:`lines_of` (lines and tabs kept, every other control character
escaped). Artifacts are not rendered here and stay byte-exact."""
from __future__ import annotations

import json
import re
import sys
import unicodedata
from collections import OrderedDict
from typing import Any, Iterable, TextIO

from fleet.inventory import Host, Inventory
from fleet.results import FanoutOutcome, FanoutRun, PreflightResult

_ORDER = {FanoutOutcome.PREFLIGHT_FAILED: 0, FanoutOutcome.TIMEOUT: 1, FanoutOutcome.FAILURE: 2,
          FanoutOutcome.ABORTED: 3, FanoutOutcome.SUCCESS: 4}


_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escaped(c: str) -> str:
    """One character as Python would write it in a string: ``\\x1b``, ``\\n``, ``\\u202e``."""
    if c in _NAMED:
        return _NAMED[c]
    o = ord(c)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"


def cell(value: Any) -> str:
    """``value`` as one table cell or live line: every character that is not printable (control
    characters, newlines, tabs, bidi overrides) escaped, so no host or server can forge a row,
    move the cursor or colour the terminal. The person still sees what was sent."""
    s = "" if value is None else str(value)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else _escaped(c) for c in s)


def lines_of(text: str) -> str:
    """Output shown as lines (gathered output, an agent's answer): newlines and tabs kept, CRLF
    read as a newline, every other control character (ESC, CR, BEL, DEL, C1) escaped."""
    s = (text or "").replace("\r\n", "\n")
    if not any(unicodedata.category(c) == "Cc" and c not in "\n\t" for c in s):
        return s
    return "".join(_escaped(c) if unicodedata.category(c) == "Cc" and c not in "\n\t" else c for c in s)


def first_line(text: str, width: int = 100) -> str:
    """The first non-empty line of ``text``, cut to ``width``."""
    for ln in (text or "").splitlines():
        if ln.strip():
            ln = ln.strip()
            return ln if len(ln) <= width else ln[: width - 1] + "…"
    return ""


def table(rows: list[list[str]], headers: list[str]) -> str:
    """A plain aligned text table; every cell escaped (:func:`cell`): one line per row."""
    headers = [cell(h) for h in headers]
    rows = [[cell(c) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in rows:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    fmt = "  ".join("{:<%d}" % w for w in widths)
    lines = [fmt.format(*headers).rstrip()]
    lines += [fmt.format(*r).rstrip() for r in rows]
    return "\n".join(lines)


def _dur(ms: int) -> str:
    return f"{ms / 1000:.2f}s"


def fanout_table(run: FanoutRun, color: "Colors | None" = None) -> str:
    """The summary table, failures first, then a one-line count."""
    order = {r.host: i for i, r in enumerate(run.results)}
    rows = sorted(run.results, key=lambda r: (_ORDER[r.outcome], order[r.host]))
    body = table([[r.host, r.outcome.value, "" if r.exit_code is None else str(r.exit_code), str(r.attempts),
                   _dur(r.duration_ms), first_line(r.error, 60)] for r in rows],
                 ["HOST", "STATE", "EXIT", "ATTEMPTS", "DURATION", "ERROR"])
    if color is not None and color.enabled:
        # colour after alignment, so escape codes never skew the columns
        out = body.splitlines()
        for k, r in enumerate(rows, start=1):
            v = r.outcome.value
            out[k] = out[k].replace(f"  {v}", f"  {color.state(v)}", 1)
        body = "\n".join(out)
    # Long errors (fingerprints, advice) are cut in the table; give each distinct one whole, once.
    long = []
    seen: set[str] = set()
    for r in rows:
        e = first_line(r.error, 10_000)
        if len(e) > 60 and e not in seen:
            seen.add(e)
            long.append(cell(f"{r.host}: {e}"))
    extra = ("\n" + "\n".join(long)) if long else ""
    return body + extra + "\n" + summary_line(run)


def summary_line(run: FanoutRun) -> str:
    """``N hosts: a SUCCESS, b FAILURE ... in 1.23s (artifacts: DIR)``."""
    counts: "OrderedDict[str, int]" = OrderedDict()
    for o in FanoutOutcome:
        n = sum(1 for r in run.results if r.outcome == o)
        if n:
            counts[o.value] = n
    parts = ", ".join(f"{n} {k}" for k, n in counts.items())
    s = f"{len(run.results)} host{'s' if len(run.results) != 1 else ''}: {parts} in {_dur(run.duration_ms)}"
    if run.artifacts_dir:
        s += f" (artifacts: {run.artifacts_dir})"
    if run.interrupted:
        s += " [interrupted]"
    return s


def to_json(doc: Any) -> str:
    """One JSON document with stable key order."""
    return json.dumps(doc, indent=2, sort_keys=True, default=str)


_SEG = re.compile(r"([0-9]+)")  # ASCII digits only: the numbers of host names


def _range_text(nums: list[str]) -> str:
    """``['01','02','03','07']`` -> ``01-03,07``; padding follows ClusterShell (01-120 is one run)."""
    vals = sorted(set(nums), key=lambda t: (int(t), len(t)))
    spans: list[str] = []
    i = 0
    while i < len(vals):
        start = vals[i]
        pad = len(start)
        end = start
        j = i + 1
        while j < len(vals) and vals[j] == f"{int(end) + 1:0{pad}d}":
            end = vals[j]
            j += 1
        spans.append(start if start == end else f"{start}-{end}")
        i = j
    return ",".join(spans)


def fold(names: Iterable[str]) -> str:
    """Fold host names as ClusterShell writes them: ``lab[01-120]``, ``r[1-2]n[01-04]``, sorted."""
    def key(n: str) -> list:
        return [(0, int(x), len(x)) if _SEG.fullmatch(x) else (1, x, 0) for x in _SEG.split(n)]
    items = [_SEG.split(n) for n in sorted(set(names), key=key)]
    # fold one numeric dimension at a time, the last first; folded ones become text
    width = max((len(t) for t in items), default=0)
    for pos in range(width - 2, 0, -2):
        groups: "OrderedDict[tuple, list[str]]" = OrderedDict()
        shape: dict[tuple, list[str]] = {}
        for t in items:
            if len(t) <= pos or not _SEG.fullmatch(t[pos]):
                groups.setdefault(("=",) + tuple(t), [])
                shape[("=",) + tuple(t)] = t
                continue
            k = (len(t),) + tuple(t[:pos]) + ("#",) + tuple(t[pos + 1:])
            groups.setdefault(k, []).append(t[pos])
            shape.setdefault(k, t)
        out = []
        for k, nums in groups.items():
            t = list(shape[k])
            if nums:
                txt = _range_text(nums)
                t[pos] = txt if "-" not in txt and "," not in txt else f"[{txt}]"
            out.append(t)
        items = out
    return ",".join("".join(t) for t in items)


def _buckets(run: FanoutRun) -> "OrderedDict[tuple[str, str], list[str]]":
    buckets: "OrderedDict[tuple[str, str], list[str]]" = OrderedDict()
    for r in run.results:
        if r.stdout or r.stderr:
            buckets.setdefault((r.stdout, r.stderr), []).append(r.host)
    return buckets


def _block_text(out: str, err: str, color: "Colors") -> str:
    text = lines_of(out).rstrip("\n")
    if err.strip():
        text += ("\n" if text else "") + "\n".join(color.dim("stderr| ") + ln
                                                  for ln in lines_of(err).rstrip("\n").splitlines())
    return text


def gathered(run: FanoutRun, color: "Colors | None" = None) -> str:
    """Each host's output after the run; identical outputs once under their folded host list
    (clush -b), stderr lines marked ``stderr|``."""
    c = color or Colors(False)
    blocks = []
    for (out, err), hosts in _buckets(run).items():
        head = cell(f"{fold(hosts)} ({len(hosts)})")
        bar = "-" * max(15, len(head))
        blocks.append(f"{bar}\n{c.bold(head)}\n{bar}\n{_block_text(out, err, c)}")
    return "\n".join(blocks)


def diffed(run: FanoutRun, color: "Colors | None" = None) -> str:
    """``--diff``: the most common output in full, every other one as a unified diff against it."""
    import difflib

    c = color or Colors(False)
    buckets = sorted(_buckets(run).items(), key=lambda kv: -len(kv[1]))
    if not buckets:
        return ""
    (base_out, base_err), base_hosts = buckets[0]
    base = _block_text(base_out, base_err, Colors(False)).splitlines()
    head = cell(f"{fold(base_hosts)} ({len(base_hosts)})")
    parts = [f"{'-' * max(15, len(head))}\n{c.bold(head)} (most common)\n{'-' * max(15, len(head))}\n" + "\n".join(base)]
    for (out, err), hosts in buckets[1:]:
        other = _block_text(out, err, Colors(False)).splitlines()
        lines = list(difflib.unified_diff(base, other, cell(fold(base_hosts)), cell(fold(hosts)), lineterm=""))
        parts.append("\n".join(c.red(ln) if ln.startswith("-") and not ln.startswith("---") else
                                c.green(ln) if ln.startswith("+") and not ln.startswith("+++") else ln
                                for ln in lines))
    return "\n".join(parts)


def stderr_tails(run: FanoutRun, lines: int = 5) -> str:
    """Under the table: the last lines of each failed host's stderr (identical ones folded)."""
    tails: "OrderedDict[str, list[str]]" = OrderedDict()
    for r in run.results:
        if not r.ok and r.stderr.strip():
            tail = "\n".join(lines_of(r.stderr).rstrip("\n").splitlines()[-lines:])
            tails.setdefault(tail, []).append(r.host)
    return "\n".join(cell(f"{fold(hosts)} stderr (last lines):") + "\n" + "\n".join("  " + ln for ln in tail.splitlines())
                     for tail, hosts in tails.items())


class Colors:
    """ANSI colour on a terminal, never when ``NO_COLOR`` is set or output is not a TTY."""

    def __init__(self, enabled: bool | None = None, stream: TextIO | None = None) -> None:
        import os

        if enabled is None:
            st = stream or sys.stdout
            enabled = bool(getattr(st, "isatty", lambda: False)()) and not os.environ.get("NO_COLOR")
        self.enabled = enabled

    def _c(self, code: str, s: str) -> str:
        return f"\x1b[{code}m{s}\x1b[0m" if self.enabled and s else s

    def red(self, s: str) -> str:
        """Failures."""
        return self._c("31", s)

    def green(self, s: str) -> str:
        """Success."""
        return self._c("32", s)

    def yellow(self, s: str) -> str:
        """Timeouts and aborts."""
        return self._c("33", s)

    def bold(self, s: str) -> str:
        """Headers."""
        return self._c("1", s)

    def dim(self, s: str) -> str:
        """Markers."""
        return self._c("2", s)

    def state(self, s: str) -> str:
        """A state word, coloured by what it means."""
        if s in ("SUCCESS", "OK"):
            return self.green(s)
        if s in ("TIMEOUT", "ABORTED"):
            return self.yellow(s)
        return self.red(s)


def preflight_table(results: list[PreflightResult]) -> str:
    """Preflight per host: status, failed check, advice."""
    rows = sorted(results, key=lambda r: (r.ok,))
    if any(r.opencode for r in results):
        body = table([[r.host, r.status.value, r.auth_mode, r.failed_check or "-", _dur(r.duration_ms),
                       first_line(r.opencode, 50) or "-", first_line(r.error_detail, 120)] for r in rows],
                     ["HOST", "STATUS", "AUTH", "FAILED CHECK", "DURATION", "OPENCODE", "ADVICE"])
    else:
        body = table([[r.host, r.status.value, r.auth_mode, r.failed_check or "-", _dur(r.duration_ms),
                       first_line(r.error_detail, 140)] for r in rows],
                     ["HOST", "STATUS", "AUTH", "FAILED CHECK", "DURATION", "ADVICE"])
    # Long advice (a fingerprint, the command that fixes it) is cut in the table, whatever the
    # terminal's width: give each distinct one whole, once, under it (as fanout_table does).
    width = 120 if any(r.opencode for r in results) else 140
    long: list[str] = []
    seen: set[str] = set()
    for r in rows:
        advice = first_line(r.error_detail, 10_000)
        if len(advice) > width and advice not in seen:
            seen.add(advice)
            long.append(cell(f"{r.host}: {advice}"))
    extra = ("\n" + "\n".join(long)) if long else ""
    ok = sum(1 for r in results if r.ok)
    n = len(results)
    return body + extra + f"\n{n} host{'' if n == 1 else 's'}: {ok} OK, {n - ok} FAILED"


def hosts_table(hosts: list[Host]) -> str:
    """``inventory.show``: resolved hosts."""
    return table([[h.name, h.user or "-", f"{h.address}:{h.port}", h.auth, ",".join(h.aliases) or "-",
                   ",".join(h.tags) or "-", h.opencode.url if h.opencode else "-"] for h in hosts],
                 ["HOST", "USER", "ADDRESS", "AUTH", "ALIASES", "TAGS", "OPENCODE"])


def host_dict(h: Host) -> dict[str, Any]:
    """A host as plain data (no secrets: only where the password comes from)."""
    return {"name": h.name, "user": h.user, "address": h.address, "port": h.port, "auth": h.auth,
            "aliases": list(h.aliases), "tags": list(h.tags), "identity_file": h.identity_file,
            "opencode": None if not h.opencode else {
                "url": h.opencode.url, "username": h.opencode.username,
                "password_env": h.opencode.password_env, "password_file": h.opencode.password_file},
            "repos_root": h.repos_root, "repos": dict(h.repos)}


def inventory_summary(inv: Inventory) -> str:
    """``inventory.check``'s one line."""
    auths: dict[str, int] = {}
    for h in inv.hosts:
        auths[h.auth] = auths.get(h.auth, 0) + 1
    a = ", ".join(f"{n} {k}" for k, n in auths.items())
    extra = []
    if inv.canary:
        extra.append(f"canary {inv.canary}")
    if inv.routes:
        extra.append(f"{len(inv.routes)} routes")
    if inv.slack:
        extra.append("slack audit on")
    tail = ("; " + "; ".join(extra)) if extra else ""
    return (f"{inv.path}: OK, {len(inv.hosts)} hosts ({a}), {len(inv.groups)} groups, "
            f"{len({t for h in inv.hosts for t in h.tags})} tags{tail}")


# ---------------------------------------------------------------------- dispatch and agents

def format_events(events: list[dict[str, Any]], delivered: dict[str, Any],
                  failed: dict[str, Any] | None = None) -> str:
    """Journal events for a person, one per line."""
    out = []
    failed = failed or {}
    for e in events:
        state = "sent" if e["id"] in delivered else (
            f"failed: {failed[e['id']].get('error', '')}" if e["id"] in failed else
            "pending" if e.get("channel") else "journal only: no Slack then")
        d = e.get("detail") or {}
        extra = " ".join(f"{k}={json.dumps(v) if not isinstance(v, str) or ' ' in v else v}"
                         for k, v in d.items())
        out.append(cell(f"{e['time']}  {e.get('dispatch_id') or '-':<28} {e.get('host') or '-':<10} "
                        f"{e['operation']:<18} {e['outcome']:<9} [{state}] {extra}".rstrip()))
    return "\n".join(out)


def age_text(seconds: float) -> str:
    """``45s``, ``12m``, ``3h``, ``2d``."""
    s = max(0, int(seconds))
    return f"{s // 86400}d" if s >= 86400 else f"{s // 3600}h" if s >= 3600 else f"{s // 60}m" if s >= 60 else f"{s}s"


def usage_cells(row: dict[str, Any]) -> list[str]:
    tok, cost = row.get("tokens"), row.get("cost")
    return [str(tok) if tok is not None else "-", f"${cost:.4f}" if cost is not None else "-"]


def worktrees_table(rows: list[Any]) -> str:
    """``worktrees``: one line per fleet-made worktree."""
    return table([[w.host, w.repo, w.branch, w.path, age_text(w.age_s), "dirty" if w.dirty else "clean", w.ahead,
                   w.session or "-"] for w in rows],
                 ["HOST", "REPO", "BRANCH", "PATH", "AGE", "STATE", "AHEAD", "SESSION"])

"""Renderers: read result objects and print them. They decide nothing."""
from __future__ import annotations

import json
import re
import sys
import threading
from collections import OrderedDict
from typing import Any, Iterable, TextIO

from .inventory import Host, Inventory
from .results import FanoutOutcome, FanoutResult, FanoutRun, PreflightResult

_ORDER = {FanoutOutcome.PREFLIGHT_FAILED: 0, FanoutOutcome.TIMEOUT: 1, FanoutOutcome.FAILURE: 2,
          FanoutOutcome.ABORTED: 3, FanoutOutcome.SUCCESS: 4}


def first_line(text: str, width: int = 100) -> str:
    """The first non-empty line of ``text``, cut to ``width``."""
    for ln in (text or "").splitlines():
        if ln.strip():
            ln = ln.strip()
            return ln if len(ln) <= width else ln[: width - 1] + "…"
    return ""


def table(rows: list[list[str]], headers: list[str]) -> str:
    """A plain aligned text table."""
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


def fanout_table(run: FanoutRun) -> str:
    """The summary table, failures first, then a one-line count."""
    order = {r.host: i for i, r in enumerate(run.results)}
    rows = sorted(run.results, key=lambda r: (_ORDER[r.outcome], order[r.host]))
    body = table([[r.host, r.outcome.value, "" if r.exit_code is None else str(r.exit_code), str(r.attempts),
                   _dur(r.duration_ms), first_line(r.error, 60)] for r in rows],
                 ["HOST", "STATE", "EXIT", "ATTEMPTS", "DURATION", "ERROR"])
    # Long errors (fingerprints, advice) are cut in the table; give each distinct one whole, once.
    long = []
    seen: set[str] = set()
    for r in rows:
        e = first_line(r.error, 10_000)
        if len(e) > 60 and e not in seen:
            seen.add(e)
            long.append(f"{r.host}: {e}")
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


_NUM = re.compile(r"^(.*?)(\d+)$")


def fold(names: Iterable[str]) -> str:
    """Fold host names as ClusterShell does: lab01,lab02,lab03,web1 -> lab[01-03],web1."""
    groups: "OrderedDict[tuple[str, int], list[int]]" = OrderedDict()
    plain: list[str] = []
    out: list[str] = []
    for n in names:
        m = _NUM.match(n)
        if not m:
            plain.append(n)
            continue
        groups.setdefault((m.group(1), len(m.group(2))), []).append(int(m.group(2)))
    for (prefix, width), nums in groups.items():
        nums = sorted(set(nums))
        if len(nums) == 1:
            out.append(f"{prefix}{nums[0]:0{width}d}")
            continue
        spans, start, prev = [], nums[0], nums[0]
        for x in nums[1:] + [None]:
            if x is not None and x == prev + 1:
                prev = x
                continue
            spans.append(f"{start:0{width}d}" if start == prev else f"{start:0{width}d}-{prev:0{width}d}")
            if x is not None:
                start = prev = x
        out.append(f"{prefix}[{','.join(spans)}]")
    return ",".join(out + plain)


def gathered(run: FanoutRun) -> str:
    """Identical outputs printed once under their folded host list (clush -b)."""
    buckets: "OrderedDict[tuple[str, str], list[str]]" = OrderedDict()
    for r in run.results:
        buckets.setdefault((r.stdout, r.stderr), []).append(r.host)
    blocks = []
    for (out, err), hosts in buckets.items():
        head = f"{fold(hosts)} ({len(hosts)})"
        bar = "-" * max(15, len(head))
        text = out.rstrip("\n")
        if err.strip():
            text += ("\n" if text else "") + "\n".join("stderr: " + ln for ln in err.rstrip("\n").splitlines())
        blocks.append(f"{bar}\n{head}\n{bar}\n{text}")
    return "\n".join(blocks)


class LineStreamer:
    """``--stream``: live output lines prefixed ``host | ``."""

    def __init__(self, hosts: list[str], out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.width = max((len(h) for h in hosts), default=5)
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.lock = threading.Lock()

    def __call__(self, host: str, stream: str, line: str) -> None:
        target = self.out if stream == "stdout" else self.err
        with self.lock:
            target.write(f"{host:<{self.width}} | {line}\n")
            target.flush()


class Progress:
    """A one-line live progress on a terminal; silent otherwise."""

    def __init__(self, total: int, stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.done = 0
        self.failed = 0
        self.lock = threading.Lock()

    def __call__(self, r: FanoutResult) -> None:
        with self.lock:
            self.done += 1
            if not r.ok:
                self.failed += 1
            if self.enabled:
                self.stream.write(f"\r\x1b[K{self.done}/{self.total} done, {self.failed} failed, "
                                  f"{self.total - self.done} to go")
                self.stream.flush()

    def clear(self) -> None:
        """Erase the line before the summary is printed."""
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def preflight_table(results: list[PreflightResult]) -> str:
    """Preflight per host: status, failed check, advice."""
    rows = sorted(results, key=lambda r: (r.ok,))
    body = table([[r.host, r.status.value, r.auth_mode, r.failed_check or "-", _dur(r.duration_ms),
                   first_line(r.error_detail, 140)] for r in rows],
                 ["HOST", "STATUS", "AUTH", "FAILED CHECK", "DURATION", "ADVICE"])
    ok = sum(1 for r in results if r.ok)
    return body + f"\n{len(results)} hosts: {ok} OK, {len(results) - ok} FAILED"


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

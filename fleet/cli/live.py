"""Live views: the progress line and streamed lines of a fanout, dispatch's live line and
many-host board, and watch's board. Redrawn in place on a terminal, plain lines otherwise;
every text through :func:`fleet.cli.render.cell` (what a server says cannot move the cursor)."""
from __future__ import annotations

import sys
import threading
from typing import Any, TextIO

from fleet.cli.render import Colors, age_text, cell, first_line, table, usage_cells
from fleet.results import FanoutResult


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
            target.write(f"{cell(host):<{self.width}} | {cell(line)}\n")
            target.flush()


class Progress:
    """A one-line live progress on a terminal; silent otherwise."""

    def __init__(self, total: int, stream: TextIO | None = None, enabled: bool | None = None,
                 canary: str | None = None) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.done = 0
        self.failed = 0
        self.canary = canary
        self.canary_state = ""
        self.lock = threading.Lock()
        if self.enabled and canary:
            self.stream.write(f"\r\x1b[Kcanary {canary} running, {total - 1} more connecting...")
            self.stream.flush()

    def __call__(self, r: FanoutResult) -> None:
        with self.lock:
            self.done += 1
            if not r.ok:
                self.failed += 1
            if self.canary and r.host == self.canary:
                self.canary_state = f"canary {r.host} {'ok' if r.ok else r.outcome.value}: "
            if self.enabled:
                self.stream.write(f"\r\x1b[K{self.canary_state}{self.done}/{self.total} done, {self.failed} failed, "
                                  f"{self.total - self.done} to go")
                self.stream.flush()

    def clear(self) -> None:
        """Erase the line before the summary is printed."""
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


class DispatchLive:
    """Dispatch's live view, fed by dispatch's ``on_event(host, kind, text)``.

    On a terminal: one host gets one status line rewritten in place; many hosts get a board
    (host, session, state and current step or what it asks, time, tokens and cost so far),
    needs-input first and highlighted, redrawn on every event and once a second for the
    clocks. Not a terminal (a log, a pipe): plain lines, one per change. ``quiet``: nothing.
    Use as a context manager (or call :meth:`close`) so the board is cleared at the end.
    """

    ORDER = {"needs-input": 0, "stuck": 1, "retry": 2, "busy": 3, "queued": 4, "starting": 5}

    def __init__(self, quiet: bool, many: bool, stream: TextIO | None = None, tick: float = 1.0) -> None:
        import threading
        import time

        self.quiet = quiet
        self.many = many
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.colors = Colors(stream=self.stream)
        self.t0 = time.monotonic()
        self.rows: dict[str, dict[str, Any]] = {}
        self.drawn = 0
        self.lock = threading.RLock()
        self._stop = threading.Event()
        self._ticker: Any = None
        if self.tty and not quiet and tick > 0:
            self._ticker = threading.Thread(target=self._tick, args=(tick,), name="fleet-live", daemon=True)
            self._ticker.start()

    def __enter__(self) -> "DispatchLive":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _tick(self, every: float) -> None:
        while not self._stop.wait(every):
            with self.lock:
                if any(r["state"] != "starting" and not r.get("ended") for r in self.rows.values()):
                    self._draw()

    def close(self) -> None:
        """Stop the clock and clear the board or line (the report follows)."""
        self._stop.set()
        with self.lock:
            if self.tty and not self.quiet:
                if self.many and self.drawn:
                    self.stream.write(f"\x1b[{self.drawn}F\x1b[J")
                elif not self.many and self.rows:
                    self.stream.write("\r\x1b[K")
                self.stream.flush()
            self.drawn = 0

    def __call__(self, host: str, kind: str, text: str) -> None:
        import re
        import time

        if self.quiet:
            return
        host, text = cell(host), cell(text)  # what the server says, escaped before it is stored or shown
        with self.lock:
            row = self.rows.setdefault(host, {"host": host, "session": "", "state": "starting", "step": "",
                                              "usage": "", "t0": time.monotonic(), "ended": None})
            if kind == "session":
                row["session"] = text
            elif kind == "status":
                if text == row.get("said"):
                    return  # the same state again (the step seen by the stream, then by the waiter)
                row["said"] = text
                m = re.match(r"([\w-]+)[: ]*(.*)", text, re.S)
                row["state"], row["step"] = (m.group(1), m.group(2)) if m else (text, "")
            elif kind == "usage":
                row["usage"] = text
            elif kind == "end":
                outcome, _, err = text.partition(": ")
                row.update(state=outcome, step=first_line(err, 100), ended=time.monotonic())
            else:
                return
            if self.tty and not self.many and kind == "session":
                self.stream.write(f"\r\x1b[K{host}: session {text}\n")  # the id stays on screen
                self.stream.flush()
            elif self.tty:
                self._draw()
            elif kind == "session":
                print(f"{host}: session {text}", file=self.stream, flush=True)
            elif kind == "status":
                print(f"{host}: {text} ({self._age(row):.1f}s)" + (f" {row['usage']}" if row["usage"] else ""),
                      file=self.stream, flush=True)
            elif kind == "end" and self.many:
                print(f"{host}: {text} ({self._age(row):.1f}s)", file=self.stream, flush=True)

    @staticmethod
    def _age(row: dict[str, Any]) -> float:
        import time
        return (row["ended"] or time.monotonic()) - row["t0"]

    def _draw(self) -> None:
        import shutil

        width = max(40, shutil.get_terminal_size((120, 24)).columns - 1)
        if not self.many:
            r = next(iter(self.rows.values()))
            if r["ended"]:
                return
            what = r["state"] + (f": {r['step']}" if r["step"] else "")
            line = f"{r['host']}: {what} ({self._age(r):.0f}s)" + (f"  {r['usage']}" if r["usage"] else "")
            self.stream.write("\r\x1b[K" + line[:width])
            self.stream.flush()
            return
        rows = sorted(self.rows.values(), key=lambda r: (self.ORDER.get(r["state"], 6), r["host"]))
        body = table([[r["host"], r["session"] or "-", r["state"], r["step"][:60], f"{self._age(r):.0f}s",
                       r["usage"] or "-"] for r in rows],
                     ["HOST", "SESSION", "STATE", "DOING / ASKS", "TIME", "TOKENS / COST"]).splitlines()
        out = []
        for k, line in enumerate(body):
            line = line[:width]
            st = rows[k - 1]["state"] if k else ""
            out.append(self.colors.yellow(line) if st in ("needs-input", "stuck") else
                       self.colors.red(line) if st in ("FAILURE", "TIMEOUT", "UNREACHABLE", "ABORTED") else
                       self.colors.green(line) if st == "SUCCESS" else line)
        up = f"\x1b[{self.drawn}F" if self.drawn else ""
        self.stream.write(up + "\x1b[J" + "\n".join(out) + "\n")
        self.stream.flush()
        self.drawn = len(out)


def watch_line(row: dict[str, Any]) -> str:
    """One change on the board, as a line (not a terminal)."""
    extra = f" ({row['waiting']})" if row.get("waiting") else (f" ({row['step']})" if row.get("step") else "")
    tok, cost = usage_cells(row)
    usage = f"  {tok} tok {cost}" if row.get("tokens") is not None else ""
    return cell(f"{row['host']}  {row.get('repo') or '-'}  {row['session'] or '-'}  {row['state']}{extra}{usage}  "
                f"{row.get('title', '')[:40]}".rstrip())


def watch_board(rows: list[dict[str, Any]], color: "Colors | None" = None, now: float | None = None,
                size: tuple[int, int] | None = None) -> str:
    """The whole board (a terminal): needs-input first and highlighted. ``size`` (columns,
    lines): lines are cut to the width, and rows that do not fit are counted in a last line
    (the ones that need a person come first, so they are never the ones cut)."""
    import time

    c = color or Colors(False)
    now = time.time() if now is None else now
    order = {"needs-input": 0, "stuck": 1, "down": 2, "error": 3, "no-events": 4, "retry": 5, "busy": 6, "idle": 7}
    rows = sorted(rows, key=lambda r: (order.get(r["state"], 8), r["host"]))
    cut = 0
    if size is not None and len(rows) > max(1, size[1] - 3):
        keep = max(1, size[1] - 3)
        cut, rows = len(rows) - keep, rows[:keep]
    body = table([[r["host"], r.get("repo") or "-", r["session"] or "-", r["state"],
                   (r.get("waiting") or r.get("step") or "")[:60], age_text(now - r.get("created", now)),
                   *usage_cells(r), r.get("title", "")[:40]] for r in rows],
                 ["HOST", "REPO", "SESSION", "STATE", "DOING / ASKS", "AGE", "TOKENS", "COST", "TITLE"])
    out = body.splitlines()
    if size is not None:
        out = [line[:max(20, size[0] - 1)] for line in out]
    for k, r in enumerate(rows, start=1):
        if r["state"] in ("needs-input", "stuck"):
            out[k] = c.yellow(out[k])
        elif r["state"] in ("error", "down"):
            out[k] = c.red(out[k])
    if cut:
        more = f"... {cut} more session(s) below the screen (fleet watch --json lists all)"
        out.append(more[:max(20, size[0] - 1)] if size is not None else more)
    return "\n".join(out)

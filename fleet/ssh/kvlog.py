"""The seed's key=value log lines: ``success host=epyc6 user=feng command="make test" attempt=1``.

``format_line`` and ``parse_line`` are inverses, so scripts can read the log back.
"""
from __future__ import annotations

import re
import threading
from typing import Any, Callable, TextIO

_BARE = re.compile(r"[A-Za-z0-9_.:/@%+-]+")
_ESC = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
ALWAYS_QUOTED = ("command",)  # as in the seed's lines: command="true"


def _quote(value: Any, force: bool = False) -> str:
    """A logfmt value, escaped as go-logfmt writes it (control characters as \\u00XX)."""
    s = "" if value is None else str(value)
    if s and not force and _BARE.fullmatch(s):
        return s
    out = []
    for ch in s:
        if ch in _ESC:
            out.append(_ESC[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def format_line(event: str, **fields: Any) -> str:
    """One log line: the event word, then key=value pairs in the given order."""
    return " ".join([event] + [f"{k}={_quote(v, k in ALWAYS_QUOTED)}" for k, v in fields.items()])


def _unescape(m: "re.Match[str]") -> str:
    e = m.group(1)
    if len(e) == 5:
        return chr(int(e[1:], 16))
    return {"n": "\n", "r": "\r", "t": "\t"}.get(e, e)


_PAIR = re.compile(r'\s+([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_line(line: str) -> tuple[str, dict[str, str]]:
    """Split a line made by :func:`format_line` back into (event, fields)."""
    line = line.rstrip("\n")
    event, _, rest = line.partition(" ")
    fields: dict[str, str] = {}
    for m in _PAIR.finditer(" " + rest):
        v = m.group(2)
        if v.startswith('"'):
            v = re.sub(r"\\(u[0-9a-fA-F]{4}|.)", _unescape, v[1:-1])
        fields[m.group(1)] = v
    return event, fields


class KVLog:
    """Writes lines to any number of text streams (the run's log file, stderr with --log).

    ``redact``: applied to every value first (a run's log never holds a secret). ``on_error``:
    called with the ``OSError`` and the stream when a stream cannot be written (a full disk mid-run); that stream
    is then left alone and the others go on. Without it the error is raised.
    """

    def __init__(self, *streams: TextIO | None, redact: Callable[[str], str] | None = None,
                 on_error: Callable[[OSError, TextIO], None] | None = None) -> None:
        self.streams = [s for s in streams if s is not None]
        self.lock = threading.Lock()
        self.redact = redact
        self.on_error = on_error

    def __call__(self, event: str, **fields: Any) -> None:
        if self.redact is not None:
            fields = {k: self.redact("" if v is None else str(v)) for k, v in fields.items()}
        line = format_line(event, **fields)
        with self.lock:
            for s in list(self.streams):
                try:
                    s.write(line + "\n")
                    s.flush()
                except OSError as exc:
                    if self.on_error is None:
                        raise
                    self.streams.remove(s)
                    self.on_error(exc, s)


class LogLines:
    """A stream that hands each key=value line to a :mod:`logging` logger (INFO)."""

    def __init__(self, logger: Any) -> None:
        self.logger = logger

    def write(self, text: str) -> None:
        for line in text.splitlines():
            if line.strip():
                self.logger.info(line)

    def flush(self) -> None:
        pass

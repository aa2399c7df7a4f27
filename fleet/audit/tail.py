"""The journal's events for a long-lived reader (the service's follower and its once-only check,
the canary gate), read incrementally: each look reads only the lines appended since the last one,
where :meth:`fleet.audit.journal.Journal.load` reads and parses the whole file (months of use:
every 3 seconds, and again for every needs-input and end).

A journal that was replaced (another file at the path), cut (a torn tail set aside) or rewritten
under the bytes already read is read again whole. Only whole lines are read, so a line being
written is read at the next look. Events older than ``keep`` seconds are let go.
"""
from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from fleet.audit.journal import _is_event

_TAILS: dict[str, JournalTail] = {}
_TAILS_LOCK = threading.Lock()


class JournalTail:
    def __init__(self, path: str | os.PathLike[str], keep: float | None = None) -> None:
        self.path = os.fspath(path)
        self.keep = keep
        self._lock = threading.Lock()
        self._reset(None)

    def _reset(self, ident: tuple[int, int] | None) -> None:
        self._ident = ident
        self._offset = 0
        self._mark = b""  # the last bytes read: the file still holds them, or it was rewritten
        self._events: list[dict[str, Any]] = []
        self.reads = 0  # whole reads from the start (for tests and status)

    def events(self) -> list[dict[str, Any]]:
        """Every event of the journal (within ``keep``), oldest first; a new list each time."""
        with self._lock:
            try:
                with open(self.path, "rb") as f:
                    st = os.fstat(f.fileno())
                    ident = (st.st_dev, st.st_ino)
                    if ident != self._ident or st.st_size < self._offset or not self._still(f):
                        self._reset(ident)
                        self.reads += 1
                    f.seek(self._offset)
                    raw = f.read()
            except FileNotFoundError:
                self._reset(None)
                return []
            end = raw.rfind(b"\n") + 1
            if end:
                self._take(raw[:end])
                self._offset += end
                self._mark = raw[max(0, end - 64):end]
            return list(self._events)

    def _still(self, f: Any) -> bool:
        if not self._mark:
            return True
        f.seek(self._offset - len(self._mark))
        return bool(f.read(len(self._mark)) == self._mark)

    def _take(self, raw: bytes) -> None:
        for ln in raw.decode(errors="replace").splitlines():
            if not ln.strip():
                continue
            try:
                rec = json.loads(ln)
            except ValueError:
                continue  # a torn line: Journal.load reports and sets it aside
            if isinstance(rec, dict) and rec.get("type") == "event" and _is_event(rec):
                self._events.append(rec)
        if self.keep is not None and self._events:
            cut = time.time() - self.keep
            if float(self._events[0].get("epoch") or 0) < cut:
                self._events = [e for e in self._events if float(e.get("epoch") or 0) >= cut]


def tail_of(path: str | os.PathLike[str]) -> JournalTail:
    """This process's one incremental reader of the journal at ``path`` (events of the last two
    days: what the service follows is at most a day old)."""
    key = os.path.abspath(os.fspath(path))
    with _TAILS_LOCK:
        t = _TAILS.get(key)
        if t is None:
            t = _TAILS[key] = JournalTail(key, keep=2 * 24 * 3600.0)
        return t


__all__ = ["JournalTail", "tail_of"]

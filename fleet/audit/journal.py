"""The audit journal: JSON Lines, mode 0600, append-only, fsynced, safe across threads and
processes (flock). Kinds of line: ``event`` (id, time, actor, host, operation, outcome,
dispatch_id, channel, detail), ``attempt`` (just before a Slack send), ``delivered`` (after
it), ``failed`` (Slack refused it for good) and ``retry`` (a failed event to try again). An
event with no ``delivered`` (nor ``failed``) line is pending: a replay to its channel delivers it.
An event journaled while no Slack was configured (no channel) is never posted, and never
pending: it is the journal's alone. Lines of another shape are
skipped and counted; a torn last line (a crash mid-write) is set aside, never glued to.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fleet.files import append_line, locked, writing

ENDS = frozenset({"completed", "failed", "aborted"})


def host_ended(operation: str, outcome: str) -> bool:
    """Whether an event ends a host's part of a dispatch (a timeout does not: the agent goes on,
    and a person may still want to stop it). One definition for the listener and the service."""
    return operation in ENDS and outcome != "timeout"


@dataclass
class JournalState:
    """A folded journal: events in order, deliveries, attempts, and torn lines set aside."""

    events: list[dict[str, Any]] = field(default_factory=list)
    delivered: dict[str, dict[str, Any]] = field(default_factory=dict)
    attempted: set[str] = field(default_factory=set)
    torn: list[str] = field(default_factory=list)
    failed: dict[str, dict[str, Any]] = field(default_factory=dict)  # refused by Slack for good
    skipped: int = 0  # well-formed JSON lines of a shape fleet does not know

    def pending(self, include_failed: bool = False) -> list[dict[str, Any]]:
        """Events a replay will deliver: not yet delivered (nor given up on, unless
        ``include_failed``), recorded for a Slack channel; in journal order."""
        return [e for e in self.events if e["id"] not in self.delivered and e.get("channel")
                and (include_failed or e["id"] not in self.failed)]

    def journal_only(self) -> list[dict[str, Any]]:
        """Events journaled while no Slack was configured: never to be posted."""
        return [e for e in self.events if not e.get("channel")]

    def thread_ts(self, dispatch_id: str) -> str | None:
        """Slack ts of the first delivered event of ``dispatch_id`` (the thread root)."""
        for e in self.events:
            if e.get("dispatch_id") == dispatch_id:
                d = self.delivered.get(e["id"])
                return d.get("thread_ts") or d.get("ts") if d else None
        return None


class Journal:
    """The append-only local journal. Safe across threads and processes (flock)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(os.path.expanduser(str(path)))
        self._tlock = threading.RLock()

    def lock(self):
        """The delivery lock: held while sending an event and recording its fate."""
        return locked(self.path, ".deliver.lock")

    def append(self, rec: dict[str, Any]) -> None:
        """Append one line and fsync before returning."""
        line = json.dumps(rec, sort_keys=True, separators=(",", ":")) + "\n"
        with self._tlock, writing("the audit journal", self.path, "journal"), locked(self.path):
            self._heal_tail()
            append_line(self.path, line)

    def _heal_tail(self) -> None:
        # A crash mid-write leaves a last line with no newline: set it aside, never glue to it.
        # Only the last byte is read in the usual case, so an append costs the same whatever
        # the journal's size.
        try:
            with open(self.path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                if size == 0:
                    return
                f.seek(size - 1)
                if f.read(1) == b"\n":
                    return
                pos, tail = size, b""
                while pos > 0 and b"\n" not in tail:
                    step = min(65536, pos)
                    pos -= step
                    f.seek(pos)
                    tail = f.read(step) + tail
                content = tail
                base = pos
        except FileNotFoundError:
            return
        cut_rel = content.rfind(b"\n") + 1
        cut = base + cut_rel
        content = content[cut_rel:]
        cut_rel = 0
        aside = Path(str(self.path) + ".torn")
        with open(aside, "ab") as f:
            f.write(content + b"\n")
        os.chmod(aside, 0o600)
        with open(self.path, "r+b") as f:
            f.truncate(cut)
            f.flush()
            os.fsync(f.fileno())

    def load(self) -> JournalState:
        """Fold the journal. A torn last line is reported in ``torn`` and moved aside."""
        st = JournalState()
        with self._tlock, writing("the audit journal's lock beside", self.path, "journal"), locked(self.path):
            try:
                raw = self.path.read_bytes()
            except FileNotFoundError:
                return st
            if raw and not raw.endswith(b"\n"):
                st.torn.append(raw[raw.rfind(b"\n") + 1:].decode(errors="replace"))
                self._heal_tail()
                raw = raw[: raw.rfind(b"\n") + 1]
        for ln in raw.decode(errors="replace").splitlines():
            if not ln.strip():
                continue
            try:
                rec = json.loads(ln)
            except ValueError:
                st.torn.append(ln)
                continue
            t = rec.get("type") if isinstance(rec, dict) else None
            if t == "event" and _is_event(rec):
                st.events.append(rec)
            elif t in ("delivered", "attempt", "failed", "retry") and isinstance(rec.get("event_id"), str):
                if t == "delivered":
                    st.delivered[rec["event_id"]] = rec
                elif t == "attempt":
                    st.attempted.add(rec["event_id"])
                elif t == "failed":
                    st.failed[rec["event_id"]] = rec
                else:
                    st.failed.pop(rec["event_id"], None)
            else:
                st.skipped += 1  # another shape (or a newer fleet's): never a crash
        return st


def _is_event(rec: dict[str, Any]) -> bool:
    return (isinstance(rec.get("id"), str) and isinstance(rec.get("operation"), str)
            and isinstance(rec.get("detail", {}), dict) and all(
                isinstance(rec.get(k, ""), str) for k in ("time", "host", "outcome", "dispatch_id", "channel")))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")

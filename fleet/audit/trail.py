"""Audit trail, dual-write: every event goes to the local journal first (:mod:`fleet.journal`,
fsynced), then to Slack (:mod:`fleet.slack`) on a background thread, never in the way: slow,
rate-limited, failing, down or unconfigured Slack costs the operation at most
``flush_timeout`` (200 ms) at exit. Secrets are removed first (:mod:`fleet.redact`)."""
from __future__ import annotations

import getpass
import os
import queue
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from fleet.audit.journal import Journal, JournalState, _now  # noqa: F401 - part of the audit API
from fleet.audit.slack import EVENT_TYPE, PERMANENT_ERRORS, RateLimited, SlackPoster, deliver, message_text  # noqa: F401
from fleet.errors import (
    AuditError,  # noqa: F401 - re-exported where they were defined
    BadInput,
)
from fleet.inventory import SlackSettings
from fleet.safety.redact import Redactor  # noqa: F401


def actor() -> str:
    """The orchestrating machine: ``$FLEET_MACHINE`` if set (e.g. ``wsl`` or ``macmini``), else
    ``user@hostname`` of whoever runs fleet here."""
    if os.environ.get("FLEET_MACHINE"):
        return os.environ["FLEET_MACHINE"]
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


class AuditTrail:
    """Journal-first audit with a background Slack poster. ``record`` returns once fsynced."""

    def __init__(self, journal: str | os.PathLike[str], slack: SlackSettings | None = None,
                 token: str | None = None, secrets_: Iterable[str] = (), post: bool = True,
                 flush_timeout: float = 0.2, who: str | None = None) -> None:
        self.journal = Journal(journal)
        self.slack = slack
        self.redactor = Redactor(list(secrets_) + ([token] if token else []))
        self.actor = who or actor()
        self.flush_timeout = flush_timeout
        self.poster: SlackPoster | None = None
        # What a face says when Slack was asked for (``post``) and cannot be posted to now; the
        # journal says the same (an event with no channel is never pending).
        self.status = ""
        if post and slack is None:
            self.status = ("Slack is not configured (the inventory has no 'slack:' section): events are kept in "
                           "the local journal only and will never be posted")
        elif post and not token:
            assert slack is not None
            self.status = (f"${slack.token_env} is not set: events stay pending in the journal; export it, then "
                           f"run audit.replay to post them")
        elif post and slack is not None:
            self.poster = SlackPoster(slack, token or "")
        self._q: "queue.Queue[str | None]" = queue.Queue()
        self._thread: threading.Thread | None = None
        self._idle = threading.Event()
        self._idle.set()
        self.last_error = ""

    def record(self, operation: str, host: str | None, outcome: str, dispatch_id: str = "",
               **detail: Any) -> dict[str, Any]:
        """Append one event (fsynced), then hand it to the poster. Never raises for Slack."""
        now = time.time()
        e = {"type": "event", "id": "ev_" + secrets.token_hex(8), "time": _now(), "epoch": now,
             "actor": self.actor, "host": host or "", "operation": operation, "outcome": outcome,
             "dispatch_id": dispatch_id or "", "channel": self.slack.channel if self.slack else "",
             "detail": self.redactor.value({k: v for k, v in detail.items() if v not in (None, "")})}
        self.journal.append(e)
        if self.poster is not None:
            self._idle.clear()
            self._q.put(e["id"])
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fleet-audit", daemon=True)
                self._thread.start()
        return e

    def _run(self) -> None:
        while True:
            eid = self._q.get()
            if eid is None:
                return
            batch = {eid}
            while True:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._q.put(None)
                    break
                batch.add(nxt)
            try:
                _, why = deliver(self.journal, self.poster, batch)  # type: ignore[arg-type]
                if why:
                    self.last_error = why
            except Exception as exc:  # noqa: BLE001 - the journal keeps it pending
                self.last_error = str(exc)
            if self._q.empty():
                self._idle.set()

    def gate_event(self, event: str, plan: Any, outcome: str) -> None:
        """Callback for :func:`fleet.modes.authorize` (token issued / used / refused)."""
        self.record(event, ",".join(plan.host_names), outcome, operation_gated=plan.operation,
                    hosts=",".join(plan.host_names), mode=plan.mode)

    def close(self, timeout: float | None = None) -> bool:
        """Wait at most ``timeout`` (default flush_timeout) for posts in flight. True if all went."""
        if self._thread is None:
            return True
        closed: bool | None = getattr(self, "_closed", None)
        if closed is not None:
            return closed
        done = self._idle.wait(self.flush_timeout if timeout is None else timeout)
        self._q.put(None)
        self._closed = done
        return done


@dataclass
class ReplayReport:
    """What a replay did."""

    delivered: int
    pending: int
    torn: list[str]
    stopped: str
    other_channels: int = 0  # pending for another channel than this one (a replay there delivers them)
    journal_only: int = 0  # journaled with no Slack configured: never posted


def replay(journal: str, slack: SlackSettings | None, token: str | None, max_wait: float = 300.0,
           sleep: Callable[[float], None] = time.sleep, retry_failed: bool = False) -> ReplayReport:
    """Deliver every pending event in order, waiting out rate limits (up to ``max_wait`` s in all)."""
    j = Journal(journal)
    st = j.load()
    if slack is None:
        raise BadInput("the inventory has no 'slack:' section: add slack: {channel: C...} to replay to Slack")
    if not token:
        raise BadInput(f"${slack.token_env} is not set: export the Slack bot token to replay")
    poster = SlackPoster(slack, token)
    waited = [0.0]

    def on_rl(ra: float) -> bool:
        if waited[0] + ra > max_wait:
            return False
        waited[0] += ra
        sleep(ra)
        return True
    sent, why = deliver(j, poster, None, on_rl, retry_failed=retry_failed)
    after = j.load()
    left = after.pending()
    return ReplayReport(sent, len([e for e in left if e.get("channel", "") == slack.channel]), st.torn, why,
                        len([e for e in left if e.get("channel", "") != slack.channel]), len(after.journal_only()))


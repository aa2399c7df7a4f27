"""The listener's own audit trail: what it does is journaled first (redacted, as every event),
then posted by the listener itself, within its deadline.

Its thread replies ("Stopped. What next?", "Approved.", ...) are journal events too (their
``say`` is the message), so they reach Slack exactly once, like every event, even across a
crash or an outage (they stay pending until posted: by the next listener or ``audit.replay``).
Posting runs on a helper thread joined for a bounded time, so a hanging Slack, or another
process holding the delivery lock, never holds the listener past ``--duration``.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

from fleet.audit.slack import SlackPoster, deliver
from fleet.audit.trail import AuditTrail
from fleet.inventory import SlackSettings


class Replies:
    """An audit trail (``record``) whose events this listener posts (:meth:`flush`)."""

    def __init__(self, trail: Any, settings: SlackSettings, token: str, note: Callable[[str, str], None],
                 left: Callable[[], float | None], sleep: Callable[[float], None] = time.sleep) -> None:
        self._said = AuditTrail(trail.journal.path, settings, token, post=False, who=trail.actor)
        self._said.redactor = trail.redactor
        self.journal = self._said.journal
        self.actor = self._said.actor
        self.redactor = self._said.redactor
        self.slack = settings
        self.poster = SlackPoster(settings, token)
        self.note = note
        self.left = left
        self.sleep = sleep
        self._flusher: threading.Thread | None = None
        self._lock = threading.Lock()
        self._why = ""
        st = self.journal.load()  # what an earlier listener recorded and could not post yet
        self.mine: set[str] = {e["id"] for e in st.pending() if e.get("channel") == settings.channel
                               and ((e.get("detail") or {}).get("say") or e.get("actor") == self.actor
                                    and str(e.get("operation", "")).startswith(("slack_", "listen_")))}

    def record(self, operation: str, host: str | None, outcome: str, dispatch_id: str = "",
               **detail: Any) -> dict[str, Any]:
        e = self._said.record(operation, host, outcome, dispatch_id, **detail)
        with self._lock:  # a followed turn records from its own thread
            self.mine.add(e["id"])
        return e

    def close(self, timeout: float | None = None) -> bool:
        return not self.mine

    def flush(self) -> None:
        """Post what this listener recorded, for at most 10 s (less near the deadline)."""
        if not self.mine:
            return
        left = self.left()
        budget = 10.0 if left is None else max(0.0, min(10.0, left))
        if budget <= 0:
            return
        if self._flusher is not None and self._flusher.is_alive():
            return  # an earlier post is still under way (Slack slow): not waited for again
        end = time.monotonic() + budget
        self.poster.client.timeout = int(max(1, min(10, budget)))
        with self._lock:
            ids = set(self.mine)
        self._flusher = threading.Thread(target=self._deliver, args=(ids, end), name="fleet-listen-post", daemon=True)
        self._flusher.start()
        self._flusher.join(budget)
        st = self.journal.load()
        with self._lock:
            self.mine -= {i for i in ids if i in st.delivered or i in st.failed}
        if self.mine and (self._why or self._flusher.is_alive()):
            why = self._why or "Slack is slow"
            self.note(f"post {why.split(':')[0]}", f"listen: not everything it said is in Slack yet ({why}): it "
                                                   f"stays pending in the journal and is posted later")

    def _deliver(self, ids: set[str], end: float) -> None:
        def wait(ra: float) -> bool:
            w = min(max(0.5, ra), end - time.monotonic())
            if w <= 0:
                return False
            self.sleep(w)
            return True
        try:
            _, self._why = deliver(self.journal, self.poster, ids, wait, deadline=end)
        except Exception as exc:  # noqa: BLE001 - the journal keeps them pending
            self._why = f"{type(exc).__name__}: {exc}"


__all__ = ["Replies"]

"""Delivery of journal events to Slack (slack-sdk's WebClient): in order, exactly once, one
thread per dispatch. Sends and their records happen under the journal's delivery lock, so two
replays (or a replay and a live run) never post an event twice; an event with an ``attempt``
but no ``delivered`` line has an unknown fate, and the channel is searched for its id
(message metadata, paging back to its time) before it is posted again.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from fleet.audit.journal import Journal, _now
from fleet.inventory import SlackSettings

EVENT_TYPE = "fleet_audit"


def message_text(e: dict[str, Any]) -> str:
    """The Slack text of one event: short, readable, no secrets (redacted before journalling)."""
    d = e.get("detail") or {}
    bits = [f"[{e.get('actor')}] {e['operation']} on {e.get('host') or '-'}: {e.get('outcome')}"]
    for k in ("session_id", "repo", "task", "issue", "answer", "error", "reason", "hosts", "plan"):
        if d.get(k):
            bits.append(f"{k}: {d[k]}")
    return " | ".join(bits)


class SlackPoster:
    """Sends events to Slack with slack-sdk's WebClient (no retries of its own)."""

    def __init__(self, settings: SlackSettings, token: str, timeout: float = 10.0) -> None:
        from slack_sdk import WebClient

        kwargs: dict[str, Any] = {"token": token, "timeout": int(max(1, timeout)), "retry_handlers": []}
        if settings.base_url:
            kwargs["base_url"] = settings.base_url if settings.base_url.endswith("/") else settings.base_url + "/"
        self.client = WebClient(**kwargs)
        self.channel = settings.channel

    def post(self, e: dict[str, Any], thread_ts: str | None) -> str:
        """Post one event; returns its ts."""
        resp = self.client.chat_postMessage(
            channel=self.channel, text=message_text(e), thread_ts=thread_ts,
            metadata={"event_type": EVENT_TYPE, "event_payload": {
                "event_id": e["id"], "dispatch_id": e.get("dispatch_id", ""), "operation": e.get("operation", ""),
                "host": e.get("host", ""), "outcome": e.get("outcome", "")}})
        return str(resp["ts"])

    def _messages(self, method: Callable[..., Any], **kw: Any):
        """Every message a history call returns, page after page (at most MAX_FIND_PAGES)."""
        cursor = None
        for _ in range(MAX_FIND_PAGES):
            args = dict(kw, channel=self.channel, include_all_metadata=True, limit=200)
            if cursor:
                args["cursor"] = cursor
            resp = method(**args)
            yield from resp.get("messages") or []
            cursor = ((resp.get("response_metadata") or {}).get("next_cursor") or "") if resp.get("has_more", True) else ""
            if not cursor:
                return

    def find(self, e: dict[str, Any], thread_ts: str | None) -> str | None:
        """The ts of an already-posted message for ``e`` (by metadata event_id), paging back to its time."""
        msgs = (self._messages(self.client.conversations_replies, ts=thread_ts) if thread_ts else
                self._messages(self.client.conversations_history,
                               oldest=str(max(0.0, float(e.get("epoch", 0) or 0) - 300))))
        for m in msgs:
            if ((m.get("metadata") or {}).get("event_payload") or {}).get("event_id") == e["id"]:
                return str(m.get("ts"))
        return None

    def find_thread(self, dispatch_id: str) -> str | None:
        """The ts of the thread root of ``dispatch_id`` in the channel (its earliest root message), if any."""
        found = None
        for m in self._messages(self.client.conversations_history):
            md = (m.get("metadata") or {}).get("event_payload") or {}
            root = not m.get("thread_ts") or m.get("thread_ts") == m.get("ts")
            if md.get("dispatch_id") == dispatch_id and root and (found is None or float(m["ts"]) < float(found)):
                found = str(m["ts"])
        return found


MAX_FIND_PAGES = 50


# Slack errors that will not change on a retry of the same event: mark it failed and go on.
PERMANENT_ERRORS = {"msg_too_long", "channel_not_found", "not_in_channel", "is_archived", "invalid_blocks",
                    "invalid_metadata_format", "invalid_metadata_schema", "no_text", "too_many_attachments",
                    "restricted_action", "invalid_arguments", "metadata_too_large"}


class RateLimited(Exception):
    """Slack said 429; ``retry_after`` seconds."""

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(f"rate limited, retry after {retry_after:g}s")


def deliver(journal: Journal, poster: SlackPoster, event_ids: set[str] | None = None,
            on_rate_limit: Callable[[float], bool] | None = None, deadline: float | None = None,
            retry_failed: bool = False) -> tuple[int, str]:
    """Deliver pending events in order (all, or those in ``event_ids``). Returns (sent, stop reason).

    Holds the delivery lock throughout, so concurrent deliverers serialise and none repeats
    another's work. On 429, ``on_rate_limit(retry_after)`` says whether to wait and go on.
    """
    from slack_sdk.errors import SlackApiError

    sent = 0
    gave_up: list[str] = []
    threads: dict[str, str] = {}
    with journal.lock():
        st = journal.load()
        for e in st.pending(include_failed=retry_failed):
            if event_ids is not None and e["id"] not in event_ids:
                continue
            if e.get("channel", "") != poster.channel:
                continue  # an event is only ever sent to the channel it was recorded for
            if deadline is not None and time.monotonic() > deadline:
                return sent, "out of time"
            thread = st.thread_ts(e["dispatch_id"]) if e.get("dispatch_id") else None
            if thread is None and e.get("dispatch_id") and e["operation"] != "dispatch_requested":
                # a dispatch this machine did not start (another orchestrator's): continue its
                # thread, found in the channel by the dispatch id in fleet's message metadata
                thread = threads.get(e["dispatch_id"]) or poster.find_thread(e["dispatch_id"])
                if thread:
                    threads[e["dispatch_id"]] = thread
            while True:
                try:
                    ts = None
                    if e["id"] in st.attempted:
                        ts = poster.find(e, thread)
                    if ts is None:
                        journal.append({"type": "attempt", "event_id": e["id"], "time": _now()})
                        st.attempted.add(e["id"])
                        ts = poster.post(e, thread)
                    rec = {"type": "delivered", "event_id": e["id"], "ts": ts, "thread_ts": thread or ts,
                           "time": _now()}
                    journal.append(rec)
                    st.delivered[e["id"]] = rec
                    sent += 1
                    break
                except SlackApiError as exc:
                    resp = exc.response
                    if getattr(resp, "status_code", 0) == 429:
                        ra = float((resp.headers or {}).get("Retry-After", resp.headers.get("retry-after", 1)) or 1)
                        if on_rate_limit is not None and on_rate_limit(ra):
                            continue
                        return sent, f"rate limited (retry after {ra:g}s)"
                    err = (resp.get("error") if hasattr(resp, "get") else None) or f"HTTP {resp.status_code}"
                    if err in PERMANENT_ERRORS:
                        rec = {"type": "failed", "event_id": e["id"], "error": err, "time": _now()}
                        journal.append(rec)
                        st.failed[e["id"]] = rec
                        gave_up.append(err)
                        break  # this event is given up on (audit.replay --retry-failed); the rest go on
                    return sent, f"Slack refused the post: {err}"
                except Exception as exc:  # noqa: BLE001 - any transport failure leaves it pending
                    return sent, f"Slack unreachable: {type(exc).__name__}"
        if gave_up:
            return sent, (f"Slack refused {len(gave_up)} event(s) for good ({', '.join(sorted(set(gave_up)))}): "
                          f"marked failed; see audit.tail, retry with audit.replay --retry-failed")
        return sent, ""

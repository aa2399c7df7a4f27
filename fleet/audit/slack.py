"""Delivery of journal events to Slack (slack-sdk's WebClient): in order, exactly once, one
thread per dispatch. Sends and their records happen under the journal's delivery lock, so two
replays (or a replay and a live run) never post an event twice; an event with an ``attempt``
but no ``delivered`` line has an unknown fate, and the channel is searched for its id
(message metadata, paging back to its time) before it is posted again.

A needs-input post names the request (its id in the message metadata, with the session's) and
carries Block Kit buttons that ``fleet listen`` answers through Socket Mode: Approve once /
Approve always / Deny for a permission, one button per option for a question. A 429's
Retry-After is read by :func:`retry_after`, whatever it says.
"""
from __future__ import annotations

import json
import re
import time
from typing import Any, Callable

from fleet.audit.journal import Journal, _now
from fleet.inventory import SlackSettings

EVENT_TYPE = "fleet_audit"


def message_text(e: dict[str, Any]) -> str:
    """The Slack text of one event: short, readable, no secrets (redacted before journalling)."""
    d = e.get("detail") or {}
    if d.get("say"):  # fleet listen's reply in a dispatch thread: said as it is
        return str(d["say"])
    bits = [f"[{e.get('actor')}] {e['operation']} on {e.get('host') or '-'}: {e.get('outcome')}"]
    for k in ("session_id", "request", "repo", "task", "issue", "answer", "error", "reason", "hosts", "plan"):
        if d.get(k):
            bits.append(f"{k}: {d[k]}")
    return " | ".join(bits)


def retry_after(headers: Any, default: float = 1.0, most: float = 86400.0) -> float:
    """The seconds a 429's ``Retry-After`` asks for: ``default`` when it is missing, not a number
    (``soon``, an HTTP date), negative or NaN; at most ``most``. Callers bound their own waits."""
    raw: Any = None
    try:
        raw = headers.get("Retry-After", headers.get("retry-after")) if headers is not None else None
    except AttributeError:
        raw = None
    if isinstance(raw, (list, tuple)):
        raw = raw[0] if raw else None
    try:
        v = float(str(raw).strip())
    except (TypeError, ValueError):
        return default
    if v != v or v < 0:  # NaN, or a negative wait
        return default
    return min(v, most)


# The needs-input buttons: action id, label, the permission reply, style.
PERMISSION_BUTTONS = (("fleet_approve_once", "Approve once", "once", "primary"),
                      ("fleet_approve_always", "Approve always", "always", ""),
                      ("fleet_deny", "Deny", "reject", "danger"))
ANSWER_BUTTON = "fleet_answer_"  # + the option's index
NEEDS_INPUT_BLOCK = "fleet_needs_input"


def is_question(detail: dict[str, Any]) -> bool:
    """A needs-input event's request is a question (the agent's question tool), not a permission."""
    return str(detail.get("request", "")).startswith("question:") or str(detail.get("request_id", "")).startswith("que_")


def question_options(detail: dict[str, Any]) -> list[str]:
    """The option labels of a needs-input question (``options`` if journaled, else read from its
    description, ``question: Q (yes/no)``: one question only)."""
    opts = detail.get("options")
    if isinstance(opts, list):
        return [str(o) for o in opts if str(o)][:20]
    m = re.fullmatch(r"question: [^;]*\(([^()]*)\)", str(detail.get("request", "")))
    return [o for o in m.group(1).split("/") if o][:20] if m else []


def _button(action_id: str, label: str, value: dict[str, str], style: str = "") -> dict[str, Any]:
    b: dict[str, Any] = {"type": "button", "action_id": action_id, "text": {"type": "plain_text", "text": label[:75]},
                         "value": json.dumps(value, separators=(",", ":"))[:2000]}
    if style:
        b["style"] = style
    return b


def needs_input_blocks(e: dict[str, Any], text: str) -> list[dict[str, Any]] | None:
    """The Block Kit of a needs-input post a person answers (None: no buttons, e.g. a request the
    dispatch's ``--on-permission`` policy answered itself)."""
    d = e.get("detail") or {}
    if e.get("operation") != "needs_input" or not d.get("request_id") or d.get("policy") not in (None, "", "ask"):
        return None
    value = {"d": str(e.get("dispatch_id", "")), "h": str(e.get("host", "")), "s": str(d.get("session_id", "")),
             "r": str(d["request_id"])}
    if is_question(d):
        buttons = [_button(f"{ANSWER_BUTTON}{i}", label, dict(value, a=label)) for i, label in
                   enumerate(question_options(d))]
        hint = "Or reply `answer TEXT` in this thread."
    else:
        buttons = [_button(aid, label, dict(value, a=reply), style) for aid, label, reply, style in PERMISSION_BUTTONS]
        hint = "Or reply `approve`, `approve always` or `deny REASON` in this thread."
    if not buttons:
        return None
    return [{"type": "section", "text": {"type": "mrkdwn", "text": text[:2900]}},
            {"type": "actions", "block_id": NEEDS_INPUT_BLOCK, "elements": buttons},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": hint}]}]


def metadata(e: dict[str, Any]) -> dict[str, Any]:
    """fleet's message metadata for an event: its id, dispatch, operation, host, outcome, and the
    session and request it is about (a listener on any machine binds a reply to them)."""
    d = e.get("detail") or {}
    pl = {"event_id": e["id"], "dispatch_id": e.get("dispatch_id", ""), "operation": e.get("operation", ""),
          "host": e.get("host", ""), "outcome": e.get("outcome", "")}
    for k in ("session_id", "request_id", "request", "policy", "hosts"):
        if d.get(k):
            pl[k] = str(d[k])[:500]
    return {"event_type": EVENT_TYPE, "event_payload": pl}


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
        """Post one event; returns its ts. A needs-input post carries its buttons; if Slack refuses
        the blocks, the text alone is posted (the person can still reply in the thread)."""
        from slack_sdk.errors import SlackApiError

        text = message_text(e)
        kw: dict[str, Any] = {"channel": self.channel, "text": text, "thread_ts": thread_ts, "metadata": metadata(e)}
        blocks = needs_input_blocks(e, text)
        if blocks:
            try:
                return str(self.client.chat_postMessage(**kw, blocks=blocks)["ts"])
            except SlackApiError as exc:
                if _error(exc.response) not in ("invalid_blocks", "invalid_blocks_format", "invalid_arguments"):
                    raise
        return str(self.client.chat_postMessage(**kw)["ts"])

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


def _error(resp: Any) -> str:
    try:
        return str(resp.get("error") or "")
    except (AttributeError, TypeError, ValueError):
        return ""


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
                        ra = retry_after(resp.headers)
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

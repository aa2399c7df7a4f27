"""Socket Mode for ``fleet listen``, through slack-sdk's own builtin ``SocketModeClient`` (its own
WebSocket code: no extra dependency), with the app-level token (``xapp-...``).

Slack sends envelopes: ``hello`` (connected: the listener catches up on what was written while
nobody was told), ``events_api`` (message events: a reply in a dispatch thread), ``interactive``
(``block_actions``: a click on a needs-input button) and ``disconnect`` (Slack's refresh: the
client reconnects). Each envelope is acknowledged first, then acted on; a redelivered one
finds its reply or click already in the ledger. The WebSocket URL comes from
``apps.connections.open`` asked through the listener's bounded calls (a refused app token
stops the listener with the reason); slack-sdk reconnects on its own when the link drops.
"""
from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable

from fleet.audit.slack import ANSWER_BUTTON
from fleet.ops.listen_slack import ListenStopped, SlackRefused, quiet_logger
from fleet.ops.listen_state import Bound, Known, payload

PING = 3.0  # seconds between pings: a dead link is seen within four


def _client_class() -> Any:
    from slack_sdk.socket_mode.builtin import SocketModeClient

    class Client(SocketModeClient):
        """slack-sdk's builtin client; the WebSocket URL is asked for by fleet (bounded, said once)."""

        def __init__(self, issue: Callable[[], str], **kw: Any) -> None:
            self._issue = issue
            super().__init__(**kw)

        def issue_new_wss_url(self) -> str:
            return self._issue()
    return Client


class SocketLink:
    """One listener's Socket Mode connection."""

    def __init__(self, listener: Any, app_token: str, token_env: str = "SLACK_APP_TOKEN") -> None:
        self.listener = listener
        self.app_token = app_token
        self.token_env = token_env
        self.fatal = ""
        self.hello = threading.Event()
        self.client: Any = None
        self._tried = 0.0

    def _url(self) -> str:
        try:
            resp = self.listener.web.call("apps.connections.open", token_env=self.token_env, app_token=self.app_token)
        except ListenStopped as exc:
            self.fatal = str(exc)
            raise
        except SlackRefused as exc:
            self.fatal = (f"listen stopped: Slack would not open a Socket Mode connection ({exc.error}): check the "
                          f"app-level token in ${self.token_env} (connections:write) and that Socket Mode is on")
            raise ListenStopped(self.fatal) from None
        if not resp or not resp.get("url"):
            raise ConnectionError("Slack gave no Socket Mode URL now")
        return str(resp["url"])

    def start(self) -> None:
        """Connect (a refused app token raises :class:`ListenStopped`; Slack down: tried again)."""
        if not self.app_token.startswith("xapp-"):
            raise ListenStopped(f"listen stopped: ${self.token_env} is not an app-level token (xapp-...): make one "
                                f"under Basic Information > App-Level Tokens with connections:write")
        self._tried = time.monotonic()
        try:
            url = self._url()
        except ConnectionError:
            return  # Slack could not say now: :meth:`connected` tries again; the threads are polled meanwhile
        self.client = _client_class()(self._url, app_token=self.app_token, web_client=self.listener.web.client,
                                      logger=quiet_logger("fleet.listen.socket"), ping_interval=PING,
                                      auto_reconnect_enabled=True)
        self.client.socket_mode_request_listeners.append(self._on_request)
        self.client.message_listeners.append(self._on_message)
        self.client.wss_uri = url
        self.client.connect()

    def connected(self) -> bool:
        if self.client is None and not self.fatal and time.monotonic() - self._tried > 5.0:
            self.start()
        return self.client is not None and bool(self.client.is_connected())

    def _on_message(self, client: Any, message: dict[str, Any], raw: str | None = None) -> None:
        if message.get("type") == "hello":
            self.hello.set()

    def _on_request(self, client: Any, req: Any) -> None:
        from slack_sdk.socket_mode.response import SocketModeResponse

        try:
            client.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id))  # at once
        except Exception as exc:  # noqa: BLE001 - Slack redelivers; the ledger keeps it once
            self.listener.note("ack", f"listen: could not acknowledge a Socket Mode envelope ({type(exc).__name__})")
        body = req.payload if isinstance(req.payload, dict) else {}
        try:
            if req.type == "events_api":
                ev = body.get("event")
                if isinstance(ev, dict):
                    self.listener.on_message(ev)
            elif req.type == "interactive" and body.get("type") == "block_actions":
                self.listener.on_click(body)
        except ListenStopped as exc:
            self.fatal = str(exc)
        except Exception as exc:  # noqa: BLE001 - one event's trouble never ends the listener
            self.listener.note(f"event {type(exc).__name__}", f"listen: could not act on a Socket Mode {req.type} "
                                                              f"event ({type(exc).__name__}: {str(exc)[:160]})")

    def close(self) -> None:
        if self.client is not None:
            try:
                self.client.close()
            except Exception:  # noqa: BLE001 - closing on the way out
                pass


def click(lst: Any, body: dict[str, Any]) -> dict[str, Any] | None:
    """A click on a needs-input button: answers the request that post names, once, if the clicker
    may and the agent still waits on it; anything else is said to the clicker alone."""
    user = str((body.get("user") or {}).get("id") or "")
    act = (body.get("actions") or [{}])[0]
    aid = str(act.get("action_id") or "")
    cont, message = body.get("container") or {}, body.get("message") or {}
    channel = str((body.get("channel") or {}).get("id") or cont.get("channel_id") or "")
    if not aid.startswith("fleet_") or channel != lst.channel or not user:
        return None
    msg_ts = str(cont.get("message_ts") or message.get("ts") or "")
    thread_ts = str(cont.get("thread_ts") or message.get("thread_ts") or msg_ts)
    try:
        value = json.loads(act.get("value") or "{}")
    except ValueError:
        value = {}
    did, host, sid, rid, a = (str((value if isinstance(value, dict) else {}).get(k) or "") for k in "dhsra")
    if not (did and sid and rid):
        return None
    key = f"click:{channel}:{msg_ts}:{act.get('action_ts') or body.get('trigger_id')}:{user}"
    out: dict[str, Any] = {"dispatch_id": did, "by": user, "command": aid, "outcome": "", "notes": []}
    if user not in lst.allowed:
        if not lst.ledger.claim(key, did, by=user, command=aid, request_id=rid):
            return None
        lst.trail.record("listen_refused", host, "refused", dispatch_id=did, by=user, command=aid, request_id=rid)
        lst.ephemeral(user, thread_ts, "Only the people in fleet's slack.allowed_users can answer the agent: your "
                                       "click was not acted on.")
        return dict(out, outcome="refused")
    if not lst.ledger.claim(key, did, by=user, command=aid, request_id=rid):
        return None
    first = lst.ledger.claims.get(f"answer:{rid}")
    if first is not None:
        by = (first.get("detail") or {}).get("by", "")
        at = time.strftime("%H:%M", time.localtime(float(first.get("epoch") or 0)))
        lst.ephemeral(user, thread_ts, f"That request was already answered from Slack (by <@{by}> at {at}). "
                                       f"Nothing done.")
        return dict(out, outcome="stale")
    lst.thread_of(thread_ts)
    lst.replies(thread_ts)
    known = Known(lst.trail.journal.load(), lst.msgs)
    v = known.view(did, thread_ts)
    if v.phase != "open":
        how = ", ".join(f"{h or '-'} {e}" for h, e in sorted(v.ends.items()))
        lst.ephemeral(user, thread_ts, f"That request is no longer pending: its dispatch has "
                                       f"{'ended' if v.phase == 'ended' else 'been stopped'} ({how}). Nothing done.")
        lst.mark_post(thread_ts, msg_ts, f"no longer pending: the dispatch has "
                                         f"{'ended' if v.phase == 'ended' else 'been stopped'}", message)
        return dict(out, outcome="stale")
    question = aid.startswith(ANSWER_BUTTON)
    if not question and a not in ("once", "always", "reject"):
        return None
    what = str((payload(message) or {}).get("request") or "")
    ok, note = lst.answer(did, thread_ts, Bound(host, sid, rid, what, msg_ts), user, "once" if question else a,
                          a if question else "", None, question, known.recorded(), "button", post=message)
    if not ok:
        lst.ephemeral(user, thread_ts, note[:1].upper() + note[1:] + ".")
        if "no longer pending" in note or "gone" in note:
            lst.mark_post(thread_ts, msg_ts, "no longer pending (answered elsewhere, or the agent went on)", message)
        return dict(out, outcome="stale", notes=[note])
    return dict(out, outcome="ok", notes=[note])


__all__ = ["SocketLink", "click"]

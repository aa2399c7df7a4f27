"""The seed's human interrupt flow: act on replies and button clicks in each open dispatch's
Slack thread, each at most once, ever.

``fleet listen`` follows the thread of every open (or stopped) dispatch: the ones this machine's
journal knows, and those of other orchestrators found in the channel (fleet's message metadata
names the dispatch; their sessions are found on the servers by fleet's marks), for a day at
most. With an app-level token (``xapp-...``) it is told at once through Socket Mode (message
events in the threads, ``block_actions`` clicks on the needs-input buttons: see
:mod:`fleet.ops.listen_socket`) and reads the threads again only to catch up (at the start,
after each reconnect, and while disconnected); with the bot token alone it polls them
(``conversations.history`` once a pass, ``conversations.replies`` for a thread with a new reply).

What it does for each reply and click is :mod:`fleet.ops.listen_act`; what it knows, the
ledger of what it did and how a reply is bound to a request is :mod:`fleet.ops.listen_state`.
Slack's faults are bounded and said once (:mod:`fleet.ops.listen_slack`). fleet's own posts
(its message metadata) are never commands. Its thread replies are journal events posted by
the audit trail (exactly once, like every event).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from fleet.audit.journal import Journal, JournalState
from fleet.audit.records import SessionRecords
from fleet.audit.trail import AuditTrail
from fleet.errors import BadInput
from fleet.inventory import Inventory
from fleet.ops.listen_act import Acts
from fleet.ops.listen_post import Replies
from fleet.ops.listen_slack import ListenStopped, Once, SlackRefused, SlackWeb, quiet_logger
from fleet.ops.listen_state import Known, Ledger, payload

MAX_AGE = 86400.0


@dataclass
class OpenDispatch:
    """A dispatch whose thread is followed."""

    dispatch_id: str
    thread_ts: str
    sessions: list[tuple[str, str]] = field(default_factory=list)  # (host, session id)
    seen: set[str] = field(default_factory=set)  # message ts already handled by this process
    read_upto: str = ""  # the thread's latest reply when it was last read ("" = never read)


def open_dispatches(journal: Journal | JournalState, channel: str, max_age_s: float = MAX_AGE) -> list[OpenDispatch]:
    """Dispatches of the journal with a Slack thread in ``channel`` that are open or stopped
    (each host's last start or end says: a ``continue`` reopens one), started within ``max_age_s``."""
    st = journal.load() if isinstance(journal, Journal) else journal
    known = Known(st, {})
    now = time.time()
    out = []
    for did in dict.fromkeys(e.get("dispatch_id") for e in st.events if e.get("channel", "") == channel
                             and e.get("dispatch_id") and now - float(e.get("epoch") or now) <= max_age_s):
        ts = st.thread_ts(str(did))
        v = known.view(str(did), ts) if ts else None
        if ts and v is not None and v.phase != "ended":
            out.append(OpenDispatch(str(did), ts, list(v.sessions)))
    return out


class Listener(Acts):
    """Passes (:meth:`poll_once`) over the open dispatches' threads, Socket Mode events
    (:meth:`on_message`, :meth:`on_click`), or both in a loop (:meth:`run`)."""

    def __init__(self, inv: Inventory, trail: AuditTrail, token: str, records: SessionRecords | None = None,
                 beads: Any = None, sleep: Callable[[float], None] = time.sleep, app_token: str | None = None,
                 out: Callable[[str], None] | None = None, app_token_env: str = "SLACK_APP_TOKEN") -> None:
        if inv.slack is None:
            raise BadInput("the inventory has no 'slack:' section: add slack: {channel: C..., allowed_users: [U...]}")
        quiet_logger("slack_sdk")  # its failures are said here, once, not logged to stderr
        self.note = Once(out)
        self.web = SlackWeb(inv.slack, token, self.note, sleep)
        self.client = self.web.client
        self.inv = inv
        self.channel = inv.slack.channel
        self.allowed = set(inv.slack.allowed_users)
        # what it does is journaled and posted by the listener itself, within its deadline
        self.trail = Replies(trail, inv.slack, token, self.note, self.web.left, sleep)
        self.outer = trail
        self.records = records
        self.beads = beads
        self.sleep = sleep
        self.app_token = app_token
        self.app_token_env = app_token_env
        self.ledger = Ledger(trail.journal, trail.actor)
        self.followed: dict[str, OpenDispatch] = {}
        self.over: set[str] = set()  # dispatches seen to have ended: their threads are not read again
        self.msgs: dict[str, list[dict[str, Any]]] = {}  # thread ts -> its messages when last read
        self.not_fleet: set[str] = set()  # threads in the channel that are not a dispatch's
        self.followers: list[threading.Thread] = []  # the turns a `continue` started, followed
        self.skipped_reads = 0
        self.lock = threading.RLock()
        self.on_action: Callable[[dict[str, Any]], None] | None = None
        self.max_age_s = MAX_AGE

    # ------------------------------------------------------------------ Slack, bounded
    def say(self, did: str, operation: str, outcome: str, text: str, **detail: Any) -> None:
        """Reply in the dispatch's thread: a journal event this listener posts (exactly once)."""
        self.trail.record(operation, str(detail.pop("host", "") or ""), outcome, dispatch_id=did, say=text, **detail)

    def flush(self) -> None:
        """Post what this listener journaled, within its deadline (the rest stays pending)."""
        self.trail.flush()

    def ephemeral(self, user: str, thread_ts: str, text: str) -> None:
        try:
            self.web.call("chat.postEphemeral", channel=self.channel, user=user, text=text,
                          **({"thread_ts": thread_ts} if thread_ts else {}))
        except SlackRefused as exc:
            self.note(f"ephemeral {exc.error}", f"listen: Slack would not show {user} a message only they see "
                                                f"({exc.error})")

    def replies(self, thread_ts: str) -> list[dict[str, Any]] | None:
        """Every message of a thread (paged), or None when Slack could not say now."""
        got: list[dict[str, Any]] = []
        cursor = ""
        for _ in range(20):
            kw: dict[str, Any] = {"channel": self.channel, "ts": thread_ts, "include_all_metadata": True, "limit": 200}
            if cursor:
                kw["cursor"] = cursor
            resp = self.web.call("conversations.replies", **kw)
            if resp is None:
                return None
            got += list(resp.get("messages") or [])
            cursor = str((resp.get("response_metadata") or {}).get("next_cursor") or "") if resp.get("has_more") else ""
            if not cursor:
                break
        self.msgs[thread_ts] = got
        return got

    def _channel_dispatches(self) -> dict[str, tuple[str, str]] | None:
        """Dispatch id -> (thread root, its latest reply) of every fleet thread in the channel of
        the last day, from any orchestrator; None when Slack would not say now."""
        try:
            resp = self.web.call("conversations.history", wait=False, channel=self.channel, include_all_metadata=True,
                                 limit=200,
                                 oldest=str(time.time() - self.max_age_s))
        except SlackRefused as exc:
            self.note(f"history {exc.error}", f"listen: Slack would not list the channel ({exc.error}): following "
                                              f"this machine's dispatches only")
            return None
        if resp is None:
            return None
        roots: dict[str, tuple[str, str]] = {}
        for m in resp.get("messages") or []:
            did = (payload(m) or {}).get("dispatch_id")
            if did and (not m.get("thread_ts") or m.get("thread_ts") == m.get("ts")):
                if did not in roots or float(m["ts"]) < float(roots[did][0]):
                    roots[did] = (str(m["ts"]), str(m.get("latest_reply") or m["ts"]))
        return roots

    def marks(self, did: str) -> list[tuple[str, str]]:
        """A dispatch's sessions from fleet's marks on the servers (another orchestrator's)."""
        from fleet.ops.wait import dispatch_sessions
        try:
            return [(h.name, sid) for h, sid in dispatch_sessions(self.inv, did, self.records)]
        except BadInput:
            return []

    # ------------------------------------------------------------------ a pass
    def poll_once(self) -> list[dict[str, Any]]:
        """Read every followed thread with something new once; act on each new reply once."""
        with self.lock:
            st = self.trail.journal.load()
            self.ledger.read(st)
            for d in open_dispatches(st, self.channel, self.max_age_s):
                known = self.followed.setdefault(d.dispatch_id, d)
                known.sessions = d.sessions
                self.over.discard(d.dispatch_id)  # a `continue` from elsewhere reopened it
            roots = self._channel_dispatches()
            for did, (ts, _) in (roots or {}).items():
                if did not in self.followed and did not in self.over:
                    self.followed[did] = OpenDispatch(did, ts)
            done: list[dict[str, Any]] = []
            for d in list(self.followed.values()):
                left = self.web.left()
                if left is not None and left <= 0:
                    break
                if float(d.thread_ts or 0) < time.time() - self.max_age_s:
                    self.followed.pop(d.dispatch_id)
                    continue
                latest = roots[d.dispatch_id][1] if roots and d.dispatch_id in roots else None
                if latest is not None and latest == d.read_upto:
                    self.skipped_reads += 1  # nothing new since it was last read
                    continue
                msgs = self.replies(d.thread_ts)
                if msgs is None:
                    continue  # Slack could not say now: read again next pass
                d.read_upto = latest or ""
                done += self._handle(d, msgs, st)
            self.flush()
        for a in done:
            if self.on_action:
                self.on_action(a)
        return done

    def _handle(self, d: OpenDispatch, msgs: list[dict[str, Any]], st: JournalState,
                only: str | None = None) -> list[dict[str, Any]]:
        """Act on the people's messages of one thread (``only``: that ts); then forget a thread
        whose dispatch has ended."""
        done = []
        known = Known(st, self.msgs)
        for m in msgs:
            ts = str(m.get("ts", ""))
            if ts == d.thread_ts or ts in d.seen or (only is not None and ts != only):
                continue
            if payload(m) is not None or m.get("bot_id") or m.get("subtype") not in (None, "thread_broadcast"):
                continue  # fleet's own posts, other bots, edits and joins
            d.seen.add(ts)
            a = self.reply(d.dispatch_id, d.thread_ts, known, m)
            if a is not None:
                done.append(a)
                known = Known(self.trail.journal.load(), self.msgs)  # what it did counts for the next reply
        if known.view(d.dispatch_id, d.thread_ts).phase == "ended" and not self._following(d.dispatch_id):
            self.followed.pop(d.dispatch_id, None)
            self.over.add(d.dispatch_id)
        return done

    def _following(self, did: str) -> bool:
        self.followers = [t for t in self.followers if t.is_alive()]
        return any(did in t.name for t in self.followers)

    # ------------------------------------------------------------------ Socket Mode
    def thread_of(self, thread_ts: str) -> OpenDispatch | None:
        """The followed dispatch of a thread, or (read once) a fleet thread not followed yet."""
        for d in self.followed.values():
            if d.thread_ts == thread_ts:
                return d
        if thread_ts in self.not_fleet:
            return None
        msgs = self.replies(thread_ts)
        root = next((m for m in msgs or [] if str(m.get("ts")) == thread_ts), None)
        did = str((payload(root) or {}).get("dispatch_id") or "") if root else ""
        if msgs is not None and not did:
            self.not_fleet.add(thread_ts)  # someone else's thread: not read again
        if not did or float(thread_ts) < time.time() - self.max_age_s:
            return None
        d = self.followed.setdefault(did, OpenDispatch(did, thread_ts))
        return d

    def on_message(self, ev: dict[str, Any]) -> dict[str, Any] | None:
        """A message event (Socket Mode): a reply in a dispatch thread is acted on, once."""
        ts, thread_ts = str(ev.get("ts") or ""), str(ev.get("thread_ts") or "")
        if ev.get("type") != "message" or ev.get("channel") != self.channel or not thread_ts or ts == thread_ts:
            return None
        if ev.get("bot_id") or ev.get("subtype") not in (None, "thread_broadcast"):
            return None
        with self.lock:
            st = self.trail.journal.load()
            self.ledger.read(st)
            d = self.thread_of(thread_ts)
            if d is None:
                return None
            msgs = self.replies(thread_ts) or self.msgs.get(thread_ts, [])
            if not any(str(m.get("ts")) == ts for m in msgs):
                msgs = msgs + [{"ts": ts, "user": ev.get("user"), "text": ev.get("text"), "thread_ts": thread_ts}]
                self.msgs[thread_ts] = msgs
            done = self._handle(d, msgs, st, only=ts)
            self.flush()
        for a in done:
            if self.on_action:
                self.on_action(a)
        return done[0] if done else None

    def on_click(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """A ``block_actions`` click on a needs-input post (Socket Mode)."""
        from fleet.ops.listen_socket import click
        with self.lock:
            self.ledger.read(self.trail.journal.load())
            a = click(self, body)
            self.flush()
        if a is not None and self.on_action:
            self.on_action(a)
        return a

    # ------------------------------------------------------------------ the loop
    def run(self, interval: float = 5.0, until: Callable[[], bool] | None = None,
            on_action: Callable[[dict[str, Any]], None] | None = None, deadline: float | None = None) -> None:
        """Listen until ``deadline`` (monotonic) or ``until()`` (or Ctrl-C): Socket Mode with an
        app token, else a pass every ``interval`` seconds. Raises :class:`ListenStopped` when
        Slack will not take a token."""
        self.on_action = on_action
        self.web.deadline = deadline

        def over() -> bool:
            return (until is not None and until()) or (deadline is not None and time.monotonic() >= deadline)
        if not self.app_token:
            self.note("polling", f"listen: no app-level token (${self.app_token_env}): polling the threads every "
                                 f"{interval:g}s; set it (Socket Mode) for replies at once and the needs-input buttons")
            while not over():
                self.poll_once()
                end = time.monotonic() + interval if deadline is None else min(deadline, time.monotonic() + interval)
                while not over() and time.monotonic() < end:
                    self.sleep(max(0.0, min(1.0, end - time.monotonic())))
                    if self.trail.mine:
                        with self.lock:
                            self.flush()  # what a followed turn journaled meanwhile
            self._left_behind()
            return
        from fleet.ops.listen_socket import SocketLink
        link = SocketLink(self, self.app_token, self.app_token_env)
        try:
            link.start()
            last = posted = 0.0
            while not over():
                if link.fatal:
                    raise ListenStopped(link.fatal)
                down = not link.connected()
                if link.hello.is_set() or (down and time.monotonic() - last >= interval) or \
                        time.monotonic() - last >= max(60.0, interval):
                    link.hello.clear()
                    if down and last:
                        self.note("socket down", "listen: the Socket Mode connection is down: reconnecting, and "
                                                 f"reading the threads every {interval:g}s meanwhile")
                    self.poll_once()  # catch up: what was written while nobody was told
                    last = time.monotonic()
                elif self.trail.mine and time.monotonic() - posted >= 1.0:
                    posted = time.monotonic()
                    with self.lock:
                        self.flush()  # what a followed turn journaled meanwhile
                left = None if deadline is None else deadline - time.monotonic()
                self.sleep(0.2 if left is None else max(0.0, min(0.2, left)))
        finally:
            link.close()
        self._left_behind()

    def _left_behind(self) -> None:
        """Say which continued turns nobody follows once this listener ends."""
        for t in self.followers:
            if t.is_alive():
                did, _, sid = t.name.removeprefix("fleet-listen-follow-").rpartition("-")
                self.note(f"left {t.name}", f"listen: no longer following the turn sent to {sid} for {did}: "
                                            f"fleet wait --dispatch {did}")


__all__ = ["ListenStopped", "Listener", "OpenDispatch", "open_dispatches"]

"""The seed's human interrupt flow: act on replies in each open dispatch's Slack thread.

``fleet listen`` follows the thread of every open dispatch (one the journal knows, whose root
reached Slack, that has not completed), with ``conversations.replies`` polled (Retry-After
honoured). A reply from a user in the inventory's ``slack.allowed_users`` is a command:

- ``stop``: abort the dispatch's session(s), mark its Beads issue blocked, answer "Stopped. What next?";
- ``approve`` / ``deny [reason]``: answer the permission the agent waits on (the reason goes to the agent);
- ``answer TEXT``: answer the question the agent asks (an option's label, or free text);
- ``status``: answer with each session's state and what it waits on.

fleet's own posts (they carry its message metadata) are ignored; anyone else's reply is ignored
and journaled as refused. Every action is journaled with who asked, and answered in the thread.

Dispatches started by another orchestrator are followed too: their threads are found in the
channel (fleet's message metadata names the dispatch) and their sessions on the servers
(fleet's marks). A dispatch is followed until every host it was sent to has ended (a timeout
is not an end: the agent goes on), and for a day at most.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from fleet.audit.journal import Journal
from fleet.audit.records import SessionRecords
from fleet.audit.slack import EVENT_TYPE
from fleet.audit.trail import AuditTrail
from fleet.errors import BadInput, FleetError
from fleet.inventory import Inventory

COMMANDS = ("stop", "approve", "deny", "answer", "status")
ENDED = {"completed", "failed", "aborted"}


def host_ended(operation: str, outcome: str) -> bool:
    """Whether an event ends a host's part of a dispatch (a timeout does not: the agent goes on,
    and a person may still want to stop it)."""
    return operation in ENDED and outcome != "timeout"


def all_ended(started: set[str], ended: set[str]) -> bool:
    """A dispatch is over when every host it was sent to has ended (not when the first one has)."""
    return bool(started) and started <= ended


@dataclass
class OpenDispatch:
    """A dispatch whose thread is followed."""

    dispatch_id: str
    thread_ts: str
    sessions: list[tuple[str, str]] = field(default_factory=list)  # (host, session id)
    seen: set[str] = field(default_factory=set)  # message ts already handled
    read_upto: str = ""  # the thread's latest reply when it was last read ("" = never read)


def open_dispatches(journal: Journal, channel: str, max_age_s: float = 86400.0) -> list[OpenDispatch]:
    """Dispatches with a Slack thread in ``channel`` that have not ended, newest last."""
    st = journal.load()
    now = time.time()
    by: dict[str, OpenDispatch] = {}
    started: dict[str, set[str]] = {}
    finished: dict[str, set[str]] = {}
    for e in st.events:
        did = e.get("dispatch_id")
        if not did or e.get("channel", "") != channel:
            continue
        if e["operation"] == "dispatch_requested":
            started.setdefault(did, set()).add(e.get("host", ""))
        if host_ended(e["operation"], e.get("outcome", "")):
            finished.setdefault(did, set()).add(e.get("host", ""))
        if now - float(e.get("epoch", now) or now) > max_age_s:
            continue
        ts = st.thread_ts(did)
        if ts and did not in by:
            by[did] = OpenDispatch(did, ts)
        sid = (e.get("detail") or {}).get("session_id")
        if did in by and sid and e["operation"] in ("session_created", "session_resumed"):
            if (e.get("host", ""), sid) not in by[did].sessions:
                by[did].sessions.append((e.get("host", ""), sid))
    return [d for did, d in by.items() if not all_ended(started.get(did, set()), finished.get(did, set()))]


class Listener:
    """One pass (:meth:`poll_once`) or a loop (:meth:`run`) over the open dispatches' threads."""

    def __init__(self, inv: Inventory, trail: AuditTrail, token: str, records: SessionRecords | None = None,
                 beads: Any = None, sleep: Callable[[float], None] = time.sleep) -> None:
        if inv.slack is None:
            raise BadInput("the inventory has no 'slack:' section: add slack: {channel: C..., allowed_users: [U...]}")
        from slack_sdk import WebClient

        kw: dict[str, Any] = {"token": token, "timeout": 10, "retry_handlers": []}
        if inv.slack.base_url:
            kw["base_url"] = inv.slack.base_url if inv.slack.base_url.endswith("/") else inv.slack.base_url + "/"
        self.client = WebClient(**kw)
        self.inv = inv
        self.channel = inv.slack.channel
        self.allowed = set(inv.slack.allowed_users)
        self.trail = trail
        self.records = records
        self.beads = beads
        self.sleep = sleep
        self.followed: dict[str, OpenDispatch] = {}
        self.over: set[str] = set()  # dispatches seen to end in their thread: no longer followed
        self.skipped_reads = 0  # threads not read again: no new reply
        self.started = time.time()
        self.max_age_s = 86400.0

    def _channel_dispatches(self) -> dict[str, tuple[str, str]] | None:
        """Dispatch id -> (thread root, its latest reply) of every fleet thread in the channel of
        the last day, from any orchestrator (fleet's message metadata names the dispatch); None
        when Slack would not say (rate limited): then every followed thread is read."""
        from slack_sdk.errors import SlackApiError
        try:
            resp = self.client.conversations_history(channel=self.channel, include_all_metadata=True, limit=200,
                                                     oldest=str(time.time() - self.max_age_s))
        except SlackApiError as exc:
            if getattr(exc.response, "status_code", 0) == 429:
                return None  # the threads already followed go on; discovery waits for the next pass
            raise
        roots: dict[str, tuple[str, str]] = {}
        for m in resp.get("messages") or []:
            md = m.get("metadata") or {}
            did = (md.get("event_payload") or {}).get("dispatch_id") if md.get("event_type") == EVENT_TYPE else None
            if did and (not m.get("thread_ts") or m.get("thread_ts") == m.get("ts")):
                if did not in roots or float(m["ts"]) < float(roots[did][0]):
                    roots[did] = (str(m["ts"]), str(m.get("latest_reply") or m["ts"]))
        return roots

    def _replies(self, d: OpenDispatch) -> list[dict[str, Any]]:
        from slack_sdk.errors import SlackApiError

        while True:
            try:
                resp = self.client.conversations_replies(channel=self.channel, ts=d.thread_ts,
                                                         include_all_metadata=True, limit=200)
                return list(resp.get("messages") or [])
            except SlackApiError as exc:
                r = exc.response
                if getattr(r, "status_code", 0) == 429:
                    self.sleep(float((r.headers or {}).get("Retry-After", 1) or 1))
                    continue
                raise

    def _say(self, d: OpenDispatch, text: str) -> None:
        self.client.chat_postMessage(channel=self.channel, thread_ts=d.thread_ts, text=text,
                                     metadata={"event_type": EVENT_TYPE, "event_payload": {
                                         "event_id": f"reply-{d.dispatch_id}-{time.time():.6f}",
                                         "dispatch_id": d.dispatch_id}})

    def poll_once(self) -> list[dict[str, Any]]:
        """Read every open thread once; act on new commands. Returns what was done."""
        for d in open_dispatches(self.trail.journal, self.channel, self.max_age_s):
            known = self.followed.setdefault(d.dispatch_id, d)
            known.sessions = d.sessions
        # another orchestrator's dispatches: their threads are in the channel, their sessions on
        # the servers (fleet's marks); their ends are read from fleet's posts in the thread
        roots = self._channel_dispatches()
        for did, (ts, _) in (roots or {}).items():
            if did not in self.followed and did not in self.over:
                self.followed[did] = OpenDispatch(did, ts)
        done = []
        for d in list(self.followed.values()):
            if float(d.thread_ts or 0) < time.time() - self.max_age_s:
                self.followed.pop(d.dispatch_id)  # older than a day: no longer followed
                continue
            # Slack's history says each thread's latest reply: a thread with nothing new since it
            # was last read is not read again (one call a pass, not one a thread)
            latest = roots[d.dispatch_id][1] if roots and d.dispatch_id in roots else None
            if latest is not None and latest == d.read_upto:
                self.skipped_reads += 1
                continue
            d.read_upto = latest or ""
            started: set[str] = set()
            finished: set[str] = set()
            for m in self._replies(d):
                md = m.get("metadata") or {}
                if md.get("event_type") == EVENT_TYPE:
                    pl = md.get("event_payload") or {}
                    if pl.get("operation") == "dispatch_requested":
                        started.add(str(pl.get("host", "")))
                    if host_ended(str(pl.get("operation", "")), str(pl.get("outcome", ""))):
                        finished.add(str(pl.get("host", "")))
                ts = str(m.get("ts", ""))
                if ts in d.seen or ts == d.thread_ts:
                    continue
                d.seen.add(ts)
                if md.get("event_type") == EVENT_TYPE or m.get("bot_id"):
                    continue  # fleet's own posts
                done.append(self._act(d, m))
            if all_ended(started, finished) and d.dispatch_id in self.followed:
                self.followed.pop(d.dispatch_id)
                self.over.add(d.dispatch_id)
        return done

    def _act(self, d: OpenDispatch, m: dict[str, Any]) -> dict[str, Any]:
        user = str(m.get("user", ""))
        said = str(m.get("text", "")).strip()
        cmd, _, rest = said.partition(" ")
        cmd, rest = cmd.lower(), rest.strip()
        host = d.sessions[0][0] if d.sessions else ""
        if user not in self.allowed:
            self.trail.record("listen_refused", host, "refused", dispatch_id=d.dispatch_id, by=user, command=cmd)
            return {"dispatch_id": d.dispatch_id, "by": user, "command": cmd, "outcome": "refused"}
        if cmd not in COMMANDS:
            self._say(d, f"I know: {', '.join(COMMANDS)}.")
            return {"dispatch_id": d.dispatch_id, "by": user, "command": cmd, "outcome": "unknown"}
        if cmd == "answer" and not rest:
            self._say(d, "Answer what? Write: answer yes (an option's label, or your own words).")
            return {"dispatch_id": d.dispatch_id, "by": user, "command": cmd, "outcome": "unknown"}
        from fleet.ops.sessions import abort_sessions, answer_permission, answer_question, host_sessions

        outcome, notes = "ok", []
        if not d.sessions:
            # not in this machine's journal: the sessions are found by fleet's marks on the servers
            from fleet.ops.wait import dispatch_sessions
            try:
                d.sessions = [(h.name, sid) for h, sid in dispatch_sessions(self.inv, d.dispatch_id, self.records)]
            except BadInput:
                pass
        host = host or (d.sessions[0][0] if d.sessions else "")
        for hname, sid in d.sessions:
            h = self.inv.host(hname)
            try:
                if cmd == "stop":
                    abort_sessions(h, sid, records=self.records, audit=self.trail, beads=self.beads,
                                   reason=f"stopped from Slack by {user}")
                    notes.append(f"{hname} {sid}: stopped")
                elif cmd in ("approve", "deny"):
                    got = answer_permission(h, sid, "once" if cmd == "approve" else "reject",
                                            (rest or None) if cmd == "deny" else None, audit=self.trail,
                                            records=self.records)
                    notes.append(f"{hname} {sid}: {cmd}d {'; '.join(got)}")
                elif cmd == "answer":
                    got = answer_question(h, sid, rest, audit=self.trail, records=self.records)
                    notes.append(f"{hname} {sid}: answered {'; '.join(got)}")
                else:
                    row = next((r for r in host_sessions(h, self.records) if r.session_id == sid), None)
                    notes.append(f"{hname} {sid}: {row.state if row else 'gone'}"
                                 + (f" ({row.waiting})" if row and row.waiting else ""))
            except FleetError as exc:
                outcome = "failed"
                notes.append(f"{hname} {sid}: {exc}")
        self.trail.record(f"slack_{cmd}", host, outcome, dispatch_id=d.dispatch_id, by=user,
                          result="; ".join(notes))
        head = {"stop": "Stopped. What next?", "approve": "Approved.", "deny": "Denied.", "answer": "Answered.",
                "status": "Status:"}[cmd]
        self._say(d, head + ("\n" + "\n".join(notes) if notes else " (no session yet)"))
        if cmd == "stop":
            self.followed.pop(d.dispatch_id, None)
        return {"dispatch_id": d.dispatch_id, "by": user, "command": cmd, "outcome": outcome, "notes": notes}

    def run(self, interval: float = 5.0, until: Callable[[], bool] | None = None,
            on_action: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Poll every ``interval`` seconds until ``until()`` (or Ctrl-C)."""
        while until is None or not until():
            for a in self.poll_once():
                if on_action:
                    on_action(a)
            self.sleep(interval)


__all__ = ["Listener", "OpenDispatch", "open_dispatches"]

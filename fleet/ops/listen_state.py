"""What ``fleet listen`` knows, and what it has done: the ledger, and each dispatch as its journal
and its Slack thread tell it.

**The ledger.** Every Slack reply and button click acted on is claimed first, once, ever: a
``slack_action`` event in the journal (journal-only: never posted) whose ``key`` names it
(``reply:CHANNEL:TS``, ``click:CHANNEL:MESSAGE_TS:ACTION_TS:USER``, and ``answer:REQUEST_ID``
for the request it answered). Claims are made under a lock across processes and read back at
start, so restarts, reconnects, redeliveries and repeated passes never act again; a claim is
made before the action, so a crash in between leaves it undone rather than done twice.

**A dispatch** (:class:`View`) is folded from its journal events and fleet's posts in its
thread (their metadata names event, operation, host, outcome, session and request): each host's
last start (``dispatch_requested``) or end says whether it is open, ``stopped`` (its last end
an abort: a person may ``continue``) or ``ended``; its sessions; the requests it asked
(needs-input), each with the time it was first known (journal or Slack, whichever is earlier).

**Binding** (:func:`bind`): a text reply answers, per session, the latest request of its kind
asked before the reply was written, never a later one. A session whose requests were never
recorded (nobody followed its turn) may be answered only when its latest task, anywhere fleet
knows, is this dispatch's and came before the reply, and only a request no dispatch recorded.
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from fleet.audit.journal import Journal, JournalState, _now, host_ended
from fleet.audit.slack import EVENT_TYPE, is_question
from fleet.files import locked

LEDGER = "slack_action"
TURNS = ("session_created", "session_resumed", "task_sent")


class Ledger:
    """The Slack replies and clicks fleet acted on, ever (``slack_action`` events in the journal)."""

    def __init__(self, journal: Journal, actor: str) -> None:
        self.journal = journal
        self.actor = actor
        self.keys: set[str] = set()
        self.claims: dict[str, dict[str, Any]] = {}

    def read(self, st: JournalState) -> None:
        for e in st.events:
            if e.get("operation") == LEDGER:
                key = str((e.get("detail") or {}).get("key") or "")
                if key:
                    self.keys.add(key)
                    self.claims.setdefault(key, e)

    def seen(self, key: str) -> bool:
        return key in self.keys

    def claim(self, key: str, dispatch_id: str = "", **detail: Any) -> bool:
        """Claim ``key`` for this process; False if anyone ever claimed it."""
        if key in self.keys:
            return False
        with locked(self.journal.path, ".slack.lock"):
            self.read(self.journal.load())
            if key in self.keys:
                return False
            e = {"type": "event", "id": "ev_" + secrets.token_hex(8), "time": _now(), "epoch": time.time(),
                 "actor": self.actor, "host": "", "operation": LEDGER, "outcome": "claimed",
                 "dispatch_id": dispatch_id, "channel": "",  # journal-only: the ledger is never posted
                 "detail": {"key": key, **{k: str(v) for k, v in detail.items() if v not in (None, "")}}}
            self.journal.append(e)
            self.keys.add(key)
            self.claims[key] = e
        return True


@dataclass
class Request:
    """A needs-input request of a dispatch."""

    rid: str
    host: str
    sid: str
    text: str
    at: float  # when it was first known (journal epoch or Slack ts)
    post_ts: str = ""  # its needs-input post in the thread
    question: bool = False


@dataclass
class View:
    """One dispatch, as the journal and its thread tell it."""

    dispatch_id: str
    phase: str = "open"  # open | stopped | ended
    ends: dict[str, str] = field(default_factory=dict)  # host -> how its part ended
    sessions: list[tuple[str, str]] = field(default_factory=list)  # (host, session id)
    requests: list[Request] = field(default_factory=list)
    task: str = ""
    repo: str = ""

    def ended_line(self) -> str:
        how = ", ".join(f"{h or '-'} {e}" for h, e in sorted(self.ends.items()))
        return f"That dispatch has ended ({how}): nothing done. Start a new one with fleet dispatch."


@dataclass
class Bound:
    """What a reply or click answers: one request of one session ('' rid: the one pending there
    that no dispatch recorded)."""

    host: str
    sid: str
    rid: str = ""
    text: str = ""
    post_ts: str = ""


def payload(m: dict[str, Any]) -> dict[str, Any] | None:
    """fleet's metadata payload of a Slack message, or None (a person's message)."""
    md = m.get("metadata") or {}
    if md.get("event_type") != EVENT_TYPE:
        return None
    pl = md.get("event_payload")
    return pl if isinstance(pl, dict) else {}


class Known:
    """Everything known now: the folded journal and the thread messages read so far."""

    def __init__(self, st: JournalState, threads: dict[str, list[dict[str, Any]]]) -> None:
        self.st = st
        self.threads = threads
        self.ids = {e["id"] for e in st.events}
        self.by_dispatch: dict[str, list[dict[str, Any]]] = {}
        for e in st.events:
            if e.get("dispatch_id") and e.get("operation") != LEDGER:
                self.by_dispatch.setdefault(str(e["dispatch_id"]), []).append(e)

    def at(self, e: dict[str, Any], ts: str = "") -> float:
        """When an event was first known: its journal time, or its Slack post's if earlier (a
        reply's ts is Slack's clock: the post's is the one to compare it with)."""
        ts = ts or str((self.st.delivered.get(e["id"]) or {}).get("ts") or "")
        at = float(e.get("epoch") or 0)
        if ts:
            at = min(at, float(ts)) if at else float(ts)
        return at

    def _entries(self, did: str, thread_ts: str) -> list[dict[str, Any]]:
        """The dispatch's events in time order: (time, op, host, outcome, detail, post ts)."""
        out: list[dict[str, Any]] = []
        posted: dict[str, str] = {}
        for m in self.threads.get(thread_ts, []):
            pl = payload(m)
            if pl is None or str(m.get("ts")) == "":
                continue
            eid = str(pl.get("event_id") or "")
            if eid:
                posted[eid] = str(m["ts"])
            if eid in self.ids or (pl.get("dispatch_id") or did) != did or not pl.get("operation"):
                continue
            out.append({"at": float(m["ts"]), "op": str(pl.get("operation")), "host": str(pl.get("host") or ""),
                        "outcome": str(pl.get("outcome") or ""), "detail": pl, "post_ts": str(m["ts"])})
        for e in self.by_dispatch.get(did, []):
            ts = posted.get(e["id"]) or str((self.st.delivered.get(e["id"]) or {}).get("ts") or "")
            at = self.at(e, ts)
            out.append({"at": at, "op": str(e["operation"]), "host": str(e.get("host") or ""),
                        "outcome": str(e.get("outcome") or ""), "detail": e.get("detail") or {}, "post_ts": ts})
        return sorted(out, key=lambda x: x["at"])

    def view(self, did: str, thread_ts: str) -> View:
        v = View(did)
        last: dict[str, tuple[str, str, str]] = {}  # host -> (start|end, op, outcome)
        for x in self._entries(did, thread_ts):
            op, host, d = x["op"], x["host"], x["detail"]
            if op == "dispatch_requested":
                last[host] = ("start", op, "")
                v.task = str(d.get("task") or v.task)
                v.repo = str(d.get("repo") or v.repo)
            elif host_ended(op, x["outcome"]):
                last[host] = ("end", op, x["outcome"])
            elif op == "slack_stop" and d.get("hosts"):
                # stopped from Slack (abort_sessions may journal a resumed session's abort under the
                # dispatch that created it): these hosts' parts end here
                for h in str(d["hosts"]).split(","):
                    last[h] = ("end", "aborted", "aborted")
            sid = str(d.get("session_id") or "")
            if sid and (host, sid) not in v.sessions and op in TURNS + ("needs_input",):
                v.sessions.append((host, sid))
            rid = str(d.get("request_id") or "")
            if op == "needs_input" and rid:
                old = next((r for r in v.requests if r.rid == rid), None)
                if old is None:
                    v.requests.append(Request(rid, host, sid, str(d.get("request") or ""), x["at"], x["post_ts"],
                                              is_question(d)))
                else:
                    old.at = min(old.at, x["at"])
                    old.post_ts = old.post_ts or x["post_ts"]
        if last and all(k == "end" for k, _, _ in last.values()):
            v.ends = {h: (outcome if op == "failed" else op) for h, (_, op, outcome) in last.items()}
            v.phase = "stopped" if any(outcome == "aborted" for _, _, outcome in last.values()) else "ended"
        return v

    def recorded(self) -> set[str]:
        """Every request id any dispatch recorded (journal, or fleet's posts read)."""
        got = {str((e.get("detail") or {}).get("request_id")) for e in self.st.events
               if e.get("operation") == "needs_input"}
        for msgs in self.threads.values():
            for m in msgs:
                pl = payload(m) or {}
                if pl.get("operation") == "needs_input" and pl.get("request_id"):
                    got.add(str(pl["request_id"]))
        return got

    def latest_turn(self, sid: str) -> tuple[float, str] | None:
        """(when, dispatch id) of the latest task fleet knows was given to session ``sid``."""
        best: tuple[float, str] | None = None
        for e in self.st.events:
            if e.get("operation") in TURNS and (e.get("detail") or {}).get("session_id") == sid:
                at = self.at(e)
                if best is None or at >= best[0]:
                    best = (at, str(e.get("dispatch_id") or ""))
        for msgs in self.threads.values():
            for m in msgs:
                pl = payload(m) or {}
                if pl.get("operation") in TURNS and pl.get("session_id") == sid and pl.get("event_id") not in self.ids:
                    at = float(m.get("ts") or 0)
                    if best is None or at >= best[0]:
                        best = (at, str(pl.get("dispatch_id") or ""))
        return best


def bind(v: View, known: Known, at: float, question: bool) -> list[Bound]:
    """What a reply written at ``at`` (Slack ts) answers: per session, the latest request of its
    kind asked before it; never a later one (see the module's doc)."""
    latest: dict[str, Request] = {}
    for r in v.requests:
        if r.question == question and r.at < at and (r.sid not in latest or r.at >= latest[r.sid].at):
            latest[r.sid] = r
    out = [Bound(r.host, r.sid, r.rid, r.text, r.post_ts) for r in latest.values()]
    asked = {r.sid for r in v.requests if r.question == question}
    for host, sid in v.sessions:
        if sid in asked or sid in latest:
            continue
        turn = known.latest_turn(sid)
        if turn is None or (turn[1] == v.dispatch_id and turn[0] < at):
            out.append(Bound(host, sid))
    return out


__all__ = ["Bound", "Known", "LEDGER", "Ledger", "Request", "View", "bind", "payload"]

"""What ``fleet listen`` does for a reply or a click, once it has claimed it in the ledger.

Text replies in a dispatch thread (allowed users only; anyone else's command gets an ephemeral
refusal, journaled): ``stop [reason]``, then ``continue <instructions>`` / ``retry
[instructions]`` (to the same session(s): the dispatch reopens and its thread goes on),
``approve [always]``, ``deny [reason]``, ``answer TEXT``, ``status``. Button clicks on a
needs-input post answer the request that post names. In a thread whose dispatch has ended,
nothing is done: the reply says so.

Every answer goes to exactly the request it is bound to (:func:`fleet.ops.listen_state.bind`,
or the button's request id), if the agent still waits on it; else it is stale and says so.
"""
from __future__ import annotations

import re
import threading
import time
from typing import Any, Callable

from fleet.agent.asks import describe_request
from fleet.agent.client import OpenCodeClient
from fleet.agent.outcome import Audit, failed, turn_result
from fleet.agent.tree import tree_requests
from fleet.agent.turn import subscribe, unsubscribe
from fleet.errors import BadInput, FleetError, SessionNotFound
from fleet.ops.listen_state import Bound, Known, View, bind

COMMANDS = ("stop", "continue", "retry", "approve", "deny", "answer", "status")
HELP = ("I know: `stop [reason]`, `continue <instructions>`, `retry [instructions]`, `approve [always]`, "
        "`deny [reason]`, `answer TEXT`, `status`.")
NEXT = "Reply `continue <instructions>` to go on in the same session, or `status`."
VERBS = {"once": "approved", "always": "approved always", "reject": "denied"}


def answers_for(req: dict[str, Any], text: str) -> list[list[str]]:
    """A question's answers from a person's text: an option's label (any case), else the text."""
    out = []
    for q in req.get("questions") or [{}]:
        labels = [str(o.get("label")) for o in (q.get("options") or []) if isinstance(o, dict)]
        out.append([next((lab for lab in labels if lab.lower() == text.strip().lower()), text.strip())])
    return out


class Acts:
    """The actions of :class:`fleet.ops.listen.Listener` (a mixin: it brings the state)."""

    inv: Any
    trail: Any
    records: Any
    beads: Any
    web: Any
    ledger: Any
    channel: str
    allowed: set[str]
    msgs: dict[str, list[dict[str, Any]]]
    followers: list[threading.Thread]
    say: Callable[..., None]
    ephemeral: Callable[[str, str, str], None]
    marks: Callable[[str], list[tuple[str, str]]]

    # ------------------------------------------------------------------ text replies
    def reply(self, did: str, thread_ts: str, known: Known, m: dict[str, Any]) -> dict[str, Any] | None:
        """Act on one person's reply in a dispatch thread, at most once ever."""
        ts, user = str(m.get("ts") or ""), str(m.get("user") or "")
        said = re.sub(r"^(<@[A-Z0-9]+>[\s,:]*)+", "", str(m.get("text") or "").strip())  # "@fleet stop" is "stop"
        word, _, rest = said.partition(" ")
        cmd, rest = word.lower().strip(".!:"), rest.strip()
        key = f"reply:{self.channel}:{ts}"
        if not ts or not user or self.ledger.seen(key):
            return None
        out = {"dispatch_id": did, "by": user, "command": cmd, "outcome": "", "notes": []}
        if user not in self.allowed:
            if cmd not in COMMANDS or not self.ledger.claim(key, did, by=user, command=cmd, thread_ts=thread_ts):
                return None  # someone's chatter is not for fleet
            self.trail.record("listen_refused", "", "refused", dispatch_id=did, by=user, command=cmd)
            self.ephemeral(user, thread_ts, f"Only the people in fleet's slack.allowed_users can steer this agent: "
                                            f"your `{cmd}` was not acted on.")
            return dict(out, outcome="refused")
        v = known.view(did, thread_ts)
        if cmd not in COMMANDS and v.phase == "ended":
            return None
        if not self.ledger.claim(key, did, by=user, command=cmd, thread_ts=thread_ts):
            return None
        if v.phase == "ended":
            return self._said(out, did, "ended", v.ended_line())
        if cmd not in COMMANDS:
            return self._said(out, did, "unknown", HELP)
        if cmd == "status":
            return self._status(out, did, v)
        if cmd in ("continue", "retry"):
            text = rest or (v.task if cmd == "retry" else "")
            if v.phase != "stopped":
                return self._said(out, did, "not_stopped", f"The agent is still at work on this dispatch: write "
                                                           f"`stop` first, then `{cmd} <instructions>`.")
            if not text:
                return self._said(out, did, "unknown", f"{cmd.capitalize()} with what? Write: {cmd} <instructions> "
                                                       f"(they go to the same session).")
            return self._continue(out, did, v, user, text)
        if v.phase == "stopped":
            return self._said(out, did, "stopped", ("Already stopped. " if cmd == "stop" else
                                                    "This dispatch is stopped: nothing waits for an answer. ") + NEXT)
        if cmd == "stop":
            return self._stop(out, did, v, user, rest)
        if cmd == "answer" and not rest:
            return self._said(out, did, "unknown", "Answer what? Write: answer yes (an option's label, or your own "
                                                   "words).")
        reply = "always" if cmd == "approve" and rest.lower() == "always" else ("reject" if cmd == "deny" else "once")
        return self._answer_reply(out, did, thread_ts, v, known, user, cmd, reply, float(ts),
                                  rest if cmd == "answer" else "", (rest or None) if cmd == "deny" else None)

    def _said(self, out: dict[str, Any], did: str, outcome: str, text: str, **detail: Any) -> dict[str, Any]:
        self.say(did, f"slack_{out['command'] if out['command'] in COMMANDS else 'unknown'}", outcome, text,
                 by=out["by"], **detail)
        return dict(out, outcome=outcome)

    def _sessions(self, did: str, v: View) -> list[tuple[str, str]]:
        return v.sessions or self.marks(did)

    def _status(self, out: dict[str, Any], did: str, v: View) -> dict[str, Any]:
        from fleet.ops.sessions import host_sessions

        notes = []
        for host, sid in self._sessions(did, v):
            try:
                row = next((r for r in host_sessions(self.inv.host(host), self.records) if r.session_id == sid), None)
                notes.append(f"{host} {sid}: {row.state if row else 'gone'}"
                             + (f" (waiting on {row.waiting})" if row and row.waiting else ""))
            except FleetError as exc:
                notes.append(f"{host} {sid}: {exc}")
        head = "Status:" if v.phase == "open" else f"Status ({v.phase}):"
        return dict(self._said(out, did, "ok", head + ("\n" + "\n".join(notes) if notes else " no session yet")),
                    notes=notes)

    def _stop(self, out: dict[str, Any], did: str, v: View, user: str, why: str) -> dict[str, Any]:
        from fleet.ops.sessions import abort_sessions

        notes, outcome, hosts = [], "ok", []
        for host, sid in self._sessions(did, v):
            try:
                abort_sessions(self.inv.host(host), sid, records=self.records, audit=self.trail, beads=self.beads,
                               reason=f"stopped from Slack by {user}" + (f": {why}" if why else ""),
                               inventory=self.inv)  # a tool process that outlives the abort is stopped too
                notes.append(f"{host} {sid}: stopped")
                hosts.append(host)
            except FleetError as exc:
                outcome = "failed"
                notes.append(f"{host} {sid}: {exc}")
        head = "Stopped. What next? " + NEXT if hosts else "Nothing stopped."
        return dict(self._said(out, did, outcome, head + ("\n" + "\n".join(notes) if notes else " (no session yet)"),
                               hosts=",".join(dict.fromkeys(hosts))), notes=notes)

    def _continue(self, out: dict[str, Any], did: str, v: View, user: str, text: str) -> dict[str, Any]:
        notes, outcome = [], "ok"
        for host, sid in self._sessions(did, v):
            if v.ends.get(host, "aborted") != "aborted":
                continue  # that host's agent finished its part: only the stopped ones go on
            try:
                self.send_on(did, host, sid, text, user)
                notes.append(f"{host} {sid}: sent")
            except FleetError as exc:
                outcome = "failed"
                notes.append(f"{host} {sid}: {exc}")
        head = "Sent to the same session; following it here." if outcome == "ok" and notes else "Not sent."
        return dict(self._said(out, did, outcome, head + ("\n" + "\n".join(notes) if notes else "")), notes=notes)

    def send_on(self, did: str, host: str, sid: str, text: str, user: str) -> None:
        """Send ``text`` to session ``sid`` as the next turn of dispatch ``did`` (journaled: the
        dispatch reopens, its thread goes on) and follow that turn on a thread of its own."""
        from fleet.ops.sessions import fleet_marks

        h = self.inv.host(host)
        oc = OpenCodeClient(h, None)
        try:
            info = oc.get_session(sid)
            oc.directory = str(info.get("directory") or "") or None
            mark = fleet_marks(info)
            au = Audit(self.trail, did)
            repo = str(mark.get("repo") or str(oc.directory or "").rstrip("/").rsplit("/", 1)[-1])
            au("dispatch_requested", host, "requested", repo=repo, task=text, session_id=sid, by=user)
            au("session_resumed", host, "ok", session_id=sid)
            before = len(oc.messages(sid))
            waker = subscribe(h, sid, oc.directory, lambda kind, x: None)
            try:
                oc.prompt_async(sid, text)
            except BaseException:
                unsubscribe(waker)
                raise
            au("task_sent", host, "ok", session_id=sid)
        except BaseException:
            oc.close()
            raise

        def follow() -> None:
            def result(outcome: Any, **kw: Any) -> Any:
                return outcome
            try:
                turn_result(oc, h, sid, before, result, au, lambda kind, x: None, timeout=1800.0, poll=0.5, stop=None,
                            on_permission="ask", waker=waker, stall_timeout=None)
            except FleetError as exc:
                failed(exc, h, sid, au, result)
            finally:
                oc.close()
        t = threading.Thread(target=follow, name=f"fleet-listen-follow-{did}-{sid}", daemon=True)
        t.start()
        self.followers.append(t)

    # ------------------------------------------------------------------ answers
    def _answer_reply(self, out: dict[str, Any], did: str, thread_ts: str, v: View, known: Known, user: str,
                      cmd: str, reply: str, at: float, text: str, message: str | None) -> dict[str, Any]:
        if not v.sessions:
            v.sessions = self.marks(did)
        notes, done = [], 0
        bound = bind(v, known, at, cmd == "answer")
        for b in bound:
            ok, note = self.answer(did, thread_ts, b, user, reply, text, message, cmd == "answer",
                                   known.recorded(), "reply")
            done += ok
            notes.append(f"{b.host} {b.sid}: {note}")
        if not bound:
            notes.append("nothing was asked before your reply")
        head = {"approve": "Approved.", "deny": "Denied.", "answer": "Answered."}[cmd] if done else "Nothing answered."
        return dict(self._said(out, did, "ok" if done else "stale", head + "\n" + "\n".join(notes)), notes=notes)

    def answer(self, did: str, thread_ts: str, b: Bound, user: str, reply: str, text: str, message: str | None,
               question: bool, recorded: set[str], via: str, post: dict[str, Any] | None = None) -> tuple[bool, str]:
        """Answer the request ``b`` names if the agent still waits on it (claimed once, journaled,
        its needs-input post updated in place); (done, what was answered or why not)."""
        try:
            with OpenCodeClient(self.inv.host(b.host), None, timeout=15.0) as oc:
                try:
                    info = oc.get_session(b.sid)
                except SessionNotFound:
                    return False, "that session is gone: nothing done"
                oc.directory = str(info.get("directory") or "") or None
                pend = tree_requests(oc, b.sid, questions=question)
                req = next((p for p in pend if (p.get("id") == b.rid if b.rid else p.get("id") not in recorded)), None)
                if req is None:
                    if b.rid and self.ledger.seen(f"answer:{b.rid}"):
                        return False, f"that request was already answered from Slack: {b.text or b.rid}"
                    return False, (f"{b.text or 'that request'} is no longer pending (answered already, or the agent "
                                   f"went on): nothing done" if b.rid else "nothing pending to answer")
                rid = str(req["id"])
                if not self.ledger.claim(f"answer:{rid}", did, by=user, via=via):
                    return False, f"that request was already answered from Slack: {describe_request(req)}"
                if question:
                    oc.reply_question(rid, answers_for(req, text))
                else:
                    oc.reply_permission(rid, reply, message)
        except (FleetError, BadInput) as exc:
            return False, str(exc)
        what = describe_request(req)
        if question:
            self.trail.record("question_answered", b.host, "answered", dispatch_id=did, session_id=b.sid, request=what,
                              request_id=rid, answer=text, by=user, via=f"slack {via}")
            verb = f"answered “{text}”"
        else:
            self.trail.record("permission_answered", b.host, reply, dispatch_id=did, session_id=b.sid, request=what,
                              request_id=rid, by=user, message=message, via=f"slack {via}")
            verb = VERBS[reply]
        if b.post_ts:
            self.mark_post(thread_ts, b.post_ts, f"{verb} by <@{user}> at {time.strftime('%H:%M')}", post)
        return True, what

    def mark_post(self, thread_ts: str, ts: str, note: str, post: dict[str, Any] | None = None) -> None:
        """Update a needs-input post in place: its text, then ``note``; no buttons any more."""
        from fleet.ops.listen_slack import SlackRefused

        m = post or next((x for x in self.msgs.get(thread_ts, []) if str(x.get("ts")) == ts), None) or {}
        text = str(m.get("text") or "needs input")
        kw: dict[str, Any] = {"channel": self.channel, "ts": ts, "text": f"{text}\n{note}",
                              "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text[:2900]}},
                                         {"type": "context", "elements": [{"type": "mrkdwn", "text": note}]}]}
        if m.get("metadata"):
            kw["metadata"] = m["metadata"]
        try:
            self.web.call("chat.update", **kw)
        except SlackRefused as exc:
            self.web.note(f"update {exc.error}", f"listen: Slack would not update the needs-input post "
                                                 f"({exc.error}): the answer stands")


__all__ = ["Acts", "COMMANDS", "HELP", "answers_for"]

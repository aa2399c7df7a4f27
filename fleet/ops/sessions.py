"""What the agents are doing, and stopping them: sessions per host, abort, teardown (gated) and
server health. Every call names the host; a wedged server is DOWN after a short timeout."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from fleet.agent.asks import describe_request
from fleet.agent.client import OpenCodeClient
from fleet.agent.usage import session_usage
from fleet.audit.records import SessionRecords, new_dispatch_id
from fleet.errors import BadInput, FleetError, OpenCodeError
from fleet.inventory import Host, Inventory
from fleet.safety import gate
from fleet.safety.gate import TEARDOWN
from fleet.workers import run_bounded


@dataclass(frozen=True)
class SessionRow:
    """One session on one host, for ``inv sessions``."""

    host: str
    session_id: str
    title: str
    state: str
    age_s: int
    directory: str
    fleet: bool
    waiting: str = ""  # the permission it waits on (state needs-input)
    worktree: str = ""  # the git worktree fleet made for it (--worktree), and its branch
    branch: str = ""
    machine: str = ""  # the orchestrating machine that dispatched it (fleet's marks on the server)
    dispatch_id: str = ""
    repo: str = ""  # the repo fleet dispatched it for, else the directory's last part
    tokens: int | None = None  # the session's tokens and cost so far, when the server keeps them
    cost: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return dict(self.__dict__)


def fleet_marks(session: dict[str, Any]) -> dict[str, Any]:
    """What fleet wrote on a session it created (``metadata.fleet``), or {}."""
    md = session.get("metadata") if isinstance(session, dict) else None
    mark = md.get("fleet") if isinstance(md, dict) else None
    return mark if isinstance(mark, dict) else {}


def host_sessions(host: Host, records: SessionRecords | None = None, limit: int = 50,
                  client_factory: Callable[..., OpenCodeClient] = OpenCodeClient) -> list[SessionRow]:
    """Sessions on ``host`` with their state (busy/idle/retry), newest first."""
    recs = {r["session_id"]: r for r in (records.for_host(host.name) if records else [])}
    mine = set(recs)
    with client_factory(host, None) as oc:
        sessions = oc.list_sessions(all_dirs=True)[:limit]
        states: dict[str, Any] = {}
        waiting: dict[str, str] = {}
        for d in sorted({str(s["directory"]) for s in sessions if s.get("directory")}):
            oc.directory = d
            states.update(oc.status())
            for p in oc.permissions() + oc.questions():
                waiting.setdefault(str(p.get("sessionID")), describe_request(p))
    now = time.time() * 1000
    rows = []
    for s in sessions:
        st = states.get(s["id"]) or {"type": "idle"}
        created = ((s.get("time") or {}).get("created")) or now
        state = "needs-input" if s["id"] in waiting else st.get("type", "idle")
        rec = recs.get(s["id"]) or {}
        mark = fleet_marks(s)
        rows.append(SessionRow(host.name, s["id"], str(s.get("title", "")), state,
                               int((now - created) / 1000), str(s.get("directory", "")),
                               s["id"] in mine or bool(mark), waiting.get(s["id"], ""),
                               rec.get("worktree") or mark.get("worktree", ""), rec.get("branch") or mark.get("branch", ""),
                               mark.get("machine", ""), rec.get("dispatch_id") or mark.get("dispatch_id", ""),
                               str(mark.get("repo") or str(s.get("directory", "")).rstrip("/").rsplit("/", 1)[-1]),
                               *(session_usage(s) or (None, None))))
    return rows


def known_session(oc: Any, host: Host, session: str, records: SessionRecords | None,
                  client_factory: Callable[..., OpenCodeClient], consequence: str) -> dict[str, Any]:
    """``GET /session/{id}``; an unknown id is :class:`BadInput` naming the host's sessions."""
    try:
        return oc.get_session(session)
    except OpenCodeError as exc:
        if getattr(exc, "kind", "") != "not_found":
            raise
        have = [r.session_id for r in host_sessions(host, records, client_factory=client_factory)][:10]
        raise BadInput(f"{host.name} has no session {session}: {consequence}"
                       + (f"; its sessions: {', '.join(have)}" if have else "")) from None


PENDING_GRACE = 3.0  # seconds a task sent a moment ago is given to start, so that it can be stopped


def _stop(oc: Any, sid: str, settle: float) -> bool:
    """Abort ``sid`` until it is idle with no task left to start; False if still busy after
    ``settle`` s. A task sent a moment ago (``prompt_async`` returns before the run starts) is
    not stopped by an abort that comes first: the run starts after it. So the abort is repeated
    while the session is busy, and an idle session whose last message is a task with no reply
    yet is watched for PENDING_GRACE s and stopped when it starts."""
    t0 = time.monotonic()
    end = t0 + settle
    oc.abort(sid)
    aborted_at = time.monotonic()
    while True:
        busy = (oc.status().get(sid) or {}).get("type", "idle") != "idle"
        now = time.monotonic()
        if not busy:
            msgs = oc.messages(sid)
            waiting = bool(msgs) and (msgs[-1].get("info") or {}).get("role") == "user"
            if not waiting or now - t0 > PENDING_GRACE:
                return True
        elif now - aborted_at > 1.0:
            oc.abort(sid)  # the run started after the last abort, or ignored it: again
            aborted_at = now
        if now >= end:
            return not busy
        time.sleep(0.1)


def abort_sessions(host: Host, session: str | None = None, all_sessions: bool = False,
                   records: SessionRecords | None = None, audit: Any = None, beads: Any = None,
                   reason: str = "aborted by fleet", client_factory: Callable[..., OpenCodeClient] = OpenCodeClient,
                   settle: float = 5.0) -> list[str]:
    """Abort one session, or every busy one on ``host``; returns the ids that are idle afterwards.

    An unknown session is an error (nothing is journaled). After ``POST /abort`` the session
    must go idle within ``settle`` seconds; one that stays busy is an error naming it (OpenCode
    #16721: an abort that does not stop), and is journaled as such.
    """
    if not session and not all_sessions:
        raise BadInput("say which session: --session ID, or --all-sessions for every busy one")
    done: list[str] = []
    stuck: list[str] = []
    marks: dict[str, dict[str, Any]] = {}
    with client_factory(host, None) as oc:
        if session:
            marks[session] = fleet_marks(known_session(oc, host, session, records, client_factory,
                                                       "nothing was aborted"))
            targets = [session]
        else:
            rows = [r for r in host_sessions(host, records, client_factory=client_factory)
                    if r.state in ("busy", "retry", "needs-input")]
            targets = [r.session_id for r in rows]
            marks = {r.session_id: {"dispatch_id": r.dispatch_id} for r in rows}
        for sid in targets:
            still = not _stop(oc, sid, settle)
            rec = records.find(host.name, sid) if records else None
            did = (rec or {}).get("dispatch_id") or marks.get(sid, {}).get("dispatch_id") or new_dispatch_id()
            if audit is not None:
                audit.record(operation="aborted" if not still else "abort_failed", host=host.name,
                             outcome="aborted" if not still else "still_busy", dispatch_id=did,
                             session_id=sid, reason=reason)
            if still:
                stuck.append(sid)
                continue
            done.append(sid)
            issue = (rec or {}).get("issue")
            if issue and beads is not None:
                beads.block(issue, host.name, f"session {sid} on {host.name} aborted: {reason}")
    if stuck:
        raise FleetError(f"{host.name}: still busy {settle:g}s after abort: {', '.join(stuck)}"
                         + (f" (aborted: {', '.join(done)})" if done else "")
                         + "; the server may be running a shell command that ignores the abort: check it, "
                           "or restart the server")
    return done


def find_session_host(hosts: list[Host], records: SessionRecords | None, session: str) -> Host | None:
    """The host ``session`` runs on: from this machine's records, else by asking each server
    (another orchestrator may have dispatched it)."""
    for rec in (records.all() if records is not None else []):
        if rec.get("session_id") == session:
            for h in hosts:
                if h.name == rec.get("host"):
                    return h
    for h in hosts:
        if h.opencode is None:
            continue
        try:
            with OpenCodeClient(h, None, timeout=5.0, connect_attempts=1) as oc:
                oc.get_session(session)
                return h
        except FleetError:
            continue
    return None


def answer_permission(host: Host, session: str, reply: str, message: str | None = None, audit: Any = None,
                      records: SessionRecords | None = None,
                      client_factory: Callable[..., OpenCodeClient] = OpenCodeClient) -> list[str]:
    """Answer the permission requests ``session`` waits on (``once``, ``always`` or ``reject``);
    returns what was answered. Nothing pending is an error."""
    if reply not in ("once", "always", "reject"):
        raise BadInput(f"reply {reply!r}: write once, always or reject")
    with client_factory(host, None) as oc:
        pend = oc.permissions(session)
        if not pend:
            raise BadInput(f"session {session} on {host.name} is not waiting for a permission: nothing to answer "
                           f"(see fleet sessions --hosts {host.name})")
        out = []
        for req in pend[:1] if reply != "always" else pend:
            oc.reply_permission(str(req["id"]), reply, message)
            out.append(describe_request(req))
            if audit is not None:
                rec = records.find(host.name, session) if records else None
                audit.record(operation="permission_answered", host=host.name, outcome=reply,
                             dispatch_id=(rec or {}).get("dispatch_id", ""), session_id=session,
                             request=describe_request(req), by="operator", message=message)
    return out


def teardown_host(host: Host, records: SessionRecords, audit: Any = None,
                  client_factory: Callable[..., OpenCodeClient] = OpenCodeClient) -> dict[str, Any]:
    """Abort every running session on ``host`` and delete the sessions fleet created there."""
    aborted = abort_sessions(host, all_sessions=True, records=records, audit=audit, reason="teardown",
                             client_factory=client_factory)
    deleted = []
    gone = set()
    with client_factory(host, None) as oc:
        # fleet's sessions: those its marks on the server say (from any orchestrator), and the
        # ones this machine's records know
        marks = {s["id"]: fleet_marks(s) for s in oc.list_sessions(all_dirs=True) if fleet_marks(s)}
        recs = {r["session_id"]: r for r in records.for_host(host.name)}
        ids = list(marks) + [sid for sid in recs if sid not in marks]
        for sid in ids:
            try:
                oc.delete_session(sid)
                deleted.append(sid)
            except OpenCodeError as exc:
                if exc.kind != "not_found":
                    raise
            gone.add(sid)
    records.remove(host.name, gone)
    # the git worktrees of the deleted sessions stay (they may hold work): say which, and how
    # to remove each (a gated operation of its own, which refuses a dirty one)
    from fleet.ops.worktrees import worktree_parts
    worktrees: dict[str, dict[str, str]] = {}
    for sid in deleted:
        m, r = marks.get(sid, {}), recs.get(sid, {})
        path = str(m.get("worktree") or r.get("worktree") or "")
        if path and path not in worktrees:
            repo, name = worktree_parts(path)
            worktrees[path] = {"path": path, "branch": str(m.get("branch") or r.get("branch") or ""),
                               "repo": str(m.get("repo") or repo), "name": name}
    return {"host": host.name, "aborted": aborted, "deleted": deleted, "worktrees": list(worktrees.values())}


def teardown(inv: Inventory, selector: str, *, records: SessionRecords, args: dict[str, Any] | None = None,
             mode: str | None = None, confirm: str | None = None, canary: str | None = None,
             settings: Any = None, store: Any = None, audit: Any = None, trail: Any = None,
             audit_trail: Any = None,
             client_factory: Callable[..., OpenCodeClient] = OpenCodeClient) -> list[dict[str, Any]]:
    """Gated: abort running sessions and delete fleet's sessions on the planned hosts, in the
    plan's order (the canary first in canary mode; the rest only if its teardown succeeded)."""
    trail = trail if trail is not None else audit_trail
    with gate.enter(TEARDOWN, inv, selector, args=dict(args or {}), mode=mode, confirm=confirm, canary=canary,
                    settings=settings, store=store, audit=audit, trail=trail) as g:
        tr = g.trail

        def one(h: Host) -> dict[str, Any]:
            try:
                r = teardown_host(h, records, tr, client_factory)
            except OpenCodeError as exc:
                r = {"host": h.name, "error": str(exc), "aborted": [], "deleted": [], "worktrees": []}
            if tr is not None:
                tr.record(operation="gated_action_run", host=r["host"], outcome="failure" if r.get("error")
                          else "success", dispatch_id="", action="teardown", aborted=len(r["aborted"]),
                          deleted=len(r["deleted"]), error=r.get("error"))
            return r

        def not_run(h: Host, first: dict[str, Any]) -> dict[str, Any]:
            return {"host": h.name, "error": f"not run: canary {first['host']} failed: {first.get('error')}",
                    "aborted": [], "deleted": [], "worktrees": [], "not_run": True}
        return gate.canary_first(g.plan, one, lambda r: not r.get("error"), not_run)


def server_status(host: Host, client_factory: Callable[..., OpenCodeClient] | None = None,
                  timeout: float = 3.0) -> dict[str, Any]:
    """Health and version of one host's server, with the round-trip time; a wedged server is
    DOWN after ``timeout`` seconds, never a hang."""
    t0 = time.monotonic()
    factory = client_factory or (lambda h, d: OpenCodeClient(h, d, timeout=timeout, connect_timeout=timeout,
                                                             connect_attempts=1))
    try:
        with factory(host, None) as oc:
            h = oc.health()
        return {"host": host.name, "url": host.opencode.url if host.opencode else "", "healthy": bool(h.get("healthy")),
                "version": h.get("version", ""), "ms": int((time.monotonic() - t0) * 1000), "error": ""}
    except FleetError as exc:
        return {"host": host.name, "url": host.opencode.url if host.opencode else "", "healthy": False,
                "version": "", "ms": int((time.monotonic() - t0) * 1000), "error": str(exc)}


def sessions_many(hosts: list[Host], records: SessionRecords | None = None) -> tuple[list[SessionRow], list[str]]:
    """Every session on ``hosts`` (those with an OpenCode server), asked at once; and the errors."""
    chosen = [h for h in hosts if h.opencode is not None]

    def one(h: Host) -> tuple[list[SessionRow], str]:
        try:
            return host_sessions(h, records), ""
        except FleetError as exc:
            return [], str(exc)
    done, _ = run_bounded(chosen, one, 32, "fleet-sessions", on_interrupt=lambda: None,
                          not_started=lambda h: ([], f"{h.name}: interrupted"))
    rows = [r for h in chosen for r in done[h.name][0]]
    return rows, [done[h.name][1] for h in chosen if done[h.name][1]]


def server_statuses(hosts: list[Host], timeout: float = 3.0) -> list[dict[str, Any]]:
    """:func:`server_status` of every host with an OpenCode server, at once, in host order."""
    chosen = [h for h in hosts if h.opencode is not None]
    done, _ = run_bounded(chosen, lambda h: server_status(h, timeout=timeout), 32, "fleet-status",
                          on_interrupt=lambda: None,
                          not_started=lambda h: {"host": h.name, "url": h.opencode.url if h.opencode else "",
                                                 "healthy": False, "version": "", "ms": 0, "error": "interrupted"})
    return [done[h.name] for h in chosen]


def answer_question(host: Host, session: str, text: str, audit: Any = None, records: SessionRecords | None = None,
                    client_factory: Callable[..., OpenCodeClient] = OpenCodeClient) -> list[str]:
    """Answer the question ``session`` waits on with ``text`` (an option's label, or free text);
    returns what was answered. Nothing pending is an error."""
    with client_factory(host, None) as oc:
        pend = oc.questions(session)
        if not pend:
            raise BadInput(f"session {session} on {host.name} is not waiting for an answer: nothing to answer "
                           f"(see fleet sessions --hosts {host.name})")
        req = pend[0]
        answers = []
        for q in req.get("questions") or [{}]:
            labels = [str(o.get("label")) for o in (q.get("options") or []) if isinstance(o, dict)]
            pick = next((lab for lab in labels if lab.lower() == text.strip().lower()), text.strip())
            answers.append([pick])
        oc.reply_question(str(req["id"]), answers)
        if audit is not None:
            rec = records.find(host.name, session) if records else None
            audit.record(operation="question_answered", host=host.name, outcome="answered",
                         dispatch_id=(rec or {}).get("dispatch_id", ""), session_id=session,
                         request=describe_request(req), answer=text, by="operator")
    return [describe_request(req)]

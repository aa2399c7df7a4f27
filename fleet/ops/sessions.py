"""What the agents are doing, and stopping them: sessions per host, abort, teardown (gated) and
server health. Every call names the host; a wedged server is DOWN after a short timeout.

A server runs in the user's home with many repos, so every session is found across projects
(``GET /experimental/session``, else one listing per repo directory), and status and pending
requests are read per directory. Subagents' sessions (``parentID``) are rows of their own, and
what they wait on and bill shows on the session that started them too (the one a dispatch
follows). Abort stops a session's whole tree, subagents first, and then stops what its tools
left running on the host."""
from __future__ import annotations

import time
from typing import Any, Callable

from fleet.agent.asks import describe_request
from fleet.agent.checks import version_problem
from fleet.agent.client import OpenCodeClient
from fleet.agent.tools import StillBusy, Stopped, stop_session
from fleet.agent.tree import rollup, tree_requests
from fleet.audit.records import SessionRecords, new_dispatch_id
from fleet.errors import BadInput, FleetError, OpenCodeError
from fleet.inventory import Host, Inventory
from fleet.results import SessionRow, TeardownResult
from fleet.safety import gate
from fleet.safety.gate import TEARDOWN
from fleet.workers import run_bounded


def fleet_marks(session: dict[str, Any]) -> dict[str, Any]:
    """What fleet wrote on a session it created (``metadata.fleet``), or {}."""
    md = session.get("metadata") if isinstance(session, dict) else None
    mark = md.get("fleet") if isinstance(md, dict) else None
    return mark if isinstance(mark, dict) else {}


def repo_dirs(host: Host, records: SessionRecords | None = None) -> tuple[str, ...]:
    """The repo directories the inventory (and this machine's records) name on ``host``: where a
    server without the cross-project listing is asked for its sessions."""
    dirs = [d for d in (host.repo_path(n) for n in host.repos) if d]
    dirs += [str(r["directory"]) for r in (records.for_host(host.name) if records else []) if r.get("directory")]
    return tuple(dict.fromkeys(dirs))


def host_sessions(host: Host, records: SessionRecords | None = None, limit: int = 200,
                  client_factory: Callable[..., OpenCodeClient] = OpenCodeClient) -> list[SessionRow]:
    """Sessions on ``host`` (every project) with their state (busy/idle/retry/needs-input), newest
    first. A request counts only while its session is at work (a stopped or deleted session's
    request lingers on the server); a subagent's request, tokens and cost show on its ancestors."""
    recs = {r["session_id"]: r for r in (records.for_host(host.name) if records else [])}
    mine = set(recs)
    with client_factory(host, None) as oc:
        sessions = oc.list_sessions(all_dirs=True, limit=limit, directories=repo_dirs(host, records))
        states: dict[str, Any] = {}
        pend: list[dict[str, Any]] = []
        for d in sorted({str(s["directory"]) for s in sessions if s.get("directory")}):
            oc.directory = d
            states.update(oc.status())
            pend += oc.permissions() + oc.questions()
    waiting, usage = rollup(sessions, states, pend)
    now = time.time() * 1000
    rows = []
    for s in sessions:
        st = states.get(s["id"]) or {"type": "idle"}
        created = ((s.get("time") or {}).get("created")) or now
        state = "needs-input" if s["id"] in waiting else str(st.get("type", "idle"))
        rec = recs.get(s["id"]) or {}
        mark = fleet_marks(s)
        tok, cost = usage.get(s["id"], (None, None))
        rows.append(SessionRow(host.name, s["id"], str(s.get("title", "")), state,
                               int((now - created) / 1000), str(s.get("directory", "")),
                               s["id"] in mine or bool(mark), waiting.get(s["id"], ""),
                               rec.get("worktree") or mark.get("worktree", ""), rec.get("branch") or mark.get("branch", ""),
                               str(mark.get("machine", "")), rec.get("dispatch_id") or str(mark.get("dispatch_id", "")),
                               str(mark.get("repo") or str(s.get("directory", "")).rstrip("/").rsplit("/", 1)[-1]),
                               tok, cost, str(s.get("parentID") or "")))
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


def abort_sessions(host: Host, session: str | None = None, all_sessions: bool = False,
                   records: SessionRecords | None = None, audit: Any = None, beads: Any = None,
                   reason: str = "aborted by fleet", client_factory: Callable[..., OpenCodeClient] = OpenCodeClient,
                   settle: float = 5.0, inventory: Any = None, ssh_options: Any = None) -> Stopped:
    """Abort one session, or every busy one on ``host``; returns the ids that are idle afterwards.

    Each session's subagents are stopped first. An unknown session is an error (nothing is
    journaled). After ``POST /abort`` the tree must go idle within ``settle`` seconds; one that
    stays busy is :class:`StillBusy` naming it (OpenCode #16721), and is journaled as such.
    With the ``inventory``, a tool process that outlived the abort is stopped over SSH
    (``notes`` on the result say what, and the journal has it).
    """
    if not session and not all_sessions:
        raise BadInput("say which session: --session ID, or --all-sessions for every busy one")
    done = Stopped()
    done.notes = []
    stuck: list[str] = []
    marks: dict[str, dict[str, Any]] = {}
    with client_factory(host, None) as oc:
        if session:
            info = known_session(oc, host, session, records, client_factory, "nothing was aborted")
            marks[session] = fleet_marks(info)
            targets = [(session, str(info.get("directory") or ""))]
        else:
            rows = [r for r in host_sessions(host, records, client_factory=client_factory)
                    if r.state in ("busy", "retry", "needs-input")]
            busy = {r.session_id for r in rows}
            # a subagent goes down with the session that started it
            targets = [(r.session_id, r.directory) for r in rows if r.parent not in busy]
            marks = {r.session_id: {"dispatch_id": r.dispatch_id} for r in rows}
        for sid, directory in targets:
            ok, notes = stop_session(oc, host, sid, directory, settle, inventory, ssh_options)
            still = not ok
            rec = records.find(host.name, sid) if records else None
            did = (rec or {}).get("dispatch_id") or marks.get(sid, {}).get("dispatch_id") or new_dispatch_id()
            if audit is not None:
                audit.record(operation="aborted" if not still else "abort_failed", host=host.name,
                             outcome="aborted" if not still else "still_busy", dispatch_id=did,
                             session_id=sid, reason=reason)
                for n in notes:
                    audit.record(operation="tool_stopped", host=host.name, outcome="stopped" if "stopped its"
                                 in n else "failed", dispatch_id=did, session_id=sid, note=n)
            done.notes += notes
            if still:
                stuck.append(sid)
                continue
            done.append(sid)
            issue = (rec or {}).get("issue")
            if issue and beads is not None:
                beads.block(issue, host.name, f"session {sid} on {host.name} aborted: {reason}")
    if stuck:
        raise StillBusy(host.name, host.opencode.url if host.opencode else "",
                        f"still busy {settle:g}s after abort: {', '.join(stuck)}"
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
        oc.directory = str(known_session(oc, host, session, records, client_factory, "nothing was answered")
                           .get("directory") or "") or None
        pend = tree_requests(oc, session)  # its own, or a subagent's
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
                  client_factory: Callable[..., OpenCodeClient] = OpenCodeClient, inventory: Any = None,
                  ssh_options: Any = None) -> TeardownResult:
    """Abort every running session on ``host`` and delete the sessions fleet created there: each
    one it deletes is stopped first (its subagents too) and must be idle, else it is kept and
    named in ``error`` (deleting a session at work leaves its tools running with nobody to see)."""
    deleted: list[str] = []
    gone: set[str] = set()
    stuck: list[str] = []
    aborted = Stopped()
    aborted.notes = []
    with client_factory(host, None) as oc:
        sessions = oc.list_sessions(all_dirs=True, directories=repo_dirs(host, records))
        # fleet's sessions: those its marks on the server say (from any orchestrator), and the
        # ones this machine's records know
        marks = {s["id"]: fleet_marks(s) for s in sessions if fleet_marks(s)}
        recs = {r["session_id"]: r for r in records.for_host(host.name)}
        where_ = {s["id"]: str(s.get("directory") or "") for s in sessions}
        ids = list(marks) + [sid for sid in recs if sid not in marks]
        busy = [r.session_id for r in host_sessions(host, records, client_factory=client_factory)
                if r.state in ("busy", "retry", "needs-input") and not r.parent]
        for sid in dict.fromkeys(busy + ids):
            if sid not in where_:
                try:
                    where_[sid] = str(oc.get_session(sid).get("directory") or "")
                except OpenCodeError as exc:
                    if exc.kind != "not_found":
                        raise
                    gone.add(sid)  # not on the server any more
                    continue
            ok, notes = stop_session(oc, host, sid, where_[sid], 5.0, inventory, ssh_options)
            aborted.notes += notes
            if not ok:
                stuck.append(sid)
                continue
            if sid in busy:
                aborted.append(sid)
                if audit is not None:
                    audit.record(operation="aborted", host=host.name, outcome="aborted",
                                 dispatch_id=(recs.get(sid) or marks.get(sid) or {}).get("dispatch_id", ""),
                                 session_id=sid, reason="teardown")
            if sid in ids:
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
    error = (f"still busy 5s after abort, so not deleted: {', '.join(stuck)}; the server may be "
             f"running a shell command that ignores the abort: check it, or restart the server") if stuck else ""
    return TeardownResult(host.name, tuple(aborted), tuple(deleted), tuple(worktrees.values()), error=error,
                          kept=tuple(stuck), notes=tuple(aborted.notes))


def teardown(inv: Inventory, selector: str, *, records: SessionRecords, args: dict[str, Any] | None = None,
             mode: str | None = None, confirm: str | None = None, canary: str | None = None,
             settings: Any = None, store: Any = None, audit: Any = None, trail: Any = None,
             audit_trail: Any = None,
             client_factory: Callable[..., OpenCodeClient] = OpenCodeClient) -> list[TeardownResult]:
    """Gated: abort running sessions and delete fleet's sessions on the planned hosts, in the
    plan's order (the canary first in canary mode; the rest only if its teardown succeeded)."""
    trail = trail if trail is not None else audit_trail
    with gate.enter(TEARDOWN, inv, selector, args=dict(args or {}), mode=mode, confirm=confirm, canary=canary,
                    settings=settings, store=store, audit=audit, trail=trail) as g:
        tr = g.trail

        def one(h: Host) -> TeardownResult:
            try:
                r = teardown_host(h, records, tr, client_factory, g.plan.inventory)
            except OpenCodeError as exc:
                r = TeardownResult(h.name, error=str(exc))
            if tr is not None:
                tr.record(operation="gated_action_run", host=r.host, outcome="failure" if r.error else "success",
                          dispatch_id="", action="teardown", aborted=len(r.aborted), deleted=len(r.deleted),
                          error=r.error)
            return r

        def not_run(h: Host, first: TeardownResult) -> TeardownResult:
            return TeardownResult(h.name, error=f"not run: canary {first.host} failed: {first.error}", not_run=True)
        return gate.canary_first(g.plan, one, lambda r: r.ok, not_run)


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
        version = str(h.get("version", ""))
        why = version_problem(version) or ("" if h.get("healthy") else "the server says it is not healthy; see its log")
        return {"host": host.name, "url": host.opencode.url if host.opencode else "", "healthy": not why,
                "version": version, "ms": int((time.monotonic() - t0) * 1000), "error": why}
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
        oc.directory = str(known_session(oc, host, session, records, client_factory, "nothing was answered")
                           .get("directory") or "") or None
        pend = tree_requests(oc, session, questions=True)
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

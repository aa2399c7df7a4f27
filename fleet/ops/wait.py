"""``wait``: follow agents that are already at work to the end of their turn, and review it.

A ``--no-wait`` dispatch (or one started by another orchestrator, or one whose waiting was cut
by Ctrl-C) leaves its agent working with nobody following it. :func:`wait_session` picks one
session up: it subscribes to the server's events, waits for the turn that began with the
session's last task (needs-input reported, the permission policy applied, stuck said once), and
reviews it as dispatch does (answer, files changed, todo, tokens and cost of the whole turn). A
turn that has ended already is reported at once. :func:`wait_dispatch` does that for every
session of one dispatch. The end is journaled (and so posted to the dispatch's Slack thread)
once: not when the journal already holds the end of that session. A ``--no-wait`` canary
dispatch's other hosts wait for the canary: they are reported so, and once the canary's agent
succeeded they are sent the task (:mod:`fleet.ops.canary_rest`) and followed too.
"""
from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any, Callable, cast

from fleet.agent.asks import check_policy
from fleet.agent.client import OpenCodeClient
from fleet.agent.outcome import Audit, EventHook, failed, redacted_hook, turn_result
from fleet.agent.turn import subscribe
from fleet.audit.records import SessionRecords, new_dispatch_id
from fleet.errors import BadInput, FleetError
from fleet.inventory import Host, Inventory
from fleet.ops.sessions import fleet_marks, known_session
from fleet.results import DispatchResult, DispatchRun, FanoutOutcome
from fleet.workers import run_bounded

ENDED = ("completed", "failed")
TASK_GRACE = 10.0  # seconds a session with no task yet is given for one to arrive


class _OnceAudit(Audit):
    """The dispatch's audit, but an end (completed / failed, not a timeout: the agent went on)
    already journaled for this session is not journaled again (``wait`` on a dispatch that was
    followed to its end), nor a needs-input request already journaled."""

    def __init__(self, trail: Any, dispatch_id: str, sid: str) -> None:
        super().__init__(trail, dispatch_id)
        self.ended = False
        self.asked: set[str] = set()  # needs-input requests already journaled (by the dispatch)
        journal = getattr(trail, "journal", None)
        if journal is not None:
            try:
                mine = [e for e in journal.load().events if e.get("dispatch_id") == dispatch_id
                        and (e.get("detail") or {}).get("session_id") == sid]
            except (OSError, ValueError):
                mine = []
            # a dispatch that stopped waiting (timeout) did not end the turn: the agent went on
            self.ended = any(e.get("operation") in ENDED and e.get("outcome") != "timeout" for e in mine)
            self.asked = {str(e["detail"].get("request_id")) for e in mine if e.get("operation") == "needs_input"}

    def __call__(self, operation: str, host: str, outcome: str, **detail: Any) -> None:
        if operation in ENDED and self.ended:
            return
        if operation == "needs_input" and str(detail.get("request_id")) in self.asked:
            return
        super().__call__(operation, host, outcome, **detail)


def wait_session(host: Host, session: str, *, timeout: float = 1800.0, records: SessionRecords | None = None,
                 audit: Any = None, on_event: EventHook | None = None, poll: float = 0.5, events: bool = True,
                 on_permission: str = "ask", stall_timeout: float | None = None,
                 stop: Callable[[], bool] | None = None,
                 client_factory: Callable[..., OpenCodeClient] = OpenCodeClient) -> DispatchResult:
    """Follow ``session`` on ``host`` to the end of its current turn; its review as a dispatch
    result. An unknown session, or one with no task yet, is :class:`BadInput`."""
    check_policy(on_permission)
    t0 = time.monotonic()
    rec = records.find(host.name, session) if records is not None else None
    url = host.opencode.url if host.opencode else ""
    ev = (lambda kind, text: on_event(host.name, kind, text)) if on_event else (lambda kind, text: None)
    box: dict[str, Any] = {"directory": (rec or {}).get("directory", ""), "issue": (rec or {}).get("issue"),
                           "worktree": (rec or {}).get("worktree", ""), "branch": (rec or {}).get("branch", "")}
    did = (rec or {}).get("dispatch_id") or ""

    def result(outcome: FanoutOutcome, **kw: Any) -> DispatchResult:
        ev("end", outcome.value + (f": {kw['error']}" if kw.get("error") else ""))
        return DispatchResult(host=host.name, outcome=outcome, session_id=session, url=url,
                              directory=box["directory"], duration_ms=int((time.monotonic() - t0) * 1000),
                              issue=box["issue"] or None, worktree=box["worktree"], branch=box["branch"], **kw)
    au = Audit(None, did)
    try:
        with client_factory(host, None) as oc:
            if hasattr(oc, "deadline"):
                oc.deadline = t0 + timeout + 5.0
            info = known_session(oc, host, session, records, client_factory, "nothing to wait for")
            mark = fleet_marks(info)
            did = did or mark.get("dispatch_id") or new_dispatch_id()
            box.update({k: box[k] or mark.get(k, "") for k in ("worktree", "branch", "issue")})
            box["directory"] = str(info.get("directory") or box["directory"])
            oc.directory = box["directory"] or None
            au = _OnceAudit(audit, did, session)
            # a task sent a moment ago (prompt_async returns before the server stores it) shows
            # up within a moment: give it TASK_GRACE seconds
            end = time.monotonic() + TASK_GRACE
            while True:
                msgs = oc.messages(session)
                users = [i for i, m in enumerate(msgs) if (m.get("info") or {}).get("role") == "user"]
                if users or time.monotonic() >= end or (stop is not None and stop()):
                    break
                time.sleep(0.2)
            if not users:
                raise BadInput(f"session {session} on {host.name} has no task yet: nothing to wait for "
                               f"(send one with fleet dispatch --session {session})")
            ev("session", session)
            waker = subscribe(host, session, oc.directory, ev) if events else None
            return turn_result(oc, host, session, users[-1], result, au, ev, timeout=timeout, poll=poll,
                               stop=stop, on_permission=on_permission, waker=waker, stall_timeout=stall_timeout)
    except BadInput:
        raise
    except FleetError as exc:
        return failed(exc, host, session, au, result)


def dispatch_sessions(inv: Inventory, dispatch_id: str, records: SessionRecords | None = None,
                      hosts: list[Host] | None = None) -> list[tuple[Host, str]]:
    """The (host, session) pairs of one dispatch: from this machine's records, else from fleet's
    marks on the servers (another orchestrator's dispatch). None found is :class:`BadInput`."""
    by_name = {h.name: h for h in inv.hosts}
    pairs = [(by_name[r["host"]], r["session_id"]) for r in (records.all() if records is not None else [])
             if r.get("dispatch_id") == dispatch_id and r.get("host") in by_name and r.get("session_id")]
    if not pairs:
        from fleet.ops.sessions import sessions_many
        rows, _ = sessions_many(hosts if hosts is not None else list(inv.hosts), records)
        pairs = [(by_name[r.host], r.session_id) for r in rows if r.dispatch_id == dispatch_id and r.host in by_name]
    if not pairs:
        raise BadInput(f"no session of dispatch {dispatch_id} is known here or on the servers: check the id "
                       f"(fleet audit.tail shows recent dispatches) or wait for one session with --session")
    return pairs


def wait_sessions(pairs: list[tuple[Host, str]], *, records: SessionRecords | None = None, concurrency: int = 32,
                  audit: Any = None, strict: bool = False, dispatch_id: str = "", **kw: Any) -> DispatchRun:
    """:func:`wait_session` for each (host, session), at once; a run like dispatch's (Ctrl-C stops
    the waiting, not the agents). ``strict``: an unknown session is raised as :class:`BadInput`,
    else it is that row's FAILURE."""
    run = DispatchRun(dispatch_id, "", "")
    t0 = time.monotonic()
    stop = threading.Event()
    red = getattr(audit, "redactor", None)
    kw["on_event"] = redacted_hook(kw.get("on_event"), red)

    class Pair:
        """One session to follow, named as run_bounded keys its results (it needs only ``name``)."""

        def __init__(self, h: Host, sid: str) -> None:
            self.host, self.sid, self.name = h, sid, f"{h.name} {sid}"

    def one(p: Pair) -> DispatchResult:
        try:
            return wait_session(p.host, p.sid, records=records, audit=audit, stop=stop.is_set, **kw)
        except BadInput as exc:
            if strict:
                raise
            return DispatchResult(p.host.name, FanoutOutcome.FAILURE, session_id=p.sid, error=str(exc),
                                  error_kind="not_found")
    def not_started(p: Pair) -> DispatchResult:
        return DispatchResult(p.host.name, FanoutOutcome.ABORTED, session_id=p.sid, error="interrupted",
                              error_kind="aborted")
    items: list[Any] = [Pair(h, sid) for h, sid in pairs]  # run_bounded takes hosts; a Pair has what it uses
    done, interrupted = run_bounded(items, cast(Any, one), concurrency, "fleet-wait", on_interrupt=stop.set,
                                    not_started=cast(Any, not_started))
    run.interrupted = interrupted
    results = [done[p.name] for p in items]
    run.results = [replace(r, answer=red.text(r.answer), error=red.text(r.error)) for r in results] \
        if red is not None else results
    run.duration_ms = int((time.monotonic() - t0) * 1000)
    return run


def wait_dispatch(inv: Inventory, dispatch_id: str, *, records: SessionRecords | None = None,
                  hosts: list[Host] | None = None, settings: Any = None, audit: Any = None,
                  **kw: Any) -> DispatchRun:
    """:func:`wait_sessions` over every session of ``dispatch_id``. As for every operation, the
    audit trail (with the inventory's secrets redacted) and the session records are made from
    the settings when the caller gives none, so the Python API journals and redacts too."""
    own = None
    if audit is None:
        import os

        from fleet.app import audit_trail
        from fleet.settings import load_settings
        settings = settings or load_settings(os.getcwd())
        audit = own = audit_trail(inv, settings)
    if records is None and settings is not None:
        records = SessionRecords(settings.sessions_path())
    try:
        from fleet.ops import canary_rest
        jpath = str(getattr(getattr(audit, "journal", None), "path", "") or "")
        held = canary_rest.held_of(jpath, dispatch_id)
        if held is None:
            run = wait_sessions(dispatch_sessions(inv, dispatch_id, records, hosts), records=records, audit=audit,
                                dispatch_id=dispatch_id, **kw)
            held = canary_rest.held_of(jpath, dispatch_id)  # journaled while the canary was followed
            if held is None or run.interrupted:
                return run
        # the rest wait for the canary: follow it, decide the gate (once), then follow the rest
        return canary_rest.follow(inv, held, jpath, records=records, audit=audit, **kw)
    finally:
        if own is not None:
            own.close()


__all__ = ["dispatch_sessions", "wait_dispatch", "wait_session", "wait_sessions"]

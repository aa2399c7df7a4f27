"""What the agents are doing, and stopping them: sessions per host, abort, teardown (gated) and
server health. Every call names the host; a wedged server is DOWN after a short timeout."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from .errors import BadInput, FleetError, OpenCodeError
from .inventory import Host
from .modes import Plan, guarded
from .opencode import OpenCodeClient
from .pool import run_bounded
from .records import SessionRecords, new_dispatch_id


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

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return dict(self.__dict__)


def host_sessions(host: Host, records: SessionRecords | None = None, limit: int = 50,
                  client_factory: Callable[..., OpenCodeClient] = OpenCodeClient) -> list[SessionRow]:
    """Sessions on ``host`` with their state (busy/idle/retry), newest first."""
    mine = {r["session_id"] for r in (records.for_host(host.name) if records else [])}
    with client_factory(host, None) as oc:
        sessions = oc.list_sessions(all_dirs=True)[:limit]
        states: dict[str, Any] = {}
        for d in sorted({s.get("directory") for s in sessions if s.get("directory")}):
            oc.directory = d
            states.update(oc.status())
    now = time.time() * 1000
    rows = []
    for s in sessions:
        st = states.get(s["id"]) or {"type": "idle"}
        created = ((s.get("time") or {}).get("created")) or now
        rows.append(SessionRow(host.name, s["id"], str(s.get("title", "")), st.get("type", "idle"),
                               int((now - created) / 1000), str(s.get("directory", "")), s["id"] in mine))
    return rows


def abort_sessions(host: Host, session: str | None = None, all_sessions: bool = False,
                   records: SessionRecords | None = None, audit: Any = None, beads: Any = None,
                   reason: str = "aborted by fleet", client_factory: Callable[..., OpenCodeClient] = OpenCodeClient
                   ) -> list[str]:
    """Abort one session, or every busy one on ``host``; returns the aborted ids."""
    if not session and not all_sessions:
        raise BadInput("say which session: --session ID, or --all-sessions for every busy one")
    targets: list[str] = []
    if session:
        targets = [session]
    else:
        targets = [r.session_id for r in host_sessions(host, records, client_factory=client_factory)
                   if r.state in ("busy", "retry")]
    done = []
    with client_factory(host, None) as oc:
        for sid in targets:
            oc.abort(sid)
            done.append(sid)
            rec = records.find(host.name, sid) if records else None
            did = (rec or {}).get("dispatch_id") or new_dispatch_id()
            if audit is not None:
                audit.record(operation="aborted", host=host.name, outcome="aborted", dispatch_id=did,
                             session_id=sid, reason=reason)
            issue = (rec or {}).get("issue")
            if issue and beads is not None:
                beads.block(issue, host.name, f"session {sid} on {host.name} aborted: {reason}")
    return done


def teardown_host(host: Host, records: SessionRecords, audit: Any = None,
                  client_factory: Callable[..., OpenCodeClient] = OpenCodeClient) -> dict[str, Any]:
    """Abort every running session on ``host`` and delete the sessions fleet created there."""
    aborted = abort_sessions(host, all_sessions=True, records=records, audit=audit, reason="teardown",
                             client_factory=client_factory)
    deleted = []
    gone = set()
    with client_factory(host, None) as oc:
        for rec in records.for_host(host.name):
            sid = rec["session_id"]
            try:
                oc.delete_session(sid)
                deleted.append(sid)
            except OpenCodeError as exc:
                if exc.kind != "not_found":
                    raise
            gone.add(sid)
    records.remove(host.name, gone)
    return {"host": host.name, "aborted": aborted, "deleted": deleted}


@guarded("teardown", local_ok=False)
def teardown(plan: Plan, *, records: SessionRecords, audit_trail: Any = None,
             client_factory: Callable[..., OpenCodeClient] = OpenCodeClient) -> list[dict[str, Any]]:
    """Gated: abort running sessions and delete fleet's sessions on every planned host."""
    out = []
    for h in plan.hosts:
        try:
            out.append(teardown_host(h, records, audit_trail, client_factory))
        except OpenCodeError as exc:
            out.append({"host": h.name, "error": str(exc), "aborted": [], "deleted": []})
    if audit_trail is not None:
        for r in out:
            audit_trail.record(operation="gated_action_run", host=r["host"], outcome="failure" if r.get("error")
                               else "success", dispatch_id="", action="teardown", aborted=len(r["aborted"]),
                               deleted=len(r["deleted"]), error=r.get("error"))
    return out


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

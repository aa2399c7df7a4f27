"""``watch``: every agent on the selected hosts, live, from their servers' event streams.

One :class:`~fleet.events.EventStream` per server (``/global/event``: every directory). Each
stream reads its server's board over REST (``sessions``) when it connects and after every
reconnect, so one server that does not answer holds up only its own row (a host row, session
"": ``down`` with why); while a stream cannot connect but REST answers, the host row says
``no-events`` and that server's board is re-read at each retry; events then move
each session between ``busy`` (with its current step), ``retry``, ``needs-input`` (and what it
asks), ``idle`` and ``error``, and keep its tokens and cost so far: the session's own totals
(``session.updated``, after each model call) where the server keeps them, else each assistant
message's ``message.updated`` (the newest sessions' messages read once at the start). Each
change is handed to ``on_change`` as a plain dict.

Subagents (the ``task`` tool's child sessions, ``parent`` on their rows) are rows of their own,
and the session that started one shows what it waits on (``needs-input``, naming the subagent)
and bills (its tokens and cost are its own plus its subagents').
"""
from __future__ import annotations

import functools
import threading
import time
from typing import Any, Callable

from fleet.agent.asks import describe_request
from fleet.agent.client import OpenCodeClient
from fleet.agent.events import EventStream, session_of, step_of
from fleet.agent.tree import ancestry, where
from fleet.agent.usage import Usage, message_bill, message_usage, session_usage
from fleet.audit.records import SessionRecords
from fleet.inventory import Host
from fleet.ops.sessions import fleet_marks, host_sessions

Change = Callable[[dict[str, Any]], None]
# what ``sessions`` shows of fleet's own sessions (its marks on the server, this machine's records)
NO_MARKS: dict[str, Any] = {"fleet": False, "worktree": "", "branch": "", "machine": "", "dispatch_id": ""}


class Watcher:
    """The live board of every session on ``hosts``; ``on_change(row)`` for every change."""

    READ_TIMEOUT = 10.0  # a server that does not answer a read in this long is down on the board
    USAGE_READS = 20  # per host at the start: the newest sessions' messages are read for their totals

    def __init__(self, hosts: list[Host], on_change: Change, records: SessionRecords | None = None) -> None:
        self.hosts = [h for h in hosts if h.opencode is not None]
        self.on_change = on_change
        self.records = records
        self.board: dict[tuple[str, str], dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.streams: list[EventStream] = []
        self.usage: dict[tuple[str, str], Usage] = {}
        self.server_totals: set[tuple[str, str]] = set()  # sessions whose server keeps their totals
        self.parent: dict[str, dict[str, str]] = {h.name: {} for h in self.hosts}  # per host: session -> parent
        self.own: dict[tuple[str, str], tuple[int, float]] = {}  # a session's own tokens and cost (no subagents)
        self._read_once = {h.name: threading.Event() for h in self.hosts}

    def _client(self, host: Host, directory: str | None) -> OpenCodeClient:
        return OpenCodeClient(host, directory, timeout=self.READ_TIMEOUT, connect_timeout=3.0, connect_attempts=1)

    def _set(self, host: str, sid: str, **kw: Any) -> None:
        with self.lock:
            row = self.board.setdefault((host, sid), {"host": host, "session": sid, "state": "idle", "step": "",
                                                      "waiting": "", "title": "", "directory": "", "repo": "",
                                                      "created": time.time(), "tokens": None, "cost": None,
                                                      "parent": "", **NO_MARKS})
            changed = any(row.get(k) != v for k, v in kw.items() if k != "created")
            row.update(kw)
            row["updated"] = time.time()
            snapshot = dict(row)
        if changed:
            self.on_change(snapshot)

    def _host_state(self, host: str, state: str, why: str = "") -> None:
        """A host-level row (session ""): ``down`` with why, ``up`` again (then off the board)."""
        with self.lock:
            known = (host, "") in self.board
        if state == "up" and not known:
            return
        self._set(host, "", state=state, step=why, title="", directory="")

    def _stream_failed(self, host: Host, why: str) -> None:
        """The event stream cannot connect: read the state over REST (so the board is current
        while the stream is down); if that fails too, the host is down."""
        if self._resync(host):
            self._host_state(host.name, "no-events", f"{why}; its sessions are re-read every few seconds")

    def _resync(self, host: Host) -> bool:
        try:
            return self._read(host)
        finally:
            self._read_once[host.name].set()

    def _read(self, host: Host) -> bool:
        t0 = time.time()
        try:
            rows = host_sessions(host, self.records, client_factory=self._client)
        except Exception as exc:  # noqa: BLE001 - any failure: the host is down on the board, the stream retries
            self._host_state(host.name, "down", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return False
        self._host_state(host.name, "up")
        try:
            now = time.time()
            self.parent[host.name].update({r.session_id: r.parent for r in rows if r.parent})
            kids: dict[str, list[Any]] = {}
            for r in rows:
                kids.setdefault(r.parent, []).append(r)
            with self.lock:  # deleted while the stream was away: off the board
                seen = {r.session_id for r in rows}
                gone = [k for k, v in self.board.items() if k[0] == host.name and k[1] and k[1] not in seen
                        and v.get("updated", 0) < t0]
            for k in gone:
                self._gone(*k)
            for r in reversed(rows):  # oldest first: the newest is the latest change on the board
                usage = {"tokens": r.tokens, "cost": round(r.cost or 0.0, 6)} if r.tokens is not None else {}
                if usage:
                    self.server_totals.add((host.name, r.session_id))
                    # the row's figures include its subagents': keep its own, to add them up live
                    sub = [k for k in kids.get(r.session_id, []) if k.tokens is not None]
                    self.own[(host.name, r.session_id)] = (int(r.tokens or 0) - sum(int(k.tokens or 0) for k in sub),
                                                           (r.cost or 0.0) - sum(k.cost or 0.0 for k in sub))
                self._set(host.name, r.session_id, state=r.state, waiting=r.waiting, title=r.title,
                          directory=r.directory, repo=r.repo, created=now - r.age_s, parent=r.parent, fleet=r.fleet,
                          worktree=r.worktree, branch=r.branch, machine=r.machine, dispatch_id=r.dispatch_id,
                          **usage)
            # a server that keeps no totals on its sessions: read the newest sessions' messages,
            # once each, again after a reconnect for the ones at work (a gap may have lost their
            # message.updated); events keep them current after that
            want = [r for r in rows[:self.USAGE_READS] if r.tokens is None
                    and ((host.name, r.session_id) not in self.usage or r.state != "idle")]
            for r in want:
                self._read_usage(host, r.session_id, r.directory)
        except Exception:  # noqa: BLE001 - the stream keeps the board going; the next resync retries
            pass
        return True

    def _read_usage(self, host: Host, sid: str, directory: str) -> None:
        with self._client(host, directory or None) as oc:
            msgs = oc.messages(sid)
        u = Usage()
        for m in msgs:
            info = m.get("info") or {}
            bill = message_bill(info)
            if bill is not None and info.get("id"):
                u.update(str(info["id"]), *bill)
        with self.lock:
            self.usage[(host.name, sid)] = u
        tok, cost = u.totals()
        self._set(host.name, sid, tokens=tok, cost=round(cost, 6))

    def _message(self, host: str, sid: str, ev: dict[str, Any]) -> None:
        mu = message_usage(ev)
        if mu is None or (host, sid) in self.server_totals:
            return  # the server's own totals follow in session.updated
        with self.lock:
            u = self.usage.setdefault((host, sid), Usage())
            if not u.update(*mu):
                return
            tok, cost = u.totals()
        self._own(host, sid, tok, cost)

    def _own(self, host: str, sid: str, tok: int, cost: float) -> None:
        """A session's own figures changed: its row and every ancestor's show the subtree's sum."""
        with self.lock:
            self.own[(host, sid)] = (tok, cost)
            parent = dict(self.parent.get(host, {}))
            own = dict(self.own)
        for up in ancestry(parent, sid):
            sub = [x for x in parent if up in ancestry(parent, x)[1:]] + [up]
            figures = [own[(host, x)] for x in sub if (host, x) in own]
            self._set(host, up, tokens=sum(t for t, _ in figures), cost=round(sum(c for _, c in figures), 6))

    def _asks(self, host: str, sid: str, req: dict[str, Any] | None) -> None:
        """``sid`` waits on ``req`` (None: no longer): its row, and every ancestor's, naming it."""
        with self.lock:
            line = ancestry(dict(self.parent.get(host, {})), sid)
        for up in line:
            if req is not None:
                self._set(host, up, state="needs-input", waiting=describe_request(req) + where(req, up))
            else:
                with self.lock:
                    row = self.board.get((host, up)) or {}
                if up == sid or str(row.get("waiting", "")).endswith(f"(subagent {sid})"):
                    self._set(host, up, state="busy", waiting="")

    def _marks(self, host: str, sid: str, mark: dict[str, Any]) -> dict[str, Any]:
        """Fleet's marks on a session (else this machine's record of it): who dispatched it, why."""
        rec = (self.records.find(host, sid) if self.records is not None and not mark else None) or {}
        if not mark and not rec:
            return {}
        return {"fleet": True, "worktree": rec.get("worktree") or str(mark.get("worktree", "")),
                "branch": rec.get("branch") or str(mark.get("branch", "")), "machine": str(mark.get("machine", "")),
                "dispatch_id": rec.get("dispatch_id") or str(mark.get("dispatch_id", ""))}

    def _gone(self, host: str, sid: str) -> None:
        """A session deleted on its server: off the board (one last change, state ``deleted``)."""
        with self.lock:
            row = self.board.pop((host, sid), None)
        if row is not None:
            self.on_change(dict(row, state="deleted", updated=time.time()))

    def _handler(self, host: Host) -> Callable[[dict[str, Any]], None]:
        def on(ev: dict[str, Any]) -> None:
            t = ev.get("type", "")
            p = ev.get("properties") or {}
            if t == "session.deleted":
                info = p.get("info") or {}
                if isinstance(info, dict) and isinstance(info.get("id"), str):
                    self._gone(host.name, info["id"])
                return
            if t in ("session.created", "session.updated"):
                info = p.get("info") or {}
                if isinstance(info, dict) and isinstance(info.get("id"), str):
                    if isinstance(info.get("parentID"), str) and info["parentID"]:
                        with self.lock:
                            self.parent[host.name][info["id"]] = info["parentID"]
                    mark = fleet_marks(info)
                    d = str(info.get("directory", ""))
                    su = session_usage(info)
                    if su is not None:
                        self.server_totals.add((host.name, info["id"]))
                    born = (info.get("time") or {}).get("created")
                    self._set(host.name, info["id"], title=str(info.get("title", "")), directory=d,
                              repo=str(mark.get("repo") or d.rstrip("/").rsplit("/", 1)[-1]),
                              parent=str(info.get("parentID") or ""), **self._marks(host.name, info["id"], mark),
                              **({"created": born / 1000} if isinstance(born, (int, float)) else {}))
                    if su is not None:
                        self._own(host.name, info["id"], su[0], su[1])
                return
            sid = session_of(ev)
            if not sid:
                return
            if t == "session.status":
                status = p.get("status")
                st = str(status.get("type", "idle")) if isinstance(status, dict) else "idle"
                self._set(host.name, sid, state=st, **({"step": "", "waiting": ""} if st == "idle" else {}))
            elif t == "session.idle":
                self._set(host.name, sid, state="idle", step="", waiting="")
            elif t == "session.error":
                err = p.get("error")
                self._set(host.name, sid, state="error",
                          step=str(err.get("name", "error")) if isinstance(err, dict) else "error")
            elif t in ("permission.asked", "question.asked"):
                self._asks(host.name, sid, p)
            elif t in ("permission.replied", "question.replied", "question.rejected"):
                self._asks(host.name, sid, None)
            elif t == "message.updated":
                self._message(host.name, sid, ev)
            else:
                step = step_of(ev)
                if step:
                    with self.lock:
                        row = self.board.get((host.name, sid)) or {}
                        asking = row.get("state") == "needs-input" and row.get("waiting")
                    # a tool step of a request still waiting for its answer is not "busy" yet
                    self._set(host.name, sid, step=step, **({} if asking else {"state": "busy"}))
        return on

    def start(self) -> "Watcher":
        """Follow every server (returns at once): each stream reads its server's board when it
        connects, and again after every reconnect; a server that cannot be reached is a ``down``
        row (session ""), and a slow one holds up only its own row. :meth:`ready` waits for the
        first read of every server."""
        for h in self.hosts:
            try:
                s = EventStream(h, self._handler(h), on_connect=functools.partial(self._resync, h),
                                on_error=functools.partial(self._stream_failed, h))
            except Exception as exc:  # noqa: BLE001 - its password cannot be found: that host is down, not the board
                self._host_state(h.name, "down", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                self._read_once[h.name].set()
                continue
            self.streams.append(s.start())
        return self

    def ready(self, timeout: float | None = None, hosts: list[str] | None = None) -> bool:
        """Wait until every server (of ``hosts``, names) has been read once (or found down); True if all were."""
        end = None if timeout is None else time.monotonic() + timeout
        for ev in (self._read_once.values() if hosts is None else [self._read_once[h] for h in hosts]):
            if not ev.wait(None if end is None else max(0.0, end - time.monotonic())):
                return False
        return True

    def close(self) -> None:
        """Stop following."""
        for s in self.streams:
            s.close()

    def rows(self, stall: float | None = None) -> list[dict[str, Any]]:
        """The board, host by host, newest change first; busy with no event for ``stall`` s is stuck."""
        now = time.time()
        with self.lock:
            rows = [dict(r) for r in self.board.values() if r["session"] or r["state"] != "up"]
        for r in rows:
            if stall and r["state"] == "busy" and now - r.get("updated", now) > stall:
                r["state"] = "stuck"
        return sorted(rows, key=lambda r: (r["host"], -r.get("updated", 0)))


__all__ = ["Watcher"]

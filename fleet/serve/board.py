"""The service's live board, and the faces' side of it: ``fleet sessions`` and ``fleet watch``
take their rows from a running ``fleet serve`` instead of reading every server again.

The service keeps one :class:`~fleet.ops.watch.Watcher` over every host of its default
inventory that has an OpenCode server (one event stream per server: nothing is polled while
the agents are idle). It answers two calls:

- ``{"op": "board", "inventory": PATH, "hosts": [names]}``: ``done`` with the sessions of those
  hosts (``rows``, the board's), the hosts that could not be read (``errors``) and ``since``
  (when the board started);
- ``{"op": "watch", ...}``: ``rows`` (the board now), then ``change`` (one row) for every change,
  until the client goes away.

It answers only for its own world: the same inventory file (absolute path, unchanged since
the board read it) and hosts that are on its board; anything else is ``fallback`` and the face
reads the servers itself, as it does with no service (or with ``FLEET_NO_SERVICE=1``).
"""
from __future__ import annotations

import os
import queue
import sys
import threading
import time
from typing import Any, Callable

from fleet.ops.watch import Watcher
from fleet.results import SessionRow

Send = Callable[[dict[str, Any]], None]


def _signature(path: str) -> tuple[int, int, int] | None:
    """What tells a changed inventory file: its inode, size and modification time."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class Board:
    """One live board of every session on the default inventory's agent hosts (``make_fleet()``
    builds the context it reads: inventory and records)."""

    WAIT = Watcher.READ_TIMEOUT + 3.0  # a call waits this long for a host's first read (then: fallback)

    def __init__(self, make_fleet: Callable[[], Any], say: Callable[[str], None]) -> None:
        self._make = make_fleet
        self._say = say
        self.since = 0.0
        self.path = ""
        self.hosts: set[str] = set()
        self.watcher: Watcher | None = None
        self._sig: tuple[int, int, int] | None = None
        self._subs: list[queue.Queue[dict[str, Any] | None]] = []
        self._lock = threading.Lock()
        self._reloading = threading.Lock()
        self.closed = threading.Event()

    def start(self) -> "Board":
        """Read the inventory and follow its agent hosts (returns at once; each server is read
        when its stream connects)."""
        fl = self._make()
        path = os.path.realpath(fl.inventory.path)
        sig = _signature(path)  # before the reading: a change during it is seen at the next call
        hosts = [h for h in fl.inventory.hosts if h.opencode is not None]
        w = Watcher(hosts, self._changed, fl.records).start()
        old, self.watcher = self.watcher, w
        self.path, self._sig, self.hosts, self.since = path, sig, {h.name for h in hosts}, time.time()
        if old is not None:
            old.close()
        return self

    def close(self) -> None:
        """Stop following; every watching client is told (``done``)."""
        self.closed.set()
        with self._lock:
            for q in self._subs:
                q.put(None)
        if self.watcher is not None:
            self.watcher.close()

    @property
    def watching(self) -> int:
        """Clients following the board now."""
        with self._lock:
            return len(self._subs)

    def status(self) -> dict[str, Any]:
        """For ``fleet serve status``."""
        w = self.watcher
        return {"since": self.since, "inventory": self.path, "hosts": sorted(self.hosts),
                "rows": len(w.rows()) if w is not None else 0, "watching": self.watching}

    def _changed(self, row: dict[str, Any]) -> None:
        with self._lock:
            for q in self._subs:
                q.put(row)

    def covers(self, inventory: str, hosts: list[str]) -> bool:
        """Whether this board is the asker's world: the same inventory file, unchanged, and
        every host on it. A changed file is read again (in the background) for the next call."""
        if self.watcher is None or self.closed.is_set() or not inventory:
            return False
        if os.path.realpath(inventory) != self.path:
            return False
        if _signature(self.path) != self._sig:
            self._reload()
            return False
        return set(hosts) <= self.hosts

    def _reload(self) -> None:
        if not self._reloading.acquire(blocking=False):
            return  # already under way

        def go() -> None:
            try:
                self.start()
                self._say(f"fleet serve: {self.path} changed: the board follows it again")
            except Exception as exc:  # noqa: BLE001 - the faces read the servers themselves meanwhile
                self._say(f"fleet serve: {self.path} changed and cannot be read ({exc}); no board until it can")
            finally:
                self._reloading.release()
        threading.Thread(target=go, name="fleet-board-reload", daemon=True).start()

    def answer(self, op: str, req: dict[str, Any], send: Send, rfile: Any) -> None:
        """One ``board`` or ``watch`` call (``fallback`` when it is not this board's world)."""
        hosts = [str(h) for h in req.get("hosts") or []]
        w = self.watcher
        if w is None or not self.covers(str(req.get("inventory") or ""), hosts):
            send({"event": "fallback"})
            return
        want = set(hosts)
        if op == "watch":
            self._watch(w, want, send, rfile)
            return
        if not w.ready(self.WAIT, hosts):
            send({"event": "fallback"})  # a server not read yet: the face reads it itself
            return
        rows = [r for r in w.rows() if r["host"] in want]
        down = {r["host"]: str(r.get("step") or "down") for r in rows if not r["session"] and r["state"] == "down"}
        errors = [why if why.startswith(f"{h}:") else f"{h}: {why}" for h in hosts for why in [down.get(h)] if why]
        send({"event": "done", "rows": [r for r in rows if r["session"] and r["host"] not in down],
              "errors": errors, "since": self.since})

    def _watch(self, w: Watcher, want: set[str], send: Send, rfile: Any) -> None:
        q: queue.Queue[dict[str, Any] | None] = queue.Queue()
        gone = threading.Event()

        def client() -> None:  # it sends nothing more: the end of its stream is the client gone
            try:
                while rfile.readline():
                    pass
            except (OSError, ValueError):
                pass
            gone.set()
            q.put(None)
        with self._lock:
            self._subs.append(q)
        threading.Thread(target=client, name="fleet-board-client", daemon=True).start()
        try:
            send({"event": "rows", "rows": [r for r in w.rows() if r["host"] in want], "since": self.since})
            while not gone.is_set() and not self.closed.is_set():
                try:
                    row = q.get(timeout=1.0)
                except queue.Empty:
                    continue
                if row is not None and row["host"] in want:
                    send({"event": "change", "row": row})
            if not gone.is_set():
                send({"event": "done", "stopped": True})
        finally:
            with self._lock:
                self._subs.remove(q)


def start_board(settings: Any, inventory: str | None, pool: Any, say: Callable[[str], None]) -> Board | None:
    """The service's board over its default inventory, or None (said) when it cannot be read."""
    from fleet.app import Fleet

    b = Board(lambda: Fleet(inventory, settings=settings, face="service", pool=pool, use_service=False), say)
    try:
        return b.start()
    except Exception as exc:  # noqa: BLE001 - the service runs on; sessions and watch read the servers
        say(f"fleet serve: no live board ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}): "
            f"sessions and watch read the servers themselves")
        return None


# ---------------------------------------------------------------------- the faces' side

def _ask(fl: Any, request: dict[str, Any], timeout: float) -> tuple[Any, Any, dict[str, Any]] | None:
    """Send ``request`` to this state directory's service: (socket, reader, its first event),
    or None: no service (or ``FLEET_NO_SERVICE``), another version, or it says ``fallback``."""
    if os.environ.get("FLEET_NO_SERVICE") or not getattr(fl, "_use_service", True):
        return None
    from fleet.serve import client

    sock = client.connect(fl.settings.path("journal"))
    if sock is None:
        if getattr(fl.settings, "persist", 0) > 0:
            from fleet.serve.use import start_soon
            start_soon(fl)  # as fanout's first call does; this one reads the servers, the next the board
        return None
    try:
        sock.settimeout(timeout)
        reader = client.Reader(sock)
        reader.send(request)
        ev = reader.next()
    except (OSError, ValueError, client.ServiceGone):
        sock.close()
        return None
    if ev.get("event") == "error" and ev.get("kind") == "version":
        from fleet.serve.use import _say_once
        _say_once(str(ev.get("message")) + "; reading the servers instead")
    if ev.get("event") not in ("done", "rows"):
        sock.close()
        return None
    sock.settimeout(None)
    return sock, reader, ev


def _names(hosts: list[Any]) -> list[str]:
    return [h.name for h in hosts if h.opencode is not None]


def session_row(r: dict[str, Any], now: float) -> SessionRow:
    """A board row as ``sessions`` shows it (the server's states: an ``error`` is an idle session)."""
    return SessionRow(r["host"], r["session"], str(r.get("title") or ""), "idle" if r["state"] == "error" else
                      str(r["state"]), int(max(0.0, now - float(r.get("created") or now))),
                      str(r.get("directory") or ""), bool(r.get("fleet")), str(r.get("waiting") or ""),
                      str(r.get("worktree") or ""), str(r.get("branch") or ""), str(r.get("machine") or ""),
                      str(r.get("dispatch_id") or ""), str(r.get("repo") or ""), r.get("tokens"), r.get("cost"),
                      str(r.get("parent") or ""))


def sessions_via_service(fl: Any, hosts: list[Any]) -> tuple[list[SessionRow], list[str]] | None:
    """``sessions`` of ``hosts`` from the service's board, as :meth:`fleet.app.Fleet.sessions`
    gives them (host by host, the newest change first); None: read the servers here."""
    names = _names(hosts)
    if not names:
        return None
    got = _ask(fl, {"op": "board", "inventory": os.path.realpath(fl.inventory.path), "hosts": names},
               Board.WAIT + 5.0)
    if got is None:
        return None
    sock, _, ev = got
    sock.close()
    order = {n: i for i, n in enumerate(names)}
    rows = sorted(ev.get("rows") or [], key=lambda r: (order.get(r["host"], len(order)), -float(r.get("updated") or 0)))
    now = time.time()
    return [session_row(r, now) for r in rows], [str(e) for e in ev.get("errors") or []]


class ServiceWatch:
    """``fleet watch`` fed by the service's board, with :class:`~fleet.ops.watch.Watcher`'s face
    (``start``, ``rows``, ``close``, ``on_change`` for every change). Should the service stop
    meanwhile, the watch goes on here: ``local()`` is a Watcher of the same hosts."""

    def __init__(self, sock: Any, reader: Any, first: dict[str, Any], on_change: Callable[[dict[str, Any]], None],
                 local: Callable[[], Watcher]) -> None:
        self.sock, self.reader, self.first = sock, reader, first
        self.on_change = on_change
        self.mirror = Watcher([], on_change)  # its board and rows(), filled from the service's
        self._local = local
        self.local: Watcher | None = None
        self._lock = threading.Lock()
        self._closed = False

    def start(self) -> "ServiceWatch":
        for row in self.first.get("rows") or []:
            self._apply(row)
        threading.Thread(target=self._run, name="fleet-watch-service", daemon=True).start()
        return self

    def _apply(self, row: dict[str, Any]) -> None:
        key = (row["host"], row["session"])
        with self.mirror.lock:
            if row.get("state") == "deleted":
                self.mirror.board.pop(key, None)
            else:
                self.mirror.board[key] = dict(row)
        self.on_change(row)

    def _run(self) -> None:
        from fleet.serve.client import ServiceGone

        try:
            while True:
                ev = self.reader.next()
                if ev.get("event") == "change":
                    self._apply(ev["row"])
                elif ev.get("event") in ("done", "error"):
                    break
        except (OSError, ValueError, ServiceGone):
            pass
        with self._lock:
            if self._closed:
                return
            print("fleet: fleet serve stopped: watching the servers from here", file=sys.stderr, flush=True)
            self.local = self._local().start()

    def rows(self, stall: float | None = None) -> list[dict[str, Any]]:
        """The board now (see :meth:`Watcher.rows`)."""
        return (self.local or self.mirror).rows(stall)

    def close(self) -> None:
        """Stop watching (the service sees the client go)."""
        with self._lock:
            self._closed = True
            if self.local is not None:
                self.local.close()
        import socket

        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the reading thread; the service sees the client go
        except OSError:
            pass
        self.sock.close()


def watch_via_service(fl: Any, hosts: list[Any], on_change: Callable[[dict[str, Any]], None],
                      local: Callable[[], Watcher]) -> ServiceWatch | None:
    """The live board of ``hosts`` from the service (not started), or None: watch the servers here."""
    names = _names(hosts)
    if not names:
        return None
    got = _ask(fl, {"op": "watch", "inventory": os.path.realpath(fl.inventory.path), "hosts": names}, 5.0)
    return ServiceWatch(*got, on_change, local) if got is not None else None

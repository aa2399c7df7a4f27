"""The service: one per user and state directory (a lock), on a Unix socket in a 0700
directory (the socket 0600, the peer's uid checked), no TCP port.

It holds one pool of warm SSH connections that every face's fanout runs through (the same
operation, gate, artifacts and journal as in-process; the face renders what it sends back), and
a :class:`~fleet.serve.follow.Follower` that follows every open dispatch to its end.
"""
from __future__ import annotations

import ctypes
import fcntl
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
from typing import Any, Callable

from fleet.errors import FleetError, Refused
from fleet.serve import paths
from fleet.settings import Settings


def _interrupt(thread_id: int) -> None:
    """Ctrl-C for one worker thread: the run's own interrupt path (remote commands killed,
    the summary kept) runs as it does in a terminal."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(KeyboardInterrupt))


class CtrlC:
    """One Ctrl-C for the thread that runs a served call, delivered only while its program runs
    (armed), and never left pending after (disarm clears it): the call's own clean-up never
    sees it. A Ctrl-C that comes before the program starts is delivered when it starts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tid = threading.get_ident()
        self._armed = self._wanted = False

    def arm(self) -> None:
        with self._lock:
            self._armed = True
            if self._wanted:
                self._fire()

    def fire(self) -> None:
        with self._lock:
            self._wanted = True
            if self._armed:
                self._fire()

    def _fire(self) -> None:
        self._armed = False  # once
        _interrupt(self._tid)

    def disarm(self) -> None:
        with self._lock:
            self._armed = False
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._tid), None)


def _peer_uid(conn: socket.socket) -> int | None:
    if not hasattr(socket, "SO_PEERCRED"):
        return None  # not Linux: the 0700 directory and the 0600 socket keep others out
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", raw)[1])


class Service:
    """``fleet serve`` for ``settings`` (its journal names the state directory) and the default
    inventory ``inventory`` (for the dispatches it follows)."""

    def __init__(self, settings: Settings, inventory: str | None = None, idle_exit: float = 0.0,
                 follow: bool = True, out: Callable[[str], None] | None = None,
                 served: Callable[..., int | None] | None = None, board: bool | None = None) -> None:
        from fleet.ssh.warm import ConnectionPool

        self.settings = settings
        self.inventory = inventory
        self._served = served
        self.journal = settings.path("journal")
        self.idle_exit = idle_exit
        self.pool = ConnectionPool(idle=settings.warm_idle)
        self.since = time.time()
        self.last_call = time.monotonic()
        self.calls = 0
        self.served_calls = 0  # whole command lines run here for a thin client
        err = sys.stderr  # its own stream: a served call swaps sys.stderr for its client's
        self._say = out or (lambda line: print(line, file=err, flush=True))
        from fleet import app
        app.SERVICE_POOL = self.pool  # every context made in this process (served calls too) uses it
        self._stop = threading.Event()
        self._lock_fd: int | None = None
        self._sock: socket.socket | None = None
        self.follower: Any = None
        self.listener: Any = None
        self._follow = follow
        self._board = follow if board is None else board  # the live board of sessions (fleet.serve.board)
        self.board: Any = None
        self.lease: Any = None
        self.holding = True  # without a lease this service acts alone
        if settings.lease:
            from fleet.serve.lease import Lease
            self.lease = Lease(settings.path("lease"), ttl=settings.lease_ttl)
            self.holding = False

    # ------------------------------------------------------------------ life
    def acquire(self) -> None:
        """Take this state directory's lock, or say where the running service is."""
        d = paths.ensure_run_dir(self.journal)
        fd = os.open(paths.lock_path(self.journal), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            info = paths.read_info(self.journal) or {}
            raise Refused(f"fleet serve already runs for this state directory (pid {info.get('pid', '?')}, "
                          f"socket {paths.socket_path(self.journal)}): 'fleet serve status' or "
                          f"'fleet serve stop'") from None
        self._lock_fd = fd
        sock_path = paths.socket_path(self.journal)
        if os.path.exists(sock_path):
            os.unlink(sock_path)  # ours: we hold the lock, so nobody listens on it
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            s.bind(sock_path)
        finally:
            os.umask(old)
        os.chmod(sock_path, 0o600)
        s.listen(64)
        self._sock = s
        from fleet import __version__
        from fleet.files import write_atomic
        write_atomic(paths.info_path(self.journal), json.dumps({"pid": os.getpid(), "version": __version__,
                                                                 "since": self.since, "socket": sock_path}))
        self._say(f"fleet serve: pid {os.getpid()}, socket {sock_path} (state {d})")

    def serve_forever(self) -> None:
        """Accept calls until stopped (``stop`` call, SIGTERM/SIGINT, or idle past ``idle_exit``)."""
        if self._sock is None:
            self.acquire()
        assert self._sock is not None
        if self.lease is not None:
            self._renew()
            threading.Thread(target=self._keep_lease, name="fleet-lease", daemon=True).start()
        else:
            self._say("fleet serve: no shared lease (setting 'lease'): a service on another machine that "
                      "sees the same dispatches would not be seen; keep one orchestrator at a time")
        if self._board:
            from fleet.serve.board import start_board
            self.board = start_board(self.settings, self.inventory, self.pool, self._say)
        if self._follow:
            from fleet.serve.follow import Follower
            self.follower = Follower(self.journal, self._follow_dispatch, may_act=lambda: self.holding).start()
            if self.holding:  # Slack replies are acted on by one orchestrator only
                from fleet.app import Fleet
                from fleet.ops.listen_serve import start_background
                self.listener = start_background(
                    Fleet(self.inventory, settings=self.settings, face="service", pool=self.pool, use_service=False),
                    self._say)
        self._sock.settimeout(0.5)
        try:
            while not self._stop.is_set():
                if self.idle_exit and time.monotonic() - self.last_call > self.idle_exit and not self._busy():
                    self._say(f"fleet serve: idle for {self.idle_exit:g}s, exiting")
                    break
                try:
                    conn, _ = self._sock.accept()
                except socket.timeout:
                    continue
                except OSError:
                    break
                threading.Thread(target=self._handle, args=(conn,), name="fleet-serve-call", daemon=True).start()
        finally:
            self.close()

    def _renew(self) -> None:
        was = self.holding
        try:
            self.holding = self.lease.try_hold()
        except OSError as exc:
            self.holding = False
            self._say(f"fleet serve: the lease {self.lease.path} cannot be read or written ({exc}); standing by")
            return
        if self.holding != was:
            cur = self.lease.read() or {}
            self._say("fleet serve: holding the orchestrator lease" if self.holding else
                      f"fleet serve: standing by; {cur.get('holder')} holds the orchestrator lease")

    def _keep_lease(self) -> None:
        every = min(10.0, self.lease.ttl / 3)
        while not self._stop.wait(every if self.holding else min(2.0, every)):
            self._renew()

    def _busy(self) -> bool:
        return bool(self.follower is not None and self.follower.following) or bool(self.board and self.board.watching)

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        if self.board is not None:
            self.board.close()
        if self.listener is not None:
            self.listener.close()
        if self.follower is not None:
            self.follower.close()
        if self.lease is not None and self.holding:
            try:
                self.lease.release()
            except OSError:
                pass
        if self._sock is not None:
            try:
                os.unlink(paths.socket_path(self.journal))
            except OSError:
                pass
            self._sock.close()
            self._sock = None
        self.pool.close()
        try:
            os.unlink(paths.info_path(self.journal))
        except OSError:
            pass
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ------------------------------------------------------------------ calls
    def _handle(self, conn: socket.socket) -> None:
        lock = threading.Lock()

        def send(ev: dict[str, Any]) -> None:
            with lock:
                conn.sendall((json.dumps(ev, default=str) + "\n").encode())
        try:
            uid = _peer_uid(conn)
            if uid is not None and uid != os.getuid():
                return  # another user's process: no answer at all
            f = conn.makefile("rb")
            line = f.readline()
            if not line:
                return
            req = json.loads(line)
            self.last_call = time.monotonic()
            self.calls += 1
            from fleet import __version__
            if req.get("version") != __version__:
                send({"event": "error", "kind": "version", "exit_code": 2,
                      "message": f"the running fleet serve is version {__version__}, this fleet is "
                                 f"{req.get('version')}: restart it ('fleet serve stop', then 'fleet serve')"})
                return
            op = req.get("op")
            if op == "status":
                send({"event": "done", "status": self.status()})
            elif op == "stop":
                send({"event": "done", "stopped": True})
                self.stop()
            elif op == "fanout":
                self._fanout(req, send, f)
            elif op == "cli":
                self._cli(req, send, f)
            elif op == "wait":  # a face's wait on a dispatch the follower follows, as the face would follow it
                same = [req.get("timeout"), req.get("stall_timeout")] == [self.settings.dispatch_timeout,
                                                                           self.settings.stall_timeout]
                self.follower.answer_wait(req, send, f) if self.follower and same else send({"event": "fallback"})
            elif op in ("board", "watch"):  # sessions and watch, from the live board (else: fallback)
                self.board.answer(op, req, send, f) if self.board is not None else send({"event": "fallback"})
            else:
                send({"event": "error", "exit_code": 2, "message": f"unknown call '{op}'"})
        except (BrokenPipeError, ConnectionResetError):
            pass
        except FleetError as exc:
            try:
                send({"event": "error", "exit_code": exc.exit_code, "message": str(exc)})
            except OSError:
                pass
        except Exception as exc:  # noqa: BLE001 - one call's bug never ends the service
            try:
                send({"event": "error", "exit_code": 1, "message": f"fleet serve: {type(exc).__name__}: {exc}"})
            except OSError:
                pass
        finally:
            self.last_call = time.monotonic()
            conn.close()

    def status(self) -> dict[str, Any]:
        from fleet import __version__
        fol = self.follower
        return {"pid": os.getpid(), "version": __version__, "since": self.since, "calls": self.calls,
                "served_calls": self.served_calls,
                "socket": paths.socket_path(self.journal), "warm": sum(len(v) for v in self.pool._free.values()),
                "following": sorted(fol.following) if fol else [],
                "followed_total": fol.followed_total if fol else 0, "waiting": fol.waiting() if fol else {},
                "errors": (fol.errors[-5:] if fol else []), "board": self.board.status() if self.board else None,
                "lease": ({**(self.lease.read() or {}), "path": self.lease.path, "mine": self.holding}
                          if self.lease is not None else None)}

    def _watch_client(self, rfile: Any, done: threading.Event, ctrl_c: CtrlC) -> None:
        """The client sends 'interrupt' on Ctrl-C, or goes away: the call's thread gets one
        KeyboardInterrupt while its run is armed, as a terminal's Ctrl-C would give it."""
        def watch() -> None:
            try:
                while not done.is_set():
                    line = rfile.readline()
                    if not line or b"interrupt" in line:
                        break
            except (OSError, ValueError):
                pass
            ctrl_c.fire()
        threading.Thread(target=watch, daemon=True).start()

    def _cli(self, req: dict[str, Any], send: Callable[[dict[str, Any]], None], rfile: Any) -> None:
        run_call = self._served
        if run_call is None:
            send({"event": "fallback"})  # a service started without the CLI: the client runs it
            return
        done = threading.Event()
        ctrl_c = CtrlC()
        self._watch_client(rfile, done, ctrl_c)
        with self.pool.spares_after():  # the next call's channels open once this client has its answer
            try:
                code = run_call(req, send, ctrl_c, self.journal)
            finally:
                done.set()
            if code is None:
                send({"event": "fallback"})  # busy, or another state directory's call: the client runs it
                return
            self.served_calls += 1
            send({"event": "exit", "code": code})

    def _fanout(self, req: dict[str, Any], send: Callable[[dict[str, Any]], None], rfile: Any) -> None:
        from fleet.app import Fleet
        from fleet.ssh.options import FanoutOptions

        st = Settings.from_mapping(req["settings"])
        fl = Fleet(req["inventory"], settings=st, face="cli", pool=self.pool, use_service=False)
        o = dict(req["options"])
        o["accept_host_keys_for"] = frozenset(o.get("accept_host_keys_for") or ())
        o["collect"] = tuple(o.get("collect") or ())
        opts = FanoutOptions(**o)
        done = threading.Event()
        ctrl_c = CtrlC()
        self._watch_client(rfile, done, ctrl_c)

        class Log:
            def write(self, text: str) -> None:
                send({"event": "log", "text": text})

            def flush(self) -> None:
                pass

        try:
            ctrl_c.arm()
            run = fl.fanout(req["selector"], req["command"], mode=req.get("mode"), confirm=req.get("confirm"),
                            canary=req.get("canary"), no_canary=bool(req.get("no_canary")), options=opts,
                            on_output=(lambda h, s, line: send({"event": "output", "host": h, "stream": s,
                                                                "line": line})) if req.get("stream") else None,
                            on_result=lambda r: send({"event": "result", "result": r.to_dict()}),
                            log_stream=Log() if req.get("log") else None, batch=req.get("batch"),
                            max_fail=req.get("max_fail"))
            ctrl_c.disarm()
        except KeyboardInterrupt:
            ctrl_c.disarm()
            send({"event": "error", "exit_code": 130, "message": "interrupted"})
            return
        finally:
            done.set()
        send({"event": "done", "run": run.to_dict()})

    def _follow_dispatch(self, did: str) -> Any:
        from fleet.app import Fleet
        from fleet.serve.follow import OnceTrail

        fl = Fleet(self.inventory, settings=self.settings, face="service", pool=self.pool, use_service=False)
        trail = fl.trail()
        try:
            once = OnceTrail(trail, os.path.join(paths.run_dir(self.journal), "ends.lock"))
            return fl.wait(dispatch_id=did, trail=once, on_event=self.follower.relay(did) if self.follower else None)
        finally:
            trail.close()


def run(settings: Settings, inventory: str | None = None, idle_exit: float = 0.0,
        served: Callable[..., int | None] | None = None) -> None:
    """Run the service in the foreground until stopped (``served``: how it runs a thin
    client's whole command line, :func:`fleet.cli.served.run_call`)."""
    svc = Service(settings, inventory, idle_exit=idle_exit, served=served)
    svc.acquire()

    def on_signal(signum: int, frame: Any) -> None:
        svc.stop()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    svc.serve_forever()

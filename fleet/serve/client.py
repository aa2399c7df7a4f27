"""Talking to a running ``fleet serve``: a Unix socket, one JSON request, a stream of JSON events
back (one per line), the last one ``done`` or ``error``. Imports little: a face checks for the
service on every run (``_socket`` rather than ``socket`` and :mod:`fleet.serve.wire` rather than
``json``: those two load ``enum`` and ``re``, a few ms of every thin client's start)."""
from __future__ import annotations

import _socket
import os

TYPE_CHECKING = False  # the thin client (fleet.cli.entry) imports this module: no typing at start
if TYPE_CHECKING:
    from typing import Any, Callable, Iterator

from fleet.serve import wire
from fleet.serve.paths import socket_path

PROTOCOL = 1


class ServiceGone(Exception):
    """The service closed the connection before its answer (it stopped or crashed)."""


def connect(journal: str, timeout: float = 2.0) -> _socket.socket | None:
    """A connection to this state directory's service, or None when none runs (no socket, or a
    stale one nobody listens on)."""
    path = socket_path(journal)
    if not os.path.exists(path):
        return None
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except OSError:
        s.close()
        return None
    s.settimeout(None)
    return s


class Reader:
    """The service's events on one connection, one at a time. The buffer lives here, so a Ctrl-C
    while waiting for the next event loses nothing: the caller may tell the service and read on."""

    def __init__(self, sock: _socket.socket, tick: float | None = None) -> None:
        self.sock = sock
        self.buf = b""
        if tick is not None:
            # wake up every ``tick`` seconds while waiting: a Ctrl-C sent to this thread by another
            # (an MCP call cancelled on its worker thread) lands, where a blocking recv holds it
            sock.settimeout(tick)

    def send(self, request: dict[str, Any]) -> None:
        from fleet import __version__

        self.sock.sendall((wire.dumps({**request, "version": __version__, "protocol": PROTOCOL}) + "\n").encode())

    def next(self) -> dict[str, Any]:
        while b"\n" not in self.buf:
            try:
                chunk = self.sock.recv(65536)
            except _socket.timeout:
                continue
            if not chunk:
                raise ServiceGone("the service closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        ev: dict[str, Any] = wire.loads(line)
        return ev


def events(sock: _socket.socket, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Send ``request`` and yield the service's events until its last one."""
    r = Reader(sock)
    r.send(request)
    while True:
        ev = r.next()
        yield ev
        if ev.get("event") in ("done", "error"):
            return


def answers(sock: _socket.socket, request: dict[str, Any], last: tuple[str, ...] = ("done", "error"),
            tick: float | None = None, interrupt: bool = True) -> Iterator[dict[str, Any]]:
    """Send ``request`` and yield the service's events through the last one (a kind in ``last``).
    The first Ctrl-C while waiting is passed on (``interrupt``: the service interrupts the run as a
    terminal's Ctrl-C would, and its summary follows); a second one, or one the service can no
    longer be told, is raised (at once with ``interrupt=False``). ``tick``: see :class:`Reader`."""
    r = Reader(sock, tick)
    r.send(request)
    told = not interrupt
    while True:
        try:
            ev = r.next()
        except KeyboardInterrupt:
            if told:
                raise
            told = True
            try:
                sock.sendall(b'{"op": "interrupt"}\n')
            except OSError:
                raise KeyboardInterrupt from None
            continue
        yield ev
        if ev.get("event") in last:
            return


def call(journal: str, request: dict[str, Any], on_event: Callable[[dict[str, Any]], None] | None = None,
         timeout: float = 2.0) -> dict[str, Any] | None:
    """One request to the service: its last event (``done`` or ``error``), every other event to
    ``on_event``; None when no service runs."""
    sock = connect(journal, timeout)
    if sock is None:
        return None
    try:
        for ev in events(sock, request):
            if ev.get("event") in ("done", "error"):
                return ev
            if on_event is not None:
                on_event(ev)
    finally:
        sock.close()
    return None


def status(journal: str) -> dict[str, Any] | None:
    """The running service's status (pid, version, since, followed dispatches), or None."""
    try:
        return call(journal, {"op": "status"})
    except (OSError, ServiceGone, ValueError):
        return None

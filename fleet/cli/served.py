"""A whole CLI call run by the service for the thin ``fleet`` client (:mod:`fleet.cli.entry`),
as a ControlMaster runs a session for ``ssh``: the same Program, tasks, gate, output, journal
and exit status as in the client's own process, with the client's arguments, working
directory, environment and terminal, over the service's warm connections. The client pays
for a Python start and one socket round trip instead of Invoke, the settings and paramiko.

A call changes process-wide state (``sys.stdout``/``sys.stderr``, the working directory,
``os.environ``, ``sys.argv``) while it runs, so one call runs at a time; a client that finds
the service busy runs the command itself (still over the warm pool: :mod:`fleet.serve.use`).
The service's own threads write to the stream they captured at start, never to a client.
"""
from __future__ import annotations

import io
import os
import sys
import threading
from typing import Any, Callable

from fleet.cli import common
from fleet.cli.entry import SERVABLE
from fleet.cli.program import run_program

_ONE = threading.Lock()


def servable(argv: list[str]) -> bool:
    """Whether the service may run this command line for a client: a servable task first (no
    Invoke core flags before it, no help asked)."""
    return bool(argv) and argv[0] in SERVABLE and not any(a in ("-h", "--help") for a in argv)


class _ClientStream(io.TextIOBase):
    """The client's stdout or stderr: each write goes back over the socket at once (the client
    writes it to its own file descriptor), with the client's terminal answers."""

    def __init__(self, send: Callable[[dict[str, Any]], None], fd: int, tty: bool) -> None:
        self._send, self._fd, self._tty, self.gone = send, fd, tty, False

    def write(self, s: str) -> int:
        if s and not self.gone:
            try:
                self._send({"event": "out", "fd": self._fd, "data": s})
            except OSError:
                self.gone = True  # the client went away: the run is being interrupted
        return len(s)

    def isatty(self) -> bool:
        return self._tty

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"


def _ours(journal: str) -> bool:
    """Whether the client's settings (its directory and environment, in force now) name this
    service's state directory."""
    from fleet.settings import load_settings

    try:
        theirs = load_settings().path("journal")
    except Exception:  # noqa: BLE001 - a settings error is the client's to say (the full program)
        return False
    return os.path.abspath(theirs) == os.path.abspath(journal)


def run_call(req: dict[str, Any], send: Callable[[dict[str, Any]], None], ctrl_c: Any,
             journal: str) -> int | None:
    """Run one client's command line here; its output events, then ``exit`` with its status
    (``fallback`` when another call runs, or the client's settings name another state
    directory: the client then runs it itself). Returns its exit status, or None: not run here.
    ``ctrl_c`` is armed while the program runs (:class:`fleet.serve.server.CtrlC`)."""
    argv = [str(a) for a in req.get("argv") or []]
    env = {str(k): str(v) for k, v in (req.get("env") or {}).items()}
    if not servable(argv) or not _ONE.acquire(blocking=False):
        return None
    tty = req.get("tty") or {}
    for key in ("COLUMNS", "LINES"):  # the client's terminal size, as its own process would see it
        if tty.get(key.lower()) and key not in env:
            env[key] = str(tty[key.lower()])
    saved = (sys.stdout, sys.stderr, sys.stdin, sys.argv, os.getcwd(), dict(os.environ))
    out, err = _ClientStream(send, 1, bool(tty.get("stdout"))), _ClientStream(send, 2, bool(tty.get("stderr")))
    code: Any = 0
    devnull = open(os.devnull)  # noqa: SIM115 - closed below
    try:
        os.environ.clear()
        os.environ.update(env)
        try:
            os.chdir(str(req.get("cwd") or "/"))
        except OSError:
            return None  # the client's directory is gone or not ours to enter: it says so itself
        if not _ours(journal):
            return None
        sys.stdout, sys.stderr, sys.stdin = out, err, devnull
        sys.argv = [str(req.get("prog") or "fleet"), *argv]
        common.PROG["served"] = True
        try:
            try:
                ctrl_c.arm()
                run_program(argv)
            finally:
                ctrl_c.disarm()
        except SystemExit as exc:
            code = exc.code
        except KeyboardInterrupt:
            ctrl_c.disarm()
            print(f"{common.prog()}: interrupted", file=sys.stderr)
            code = 130
    finally:
        common.PROG["served"] = False
        sys.stdout, sys.stderr, sys.stdin, sys.argv = saved[0], saved[1], saved[2], saved[3]
        devnull.close()
        os.environ.clear()
        os.environ.update(saved[5])
        try:
            os.chdir(saved[4])
        except OSError:
            os.chdir("/")
        _ONE.release()
    if code is None:
        return 0
    if not isinstance(code, int):
        send({"event": "out", "fd": 2, "data": f"{code}\n"})
        return 1
    return code

"""What the fanout runner needs from a way of reaching a host, and nothing more.

Two halves, as in Fabric (``runners.Remote`` beside ``Local``) and Ansible (``connection/ssh.py``
beside ``connection/local.py``):

- a :class:`Transport` is one attempt's session: connect, run one command (streams, timeout,
  kill on Ctrl-C), fetch files, close. :class:`~fleet.ssh.session.SSHSession` is one,
  :class:`~fleet.ssh.local.LocalSession` the other.
- a :class:`Link` is how one host is reached for a whole run: who logs in, where ssh goes,
  whether a kept connection is waiting, how a new session is made and what happens to it after.
  The runner picks a host's link once (:class:`~fleet.ssh.session.SSHLink` or
  :class:`~fleet.ssh.local.LocalLink`) and from then on treats every host alike.
"""
from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from fleet.results import PreflightResult
from fleet.ssh.config import Hop

LineHook = Callable[[str, str], None]  # ("stdout"|"stderr", line) for one host


@dataclass
class ExecResult:
    """A finished command. ``exit_code`` is None when it was killed by ``signal``."""

    exit_code: int | None
    stdout: str
    stderr: str
    signal: str | None = None


class Transport(Protocol):
    """One attempt's session with one host.

    ``run`` returns an :class:`ExecResult` for a command that ended by itself (whatever its
    exit code) and raises an :class:`~fleet.errors.SSHFailure` otherwise: ``CommandTimeout``,
    ``Aborted`` (Ctrl-C), ``ConnectionLost``, or ``ConnectFailed`` when it could not start.
    """

    running: bool  # a command is in flight: Ctrl-C leaves closing to the worker that kills it

    def connect(self) -> None:
        """Be ready to run (for SSH: every hop opened and its host key checked)."""

    def run(self, command: str, timeout: float | None, abort: threading.Event,
            on_output: LineHook | None = None, artifacts: Path | None = None) -> ExecResult:
        """Run ``command`` with stdin closed; ``artifacts`` is a path prefix for the streams."""
        ...

    def get(self, remote: str, local: str) -> None:
        """Copy the file ``remote`` (on the host) to ``local`` (here)."""

    def close(self) -> None:
        """Let go of everything (safe from another thread, safe twice)."""


class Link(Protocol):
    """How one host is reached for a whole run (chosen once per host)."""

    @property
    def user(self) -> str | None:
        """Who runs the command (ssh_config applied, for SSH)."""
        ...

    @property
    def target(self) -> Hop | None:
        """Where ``ssh NAME`` goes; None for a command run here."""
        ...

    @property
    def max_attempts(self) -> int | None:
        """A cap on the retry policy's attempts (None: the options' own)."""
        ...

    @property
    def keep(self) -> list[socket.socket] | None:
        """Receives preflight's open TCP connection, for the first attempt to use (None: no use for it)."""
        ...

    def warm(self) -> Transport | None:
        """A connected session kept from an earlier command, or None."""
        ...

    def preflighted(self, pf: PreflightResult) -> None:
        """Take what preflight learned (the address that answered); drop its socket on failure."""

    def open(self) -> Transport:
        """A new, unconnected session for one attempt."""
        ...

    def dial(self, sess: Transport) -> None:
        """Connect ``sess`` (counted by a connection pool, when there is one)."""

    def release(self, sess: Transport, reusable: bool) -> None:
        """Done with ``sess``: keep it for the next command when ``reusable``, else close it."""


__all__ = ["ExecResult", "LineHook", "Link", "Transport"]

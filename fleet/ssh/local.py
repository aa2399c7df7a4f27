"""The local transport: a command run here, behind the same interface as an SSH session.

Fabric keeps ``runners.Local`` beside ``runners.Remote`` and Ansible ``connection/local.py``
beside ``ssh.py``; fleet likewise. A host with ``auth: local`` (and mode off's single run
here) gets a :class:`LocalLink`, whose :class:`LocalSession` runs the command with Invoke's
local runner: stdin closed, output to the live hook line by line, the command timeout
enforced by Invoke (it SIGKILLs the shell it started; unlike the SSH kill, not the shell's
children). The fanout runner treats the result as it treats an SSH one (:mod:`fleet.ssh.attempts`).

What differs, and why: nothing to connect, so ``connect`` and ``close`` hold nothing and a
host is tried once (there is no connection failure a second try could fix, and a command
that ran is not repeated); Invoke keeps the whole output in memory, so the runner writes the
artifact files when the host ends rather than while it runs; a command that has started is
not stopped by Ctrl-C (the terminal's SIGINT reaches it directly) and, ending after it,
keeps its exit code (:class:`InterruptedAfterExit`).
"""
from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

from fleet.errors import Aborted, CommandTimeout
from fleet.inventory import Host
from fleet.results import PreflightResult
from fleet.ssh.transport import ExecResult, LineHook, Transport


class InterruptedAfterExit(Aborted):
    """Ctrl-C came while a local command ran; it ran to its end and exited ``code``."""

    def __init__(self, host: str, message: str, stdout: str, stderr: str, code: int | None) -> None:
        super().__init__(host, message, stdout, stderr)
        self.code = code


class LineWriter:
    """A file-like object for Invoke's local runner that feeds whole lines to the line hook."""

    def __init__(self, stream: str, hook: LineHook) -> None:
        self.stream, self.hook, self.buf = stream, hook, ""

    def write(self, s: str) -> int:
        """Take a chunk; pass on every line it completes."""
        self.buf += s
        *lines, self.buf = self.buf.split("\n")
        for ln in lines:
            self.hook(self.stream, ln)
        return len(s)

    def flush(self) -> None:
        """Nothing is held but a partial line."""

    def close(self) -> None:
        """Pass on the last partial line."""
        if self.buf:
            self.hook(self.stream, self.buf)
            self.buf = ""


class LocalSession:
    """One attempt of a command run here (a :class:`~fleet.ssh.transport.Transport`)."""

    def __init__(self, name: str) -> None:
        self.name = name  # the host's name, for messages
        self.running = False

    def connect(self) -> None:
        """Nothing to connect to."""

    def run(self, command: str, timeout: float | None, abort: threading.Event,
            on_output: LineHook | None = None, artifacts: Path | None = None) -> ExecResult:
        """Run ``command`` here with stdin closed; raise on timeout or when interrupted.

        ``artifacts`` is not written here: Invoke keeps the whole output, and the runner
        writes it out when the host ends.
        """
        from invoke import Context
        from invoke.exceptions import CommandTimedOut

        if abort.is_set():  # a local command cannot be stopped once it runs: do not start it
            raise Aborted(self.name, "not started: the run was interrupted")
        kwargs: dict[str, Any] = {"hide": True, "warn": True, "in_stream": False}
        writers: list[LineWriter] = []
        if on_output is not None:
            writers = [LineWriter("stdout", on_output), LineWriter("stderr", on_output)]
            kwargs.update(hide=False, out_stream=writers[0], err_stream=writers[1])
        if timeout:
            kwargs["timeout"] = timeout
        self.running = True
        try:
            res = Context().run(command, **kwargs)
        except CommandTimedOut as exc:
            raise CommandTimeout(self.name, f"command timed out after {timeout:g}s", exc.result.stdout,
                                 exc.result.stderr) from None
        finally:
            self.running = False
            for w in writers:
                w.close()
        assert res is not None  # Invoke returns None only for disown=True
        if abort.is_set():
            raise InterruptedAfterExit(self.name, "interrupted while the command ran (Ctrl-C)", res.stdout,
                                       res.stderr, res.exited)
        return ExecResult(res.exited, res.stdout, res.stderr)

    def get(self, remote: str, local: str) -> None:
        """Copy the file ``remote`` (a path here, relative to the working directory) to ``local``."""
        shutil.copyfile(remote, local)

    def close(self) -> None:
        """Nothing is held."""


class LocalLink:
    """How the runner reaches a host whose commands run here (a :class:`~fleet.ssh.transport.Link`)."""

    target = None     # no ssh: nothing to resolve, preflight skips the network checks
    keep = None       # no TCP connection for preflight to hand over
    max_attempts = 1  # tried once (see the module's docstring)

    def __init__(self, host: Host) -> None:
        self.host = host
        self.user = host.user

    def warm(self) -> None:
        """No connection to keep."""
        return None

    def preflighted(self, pf: PreflightResult) -> None:
        """Nothing to learn from preflight."""

    def open(self) -> LocalSession:
        """A session for one attempt."""
        return LocalSession(self.host.name)

    def dial(self, sess: Transport) -> None:
        """Nothing to connect (no pool counts it)."""
        sess.connect()

    def release(self, sess: Transport, reusable: bool) -> None:
        """Nothing to keep."""
        sess.close()


__all__ = ["InterruptedAfterExit", "LineWriter", "LocalLink", "LocalSession"]

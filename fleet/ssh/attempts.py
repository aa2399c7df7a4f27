"""One host's attempts under the retry policy, and what its end is called.

The same for every transport (:mod:`fleet.ssh.transport`): a session from the host's link (a
warm one first, when a pool lent one), connected, then the canary gate, then the command,
then ``--collect``. tenacity repeats only failures before the command started (connect,
handshake, a transport error before exec); a command that ran is repeated only with
``retry_on_exit``; an authentication or host-key failure never; and never more often than the
link allows. A warm connection found dead is dialled again, once, before the command starts.
"""
from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Any

from tenacity import RetryError, Retrying, retry_if_exception, stop_after_attempt, wait_fixed

from fleet.errors import Aborted, ConnectFailed, NonZeroExit, NotRun, SSHFailure
from fleet.inventory import Host
from fleet.results import FanoutOutcome, FanoutResult, PreflightResult
from fleet.ssh.transport import Link, Transport

if TYPE_CHECKING:  # pragma: no cover
    from fleet.ssh.runner import FanoutRunner


def ms(t0: float) -> int:
    """Milliseconds since ``t0`` (a ``time.monotonic()``)."""
    return int((time.monotonic() - t0) * 1000)


class InFlight:
    """The sessions in use right now, so Ctrl-C can close them from the main thread."""

    def __init__(self) -> None:
        self._sessions: set[Transport] = set()
        self._lock = threading.Lock()

    def add(self, sess: Transport) -> None:
        """``sess`` is in use."""
        with self._lock:
            self._sessions.add(sess)

    def discard(self, sess: Transport) -> None:
        """``sess`` is done with."""
        with self._lock:
            self._sessions.discard(sess)

    def sessions(self) -> list[Transport]:
        """A snapshot of the sessions in use."""
        with self._lock:
            return list(self._sessions)


def failed(host: str, cmd: str, user: str | None, exc: SSHFailure, attempts: int, t0: float,
           pf: PreflightResult | None, collected: tuple[str, ...], interrupted: bool) -> FanoutResult:
    """The result of a host whose last attempt raised ``exc`` (``interrupted``: Ctrl-C came)."""
    if isinstance(exc, NonZeroExit):
        return FanoutResult(host, FanoutOutcome.FAILURE, cmd, user, exc.code, exc.stdout, exc.stderr, attempts,
                            ms(t0), str(exc), exc.kind, pf, collected)
    if isinstance(exc, Aborted) or interrupted:
        outcome = FanoutOutcome.ABORTED
        msg = str(exc) if isinstance(exc, Aborted) else f"interrupted (Ctrl-C): {exc}"
        kind = exc.kind if isinstance(exc, NotRun) else "aborted"
    else:
        outcome = FanoutOutcome.TIMEOUT if exc.timeout else FanoutOutcome.FAILURE
        msg, kind = str(exc), exc.kind
    code = getattr(exc, "code", None)  # a local command that ended after Ctrl-C keeps its exit code
    return FanoutResult(host, outcome, cmd, user, code, exc.stdout, exc.stderr, attempts, ms(t0), msg, kind, pf)


def collect(rt: FanoutRunner, sess: Transport, host: Host) -> tuple[str, ...]:
    """Fetch the --collect files into the host's artifacts folder. A failure is logged and
    noted in the run, never retried."""
    if rt.dir is None:
        return ()
    out = []
    dest = rt.dir / host.name
    dest.mkdir(exist_ok=True, mode=0o700)
    for remote in rt.options.collect:
        local = dest / (os.path.basename(remote.rstrip("/")) or "file")
        try:
            sess.get(remote, str(local))
            out.append(str(local))
        except Exception as exc:  # noqa: BLE001 - no sftp, no file, lost link: all just "not collected"
            rt.log("collect_failed", host=host.name, path=remote, error=f"{type(exc).__name__}: {exc}")
            rt.note(f"{host.name}: could not collect {remote}: {exc or type(exc).__name__}")
    return tuple(out)


def run_attempts(rt: FanoutRunner, host: Host, link: Link, cmd: str, t0: float, pf: PreflightResult | None,
                 warm: Transport | None = None) -> FanoutResult:
    """Run ``cmd`` on ``host`` through ``link`` under the retry policy; the (unrecorded) result.

    ``warm``: a connected session lent by the pool, used by the first attempt.
    """
    opts = rt.options
    user = link.user
    attempts = 0
    last: dict[str, Any] = {}
    kept = [warm] if warm is not None else []

    def is_retryable(exc: BaseException) -> bool:
        if rt.abort.is_set() or not isinstance(exc, SSHFailure):
            return False
        if isinstance(exc, NonZeroExit):
            return opts.retry_on_exit
        return exc.retryable

    def before_sleep(state: Any) -> None:
        exc = state.outcome.exception()
        rt.log("retry", host=host.name, user=user, command=cmd, attempt=state.attempt_number,
               error=str(exc), next_in_s=f"{opts.retry_delay:g}")

    def sleep(seconds: float) -> None:
        rt.abort.wait(seconds)  # Ctrl-C ends the wait at once

    tries = opts.attempts if link.max_attempts is None else min(opts.attempts, link.max_attempts)
    retrying = Retrying(stop=stop_after_attempt(tries), wait=wait_fixed(opts.retry_delay),
                        retry=retry_if_exception(is_retryable), reraise=True, sleep=sleep,
                        before_sleep=before_sleep)
    prefix = rt.dir / host.name if rt.dir is not None else None
    hook = rt.line_hook(host.name)
    timeout = opts.command_timeout or None
    try:
        for attempt in retrying:
            with attempt:
                if rt.abort.is_set():
                    raise Aborted(host.name, "interrupted before this attempt started")
                attempts += 1
                reused = bool(kept)
                sess = kept.pop() if kept else link.open()
                rt.in_flight.add(sess)
                reusable = False
                try:
                    if rt.abort.is_set():  # Ctrl-C came before the interrupt could see this connection
                        raise Aborted(host.name, "interrupted before this attempt started")
                    if not reused:
                        link.dial(sess)
                    if rt.gate is not None:
                        if not rt.gate.may_run(host.name) and hasattr(sess, "prepare"):
                            sess.prepare()  # waiting for the canary: its command's channel opens meanwhile
                        rt.gate.wait_turn(host.name)
                    try:
                        res = sess.run(cmd, timeout, rt.abort, hook, prefix)
                    except ConnectFailed:
                        if not reused:
                            raise
                        # the kept connection died since: dial again, once, before the command starts
                        sess.close()
                        rt.in_flight.discard(sess)
                        sess = link.open()
                        rt.in_flight.add(sess)
                        link.dial(sess)
                        res = sess.run(cmd, timeout, rt.abort, hook, prefix)
                    if opts.collect:
                        last.update(collected=collect(rt, sess, host))
                    reusable = True  # the connection is sound, whatever the exit code
                    if res.exit_code != 0:
                        raise NonZeroExit(host.name, res.exit_code, res.stdout, res.stderr, res.signal)
                    last.update(res=res)
                finally:
                    link.release(sess, reusable and not rt.abort.is_set())
                    rt.in_flight.discard(sess)
    except SSHFailure as exc:
        return failed(host.name, cmd, user, exc, attempts, t0, pf, last.get("collected", ()), rt.abort.is_set())
    except RetryError as exc:  # pragma: no cover - reraise=True makes this unreachable
        return FanoutResult(host.name, FanoutOutcome.FAILURE, cmd, user, None, "", "", attempts, ms(t0), str(exc),
                            "retry", pf)
    res = last["res"]
    return FanoutResult(host.name, FanoutOutcome.SUCCESS, cmd, user, 0, res.stdout, res.stderr, attempts, ms(t0),
                        "", "", pf, last.get("collected", ()))


__all__ = ["InFlight", "collect", "failed", "ms", "run_attempts"]

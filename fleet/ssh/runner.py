"""Fanout: run one command on many hosts, and say for each exactly what happened.

fleet's own bounded pool over Fabric ``Connection``s (Fabric's ThreadingGroup has no cap
and an unbounded join), tenacity retries that never repeat an auth failure, a host-key
rejection or a command that ran, a connect timeout that holds even when a port accepts TCP
and never speaks SSH, and Ctrl-C that ends in-flight hosts as ABORTED and still reports.
"""
from __future__ import annotations

import json
import logging
import math
import os
import secrets
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

from tenacity import RetryError, Retrying, retry_if_exception, stop_after_attempt, wait_fixed

from fleet.errors import (
    BadInput,
    NotRun,  # noqa: F401 - re-exported where they were defined
)
from fleet.inventory import Host, Inventory
from fleet.results import FanoutOutcome, FanoutResult, FanoutRun, PreflightResult
from fleet.ssh.canary import CanaryGate  # noqa: F401 - the runner holds one
from fleet.ssh.config import Hop, resolve_host
from fleet.ssh.kvlog import KVLog
from fleet.ssh.preflight import config_for, run_preflight_checks
from fleet.ssh.session import Aborted, ConnectFailed, HostKeyStore, KeyCache, NonZeroExit, SSHFailure, SSHSession
from fleet.workers import run_bounded

OutputHook = Callable[[str, str, str], None]  # (host, "stdout"|"stderr", line)
ResultHook = Callable[[FanoutResult], None]


@dataclass(frozen=True)
class FanoutOptions:
    """How a fanout behaves. Settings give the defaults; flags override them."""

    concurrency: int = 32
    connect_timeout: float = 10.0
    command_timeout: float | None = 3600.0
    attempts: int = 2
    retry_delay: float = 2.0
    retry_on_exit: bool = False
    preflight: bool = True
    preflight_timeout: float = 5.0
    accept_new_host_keys: bool = False
    accept_host_keys_for: frozenset[str] = frozenset()
    collect: tuple[str, ...] = ()
    artifacts_dir: str | None = "artifacts"
    user_known_hosts: str | None = "~/.ssh/known_hosts"
    ssh_config: str | None = "~/.ssh/config"
    artifacts_keep: int = 50  # run folders kept; older ones are pruned (0 keeps all)

    def validate(self) -> "FanoutOptions":
        """Bad values are bad input, with the flag to fix."""
        for flag, v in (("--connect-timeout", self.connect_timeout), ("--timeout", self.command_timeout),
                        ("--retry-delay", self.retry_delay), ("--preflight-timeout", self.preflight_timeout)):
            if v is not None and (not isinstance(v, (int, float)) or math.isnan(v) or math.isinf(v)):
                raise BadInput(f"{flag} {v}: write a number of seconds")
        if self.concurrency < 1:
            raise BadInput(f"--concurrency {self.concurrency}: write a number of at least 1")
        if self.attempts < 1 or self.attempts > 10:
            raise BadInput(f"--attempts {self.attempts}: write a number from 1 to 10")
        if self.connect_timeout <= 0:
            raise BadInput(f"--connect-timeout {self.connect_timeout}: write a positive number of seconds")
        if self.command_timeout is not None and self.command_timeout < 0:
            raise BadInput(f"--timeout {self.command_timeout}: write a positive number of seconds (0 for none)")
        if self.preflight_timeout <= 0:
            raise BadInput(f"preflight timeout {self.preflight_timeout}: write a positive number of seconds")
        if self.retry_delay < 0:
            raise BadInput(f"--retry-delay {self.retry_delay}: write 0 or more seconds")
        for p in self.collect:
            if not p or "\0" in p:
                raise BadInput("--collect needs a remote file path, e.g. --collect /var/log/syslog")
        return self


def new_run_id() -> str:
    """A sortable, unique run id: UTC time plus a random suffix."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def _ms(t0: float) -> int:
    return int((time.monotonic() - t0) * 1000)


class _StreamWriter:
    """A file-like object for Invoke's local runner that feeds lines to the output hook."""

    def __init__(self, host: str, stream: str, hook: OutputHook) -> None:
        self.host, self.stream, self.hook, self.buf = host, stream, hook, ""

    def write(self, s: str) -> int:
        self.buf += s
        *lines, self.buf = self.buf.split("\n")
        for ln in lines:
            self.hook(self.host, self.stream, ln)
        return len(s)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self.buf:
            self.hook(self.host, self.stream, self.buf)
            self.buf = ""


class FanoutRunner:
    """One run: shared host keys, keys, Fabric config, log and artifacts; batches of hosts.

    Use :meth:`run_hosts` once or several times (canary, rolling batches), then
    :meth:`finish` to get the :class:`FanoutRun` and write ``summary.json``.
    """

    def __init__(self, inventory: Inventory, command: str, options: FanoutOptions | None = None,
                 on_output: OutputHook | None = None, on_result: ResultHook | None = None,
                 log_stream=None, mode: str = "", run_id: str | None = None, pool: Any = None) -> None:
        # paramiko logs handshake failures with tracebacks; fleet reports each failure itself, once.
        logging.getLogger("paramiko").addHandler(logging.NullHandler())
        self.inventory = inventory
        self.command = command
        self.options = (options or FanoutOptions()).validate()
        self.on_output = on_output
        self.on_result = on_result
        self.abort = threading.Event()
        self.run = FanoutRun(run_id=run_id or new_run_id(), command=command, mode=mode)
        self._t0 = time.monotonic()
        self._sessions: set[SSHSession] = set()
        self._lock = threading.Lock()
        user_kh = os.path.expanduser(self.options.user_known_hosts) if self.options.user_known_hosts else None
        files = [f for f in (user_kh, inventory.known_hosts) if f]
        self.store = HostKeyStore(files, write_to=inventory.known_hosts or user_kh,
                                  accept_all=self.options.accept_new_host_keys,
                                  accept_hosts=set(self.options.accept_host_keys_for))
        self.keys = KeyCache()
        self.ssh_config = config_for(inventory, self.options.ssh_config)
        self._targets: dict[str, Hop] = {}
        self.gate: CanaryGate | None = None
        self.pool = pool  # warm connections kept across runs (a long-lived caller's), or None
        self.dir: Path | None = None
        self._logfile = None
        if self.options.artifacts_dir:
            self.dir = Path(self.options.artifacts_dir) / self.run.run_id
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.dir, 0o700)
            self.run.artifacts_dir = str(self.dir)
            self._logfile = open(self.dir / "fanout.log", "a", encoding="utf-8")
        self.log = KVLog(self._logfile, log_stream)

    # ------------------------------------------------------------------ one host
    def _finish(self, r: FanoutResult) -> FanoutResult:
        h = r.host
        if r.outcome == FanoutOutcome.SUCCESS:
            self.log("success", host=h, user=r.user, command=self.command, attempt=r.attempts,
                     duration_ms=r.duration_ms)
        elif r.outcome == FanoutOutcome.PREFLIGHT_FAILED:
            pass  # logged as preflight_failed already
        else:
            self.log(r.outcome.value.lower() if r.outcome != FanoutOutcome.FAILURE else "failure",
                     host=h, user=r.user, command=self.command, final_error=r.error, attempts=r.attempts,
                     exit_code=r.exit_code if r.exit_code is not None else "", duration_ms=r.duration_ms)
        if self.dir is not None:
            for stream in ("stdout", "stderr"):
                p = self.dir / f"{h}.{stream}"
                if not p.exists():  # remote output was streamed there byte-exact already
                    p.write_text(getattr(r, stream), encoding="utf-8")
        if self.gate is not None:
            self.gate.done(r)
        if self.on_result:
            self.on_result(r)
        return r

    def _emit(self, host: str) -> Callable[[str, str], None] | None:
        if self.on_output is None:
            return None
        hook = self.on_output
        return lambda stream, line: hook(host, stream, line)

    def target(self, host: Host) -> Hop:
        """Where ``ssh host.name`` goes (ssh_config applied once per host per run)."""
        t = self._targets.get(host.name)
        if t is None:
            t = self._targets[host.name] = resolve_host(host, self.ssh_config)
        return t

    def _preflight(self, host: Host, target: Hop | None, keep: list | None = None) -> PreflightResult:
        pf = run_preflight_checks(host, timeout=self.options.preflight_timeout, inventory=self.inventory,
                                  target=target, ssh_config=self.ssh_config, keep=keep)
        if pf.ok:
            self.log("preflight_ok", host=host.name, user=pf.user, auth_mode=host.auth,
                     duration_ms=pf.duration_ms)
        else:
            self.log("preflight_failed", host=host.name, user=pf.user, auth_mode=host.auth,
                     check=pf.failed_check, error=pf.error_detail, duration_ms=pf.duration_ms)
        return pf

    def run_local(self, name: str, command: str, user: str | None = None) -> FanoutResult:
        """Run ``command`` here with Invoke's local runner (``auth: local`` hosts, mode off)."""
        from invoke import Context
        from invoke.exceptions import CommandTimedOut

        t0 = time.monotonic()
        if self.abort.is_set():
            return self._finish(FanoutResult(name, FanoutOutcome.ABORTED, command, user, attempts=0,
                                             error="not started: the run was interrupted", error_kind="aborted"))
        kwargs: dict = {"hide": True, "warn": True, "in_stream": False}
        writers = []
        if self.on_output is not None:
            writers = [_StreamWriter(name, "stdout", self.on_output), _StreamWriter(name, "stderr", self.on_output)]
            kwargs.update(hide=False, out_stream=writers[0], err_stream=writers[1])
        if self.options.command_timeout:
            kwargs["timeout"] = self.options.command_timeout
        try:
            res = Context().run(command, **kwargs)
        except CommandTimedOut as exc:
            return self._finish(FanoutResult(name, FanoutOutcome.TIMEOUT, command, user, None,
                                             exc.result.stdout, exc.result.stderr, 1, _ms(t0),
                                             f"command timed out after {self.options.command_timeout:g}s",
                                             "command_timeout"))
        finally:
            for w in writers:
                w.close()
        if self.abort.is_set():
            return self._finish(FanoutResult(name, FanoutOutcome.ABORTED, command, user, res.exited,
                                             res.stdout, res.stderr, 1, _ms(t0),
                                             "interrupted while the command ran (Ctrl-C)", "aborted"))
        outcome = FanoutOutcome.SUCCESS if res.exited == 0 else FanoutOutcome.FAILURE
        return self._finish(FanoutResult(name, outcome, command, user, res.exited, res.stdout, res.stderr,
                                         1, _ms(t0), "" if res.exited == 0 else f"Exit code {res.exited}",
                                         "" if res.exited == 0 else "exit"))

    def run_host(self, host: Host, command: str | None = None) -> FanoutResult:
        """Run the command on one host: preflight, then attempts under the retry policy.

        Only failures before the command started are retried (connect, handshake, transport
        errors before exec); a command that ran is repeated only with ``retry_on_exit``; an
        authentication or host-key failure never. Anything unexpected ends this host as
        FAILURE with the error and never touches the other hosts.
        """
        cmd = self.command if command is None else command
        t0 = time.monotonic()
        try:
            return self._run_host(host, cmd, t0)
        except Exception as exc:  # noqa: BLE001 - one host's bug must not end the run
            return self._finish(FanoutResult(host.name, FanoutOutcome.FAILURE, cmd, host.user, None, "", "", 0,
                                             _ms(t0), f"unexpected error on {host.name}: {type(exc).__name__}: "
                                             f"{exc}", "unexpected"))

    def _run_host(self, host: Host, cmd: str, t0: float) -> FanoutResult:
        opts = self.options
        if self.abort.is_set():
            return self._finish(FanoutResult(host.name, FanoutOutcome.ABORTED, cmd, host.user,
                                             error="not started: the run was interrupted", error_kind="aborted"))
        target = None
        if host.auth != "local":
            try:
                target = self.target(host)
            except BadInput as exc:
                return self._finish(FanoutResult(host.name, FanoutOutcome.FAILURE, cmd, host.user, attempts=0,
                                                 duration_ms=_ms(t0), error=str(exc), error_kind="ssh_config"))
        user = target.user if target is not None else host.user
        pf = None
        kept: list = []  # preflight's TCP connection, reused by the first attempt
        # a warm connection kept from an earlier command (long-lived callers): it shows the host is
        # reachable, so preflight is skipped for it
        warm = [self.pool.take(host, target)] if self.pool is not None and target is not None else []
        warm = [w for w in warm if w is not None]
        if opts.preflight and not warm:
            pf = self._preflight(host, target, kept if target is not None else None)
            if not pf.ok:
                for sock in kept:
                    sock.close()
                return self._finish(FanoutResult(
                    host.name, FanoutOutcome.PREFLIGHT_FAILED, cmd, user, attempts=0,
                    duration_ms=_ms(t0), error=f"preflight {pf.failed_check}: {pf.error_detail}",
                    error_kind=f"preflight_{pf.failed_check}", preflight=pf))
        if host.auth == "local":
            if self.gate is not None:
                try:
                    self.gate.wait_turn(host.name)
                except Aborted as exc:
                    return self._finish(FanoutResult(host.name, FanoutOutcome.ABORTED, cmd, host.user, attempts=0,
                                                     duration_ms=_ms(t0), error=str(exc), error_kind=exc.kind,
                                                     preflight=pf))
            r = self.run_local(host.name, cmd, host.user)
            return replace(r, preflight=pf)
        assert target is not None

        attempts = 0
        last: dict = {}

        def is_retryable(exc: BaseException) -> bool:
            if self.abort.is_set() or not isinstance(exc, SSHFailure):
                return False
            if isinstance(exc, NonZeroExit):
                return opts.retry_on_exit
            return exc.retryable

        def before_sleep(state) -> None:
            exc = state.outcome.exception()
            self.log("retry", host=host.name, user=user, command=cmd, attempt=state.attempt_number,
                     error=str(exc), next_in_s=f"{opts.retry_delay:g}")

        retrying = Retrying(stop=stop_after_attempt(opts.attempts), wait=wait_fixed(opts.retry_delay),
                            retry=retry_if_exception(is_retryable), reraise=True,
                            sleep=lambda s: self.abort.wait(s), before_sleep=before_sleep)
        address = pf.address if pf is not None and pf.address else None
        prefix = self.dir / host.name if self.dir is not None else None
        try:
            for attempt in retrying:
                with attempt:
                    if self.abort.is_set():
                        raise Aborted(host.name, "interrupted before this attempt started")
                    attempts += 1
                    reused = bool(warm)
                    sess = warm.pop() if warm else SSHSession(host, target, self.store, self.keys,
                                                              opts.connect_timeout, address,
                                                              sock=kept.pop() if kept else None)
                    with self._lock:
                        self._sessions.add(sess)
                    keep = False
                    try:
                        if not reused:
                            self._dial(sess)
                        if self.gate is not None:
                            self.gate.wait_turn(host.name)
                        try:
                            res = sess.run(cmd, opts.command_timeout or None, self.abort, self._emit(host.name),
                                           prefix)
                        except ConnectFailed:
                            if not reused:
                                raise
                            # the kept connection died since: dial again, once, before the command starts
                            sess.close()
                            with self._lock:
                                self._sessions.discard(sess)
                            sess = SSHSession(host, target, self.store, self.keys, opts.connect_timeout, address)
                            with self._lock:
                                self._sessions.add(sess)
                            self._dial(sess)
                            res = sess.run(cmd, opts.command_timeout or None, self.abort, self._emit(host.name),
                                           prefix)
                        if opts.collect:
                            last.update(collected=self._collect(sess, host))
                        keep = self.pool is not None  # the connection is sound, whatever the exit code
                        if res.exit_code != 0:
                            raise NonZeroExit(host.name, res.exit_code, res.stdout, res.stderr, res.signal)
                        last.update(res=res)
                    finally:
                        if keep and not self.abort.is_set():
                            self.pool.give(sess)
                        else:
                            sess.close()
                        with self._lock:
                            self._sessions.discard(sess)
        except NonZeroExit as exc:
            return self._finish(FanoutResult(host.name, FanoutOutcome.FAILURE, cmd, user, exc.code,
                                             exc.stdout, exc.stderr, attempts, _ms(t0), str(exc), exc.kind,
                                             pf, last.get("collected", ())))
        except SSHFailure as exc:
            if isinstance(exc, Aborted) or self.abort.is_set():
                outcome = FanoutOutcome.ABORTED
                msg = str(exc) if isinstance(exc, Aborted) else f"interrupted (Ctrl-C): {exc}"
                kind = exc.kind if isinstance(exc, NotRun) else "aborted"
            else:
                outcome = FanoutOutcome.TIMEOUT if exc.timeout else FanoutOutcome.FAILURE
                msg, kind = str(exc), exc.kind
            return self._finish(FanoutResult(host.name, outcome, cmd, user, None, exc.stdout, exc.stderr,
                                             attempts, _ms(t0), msg, kind, pf))
        except RetryError as exc:  # pragma: no cover - reraise=True makes this unreachable
            return self._finish(FanoutResult(host.name, FanoutOutcome.FAILURE, cmd, user, None, "", "",
                                             attempts, _ms(t0), str(exc), "retry", pf))
        res = last["res"]
        return self._finish(FanoutResult(host.name, FanoutOutcome.SUCCESS, cmd, user, 0, res.stdout,
                                         res.stderr, attempts, _ms(t0), "", "", pf, last.get("collected", ())))

    def _dial(self, sess: SSHSession) -> None:
        sess.connect()
        if self.pool is not None:
            self.pool.dials += 1

    def _collect(self, sess: SSHSession, host: Host) -> tuple[str, ...]:
        """Fetch the --collect files. A failure is logged and reported, never retried."""
        if self.dir is None:
            return ()
        out = []
        dest = self.dir / host.name
        dest.mkdir(exist_ok=True, mode=0o700)
        for remote in self.options.collect:
            local = dest / (os.path.basename(remote.rstrip("/")) or "file")
            try:
                sess.get(remote, str(local))
                out.append(str(local))
            except Exception as exc:  # noqa: BLE001 - no sftp, no file, lost link: all just "not collected"
                self.log("collect_failed", host=host.name, path=remote, error=f"{type(exc).__name__}: {exc}")
                with self._lock:
                    self.run.notes.append(f"{host.name}: could not collect {remote}: {exc or type(exc).__name__}")
        return tuple(out)

    # ------------------------------------------------------------------ many hosts
    def run_hosts(self, hosts: Iterable[Host], command: str | Callable[[Host], str] | None = None,
                  concurrency: int | None = None) -> list[FanoutResult]:
        """Run on ``hosts`` with bounded concurrency. Ctrl-C aborts and still returns every host.

        ``command`` may be a function of the host, for per-host commands (blow-away).
        """
        hosts = list(hosts)
        results, _ = run_bounded(
            hosts, lambda h: self.run_host(h, command(h) if callable(command) else command),
            concurrency or self.options.concurrency, "fleet-fanout", on_interrupt=self.interrupt,
            not_started=lambda h: self._finish(FanoutResult(
                h.name, FanoutOutcome.ABORTED, self.command, h.user,
                error="not started: the run was interrupted (Ctrl-C)", error_kind="aborted")),
            drain_timeout=self.options.connect_timeout + 5,
            on_error=lambda h, exc: self._finish(FanoutResult(
                h.name, FanoutOutcome.FAILURE, self.command, h.user,
                error=f"unexpected error on {h.name}: {type(exc).__name__}: {exc}", error_kind="unexpected")),
            on_drain_error=lambda h, exc: FanoutResult(h.name, FanoutOutcome.ABORTED, self.command, h.user,
                                                       error=f"interrupted: {exc}", error_kind="aborted"))
        ordered = [results[h.name] for h in hosts]
        self.run.results.extend(ordered)
        return ordered

    def skip(self, hosts: Iterable[Host], outcome: FanoutOutcome, error: str, kind: str) -> list[FanoutResult]:
        """Record ``hosts`` as ended without running (e.g. ABORTED after a failed canary)."""
        out = [self._finish(FanoutResult(h.name, outcome, self.command, h.user, error=error, error_kind=kind))
               for h in hosts]
        self.run.results.extend(out)
        return out

    def add_local(self, name: str = "local") -> FanoutResult:
        """Run the command once here (mode off) and record it."""
        r = self.run_local(name, self.command)
        self.run.results.append(r)
        return r

    def interrupt(self) -> None:
        """Stop starting hosts and close every in-flight connection (their hosts end ABORTED)."""
        self.abort.set()
        self.run.interrupted = True
        with self._lock:
            sessions = list(self._sessions)
        for s in sessions:
            if not s.running:  # a running command is killed by its own worker, then closed
                s.close()

    def finish(self) -> FanoutRun:
        """Write ``summary.json`` and close the log; return the whole run."""
        self.run.duration_ms = _ms(self._t0)
        if self.dir is not None:
            tmp = self.dir / "summary.json.tmp"
            tmp.write_text(json.dumps(self.run.to_dict(), indent=2, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.dir / "summary.json")
            from fleet.ssh.artifacts import link_latest, prune
            link_latest(self.dir.parent, self.dir)
            prune(self.dir.parent, self.options.artifacts_keep)
        if self._logfile is not None:
            self._logfile.close()
            self._logfile = None
        return self.run


def fanout_hosts(inventory: Inventory, hosts: list[Host], command: str, options: FanoutOptions | None = None,
                 on_output: OutputHook | None = None, on_result: ResultHook | None = None,
                 log_stream=None) -> FanoutRun:
    """Run ``command`` on every host in ``hosts`` (no mode logic); returns the whole run."""
    runner = FanoutRunner(inventory, command, options, on_output, on_result, log_stream)
    try:
        runner.run_hosts(hosts)
    finally:
        run = runner.finish()
    return run


def fanout_ssh(host: str | Host, command: str, timeout_sec: float | None = 3600.0, max_retries: int = 1,
               preflight: bool = True, inventory: Inventory | None = None,
               options: FanoutOptions | None = None) -> FanoutResult:
    """Run ``command`` on one host (the seed's API). ``max_retries=1`` means 2 attempts in all."""
    from fleet.inventory import default_inventory

    inv = inventory or default_inventory()
    h = inv.host(host) if isinstance(host, str) else host
    opts = replace(options or FanoutOptions(artifacts_dir=None), command_timeout=timeout_sec,
                   attempts=max_retries + 1, preflight=preflight)
    runner = FanoutRunner(inv, command, opts)
    try:
        return runner.run_host(h)
    finally:
        runner.finish()


__all__ = ["CanaryGate", "FanoutOptions", "FanoutRunner", "fanout_hosts", "fanout_ssh", "new_run_id"]

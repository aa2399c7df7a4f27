"""Fanout: run one command on many hosts, and say for each exactly what happened.

fleet's own bounded pool over Fabric ``Connection``s (Fabric's ThreadingGroup has no cap
and an unbounded join), tenacity retries that never repeat an auth failure, a host-key
rejection or a command that ran, a connect timeout that holds even when a port accepts TCP
and never speaks SSH, and Ctrl-C that ends in-flight hosts as ABORTED and still reports.

Each host is reached through a link picked once (:meth:`FanoutRunner.link`): over SSH
(:mod:`fleet.ssh.session`) or here, for ``auth: local`` hosts and mode off
(:mod:`fleet.ssh.local`); from then on every host goes the same way: preflight, then the
attempts of :mod:`fleet.ssh.attempts`, then the record (log line, artifacts, canary gate,
``on_result``). The options are :mod:`fleet.ssh.options`.

What a run shows is redacted: the inventory's secrets (and fleet and Slack tokens) never appear in
the :class:`FanoutRun` (its command, each host's command, output and error: the table, ``--json``,
MCP), the live lines, ``fanout.log`` or ``summary.json``. The command itself reaches the hosts as
written. ``HOST.stdout`` and ``HOST.stderr`` in the run's folder (0700) are the remote command's
output byte for byte, not redacted, and ``summary.json`` says so (``streams``).

Nothing is sent before the run can be recorded: the artifacts folder is made, written to and the
run-started ``summary.json`` (``finished: false``, the planned hosts) is in place before any host
runs, so a run killed outright is still the last run and ``fleet retry`` knows its hosts.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable

from fleet.errors import (
    BadInput,
    FleetError,
    NotRun,  # noqa: F401 - re-exported where they were defined
    StorageError,
)
from fleet.files import ensure_writable, storage_error, write_atomic, writing
from fleet.inventory import Host, Inventory
from fleet.results import FanoutOutcome, FanoutResult, FanoutRun, PreflightResult
from fleet.safety.redact import Redactor
from fleet.ssh.attempts import InFlight, ms, run_attempts
from fleet.ssh.canary import CanaryGate  # noqa: F401 - the runner holds one
from fleet.ssh.config import Hop, resolve_host
from fleet.ssh.kvlog import KVLog
from fleet.ssh.local import LocalLink
from fleet.ssh.options import FanoutOptions, new_run_id
from fleet.ssh.preflight import config_for, run_preflight_checks
from fleet.ssh.session import HostKeyStore, KeyCache, SSHLink
from fleet.ssh.transport import LineHook, Link
from fleet.workers import run_bounded

OutputHook = Callable[[str, str, str], None]  # (host, "stdout"|"stderr", line)
ResultHook = Callable[[FanoutResult], None]

STREAMS_NOTE = ("HOST.stdout and HOST.stderr are the remote command's output byte for byte, not redacted "
                "(this folder is 0700: keep it private); this summary and fanout.log have the inventory's "
                "secrets redacted")
ARTIFACTS = "the run's artifacts in"
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR}


class FanoutRunner:
    """One run: shared host keys, keys, Fabric config, log and artifacts; batches of hosts.

    Use :meth:`run_hosts` once or several times (canary, rolling batches), then
    :meth:`finish` to get the :class:`FanoutRun` and write ``summary.json``.
    """

    def __init__(self, inventory: Inventory, command: str, options: FanoutOptions | None = None,
                 on_output: OutputHook | None = None, on_result: ResultHook | None = None,
                 log_stream=None, mode: str = "", run_id: str | None = None, pool: Any = None,
                 redactor: Redactor | None = None) -> None:
        # paramiko logs handshake failures with tracebacks; fleet reports each failure itself, once.
        logging.getLogger("paramiko").addHandler(logging.NullHandler())
        self.inventory = inventory
        self.command = command  # what runs (as written); self.label is what is shown
        self.options = (options or FanoutOptions()).validate()
        self.on_output = on_output
        self.on_result = on_result
        self.abort = threading.Event()
        if redactor is None:
            from fleet.safety.secrets import inventory_secrets
            redactor = Redactor(inventory_secrets(inventory))
        self.redactor = redactor
        self.label = redactor.text(command)
        self.run = FanoutRun(run_id=run_id or new_run_id(), command=self.label, mode=mode)
        self._t0 = time.monotonic()
        self.in_flight = InFlight()
        self._lock = threading.Lock()
        user_kh = os.path.expanduser(self.options.user_known_hosts) if self.options.user_known_hosts else None
        files = [f for f in (user_kh, inventory.known_hosts) if f]
        self.store = HostKeyStore(files, write_to=inventory.known_hosts or user_kh,
                                  accept_all=self.options.accept_new_host_keys,
                                  accept_hosts=set(self.options.accept_host_keys_for), inventory=inventory.path)
        self.keys = KeyCache()
        self.ssh_config = config_for(inventory, self.options.ssh_config)
        self._targets: dict[str, Hop] = {}
        self.gate: CanaryGate | None = None
        self.pool = pool  # warm connections kept across runs (a long-lived caller's), or None
        self.dir: Path | None = None
        self._logfile = None
        self._planned: list[str] | None = None  # the hosts of the run, once started
        self.operation = ""  # the gated operation this run is (fanout, blow-away), when one is
        self._lost: list[str] = []  # what could not be written once hosts were running
        self._unfiled: list[tuple[str, str, str]] = []  # (host, stdout, stderr) whose files finish() makes
        if self.options.artifacts_dir:
            base = ensure_writable(self.options.artifacts_dir, ARTIFACTS, "artifacts_dir")
            self.dir = base / self.run.run_id
            with writing(ARTIFACTS, self.dir, "artifacts_dir"):
                self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                os.chmod(self.dir, 0o700)
                self._logfile = open(self.dir / "fanout.log", "a", encoding="utf-8")
            self.run.artifacts_dir = str(self.dir)
        self.log = KVLog(self._logfile, log_stream, redact=redactor.text,
                         on_error=lambda exc, stream: self._lost_write(exc) if stream is self._logfile else None)

    # ------------------------------------------------------------------ the record
    def start(self, hosts: Iterable[str]) -> None:
        """Record that the run starts on ``hosts`` (``summary.json`` with ``finished: false``, and
        ``latest`` pointing at it), before any host runs; raises :class:`StorageError` if that
        cannot be written, so nothing is sent that could not be recorded. Once per run."""
        if self._planned is not None:
            return
        self._planned = list(dict.fromkeys(hosts))
        if self.dir is None:
            return
        try:
            self._write_summary(finished=False)
        except StorageError:
            import shutil

            shutil.rmtree(self.dir, ignore_errors=True)  # a run that never started leaves nothing
            self.dir = None
            self.run.artifacts_dir = None
            raise
        from fleet.ssh.artifacts import link_latest
        link_latest(self.dir.parent, self.dir)

    def _write_summary(self, finished: bool) -> None:
        assert self.dir is not None
        doc = self.redactor.value(self.run.to_dict())
        doc.update(finished=finished, hosts=list(self._planned or ()), streams=STREAMS_NOTE,
                   command_redacted=self.label != self.command, operation=self.operation or "fanout")
        p = self.dir / "summary.json"
        with writing("the run's summary", p, "artifacts_dir"):
            write_atomic(p, json.dumps(doc, indent=2, sort_keys=True), 0o644, sync=finished)  # the end's synced

    def _file_outputs(self) -> None:
        """Each ended host's ``HOST.stdout``/``HOST.stderr`` that its command did not stream (an
        empty output, a host that never ran): made here, once the hosts are done, rather than
        by each host's worker between its answer and its result (two file opens per host, on
        the path every host of a fanout waits on)."""
        with self._lock:
            todo, self._unfiled = self._unfiled, []
        assert self.dir is not None
        for h, *texts in todo:
            for stream, text in zip(("stdout", "stderr"), texts, strict=True):
                p = self.dir / f"{h}.{stream}"
                try:
                    if not p.exists():  # remote output was streamed there byte-exact already
                        p.write_text(text, encoding="utf-8")
                except OSError as exc:
                    self._lost_write(exc, "the hosts' output files")

    def _lost_write(self, exc: OSError | StorageError, what: str = "fanout.log") -> None:
        """A write that failed once hosts were running: the run goes on (its results are whole in
        memory and shown); a note says what was not recorded, once per kind."""
        err = exc if isinstance(exc, StorageError) else storage_error(exc, f"{what} in", self.dir, "artifacts_dir")
        with self._lock:
            if what not in self._lost:
                self._lost.append(what)
                self.run.notes.append(f"{err} (the results shown are complete; {what} is not)")

    def shown(self, r: FanoutResult) -> FanoutResult:
        """``r`` as it may be shown and kept: command, output and error with the secrets redacted."""
        red = self.redactor.text
        return replace(r, command=red(r.command), stdout=red(r.stdout), stderr=red(r.stderr), error=red(r.error))

    # ------------------------------------------------------------------ one host
    def _finish(self, r: FanoutResult) -> FanoutResult:
        h = r.host
        if self.dir is not None:
            with self._lock:  # files for what was not streamed there: made by finish()
                self._unfiled.append((h, r.stdout, r.stderr))
        r = self.shown(r)
        if r.outcome == FanoutOutcome.SUCCESS:
            self.log("success", host=h, user=r.user, command=self.label, attempt=r.attempts,
                     duration_ms=r.duration_ms)
        elif r.outcome == FanoutOutcome.PREFLIGHT_FAILED:
            pass  # logged as preflight_failed already
        else:
            self.log(r.outcome.value.lower() if r.outcome != FanoutOutcome.FAILURE else "failure",
                     host=h, user=r.user, command=self.label, final_error=r.error, attempts=r.attempts,
                     exit_code=r.exit_code if r.exit_code is not None else "", duration_ms=r.duration_ms)
        if self.gate is not None:
            self.gate.done(r)
        if self.on_result:
            self.on_result(r)
        return r

    def line_hook(self, host: str) -> LineHook | None:
        """``on_output`` bound to ``host`` (None without one)."""
        if self.on_output is None:
            return None
        hook, red = self.on_output, self.redactor.text
        return lambda stream, line: hook(host, stream, red(line))

    def note(self, text: str) -> None:
        """Add a note to the run (from any worker)."""
        with self._lock:
            self.run.notes.append(text)

    def target(self, host: Host) -> Hop:
        """Where ``ssh host.name`` goes (ssh_config applied once per host per run)."""
        t = self._targets.get(host.name)
        if t is None:
            t = self._targets[host.name] = resolve_host(host, self.ssh_config)
        return t

    def link(self, host: Host) -> Link:
        """How ``host`` is reached, picked once: here (``auth: local``) or over SSH.

        Raises :class:`BadInput` when ssh_config cannot be applied to it.
        """
        if host.auth == "local":
            return LocalLink(host)
        return SSHLink(host, self.target(host), self.store, self.keys, self.options.connect_timeout, self.pool,
                       connect_timeout_given=self.options.connect_timeout_given)

    def _preflight(self, host: Host, link: Link) -> PreflightResult:
        pf = run_preflight_checks(host, timeout=self.options.preflight_timeout, inventory=self.inventory,
                                  target=link.target, ssh_config=self.ssh_config, keep=link.keep)
        if pf.ok:
            self.log("preflight_ok", host=host.name, user=pf.user, auth_mode=host.auth,
                     duration_ms=pf.duration_ms)
        else:
            self.log("preflight_failed", host=host.name, user=pf.user, auth_mode=host.auth,
                     check=pf.failed_check, error=pf.error_detail, duration_ms=pf.duration_ms)
        link.preflighted(pf)
        return pf

    def _settle(self, host: Host, cmd: str, work: Callable[[float], FanoutResult]) -> FanoutResult:
        """Record ``work``'s result; anything unexpected ends this host as FAILURE, never the run."""
        t0 = time.monotonic()
        try:
            return self._finish(work(t0))
        except Exception as exc:  # noqa: BLE001 - one host's bug must not end the run
            if isinstance(exc, OSError) and exc.filename and exc.errno in DISK_ERRORS:
                exc = storage_error(exc, f"{host.name}'s output", exc.filename, "artifacts_dir")
            if isinstance(exc, FleetError):  # e.g. its output could not be written: said as itself
                kind = "storage" if isinstance(exc, StorageError) else "fleet"
                return self._finish(FanoutResult(host.name, FanoutOutcome.FAILURE, cmd, host.user, None, "", "", 0,
                                                 ms(t0), f"{host.name}: {exc} (the command may have run)", kind))
            return self._finish(FanoutResult(host.name, FanoutOutcome.FAILURE, cmd, host.user, None, "", "", 0,
                                             ms(t0), f"unexpected error on {host.name}: {type(exc).__name__}: "
                                             f"{exc}", "unexpected"))

    def run_host(self, host: Host, command: str | None = None) -> FanoutResult:
        """Run the command on one host: preflight, then attempts under the retry policy.

        Only failures before the command started are retried (connect, handshake, transport
        errors before exec); a command that ran is repeated only with ``retry_on_exit``; an
        authentication or host-key failure never. Anything unexpected ends this host as
        FAILURE with the error and never touches the other hosts.
        """
        cmd = self.command if command is None else command
        return self._settle(host, cmd, lambda t0: self._run_host(host, cmd, t0))

    def _run_host(self, host: Host, cmd: str, t0: float) -> FanoutResult:
        if self.abort.is_set():
            return FanoutResult(host.name, FanoutOutcome.ABORTED, cmd, host.user,
                                error="not started: the run was interrupted", error_kind="aborted")
        try:
            link = self.link(host)
        except BadInput as exc:
            return FanoutResult(host.name, FanoutOutcome.FAILURE, cmd, host.user, attempts=0,
                                duration_ms=ms(t0), error=str(exc), error_kind="ssh_config")
        pf = None
        # a warm connection kept from an earlier command (long-lived callers): it shows the host is
        # reachable, so preflight is skipped for it
        warm = link.warm()
        if self.options.preflight and warm is None:
            pf = self._preflight(host, link)
            if not pf.ok:
                return FanoutResult(host.name, FanoutOutcome.PREFLIGHT_FAILED, cmd, link.user, attempts=0,
                                    duration_ms=ms(t0), error=f"preflight {pf.failed_check}: {pf.error_detail}",
                                    error_kind=f"preflight_{pf.failed_check}", preflight=pf)
        return run_attempts(self, host, link, cmd, t0, pf, warm)

    def run_local(self, name: str, command: str, user: str | None = None) -> FanoutResult:
        """Run ``command`` here, once, through the local transport (mode off): no preflight."""
        host = Host(name=name, address="localhost", user=user, auth="local")

        def work(t0: float) -> FanoutResult:
            if self.abort.is_set():
                return FanoutResult(name, FanoutOutcome.ABORTED, command, user, attempts=0,
                                    error="not started: the run was interrupted", error_kind="aborted")
            return run_attempts(self, host, LocalLink(host), command, t0, None)
        return self._settle(host, command, work)

    # ------------------------------------------------------------------ many hosts
    def run_hosts(self, hosts: Iterable[Host], command: str | Callable[[Host], str] | None = None,
                  concurrency: int | None = None) -> list[FanoutResult]:
        """Run on ``hosts`` with bounded concurrency. Ctrl-C aborts and still returns every host.

        ``command`` may be a function of the host, for per-host commands (blow-away).
        """
        hosts = list(hosts)
        self.start(h.name for h in hosts)
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
            on_drain_error=lambda h, exc: self.shown(FanoutResult(h.name, FanoutOutcome.ABORTED, self.command,
                                                                  h.user, error=f"interrupted: {exc}",
                                                                  error_kind="aborted")))
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
        self.start([name])
        r = self.run_local(name, self.command)
        self.run.results.append(r)
        return r

    def interrupt(self) -> None:
        """Stop starting hosts and close every in-flight connection (their hosts end ABORTED)."""
        self.abort.set()
        self.run.interrupted = True
        for s in self.in_flight.sessions():
            if not s.running:  # a running command is killed by its own worker, then closed
                s.close()

    def finish(self) -> FanoutRun:
        """Write ``summary.json`` (``finished: true``) and close the log; return the whole run, its
        notes redacted like everything else it shows. Once hosts have run, a summary that cannot be
        written is a note on the run (the results are whole), not an error that would hide them."""
        self.run.duration_ms = ms(self._t0)
        if self.dir is not None:
            self._file_outputs()
            if self._planned is None:
                self._planned = [r.host for r in self.run.results]
            try:
                self._write_summary(finished=True)
            except StorageError as exc:
                self._lost_write(exc, "summary.json")
            from fleet.ssh.artifacts import link_latest, prune_soon
            link_latest(self.dir.parent, self.dir)
            prune_soon(self.dir.parent, self.options.artifacts_keep, later=self.pool is not None)
        if self._logfile is not None:
            try:
                self._logfile.close()
            except OSError as exc:
                self._lost_write(exc)
            self._logfile = None
        self.run.notes[:] = [self.redactor.text(n) for n in self.run.notes]
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


__all__ = ["CanaryGate", "FanoutOptions", "FanoutRunner", "OutputHook", "ResultHook", "fanout_hosts", "new_run_id"]

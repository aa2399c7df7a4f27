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
"""
from __future__ import annotations

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
    NotRun,  # noqa: F401 - re-exported where they were defined
)
from fleet.inventory import Host, Inventory
from fleet.results import FanoutOutcome, FanoutResult, FanoutRun, PreflightResult
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
        self.in_flight = InFlight()
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

    def line_hook(self, host: str) -> LineHook | None:
        """``on_output`` bound to ``host`` (None without one)."""
        if self.on_output is None:
            return None
        hook = self.on_output
        return lambda stream, line: hook(host, stream, line)

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
        return SSHLink(host, self.target(host), self.store, self.keys, self.options.connect_timeout, self.pool)

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
        for s in self.in_flight.sessions():
            if not s.running:  # a running command is killed by its own worker, then closed
                s.close()

    def finish(self) -> FanoutRun:
        """Write ``summary.json`` and close the log; return the whole run."""
        self.run.duration_ms = ms(self._t0)
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


__all__ = ["CanaryGate", "FanoutOptions", "FanoutRunner", "OutputHook", "ResultHook", "fanout_hosts", "fanout_ssh",
           "new_run_id"]

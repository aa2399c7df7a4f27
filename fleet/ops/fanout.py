"""The fanout operation: one command on many hosts under the mode (canary first, rolling batches).

Before the gate and before any host, the artifacts folder must be writable (a full disk is one
line, exit 2, and nothing was sent); the run then shows nothing its audit trail would not journal:
the trail's redactor (every secret the inventory names) redacts the whole :class:`FanoutRun`."""
from __future__ import annotations

from typing import Any

from fleet.files import ensure_writable
from fleet.inventory import Inventory
from fleet.results import FanoutOutcome, FanoutRun
from fleet.safety import gate
from fleet.safety.gate import FANOUT, Plan, parse_batch, parse_max_fail
from fleet.settings import Settings
from fleet.ssh.runner import CanaryGate, FanoutOptions, FanoutRunner, OutputHook, ResultHook


def run_plan(plan: Plan, command: Any, label: str, options: FanoutOptions | None,
              on_output: OutputHook | None, on_result: ResultHook | None, log_stream: Any,
              batch: str | None, max_fail: str | float | None, pool: Any = None, redactor: Any = None) -> FanoutRun:
    """Run ``command`` (text, or a function of the host) as ``plan`` says; ``redactor``: what the
    run shows is redacted with it (default: the inventory's secrets)."""
    runner = FanoutRunner(plan.inventory, label, options, on_output, on_result, log_stream, mode=plan.mode,
                          pool=pool, redactor=redactor)
    runner.operation = plan.operation
    runner.run.notes.extend(plan.notes)
    try:
        # recorded as started (every planned host) before any host runs: a run killed outright is
        # still the last run, and its hosts without a result are the ones to retry
        runner.start(["local"] if plan.local else [h.name for h in plan.hosts])
        if plan.local:
            runner.add_local("local")
            return runner.run
        hosts = list(plan.hosts)
        if plan.canary is not None and batch is None:
            # canary first, everyone else connecting meanwhile (see CanaryGate)
            c = plan.canary
            rest = [h for h in hosts if h.name != c.name]
            runner.gate = CanaryGate([c.name] + [h.name for h in rest], runner.abort)
            runner.run_hosts([c] + rest, command)
            runner.run.notes.extend(runner.gate.notes)
            if isinstance(runner.gate.verdict, str) and not runner.run.interrupted:
                untouched = sum(1 for r in runner.run.results if r.error_kind == "canary_failed")
                runner.run.notes.append(f"{runner.gate.verdict.removeprefix('not run: ')}; "
                                        f"{untouched} other host(s) were not touched")
            return runner.run
        if plan.canary is not None:
            c = plan.canary
            first = runner.run_hosts([c], command)[0]
            rest = [h for h in hosts if h.name != c.name]
            if not first.ok:
                if not runner.run.interrupted:
                    runner.skip(rest, FanoutOutcome.ABORTED,
                                f"not run: canary {c.name} ended {first.outcome.value}"
                                f"{': ' + first.error if first.error else ''}", "canary_failed")
                    runner.run.notes.append(f"canary {c.name} ended {first.outcome.value}; "
                                            f"{len(rest)} other host(s) were not touched")
                else:
                    runner.skip(rest, FanoutOutcome.ABORTED, "not started: the run was interrupted (Ctrl-C)",
                                "aborted")
                return runner.run
            hosts = rest
        size = parse_batch(batch, len(hosts))
        limit = parse_max_fail(max_fail)
        if size is None:
            runner.run_hosts(hosts, command)
            return runner.run
        done: list = []
        for i in range(0, len(hosts), size):
            chunk = hosts[i:i + size]
            done += runner.run_hosts(chunk, command)
            if runner.run.interrupted:
                runner.skip(hosts[i + size:], FanoutOutcome.ABORTED, "not started: the run was interrupted", "aborted")
                break
            failed = sum(1 for r in runner.run.results if not r.ok)
            total = len(runner.run.results)
            pct = 100.0 * failed / total if total else 0.0
            if limit is not None and pct > limit and i + size < len(hosts):
                left = hosts[i + size:]
                runner.skip(left, FanoutOutcome.ABORTED,
                            f"not run: {failed} of {total} hosts failed ({pct:.0f}%) > --max-fail {limit:g}%",
                            "max_fail")
                runner.run.notes.append(f"stopped after batch {i // size + 1}: {failed}/{total} failed "
                                        f"({pct:.0f}% > {limit:g}%); {len(left)} host(s) not touched")
                break
        return runner.run
    finally:
        runner.finish()


def fanout(inv: Inventory, selector: str, *, args: dict[str, Any], mode: str | None = None,
           confirm: str | None = None, canary: str | None = None, no_canary: bool = False,
           settings: Settings | None = None, store: Any = None, audit: Any = None, trail: Any = None,
           options: FanoutOptions | None = None, on_output: OutputHook | None = None,
           on_result: ResultHook | None = None, log_stream: Any = None, batch: str | None = None,
           max_fail: str | float | None = None, pool: Any = None) -> FanoutRun:
    """Run ``args['command']`` on the selected hosts under the mode (canary first, batches),
    through the gate. ``pool``: a :class:`~fleet.ssh.warm.ConnectionPool` of warm connections
    to use and refill."""
    parse_batch(batch, 1)  # bad flags fail before any plan, token or host
    parse_max_fail(max_fail)
    check_artifacts(options)
    cmd = args["command"]
    with gate.enter(FANOUT, inv, selector, args=args, mode=mode, confirm=confirm, canary=canary,
                    no_canary=no_canary, settings=settings, store=store, audit=audit, trail=trail,
                    call_options={"options": options, "batch": batch, "max_fail": max_fail}) as g:
        run = run_plan(g.plan, cmd, cmd, options, on_output, on_result, log_stream, batch, max_fail, pool,
                       getattr(g.trail, "redactor", None))
        g.ran(run.results, run.run_id)
        return run


def check_artifacts(options: FanoutOptions | None) -> None:
    """The run's artifacts folder can be written (before a token is spent or a host is reached)."""
    where = (options or FanoutOptions()).artifacts_dir
    if where:
        ensure_writable(where, "the run's artifacts in", "artifacts_dir")

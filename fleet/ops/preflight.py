"""``preflight --deep``: the preflight checks, then a real login with the same SSH path as fanout
(``true`` is run), and a health check of the host's OpenCode server with a short timeout: a
server that is down, refuses the password, or speaks an API fleet does not know (another major
version) fails the host (``opencode``), as a failed login does."""
from __future__ import annotations

from dataclasses import replace

from fleet.inventory import Host, Inventory
from fleet.results import CheckResult, FanoutOutcome, PreflightResult, PreflightStatus
from fleet.ssh.runner import FanoutOptions, FanoutRunner
from fleet.workers import run_bounded


def _health(host: Host, timeout: float) -> tuple[bool, str, str]:
    """(usable, what the report shows, why not) for the host's OpenCode server."""
    from fleet.ops.sessions import server_status

    r = server_status(host, timeout=timeout)
    if r["healthy"]:
        return True, f"ok {r['version']}".strip(), ""
    why = r["error"] or "unhealthy"
    return False, f"DOWN: {why}", f"OpenCode server {r['url']}: {why}"


def deep_preflight(inv: Inventory, hosts: list[Host], timeout: float = 5.0, concurrency: int = 32,
                   options: FanoutOptions | None = None) -> list[PreflightResult]:
    """Preflight plus a login (``true`` over SSH, same path as fanout) and OpenCode health."""
    base = options or FanoutOptions()
    opts = replace(base, preflight=True, preflight_timeout=timeout, attempts=1, artifacts_dir=None,
                   command_timeout=max(timeout, 10.0), connect_timeout=min(base.connect_timeout, max(timeout, 1.0)),
                   concurrency=concurrency, collect=())
    runner = FanoutRunner(inv, "true", opts)
    try:
        results = runner.run_hosts(hosts)
    finally:
        runner.finish()
    done, _ = run_bounded(hosts, lambda h: _health(h, min(timeout, 3.0)) if h.opencode else (True, "", ""),
                          concurrency, "fleet-health", on_interrupt=lambda: None,
                          not_started=lambda h: (False, "DOWN: interrupted", "interrupted"))
    health = [done[h.name] for h in hosts]
    out = []
    for h, r, (usable, oc, why) in zip(hosts, results, health, strict=False):
        pf = r.preflight or PreflightResult(host=h.name, user=r.user, auth_mode=h.auth,
                                            status=PreflightStatus.FAILED, error_detail=r.error)
        if pf.ok:
            ok = r.outcome == FanoutOutcome.SUCCESS
            login = CheckResult("login", ok, r.duration_ms, "" if ok else r.error)
            pf = replace(pf, checks=pf.checks + (login,), status=PreflightStatus.OK if ok else PreflightStatus.FAILED,
                         failed_check="" if ok else "login", error_detail="" if ok else r.error,
                         duration_ms=r.duration_ms)
        if pf.ok and not usable:
            pf = replace(pf, checks=pf.checks + (CheckResult("opencode", False, 0, why),),
                         status=PreflightStatus.FAILED, failed_check="opencode", error_detail=why)
        out.append(replace(pf, opencode=oc))
    return out


__all__ = ["deep_preflight"]

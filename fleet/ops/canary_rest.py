"""The canary gate of a ``--no-wait`` dispatch, held after the dispatch has returned.

In canary mode the rest of the hosts get the task only once the canary's agent succeeded. A
dispatch that does not wait sends the task to the canary, journals what the rest wait for
(``canary_gate``: their hosts, the same task and options, the plan as shown and its digest) and
returns at once. Whoever follows the dispatch then holds the gate: the service's follower, else
the follower process the dispatch started (``python -m fleet.ops.canary_rest``), or a
``fleet wait --dispatch``. When the canary's turn ends, the first of them to take the lock
decides once for all, journaled (``rest_sent`` / ``rest_not_sent``): on success it sends the rest
the plan that was shown (checked by the plan's digest: a changed inventory sends nothing; no
token is asked or spent again), else each of them is journaled ``not sent: canary HOST failed``.
A host's part is done once its ``dispatch_requested`` (or not-sent end) is journaled, so a
restarted service or a second follower never sends anything twice.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from fleet.audit.journal import Journal
from fleet.errors import BadInput, FleetError
from fleet.files import locked
from fleet.results import DispatchResult, DispatchRun, FanoutOutcome

GATE, SENT, NOT_SENT = "canary_gate", "rest_sent", "rest_not_sent"
WAITING = "canary_waiting"  # error_kind of a host whose task waits for the canary
DONE_OPS = ("dispatch_requested", "failed", "completed")  # a host's part of the rest has begun (or ended)


def state_of(r: DispatchResult) -> str:
    """One host's state in a dispatch report: ``sent`` (handed over, not followed),
    ``waiting_for_canary``, ``not_sent`` (the canary failed) or ``ended`` (its outcome says how)."""
    if r.error_kind == WAITING:
        return "waiting_for_canary"
    if r.error_kind == "canary_failed":
        return "not_sent"
    return "sent" if r.ok and not r.waited else "ended"


@dataclass
class Held:
    """One dispatch's canary gate as the journal holds it."""

    did: str
    gate: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)  # every event of the dispatch

    @property
    def held(self) -> dict[str, Any]:
        return dict((self.gate.get("detail") or {}).get("held") or {})

    @property
    def canary(self) -> str:
        return str(self.gate.get("host") or "")

    @property
    def canary_sid(self) -> str:
        return str((self.gate.get("detail") or {}).get("session_id") or "")

    @property
    def rest(self) -> list[str]:
        return [str(n) for n in self.held.get("rest") or []]

    @property
    def deadline(self) -> float:
        return float(self.gate.get("epoch") or 0) + float(self.held.get("timeout") or 1800.0)

    @property
    def resolution(self) -> dict[str, Any] | None:
        return next((e for e in self.events if e.get("operation") in (SENT, NOT_SENT)), None)

    @property
    def sent(self) -> bool:
        r = self.resolution
        return r is not None and r.get("operation") == SENT

    @property
    def reason(self) -> str:
        return str(((self.resolution or {}).get("detail") or {}).get("reason") or "")

    def of(self, host: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("host") == host]

    def handled(self, host: str) -> bool:
        return any(e.get("operation") in DONE_OPS for e in self.of(host))

    def session_of(self, host: str) -> str:
        return next((str(e["detail"]["session_id"]) for e in self.of(host) if e.get("operation") == "session_created"
                     and (e.get("detail") or {}).get("session_id")), "")


def _fold(events: list[dict[str, Any]]) -> dict[str, Held]:
    out: dict[str, Held] = {}
    for e in events:
        did = e.get("dispatch_id") or ""
        if e.get("operation") == GATE and did and did not in out:
            out[did] = Held(did, e)
    for e in events:
        h = out.get(e.get("dispatch_id") or "")
        if h is not None and e is not h.gate:
            h.events.append(e)
    return out


def held_of(journal: str | os.PathLike[str] | None, did: str) -> Held | None:
    """The canary gate of dispatch ``did``, or None (no gate: not a no-wait canary dispatch)."""
    if not journal or not os.path.exists(journal):
        return None
    return _fold([e for e in Journal(journal).load().events if e.get("dispatch_id") == did]).get(did)


def held_all(journal: str | os.PathLike[str], since: float) -> list[Held]:
    """Every canary gate journaled after ``since`` (epoch), oldest first."""
    if not os.path.exists(journal):
        return []
    return [h for h in _fold(Journal(journal).load().events).values() if float(h.gate.get("epoch") or 0) >= since]


def held_rows(journal: str, hosts: list[str], window: float = 24 * 3600.0) -> list[Any]:
    """``sessions``' rows for the hosts of recent no-wait canary dispatches that have no session:
    waiting for the canary, or not sent (the canary failed)."""
    from fleet.results import SessionRow
    now, out = time.time(), []
    for h in held_all(journal, now - window):
        for n in h.rest:
            if n not in hosts or (h.sent and h.handled(n)):
                continue
            if h.resolution is None:
                state = f"waiting for the canary {h.canary}"
            elif h.sent:
                state = f"sending (the canary {h.canary} succeeded)"
            else:
                state = h.reason or f"not sent: canary {h.canary} failed"
            a = h.held.get("args") or {}
            out.append(SessionRow(n, "", f"fleet {h.did}: {str(a.get('task') or '')[:60]}", state,
                                  int(now - float(h.gate.get("epoch") or now)), "", True,
                                  machine=str(h.gate.get("actor") or ""), dispatch_id=h.did, repo=str(a.get("repo") or "")))
    return out


# ------------------------------------------------------------------ the dispatch's side
def unchanged_by_redaction(red: Any, args: dict[str, Any], options: dict[str, Any]) -> None:
    """The journal keeps no secret, so a held plan must hold none: else it would be sent redacted."""
    if red is None:
        return
    blob = json.dumps([args, {k: v for k, v in options.items() if not callable(v)}], sort_keys=True, default=str)
    if red.text(blob) != blob:
        raise BadInput("the task (or an option) holds a secret from the inventory, which fleet never writes to "
                       "disk, so a --no-wait canary dispatch cannot keep it until the canary ends: drop --no-wait "
                       "(dispatch then waits for the canary) or use --no-canary")


def hold(plan: Any, did: str, first: DispatchResult, trail: Any, *, timeout: float, stall_timeout: float | None,
         events: bool, gated: bool, ssh_options: Any, slack: bool) -> list[str]:
    """Journal the plan the rest of the hosts wait for (the canary's task is sent); their names."""
    rest = [h.name for h in plan.hosts if plan.canary is None or h.name != plan.canary.name]
    detail = plan.detail()
    held = {"rest": rest, "hosts": [h.name for h in plan.hosts], "mode": plan.mode, "canary": first.host,
            "args": dict(plan.args), "notes": list(plan.notes), "call_options": {k: v for k, v in detail.items()
                                                                              if k in plan.call_options},
            "digest": plan.scope().args_digest, "inventory": os.path.abspath(str(plan.inventory.path)),
            "timeout": timeout, "stall_timeout": stall_timeout, "events": events, "gated": gated, "slack": slack,
            "ssh_options": asdict(ssh_options) if ssh_options is not None else None}
    trail.record(GATE, first.host, "waiting", did, session_id=first.session_id, hosts=",".join(rest),
                 task=plan.args.get("task"), repo=plan.args.get("repo"), plan=plan.describe(), held=held)
    return rest


def waiting_row(host: Any, canary: str, outcome: FanoutOutcome = FanoutOutcome.SUCCESS,
                error: str = "") -> DispatchResult:
    """A host whose task waits for the canary (SUCCESS for the dispatch that held it: nothing failed)."""
    return DispatchResult(host.name if hasattr(host, "name") else str(host), outcome,
                          url=host.opencode.url if getattr(host, "opencode", None) else "",
                          error=error, error_kind=WAITING, waited=False)


def not_sent_row(host: str, reason: str) -> DispatchResult:
    return DispatchResult(host, FanoutOutcome.ABORTED, error=reason, error_kind="canary_failed", waited=False)


def start_follower(settings: Any, inventory: str, did: str, slack: bool) -> str:
    """A detached process that follows this dispatch (the canary, then the rest) to its end and
    exits; its log beside the journal. What to tell the person."""
    import subprocess
    import threading
    d = os.path.join(os.path.dirname(settings.path("journal")), "followers")
    os.makedirs(d, mode=0o700, exist_ok=True)
    log = os.path.join(d, f"{did}.log")
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        p = subprocess.Popen([sys.executable, "-m", "fleet.ops.canary_rest", did, "--inventory", inventory,
                              "--settings", json.dumps(asdict(settings), default=list)] + ([] if slack else ["--no-slack"]),
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=fd,
                             start_new_session=True, close_fds=True)
    finally:
        os.close(fd)
    threading.Thread(target=p.wait, name="fleet-follower-reaper", daemon=True).start()  # no zombie in a long-lived face
    return f"a follower (pid {p.pid}, log {log})"


# ------------------------------------------------------------------ the follower's side
def _decide(c: DispatchResult, deadline: float) -> str | None:
    """``send``, a not-sent reason, or None (the canary's turn is not over: decide later)."""
    if c.ok:
        return "send"
    if c.outcome == FanoutOutcome.TIMEOUT and time.time() < deadline - 1:
        return None  # only our wait (or the server) gave out: the canary's own time is not up
    if c.outcome == FanoutOutcome.ABORTED and c.error_kind == "aborted" and c.error.startswith(("stopped", "interr")):
        return None  # our waiting was stopped, not the agent
    return f"not sent: canary {c.host} failed ({c.outcome.value}{': ' + c.error if c.error else ''})"


def _plan_changed(inv: Any, held: dict[str, Any]) -> str:
    """Why the plan would not be the one shown (the inventory or ssh_config changed), or ''."""
    from fleet.safety.gate import DISPATCH, Plan
    try:
        p = Plan("dispatch", held["mode"], [inv.host(n) for n in held["hosts"]], dict(held["args"]), inv,
                 canary=inv.host(held["canary"]), notes=list(held["notes"]), call_options=dict(held["call_options"]),
                 op=DISPATCH)
        same = p.scope().args_digest == held["digest"]
    except (FleetError, KeyError, TypeError) as exc:
        return f"the plan cannot be made again ({exc}): dispatch again"
    return "" if same else "the inventory (or ssh_config) changed since the plan was shown: dispatch again"


def _now_record(trail: Any) -> Callable[..., Any]:
    """Record at once (the service's once-only trail waits out a grace first; these are already
    decided once, under the gate's lock)."""
    return getattr(trail, "record_now", None) or trail.record


def resolve(jpath: str, did: str, inv: Any, verdict: str, trail: Any, records: Any,
            on_event: Any = None) -> Held:
    """Decide the gate once (under its lock, from the journal), then do what is left of it: send
    the rest the held plan, or journal each of them not sent. The gate as journaled after."""
    from fleet.ops.dispatch import dispatch_host
    from fleet.workers import run_bounded
    record = _now_record(trail)
    with locked(Path(jpath), ".canary.lock"):
        h = held_of(jpath, did)
        assert h is not None
        held = h.held
        if h.resolution is None:
            why = "" if verdict != "send" else _plan_changed(inv, held)
            if verdict == "send" and not why:
                record(SENT, h.canary, "released", did, hosts=",".join(h.rest), session_id=h.canary_sid)
            else:
                reason = f"not sent: {why}" if why else verdict
                record(NOT_SENT, h.canary, "canary_failed" if not why else "plan_changed", did,
                       hosts=",".join(h.rest), reason=reason)
            h = held_of(jpath, did)
            assert h is not None
        todo = [n for n in h.rest if not h.handled(n)]
        a, opts = held["args"], held["call_options"]
        if h.sent and todo:
            ssh = None
            if held.get("ssh_options"):
                from fleet.ssh.options import FanoutOptions
                o = dict(held["ssh_options"])
                o["accept_host_keys_for"] = frozenset(o.get("accept_host_keys_for") or ())
                o["collect"] = tuple(o.get("collect") or ())
                ssh = FanoutOptions(**o)

            def one(host: Any) -> DispatchResult:
                return dispatch_host(host, a["repo"], a["task"], wait=False, model=a.get("model"),
                                     timeout=float(held.get("timeout") or 1800.0), records=records, on_event=on_event,
                                     audit=trail, dispatch_id=did, on_permission=opts.get("on_permission") or "ask",
                                     events=bool(held.get("events", True)), worktree=bool(opts.get("worktree")),
                                     base=opts.get("base"), inventory=inv, ssh_options=ssh,
                                     stall_timeout=held.get("stall_timeout"), permission=opts.get("permission"))
            done, _ = run_bounded([inv.host(n) for n in todo], one, 32, "fleet-canary-rest", on_interrupt=lambda: None,
                                  not_started=lambda x: not_sent_row(x.name, "not sent: interrupted"))
            outcomes = {n: done[n] for n in todo if n in done}
        else:
            outcomes = {}
            for n in todo:
                record("failed", n, "not_sent", did, error=h.reason, error_kind="canary_failed")
                outcomes[n] = not_sent_row(n, h.reason)
                if on_event is not None:
                    on_event(n, "end", f"ABORTED: {h.reason}")
        if held.get("gated"):
            for n, r in outcomes.items():
                record("gated_action_run", n, r.outcome.value.lower(), action="dispatch", run_id=did, error=r.error,
                       **{k: str(v) for k, v in a.items()})
        _update_last(jpath, did, outcomes)
        return held_of(jpath, did) or h


def _update_last(jpath: str, did: str, rows: dict[str, DispatchResult]) -> None:
    """The last dispatch's summary (``--retry-failed``) learns what became of the held hosts."""
    from fleet.ops.dispatch import LAST
    p = os.path.join(os.path.dirname(jpath), LAST)
    try:
        with open(p, encoding="utf-8") as f:
            doc = json.load(f)
        if doc.get("dispatch_id") != did or not rows:
            return
        for r in doc.get("results") or []:
            got = rows.get(r.get("host"))
            if got is not None:
                r.update(outcome=got.outcome.value, session_id=got.session_id, error_kind=got.error_kind)
        from fleet.files import write_atomic
        write_atomic(p, json.dumps(doc, sort_keys=True))
    except (OSError, ValueError, AttributeError):
        pass


def follow(inv: Any, h: Held, jpath: str, *, records: Any, audit: Any, **kw: Any) -> DispatchRun:
    """``wait`` on a dispatch whose rest waits for its canary: the canary followed to its end,
    the gate decided (once, whoever does it), then the rest followed like any dispatch."""
    from fleet.inventory import load_inventory
    from fleet.ops.wait import wait_sessions
    try:
        ginv = load_inventory(h.held["inventory"])
    except (FleetError, OSError, KeyError):
        ginv = inv  # the dispatch's inventory is gone: the plan check will say it changed
    ev = kw.get("on_event")
    t0 = time.monotonic()
    run = DispatchRun(h.did, str(h.held.get("args", {}).get("task") or ""), str(h.held.get("args", {}).get("repo") or ""),
                      str(h.held.get("mode") or ""))
    pair = (ginv.host(h.canary), h.canary_sid)
    rows: dict[str, DispatchResult] = {}

    def done() -> DispatchRun:
        run.results = [rows[n] for n in [h.canary] + h.rest if n in rows]
        run.duration_ms = int((time.monotonic() - t0) * 1000)
        return run
    if h.resolution is None:
        for n in h.rest:
            if ev is not None:
                ev(n, "status", f"waiting for the canary {h.canary}")
        left = max(1.0, min(float(kw.get("timeout") or 1800.0), h.deadline - time.time()))
        first = wait_sessions([pair], records=records, audit=audit, dispatch_id=h.did, **{**kw, "timeout": left})
        rows[h.canary] = first.results[0]
        verdict = None if first.interrupted else _decide(first.results[0], h.deadline)
        if verdict is None:
            run.interrupted = first.interrupted
            for n in h.rest:
                rows[n] = waiting_row(n, h.canary, FanoutOutcome.TIMEOUT,
                                      f"still waiting for the canary {h.canary}: not sent yet")
            return done()
        h = resolve(jpath, h.did, ginv, verdict, audit, records, ev)
    pairs = [] if h.canary in rows else [pair]
    for n in h.rest:
        sid = h.session_of(n)
        if h.sent and sid:
            pairs.append((ginv.host(n), sid))
        elif h.sent:
            err = next((str((e.get("detail") or {}).get("error") or "") for e in h.of(n)
                        if e.get("operation") == "failed"), "") or "its task could not be sent"
            rows[n] = DispatchResult(n, FanoutOutcome.FAILURE, error=err, error_kind="not_sent", waited=False)
        else:
            rows[n] = not_sent_row(n, h.reason)
    if pairs:
        rest = wait_sessions(pairs, records=records, audit=audit, dispatch_id=h.did, **kw)
        run.interrupted = rest.interrupted
        rows.update({r.host: r for r in rest.results})
    return done()


def main(argv: list[str] | None = None) -> int:
    """The detached follower: follow one dispatch (its canary, the gate, the rest) to the end."""
    import argparse
    ap = argparse.ArgumentParser(prog="python -m fleet.ops.canary_rest")
    ap.add_argument("dispatch_id")
    ap.add_argument("--inventory", required=True)
    ap.add_argument("--settings", required=True)
    ap.add_argument("--no-slack", action="store_true")
    a = ap.parse_args(argv)
    from fleet.app import Fleet
    from fleet.settings import Settings
    fl = Fleet(a.inventory, settings=Settings.from_mapping(json.loads(a.settings)), face="api", warm=False)

    def say(text: str) -> None:
        print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {a.dispatch_id}: {text}", file=sys.stderr, flush=True)
    say(f"following (pid {os.getpid()})")
    jpath = fl.settings.path("journal")
    for _ in range(100):  # the wait gave out before the canary's own time was up: follow it again
        try:
            run = fl.wait(dispatch_id=a.dispatch_id, slack=not a.no_slack,
                          on_event=lambda host, kind, text: say(f"{host} {kind} {text}") if kind != "usage" else None)
        except FleetError as exc:
            say(f"stopped: {exc}")
            return 1
        for r in run.results:
            say(f"{r.host}: {state_of(r)} {r.outcome.value} {r.error}".rstrip())
        h = held_of(jpath, a.dispatch_id)
        if h is None or h.resolution is not None or time.time() > h.deadline:
            return run.exit_code
        time.sleep(2.0)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())

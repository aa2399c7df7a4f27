"""A face's side of the service: run an operation through a running ``fleet serve`` (its warm
connections) and give back the same result as in-process, with the same live hooks; None when
no service runs, so the caller runs it in-process. Ctrl-C is passed on: the service interrupts
the run as a terminal's Ctrl-C would, and its summary comes back."""
from __future__ import annotations

import os
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from fleet.errors import FleetError

if TYPE_CHECKING:  # pragma: no cover
    from fleet.app import Fleet
    from fleet.results import DispatchRun, FanoutRun
    from fleet.ssh.options import FanoutOptions


class ServiceSaid(FleetError):
    """An error the service reported for this call, with its exit status."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _say_once(text: str, said: set[str] = set()) -> None:  # noqa: B006 - said once per process
    import sys
    if text not in said:
        said.add(text)
        print(f"fleet: {text}", file=sys.stderr)


def autostart(fl: Fleet, wait: float = 5.0) -> Any:
    """Start ``fleet serve`` in the background for this state directory (``persist`` set: as
    OpenSSH's ControlMaster auto + ControlPersist), gone after ``persist`` idle seconds; its
    connection, or None if it did not come up (the call then runs here)."""
    import time

    from fleet.serve import client

    journal = fl.settings.path("journal")
    log = start_soon(fl)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        sock = client.connect(journal)
        if sock is not None:
            return sock
        time.sleep(0.05)
    _say_once(f"fleet serve did not start in {wait:g}s (see {log}); running here")
    return None


def start_soon(fl: Fleet) -> str:
    """Start ``fleet serve`` in the background for this state directory, leaving after
    ``persist`` idle seconds, without waiting for it (a second start finds the first's lock and
    leaves). Returns its log's path."""
    import subprocess
    import sys

    from fleet.serve import paths

    journal = fl.settings.path("journal")
    log = os.path.join(paths.ensure_run_dir(journal), "serve.log")
    env = dict(os.environ, INVOKE_FLEET_JOURNAL=journal)
    with open(log, "ab") as out:
        subprocess.Popen([sys.executable, "-m", "fleet.cli.program", "serve", "--idle-exit",
                          str(fl.settings.persist)], stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                         start_new_session=True, env=env, close_fds=True)
    return log


def fanout_via_service(fl: Fleet, selector: str, command: str, *, mode: str | None, confirm: str | None,
                       canary: str | None, no_canary: bool, options: FanoutOptions,
                       on_output: Any = None, on_result: Any = None, log_stream: Any = None,
                       batch: str | None = None, max_fail: Any = None, **rest: Any) -> FanoutRun | None:
    """The fanout run by the service, or None (no service here, or an older one)."""
    from fleet.serve import client

    if rest:
        return None  # a call the service does not take (a Python caller's extras): run it here
    sock = client.connect(fl.settings.path("journal"))
    if sock is None and fl.settings.persist > 0:
        sock = autostart(fl)
    if sock is None:
        return None
    from fleet.results import FanoutResult, FanoutRun

    inv = fl.inventory
    o = asdict(options)
    o["accept_host_keys_for"] = sorted(o.get("accept_host_keys_for") or ())
    req = {"op": "fanout", "selector": selector, "command": command, "mode": mode, "confirm": confirm,
           "canary": canary, "no_canary": no_canary, "options": o, "batch": batch, "max_fail": max_fail,
           "settings": asdict(fl.settings), "inventory": os.path.abspath(inv.path),
           "stream": on_output is not None, "log": log_stream is not None}
    last: dict[str, Any] | None = None
    try:
        for ev in client.answers(sock, req, tick=0.25):
            kind = ev.get("event")
            if kind in ("done", "error"):
                last = ev
            elif kind == "output" and on_output is not None:
                on_output(ev["host"], ev["stream"], ev["line"])
            elif kind == "result" and on_result is not None:
                on_result(FanoutResult.from_dict(ev["result"]))
            elif kind == "log" and log_stream is not None:
                log_stream.write(ev["text"])
    except client.ServiceGone:
        raise ServiceSaid("fleet serve went away during the run: see 'fleet serve status'; the run's "
                          "artifacts say how far it got", 1) from None
    finally:
        sock.close()
    if last is None:
        return None
    if last["event"] == "error":
        if last.get("kind") == "version":
            _say_once(last["message"] + "; running here instead")
            return None
        if last.get("exit_code") == 130:
            raise KeyboardInterrupt
        raise ServiceSaid(last["message"], int(last.get("exit_code") or 1))
    return FanoutRun.from_dict(last["run"])


def wait_via_service(fl: Fleet, dispatch_id: str, on_event: Any = None) -> DispatchRun | None:
    """``fleet wait --dispatch ID`` as the service's follower sees it, when the service follows
    that dispatch with the same timeouts this call would use: its live events, then its run (its
    needs-input and end were journaled, and so posted, once, by the service). A follow of the
    service's that timed out before this call's own timeout is waited on again. None: no service
    follows it here; the caller follows the agents itself. Ctrl-C stops the waiting, not the
    agents (nor the service's following)."""
    import time

    if os.environ.get("FLEET_NO_SERVICE") or not getattr(fl, "_use_service", True):
        return None
    deadline = time.monotonic() + fl.settings.dispatch_timeout
    while True:
        run = _wait_once(fl, dispatch_id, on_event)
        if run is None or time.monotonic() >= deadline or all(r.outcome.value != "TIMEOUT" for r in run.results):
            return run


def _wait_once(fl: Fleet, dispatch_id: str, on_event: Any) -> DispatchRun | None:
    from fleet.serve import client

    sock = client.connect(fl.settings.path("journal"))
    if sock is None:
        return None
    from fleet.results import DispatchRun

    req = {"op": "wait", "dispatch_id": dispatch_id, "timeout": fl.settings.dispatch_timeout,
           "stall_timeout": fl.settings.stall_timeout}
    t0, seen = time.monotonic(), dict[str, str]()
    try:  # a Ctrl-C is not passed on: it stops this waiting only, never the service's following
        for ev in client.answers(sock, req, last=("done", "fallback", "error"), tick=0.25, interrupt=False):
            if ev.get("event") == "live":
                seen.setdefault(ev["host"], "")
                if ev.get("kind") == "session":
                    seen[ev["host"]] = str(ev.get("text") or "")
                if on_event is not None:
                    on_event(ev["host"], ev["kind"], ev["text"])
            elif ev.get("event") == "done":
                return DispatchRun.from_dict(ev["run"]) if ev.get("run") else None
        return None  # fallback, another version, an error: the caller follows them itself
    except (OSError, ValueError, client.ServiceGone):
        return None
    except KeyboardInterrupt:
        return _stopped_waiting(fl, dispatch_id, seen, time.monotonic() - t0)
    finally:
        sock.close()


def _stopped_waiting(fl: Fleet, dispatch_id: str, seen: dict[str, str], took: float) -> DispatchRun:
    """Ctrl-C in a served ``wait``: the run the in-process wait reports then (each session of the
    dispatch ABORTED, interrupted, exit 130), from this machine's records and the live events seen;
    the agents work on and the service still follows them. No session known: Ctrl-C as ever."""
    from fleet.results import DispatchResult, DispatchRun, FanoutOutcome

    pairs = dict(seen)
    try:
        for r in fl.records.all():
            if r.get("dispatch_id") == dispatch_id and r.get("host"):
                pairs[str(r["host"])] = str(r.get("session_id") or pairs.get(str(r["host"]), ""))
    except Exception:  # noqa: BLE001 - unreadable records: the hosts the live events named
        pass
    if not pairs:
        raise KeyboardInterrupt
    why = "interrupted: fleet stopped waiting; the agent works on and fleet serve follows it"
    return DispatchRun(dispatch_id, "", "", interrupted=True, duration_ms=int(took * 1000), results=[
        DispatchResult(h, FanoutOutcome.ABORTED, session_id=sid, error=why, error_kind="aborted")
        for h, sid in sorted(pairs.items())])

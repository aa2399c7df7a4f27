#!/usr/bin/env python3
"""Benchmark dispatch on the lab's real OpenCode agents (stand-in model), and the audit's cost.

Prints the median wall time of a dispatch (create session, prompt, wait for the answer) to
1 agent and to N agents in parallel, and the same single dispatch with the Slack audit
healthy, slow (10 s per post), down, and unconfigured (the added latency should be ~0).
Then fleet's own CPU while every agent works for ``--busy`` seconds (default 60; the stand-in
model's ``[slow]``), following them by events and by 0.5 s polling (the old way).
Loopback only. Usage: python bench/dispatch.py [--agents 10] [--repeat 3] [--busy 60]
"""
from __future__ import annotations

import argparse
import os
import resource
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("FAKE_SLOW_DELAY", "60")  # read by the lab's stand-in model at lab.up

from stand_ins import FakeSlack  # noqa: E402

from fleet.audit.trail import AuditTrail  # noqa: E402
from fleet.inventory import SlackSettings, load_inventory  # noqa: E402
from fleet.lab import lab_down, lab_up  # noqa: E402
from fleet.ops import dispatch as dx  # noqa: E402
from fleet.settings import Settings  # noqa: E402


def _server_turn(host, sid: str) -> float:
    """Seconds the server itself took for the session's turn, from its own message timestamps."""
    from fleet.agent.client import OpenCodeClient
    with OpenCodeClient(host, None) as oc:
        msgs = oc.messages(sid)
    user = next(m["info"]["time"]["created"] for m in msgs if m["info"]["role"] == "user")
    done = max(m["info"]["time"].get("completed") or 0 for m in msgs if m["info"]["role"] == "assistant")
    return (done - user) / 1000.0


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def busy_cpu(inv, agents: int, busy: float) -> None:
    """fleet's CPU while every agent works: events (wake-ups) against polling every 0.5 s; the
    whole run, and the quiet middle (from 10 s after the start to 10 s before the agents end),
    where nothing happens but waiting."""
    import threading

    for label, events in (("events", True), ("polling every 0.5 s", False)):
        marks: list[float] = []
        stop = threading.Event()

        def sample() -> None:
            for at in (10.0, busy - 10.0):
                if stop.wait(max(0.0, at - (time.perf_counter() - t))):
                    return
                marks.append(_cpu())
        c0 = _cpu()
        t = time.perf_counter()
        th = threading.Thread(target=sample, daemon=True)
        th.start()
        r = dx.dispatch(inv, "@agents", args={"task": "[slow] think", "repo": "demo"}, mode="canary",
                        no_canary=True, poll=0.5, events=events)
        wall = time.perf_counter() - t
        used = _cpu() - c0
        stop.set()
        assert all(x.ok for x in r.results), [x.error for x in r.results]
        mid = (f"; the quiet middle {busy - 20:g} s: {(marks[1] - marks[0]) * 1000:.0f} ms "
               f"({(marks[1] - marks[0]) / (busy - 20) * 100:.2f}% of one core)" if len(marks) == 2 else "")
        print(f"{agents} agents working {wall:5.1f} s, fleet following by {label:<20} CPU {used:6.3f} s "
              f"({used / wall * 100:.2f}% of one core){mid}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--busy", type=float, default=60.0, help="seconds every agent works ([slow])")
    ap.add_argument("--busy-only", action="store_true", help="measure only the CPU while the agents work")
    a = ap.parse_args()
    os.environ["FAKE_SLOW_DELAY"] = f"{a.busy:g}"
    d = Path(tempfile.mkdtemp(prefix="fleet-bench-dx-"))
    t0 = time.perf_counter()
    lab = lab_up(a.agents, d, agents=a.agents)
    print(f"lab.up with {a.agents} agents: {time.perf_counter() - t0:.1f}s")
    st = Settings(token_dir=str(d / "tok"), journal=str(d / "journal.jsonl"))
    inv = load_inventory(lab.inventory)
    try:
        # warm every agent once (first prompt of a server is slower: title model, snapshots)
        dx.dispatch(inv, "@agents", args={"task": "warm", "repo": "demo"}, mode="canary", canary="lab01",
                    settings=st, poll=0.1)

        spent = [0.0]

        class Timed:
            """Counts the time the operation itself spends in the audit (record + close)."""

            def __init__(self, trail):
                self.trail = trail

            def __getattr__(self, name):  # gate_event, redactor...: the trail's own
                return getattr(self.trail, name)

            def record(self, *args, **kw):
                t = time.perf_counter()
                try:
                    return self.trail.record(*args, **kw)
                finally:
                    spent[0] += time.perf_counter() - t

            def close(self):
                t = time.perf_counter()
                try:
                    return self.trail.close()
                finally:
                    spent[0] += time.perf_counter() - t

        def one(trail=None) -> float:
            t = time.perf_counter()
            r = dx.dispatch(inv, "lab01", args={"task": "bench", "repo": "demo"}, settings=st, poll=0.1,
                            audit_trail=trail)
            if trail is not None:
                trail.close()
            assert r.results[0].ok, r.results[0].error
            return time.perf_counter() - t

        def many() -> float:
            t = time.perf_counter()
            r = dx.dispatch(inv, "@agents", args={"task": "bench", "repo": "demo"}, mode="canary",
                            canary="lab01", settings=st, poll=0.1)
            assert all(x.ok for x in r.results), [x.error for x in r.results]
            return time.perf_counter() - t

        rows = []
        if a.busy_only:
            busy_cpu(inv, a.agents, a.busy)
            return
        rows.append(("dispatch to 1 agent (no audit)", statistics.median(one() for _ in range(a.repeat))))
        rows.append((f"dispatch to {a.agents} agents (canary first, then the rest in parallel)",
                     statistics.median(many() for _ in range(a.repeat))))

        def all_at_once() -> float:
            import resource
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            w = _all_at_once()
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            cpu.append((r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime))
            return w
        cpu: list = []

        def _all_at_once() -> float:
            # every agent at once: canary mode without a canary
            t = time.perf_counter()
            r = dx.dispatch(inv, "@agents", args={"task": "bench", "repo": "demo"}, mode="canary", no_canary=True,
                            poll=0.1)
            assert all(x.ok for x in r.results)
            wall = time.perf_counter() - t
            server.append(max(_server_turn(inv.host(x.host), x.session_id) for x in r.results))
            return wall
        server: list = []
        rows.append((f"dispatch to {a.agents} agents all at once (no canary)",
                     statistics.median(all_at_once() for _ in range(a.repeat))))
        rows.append(("  fleet's own CPU seconds for that", statistics.median(cpu)))
        rows.append(("  the slowest server's own turn (its user message stored -> answer completed)",
                     statistics.median(server)))
        ok = FakeSlack()
        slow = FakeSlack()
        slow.mode, slow.delay = "slow", 10.0
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
        s.close()
        for label, url in (("Slack healthy", ok.url), ("Slack slow (10 s/post)", slow.url),
                           ("Slack down", f"http://127.0.0.1:{dead}")):
            times, added = [], []
            for _ in range(a.repeat):
                spent[0] = 0.0
                jpath = d / f"journal-{label.split()[1]}.jsonl"  # own journal: no lock shared with another run
                trail = Timed(AuditTrail(jpath, SlackSettings(channel="C0", base_url=url + "/api/"),
                                         "xoxb-bench"))
                times.append(one(trail))
                added.append(spent[0])
            rows.append((f"dispatch to 1 agent, audit on, {label}: total", statistics.median(times)))
            rows.append(("  of which time in the audit (journal fsync + flush at exit)", statistics.median(added)))
        times, added = [], []
        for _ in range(a.repeat):
            spent[0] = 0.0
            times.append(one(Timed(AuditTrail(d / "journal.jsonl", None, None))))
            added.append(spent[0])
        rows.append(("dispatch to 1 agent, audit on, Slack unconfigured: total", statistics.median(times)))
        rows.append(("  of which time in the audit", statistics.median(added)))
        rows.append(("Slack posts received (healthy)", float(len(ok.posts))))
        ok.close()
        slow.close()
        for name, v in rows:
            print(f"{name:<72} {v:8.3f}", flush=True)
        busy_cpu(inv, a.agents, a.busy)
    finally:
        lab_down(d)


if __name__ == "__main__":
    main()

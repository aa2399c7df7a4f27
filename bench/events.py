#!/usr/bin/env python3
"""Event-driven waiting vs polling, on the lab's real OpenCode agent (stand-in model).

1. Reporting latency: the time from the server's ``session.idle`` event (seen by a separate
   listener) to ``dispatch`` returning, with events and with 0.5 s polling (the old way).
2. fleet's own CPU while one agent works for FAKE_SLOW_DELAY seconds (default 20), both ways.
Loopback only. Usage: python bench/events.py [--repeat 5]
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("FAKE_SLOW_DELAY", "20")

from fleet.agent.events import EventStream  # noqa: E402
from fleet.inventory import load_inventory  # noqa: E402
from fleet.lab import lab_down, lab_up  # noqa: E402
from fleet.ops import dispatch as dx  # noqa: E402
from fleet.settings import Settings  # noqa: E402


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="fleet-bench-ev-"))
    lab = lab_up(1, d, agents=1)
    inv = load_inventory(lab.inventory)
    st = Settings(token_dir=str(d / "tok"), journal=str(d / "journal.jsonl"))
    h = inv.host("lab01")
    idle_at: dict[str, float] = {}

    def on(ev):
        if ev.get("type") == "session.idle":
            idle_at[(ev.get("properties") or {}).get("sessionID")] = time.perf_counter()
    listener = EventStream(h, on, directory=h.repo_path("demo")).start()
    listener.connected.wait(10)
    try:
        dx.dispatch(inv, "lab01", args={"task": "warm", "repo": "demo"}, settings=st, poll=0.5)
        for label, events in (("events", True), ("polling every 0.5 s", False)):
            lat = []
            for _ in range(a.repeat):
                r = dx.dispatch(inv, "lab01", args={"task": "bench", "repo": "demo"}, settings=st, poll=0.5,
                                events=events).results[0]
                done = time.perf_counter()
                time.sleep(0.2)
                if r.session_id in idle_at:
                    lat.append(done - idle_at[r.session_id])
            print(f"idle -> reported, {label:<22} median {statistics.median(lat) * 1000:7.1f} ms  "
                  f"(max {max(lat) * 1000:.1f} ms, n={len(lat)})", flush=True)
        for label, events in (("events", True), ("polling every 0.5 s", False)):
            c0, t0 = cpu(), time.perf_counter()
            dx.dispatch(inv, "lab01", args={"task": "[slow] think", "repo": "demo"}, settings=st, poll=0.5,
                        events=events)
            wall, used = time.perf_counter() - t0, cpu() - c0
            print(f"CPU while the agent works {wall:4.1f} s, {label:<22} {used * 1000:7.0f} ms "
                  f"({used / wall * 100:.2f}% of one core)", flush=True)
    finally:
        listener.close()
        lab_down(d)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Benchmark fleet's fanout and preflight on the loopback lab, next to OpenSSH via xargs -P 50.

Prints median wall time and client CPU (seconds, and ms per host) over --repeat runs for
N = 10, 50, 100 hosts: fleet fanout `true` (with and without preflight), fleet preflight,
the same with 10% of hosts unreachable (a port whose accept queue is full: SYNs are
dropped, as for a host that is off), and N OpenSSH clients run by `xargs -P 50` with the
default key exchange and with -o KexAlgorithms=curve25519-sha256. Also `inv --list` cold start.
Loopback only. Usage: python bench/fanout.py [--sizes 10,50,100] [--repeat 3]
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fleet import FanoutOptions, fanout_hosts, load_inventory, preflight_many  # noqa: E402
from fleet.lab import Blackholes, lab_down, lab_up  # noqa: E402


def cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measure(fn, repeat: int, children: bool = False):
    walls, cpus = [], []
    for _ in range(repeat):
        c0 = cpu_children() if children else cpu_self()
        t0 = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append((cpu_children() if children else cpu_self()) - c0)
    return statistics.median(walls), statistics.median(cpus)


def xargs_ssh(lab, kex: str | None) -> None:
    lines = "\n".join(h.name for h in lab.hosts) + "\n"
    opts = ["-F", str(lab.ssh_config)]  # the lab's ssh_config: HostName, Port, key, known_hosts per name
    if kex:
        opts += ["-o", f"KexAlgorithms={kex}"]
    cmd = ["xargs", "-P", "50", "-I{}", "ssh", *opts, "{}", "true"]
    p = subprocess.run(cmd, input=lines, text=True, capture_output=True)
    if p.returncode != 0:
        raise SystemExit(f"ssh baseline failed: {p.stderr[:300]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10,50,100")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=50)
    a = ap.parse_args()
    rows = []
    env = dict(os.environ)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(ROOT), "--list"], capture_output=True, env=env)
    list_s = time.perf_counter() - t0
    for n in [int(x) for x in a.sizes.split(",")]:
        d = Path(tempfile.mkdtemp(prefix=f"fleet-bench-{n}-"))
        t = time.perf_counter()
        lab = lab_up(n, d)
        up_s = time.perf_counter() - t
        try:
            inv = load_inventory(lab.inventory)
            hosts = list(inv.hosts)
            base = dict(concurrency=a.concurrency, artifacts_dir=None, user_known_hosts=None, connect_timeout=2,
                        retry_delay=2)

            def add(name, wall, cpu, hosts_n):
                rows.append((n, name, wall, cpu, cpu / hosts_n * 1000))

            w, c = measure(lambda: fanout_hosts(inv, hosts, "true", FanoutOptions(**base)), a.repeat)
            add("fleet fanout true (preflight)", w, c, n)
            w, c = measure(lambda: fanout_hosts(inv, hosts, "true", FanoutOptions(preflight=False, **base)), a.repeat)
            add("fleet fanout true (--no-preflight)", w, c, n)
            w, c = measure(lambda: preflight_many(hosts, 5.0, a.concurrency), a.repeat)
            add("fleet preflight", w, c, n)
            w, c = measure(lambda: xargs_ssh(lab, None), a.repeat, children=True)
            add("openssh xargs -P50 (default kex)", w, c, n)
            w, c = measure(lambda: xargs_ssh(lab, "curve25519-sha256"), a.repeat, children=True)
            add("openssh xargs -P50 (curve25519)", w, c, n)
            k = max(1, n // 10)
            holes = Blackholes(k)
            ports = holes.ports
            try:
                text = lab.inventory.read_text() + "".join(
                    f"  dead{i:02d}: {{address: 127.0.0.1, port: {p}}}\n" for i, p in enumerate(ports))
                p = d / "inv-unreachable.yaml"
                p.write_text(text)
                inv2 = load_inventory(p)
                live = [h for h in inv2.hosts if not h.name.startswith("dead")][: n - k]
                mixed = live + [h for h in inv2.hosts if h.name.startswith("dead")]
                w, c = measure(lambda: fanout_hosts(inv2, mixed, "true", FanoutOptions(**base)), 1)
                add(f"fleet fanout, {k} unreachable (2s connect timeout)", w, c, n)
                w, c = measure(lambda: preflight_many(mixed, 2.0, a.concurrency), 1)
                add(f"fleet preflight, {k} unreachable (2s timeout)", w, c, n)
            finally:
                holes.close()
        finally:
            lab_down(d)
        rows.append((n, f"lab.up ({n} hosts)", up_s, 0.0, 0.0))
    print(f"inv --list cold start: {list_s:.3f}s")
    print(f"{'N':>4}  {'what':<48} {'wall s':>8} {'cpu s':>8} {'cpu ms/host':>12}")
    for n, name, w, c, per in rows:
        print(f"{n:>4}  {name:<48} {w:>8.3f} {c:>8.3f} {per:>12.1f}")


if __name__ == "__main__":
    main()

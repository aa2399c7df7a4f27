"""Cold runs end to end, as a user runs them: `fleet fanout --all --json true` (a new process each
time: start-up, settings, preflight and the default canary included; no `fleet serve` running)
against `xargs -P 50 ssh -F <lab ssh_config> -o KexAlgorithms=curve25519-sha256 NAME true` on the
same lab hosts, runs alternating, median of --repeat. `--rtt MS` puts the lab's relay in front of
every sshd (lab_up(rtt=...); both clients go through it) and reports each client's round trips per
host, counted by the relay (`turns`: the times the client sent again after an answer reached it,
the TCP handshake included; fleet.lab.relay). `--inv` also times `inv fanout ...` (Invoke's own
program, the same tasks).

Usage: python bench/e2e_ssh.py [--sizes 50,100] [--rtt 40] [--repeat 5] [--inv]"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fleet.lab import lab_down, lab_up  # noqa: E402
from fleet.lab.relay import relay_stats  # noqa: E402

BIN = Path(sys.executable).parent


def timed(cmd: list[str], **kw) -> float:
    t = time.perf_counter()
    if "input" not in kw:
        kw["stdin"] = subprocess.DEVNULL
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed: {p.stderr[-400:]} {p.stdout[-400:]}")
    return time.perf_counter() - t


def turns(lab, settle: float = 0.3) -> list[int]:
    """The round trips of every connection the relay saw end since the last call (then forgets them)."""
    p = relay_stats(lab)
    time.sleep(settle)  # the relay writes a connection's line when both sides closed
    if not p.exists():
        return []
    lines = p.read_text().splitlines()
    p.unlink()
    return [int(json.loads(x)["turns"]) for x in lines if x.strip()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="50,100")
    ap.add_argument("--rtt", type=float, default=0.0, help="round trip to add, in ms (0: plain loopback)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--inv", action="store_true", help="also time `inv fanout` (Invoke's program)")
    ap.add_argument("--pin", action="store_true",
                    help="the lab's sshd and relay on the last CPU, the clients on the others (taskset): "
                         "as for a user, the hosts' sshd do not share the client's cores")
    ap.add_argument("--no-predial", action="store_true", help="also time fleet with FLEET_NO_PREDIAL=1")
    a = ap.parse_args()
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "fleet")], capture_output=True)
    print(f"# cold fanout `true`, loopback{f' + relay RTT {a.rtt:g} ms' if a.rtt else ''}; medians of {a.repeat}, "
          f"alternating", flush=True)
    for n in [int(x) for x in a.sizes.split(",")]:
        d = Path(tempfile.mkdtemp(prefix=f"fleet-e2e-{n}-"))
        lab = lab_up(n, d / "lab", rtt=a.rtt)
        try:
            pin: list[str] = []
            if a.pin:
                last = max(os.sched_getaffinity(0))
                for pid in subprocess.run(["pgrep", "-f", str(d / "lab")], capture_output=True,
                                          text=True).stdout.split():
                    subprocess.run(["taskset", "-a", "-p", "-c", str(last), pid], capture_output=True)
                pin = ["taskset", "-c", ",".join(str(c) for c in sorted(os.sched_getaffinity(0)) if c != last)]
            args = ["fanout", "--inventory", str(lab.inventory), "--all", "--json", "--concurrency", "50", "true"]
            clients = {"fleet": [*pin, str(BIN / "fleet"), *args]}
            if a.no_predial:
                clients["no-predial"] = ["env", "FLEET_NO_PREDIAL=1", *clients["fleet"]]
            if a.inv:
                clients["inv"] = [*pin, str(BIN / "inv"), "--search-root", str(ROOT), *args]
            names = "\n".join(h.name for h in lab.hosts) + "\n"
            ssh = [*pin, "xargs", "-P", "50", "-I{}", "ssh", "-F", str(lab.ssh_config), "-o",
                   "KexAlgorithms=curve25519-sha256", "{}", "true"]
            env = {"INVOKE_FLEET_ARTIFACTS_DIR": str(d / "artifacts"), "INVOKE_FLEET_JOURNAL": str(d / "j.jsonl"),
                   "INVOKE_FLEET_TOKEN_DIR": str(d / "tok"), "PATH": "/usr/bin:/bin", "HOME": str(d),
                   "FLEET_NO_SERVICE": "1"}
            times: dict[str, list[float]] = {k: [] for k in [*clients, "ssh"]}
            trips: dict[str, list[int]] = {k: [] for k in times}
            timed(clients["fleet"], env=env, cwd=str(d))  # known_hosts as a user has it after the first run
            turns(lab)
            for _ in range(a.repeat):
                for k, cmd in clients.items():
                    times[k].append(timed(cmd, env=env, cwd=str(d)))
                    trips[k] += turns(lab) if a.rtt else []
                times["ssh"].append(timed(ssh, input=names, env=env))
                trips["ssh"] += turns(lab) if a.rtt else []
            sm = statistics.median(times["ssh"])
            for k, ts in times.items():
                m = statistics.median(ts)
                rt = f", round trips per host {statistics.median(trips[k]):g}" if trips[k] else ""
                print(f"N={n}: {k:10} {m:.2f}s ({m / sm:.2f}x OpenSSH; min/max {min(ts):.2f}/{max(ts):.2f}){rt}",
                      flush=True)
        finally:
            lab_down(d / "lab")
    for what in (["--version"], ["--list"]):
        subprocess.run([str(BIN / "fleet"), *what], capture_output=True)  # the --list cache, as after a first run
        ts = [timed([str(BIN / "fleet"), *what]) for _ in range(5)]
        print(f"fleet {what[0]}: {statistics.median(ts) * 1000:.0f} ms")


if __name__ == "__main__":
    main()

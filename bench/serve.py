"""Repeat runs, end to end as a user runs them: `fleet fanout --all --json true` with `fleet serve`
running (warm connections) against OpenSSH with ControlMaster/ControlPersist (`xargs -P 50 ssh
-o ControlMaster=auto -o ControlPersist=60 NAME true`), and both cold, on the same lab hosts,
through the same network: loopback, or the lab's relay that adds --rtt milliseconds of round trip
in front of every sshd (lab_up(rtt=...), fleet.lab.relay; both clients go through it). Runs
alternate; medians of --repeat. Usage: python bench/serve.py [--sizes 10,50] [--rtt 40] [--repeat 7] [--no-canary]"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fleet.lab import lab_down, lab_up  # noqa: E402

FLEET = str(Path(sys.executable).parent / "fleet")


def timed(cmd: list[str], **kw) -> float:
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, stdin=kw.pop("stdin", subprocess.DEVNULL), **kw)
    if p.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed: {p.stderr[-400:]} {p.stdout[-600:]}")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10,50")
    ap.add_argument("--rtt", type=float, default=0.0, help="round trip to add, in ms (0: plain loopback)")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--no-canary", action="store_true",
                    help="also time the served repeat with --no-canary (what the canary gate costs)")
    a = ap.parse_args()
    for n in [int(x) for x in a.sizes.split(",")]:
        d = Path(tempfile.mkdtemp(prefix=f"fleet-serve-{n}-"))
        lab = lab_up(n, d / "lab", rtt=a.rtt)  # its ssh_config and inventory go through the relay
        cfg, inv = Path(str(lab.ssh_config)), lab.inventory
        env = {**os.environ, "HOME": str(d), "INVOKE_FLEET_JOURNAL": str(d / "state" / "journal.jsonl"),
               "INVOKE_FLEET_ARTIFACTS_DIR": str(d / "artifacts"), "INVOKE_FLEET_TOKEN_DIR": str(d / "tok")}
        names = "\n".join(h.name for h in lab.hosts) + "\n"
        fleet = [FLEET, "fanout", "--inventory", str(inv), "--all", "--json", "--concurrency", "50", "true"]
        cm = ["-o", "ControlMaster=auto", "-o", "ControlPersist=120", "-o", f"ControlPath={d}/cm-%C"]
        ssh = ["xargs", "-P", "50", "-I{}", "ssh", "-F", str(cfg), "-o", "KexAlgorithms=curve25519-sha256"]
        svc = None
        try:
            cold_f, cold_s = [], []
            for _ in range(max(3, a.repeat // 2)):
                cold_f.append(timed(fleet, env=env, cwd=str(d)))
                t = time.perf_counter()
                subprocess.run(ssh + ["{}", "true"], input=names, text=True, capture_output=True, check=True)
                cold_s.append(time.perf_counter() - t)
            svc = subprocess.Popen([FLEET, "serve"], env=env, cwd=str(d), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
            sock = d / "state" / "run" / "fleet.sock"
            while not sock.exists():
                time.sleep(0.05)
            timed(fleet, env=env, cwd=str(d))  # warm both once
            subprocess.run(ssh + cm + ["{}", "true"], input=names, text=True, capture_output=True, check=True)
            warm_f, warm_s, warm_n = [], [], []
            for _ in range(a.repeat):
                warm_f.append(timed(fleet, env=env, cwd=str(d)))
                if a.no_canary:
                    warm_n.append(timed([*fleet[:-1], "--no-canary", "true"], env=env, cwd=str(d)))
                t = time.perf_counter()
                subprocess.run(ssh + cm + ["{}", "true"], input=names, text=True, capture_output=True, check=True)
                warm_s.append(time.perf_counter() - t)
            net = f"RTT {a.rtt:g} ms" if a.rtt else "loopback"
            rows = [("cold", cold_f, cold_s, "ssh"), ("repeat", warm_f, warm_s, "ssh ControlPersist")]
            if warm_n:
                rows.append(("repeat --no-canary", warm_n, warm_s, "ssh ControlPersist"))
            for what, f_t, s_t, other in rows:
                fm, sm = statistics.median(f_t), statistics.median(s_t)
                print(f"N={n} {net} {what}: fleet{' (fleet serve)' if what != 'cold' else ''} {fm:.3f}s  "
                      f"{other} {sm:.3f}s  ratio {fm / sm:.2f}x  (fleet {min(f_t):.3f}-{max(f_t):.3f}, "
                      f"ssh {min(s_t):.3f}-{max(s_t):.3f})", flush=True)
        finally:
            if svc is not None:
                svc.send_signal(signal.SIGTERM)
                svc.wait(timeout=10)
            subprocess.run(["ssh", "-F", str(cfg), "-O", "exit", "-o", f"ControlPath={d}/cm-%C", lab.hosts[0].name],
                           capture_output=True)
            subprocess.run(["pkill", "-f", f"ControlPath={d}/cm-"], capture_output=True)
            lab_down(d / "lab")  # the relay too


if __name__ == "__main__":
    main()

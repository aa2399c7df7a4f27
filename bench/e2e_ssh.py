"""End to end, as a user runs it: `inv fanout --all --json true` (process start and preflight
included) against `xargs -P 50` of OpenSSH clients forced to curve25519-sha256, on the same lab
hosts, runs alternating, median of --repeat. Usage: python bench/e2e_ssh.py [--sizes 50,100]"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fleet.lab import lab_down, lab_up  # noqa: E402


def timed(cmd: list[str], **kw) -> float:
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, **kw)
    if p.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed: {p.stderr[-400:]}")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="50,100")
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    for n in [int(x) for x in a.sizes.split(",")]:
        d = Path(tempfile.mkdtemp(prefix=f"fleet-e2e-{n}-"))
        lab = lab_up(n, d / "lab")
        try:
            art = d / "artifacts"
            fleet = [sys.executable, "-m", "invoke", "--search-root", str(ROOT), "fanout", "--inventory",
                     str(lab.inventory), "--all", "--json", "--concurrency", "50", "true"]
            names = "\n".join(h.name for h in lab.hosts) + "\n"
            ssh = ["xargs", "-P", "50", "-I{}", "ssh", "-F", str(lab.ssh_config), "-o",
                   "KexAlgorithms=curve25519-sha256", "{}", "true"]
            env = {"INVOKE_FLEET_ARTIFACTS_DIR": str(art), "INVOKE_FLEET_JOURNAL": str(d / "j.jsonl"),
                   "INVOKE_FLEET_TOKEN_DIR": str(d / "tok"), "PATH": "/usr/bin:/bin", "HOME": str(d)}
            f_t, s_t = [], []
            for _ in range(a.repeat):
                f_t.append(timed(fleet, env=env, cwd=str(d)))
                t = time.perf_counter()
                subprocess.run(ssh, input=names, text=True, capture_output=True, check=True)
                s_t.append(time.perf_counter() - t)
            fm, sm = statistics.median(f_t), statistics.median(s_t)
            print(f"N={n}: fleet {fm:.2f}s  openssh {sm:.2f}s  ratio {fm / sm:.2f}x  "
                  f"(fleet min/max {min(f_t):.2f}/{max(f_t):.2f}, ssh {min(s_t):.2f}/{max(s_t):.2f})", flush=True)
        finally:
            lab_down(d / "lab")
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(ROOT), "--list"], capture_output=True)
    print(f"inv --list: {time.perf_counter() - t:.2f}s")


if __name__ == "__main__":
    main()

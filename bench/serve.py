"""Repeat runs, end to end as a user runs them: `fleet fanout --all --json true` with `fleet serve`
running (warm connections) against OpenSSH with ControlMaster/ControlPersist (`xargs -P 50 ssh
-o ControlMaster=auto -o ControlPersist=60 NAME true`), and both cold, on the same lab hosts,
through the same network: loopback, or a relay that adds --rtt milliseconds of round trip in
front of every sshd (fleet.lab.relay; both clients go through it). Runs alternate; medians of
--repeat. Usage: python bench/serve.py [--sizes 10,50] [--rtt 40] [--repeat 7]"""
from __future__ import annotations

import argparse
import os
import re
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


def relayed(lab, d: Path, rtt: float) -> tuple[Path, subprocess.Popen | None]:
    """An ssh_config like the lab's whose hosts go through a delay relay (and the relay)."""
    if not rtt:
        return Path(lab.ssh_config), None
    text = Path(lab.ssh_config).read_text()
    routes, out, base = [], [], 47000
    for block in re.split(r"(?m)^(?=Host )", text):
        m = re.search(r"(?m)^\s*Port (\d+)$", block)
        hn = re.search(r"(?m)^\s*HostName (\S+)$", block)
        if m and hn and block.startswith("Host "):
            port, name = int(m.group(1)), hn.group(1)
            new = base + len(routes)
            target = "127.0.0.1" if name == "localhost" else name
            routes.append(f"127.0.0.1:{new}={target}:{port}")
            # the relay listens on 127.0.0.1; the host key stays filed under the host's own name
            block = block.replace(f"Port {port}", f"Port {new}\n  HostKeyAlias [{name}]:{port}")
            block = re.sub(r"(?m)^(\s*)HostName \S+$", r"\1HostName 127.0.0.1", block)
        out.append(block)
    cfg = d / "ssh_config.rtt"
    cfg.write_text("".join(out))
    relay = subprocess.Popen([sys.executable, "-m", "fleet.lab.relay", "--delay-ms", str(rtt / 2), *routes],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return cfg, relay


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
    a = ap.parse_args()
    for n in [int(x) for x in a.sizes.split(",")]:
        d = Path(tempfile.mkdtemp(prefix=f"fleet-serve-{n}-"))
        lab = lab_up(n, d / "lab")
        cfg, relay = relayed(lab, d, a.rtt)
        inv = d / "inventory.yaml"
        inv.write_text(Path(lab.inventory).read_text().replace("ssh_config: ssh_config", f"ssh_config: {cfg}")
                       .replace("known_hosts: known_hosts", f"known_hosts: {Path(lab.dir) / 'known_hosts'}"))
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
            warm_f, warm_s = [], []
            for _ in range(a.repeat):
                warm_f.append(timed(fleet, env=env, cwd=str(d)))
                t = time.perf_counter()
                subprocess.run(ssh + cm + ["{}", "true"], input=names, text=True, capture_output=True, check=True)
                warm_s.append(time.perf_counter() - t)
            net = f"RTT {a.rtt:g} ms" if a.rtt else "loopback"
            for what, f_t, s_t, other in (("cold", cold_f, cold_s, "ssh"), ("repeat", warm_f, warm_s,
                                                                             "ssh ControlPersist")):
                fm, sm = statistics.median(f_t), statistics.median(s_t)
                print(f"N={n} {net} {what}: fleet{' (fleet serve)' if what == 'repeat' else ''} {fm:.3f}s  "
                      f"{other} {sm:.3f}s  ratio {fm / sm:.2f}x  (fleet {min(f_t):.3f}-{max(f_t):.3f}, "
                      f"ssh {min(s_t):.3f}-{max(s_t):.3f})", flush=True)
        finally:
            if svc is not None:
                svc.send_signal(signal.SIGTERM)
                svc.wait(timeout=10)
            subprocess.run(["ssh", "-F", str(cfg), "-O", "exit", "-o", f"ControlPath={d}/cm-%C", lab.hosts[0].name],
                           capture_output=True)
            subprocess.run(["pkill", "-f", f"ControlPath={d}/cm-"], capture_output=True)
            if relay is not None:
                relay.terminate()
            lab_down(d / "lab")


if __name__ == "__main__":
    main()

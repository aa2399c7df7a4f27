#!/usr/bin/env python3
"""Warm connections: `fleet mcp` fanout to N lab hosts twice in one session (the second within the
idle time), against OpenSSH with ControlMaster=auto ControlPersist=10m run twice (what Ansible
users rely on). Concurrency 50, command `true`. Then the `Fleet` object in this process: its
second fanout, and its CPU while it holds the warm connections idle for 10 s.
Usage: python bench/warm.py [--hosts 50]"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from fleet.lab import lab_down, lab_up  # noqa: E402

FLEET = str(Path(sys.executable).parent / "fleet")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=50)
    a = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="fleet-bench-warm-"))
    lab = lab_up(a.hosts, d / "lab")
    env = dict(os.environ, INVOKE_FLEET_ARTIFACTS_DIR=str(d / "art"), INVOKE_FLEET_JOURNAL=str(d / "j.jsonl"),
               INVOKE_FLEET_TOKEN_DIR=str(d / "tok"), INVOKE_FLEET_CONCURRENCY="50", HOME=str(d))
    try:
        async def mcp_runs():
            params = StdioServerParameters(command=FLEET, args=["mcp", "--inventory", str(lab.inventory)], env=env)
            times = []
            async with stdio_client(params, errlog=open(os.devnull, "w")) as (r, w):
                async with ClientSession(r, w) as s:
                    await s.initialize()
                    for _ in range(2):
                        t = time.perf_counter()
                        res = await s.call_tool("fanout", {"command": "true", "selector": "all", "no_canary": True})
                        times.append(time.perf_counter() - t)
                        assert not res.isError, res.content
            return times
        first, second = anyio.run(mcp_runs)
        names = "\n".join(h.name for h in lab.hosts) + "\n"
        cm = ["-o", "ControlMaster=auto", "-o", f"ControlPath={d}/cm-%C", "-o", "ControlPersist=10m"]
        ssh = ["xargs", "-P", "50", "-I{}", "ssh", "-F", str(lab.ssh_config), "-o",
               "KexAlgorithms=curve25519-sha256", *cm, "{}", "true"]
        o = []
        for _ in range(2):
            t = time.perf_counter()
            subprocess.run(ssh, input=names, text=True, capture_output=True, check=True)
            o.append(time.perf_counter() - t)
        print(f"N={a.hosts}: fleet mcp fanout first {first:.2f}s, second {second:.2f}s "
              f"({second / first:.2f}x of the first)")
        print(f"N={a.hosts}: OpenSSH ControlPersist first {o[0]:.2f}s, second {o[1]:.2f}s")
        subprocess.run(["ssh", "-F", str(lab.ssh_config), *cm, "-O", "exit", lab.hosts[0].name],
                       capture_output=True)
        in_process(lab, d)
    finally:
        subprocess.run(["pkill", "-f", f"{d}/cm-"], capture_output=True)
        lab_down(d / "lab")


def in_process(lab, d: Path) -> None:
    """The Fleet object: second fanout in-process, and CPU while the kept connections idle."""
    import resource

    from fleet import Fleet
    from fleet.settings import Settings

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime
    st = Settings(token_dir=str(d / "tok"), journal=str(d / "j2.jsonl"), artifacts_dir=str(d / "art2"),
                  concurrency=50)
    with Fleet(str(lab.inventory), settings=st) as f:
        times = []
        for _ in range(2):
            t = time.perf_counter()
            assert f.fanout("all", "true", no_canary=True).exit_code == 0
            times.append(time.perf_counter() - t)
        c = cpu()
        time.sleep(10)
        used = cpu() - c
        t = time.perf_counter()
        f.close()
        closing = time.perf_counter() - t
    print(f"Fleet object: fanout first {times[0]:.2f}s, second {times[1]:.2f}s; idle 10 s holding "
          f"{len(lab.hosts)} connections: CPU {used * 1000:.0f} ms ({used / 10 * 100:.2f}% of a core); "
          f"closing them {closing:.2f}s")


if __name__ == "__main__":
    main()

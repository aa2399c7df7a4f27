"""``make demo``: fleet's main job on the local lab, one real command at a time.

Starts a lab (real sshd hosts and one real ``opencode serve`` on loopback; the agent's model is
a local stand-in, not an LLM), then runs what a user runs: preflight --deep, fanout with every
host's output, a dispatch, sessions, an abort, the token refusal and confirmation of a gated
operation, and the audit trail. The lab stays up afterwards for trying things.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

FLEET = str(Path(sys.executable).parent / "fleet")


def _say(text: str) -> None:
    print(f"\n\033[1m# {text}\033[0m" if sys.stdout.isatty() else f"\n# {text}", flush=True)


def _run(*args: str, ok: tuple[int, ...] = (0,), capture: bool = False) -> subprocess.CompletedProcess:
    print("$ fleet " + " ".join(shlex.quote(a) for a in args), flush=True)
    p = subprocess.run([FLEET, *args], text=True, capture_output=capture, stdin=subprocess.DEVNULL)
    if capture:
        sys.stdout.write(p.stdout)
        sys.stderr.write(p.stderr)
    if p.returncode not in ok:
        raise SystemExit(f"demo: that command exited {p.returncode}; see its message above")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns an exit status."""
    ap = argparse.ArgumentParser(prog="fleet-demo")
    ap.add_argument("--dir", default="lab")
    ap.add_argument("--down", action="store_true", help="take the lab down at the end")
    a = ap.parse_args(argv)
    t0 = time.monotonic()
    inv = os.path.join(a.dir, "inventory.yaml")
    _say("a lab: 4 real sshd hosts on their own loopback addresses, one real `opencode serve` on lab01.\n"
         "# The agent's model is a local STAND-IN (it answers 'DONE: <task>'), not a real LLM.")
    subprocess.run([FLEET, "lab.down", "--dir", a.dir], capture_output=True)
    _run("lab.up", "--count", "4", "--agents", "1", "--dir", a.dir)
    _say("is every machine usable? --deep logs in for real and checks the OpenCode server")
    _run("preflight", "--inventory", inv, "--all", "--deep")
    _say("one command on every host: each host's output (identical ones once), then the table")
    _run("fanout", "--inventory", inv, "--all", "uname -sr; echo \"I am $(id -un) on ${SSH_CONNECTION##* }\" | "
         "sed 's/[0-9]*$/port/'")
    _say("hand a task to the agent on lab01 and follow it to the end: the stand-in model really\n"
         "# calls OpenCode's write tool, so the review lists the file it changed")
    _run("dispatch", "--inventory", inv, "--host", "lab01", "--repo", "demo", "--task",
         "say hello [write: hello.txt]")
    _say("an agent that asks a permission (a bash command the lab's OpenCode config sets to 'ask'):\n"
         "# it shows as needs-input; approve it, then follow it to the end of its turn")
    p = _run("dispatch", "--inventory", inv, "--host", "lab01", "--repo", "demo", "--task",
             "check [bash: echo ask-me-first]", "--no-wait", capture=True)
    m = re.search(r"session (ses_\w+)", p.stderr)
    if not m:
        raise SystemExit("demo: the dispatch named no session")
    sid = m.group(1)
    for _ in range(50):  # the request shows within moments of the run starting
        q = subprocess.run([FLEET, "sessions", "--inventory", inv, "--hosts", "lab01", "--json"], text=True,
                           capture_output=True, stdin=subprocess.DEVNULL)
        rows = json.loads(q.stdout or '{"sessions": []}')
        if any(r["session_id"] == sid and r["state"] == "needs-input" for r in rows["sessions"]):
            break
        time.sleep(0.1)
    _run("sessions", "--inventory", inv, "--hosts", "lab01")
    _run("approve", "--inventory", inv, "--session", sid)
    _run("wait", "--inventory", inv, "--session", sid)
    _say("a slow task, sent without waiting; then what the agents are doing, and an abort")
    p = _run("dispatch", "--inventory", inv, "--host", "lab01", "--repo", "demo", "--task", "[slow] think a lot",
             "--no-wait", "--json", capture=True)
    sid = json.loads(p.stdout)["results"][0]["session_id"]
    _run("sessions", "--inventory", inv, "--hosts", "lab01")
    _run("abort", "--inventory", inv, "--host", "lab01", "--session", sid)
    _say("a destructive operation is gated: the refusal shows the exact plan and a token for it")
    root = Path(a.dir) / "hosts" / "lab02" / "repos" / "scratch"
    root.mkdir(parents=True, exist_ok=True)
    (root / "file").write_text("made by the demo\n")
    p = _run("blow-away", "--inventory", inv, "--hosts", "lab02", "--repo", "scratch", ok=(3,), capture=True)
    m = re.search(r"--confirm (\S+)", p.stderr)
    if not m:
        raise SystemExit("demo: the refusal carried no token")
    _run("blow-away", "--inventory", inv, "--hosts", "lab02", "--repo", "scratch", "--confirm", m.group(1))
    _say("the audit trail (journal first; Slack when configured)")
    _run("audit.tail", "--lines", "8")
    if a.down:
        _run("lab.down", "--dir", a.dir)
    else:
        _say(f"done in {time.monotonic() - t0:.0f}s. The lab is still up: try\n"
             f"#   fleet fanout --inventory {inv} --all hostname\n"
             f"#   ssh -F {a.dir}/ssh_config lab02 true      (plain OpenSSH, same hosts)\n"
             f"# and take it down with: make demo-down   (or: fleet lab.down --dir {a.dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

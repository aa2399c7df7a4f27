"""Issue 21, fanout: the inventory's secrets never shown (5); a killed run is the last run, and its
hosts without a result are the ones retried (9). On the session lab (real sshd)."""
from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

from conftest import inv_cmd, write_inventory

from fleet.inventory import load_inventory
from fleet.ops.fanout import fanout
from fleet.settings import Settings
from fleet.ssh.kvlog import parse_line
from fleet.ssh.runner import FanoutOptions

PASSWORD = "s3cr3t+pw/with=odd&chars"
SLACK_TOKEN = "slack-bot-token-0123456789abcdef"  # not xox-shaped: only the inventory knows it is a secret
FLEET = str(Path(sys.executable).parent / "fleet")


def forms() -> list[str]:
    return [PASSWORD, quote(PASSWORD, safe=""), base64.b64encode(PASSWORD.encode()).decode(), SLACK_TOKEN,
            base64.b64encode(SLACK_TOKEN.encode()).decode()]


def secret_inventory(lab, tmp_path: Path, names: list[str]) -> Path:
    p = write_inventory(tmp_path / "inv.yaml", lab, names=names,
                        host_extra={n: "opencode: {url: 'http://127.0.0.1:9', password_env: OC_PW}" for n in names},
                        extra_top="slack: {channel: C0AUDIT, base_url: 'http://127.0.0.1:9/api/'}\n")
    return p


def leaks(texts: list[str]) -> list[str]:
    return [f for f in forms() for t in texts if f in t]


COMMAND = (f"echo 'plain {PASSWORD}'; echo '{quote(PASSWORD, safe='')}' >&2; "
           f"echo {base64.b64encode(PASSWORD.encode()).decode()}; echo {SLACK_TOKEN}; exit 3")


def test_no_output_of_a_fanout_shows_a_secret(lab, tmp_path, monkeypatch):
    monkeypatch.setenv("OC_PW", PASSWORD)
    monkeypatch.setenv("SLACK_BOT_TOKEN", SLACK_TOKEN)
    inv = secret_inventory(lab, tmp_path, ["lab17"])
    art = tmp_path / "art"
    env = {"INVOKE_FLEET_ARTIFACTS_DIR": str(art)}
    shown = []
    for extra in (["--json"], [], ["--stream", "--log"], ["--diff"]):
        p = inv_cmd("fanout", "--inventory", str(inv), "--hosts", "lab17", *extra, COMMAND, env=env)
        assert p.returncode == 1, p.stderr
        shown += [p.stdout, p.stderr]
    doc = json.loads(shown[0])
    assert doc["results"][0]["exit_code"] == 3 and "[redacted]" in doc["command"]
    assert "[redacted]" in doc["results"][0]["stdout"]
    runs = [d for d in art.iterdir() if d.is_dir() and not d.is_symlink()]
    assert len(runs) == 4
    for d in runs:
        shown += [(d / "summary.json").read_text(), (d / "fanout.log").read_text()]
        summary = json.loads((d / "summary.json").read_text())
        assert summary["command_redacted"] is True and "byte for byte, not redacted" in summary["streams"]
        # the per-host streams are the remote command's own bytes, kept as they came (summary says so)
        assert (d / "lab17.stdout").read_text().startswith(f"plain {PASSWORD}\n")
    # the Python API (what fleet mcp returns): the run as data
    from fleet.app import Fleet
    st = Settings(token_dir=str(tmp_path / "tok"), journal=str(tmp_path / "j.jsonl"), artifacts_dir=str(art))
    with Fleet(str(inv), st) as fl:
        run = fl.fanout("lab17", COMMAND)
    shown.append(json.dumps(run.to_dict()))
    # and the library without any trail: the gate's own trail knows the secrets
    lib = fanout(load_inventory(inv), "lab17", args={"command": COMMAND}, settings=st,
                 options=FanoutOptions(artifacts_dir=str(art), user_known_hosts=None))
    shown.append(json.dumps(lib.to_dict()))
    assert leaks(shown) == []


def test_retry_of_a_command_that_held_a_secret_is_refused(lab, tmp_path, monkeypatch):
    monkeypatch.setenv("OC_PW", PASSWORD)
    inv = secret_inventory(lab, tmp_path, ["lab17"])
    env = {"INVOKE_FLEET_ARTIFACTS_DIR": str(tmp_path / "art")}
    assert inv_cmd("fanout", "--inventory", str(inv), "--hosts", "lab17", COMMAND, env=env).returncode == 1
    again = inv_cmd("fanout", "--retry-failed", "--inventory", str(inv), env=env)
    assert again.returncode == 2 and "held a secret" in again.stderr, again.stderr
    assert "Traceback" not in again.stderr and len(again.stderr.strip().splitlines()) == 1


def test_a_killed_fanout_is_the_last_run_and_its_unfinished_hosts_are_retried(lab, tmp_path):
    names = ["lab18", "lab19", "lab20"]
    inv = write_inventory(tmp_path / "inv.yaml", lab, names=names)
    art = tmp_path / "art"
    env = dict(os.environ, INVOKE_FLEET_ARTIFACTS_DIR=str(art))
    ok = subprocess.run([FLEET, "fanout", "--inventory", str(inv), "--all", "--no-canary", "true"], env=env,
                        capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr  # an older run, all fine
    fast = lab.hosts[17].address  # lab18 ends at once; the others wait for the flag
    flag = tmp_path / "flag"
    cmd = f'a=$(echo $SSH_CONNECTION | cut -d" " -f3); [ "$a" = {fast} ] || [ -e {flag} ] || sleep 8'
    proc = subprocess.Popen([FLEET, "fanout", "--inventory", str(inv), "--all", "--no-canary", cmd], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
                            start_new_session=True)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            logs = [p for p in art.glob("*/fanout.log") if not p.parent.is_symlink()
                    and "success host=lab18" in p.read_text() and f"{flag}" in p.read_text()]
            if logs:
                break
            time.sleep(0.1)
        assert logs, "lab18 never finished"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    flag.touch()
    r = subprocess.run([FLEET, "retry", "--inventory", str(inv), "--json", "--no-canary"], env=env,
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert sorted(x["host"] for x in doc["results"]) == ["lab19", "lab20"]
    assert "killed" in r.stderr or "did not finish" in r.stderr
    # the killed run's log says what ended where; the retry's log is its own
    killed = logs[0]
    assert [f["host"] for e, f in map(parse_line, killed.read_text().splitlines()) if e == "success"] == ["lab18"]

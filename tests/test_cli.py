"""The CLI surface: inventory tasks, exit codes, dx-dispatch, aliases, preflight advice, kv logs."""
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, inv_cmd
from stand_ins import FakeOpenCode

from fleet.inventory import load_inventory_text
from fleet.results import PreflightStatus
from fleet.ssh.kvlog import format_line, parse_line
from fleet.ssh.preflight import run_preflight_checks


def test_inventory_check_ok_and_bad(tmp_path):
    p = inv_cmd("inventory.check", "--inventory", str(ROOT / "inventory.yaml"))
    assert p.returncode == 0 and "OK, 3 hosts" in p.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("hosts:\n  a: {usr: x}\n")
    p = inv_cmd("inventory.check", "--inventory", str(bad))
    assert p.returncode == 2 and f"{bad}:2:7: unknown key 'usr'" in p.stderr and "Traceback" not in p.stderr
    assert p.stderr.count("\n") == 1  # one message


def test_inventory_show_json_and_table():
    p = inv_cmd("inventory.show", "--inventory", str(ROOT / "inventory.yaml"), "--hosts", "@remote,!epyc6", "--json")
    doc = json.loads(p.stdout)
    assert [h["name"] for h in doc["hosts"]] == ["macmini"] and doc["hosts"][0]["auth"] == "tailscale"
    p = inv_cmd("inventory.show", "--inventory", str(ROOT / "inventory.yaml"))
    assert p.returncode == 0 and "homedesktop-wsl" in p.stdout and "epyc6" in p.stdout
    p = inv_cmd("inventory.show", "--inventory", str(ROOT / "inventory.yaml"), "--hosts", "@gpus")
    assert p.returncode == 2 and "did you mean '@gpu'" in p.stderr


def test_inventory_import_cli(tmp_path):
    src = tmp_path / "vm-endpoints.json"
    src.write_text(json.dumps({"vms": {"epyc6": {"opencode": "http://epyc6.tail76761.ts.net:4105",
                                                 "ssh": "feng@epyc6", "tailscale": "epyc6.tail76761.ts.net",
                                                 "gpus": 2}}, "default_vm": "epyc6"}))
    p = inv_cmd("inventory.import", str(src))
    assert p.returncode == 0 and "dropped vms.epyc6.gpus" in p.stderr
    inv = load_inventory_text(p.stdout, "out.yaml")
    assert inv.host("epyc6").user == "feng"
    src.write_text("{not json")
    p = inv_cmd("inventory.import", str(src))
    assert p.returncode == 2 and "not valid JSON" in p.stderr


def test_bad_flags_are_exit_2(tmp_path):
    p = inv_cmd("fanout", "--inventory", str(ROOT / "inventory.yaml"), "--all", "--concurrency", "0", "true")
    assert p.returncode == 2 and "--concurrency 0" in p.stderr
    p = inv_cmd("fanout", "--inventory", str(ROOT / "inventory.yaml"), "true")
    assert p.returncode == 2 and "--hosts SELECTOR" in p.stderr
    p = inv_cmd("fanout", "--inventory", str(tmp_path / "none.yaml"), "--all", "true")
    assert p.returncode == 2 and "file not found" in p.stderr
    p = inv_cmd("fanout", "--inventory", str(ROOT / "inventory.yaml"), "--all", "--batch", "x%", "--mode", "off", "true")
    assert p.returncode == 2 and "--batch x%" in p.stderr
    p = inv_cmd("fanout", "--inventory", str(ROOT / "inventory.yaml"), "--all", "--max-fail", "150", "true")
    assert p.returncode == 2 and "--max-fail 150" in p.stderr


def test_mode_off_fanout_cli_reports_host_local():
    p = inv_cmd("fanout", "--inventory", str(ROOT / "inventory.yaml"), "--all", "--mode", "off", "--json",
                "echo local-run")
    doc = json.loads(p.stdout)
    assert [r["host"] for r in doc["results"]] == ["local"] and doc["results"][0]["stdout"] == "local-run\n"
    assert any("kept 2 remote host(s) local: macmini, epyc6" in n for n in doc["notes"])


def test_kv_lines_round_trip():
    fields = dict(host="epyc6", user="feng", command='make test "quoted" \\ back\nslash', attempt=1,
                  duration_ms=2340, final_error="Exit code 1", empty="")
    line = format_line("failure", **fields)
    assert line.startswith('failure host=epyc6 user=feng command="make test')
    ev, got = parse_line(line)
    assert ev == "failure" and got == {k: str(v) for k, v in fields.items()}


def test_preflight_advice_for_each_auth_mode(tmp_path, monkeypatch):
    inv = load_inventory_text(
        "hosts:\n"
        "  ts: {user: u, address: 127.0.0.1, auth: tailscale}\n"
        "  ag: {user: u, address: 127.0.0.1, auth: agent}\n"
        f"  kf: {{user: u, address: 127.0.0.1, identity_file: {tmp_path / 'key'}}}\n"
        "  nouser: {address: 127.0.0.1}\n"
        "  here: {auth: local}\n", "t.yaml")
    monkeypatch.setenv("PATH", str(tmp_path))  # no tailscale CLI
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    key = tmp_path / "key"
    key.write_text("k")
    key.chmod(0o644)
    checks = {}
    for name in ("ts", "ag", "kf", "nouser", "here"):
        checks[name] = run_preflight_checks(inv.host(name), timeout=1)
    # ports are closed on 127.0.0.1:22 maybe; auth checks run only if tcp passed, so test auth directly
    from fleet.ssh.preflight import _check_auth
    assert "tailscale CLI is not installed" in _check_auth(inv.host("ts"), None, 1)[1]
    assert "SSH_AUTH_SOCK is not set" in _check_auth(inv.host("ag"), None, 1)[1]
    assert "chmod 600" in _check_auth(inv.host("kf"), None, 1)[1]
    # no user anywhere: like 'ssh nouser', the local login name is used
    import getpass
    assert checks["nouser"].user == getpass.getuser()
    assert checks["here"].status == PreflightStatus.OK and [c.name for c in checks["here"].checks] == ["mapping", "auth"]


def test_dx_dispatch_console_script(tmp_path):
    s = FakeOpenCode()
    try:
        inv = tmp_path / "inv.yaml"
        inv.write_text(f"hosts:\n  epyc6: {{user: u, opencode: '{s.url}', repos: {{root: /r}}}}\n")
        env = dict(os.environ, INVOKE_FLEET_JOURNAL=str(tmp_path / "j.jsonl"), FLEET_INVENTORY=str(inv))
        exe = str(Path(sys.executable).parent / "dx-dispatch")
        p = subprocess.run([exe, "epyc6", "affordabot", "Run make test", "--no-slack"], capture_output=True,
                           text=True, env=env, cwd=tmp_path, timeout=60)
        assert p.returncode == 0, p.stderr
        assert "[epyc6] SUCCESS" in p.stdout and "ok: Run make test" in p.stdout
        assert any(q.get("directory") == "/r/affordabot" for _, _, q in s.hits)
        p = subprocess.run([exe, "--all", "affordabot", "go", "--no-slack"], capture_output=True, text=True,
                           env=env, cwd=tmp_path, timeout=60)
        assert p.returncode == 0 and "ok: go" in p.stdout
        p = subprocess.run([exe, "epyc6", "affordabot"], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert p.returncode == 2 and "expected VM REPO TASK" in p.stderr
    finally:
        s.close()


def test_aliases_file_defines_short_commands(tmp_path):
    p = subprocess.run(["bash", "-c", f"source {ROOT / 'shell/fleet-aliases.sh'}; alias fpf ffo fdx; "
                                      f"alias fab 2>/dev/null && echo FAB-DEFINED; fleet --list"],
                       capture_output=True, text=True, cwd=tmp_path,
                       env=dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}"))
    assert p.returncode == 0, p.stderr
    assert "fleet preflight" in p.stdout and "fleet fanout" in p.stdout and "fleet dispatch" in p.stdout
    assert "FAB-DEFINED" not in p.stdout  # Fabric's own `fab` is not shadowed
    assert "fanout" in p.stdout and "lab.up" in p.stdout  # the installed command, from a temp dir


def test_dispatch_live_board_and_plain_lines():
    """Many hosts on a terminal: a board redrawn in place, needs-input first; not a terminal:
    one plain line per change, with the usage so far."""
    import io

    from fleet.cli.live import DispatchLive

    class Tty(io.StringIO):
        def isatty(self):
            return True

    s = Tty()
    live = DispatchLive(False, True, stream=s, tick=0)
    for host, kind, text in [("lab01", "session", "ses_1"), ("lab02", "session", "ses_2"),
                             ("lab01", "status", "busy: bash: make test"), ("lab01", "usage", "15 tok $0.0000"),
                             ("lab02", "status", "needs-input: bash: echo ask-me")]:
        live(host, kind, text)
    import re
    raw = s.getvalue().rsplit("\x1b[J", 1)[1].splitlines()
    assert raw[1].startswith("\x1b[33m")  # needs-input is highlighted
    last = [re.sub(r"\x1b\[\d+m", "", line) for line in raw]
    assert last[0].split() == ["HOST", "SESSION", "STATE", "DOING", "/", "ASKS", "TIME", "TOKENS", "/", "COST"]
    assert last[1].split()[:4] == ["lab02", "ses_2", "needs-input", "bash:"]
    assert last[2].split()[:5] == ["lab01", "ses_1", "busy", "bash:", "make"] and "15 tok" in last[2]
    # every redraw goes up over the board before it: 2 lines after the first host, then 3
    assert s.getvalue().count("\x1b[2F") == 1 and s.getvalue().count("\x1b[3F") == 3
    live.close()
    assert s.getvalue().endswith("\x1b[3F\x1b[J")  # cleared: the report follows

    p = io.StringIO()
    plain = DispatchLive(False, True, stream=p)
    plain("lab01", "usage", "15 tok $0.0000")
    plain("lab01", "status", "busy: bash: make test")
    plain("lab01", "end", "FAILURE: agent error")
    lines = p.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("lab01: busy: bash: make test (") and lines[0].endswith("15 tok $0.0000")
    assert lines[1].startswith("lab01: FAILURE: agent error (")


def test_watch_board_fits_the_terminal_people_first():
    """More sessions than lines: the ones that need a person stay, the rest are counted."""
    from fleet.cli.live import watch_board

    rows = [{"host": f"h{i:02d}", "session": f"ses_{i}", "state": "idle", "title": "x" * 200} for i in range(30)]
    rows.append({"host": "h99", "session": "ses_ask", "state": "needs-input", "waiting": "bash: rm -rf build"})
    board = watch_board(rows, size=(80, 10)).splitlines()
    assert len(board) == 9 and all(len(line) <= 79 for line in board)
    assert board[1].startswith("h99") and "needs-input" in board[1]
    assert board[-1].startswith("... 24 more")


def test_a_no_wait_report_says_how_to_follow_not_empty_usage():
    from fleet.cli.agent_render import dispatch_report
    from fleet.results import DispatchResult, DispatchRun, FanoutOutcome

    one = DispatchRun("dx-1", "t", "demo", results=[DispatchResult("lab01", FanoutOutcome.SUCCESS, session_id="ses_a",
                                                                    waited=False)])
    text = dispatch_report(one)
    assert text == "lab01: sent, session=ses_a; the agent works on: follow it with 'fleet wait --session ses_a' (or fleet watch)"
    many = DispatchRun("dx-2", "t", "demo", results=[
        DispatchResult("lab01", FanoutOutcome.SUCCESS, session_id="ses_a", waited=False),
        DispatchResult("lab02", FanoutOutcome.FAILURE, error="refused", waited=False)])
    lines = dispatch_report(many).splitlines()
    assert lines[1].split()[:2] == ["lab01", "SENT"] and lines[2].split()[:2] == ["lab02", "FAILURE"]
    assert "fleet wait --dispatch dx-2" in lines[-1] and "tokens" not in lines[-1]

"""Daily use: the installed `fleet` command from anywhere, output you can read, cheap canaries."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import write_inventory
from test_modes import opts, settings

from fleet.cli.render import fold
from fleet.inventory import load_inventory
from fleet.ops import fanout as ops
from fleet.results import FanoutOutcome

FLEET = str(Path(sys.executable).parent / "fleet")


def fleet(*args: str, cwd: Path, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([FLEET, *args], cwd=str(cwd), env=e, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_fleet_command_from_outside_the_checkout(lab, tmp_path, own_home):
    work = tmp_path / "elsewhere"
    work.mkdir()
    p = fleet("--list", cwd=work)
    assert p.returncode == 0 and "fanout" in p.stdout and "preflight" in p.stdout
    p = fleet("preflight", "--inventory", str(lab.inventory), "--hosts", "lab01,lab02", cwd=work)
    assert p.returncode == 0 and "2 OK" in p.stdout, p.stderr
    # FLEET_INVENTORY works for the fleet command too; no ./artifacts is made in the cwd
    e = {k: v for k, v in os.environ.items() if k != "INVOKE_FLEET_ARTIFACTS_DIR"}
    e["FLEET_INVENTORY"] = str(lab.inventory)
    q = subprocess.run([FLEET, "fanout", "--hosts", "lab03", "echo from-$(hostname -s >/dev/null; echo lab)"],
                       cwd=str(work), env=e, capture_output=True, text=True, timeout=60)
    assert q.returncode == 0 and "from-lab" in q.stdout, q.stderr
    assert not (work / "artifacts").exists()
    assert (own_home / ".local" / "state" / "fleet" / "artifacts" / "latest" / "summary.json").exists()


def test_settings_from_user_config_file_and_env(lab, tmp_path, own_home):
    cfgdir = own_home / ".config" / "fleet"
    cfgdir.mkdir(parents=True)
    (cfgdir / "invoke.yaml").write_text("fleet:\n  mode: off\n")
    work = tmp_path / "w"
    work.mkdir()
    p = fleet("fanout", "--inventory", str(lab.inventory), "--all", "echo here", cwd=work)
    assert p.returncode == 0 and "local" in p.stdout and "kept 20 remote host(s) local" in p.stderr
    p = fleet("fanout", "--inventory", str(lab.inventory), "--hosts", "lab02", "echo there", cwd=work,
              env={"INVOKE_FLEET_MODE": "canary"})
    assert p.returncode == 0 and "lab02" in p.stdout and "local" not in p.stdout.split("HOST")[1]


def test_output_gathered_stderr_marked_quiet_and_diff(lab, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", lab, names=["lab01", "lab02", "lab03", "lab04"])
    odd = lab.hosts[2].port
    cmd = f'echo same; [ "${{SSH_CONNECTION##* }}" != {odd} ] || {{ echo other; echo oops >&2; exit 4; }}'
    p = fleet("fanout", "--inventory", str(inv), "--all", "--no-canary", cmd, cwd=tmp_path)
    assert p.returncode == 1
    assert "lab[01-02,04] (3)" in p.stdout and "lab03 (1)" in p.stdout
    assert "stderr| oops" in p.stdout and "lab03 stderr (last lines):" in p.stdout
    q = fleet("fanout", "--inventory", str(inv), "--all", "--quiet", cmd, cwd=tmp_path)
    assert "same" not in q.stdout and "HOST" in q.stdout and "oops" not in q.stdout
    d = fleet("fanout", "--inventory", str(inv), "--all", "--diff", cmd, cwd=tmp_path)
    assert "(most common)" in d.stdout and "+other" in d.stdout and "+stderr| oops" in d.stdout
    j = fleet("fanout", "--inventory", str(inv), "--all", "--json", "--stream", "true", cwd=tmp_path)
    assert j.returncode == 2 and "--json and --stream" in j.stderr


def test_partial_output_is_kept_on_timeout(lab_inv, tmp_path):
    run = ops.fanout(lab_inv, "lab05", args={"command": "echo started; echo warn >&2; sleep 30; echo never"},
                     settings=settings(tmp_path), options=opts(tmp_path, command_timeout=1.5))
    r = run.results[0]
    assert r.outcome == FanoutOutcome.TIMEOUT and r.stdout == "started\n" and r.stderr == "warn\n"


def test_unreachable_canary_is_replaced(lab, tmp_path, closed_port):
    inv = write_inventory(tmp_path / "inv.yaml", lab, names=["lab02", "lab03"],
                          extra_hosts=f"  dead: {{address: 127.0.0.1, port: {closed_port}}}\n")
    run = ops.fanout(load_inventory(inv), "dead,lab02,lab03", args={"command": "true"}, mode="canary",
                     canary="dead", settings=settings(tmp_path), options=opts(tmp_path))
    by = {r.host: r for r in run.results}
    assert by["dead"].outcome == FanoutOutcome.PREFLIGHT_FAILED
    assert by["lab02"].outcome == by["lab03"].outcome == FanoutOutcome.SUCCESS
    assert any("canary dead failed preflight" in n and "lab02 runs first instead" in n for n in run.notes)


def test_failed_canary_never_sends_the_command_to_the_others(lab, lab_inv, tmp_path):
    marks = tmp_path / "m"
    marks.mkdir()
    run = ops.fanout(lab_inv, "lab06,lab07,lab08", args={"command": f"touch {marks}/$(echo $SSH_CONNECTION | "
                                                         f"cut -d' ' -f3); exit 1"},
                     canary="lab06", settings=settings(tmp_path), options=opts(tmp_path))
    by = {r.host: r for r in run.results}
    assert by["lab06"].outcome == FanoutOutcome.FAILURE
    assert by["lab07"].outcome == by["lab08"].outcome == FanoutOutcome.ABORTED
    assert by["lab07"].error_kind == "canary_failed"
    assert os.listdir(marks) == [lab.hosts[5].address]


def test_no_canary_runs_in_parallel(lab_inv, tmp_path):
    cmd = "date +%s.%N; sleep 2; date +%s.%N"
    run = ops.fanout(lab_inv, "lab09,lab10", args={"command": cmd}, no_canary=True,
                     settings=settings(tmp_path), options=opts(tmp_path))
    spans = [tuple(float(x) for x in r.stdout.split()) for r in run.results]
    (s1, e1), (s2, e2) = spans
    assert s2 < e1 and s1 < e2  # the two sleeps overlapped
    run = ops.fanout(lab_inv, "lab09,lab10", args={"command": cmd}, canary="lab09",
                     settings=settings(tmp_path), options=opts(tmp_path))
    by = {r.host: tuple(float(x) for x in r.stdout.split()) for r in run.results}
    assert by["lab10"][0] >= by["lab09"][1]  # with a canary, the other starts after it ended


def test_retry_reruns_only_the_failed_hosts(lab, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", lab, names=["lab11", "lab12", "lab13"])
    count = tmp_path / "count"
    flag = tmp_path / "fixed"
    bad = lab.hosts[11].address
    cmd = (f'a=$(echo $SSH_CONNECTION | cut -d" " -f3); echo $a >> {count}; '
           f'[ "$a" != {bad} ] || [ -e {flag} ]')
    p = fleet("fanout", "--inventory", str(inv), "--all", "--no-canary", cmd, cwd=tmp_path)
    assert p.returncode == 1
    flag.touch()
    r = fleet("fanout", "--retry-failed", "--inventory", str(inv), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [x["host"] for x in doc["results"]] == ["lab12"]
    assert count.read_text().split().count(bad) == 2 and len(count.read_text().split()) == 4


def test_fold_like_clustershell():
    assert fold([f"lab{i:02d}" for i in range(1, 121)]) == "lab[01-120]"
    assert fold([f"r{a}n{b:02d}" for a in (1, 2) for b in range(1, 5)]) == "r[1-2]n[01-04]"
    assert fold(["web2", "lab03", "lab01", "lab02", "db"]) == "db,lab[01-03],web2"


def test_preflight_deep_proves_a_login_and_checks_opencode(lab, tmp_path):
    from stand_ins import FakeOpenCode

    good, wedged = FakeOpenCode(), FakeOpenCode()
    wedged.faults["GET /global/health"] = "hang"
    try:
        inv = write_inventory(tmp_path / "inv.yaml", lab, names=["lab01", "lab02", "lab03"], host_extra={
            "lab01": f"opencode: '{good.url}'", "lab02": "user: nobody", "lab03": f"opencode: '{wedged.url}'"})
        shallow = fleet("preflight", "--inventory", str(inv), "--all", "--json", cwd=tmp_path)
        assert json.loads(shallow.stdout)["ok"] is True  # a wrong user passes the shallow checks...
        p = fleet("preflight", "--inventory", str(inv), "--all", "--deep", "--json", "--timeout", "2", cwd=tmp_path)
        doc = {r["host"]: r for r in json.loads(p.stdout)["results"]}
        assert p.returncode == 1
        assert doc["lab02"]["failed_check"] == "login" and "authentication failed" in doc["lab02"]["error_detail"]
        assert doc["lab01"]["status"] == "OK" and doc["lab01"]["opencode"].startswith("ok ")
        assert doc["lab03"]["opencode"].startswith("DOWN")
    finally:
        good.close()
        wedged.close()


def test_make_setup_again_needs_no_network(tmp_path):
    """Once installed, `make setup` does nothing, even with the package index unreachable."""
    from conftest import ROOT

    env = dict(os.environ, PIP_INDEX_URL="http://127.0.0.1:9/simple", npm_config_registry="http://127.0.0.1:9/")
    p = subprocess.run(["make", "-C", str(ROOT), "setup"], capture_output=True, text=True, env=env, timeout=120,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "installing" not in p.stdout and "warning" not in (p.stdout + p.stderr).lower()

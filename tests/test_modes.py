"""Modes and gates end to end on the lab."""
import os
import re
from pathlib import Path

import pytest
from conftest import inv_cmd, logins, opts, write_inventory

from fleet.errors import BadInput, Refused
from fleet.inventory import load_inventory
from fleet.ops import fanout as ops
from fleet.ops.blow_away import blow_away
from fleet.results import FanoutOutcome
from fleet.safety.gate import ConfirmationRequired, resolve_mode
from fleet.safety.tokens import TokenRefused
from fleet.settings import Settings


def settings(tmp_path, **kw):
    return Settings(token_dir=str(tmp_path / "tok"), artifacts_dir=str(tmp_path / "art"), **kw)


def test_unknown_mode_lists_valid_ones():
    with pytest.raises(BadInput, match="unknown mode 'fast'.*off, canary, enforced"):
        resolve_mode("fast")


def test_off_runs_once_locally_and_nothing_reaches_sshd(lab, lab_inv, tmp_path):
    before = logins(lab)
    run = ops.fanout(lab_inv, "all", args={"command": "echo here-$((2+3))"}, mode="off",
                     settings=settings(tmp_path), options=opts(tmp_path))
    assert [r.host for r in run.results] == ["local"]
    assert run.results[0].stdout == "here-5\n" and run.exit_code == 0
    assert any("kept 20 remote host(s) local" in n for n in run.notes)
    assert logins(lab) == before


def test_canary_failure_aborts_the_rest_untouched(lab, lab_inv, tmp_path):
    mark = tmp_path / "marks"
    mark.mkdir()
    port1 = lab.hosts[0].port
    cmd = f'p=${{SSH_CONNECTION##* }}; touch {mark}/$p; [ "$p" != {port1} ]'
    run = ops.fanout(lab_inv, "@odd", args={"command": cmd}, mode="canary", canary="lab01",
                     settings=settings(tmp_path), options=opts(tmp_path))
    by = {r.host: r for r in run.results}
    assert by["lab01"].outcome == FanoutOutcome.FAILURE
    others = [h for h in by if h != "lab01"]
    assert others and all(by[h].outcome == FanoutOutcome.ABORTED for h in others)
    assert all("canary lab01 ended FAILURE" in by[h].error for h in others)
    assert sorted(os.listdir(mark)) == [str(port1)]


def test_canary_success_runs_the_rest(lab_inv, tmp_path):
    run = ops.fanout(lab_inv, "lab01,lab02,lab03", args={"command": "true"}, mode="canary",
                     settings=settings(tmp_path), options=opts(tmp_path))
    assert [r.host for r in run.results][0] == "lab01" and run.exit_code == 0 and len(run.results) == 3


def test_rolling_batches_stop_at_failure_threshold(lab, lab_inv, tmp_path):
    # lab01 (canary) then batches of 2; lab03 and lab04 fail; max-fail 35%:
    # after (02,03) 1/3 = 33% goes on, after (04,05) 2/5 = 40% stops
    bad = {lab.hosts[2].port, lab.hosts[3].port}
    cmd = "p=${SSH_CONNECTION##* }; case $p in " + "|".join(map(str, bad)) + ") exit 1;; esac"
    sel = ",".join(f"lab{i:02d}" for i in range(1, 11))
    run = ops.fanout(lab_inv, sel, args={"command": cmd}, mode="canary", canary="lab01",
                     settings=settings(tmp_path), options=opts(tmp_path, attempts=1), batch="2", max_fail="35")
    states = {r.host: r.outcome for r in run.results}
    assert states["lab01"] == FanoutOutcome.SUCCESS
    assert states["lab03"] == FanoutOutcome.FAILURE and states["lab04"] == FanoutOutcome.FAILURE
    assert all(states[f"lab{i:02d}"] == FanoutOutcome.ABORTED for i in range(6, 11))
    assert any("2 of 5 hosts failed (40%) > --max-fail 35%" in r.error for r in run.results if r.outcome == FanoutOutcome.ABORTED)


def test_enforced_refuses_out_of_route_and_runs_ungated_without_token(lab, tmp_path):
    p = write_inventory(tmp_path / "inv.yaml", lab, names=["lab01", "lab02", "lab03"],
                        extra_top="groups:\n  ok: [lab01, lab02]\nroutes:\n  fanout: '@ok'\n")
    inv = load_inventory(p)
    st = settings(tmp_path)
    with pytest.raises(Refused, match=r"lab03 is outside the route for 'fanout' \(@ok = lab01, lab02\)"):
        ops.fanout(inv, "all", args={"command": "true"}, mode="enforced", settings=st, options=opts(tmp_path))
    # not gated: enforced keeps to the route and runs at once, no token
    run = ops.fanout(inv, "@ok", args={"command": "true"}, mode="enforced", settings=st, options=opts(tmp_path))
    assert run.exit_code == 0 and len(run.results) == 2
    # gated by the settings: a token, bound to the plan
    stg = settings(tmp_path, gated=("fanout",))
    with pytest.raises(ConfirmationRequired) as ei:
        ops.fanout(inv, "@ok", args={"command": "true"}, mode="enforced", settings=stg, options=opts(tmp_path))
    tok = ei.value.token
    assert "operation: fanout" in str(ei.value) and "lab01, lab02" in str(ei.value)
    with pytest.raises(TokenRefused, match="issued for 'fanout' on \\[lab01,lab02\\] with command='true'"):
        ops.fanout(inv, "@ok", args={"command": "rm -rf /tmp/x"}, mode="enforced", confirm=tok, settings=stg,
                   options=opts(tmp_path))
    run = ops.fanout(inv, "@ok", args={"command": "true"}, mode="enforced", confirm=tok, settings=stg,
                     options=opts(tmp_path))
    assert run.exit_code == 0 and len(run.results) == 2


def test_enforced_without_route_is_refused(lab_inv, tmp_path):
    with pytest.raises(Refused, match="no route for 'fanout'"):
        ops.fanout(lab_inv, "lab01", args={"command": "true"}, mode="enforced", settings=settings(tmp_path))


def test_gated_setting_gates_fanout(lab_inv, tmp_path):
    st = settings(tmp_path, gated=("fanout",))
    with pytest.raises(ConfirmationRequired):
        ops.fanout(lab_inv, "lab01", args={"command": "true"}, mode="canary", settings=st)


def _mk(root: Path, name: str) -> Path:
    d = root / name
    (d / "src").mkdir(parents=True, exist_ok=True)
    (d / "src" / "f.txt").write_text("x")
    return d


def test_blow_away_deletes_only_the_repo_dir_after_confirmation(lab, tmp_path):
    p = write_inventory(tmp_path / "inv.yaml", lab, names=["lab06", "lab07"])
    inv = load_inventory(p)
    st = settings(tmp_path)
    roots = [Path(h.repos_root) for h in inv.hosts]
    for r in roots:
        _mk(r, "affordabot")
        _mk(r, "keepme")
    with pytest.raises(ConfirmationRequired) as ei:
        blow_away(inv, "lab06,lab07", args={"repo": "affordabot"}, mode="canary", settings=st,
                      options=opts(tmp_path))
    assert all((r / "affordabot").exists() for r in roots)
    run = blow_away(inv, "lab06,lab07", args={"repo": "affordabot"}, mode="canary", settings=st,
                        confirm=ei.value.token, options=opts(tmp_path))
    assert run.exit_code == 0, [r.error for r in run.results]
    for r in roots:
        assert not (r / "affordabot").exists() and (r / "keepme" / "src" / "f.txt").exists() and r.exists()


def test_blow_away_refuses_dotdot_before_anything_runs(lab, tmp_path):
    outside = tmp_path / "precious"
    outside.mkdir()
    root = Path(lab.hosts[7].repos_root)
    p = write_inventory(tmp_path / "inv.yaml", lab, names=["lab08"],
                        host_extra={"lab08": f"repos: {{root: {root}, paths: {{evil: ../../../{outside.name}}}}}"})
    p.write_text(p.read_text().replace(f"repos: {{root: {root}}}, ", ""))
    inv = load_inventory(p)
    with pytest.raises(Refused, match="not strictly inside the repos root"):
        blow_away(inv, "lab08", args={"repo": "evil"}, mode="canary", settings=settings(tmp_path))
    assert outside.exists()


def test_blow_away_refuses_symlink_escape_on_the_host(lab, tmp_path):
    outside = tmp_path / "precious2"
    outside.mkdir()
    (outside / "data").write_text("keep")
    root = Path(lab.hosts[8].repos_root)
    link = root / "linked"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(outside)
    p = write_inventory(tmp_path / "inv.yaml", lab, names=["lab09"])
    inv = load_inventory(p)
    st = settings(tmp_path)
    with pytest.raises(ConfirmationRequired) as ei:
        blow_away(inv, "lab09", args={"repo": "linked"}, mode="canary", settings=st, options=opts(tmp_path))
    run = blow_away(inv, "lab09", args={"repo": "linked"}, mode="canary", settings=st,
                        confirm=ei.value.token, options=opts(tmp_path))
    r = run.results[0]
    assert r.outcome == FanoutOutcome.FAILURE and "symlink" in r.stderr
    assert (outside / "data").read_text() == "keep"


def test_cli_refusal_token_confirmed_run(lab, tmp_path):
    root = Path(lab.hosts[9].repos_root)
    _mk(root, "demo")
    env = {"INVOKE_FLEET_TOKEN_DIR": str(tmp_path / "tok"), "INVOKE_FLEET_ARTIFACTS_DIR": str(tmp_path / "art")}
    args = ["blow-away", "--inventory", str(lab.inventory), "--repo", "demo", "--hosts", "lab10"]
    p = inv_cmd(*args, env=env)
    assert p.returncode == 3, p.stderr
    assert "operation: blow-away" in p.stderr and "hosts:     lab10 (1)" in p.stderr
    tok = re.search(r"--confirm (\S+)", p.stderr).group(1)
    assert (root / "demo").exists()
    p = inv_cmd(*args, "--confirm", tok, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert not (root / "demo").exists()
    p = inv_cmd(*args, "--confirm", tok, env=env)
    assert p.returncode == 3 and "already used" in p.stderr
    p = inv_cmd("fanout", "--inventory", str(lab.inventory), "--hosts", "lab01", "--mode", "turbo", "true", env=env)
    assert p.returncode == 2 and "off, canary, enforced" in p.stderr

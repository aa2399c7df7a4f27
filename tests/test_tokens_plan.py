"""A confirmation token confirms exactly the plan it was shown with, and nothing else."""
from __future__ import annotations

from dataclasses import replace

import pytest
from conftest import inv_cmd, write_inventory
from test_modes import opts, settings

from fleet.errors import BadInput
from fleet.inventory import load_inventory
from fleet.ops import fanout as ops
from fleet.ops.blow_away import blow_away
from fleet.safety.gate import ConfirmationRequired
from fleet.safety.tokens import TokenRefused, TokenStore


def test_blow_away_token_refused_when_the_inventory_maps_the_root_elsewhere(lab, tmp_path):
    """The issue's reproduction: same command, another inventory giving lab02 another repos root."""
    a = write_inventory(tmp_path / "a.yaml", lab, names=["lab02"])
    other_root = tmp_path / "elsewhere"
    (other_root / "demo").mkdir(parents=True)
    b = tmp_path / "b.yaml"
    b.write_text(a.read_text().replace(lab.hosts[1].repos_root, str(other_root)))
    st = settings(tmp_path)
    with pytest.raises(ConfirmationRequired) as ei:
        blow_away(load_inventory(a), "lab02", args={"repo": "demo"}, settings=st, options=opts(tmp_path))
    with pytest.raises(TokenRefused) as refused:
        blow_away(load_inventory(b), "lab02", args={"repo": "demo"}, settings=st, options=opts(tmp_path),
                      confirm=ei.value.token)
    assert refused.value.reason == "wrong_scope"
    assert "inventory" in str(refused.value) and "targets.lab02" in str(refused.value)
    assert (other_root / "demo").exists()


@pytest.mark.parametrize("change, needle", [
    (dict(options_kw={"accept_new_host_keys": True}), "options.accept_new_host_keys"),
    (dict(options_kw={"retry_on_exit": True}), "options.retry_on_exit"),
    (dict(options_kw={"attempts": 10}), "options.attempts"),
    (dict(options_kw={"collect": ("/etc/hostname",)}), "options.collect"),
    (dict(options_kw={"command_timeout": 5.0}), "options.command_timeout"),
    (dict(mode="enforced"), "mode"),
    (dict(canary="lab03"), "canary"),
    (dict(batch="1"), "batch"),
])
def test_fanout_token_refused_for_any_change_that_alters_what_runs(lab, tmp_path, change, needle):
    p = write_inventory(tmp_path / "inv.yaml", lab, names=["lab02", "lab03"],
                        extra_top="routes: {fanout: 'lab02,lab03'}\n")
    inv = load_inventory(p)
    st = settings(tmp_path, gated=("fanout",))
    base = opts(tmp_path)
    with pytest.raises(ConfirmationRequired) as ei:
        ops.fanout(inv, "lab02,lab03", args={"command": "true"}, settings=st, options=base, mode="canary")
    kw = dict(mode=change.get("mode", "canary"), canary=change.get("canary"))
    if "batch" in change:
        kw["batch"] = change["batch"]
    o = replace(base, **change.get("options_kw", {}))
    with pytest.raises(TokenRefused) as refused:
        ops.fanout(inv, "lab02,lab03", args={"command": "true"}, settings=st, options=o,
                   confirm=ei.value.token, **kw)
    assert refused.value.reason == "wrong_scope" and needle in str(refused.value)
    # the unchanged plan is still confirmed by the same token
    run = ops.fanout(inv, "lab02,lab03", args={"command": "true"}, settings=st, options=base, mode="canary",
                     confirm=ei.value.token)
    assert run.exit_code == 0


def test_confirm_on_an_operation_that_is_not_gated_is_an_error(lab, tmp_path):
    p = write_inventory(tmp_path / "inv.yaml", lab, names=["lab02"])
    with pytest.raises(BadInput, match="not gated"):
        ops.fanout(load_inventory(p), "lab02", args={"command": "true"}, settings=settings(tmp_path),
                   options=opts(tmp_path), confirm="abcd-efgh-ijkl-mnop-qrst-uvwx")


def test_token_list_id_is_what_revoke_takes(tmp_path):
    store = TokenStore(tmp_path / "tok")
    from fleet.safety.tokens import Scope
    store.issue(Scope.of("teardown", ["lab01"], {}))
    listed = store.list()
    rec = store.revoke(listed[0]["id"])
    assert rec["id"] == listed[0]["id"] and store.list()[0]["state"] == "revoked"


def test_cli_token_list_and_revoke_by_id(tmp_path):
    inv = tmp_path / "inv.yaml"
    inv.write_text("hosts:\n  h: {address: 127.0.0.1, repos: {root: /srv/repos}}\n")
    p = inv_cmd("blow-away", "--inventory", str(inv), "--hosts", "h", "--repo", "demo")
    assert p.returncode == 3
    listed = inv_cmd("token.list", "--json")
    import json
    rid = json.loads(listed.stdout)["tokens"][0]["id"] if listed.stdout.strip().startswith("{") else \
        json.loads(listed.stdout)[0]["id"]
    r = inv_cmd("token.revoke", rid)
    assert r.returncode == 0, r.stderr
    assert "revoked" in r.stdout


def test_cli_teardown_token_confirms_across_processes(tmp_path):
    """Each CLI run is a new process: the plan's digest must not depend on object addresses."""
    from stand_ins import FakeOpenCode
    s = FakeOpenCode()
    try:
        inv = tmp_path / "inv.yaml"
        inv.write_text(f"hosts:\n  h: {{opencode: '{s.url}', repos: {{root: /srv/r}}}}\n")
        p = inv_cmd("teardown", "--inventory", str(inv), "--hosts", "h")
        assert p.returncode == 3
        import re
        tok = re.search(r"--confirm (\S+)", p.stderr).group(1)
        q = inv_cmd("teardown", "--inventory", str(inv), "--hosts", "h", "--confirm", tok)
        assert q.returncode == 0, q.stderr
    finally:
        s.close()

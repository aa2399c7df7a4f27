"""Bad values are one clear message, exit 2: flags, settings from the environment, inventories."""
from __future__ import annotations

import pytest
from conftest import inv_cmd, write_inventory

from fleet.errors import InventoryError
from fleet.inventory import load_inventory_text


@pytest.mark.parametrize("flags, needle", [
    (["--timeout", "-1"], "--timeout"), (["--timeout", "nan"], "--timeout"),
    (["--concurrency", "abc"], "--concurrency"), (["--attempts", "0"], "--attempts"),
    (["--connect-timeout", "0"], "--connect-timeout"),
])
def test_bad_fanout_numbers_exit_2_naming_the_flag(tmp_path, lab, flags, needle):
    inv = write_inventory(tmp_path / "inv.yaml", lab, names=["lab02"])
    p = inv_cmd("fanout", "--inventory", str(inv), "--all", *flags, "true")
    assert p.returncode == 2 and needle in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_bad_lines_and_dispatch_timeout(tmp_path):
    p = inv_cmd("audit.tail", "--lines", "abc")
    assert p.returncode == 2 and "--lines" in p.stderr
    inv = tmp_path / "inv.yaml"
    inv.write_text("hosts:\n  h: {opencode: 'http://127.0.0.1:9', repos: {root: /srv/r}}\n")
    p = inv_cmd("dispatch", "--inventory", str(inv), "--host", "h", "--repo", "x", "--task", "t", "--timeout", "-1")
    assert p.returncode == 2 and "--timeout" in p.stderr and "Traceback" not in p.stderr


def test_settings_from_the_environment(tmp_path, lab):
    inv = write_inventory(tmp_path / "inv.yaml", lab, names=["lab02"])
    p = inv_cmd("fanout", "--inventory", str(inv), "--all", "true", env={"INVOKE_FLEET_GATED": "fanout"})
    assert p.returncode == 3 and "--confirm" in p.stderr, p.stderr  # gated from the env: needs a token
    p = inv_cmd("token.list", env={"INVOKE_FLEET_CONCURRENCY": "abc"})
    assert p.returncode == 2 and "fleet.concurrency" in p.stderr and "Traceback" not in p.stderr


def test_inventory_nesting_names_and_size_are_bounded():
    with pytest.raises(InventoryError, match="nests"):
        load_inventory_text("hosts: " + "[" * 1200 + "]" * 1200 + "\n", "t.yaml")
    for bad in ("'epyc6\\n'", "\"epyc6\\n\""):
        with pytest.raises(InventoryError, match="plain hostname"):
            load_inventory_text(f"hosts:\n  h: {{user: {bad}}}\n", "t.yaml")
    # a big tag list reused by alias on many hosts loads (and merges tags once per host)
    tags = ", ".join(f"t{i}" for i in range(300))
    text = f"defaults: {{tags: &T [{tags}]}}\nhosts:\n" + "".join(f"  h{i}: {{tags: *T}}\n" for i in range(100))
    inv = load_inventory_text(text, "t.yaml")
    assert len(inv.hosts) == 100 and len(inv.host("h7").tags) == 300


def test_lab_up_refuses_a_directory_it_did_not_make(tmp_path):
    d = tmp_path / "project"
    d.mkdir()
    (d / "inventory.yaml").write_text("mine\n")
    (d / "sshd").mkdir()
    p = inv_cmd("lab.up", "--count", "1", "--dir", str(d))
    assert p.returncode == 2 and "not a fleet lab" in p.stderr
    assert (d / "inventory.yaml").read_text() == "mine\n" and (d / "sshd").is_dir()


def test_a_tag_that_does_not_fit_its_text_is_an_inventory_error():
    """Found by the fuzz test: PyYAML raises ValueError for `!!int http`."""
    with pytest.raises(InventoryError, match="does not fit its tag"):
        load_inventory_text("hosts:\n  h: {port: !!int http}\n", "t.yaml")

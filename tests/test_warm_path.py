"""The warm path's costs, as behaviour: a kept connection does not wait on Nagle (TCP_NODELAY,
as OpenSSH sets it), old run folders are pruned to ``artifacts_keep`` (after the answer when a
long-lived caller runs them), a full disk is still refused before anything is sent although the
write check no longer syncs, and a reloaded inventory is the same one."""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from conftest import inv_cmd, opts, test_settings, wait_for, write_inventory

from fleet.app import Fleet
from fleet.inventory import load_inventory
from fleet.ssh.artifacts import LATEST, prune
from fleet.ssh.warm import ConnectionPool


def _run_dirs(base: Path) -> list[str]:
    return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.is_symlink() and p.name[:8].isdigit())


def test_a_kept_connection_has_nagle_off(lab, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", lab, names={"lab01", "lab02"})
    pool = ConnectionPool(idle=60)
    fl = Fleet(str(inv), settings=test_settings(tmp_path), pool=pool, use_service=False)
    try:
        run = fl.fanout("lab01,lab02", "true", no_canary=True, options=opts(tmp_path))
        assert all(r.outcome.value == "SUCCESS" for r in run.results), run.to_dict()
        socks = [s.conn.client.get_transport().sock for free in pool._free.values() for s, _ in free]
        assert len(socks) == 2
        for s in socks:
            assert isinstance(s, socket.socket)
            assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        fl.close()
        pool.close()


def test_prune_keeps_the_newest_runs_and_what_fleet_did_not_make(tmp_path):
    base = tmp_path / "art"
    base.mkdir()
    names = [f"2026120{i}-000000-aaaa" for i in range(1, 7)]
    for n in names:
        (base / n).mkdir()
        (base / n / "summary.json").write_text("{}")
    (base / "20260101-000000-nosummary").mkdir()  # not a finished fleet run: kept
    (base / "notes").mkdir()  # not fleet's
    (base / LATEST).symlink_to(base / names[0])  # latest points at the oldest: kept
    gone = prune(base, 3)
    assert sorted(gone) == names[1:3]
    assert _run_dirs(base) == sorted([names[0], *names[3:], "20260101-000000-nosummary"])
    assert (base / "notes").is_dir()
    assert prune(base, 3) == []  # nothing more to do
    assert prune(base, 0) == []  # 0 keeps all


def test_a_long_lived_caller_prunes_old_runs_after_answering(lab, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", lab, names={"lab01"})
    pool = ConnectionPool(idle=60)
    fl = Fleet(str(inv), settings=test_settings(tmp_path), pool=pool, use_service=False)
    try:
        for _ in range(5):
            run = fl.fanout("lab01", "true", no_canary=True, options=opts(tmp_path, artifacts_keep=2))
            assert run.results[0].outcome.value == "SUCCESS"
        base = tmp_path / "art"
        assert wait_for(lambda: len(_run_dirs(base)) == 2, timeout=10), _run_dirs(base)
        assert os.path.realpath(base / LATEST) == run.artifacts_dir
        assert json.loads((Path(run.artifacts_dir) / "summary.json").read_text())["finished"] is True
    finally:
        fl.close()
        pool.close()


def test_a_cli_run_has_pruned_when_it_exits(lab, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", lab, names={"lab01"})
    art = tmp_path / "cli-art"
    for _ in range(3):
        p = inv_cmd("fanout", "--inventory", str(inv), "--hosts", "lab01", "--no-canary", "true",
                    env={"INVOKE_FLEET_ARTIFACTS_DIR": str(art), "INVOKE_FLEET_ARTIFACTS_KEEP": "1",
                         "FLEET_NO_SERVICE": "1"})
        assert p.returncode == 0, p.stderr
        assert len(_run_dirs(art)) == 1


def test_an_edited_inventory_is_read_again_and_an_unchanged_one_is_the_same(tmp_path, monkeypatch):
    p = tmp_path / "inventory.yaml"
    p.write_text("hosts:\n  a: {address: 10.0.0.1}\n")
    first = load_inventory(p)
    assert load_inventory(p) == first
    time.sleep(0.01)
    p.write_text("hosts:\n  a: {address: 10.0.0.2}\n  b: {}\n")
    second = load_inventory(p)
    assert [h.address for h in second.hosts] == ["10.0.0.2", "b"]
    monkeypatch.setenv("HOME", str(tmp_path / "elsewhere"))
    p.write_text("hosts:\n  a: {identity_file: ~/.ssh/k}\n")
    assert load_inventory(p).hosts[0].identity_file == str(tmp_path / "elsewhere" / ".ssh" / "k")

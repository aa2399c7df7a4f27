"""The warm path's costs, as behaviour: a kept connection does not wait on Nagle (TCP_NODELAY,
as OpenSSH sets it), old run folders are pruned to ``artifacts_keep`` (after the answer when a
long-lived caller runs them), a full disk is still refused before anything is sent although the
write check no longer syncs, and a reloaded inventory is the same one."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import inv_cmd, opts, serve_process, test_settings, wait_for, write_inventory
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.app import Fleet
from fleet.inventory import load_inventory
from fleet.serve import wire
from fleet.ssh.artifacts import LATEST, prune
from fleet.ssh.warm import ConnectionPool

ROOT = Path(__file__).resolve().parent.parent


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


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4), max_leaves=20)


@given(json_values)
@settings(max_examples=300, deadline=None)
def test_the_thin_clients_json_is_json(value):
    text = wire.dumps(value)
    assert text == json.dumps(value)
    assert wire.loads(text) == json.loads(text)
    assert wire.loads(text.encode() + b"\n") == value


def test_the_thin_clients_json_refuses_what_json_refuses():
    for bad in ("", "{", '{"a": 1} x', "[1,]", "nul"):
        with pytest.raises(ValueError):
            wire.loads(bad)


def test_a_served_call_loads_no_json_socket_hashlib_or_invoke_in_the_client(lab, tmp_path):
    """What the thin client imports is what every served call pays before it reaches the service."""
    inv = write_inventory(tmp_path / "inv.yaml", lab, names={"lab01"})
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import os, sys\n"
        "def leave(code):\n"  # the client leaves with os._exit: here it lets the probe look first
        "    raise SystemExit(code)\n"
        "os._exit = leave\n"
        "sys.argv = ['fleet', 'fanout', '--inventory', sys.argv[1], '--hosts', 'lab01', 'true']\n"
        "try:\n"
        "    from fleet.cli.entry import main\n"
        "    main()\n"
        "    code = 0\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "heavy = sorted(m for m in ('json', 'socket', 'hashlib', 'invoke', 'paramiko', 're', 'enum', 'typing')\n"
        "               if m in sys.modules)\n"
        "print('HEAVY', ','.join(heavy), 'CODE', code, file=sys.stderr)\n")
    sock = Path(os.environ["INVOKE_FLEET_JOURNAL"]).parent / "run" / "fleet.sock"
    with serve_process(sock):
        for _ in range(2):  # the second: the settings answer comes from the cache
            p = subprocess.run([sys.executable, str(probe), str(inv)], capture_output=True, text=True,
                               timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
        line = [ln for ln in p.stderr.splitlines() if ln.startswith("HEAVY")]
        assert line == ["HEAVY  CODE 0"], p.stderr
        assert "lab01" in p.stdout, p.stdout


def test_sessions_with_persist_starts_the_service_for_the_next_call_and_it_leaves_when_idle(tmp_path):
    """As fanout's first call does with 'persist' set (ControlMaster auto): sessions answers from
    the servers this once, and the service it started is there for the next call."""
    inv = tmp_path / "inv.yaml"
    inv.write_text("hosts:\n  h1: {address: 127.0.0.1, opencode: {url: 'http://127.0.0.1:9'}}\n")
    sock = Path(os.environ["INVOKE_FLEET_JOURNAL"]).parent / "run" / "fleet.sock"
    fleet = str(Path(sys.executable).parent / "fleet")
    env = {**os.environ, "INVOKE_FLEET_PERSIST": "3"}
    assert not sock.exists()
    p = subprocess.run([fleet, "sessions", "--inventory", str(inv), "--json"], env=env, capture_output=True,
                       text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert "Traceback" not in p.stderr, p.stderr
    assert "h1" in p.stdout + p.stderr
    assert wait_for(lambda: sock.exists(), 15), "no service started"
    st = subprocess.run([fleet, "serve", "status", "--json"], env=env, capture_output=True, text=True, timeout=30)
    assert st.returncode == 0 and json.loads(st.stdout)["running"] is True, st.stdout + st.stderr
    assert wait_for(lambda: not sock.exists(), 30), "the service did not leave after 'persist' idle seconds"
    without = subprocess.run([fleet, "sessions", "--inventory", str(inv), "--json"], capture_output=True,
                             text=True, timeout=60, stdin=subprocess.DEVNULL)
    time.sleep(1.5)
    assert not sock.exists() and "h1" in without.stdout + without.stderr  # no persist: nothing started

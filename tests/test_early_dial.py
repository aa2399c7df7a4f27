"""The early dial (fleet.ssh.early): a repeated cold CLI fanout connects its hosts while the program
loads, and the run takes those connections: one login per host, never two, the same results and
preflight, nothing accepted that the run would not accept, nothing left open, and a host that
failed early costs no extra attempt."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SilentServer, logins, opts, test_settings, wait_for, write_inventory

from fleet.app import Fleet
from fleet.ssh import early

FLEET = str(Path(sys.executable).parent / "fleet")


@pytest.fixture(autouse=True)
def no_early_left():
    yield
    early.close()
    early._note_to = None  # noqa: SLF001 - module state of one CLI call


def _fanout(tmp_path: Path, inv: Path, names: set[str], **kw):
    fl = Fleet(str(inv), settings=test_settings(tmp_path), use_service=False)
    try:
        return fl.fanout(",".join(sorted(names)), "true", no_canary=True, options=opts(tmp_path, **kw))
    finally:
        fl.close()


def _noted(tmp_path: Path, inv: Path, names: set[str], **kw) -> Path:
    """Run once as a CLI call does (its hosts noted), and return the note."""
    cache = tmp_path / "early.json"
    early.arm(str(cache))
    run = _fanout(tmp_path, inv, names, **kw)
    assert cache.exists(), run.to_dict()
    assert set(json.loads(cache.read_text())["hosts"]) == names
    return cache


def test_the_run_takes_the_early_connections_one_login_per_host(lab, tmp_path):
    names = {"lab01", "lab02", "lab03"}
    inv = write_inventory(tmp_path / "inv.yaml", lab, names=names)
    cache = _noted(tmp_path, inv, names)
    before = logins(lab)
    early.begin(str(cache))
    e = early._current  # noqa: SLF001
    assert e is not None
    run = _fanout(tmp_path, inv, names)
    assert [r.outcome.value for r in run.results] == ["SUCCESS"] * 3, run.to_dict()
    assert all(r.preflight is not None and r.preflight.ok for r in run.results)  # as a cold run reports it
    assert e.made == 3
    assert logins(lab) - before == 3  # the run dialled nobody again
    log = (Path(run.artifacts_dir) / "fanout.log").read_text()
    assert log.count("preflight_ok host=") == 3


def test_what_the_run_does_not_take_is_closed(lab, tmp_path):
    names = {"lab01", "lab02", "lab03"}
    inv = write_inventory(tmp_path / "inv.yaml", lab, names=names)
    cache = _noted(tmp_path, inv, names)
    early.begin(str(cache))
    e = early._current  # noqa: SLF001
    assert e is not None and e.listed.wait(30)
    futs = dict(e._dials)  # noqa: SLF001
    assert all(f.result(timeout=30)[1] is not None for f in futs.values())  # all three connected
    run = _fanout(tmp_path, inv, {"lab01"})  # another selection: lab02 and lab03 are not taken
    assert [r.outcome.value for r in run.results] == ["SUCCESS"]
    early.close()
    left = [f.result()[1] for k, f in futs.items() if k[0] != "lab01"]
    assert len(left) == 2
    assert wait_for(lambda: not any(s.conn and s.conn.client.get_transport()
                                    and s.conn.client.get_transport().is_active() for s in left), 10)


def test_the_early_dial_never_accepts_a_new_host_key(lab, tmp_path):
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    inv = write_inventory(tmp_path / "inv.yaml", lab, names={"lab01"})
    inv.write_text(inv.read_text().replace(f"known_hosts: {lab.known_hosts}", f"known_hosts: {kh}"))
    cache = _noted(tmp_path, inv, {"lab01"}, accept_new_host_keys=True)  # the flag was given
    assert kh.read_text().strip()  # the run accepted it
    kh.write_text("")
    before = logins(lab)
    early.begin(str(cache))
    e = early._current  # noqa: SLF001
    assert e is not None and e.listed.wait(30)
    assert [f.result(timeout=30)[1] for f in e._dials.values()] == [None]  # noqa: SLF001
    assert kh.read_text() == "" and e.made == 0 and logins(lab) == before
    run = _fanout(tmp_path, inv, {"lab01"}, accept_new_host_keys=True)  # the run decides, as always
    assert [r.outcome.value for r in run.results] == ["SUCCESS"], run.to_dict()
    assert kh.read_text().strip()


def test_a_failed_early_dial_is_the_first_attempt_not_an_extra_one(lab, tmp_path):
    silent = SilentServer()
    try:
        extra = f"  mute: {{address: 127.0.0.1, port: {silent.port}}}\n"
        inv = write_inventory(tmp_path / "inv.yaml", lab, names=set(), extra_hosts=extra)
        kw = dict(connect_timeout=1.0, connect_timeout_given=True, attempts=2, retry_delay=0.1)
        cache = _noted(tmp_path, inv, {"mute"}, **kw)
        cold = len(silent.conns)
        early.begin(str(cache))
        run = _fanout(tmp_path, inv, {"mute"}, **kw)
        r = run.results[0]
        assert r.outcome.value != "SUCCESS" and r.attempts == 2, run.to_dict()
        assert len(silent.conns) - cold == cold == 2  # the same TCP connections as a cold run: no third
    finally:
        silent.close()


def test_a_changed_inventory_is_not_dialled_early(lab, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", lab, names={"lab01", "lab02"})
    cache = _noted(tmp_path, inv, {"lab01", "lab02"})
    write_inventory(inv, lab, names={"lab01"})  # another selection may follow
    early.begin(str(cache))
    assert early._current is None  # noqa: SLF001


def test_a_repeated_cli_call_dials_early_and_reports_the_same(lab, tmp_path):
    names = {"lab01", "lab02", "lab03", "lab04"}
    inv = write_inventory(tmp_path / "inv.yaml", lab, names=names)
    env = {**os.environ, "FLEET_NO_SERVICE": "1", "INVOKE_FLEET_ARTIFACTS_DIR": str(tmp_path / "art")}
    cmd = [FLEET, "fanout", "--inventory", str(inv), "--all", "--json", "--no-canary", "true"]

    def run() -> tuple[dict, int]:
        before = logins(lab)
        p = subprocess.run(cmd, env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=120,
                           stdin=subprocess.DEVNULL)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout), logins(lab) - before
    first, n1 = run()
    notes = list((Path(os.environ["HOME"]) / ".cache" / "fleet" / "early").iterdir())
    assert len(notes) == 1 and set(json.loads(notes[0].read_text())["hosts"]) == names
    second, n2 = run()
    assert n1 == n2 == 4  # one login per host, early or not
    assert [(r["host"], r["outcome"], r["exit_code"]) for r in first["results"]] == \
        [(r["host"], r["outcome"], r["exit_code"]) for r in second["results"]]
    assert all(r["preflight"]["status"] == "OK" for r in second["results"])

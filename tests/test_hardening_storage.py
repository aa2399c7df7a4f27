"""Issue 21: a full disk or a bad path is one line with the path and what to do, exit 2, and nothing
is sent that could not be recorded (6); values that would overflow are bad input (8).

The full disk is real: a 64 KiB tmpfs mounted inside the test's temp dir, filled, unmounted after.
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from conftest import inv_cmd, write_inventory

from fleet.audit.journal import Journal
from fleet.audit.records import SessionRecords
from fleet.audit.trail import AuditTrail
from fleet.errors import BadInput, StorageError
from fleet.inventory import load_inventory
from fleet.ops.fanout import fanout
from fleet.safety.tokens import Scope, TokenStore
from fleet.settings import Settings
from fleet.ssh.runner import FanoutOptions


@pytest.fixture
def full_disk(tmp_path):
    """A directory on a file system with no space left (and an empty subdirectory made before)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a tmpfs")
    d = tmp_path / "full"
    d.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(d)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (d / "made-before").mkdir()
        fd = os.open(d / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        yield d
    finally:
        subprocess.run(["umount", str(d)], capture_output=True)


def one_line(p: subprocess.CompletedProcess) -> str:
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert "Traceback" not in p.stderr and "unexpected" not in p.stderr, p.stderr
    return lines[0]


def test_journal_records_trail_and_tokens_say_the_disk_is_full(full_disk):
    for write in (lambda: Journal(full_disk / "journal.jsonl").append({"type": "event"}),
                  lambda: SessionRecords(full_disk / "made-before" / "sessions.jsonl").add({"host": "h"}),
                  lambda: AuditTrail(full_disk / "j2.jsonl", post=False).record("op", "h", "ok"),
                  lambda: TokenStore(full_disk / "made-before" / "tok").issue(Scope.of("x", ["h"], {}))):
        with pytest.raises(StorageError) as ei:
            write()
        msg = str(ei.value)
        assert str(full_disk) in msg and "No space left" in msg and "free some space" in msg, msg
        assert ei.value.exit_code == 2 and "\n" not in msg


def test_a_fanout_sends_nothing_when_its_artifacts_cannot_be_written(lab, tmp_path, full_disk):
    inv = write_inventory(tmp_path / "inv.yaml", lab, names=["lab05"])
    marker = tmp_path / "ran"
    for art in (full_disk / "art", full_disk / "made-before"):
        p = inv_cmd("fanout", "--inventory", str(inv), "--hosts", "lab05", f"touch {marker}",
                    env={"INVOKE_FLEET_ARTIFACTS_DIR": str(art)})
        line = one_line(p)
        assert p.returncode == 2 and str(art) in line and "No space left" in line and "artifacts_dir" in line, line
        assert not marker.exists(), "the command ran though its run could not be recorded"
    # the same through the library: fleet's own error, not an OSError
    st = Settings(token_dir=str(tmp_path / "tok"), journal=str(tmp_path / "j.jsonl"))
    with pytest.raises(StorageError):
        fanout(load_inventory(inv), "lab05", args={"command": f"touch {marker}"}, settings=st,
               options=FanoutOptions(artifacts_dir=str(full_disk / "lib"), user_known_hosts=None))
    assert not marker.exists()


def test_a_gated_run_with_a_full_journal_is_one_line(lab, tmp_path, full_disk):
    inv = write_inventory(tmp_path / "inv.yaml", lab, names=["lab05"])
    p = inv_cmd("blow-away", "--inventory", str(inv), "--hosts", "lab05", "--repo", "demo",
                env={"INVOKE_FLEET_JOURNAL": str(full_disk / "journal.jsonl")})
    line = one_line(p)
    assert p.returncode == 2 and "journal" in line and "No space left" in line, line


def test_an_artifacts_path_through_a_file_is_one_line(lab, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", lab, names=["lab05"])
    marker = tmp_path / "ran"
    p = inv_cmd("fanout", "--inventory", str(inv), "--hosts", "lab05", f"touch {marker}",
                env={"INVOKE_FLEET_ARTIFACTS_DIR": "/dev/null/x"})
    line = one_line(p)
    assert p.returncode == 2 and "/dev/null/x" in line and "artifacts_dir" in line, line
    assert not marker.exists()


@pytest.mark.parametrize("env,flag", [({"INVOKE_FLEET_TOKEN_TTL": "9999999999"}, []),
                                      ({"INVOKE_FLEET_COMMAND_TIMEOUT": "1e300"}, []),
                                      ({"INVOKE_FLEET_CONNECT_TIMEOUT": "1e300"}, []),
                                      ({}, ["--timeout", "1e300"])])
def test_values_that_would_overflow_are_bad_input(tmp_path, env, flag):
    inv = tmp_path / "inv.yaml"
    inv.write_text("hosts:\n  here: {auth: local}\n")
    p = inv_cmd("fanout", "--inventory", str(inv), "--hosts", "here", *flag, "echo hi", env=env)
    line = one_line(p)
    assert p.returncode == 2 and "write a" in line, line
    with pytest.raises(BadInput):
        TokenStore(tmp_path / "tok", ttl=9999999999).issue(Scope.of("x", ["h"], {}))


def test_an_expired_token_says_how_long_it_was_issued_for(tmp_path):
    now = [1_000_000.0]
    issued = TokenStore(tmp_path, ttl=60, clock=lambda: now[0])
    scope = Scope.of("teardown", ["h"], {})
    tok = issued.issue(scope)
    now[0] += 100
    later = TokenStore(tmp_path, ttl=600, clock=lambda: now[0])  # the setting changed since
    with pytest.raises(Exception) as ei:
        later.verify(tok, scope)
    msg = str(ei.value)
    assert "expired 40s ago" in msg and "60s" in msg and "600" not in msg, msg

"""A long-lived process (`fleet serve`, `fleet mcp`) keeps the ssh_config it read and reads it
again only when something it was read from changed: any file (size, times, inode, mode, owner),
any Include glob's matches, $HOME. What the person writes in their config holds on the next call,
as with ssh, which reads it on every run."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from fleet.errors import BadInput
from fleet.ssh import sshmemo, sshread
from fleet.ssh.config import load_ssh_config

T0 = 1_700_000_000 * 10**9  # file times set by hand: two writes never share one


@pytest.fixture
def files(tmp_path, monkeypatch, mocker):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(sshread, "RACY_NS", 0)  # times are set by hand here (the racy rule: below)
    (tmp_path / "conf.d").mkdir()
    main = tmp_path / "config"
    put(main, f"Include {tmp_path}/conf.d/*.conf\nHost app\n  Port 2201\n", 1)
    put(tmp_path / "conf.d" / "a.conf", "Host app\n  User alice\n", 1)
    return tmp_path, main, mocker.spy(sshmemo, "read_files")


def put(p: Path, text: str, tick: int) -> None:
    p.write_text(text)
    os.utime(p, ns=(T0 + tick * 10**9, T0 + tick * 10**9))


def user_port(main: Path, name: str = "app") -> tuple[str, str]:
    d = load_ssh_config(str(main)).lookup(name)
    return d["user"], d["port"]


def test_an_unchanged_config_is_read_once_and_every_change_is_seen(files):
    d, main, loads = files
    assert user_port(main) == user_port(main) == ("alice", "2201")
    assert loads.call_count == 1  # the second call stat'ed the files and ran the glob, nothing more
    put(d / "conf.d" / "a.conf", "Host app\n  User bobby\n", 2)  # same size, another time
    assert user_port(main) == ("bobby", "2201") and loads.call_count == 2
    put(d / "conf.d" / "0.conf", "Host app\n  User first\n", 3)  # a new file the glob matches
    assert user_port(main) == ("first", "2201") and loads.call_count == 3
    (d / "conf.d" / "0.conf").unlink()
    assert user_port(main) == ("bobby", "2201") and loads.call_count == 4
    put(main, f"Include {d}/conf.d/*.conf\nHost app\n  Port 2202\n", 4)
    assert user_port(main) == ("bobby", "2202") and loads.call_count == 5
    assert user_port(main) == ("bobby", "2202") and loads.call_count == 5


def test_a_file_that_becomes_unsafe_or_a_new_home_is_read_again(files, monkeypatch):
    d, main, loads = files
    user_port(main)
    os.chmod(d / "conf.d" / "a.conf", 0o666)  # ssh refuses an included file others can write
    with pytest.raises(BadInput, match="Bad owner or permissions"):
        user_port(main)
    os.chmod(d / "conf.d" / "a.conf", 0o644)
    assert user_port(main) == ("alice", "2201")
    calls = loads.call_count
    other = d / "home2"
    (other / ".ssh").mkdir(parents=True)
    put(other / ".ssh" / "extra", "Host app\n  User homer\n", 5)
    put(main, "Include extra\nHost app\n  Port 2201\n", 6)  # relative: in ~/.ssh, whichever HOME is
    monkeypatch.setenv("HOME", str(other))
    assert user_port(main) == ("homer", "2201") and loads.call_count == calls + 1


def test_a_file_written_in_the_last_seconds_is_read_again_until_it_stands_still(files, monkeypatch):
    d, main, loads = files
    monkeypatch.setattr(sshread, "RACY_NS", 2_000_000_000)
    main.write_text(main.read_text())  # just now: its times may not tell the next write apart
    user_port(main)
    user_port(main)
    assert loads.call_count == 2
    os.utime(main, ns=(T0, T0))
    monkeypatch.setattr(sshread.time, "time_ns", lambda: os.stat(main).st_ctime_ns + 3 * 10**9)
    user_port(main)
    user_port(main)
    assert loads.call_count == 3  # once it has stood still for two seconds, it is kept


def host(name: str, **explicit) -> "object":
    from fleet.inventory.model import Host

    return Host(name=name, address=explicit.get("address", name), port=explicit.get("port", 22),
                user=explicit.get("user"), explicit=frozenset(explicit))


def test_a_hosts_resolution_is_remembered_for_the_same_question_only(files, monkeypatch, mocker):
    from fleet.ssh import config as C

    d, main, _ = files
    put(main, "Host app\n  Port 2201\n  IdentityFile ${FLEET_KEY_DIR}/id_%n\n", 7)
    asked = mocker.spy(C, "_resolve")
    monkeypatch.setenv("FLEET_KEY_DIR", "/keys/a")
    cfg = load_ssh_config(str(main))
    first = C.resolve_host(host("app"), cfg)
    assert C.resolve_host(host("app"), load_ssh_config(str(main))) is first and asked.call_count == 1
    assert first.port == 2201 and first.identities == ("/keys/a/id_app",)
    monkeypatch.setenv("FLEET_KEY_DIR", "/keys/b")  # a variable the config names: another answer
    assert C.resolve_host(host("app"), cfg).identities == ("/keys/b/id_app",) and asked.call_count == 2
    monkeypatch.setenv("FLEET_UNRELATED", "x")  # one it does not name: the same
    assert C.resolve_host(host("app"), cfg).identities == ("/keys/b/id_app",) and asked.call_count == 2
    assert C.resolve_host(host("app", port=2299), cfg).port == 2299  # the inventory's own value wins
    other = d / "home3"
    (other / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(other))  # another user's view (~, %d): asked again
    C.resolve_host(host("app"), cfg)
    assert asked.call_count == 4


def test_a_config_that_runs_commands_is_applied_afresh_each_time_as_ssh_does(files, mocker):
    from fleet.ssh import config as C

    d, main, _ = files
    ran = d / "ran"
    put(main, f"Match exec \"echo x >> {ran}; test -e {d}/on\"\n  Port 2202\nHost *\n  Port 2201\n", 8)
    cfg = load_ssh_config(str(main))
    assert [C.resolve_host(host("app"), cfg).port for _ in range(2)] == [2201, 2201]
    (d / "on").write_text("")
    assert C.resolve_host(host("app"), cfg).port == 2202
    assert ran.read_text() == "x\nx\nx\n"  # its command ran for every resolution

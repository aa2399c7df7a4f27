"""One round trip less per command, against the lab's real sshd: a kept connection gets the next
command's session channel opened ahead (a spare), and a host that waits for the canary opens its
command's channel while it waits; the command then sends only its exec request. The relay's
round-trip count (lab.up --rtt) is what ssh and fleet are compared by in bench/e2e_ssh.py."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import opts, running_lab, wait_for
from test_modes import settings

from fleet import Fleet
from fleet.lab.relay import relay_stats
from fleet.ssh.session import SSHSession


def _kept(fl: Fleet) -> list[SSHSession]:
    return [s for lst in fl.pool._free.values() for s, _ in lst]  # noqa: SLF001 - the pool's own state


def test_a_kept_connection_runs_its_next_command_on_the_channel_opened_ahead(lab, tmp_path):
    o = opts(tmp_path)
    with Fleet(str(lab.inventory), settings=settings(tmp_path)) as fl:
        first = fl.fanout("lab01,lab02", "echo one", no_canary=True, options=o)
        assert first.exit_code == 0
        assert wait_for(lambda: len(_kept(fl)) == 2 and all(s.spare is not None for s in _kept(fl)), 10)
        spares = [s.spare for s in _kept(fl)]
        assert all(ch.active and not ch.closed for ch in spares)
        second = fl.fanout("lab01,lab02", "echo two", no_canary=True, options=o)
        assert [r.stdout for r in second.results] == ["two\n", "two\n"]
        assert all(ch.closed for ch in spares)  # each ran its host's command (and was closed after it)
        assert fl.pool.dials == 2 and fl.pool.reused == 2  # same connections, no new login
    with Fleet(str(lab.inventory), settings=settings(tmp_path)) as fl:
        fl.pool.spares = False  # off: nothing is opened ahead, each command opens its own channel
        for _ in range(2):
            assert fl.fanout("lab01,lab02", "true", no_canary=True, options=o).exit_code == 0
        assert not wait_for(lambda: any(s.spare is not None for s in _kept(fl)), 1.0)


def _session_opening_slowly(mocker, opened, release):
    """An SSHSession whose transport's open_session waits for ``release`` (a channel's round trip)."""
    ch = mocker.Mock(active=True, closed=False)

    def open_session(timeout):
        opened.append(1)
        release.wait(5)
        return ch
    t = mocker.Mock(is_active=lambda: True, open_session=open_session)
    sess = SSHSession(mocker.Mock(), mocker.Mock(), mocker.Mock(), mocker.Mock(), connect_timeout=5)
    sess.conn = mocker.Mock(client=mocker.Mock(get_transport=lambda: t))
    return sess, ch


def test_a_command_that_comes_while_its_spare_is_on_its_way_waits_for_it_and_all_are_asked_at_once(mocker):
    import threading

    from fleet.ssh import warm
    opened: list[int] = []
    release = threading.Event()
    sessions = [_session_opening_slowly(mocker, opened, release) for _ in range(20)]
    for sess, _ in sessions:
        warm.open_spare_soon(sess)
    # twenty kept connections (a fanout's): every spare is asked for before any answer came
    assert wait_for(lambda: len(opened) == 20, 5, 0.01), len(opened)
    got: list = []
    taker = threading.Thread(target=lambda: got.append(sessions[0][0].take_spare()))
    taker.start()  # the next command comes before its spare's answer
    release.set()
    taker.join(10)
    assert got == [sessions[0][1]]  # it ran on the spare, not on a channel of its own
    assert all(wait_for(lambda s=s: s.spare is not None, 5, 0.01) for s, _ in sessions[1:])


def test_hosts_waiting_for_the_canary_open_their_channel_meanwhile(lab, tmp_path, mocker):
    o = opts(tmp_path)
    prepared = mocker.spy(SSHSession, "prepare")
    used = mocker.spy(SSHSession, "take_spare")
    with Fleet(str(lab.inventory), settings=settings(tmp_path), warm=False) as fl:
        run = fl.fanout("lab01,lab02,lab03", "sleep 0.3; hostname >/dev/null", mode="canary", canary="lab01",
                        options=o)
    assert run.exit_code == 0 and [r.host for r in run.results] == ["lab01", "lab02", "lab03"]
    who = sorted(call.args[0].host.name for call in prepared.call_args_list)
    assert who == ["lab02", "lab03"]  # the canary never waits, the others did
    got = {call.args[0].host.name: ret is not None for call, ret in zip(used.call_args_list, used.spy_return_list,
                                                                        strict=True)}
    assert got == {"lab01": True, "lab02": True, "lab03": True}  # all: the channel came with the auth (sshd)


def test_the_relay_counts_the_round_trips_a_client_waited_for(tmp_path):
    with running_lab(tmp_path / "lab", 1, rtt=10) as lb:
        stats = relay_stats(lb)
        p = subprocess.run(["ssh", "-F", str(lb.ssh_config), "-o", "KexAlgorithms=curve25519-sha256", "lab01", "true"],
                           capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)
        assert p.returncode == 0, p.stderr
        assert wait_for(lambda: stats.exists() and stats.read_text().strip(), 5)
        seen = [json.loads(x) for x in stats.read_text().splitlines()]
    assert len(seen) == 1 and seen[0]["up"] > 1000 and seen[0]["down"] > 1000
    # TCP, banner, KEX, NEWKEYS/service, auth (none, key query, signature), channel, exec: about ten
    assert 8 <= seen[0]["turns"] <= 14, seen


def _turns_of_one_fanout(lb, inv, tmp_path, count: bool = True) -> tuple[object, list[int]]:
    stats = relay_stats(lb)
    stats.unlink(missing_ok=True)
    with Fleet(str(inv), settings=settings(tmp_path), warm=False) as fl:
        run = fl.fanout("lab01", "true", no_canary=True, options=opts(tmp_path))
    if not count:
        return run, []
    assert wait_for(lambda: stats.exists() and stats.read_text().strip(), 5)
    return run, [json.loads(x)["turns"] for x in stats.read_text().splitlines()]


EARLY = "userauth is OK (the request went with it)"


def test_public_key_auth_takes_one_round_trip_and_other_keys_still_work(tmp_path, caplog):
    import logging

    from conftest import write_inventory
    caplog.set_level(logging.DEBUG, logger="paramiko.transport")
    with running_lab(tmp_path / "lab", 1, rtt=10) as lb:
        run, turns = _turns_of_one_fanout(lb, lb.inventory, tmp_path)
        assert run.exit_code == 0 and EARLY in caplog.text  # the signed request went with the service request
        # TCP, banner, KEX, service request + signed key request, channel, exec, then stdin's EOF
        # and the close (not waited for, but the relay counts them): 7 or 8 (8 or 9 before; plain ssh 11)
        assert turns[0] <= 8, turns
        caplog.clear()
        # an RSA key keeps paramiko's two steps (its signature algorithm depends on the server's list)
        rsa = tmp_path / "id_rsa"
        subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(rsa)], check=True)
        with open(lb.dir / "authorized_keys", "a") as f:
            f.write((tmp_path / "id_rsa.pub").read_text())
        inv = write_inventory(tmp_path / "rsa.yaml", lb, names=["lab01"])
        inv.write_text(inv.read_text().replace(str(lb.key), str(rsa)))
        run, _ = _turns_of_one_fanout(lb, inv, tmp_path, count=False)  # (this inventory goes around the relay)
        assert run.exit_code == 0, run.results[0].error
        assert EARLY not in caplog.text and "userauth is OK" in caplog.text
        # a key the server does not know: refused, said as an authentication failure, never retried
        other = tmp_path / "id_other"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
        inv.write_text(inv.read_text().replace(str(rsa), str(other)))
        run, _ = _turns_of_one_fanout(lb, inv, tmp_path, count=False)
        r = run.results[0]
        assert r.outcome.value == "FAILURE" and r.error_kind == "auth" and r.attempts == 1, (r.error_kind, r.error)


def test_the_first_commands_channel_comes_with_the_authentication_and_a_refused_first_key_is_no_harm(
        lab, tmp_path, caplog):
    """The session channel asked for right behind the signed request: the command needs no open
    of its own; when the first key is refused, sshd answers the early request 'unimplemented',
    the next key logs in and the command runs on a channel of its own."""
    import logging
    caplog.set_level(logging.DEBUG, logger="paramiko.transport")
    used = []
    orig = SSHSession.take_spare

    def spy(self):
        ch = orig(self)
        used.append(ch is not None)
        return ch
    SSHSession.take_spare = spy  # type: ignore[method-assign]
    try:
        with Fleet(str(lab.inventory), settings=settings(tmp_path), warm=False) as fl:
            assert fl.fanout("lab01", "true", no_canary=True, options=opts(tmp_path)).exit_code == 0
        assert used == [True]  # the command ran on the early channel
        wrong = tmp_path / "id_wrong"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True,
                       stdin=subprocess.DEVNULL)
        cfg = tmp_path / "ssh_config"
        text = Path(lab.ssh_config).read_text()
        cfg.write_text(text.replace(f"  IdentityFile {lab.key}", f"  IdentityFile {wrong}\n  IdentityFile {lab.key}"))
        inv = tmp_path / "inv.yaml"
        inv.write_text(Path(lab.inventory).read_text().replace("ssh_config: ssh_config", f"ssh_config: {cfg}")
                       .replace("known_hosts: known_hosts", f"known_hosts: {lab.known_hosts}"))
        used.clear()
        caplog.clear()
        with Fleet(str(inv), settings=settings(tmp_path), warm=False) as fl:
            run = fl.fanout("lab01", "echo second-key", no_canary=True, options=opts(tmp_path))
        assert run.exit_code == 0 and run.results[0].stdout == "second-key\n", run.results[0].error
        assert used == [False]  # the early channel went with the refused key: a channel of its own
        assert caplog.text.count("userauth is OK") == 2 and "Authentication (publickey) failed" in caplog.text
    finally:
        SSHSession.take_spare = orig  # type: ignore[method-assign]


def test_spares_held_for_a_call_open_when_it_ends_and_the_next_call_runs_on_them(lab, tmp_path, mocker):
    """A served call holds the spares of the connections its hosts give back until its client has
    its answer (the channels' opening would cost the call's last hosts CPU); then they open, and
    the next call sends only its exec requests."""
    o = opts(tmp_path)
    used = mocker.spy(SSHSession, "take_spare")
    with Fleet(str(lab.inventory), settings=settings(tmp_path)) as fl:
        assert fl.fanout("lab01,lab02", "true", no_canary=True, options=o).exit_code == 0
        assert wait_for(lambda: len(_kept(fl)) == 2 and all(s.spare is not None for s in _kept(fl)), 10)
        with fl.pool.spares_after():
            with fl.pool.spares_after():  # nested (two calls at once): the last one out opens them
                assert fl.fanout("lab01,lab02", "true", no_canary=True, options=o).exit_code == 0
            assert len(_kept(fl)) == 2
            assert not wait_for(lambda: any(s.spare is not None for s in _kept(fl)), 0.5)  # none while held
            assert all(s.due.is_set() for s in _kept(fl))  # and none awaited: a use now opens its own
        assert wait_for(lambda: all(s.spare is not None for s in _kept(fl)), 10)
        used.reset_mock()
        used.spy_return_list.clear()
        third = fl.fanout("lab01,lab02", "echo three", no_canary=True, options=o)
        assert [r.stdout for r in third.results] == ["three\n", "three\n"]
        assert len(used.spy_return_list) == 2 and all(ch is not None for ch in used.spy_return_list)
        assert fl.pool.dials == 2  # the same two connections throughout

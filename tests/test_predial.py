"""The pre-dial (fleet.ssh.predial): a repeated cold `fleet fanout` has its hosts' TCP connections
up and its SSH version line said while it loads, so the handshake starts two round trips sooner.
Checked on sockets of the test's own (what is dialled, what the run takes, what is closed, when
nothing may be dialled) and end to end against the lab's sshd behind the relay, which counts the
round trips a client waited for."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading

import pytest
from conftest import logins, running_lab, wait_for

from fleet.cli import entry
from fleet.ssh import predial

FLEET = os.path.join(os.path.dirname(sys.executable), "fleet")


@pytest.fixture()
def fresh(monkeypatch):
    """The module's process-wide state, as a new process has it, and back after the test."""
    for name, value in (("_armed", False), ("_noted", []), ("_files", {}), ("_banner", None), ("_ahead", None),
                        ("_was", None)):
        monkeypatch.setattr(predial, name, value)
    yield
    if predial._ahead is not None:  # noqa: SLF001
        predial._ahead.close()  # noqa: SLF001


class Listener:
    """A loopback TCP server that keeps what each connection sent until it closed."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.got: list[bytes] = []
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            i = len(self.got)
            self.got.append(b"")
            threading.Thread(target=self._read, args=(c, i), daemon=True).start()

    def _read(self, c: socket.socket, i: int) -> None:
        while True:
            try:
                data = c.recv(4096)
            except OSError:
                data = b""
            if not data:
                self.got[i] += b"<EOF>"
                return
            self.got[i] += data

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


def _record(cache, key, files, addrs, banner="SSH-2.0-test_1.0"):
    lines = [predial.FORMAT, banner]
    lines += [f"file {predial.stamp(p)} {p}" for p in files]
    lines += [f"addr {ip} {port}" for ip, port in addrs]
    entry._keep(str(cache), key, "\n".join(lines))  # as the console script keeps what finish() gave


def _planned(tmp_path, addrs):
    """An inventory file and a cache that names ``addrs`` for the call ``["k"]`` planned from it."""
    plan = tmp_path / "inventory.yaml"
    plan.write_text("hosts: {}\n")
    cache = tmp_path / "cache"
    _record(cache, ["k"], [str(plan)], addrs)
    return plan, cache


def _begin(cache, key):
    predial.begin(entry._cached(str(cache), key))  # as the console script starts it


def test_what_the_cache_names_is_dialled_ahead_taken_by_the_run_and_the_rest_closed(tmp_path, fresh):
    a, b = Listener(), Listener()
    try:
        plan, cache = _planned(tmp_path, [("127.0.0.1", a.port), ("127.0.0.1", b.port)])
        _begin(cache, ["k"])
        assert wait_for(lambda: a.got == [b"SSH-2.0-test_1.0\r\n"] and b.got == [b"SSH-2.0-test_1.0\r\n"], 5, 0.01)
        sock = predial.connect(b"127.0.0.1", a.port, 5)
        assert isinstance(sock, predial.PreDialled) and sock.banner == "SSH-2.0-test_1.0"
        a.conns[0].sendall(b"hello")  # the run's socket is the one a accepted
        assert sock.recv(5) == b"hello"
        again = predial.connect(b"127.0.0.1", a.port, 5)  # one socket per noted dial: a new one now
        assert not isinstance(again, predial.PreDialled)
        assert wait_for(lambda: len(a.got) == 2, 5, 0.01)
        predial.sent("SSH-2.0-test_1.0")
        predial.depends(str(plan))
        plan_text = predial.finish()
        assert wait_for(lambda: b.got == [b"SSH-2.0-test_1.0\r\n<EOF>"], 5, 0.01)  # not taken: closed at the end
        assert a.got[0] == b"SSH-2.0-test_1.0\r\n"  # taken: still the run's
        kept = plan_text.splitlines()
        assert kept[:2] == [predial.FORMAT, "SSH-2.0-test_1.0"]
        assert kept[2:] == [f"file {predial.stamp(str(plan))} {plan}", f"addr 127.0.0.1 {a.port}",
                            f"addr 127.0.0.1 {a.port}"]  # this run's dials, for the next call
        sock.close()
        again.close()
    finally:
        a.close()
        b.close()


def test_nothing_is_dialled_when_a_file_of_the_plan_changed_or_the_call_is_another(tmp_path, fresh):
    a = Listener()
    try:
        plan, cache = _planned(tmp_path, [("127.0.0.1", a.port)])
        plan.write_text("hosts: {other: {}}\n")  # the plan may select other hosts now
        _begin(cache, ["k"])
        _record(cache, ["k"], [str(plan)], [("127.0.0.1", a.port)])
        _begin(cache, ["another call"])
        assert predial._ahead is None  # noqa: SLF001
        assert not wait_for(lambda: a.got, 0.5, 0.05)
    finally:
        a.close()


def test_one_address_gets_no_more_sockets_ahead_than_sshd_lets_wait_unauthenticated(tmp_path, fresh):
    a = Listener()
    try:
        plan, cache = _planned(tmp_path, [("127.0.0.1", a.port)] * 12)  # twelve names of one sshd
        _begin(cache, ["k"])
        assert wait_for(lambda: len(a.got) == predial.MAX_SAME, 5, 0.01)
        assert not wait_for(lambda: len(a.got) > predial.MAX_SAME, 0.5, 0.05)
        assert predial.MAX_SAME < 10  # below MaxStartups' default start (10:30:100)
    finally:
        a.close()


def test_a_refused_pre_dial_leaves_the_run_its_own_connect(tmp_path, fresh):
    s = socket.create_server(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nobody listens there now
    plan, cache = _planned(tmp_path, [("127.0.0.1", port)])
    _begin(cache, ["k"])
    with pytest.raises(ConnectionRefusedError):
        predial.connect(b"127.0.0.1", port, 5)  # the run's own connect, and its own error


HOOKED = """
import sys, time
from pathlib import Path
from fleet.cli import entry

def seen():
    return sum(p.read_text().count("Connection from") for p in Path(where).glob("sshd/*/sshd.log"))

where, before, wait, load = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), entry.light_invoke

def loading():  # the console script's first import: what has reached the hosts by now?
    end = time.monotonic() + wait
    while seen() < before + 2 and time.monotonic() < end:
        time.sleep(0.01)
    print(f"before-import {seen() - before} paramiko={'paramiko' in sys.modules}", file=sys.stderr)
    load()

entry.light_invoke = loading
sys.argv = ["fleet", *sys.argv[4:]]
entry.main()
"""


def _sshd_connections(lb) -> int:
    return sum(p.read_text().count("Connection from") for p in lb.dir.glob("sshd/*/sshd.log"))


def test_a_repeated_cli_fanout_has_its_hosts_dialled_before_it_loads_and_logs_in_once(tmp_path):
    with running_lab(tmp_path / "lab", 2, rtt=10) as lb:

        def run(wait: float, env=None) -> str:
            before, accepted = _sshd_connections(lb), logins(lb)
            e = {**os.environ, "HOME": str(tmp_path), "FLEET_NO_SERVICE": "1", **(env or {})}
            p = subprocess.run([sys.executable, "-c", HOOKED, str(lb.dir), str(before), str(wait), "fanout",
                                "--inventory", str(lb.inventory), "--all", "--json", "true"], env=e,
                               capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
            assert p.returncode == 0, p.stderr
            assert [r["outcome"] for r in json.loads(p.stdout)["results"]] == ["SUCCESS", "SUCCESS"]
            assert logins(lb) == accepted + 2 and _sshd_connections(lb) == before + 2  # one connection each
            return p.stderr.strip().splitlines()[0]

        assert run(0.5) == "before-import 0 paramiko=False"  # nothing known yet: dialled as ever
        assert list((tmp_path / ".cache" / "fleet" / "predial").iterdir())
        assert run(10) == "before-import 2 paramiko=False"  # the same call: its hosts reached while it loads
        assert run(0.5, {"FLEET_NO_PREDIAL": "1"}) == "before-import 0 paramiko=False"
        (lb.dir / "inventory.yaml").touch()  # a file of the plan changed: the plan may be another one
        assert run(0.5) == "before-import 0 paramiko=False"
        assert run(10) == "before-import 2 paramiko=False"

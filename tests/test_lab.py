"""The lab is real: OpenSSH's own client logs in to every host; lab.down leaves nothing behind."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from fleet.lab import _pid_alive, lab_down, lab_up


def test_lab_hosts_accept_plain_openssh_and_down_leaves_no_process(tmp_path):
    d = tmp_path / "lab"
    lab = lab_up(5, d)
    assert len(lab.hosts) == 5 and lab.inventory.exists()
    # plain OpenSSH with the lab's own ssh_config, by inventory name (lab01 is 'localhost')
    addresses = set()
    for h in lab.hosts:
        p = subprocess.run(["ssh", "-F", str(lab.ssh_config), h.name, "echo $SSH_CONNECTION"],
                           capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        assert p.returncode == 0, p.stderr
        addresses.add(p.stdout.split()[2])
    assert len(addresses) == 5  # one loopback address per host
    assert lab.hosts[0].address == "localhost"
    pids = list(lab.sshd_pids)
    assert pids and all(_pid_alive(p) for p in pids)
    stopped = lab_down(d)
    assert set(pids) <= set(stopped)
    assert not any(_pid_alive(p) for p in pids)
    assert not _mine(d)  # no sshd of ours left: none has the lab dir in its command line


def test_every_lab_host_has_two_real_repos_in_its_home(tmp_path):
    """As on a user's machine: ~/repos holds several git repositories (the agents' servers run in
    that home, which is not a git project)."""
    d = tmp_path / "lab"
    lab = lab_up(3, d)
    try:
        for h in lab.hosts:
            root = os.path.realpath(h.repos_root)
            assert not os.path.exists(os.path.join(os.path.dirname(root), ".git"))
            for repo in ("demo", "site"):
                p = subprocess.run(["git", "-C", os.path.join(root, repo), "log", "--oneline"], capture_output=True,
                                   text=True, timeout=30)
                assert p.returncode == 0 and "lab: initial commit" in p.stdout, p.stderr
    finally:
        lab_down(d)


def test_lab_up_refuses_a_second_lab_in_the_same_dir(tmp_path):
    import pytest

    from fleet.lab import LabError

    d = tmp_path / "lab"
    lab_up(1, d)
    try:
        with pytest.raises(LabError, match="already running"):
            lab_up(1, d)
    finally:
        lab_down(d)


def test_lab_does_not_touch_user_ssh_dir(tmp_path):
    home_ssh = os.path.expanduser("~/.ssh/known_hosts")
    before = open(home_ssh).read() if os.path.exists(home_ssh) else None
    d = tmp_path / "lab"
    lab_up(2, d)
    lab_down(d)
    after = open(home_ssh).read() if os.path.exists(home_ssh) else None
    assert before == after


# ------------------------------------------------------------------ lab.up --rtt: a lab with latency

FLEET = str(Path(sys.executable).parent / "fleet")
RTT = 40.0  # ms


def _fleet(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([FLEET, *args], cwd=str(cwd), capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def _ssh_true(cfg: Path, name: str, *extra: str) -> float:
    t = time.monotonic()
    p = subprocess.run(["ssh", "-F", str(cfg), *extra, name, "true"], capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr  # BatchMode + StrictHostKeyChecking yes: a host-key prompt fails here
    return time.monotonic() - t


def _mine(d: Path) -> list[int]:
    """Processes whose command line names the lab dir."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = open(f"/proc/{entry}/cmdline", "rb").read().decode(errors="replace")
            except OSError:
                continue
            if str(d) in cmd and _pid_alive(int(entry)):
                out.append(int(entry))
    return out


def test_lab_up_rtt_slows_plain_ssh_fleet_fanout_goes_through_and_down_stops_the_relay(tmp_path):
    d = tmp_path / "lab"
    p = _fleet("lab.up", "--count", "2", "--dir", str(d), "--rtt", f"{RTT:g}", cwd=tmp_path)
    try:
        assert p.returncode == 0 and "40 ms RTT relay" in p.stdout, p.stdout + p.stderr
        st = json.loads((d / "lab.json").read_text())
        relay = st["relay_pid"]
        assert relay in st["pids"] and _pid_alive(relay)  # outlived the lab.up command, in a session of its own
        assert os.getsid(relay) == relay and "fleet.lab.relay" in open(f"/proc/{relay}/cmdline").read()
        cfg = d / "ssh_config"
        # the same host straight to its sshd (-p wins over the config's relay port; same HostKeyAlias)
        # vs through the relay: every one of ssh's round trips pays RTT (the lower bound comes from
        # the relay's delay only: TCP's handshake, banners, kex, auth, channel, exec, exit)
        for h in st["hosts"]:
            assert h["relay_port"] and h["relay_port"] != h["port"]
            assert f"HostKeyAlias [{h['address']}]:{h['port']}" in cfg.read_text()
            direct = min(_ssh_true(cfg, h["name"], "-p", str(h["port"])) for _ in range(2))
            relayed = _ssh_true(cfg, h["name"])
            assert relayed - direct >= 4 * RTT / 1000, (h["name"], direct, relayed)
        # fleet, by the lab's inventory (host keys found under the hosts' own names: no prompt)
        t = time.monotonic()
        f = _fleet("fanout", "--inventory", str(d / "inventory.yaml"), "--all", "--json", "true", cwd=tmp_path)
        took = time.monotonic() - t
        assert f.returncode == 0, f.stdout[-1500:] + f.stderr
        res = json.loads(f.stdout)["results"]
        assert sorted(r["host"] for r in res) == ["lab01", "lab02"] and {r["outcome"] for r in res} == {"SUCCESS"}
        assert took >= 4 * RTT / 1000  # it went through the relay
    finally:
        q = _fleet("lab.down", "--dir", str(d), cwd=tmp_path)
    assert q.returncode == 0, q.stderr
    assert not _mine(d)  # no relay (nor sshd) of this lab is left
    assert not (d / "relay.pid").exists()


def test_lab_up_again_with_another_rtt_replaces_the_relay_and_rtt_0_removes_it(tmp_path):
    import pytest

    from fleet.lab import LabError

    d = tmp_path / "lab"
    lab = lab_up(1, d, rtt=RTT)
    try:
        first, sshd = lab.relay_pid, list(lab.sshd_pids)
        assert first and _pid_alive(first)
        with pytest.raises(LabError, match="already running"):
            lab_up(1, d, rtt=RTT)  # the same lab again: refused as before
        lab = lab_up(1, d, rtt=10)  # the hosts keep running; only the relay changes
        assert lab.sshd_pids == sshd and lab.relay_pid not in (None, first) and not _pid_alive(first)
        assert f"relay_pid\": {lab.relay_pid}" in (d / "lab.json").read_text()
        assert f"Port {lab.hosts[0].relay_port}" in lab.ssh_config.read_text()
        _ssh_true(lab.ssh_config, "lab01")
        second = lab.relay_pid
        lab = lab_up(1, d)  # rtt 0: straight to the sshd again, host key under its usual name
        assert lab.relay_pid is None and not _pid_alive(second) and lab.sshd_pids == sshd
        text = lab.ssh_config.read_text()
        assert "HostKeyAlias" not in text and f"Port {lab.hosts[0].port}" in text
        _ssh_true(lab.ssh_config, "lab01")
    finally:
        lab_down(d)
    assert not _mine(d)


def test_lab_up_rtt_puts_the_agents_behind_the_relay_too(tmp_path):
    import httpx
    import yaml

    d = tmp_path / "lab"
    lab = lab_up(1, d, agents=1, rtt=RTT)
    try:
        agent = next(a for a in lab.agents if a.get("role") == "agent")
        inv = yaml.safe_load(lab.inventory.read_text())
        url = inv["hosts"]["lab01"]["opencode"]["url"]
        direct = agent["direct_url"]
        assert url == agent["url"] != direct
        relay_cmd = open(f"/proc/{lab.relay_pid}/cmdline").read().split("\0")
        assert f"127.0.0.1:{url.rsplit(':', 1)[1]}=127.0.0.1:{direct.rsplit(':', 1)[1]}" in relay_cmd
        pw = open(agent["password_file"]).read().strip()
        t = time.monotonic()
        r = httpx.get(url + "/global/health", auth=("opencode", pw), timeout=10)
        assert r.status_code == 200 and r.json().get("healthy")
        assert time.monotonic() - t >= 2 * RTT / 1000  # a new connection's handshake, then the request
    finally:
        lab_down(d)
    assert not _mine(d)

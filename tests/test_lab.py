"""The lab is real: OpenSSH's own client logs in to every host; lab.down leaves nothing behind."""
import os
import subprocess

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
    # no sshd of ours left: none has the lab dir in its command line
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = open(f"/proc/{entry}/cmdline", "rb").read().decode(errors="replace")
            except OSError:
                continue
            assert str(d) not in cmd


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

"""The lab is real: OpenSSH's own client logs in to every host; lab.down leaves nothing behind."""
import os
import subprocess

from fleet.lab import _pid_alive, lab_down, lab_up


def test_lab_hosts_accept_plain_openssh_and_down_leaves_no_process(tmp_path):
    d = tmp_path / "lab"
    lab = lab_up(5, d)
    assert len(lab.hosts) == 5 and lab.inventory.exists()
    for h in lab.hosts:
        p = subprocess.run(
            ["ssh", "-F", "/dev/null", "-i", str(lab.key), "-p", str(h.port), "-o", "BatchMode=yes",
             "-o", f"UserKnownHostsFile={lab.known_hosts}", "-o", "StrictHostKeyChecking=yes",
             "-o", "GlobalKnownHostsFile=/dev/null", f"{lab.user}@127.0.0.1", "true"],
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        assert p.returncode == 0, p.stderr
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


def test_lab_up_refuses_a_second_lab_in_the_same_dir(tmp_path):
    from fleet.lab import LabError
    import pytest

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

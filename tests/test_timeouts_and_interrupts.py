"""Timeouts and interrupts on their own (ClusterShell's habit): after a --timeout or a Ctrl-C,
nothing is left running on the host (root and non-root logins), the summary is still printed,
and a Ctrl-C during a handshake with a silent peer ends at once."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, ctrl_c_once_running, write_inventory
from test_ssh_world import _marker, no_process, opts

from fleet.inventory import load_inventory
from fleet.results import FanoutOutcome
from fleet.ssh.runner import fanout_hosts


@pytest.mark.parametrize("who", ["login_user", "other_user"])
def test_timeout_leaves_no_remote_process(lab, tmp_path, who):
    user = lab.user if who == "login_user" else (lab.other_user or lab.user)
    m1, m2 = _marker(), _marker()
    p = write_inventory(tmp_path / "inv.yaml", lab, names=["lab04"])
    p.write_text(p.read_text().replace(f"  user: {lab.user}", f"  user: {user}"))
    inv = load_inventory(p)
    # a background child and a foreground one (';' keeps bash from exec'ing the last sleep)
    r = fanout_hosts(inv, list(inv.hosts), f"whoami; sleep {m2} & sleep {m1}; true",
                     opts(tmp_path, command_timeout=2)).results[0]
    assert r.outcome == FanoutOutcome.TIMEOUT and "killed" in r.error
    assert r.stdout.strip() == user  # what was printed before the timeout is kept
    assert no_process(f"^sleep {m1}") and no_process(f"^sleep {m2}")
    if who == "other_user" and lab.other_user:
        assert user != "root"


def test_ctrl_c_leaves_no_remote_process(lab, tmp_path):
    m = _marker()
    p = write_inventory(tmp_path / "inv.yaml", lab, names=["lab05", "lab06"])
    env = dict(os.environ, INVOKE_FLEET_MODE="canary")
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "--search-root", str(ROOT), "fanout", "--inventory",
                             str(p), "--all", "--canary=lab05",
                             f"sleep {m}; true"], cwd=str(ROOT), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    out, err = ctrl_c_once_running(proc, f"^sleep {m}")
    assert proc.returncode == 130, err
    assert b"ABORTED" in out + err
    assert no_process(f"^sleep {m}")


def test_ctrl_c_during_a_silent_handshake_ends_promptly(lab, tmp_path, silent_port):
    """Ctrl-C while a peer accepts TCP and never speaks SSH: no waiting out the connect timeout."""
    inv = tmp_path / "inv.yaml"
    inv.write_text(f"hosts:\n  mute: {{address: 127.0.0.1, port: {silent_port}, user: x, "
                   f"identity_file: {lab.key}}}\n")
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "--search-root", str(ROOT), "fanout", "--inventory",
                             str(inv), "--all", "--connect-timeout", "120", "--no-preflight", "true"],
                            cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    time.sleep(2.0)
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=15)  # a hang would wait out the 120 s connect timeout
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and b"ABORTED" in out, err

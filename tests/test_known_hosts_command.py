"""ssh_config's ``KnownHostsCommand``, with plain OpenSSH as the oracle: keys it prints are known
(the files may know nothing), a command that fails ends the connection, one that prints another
key makes it a changed key; it is run as ssh runs it, with the same words and tokens, once to
order the host-key algorithms and once to check the key (the invocation logs are compared)."""
from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import opts

from fleet.inventory import load_inventory
from fleet.ssh.runner import fanout_hosts


def test_known_hosts_command_gets_the_verdicts_of_plain_ssh(lab, tmp_path):
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True,
                   stdin=subprocess.DEVNULL)
    (tmp_path / "other_kh").write_text("* " + " ".join((tmp_path / "other.pub").read_text().split()[:2]) + "\n")
    script = tmp_path / "khcmd"
    # logs how it was called (the words after the program, tokens expanded), then prints the lines
    # of the file it is given that name the host asked about
    script.write_text("#!/bin/sh\nlog=$1; file=$2; shift 2\necho \"$*\" >> \"$log\"\n"
                      "[ \"$file\" = fail ] && exit 3\ngrep -F -- \"$3\" \"$file\" || true\n")
    script.chmod(0o755)
    kh = Path(str(lab.known_hosts))
    cases = {"lab01": kh, "lab02": tmp_path / "other_kh", "lab03": "fail"}
    logs = {h: (tmp_path / f"{h}.ssh.log", tmp_path / f"{h}.fleet.log") for h in cases}

    def config(which: int) -> Path:
        cfg = tmp_path / f"ssh_config.{which}"
        cfg.write_text("".join(f"Host {h}\n  UserKnownHostsFile {empty}\n  GlobalKnownHostsFile /dev/null\n"
                               f"  StrictHostKeyChecking yes\n"
                               f"  KnownHostsCommand {script} {logs[h][which]} {f} %I %H %t %f %h %p %r\n\n"
                               for h, f in cases.items()) + Path(lab.ssh_config).read_text())
        return cfg
    ssh_cfg, fleet_cfg = config(0), config(1)
    inv = tmp_path / "inventory.yaml"
    inv.write_text(Path(lab.inventory).read_text().replace("ssh_config: ssh_config", f"ssh_config: {fleet_cfg}")
                   .replace("known_hosts: known_hosts", f"known_hosts: {empty}"))
    ssh = {h: subprocess.run(["ssh", "-F", str(ssh_cfg), "-o", "BatchMode=yes", h, "true"], capture_output=True,
                             text=True, stdin=subprocess.DEVNULL, timeout=30) for h in cases}
    loaded = load_inventory(inv)
    run = fanout_hosts(loaded, [loaded.host(h) for h in cases], "true", opts(tmp_path, attempts=1))
    got = {r.host: r for r in run.results}
    for h in cases:
        assert (ssh[h].returncode == 0) == got[h].ok, (h, ssh[h].stderr, got[h].error)
    assert [h for h in cases if got[h].ok] == ["lab01"]
    assert "KnownHostsCommand" in got["lab03"].error and "exited 3" in got["lab03"].error
    # it prints another key of the same type for every host: a changed key, to ssh and to fleet
    assert got["lab02"].error_kind == "host_key_changed" and "HAS CHANGED" in ssh["lab02"].stderr
    for h in ("lab01", "lab02"):  # called as ssh calls it: ORDER, then HOSTNAME with the key shown
        ssh_calls, fleet_calls = (p.read_text().splitlines() for p in logs[h])
        assert fleet_calls == ssh_calls and [c.split()[0] for c in ssh_calls] == ["ORDER", "HOSTNAME"], \
            (ssh_calls, fleet_calls)
    assert empty.read_text() == ""  # nothing was written anywhere

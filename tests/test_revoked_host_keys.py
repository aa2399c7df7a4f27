"""ssh_config's ``RevokedHostKeys``, with plain OpenSSH as the oracle: a host key listed in the
file is refused, a file that cannot be read refuses every key (as ssh does), a binary KRL is
refused with what to do (fleet cannot read one: never accepted where ssh would refuse), and
``none`` or another key's line refuses nothing. One ssh_config, one Host entry per case."""
from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import opts

from fleet.inventory import load_inventory
from fleet.results import FanoutOutcome
from fleet.ssh.runner import fanout_hosts


def test_revoked_host_keys_get_the_verdicts_of_plain_ssh(lab, tmp_path):
    host_pub = Path(lab.dir) / "sshd" / "00" / "host_ed25519.pub"  # lab01..lab05 share the first sshd
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True,
                   stdin=subprocess.DEVNULL)
    (tmp_path / "lists-it").write_text("# revoked\n" + host_pub.read_text())
    (tmp_path / "lists-another").write_text((tmp_path / "other.pub").read_text())
    subprocess.run(["ssh-keygen", "-q", "-k", "-f", str(tmp_path / "krl"), str(host_pub)], check=True,
                   stdin=subprocess.DEVNULL)
    cases = {"lab01": str(tmp_path / "lists-it"), "lab02": str(tmp_path / "lists-another"),
             "lab03": str(tmp_path / "missing"), "lab04": str(tmp_path / "krl"), "lab05": "none"}
    cfg = tmp_path / "ssh_config"
    cfg.write_text("".join(f"Host {h}\n  RevokedHostKeys {f}\n\n" for h, f in cases.items())
                   + Path(lab.ssh_config).read_text())
    inv = tmp_path / "inventory.yaml"
    inv.write_text(Path(lab.inventory).read_text().replace("ssh_config: ssh_config", f"ssh_config: {cfg}")
                   .replace("known_hosts: known_hosts", f"known_hosts: {lab.known_hosts}"))
    ssh = {h: subprocess.run(["ssh", "-F", str(cfg), "-o", "BatchMode=yes", h, "true"], capture_output=True,
                             text=True, stdin=subprocess.DEVNULL, timeout=30) for h in cases}
    run = fanout_hosts(load_inventory(inv), [load_inventory(inv).host(h) for h in cases], "true", opts(tmp_path))
    got = {r.host: r for r in run.results}
    for h in cases:
        assert (ssh[h].returncode == 0) == got[h].ok, (h, ssh[h].stderr, got[h].error)
    assert [h for h in cases if got[h].ok] == ["lab02", "lab05"]  # and ssh says the same (above)
    assert "revoked by file" in ssh["lab01"].stderr
    for h in ("lab01", "lab03", "lab04"):
        assert got[h].outcome == FanoutOutcome.FAILURE and got[h].error_kind == "host_key_revoked", got[h]
        assert got[h].attempts == 1 and "nothing was run" in got[h].error
    assert f"{tmp_path / 'lists-it'}:2" in got["lab01"].error
    assert "cannot be read" in got["lab03"].error
    assert "key revocation list (KRL)" in got["lab04"].error and "RevokedHostKeys none" in got["lab04"].error

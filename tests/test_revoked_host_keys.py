"""ssh_config's ``RevokedHostKeys``, with plain OpenSSH as the oracle: a host key listed in the
file is refused, a file that cannot be read refuses every key (as ssh does), a key revocation
list (``ssh-keygen -k``) refuses the keys it revokes (listed, or by SHA256 fingerprint) and no
other, and ``none`` refuses nothing. One ssh_config, one Host entry per case."""
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
    subprocess.run(["ssh-keygen", "-q", "-k", "-f", str(tmp_path / "krl"), str(host_pub)], check=True,
                   stdin=subprocess.DEVNULL)

    def fp(pub: Path) -> str:
        return subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(pub)], capture_output=True, text=True,
                              check=True).stdout.split()[1]
    h6 = next(h for h in lab.hosts if h.name == "lab06")
    second = next(c.parent / "host_ed25519.pub" for c in (Path(lab.dir) / "sshd").glob("*/sshd_config")
                  if f":{h6.port}\n" in c.read_text())  # the key of lab06's sshd
    for name, spec in (("krl-another", f"hash: {fp(tmp_path / 'other.pub')}\n"),
                       ("krl-by-hash", f"hash: {fp(second)}\n")):
        (tmp_path / f"{name}.spec").write_text(spec)
        subprocess.run(["ssh-keygen", "-q", "-k", "-f", str(tmp_path / name), str(tmp_path / f"{name}.spec")],
                       check=True, stdin=subprocess.DEVNULL)
    cases = {"lab01": str(tmp_path / "lists-it"), "lab02": str(tmp_path / "krl-another"),
             "lab03": str(tmp_path / "missing"), "lab04": str(tmp_path / "krl"), "lab05": "none",
             "lab06": str(tmp_path / "krl-by-hash")}
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
    for h in ("lab01", "lab03", "lab04", "lab06"):
        assert got[h].outcome == FanoutOutcome.FAILURE and got[h].error_kind == "host_key_revoked", got[h]
        assert got[h].attempts == 1 and "nothing was run" in got[h].error
    assert f"{tmp_path / 'lists-it'}:2" in got["lab01"].error
    assert "cannot be read" in got["lab03"].error
    assert f"its key is revoked by the key revocation list {tmp_path / 'krl'}" in got["lab04"].error
    assert "revoked by the key revocation list" in got["lab06"].error

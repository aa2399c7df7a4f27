"""SSH host certificates and ``@cert-authority`` lines, with plain OpenSSH as the oracle.

One lab sshd host plus a few sshd processes of this module's own on 127.0.0.1, each showing one
host certificate (signed with ``ssh-keygen -s CA -h``): valid, expired, not yet valid, for
another name, and valid RSA and ECDSA ones signed by RSA and ECDSA CAs. Every case is one
``Host`` entry of one ssh_config with its own known_hosts; one fanout runs them all at once and
plain ``ssh -F that -o BatchMode=yes NAME true`` gives the verdict fleet must match.
"""
from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleet.inventory import load_inventory
from fleet.lab import lab_down, lab_up
from fleet.lab.base import free_ports
from fleet.lab.hosts import find_sshd
from fleet.results import FanoutOutcome
from fleet.ssh.knownhosts import hash_name
from fleet.ssh.options import FanoutOptions
from fleet.ssh.runner import fanout_hosts

CERT = "-cert-v01@openssh.com"


def keygen(path: Path, kind: str = "ed25519") -> str:
    """A new key pair at ``path``; its public line (type and base64)."""
    extra = ["-b", "2048"] if kind == "rsa" else []
    subprocess.run(["ssh-keygen", "-q", "-t", kind, *extra, "-N", "", "-C", path.name, "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


def sign(ca: Path, host_pub: Path, cert: Path, principals: str, validity: str) -> None:
    """``ssh-keygen -s CA -h``: a host certificate for ``host_pub`` written to ``cert``."""
    tmp = host_pub.parent / f"{cert.stem}-tmp.pub"
    tmp.write_text(host_pub.read_text())
    subprocess.run(["ssh-keygen", "-q", "-s", str(ca), "-I", cert.stem, "-h", "-n", principals, "-V", validity,
                    str(tmp)], check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    tmp.with_name(f"{tmp.stem}-cert.pub").rename(cert)


# server -> (host key type, CA, principals, validity)
SERVERS = {
    "valid": ("ed25519", "ca", "localhost,web.internal", "-1h:+1h"),
    "expired": ("ed25519", "ca", "localhost", "20200101:20200102"),
    "future": ("ed25519", "ca", "localhost", "+52w:+104w"),
    "othername": ("ed25519", "ca", "other.example,db.internal", "-1h:+1h"),
    "rsa": ("rsa", "ca_rsa", "localhost", "-1h:+1h"),
    "ecdsa": ("ecdsa", "ca_ecdsa", "localhost", "-1h:+1h"),
    "two": ("ed25519", "ca", "localhost", "-1h:+1h"),  # and a plain RSA host key
}


@dataclass
class World:
    lab: object
    dir: Path
    ports: dict[str, int]
    keys: dict[str, str]   # name -> "type base64" (CAs and host keys)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostcerts")
    lb = lab_up(1, d / "lab")
    try:
        base = lb.dir / "sshd" / "00"
        template = (base / "sshd_config").read_text().splitlines()
        keys = {c: keygen(d / c, k) for c, k in
                (("ca", "ed25519"), ("other_ca", "ed25519"), ("ca_rsa", "rsa"), ("ca_ecdsa", "ecdsa"))}
        hostkey = {"ed25519": base / "host_ed25519", "rsa": d / "host_rsa", "ecdsa": d / "host_ecdsa"}
        keys["host_rsa"], keys["host_ecdsa"] = keygen(hostkey["rsa"], "rsa"), keygen(hostkey["ecdsa"], "ecdsa")
        keys["host_ed25519"] = " ".join((base / "host_ed25519.pub").read_text().split()[:2])
        ports = dict(zip(SERVERS, free_ports(len(SERVERS)), strict=True))
        for name, (kind, ca, principals, validity) in SERVERS.items():
            # Kept under the lab's sshd/ folder: lab_down stops these sshd processes too.
            sd = lb.dir / "sshd" / f"cert-{name}"
            sd.mkdir()
            cert = sd / "host-cert.pub"
            sign(d / ca, hostkey[kind].with_suffix(".pub"), cert, principals, validity)
            lines = [ln for ln in template if not ln.startswith(("ListenAddress", "HostKey", "PidFile"))]
            lines += [f"ListenAddress 127.0.0.1:{ports[name]}", f"HostKey {hostkey[kind]}",
                      f"HostCertificate {cert}", f"PidFile {sd / 'sshd.pid'}"]
            lines += [f"HostKey {hostkey['rsa']}"] if name == "two" else []
            (sd / "sshd_config").write_text("\n".join(lines) + "\n")
            subprocess.run([find_sshd(), "-f", str(sd / "sshd_config"), "-E", str(sd / "sshd.log")], check=True,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, timeout=20)
        _wait_listening(ports.values())
        yield World(lb, d, ports, keys)
    finally:
        lab_down(d / "lab")


def _wait_listening(ports, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    for p in ports:
        while True:
            try:
                socket.create_connection(("127.0.0.1", p), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)


# case -> (server, known_hosts lines, extra ssh_config lines, accepted?, fleet error kind, fleet message part)
# In known_hosts lines: {name} is the host's known_hosts name ([localhost]:port), {hashed} that hashed,
# {ca}... the public keys of World.keys.
CASES = {
    "valid": ("valid", ["@cert-authority {name} {ca}"], "", True, "", ""),
    "valid_hashed_pattern": ("valid", ["@cert-authority {hashed} {ca}"], "", True, "", ""),
    "valid_ca_for_host_without_port": ("valid", ["@cert-authority localhost {ca}"], "", True, "", ""),
    "valid_despite_stale_plain_line": ("valid", ["{name} {other_ca}", "@cert-authority * {ca}"], "", True, "", ""),
    "valid_rsa_cert_rsa_ca": ("rsa", ["@cert-authority * {ca_rsa}"], "", True, "", ""),
    "valid_ecdsa_cert_ecdsa_ca": ("ecdsa", ["@cert-authority * {ca_ecdsa}"], "", True, "", ""),
    "alias_is_a_principal": ("valid", ["@cert-authority web.internal {ca}"], "HostKeyAlias web.internal", True,
                             "", ""),
    "expired": ("expired", ["@cert-authority * {ca}"], "", False, "unknown_host_key",
                "has expired (valid until 2020-01-02"),
    "not_yet_valid": ("future", ["@cert-authority * {ca}"], "", False, "unknown_host_key", "is not valid yet"),
    "wrong_principal": ("othername", ["@cert-authority * {ca}"], "", False, "unknown_host_key",
                        "has principals other.example,db.internal, which do not include localhost"),
    "alias_not_a_principal": ("valid", ["@cert-authority * {ca}"], "HostKeyAlias app.internal", False,
                              "unknown_host_key",
                              "has principals localhost,web.internal, which do not include app.internal"),
    "other_ca": ("valid", ["@cert-authority * {other_ca}"], "", False, "unknown_host_key",
                 "is not signed by a trusted CA"),
    "ca_pattern_not_matching": ("valid", ["@cert-authority *.example.com {ca}"], "", False, "unknown_host_key",
                                "is for *.example.com, not [localhost]:"),
    "ca_revoked": ("valid", ["@cert-authority * {ca}", "@revoked * {ca}"], "", False, "host_key_revoked",
                   "REVOKED CA"),
    "cert_key_revoked": ("valid", ["@cert-authority * {ca}", "@revoked * {host_ed25519}"], "", False,
                         "host_key_revoked", "REVOKED host key"),
    "expired_cert_plain_key_known": ("expired", ["{name} {host_ed25519}", "@cert-authority * {ca}"], "", True,
                                     "", ""),
    "plain_key_only": ("valid", ["{name} {host_ed25519}"], "", True, "", ""),
    # HostKeyAlgorithms: an explicit list is asked for as written, so a known key of another type
    # does not count; +/- keep preferring what known_hosts has; none the server has: no handshake
    "hostkeyalgorithms_without_the_known_type": ("two", ["{name} {host_ed25519}"],
                                                 "HostKeyAlgorithms rsa-sha2-512,rsa-sha2-256", False,
                                                 "unknown_host_key", "ssh-rsa"),
    "hostkeyalgorithms_plus_prefers_the_known": ("two", ["{name} {host_rsa}"], "HostKeyAlgorithms +ssh-rsa", True,
                                                 "", ""),
    "hostkeyalgorithms_none_the_server_has": ("rsa", ["{name} {host_rsa}"], "HostKeyAlgorithms ssh-ed25519", False,
                                              "connect_failed", "fix HostKeyAlgorithms in ssh_config"),
    "casignaturealgorithms_refuses_the_ca": ("valid", ["@cert-authority * {ca}"],
                                             "CASignatureAlgorithms rsa-sha2-512,rsa-sha2-256", False,
                                             "unknown_host_key", "CASignatureAlgorithms does not allow"),
}


@pytest.fixture(scope="module")
def verdicts(world, tmp_path_factory):
    """Every case at once: fleet's results (one fanout) and plain ssh's (in parallel)."""
    d = tmp_path_factory.mktemp("certcases")
    lb = world.lab
    cfg, names = [], {}
    for case, (server, lines, extra, *_rest) in CASES.items():
        port = world.ports[server]
        name = f"[localhost]:{port}"
        names[case] = name
        kh = d / f"kh-{case}"
        kh.write_text("".join(ln.format(name=name, hashed=hash_name(name), **world.keys) + "\n" for ln in lines))
        cfg += [f"Host {case}", "  HostName localhost", f"  Port {port}", f"  User {lb.user}",
                f"  IdentityFile {lb.key}", "  IdentitiesOnly yes", f"  UserKnownHostsFile {kh}",
                "  GlobalKnownHostsFile /dev/null", "  StrictHostKeyChecking yes", "  BatchMode yes"]
        cfg += [f"  {extra}"] if extra else []
    (d / "ssh_config").write_text("\n".join(cfg) + "\n")
    (d / "empty_known_hosts").touch()
    (d / "inv.yaml").write_text(f"ssh_config: {d / 'ssh_config'}\nknown_hosts: {d / 'empty_known_hosts'}\nhosts:\n"
                                + "".join(f"  {c}: {{}}\n" for c in CASES))
    inv = load_inventory(d / "inv.yaml")
    plain = {c: subprocess.Popen(["ssh", "-F", str(d / "ssh_config"), "-o", "BatchMode=yes", c, "true"],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for c in CASES}
    o = FanoutOptions(artifacts_dir=str(d / "art"), user_known_hosts=None, attempts=1, connect_timeout=10,
                      command_timeout=30, preflight=False)
    run = fanout_hosts(inv, list(inv.hosts), "true", o)
    ssh = {c: (p.wait(30), p.communicate()[1].decode(errors="replace")) for c, p in plain.items()}
    return {r.host: r for r in run.results}, ssh, inv, d


@pytest.mark.parametrize("case", list(CASES))
def test_fleet_verdict_matches_plain_ssh(verdicts, case):
    results, ssh, _, _ = verdicts
    _server, _lines, _extra, ok, kind, part = CASES[case]
    r = results[case]
    rc, err = ssh[case]
    assert (rc == 0) == ok, f"ssh said {rc}: {err}"
    assert (r.outcome == FanoutOutcome.SUCCESS) == ok, r.error
    if not ok:
        assert r.error_kind == kind, r.error
        assert part in r.error and "\n" not in r.error, r.error
        assert "nothing was run" in r.error


def test_refusals_say_what_to_do(verdicts):
    results, _, _, _ = verdicts
    for case in ("expired", "not_yet_valid", "wrong_principal", "other_ca"):
        err = results[case].error
        assert "ssh-keygen -s CA -h -n localhost" in err and "--accept-new-host-key" in err, err
    assert "the @cert-authority line for it" not in results["other_ca"].error  # that CA is nowhere
    assert "(its CA is ssh-ed25519 SHA256:" in results["other_ca"].error


def test_certificate_algorithms_are_asked_for_as_openssh_orders_them(verdicts):
    """As OpenSSH's order_hostkeyalgs (ssh -vvv says "have matching best-preference key type"):
    every certificate algorithm first when a @cert-authority line could match the host, else the
    algorithms known_hosts has a key of that type for first (a certificate algorithm counts for its
    plain key's type), the rest after, in HostKeyAlgorithms' order; and the handshake really gets
    what was asked for first that the server has (its algorithm is the one agreed)."""
    from fleet.ssh.algs import DEFAULT_HOST_KEY
    from fleet.ssh.config import load_ssh_config, resolve_host
    from fleet.ssh.hostkeys import HostKeyStore
    from fleet.ssh.session import KeyCache, SSHSession

    _, _, inv, d = verdicts
    store = HostKeyStore([str(d / "empty_known_hosts")])
    cfg = load_ssh_config(str(d / "ssh_config"))
    agreed = {}
    for case in ("valid", "valid_ca_for_host_without_port", "valid_rsa_cert_rsa_ca", "plain_key_only",
                 "ca_pattern_not_matching"):
        host = inv.host(case)
        hop = resolve_host(host, cfg)
        algs = store.host_key_algorithms(hop)
        assert sorted(algs) == sorted(DEFAULT_HOST_KEY)
        if case == "plain_key_only":
            assert algs[:2] == ["ssh-ed25519" + CERT, "ssh-ed25519"] and not algs[2].startswith("ssh-ed25519")
        elif case == "ca_pattern_not_matching":
            assert algs == list(DEFAULT_HOST_KEY)  # nothing known: verbatim
        else:
            assert all(a.endswith(CERT) for a in algs[:8])
        sess = SSHSession(host, hop, store, KeyCache(), 10.0)
        try:
            try:
                sess.connect()
            except Exception:  # noqa: BLE001 - refusals are test_fleet_verdict_matches_plain_ssh's part
                pass
            t = sess.conns[-1].client.get_transport()
            agreed[case] = t.host_key_type if t is not None else None
        finally:
            sess.close()
    assert agreed["valid"] == agreed["valid_ca_for_host_without_port"] == "ssh-ed25519" + CERT
    assert agreed["valid_rsa_cert_rsa_ca"] == "rsa-sha2-512" + CERT
    # as ssh: the certificate is asked for first (its plain key's type is known, or nothing is); with no
    # CA for it, its plain key is what known_hosts decides on (accepted, resp. unknown)
    assert agreed["plain_key_only"] == agreed["ca_pattern_not_matching"] == "ssh-ed25519" + CERT


def test_user_forged_and_truncated_certificates_are_refused(world):
    """Without a handshake: what the sshd cases cannot show (sshd would not serve them)."""
    import base64

    from fleet.ssh.hostcert import CertError, cert_problem, parse_cert

    d = world.dir
    pub = d / "plain.pub"
    pub.write_text((world.lab.dir / "sshd" / "00" / "host_ed25519.pub").read_text())
    subprocess.run(["ssh-keygen", "-q", "-s", str(d / "ca"), "-I", "u", "-n", "localhost", str(pub)], check=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    blob = base64.b64decode((d / "plain-cert.pub").read_text().split()[1])
    cert = parse_cert(blob)
    assert (cert.type, cert.key_id, cert.principals) == (1, "u", ("localhost",))
    assert cert.key_blob == base64.b64decode(world.keys["host_ed25519"].split()[1])
    assert cert_problem(cert, "localhost") == "is a user certificate, not a host certificate"
    i = blob.index(b"localhost")
    forged = parse_cert(blob[:i] + b"localhosT" + blob[i + 9:])
    assert "does not verify" in (cert_problem(forged, "localhosT") or "")
    with pytest.raises(CertError):
        parse_cert(blob[:-1])


def test_no_common_host_key_algorithm_is_a_setting_to_fix_not_retried(world, tmp_path):
    """As ssh: a server offering none of HostKeyAlgorithms is one failure, not a retry."""
    port = world.ports["rsa"]
    kh = tmp_path / "kh"
    kh.write_text(f"[localhost]:{port} {world.keys['host_rsa']}\n")
    (tmp_path / "ssh_config").write_text(
        f"Host h\n  HostName localhost\n  Port {port}\n  User {world.lab.user}\n  IdentityFile {world.lab.key}\n"
        f"  IdentitiesOnly yes\n  UserKnownHostsFile {kh}\n  GlobalKnownHostsFile /dev/null\n"
        f"  HostKeyAlgorithms ssh-ed25519\n")
    (tmp_path / "inv.yaml").write_text(f"ssh_config: {tmp_path / 'ssh_config'}\nhosts:\n  h: {{}}\n")
    inv = load_inventory(tmp_path / "inv.yaml")
    o = FanoutOptions(artifacts_dir=str(tmp_path / "art"), user_known_hosts=None, attempts=3, retry_delay=0.1,
                      connect_timeout=10, preflight=False)
    r = fanout_hosts(inv, list(inv.hosts), "true", o).results[0]
    assert r.error_kind == "connect_failed" and "fix HostKeyAlgorithms" in r.error, r.error
    assert r.attempts == 1, r


def test_the_handshake_offers_exactly_the_assembled_host_key_algorithms():
    """As ssh's proposal: HostKeyAlgorithms as assembled and ordered, no certificate variant added."""
    import socket

    from fleet.ssh.session import _transport_factory

    a, b = socket.socketpair()
    try:
        t = _transport_factory(["ssh-ed25519", "rsa-sha2-512", "sk-ssh-ed25519@openssh.com"])(a)
        assert t.preferred_keys == ("ssh-ed25519", "rsa-sha2-512")  # what paramiko cannot verify is left out
        t2 = _transport_factory(["ssh-ed25519" + CERT, "ssh-ed25519"])(a)
        assert t2.preferred_keys == ("ssh-ed25519" + CERT, "ssh-ed25519")
    finally:
        a.close()
        b.close()

"""fleet's reader of OpenSSH key revocation lists against OpenSSH's own: KRLs made by
``ssh-keygen -k`` (keys, fingerprints, certificate serials, ranges and key ids, with and without a
CA), each key and certificate checked by ``ssh-keygen -Q`` and by :func:`fleet.ssh.krl.revoked`."""
from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from fleet.ssh import krl


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)


def _key(d: Path, name: str, kind: str = "ed25519") -> Path:
    p = _run("ssh-keygen", "-q", "-t", kind, *(["-b", "2048"] if kind == "rsa" else []), "-N", "", "-C", name,
             "-f", str(d / name))
    assert p.returncode == 0, p.stderr
    return d / f"{name}.pub"


def _cert(d: Path, ca: str, key: Path, serial: int, key_id: str) -> Path:
    p = _run("ssh-keygen", "-q", "-s", str(d / ca), "-h", "-I", key_id, "-z", str(serial), "-n", "localhost", str(key))
    assert p.returncode == 0, p.stderr
    return key.with_name(key.name[:-4] + "-cert.pub")


def _fp(pub: Path) -> str:
    return _run("ssh-keygen", "-l", "-E", "sha256", "-f", str(pub)).stdout.split()[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("krl")
    ca, other_ca = _key(d, "ca"), _key(d, "other_ca")
    keys = {n: _key(d, n, "rsa" if n == "k5" else "ed25519") for n in ("k1", "k2", "k3", "k4", "k5", "k6")}
    files = {**keys, "ca": ca, "other_ca": other_ca}
    files["c1"] = _cert(d, "ca", keys["k1"], 5, "web")        # serial 5
    files["c2"] = _cert(d, "ca", keys["k2"], 0, "zero")       # serial 0: only its id can revoke it
    files["c3"] = _cert(d, "ca", keys["k3"], 100, "db")       # in a range
    files["c4"] = _cert(d, "other_ca", keys["k4"], 5, "web")  # serial 5 of another CA
    files["c6"] = _cert(d, "other_ca", keys["k6"], 77, "x")
    specs = {
        "serials": (ca, "serial: 5\nserial: 90-110\nid: zero\n"),
        "ids_other_ca": (other_ca, "id: web\n"),
        "keys": (None, f"{keys['k5'].read_text()}hash: {_fp(keys['k2'])}\nsha1: {keys['k3'].read_text()}"),
        "ca_key": (None, other_ca.read_text()),
    }
    krls = {}
    for name, (signer, text) in specs.items():
        spec = d / f"{name}.spec"
        spec.write_text(text)
        p = _run("ssh-keygen", "-k", "-f", str(d / f"{name}.krl"), *(["-s", str(signer)] if signer else []), str(spec))
        assert p.returncode == 0, p.stderr
        krls[name] = d / f"{name}.krl"
    return krls, files


def test_every_key_and_certificate_gets_ssh_keygens_verdict(world):
    krls, files = world
    seen = set()
    for kname, kpath in krls.items():
        parsed = krl.parse(kpath.read_bytes())
        for fname, fpath in files.items():
            want = _run("ssh-keygen", "-Q", "-f", str(kpath), str(fpath))
            ssh_revoked = "REVOKED" in want.stdout
            assert want.returncode in (0, 1) and ssh_revoked == (want.returncode == 1), want
            blob = base64.b64decode(fpath.read_text().split()[1])
            got = krl.revoked(parsed, blob)
            assert (got is not None) == ssh_revoked, (kname, fname, got, want.stdout)
            seen.add(ssh_revoked)
    assert seen == {True, False}


def test_what_each_list_revokes(world):
    """The cases above, by name (so a list that revokes nothing or everything cannot pass)."""
    krls, files = world

    def hit(k: str) -> set[str]:
        parsed = krl.parse(krls[k].read_bytes())
        return {f for f, p in files.items() if krl.revoked(parsed, base64.b64decode(p.read_text().split()[1]))}
    assert hit("serials") == {"c1", "c2", "c3"}  # c4 has serial 5 too, but another CA
    assert hit("ids_other_ca") == {"c4"}  # c1 has that id too, but another CA
    assert hit("keys") == {"k5", "k2", "k3", "c2", "c3"}  # a certificate of a revoked key too
    assert hit("ca_key") == {"c4", "c6", "other_ca"}


def test_a_damaged_list_is_unreadable_not_empty(world):
    krls, _ = world
    data = krls["serials"].read_bytes()
    for bad in (data[:-3], data[:12], b"SSHKRL\n\0" + b"\0\0\0\2" + data[12:], data + b"\x09\0\0\0\0"):
        with pytest.raises(krl.KRLError):
            krl.parse(bad)

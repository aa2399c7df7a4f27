"""SSH on hosts that look like real ones, with plain OpenSSH on the same lab as the oracle.

Named hosts, ssh_config aliases, ProxyJump (good, dead, refusing to forward, unknown key),
ConnectTimeout, every known_hosts variant (and every known_hosts file ssh reads, hosts known under
several key types, hashed writes), ProxyCommand through a shell, stdin, exit signals, remote
processes after a timeout or Ctrl-C (root and non-root logins), byte-exact artifacts, bounded
memory, retries.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, write_inventory

from fleet.inventory import load_inventory
from fleet.lab import lab_down, lab_up
from fleet.results import FanoutOutcome
from fleet.ssh.config import load_ssh_config, resolve_host
from fleet.ssh.kvlog import format_line, parse_line
from fleet.ssh.runner import FanoutOptions, fanout_hosts


def opts(tmp_path: Path, **kw) -> FanoutOptions:
    base = dict(artifacts_dir=str(tmp_path / "artifacts"), user_known_hosts=None, attempts=1,
                retry_delay=0.1, connect_timeout=5, command_timeout=30)
    base.update(kw)
    return FanoutOptions(**base)


def ssh(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Plain OpenSSH, never reading the real ~/.ssh (HOME is the test's own)."""
    return subprocess.run(["ssh", "-o", "BatchMode=yes", *args], capture_output=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def no_process(pattern: str, wait: float = 5.0) -> bool:
    """True once nothing in the process table matches ``pattern`` (pgrep -f)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode != 0:
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def jump_lab(tmp_path_factory):
    d = tmp_path_factory.mktemp("jumplab")
    lb = lab_up(4, d / "lab", jump=True)
    yield lb
    lab_down(d / "lab")


# --------------------------------------------------------------------- names and ssh_config

def test_lab_inventory_resolves_through_ssh_config_like_openssh(lab, tmp_path):
    """The lab's inventory says only names; fleet lands where 'ssh -F lab/ssh_config NAME' lands."""
    inv = load_inventory(lab.inventory)
    assert inv.host("lab01").is_explicit("address") is False
    run = fanout_hosts(inv, list(inv.hosts)[:6], "echo $SSH_CONNECTION; whoami", opts(tmp_path))
    assert run.exit_code == 0, [r.error for r in run.results]
    for r in run.results:
        o = ssh("-F", str(lab.ssh_config), r.host, "echo $SSH_CONNECTION; whoami")
        assert o.returncode == 0, o.stderr
        fleet_conn, fleet_user = r.stdout.split("\n")[:2]
        ssh_conn, ssh_user = o.stdout.decode().split("\n")[:2]
        assert fleet_conn.split()[2:] == ssh_conn.split()[2:]  # same server address and port
        assert fleet_user == ssh_user == lab.user


def test_resolution_matches_ssh_G(jump_lab):
    cfg = load_ssh_config(str(jump_lab.ssh_config))
    inv = load_inventory(jump_lab.inventory)
    for h in inv.hosts:
        t = resolve_host(h, cfg)
        g = subprocess.run(["ssh", "-G", "-F", str(jump_lab.ssh_config), h.name], capture_output=True, text=True)
        want = {}
        for line in g.stdout.splitlines():
            k, _, v = line.partition(" ")
            want.setdefault(k, v)
        assert (t.hostname, str(t.port), t.user) == (want["hostname"], want["port"], want["user"])
        assert t.identities[0] == want["identityfile"]
        assert (t.via.name if t.via else None) == (want.get("proxyjump") or None)


def test_named_host_with_key_filed_under_its_name_passes_preflight(lab, tmp_path):
    """address: localhost, known_hosts line under [localhost]:port (as ssh writes it), preflight on."""
    h = lab.hosts[0]
    assert h.address == "localhost"
    kh = tmp_path / "kh"
    kh.write_text("".join(l + "\n" for l in lab.known_hosts.read_text().splitlines() if l.startswith("[localhost]")))
    p = write_inventory(tmp_path / "inv.yaml", lab, names=["lab01"])
    p.write_text(p.read_text().replace(f"known_hosts: {lab.known_hosts}", f"known_hosts: {kh}"))
    run = fanout_hosts(load_inventory(p), list(load_inventory(p).hosts), "true", opts(tmp_path, preflight=True))
    assert run.results[0].outcome == FanoutOutcome.SUCCESS, run.results[0].error
    o = ssh("-F", "/dev/null", "-i", str(lab.key), "-o", f"UserKnownHostsFile={kh}", "-o",
            "StrictHostKeyChecking=yes", "-p", str(h.port), f"{lab.user}@localhost", "true")
    assert o.returncode == 0


def test_ssh_config_alias_identityfile_and_connect_timeout(lab, tmp_path, silent_port):
    h = lab.hosts[1]
    cfg = tmp_path / "ssh_config"
    cfg.write_text(f"Host aliased\n  HostName {h.address}\n  Port {h.port}\n  User {lab.user}\n"
                   f"  IdentityFile {lab.key}\n  IdentitiesOnly yes\n  ConnectTimeout 3\n"
                   f"Host mute\n  HostName 127.0.0.1\n  Port {silent_port}\n  ConnectTimeout 1\n"
                   f"  IdentityFile {lab.key}\n")
    inv_p = tmp_path / "inv.yaml"
    inv_p.write_text(f"ssh_config: {cfg}\nknown_hosts: {lab.known_hosts}\nhosts:\n  aliased: {{}}\n  mute: {{}}\n")
    inv = load_inventory(inv_p)
    run = fanout_hosts(inv, list(inv.hosts), "echo ${SSH_CONNECTION##* }", opts(tmp_path, connect_timeout=10))
    by = {r.host: r for r in run.results}
    assert by["aliased"].outcome == FanoutOutcome.SUCCESS, by["aliased"].error
    assert by["aliased"].stdout.strip() == str(h.port)
    assert by["aliased"].preflight.ok  # the key came from IdentityFile, and preflight saw it
    assert by["mute"].outcome == FanoutOutcome.TIMEOUT and "1s" in by["mute"].error
    o = ssh("-F", str(cfg), "-o", f"UserKnownHostsFile={lab.known_hosts}", "aliased", "true")
    assert o.returncode == 0


# --------------------------------------------------------------------------------- jumps

def _fleet_and_ssh(lab, cfg: Path, tmp_path: Path, names: list[str], known_hosts: Path | None = None, **kw):
    inv_p = tmp_path / "inv.yaml"
    inv_p.write_text(f"ssh_config: {cfg}\nknown_hosts: {known_hosts or lab.known_hosts}\nhosts:\n"
                     + "".join(f"  {n}: {{}}\n" for n in names))
    inv = load_inventory(inv_p)
    run = fanout_hosts(inv, list(inv.hosts), "hostname", opts(tmp_path, **kw))
    plain = {n: ssh("-F", str(cfg), n, "true").returncode for n in names}
    return {r.host: r for r in run.results}, plain


def test_proxyjump_good_and_jump_really_used(jump_lab, tmp_path):
    by, plain = _fleet_and_ssh(jump_lab, jump_lab.ssh_config, tmp_path, ["lab01", "lab02", "lab03", "lab04"])
    assert all(r.outcome == FanoutOutcome.SUCCESS for r in by.values()), {h: r.error for h, r in by.items()}
    assert set(plain.values()) == {0}
    # the jump's sshd saw the forwarding requests for the hosts behind it
    log = (jump_lab.dir / "sshd" / "jump" / "sshd.log").read_text()
    assert log.count("Accepted publickey") >= 2


def test_jump_that_refuses_forwarding_fails_and_names_the_hop(jump_lab, tmp_path):
    # lab01's sshd has AllowTcpForwarding no: use it as the jump for lab02
    text = jump_lab.ssh_config.read_text().replace("ProxyJump jump", "ProxyJump lab01")
    cfg = tmp_path / "cfg"
    cfg.write_text(text)
    by, plain = _fleet_and_ssh(jump_lab, cfg, tmp_path, ["lab02"])
    r = by["lab02"]
    assert r.outcome == FanoutOutcome.FAILURE and "jump host lab01" in r.error and "forward" in r.error
    assert plain["lab02"] != 0


def test_unknown_jump_key_refused_unless_accepted(jump_lab, tmp_path):
    empty = tmp_path / "jump_known_hosts"
    empty.write_text("")
    text = jump_lab.ssh_config.read_text().replace(
        "Host jump\n", f"Host jump\n  UserKnownHostsFile {empty}\n")
    cfg = tmp_path / "cfg"
    cfg.write_text(text)
    # fleet reads the inventory's known_hosts too (besides every file ssh reads): leave the jump out of it
    jump_line = f"[{jump_lab.jump.address}]:{jump_lab.jump.port} "
    inv_kh = tmp_path / "inv_known_hosts"
    inv_kh.write_text("".join(l + "\n" for l in jump_lab.known_hosts.read_text().splitlines()
                              if not l.startswith(jump_line)))
    by, plain = _fleet_and_ssh(jump_lab, cfg, tmp_path, ["lab02"], known_hosts=inv_kh)
    r = by["lab02"]
    assert r.outcome == FanoutOutcome.FAILURE and r.error_kind == "unknown_host_key"
    assert "jump host jump" in r.error and "--accept-new-host-key jump" in r.error
    assert plain["lab02"] != 0
    by, _ = _fleet_and_ssh(jump_lab, cfg, tmp_path, ["lab02"], known_hosts=inv_kh,
                           accept_host_keys_for=frozenset({"jump"}))
    assert by["lab02"].outcome == FanoutOutcome.SUCCESS, by["lab02"].error
    assert f"[{jump_lab.jump.address}]:{jump_lab.jump.port} ssh-ed25519" in empty.read_text()
    assert ssh("-F", str(cfg), "lab02", "true").returncode == 0  # OpenSSH agrees with what was written


def test_dead_jump_fails_hosts_behind_it_and_names_it(tmp_path):
    lb = lab_up(2, tmp_path / "lab", jump=True)
    try:
        os.kill(lb.sshd_pids[-1], signal.SIGTERM)  # the jump's sshd is started last
        time.sleep(0.3)
        by, plain = _fleet_and_ssh(lb, lb.ssh_config, tmp_path, ["lab01", "lab02"], preflight=True)
        assert by["lab01"].outcome == FanoutOutcome.SUCCESS
        r = by["lab02"]
        assert r.outcome == FanoutOutcome.PREFLIGHT_FAILED and "jump host jump" in r.error
        assert plain == {"lab01": 0, "lab02": 255}
        by, _ = _fleet_and_ssh(lb, lb.ssh_config, tmp_path, ["lab02"], preflight=False)
        assert by["lab02"].outcome == FanoutOutcome.FAILURE and "jump host jump" in by["lab02"].error
    finally:
        lab_down(tmp_path / "lab")


# --------------------------------------------------------------------------- known_hosts

def test_known_hosts_variants_match_openssh_verdict(lab, tmp_path):
    h = lab.hosts[2]
    name = f"[{h.address}]:{h.port}"
    line = next(l for l in lab.known_hosts.read_text().splitlines() if l.startswith(name + " "))
    _, ktype, kb64 = line.split()
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    otype, ob64 = other.with_suffix(".pub").read_text().split()[:2]
    variants = {
        "plain": (line, True),
        "hashed": (line, True),  # hashed below with ssh-keygen -H
        "comments_and_malformed": (f"# a comment\n\ngarbage\n@bogus {name} {ktype} {kb64}\n"
                                   f"{name} {ktype} !!notbase64\n{name} ssh-rsa {kb64}\n{line}", True),
        "cert_authority_only": (f"@cert-authority {name} {ktype} {kb64}", False),
        "cert_authority_and_plain": (f"@cert-authority * {otype} {ob64}\n{line}", True),
        "revoked": (f"@revoked * {ktype} {kb64}\n{line}", False),
        "changed": (f"{name} {otype} {ob64}", False),
        "wildcard": (f"[{h.address.rsplit('.', 1)[0]}.*]:{h.port} {ktype} {kb64}", True),
        # OpenSSH also takes the same key filed under the bare host ("found matching key w/out port")
        "negated_port_form_only": (f"!{name},* {ktype} {kb64}", True),
        "bare_host": (f"{h.address} {ktype} {kb64}", True),
        "negated": (f"!{name},!{h.address},* {ktype} {kb64}", False),
        "other_port": (f"[{h.address}]:{h.port + 1} {ktype} {kb64}", False),
        "empty": ("", False),
    }
    for label, (text, expect_ok) in variants.items():
        kh = tmp_path / f"kh_{label}"
        kh.write_text(text + "\n")
        if label == "hashed":
            subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(kh)], check=True, capture_output=True)
            assert "|1|" in kh.read_text()
        o = ssh("-F", "/dev/null", "-i", str(lab.key), "-o", f"UserKnownHostsFile={kh}", "-o",
                "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes", "-p", str(h.port),
                f"{lab.user}@{h.address}", "true")
        p = write_inventory(tmp_path / f"inv_{label}.yaml", lab, names=[h.name])
        p.write_text(p.read_text().replace(f"known_hosts: {lab.known_hosts}", f"known_hosts: {kh}"))
        inv = load_inventory(p)
        r = fanout_hosts(inv, list(inv.hosts), "true", opts(tmp_path)).results[0]
        assert (o.returncode == 0) == expect_ok, (label, o.stderr)
        assert (r.outcome == FanoutOutcome.SUCCESS) == expect_ok, (label, r.error)
        if label == "revoked":
            assert r.error_kind == "host_key_revoked"
        if label == "changed":
            assert r.error_kind == "host_key_changed"


def test_revoked_key_is_never_accepted_even_with_accept_flag(lab, tmp_path):
    h = lab.hosts[2]
    line = next(l for l in lab.known_hosts.read_text().splitlines() if l.startswith(f"[{h.address}]:{h.port} "))
    kh = tmp_path / "kh"
    kh.write_text(f"@revoked * {line.split(' ', 1)[1]}\n")
    p = write_inventory(tmp_path / "inv.yaml", lab, names=[h.name])
    p.write_text(p.read_text().replace(f"known_hosts: {lab.known_hosts}", f"known_hosts: {kh}"))
    inv = load_inventory(p)
    r = fanout_hosts(inv, list(inv.hosts), "true", opts(tmp_path, accept_new_host_keys=True)).results[0]
    assert r.outcome == FanoutOutcome.FAILURE and r.error_kind == "host_key_revoked"


# ---------------------------------------------------------------------- command lifecycle

def test_cat_with_no_stdin_returns_at_once(lab_inv, tmp_path):
    r = fanout_hosts(lab_inv, [lab_inv.host("lab03")], "cat; echo done", opts(tmp_path, command_timeout=20)).results[0]
    assert r.outcome == FanoutOutcome.SUCCESS and r.stdout.strip() == "done"


def _marker() -> str:
    """A unique 'sleep' argument; match it as '^sleep 300.N' so fleet's own command line never counts."""
    return f"300.{random.randint(10**8, 10**9)}"


def test_exit_signal_is_reported(lab_inv, tmp_path):
    r = fanout_hosts(lab_inv, [lab_inv.host("lab03")], "echo before; kill -TERM $$",
                     opts(tmp_path)).results[0]
    assert r.outcome == FanoutOutcome.FAILURE and r.error == "killed by signal TERM" and r.error_kind == "signal"
    assert r.stdout.strip() == "before" and "lost" not in r.error


def test_binary_output_is_byte_exact_in_artifacts(lab, lab_inv, tmp_path):
    cmd = r"printf '\377\000\001\n\200tail'; printf '\376' >&2"
    run = fanout_hosts(lab_inv, [lab_inv.host("lab03")], cmd, opts(tmp_path))
    d = Path(run.artifacts_dir)
    o = ssh("-F", str(lab.ssh_config), "lab03", cmd)
    assert (d / "lab03.stdout").read_bytes() == o.stdout == b"\xff\x00\x01\n\x80tail"
    assert (d / "lab03.stderr").read_bytes() == b"\xfe"


def test_50mb_of_output_does_not_grow_memory(lab, tmp_path):
    script = f"""
import resource, sys
sys.path.insert(0, {str(ROOT)!r})
from fleet.ssh.runner import FanoutOptions, fanout_hosts
from fleet.inventory import load_inventory
inv = load_inventory({str(lab.inventory)!r})
o = FanoutOptions(artifacts_dir={str(tmp_path / 'a')!r}, user_known_hosts=None, attempts=1)
fanout_hosts(inv, [inv.host('lab03')], 'head -c 1000000 /dev/zero', o)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
run = fanout_hosts(inv, [inv.host('lab03')], 'head -c 52428800 /dev/zero', o)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
r = run.results[0]
print(r.outcome.value, after - before, len(r.stdout), run.artifacts_dir)
"""
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    outcome, grown_kb, kept, adir = p.stdout.split()
    assert outcome == "SUCCESS"
    assert int(grown_kb) < 8 * 1024, f"memory grew by {grown_kb} KB"
    assert int(kept) < 2 * 1024 * 1024  # a bounded tail, with a note...
    assert (Path(adir) / "lab03.stdout").stat().st_size == 52428800  # ...and the whole output on disk


# ------------------------------------------------------------------------------ retries

def test_collect_failure_runs_the_command_once(tmp_path):
    lb = lab_up(1, tmp_path / "lab")
    try:
        cfg = lb.dir / "sshd" / "00" / "sshd_config"
        cfg.write_text(cfg.read_text().replace("Subsystem sftp internal-sftp\n", ""))
        os.kill(lb.sshd_pids[0], signal.SIGHUP)  # sshd re-reads its config: no sftp any more
        time.sleep(0.5)
        count = tmp_path / "count"
        inv = load_inventory(lb.inventory)
        r = fanout_hosts(inv, list(inv.hosts), f"echo x >> {count}",
                         opts(tmp_path, attempts=3, collect=("/etc/hostname",))).results[0]
        assert count.read_text() == "x\n"
        assert r.attempts == 1 and not r.collected
    finally:
        lab_down(tmp_path / "lab")


def test_no_authentication_methods_is_tried_once(lab, tmp_path):
    h = lab.hosts[2]
    p = tmp_path / "inv.yaml"
    p.write_text(f"known_hosts: {lab.known_hosts}\nhosts:\n  bare: {{address: {h.address}, port: {h.port}, "
                 f"user: {lab.user}}}\n")
    inv = load_inventory(p)  # no identity_file, no keys in HOME, no agent
    r = fanout_hosts(inv, list(inv.hosts), "true", opts(tmp_path, attempts=3, preflight=False)).results[0]
    assert r.outcome == FanoutOutcome.FAILURE and r.error_kind == "auth" and r.attempts == 1


def test_one_workers_unexpected_exception_ends_only_that_host(lab_inv, tmp_path, mocker):
    from fleet.ssh.session import SSHSession
    real = SSHSession.connect

    def connect(self):
        if self.host.name == "lab02":
            raise RuntimeError("boom")
        return real(self)
    mocker.patch.object(SSHSession, "connect", connect)
    run = fanout_hosts(lab_inv, [lab_inv.host(n) for n in ("lab01", "lab02", "lab03")], "true", opts(tmp_path))
    by = {r.host: r for r in run.results}
    assert by["lab02"].outcome == FanoutOutcome.FAILURE and "boom" in by["lab02"].error
    assert by["lab01"].outcome == by["lab03"].outcome == FanoutOutcome.SUCCESS


def test_logfmt_lines_escape_control_characters_and_quote_command():
    line = format_line("success", host="lab01", command="true", note="a\tb\x01c\n")
    assert line.startswith('success host=lab01 command="true" ')
    assert "\t" not in line and "\x01" not in line and "\n" not in line
    assert parse_line(line)[1]["note"] == "a\tb\x01c\n"


def test_two_hop_proxyjump_like_openssh(jump_lab, tmp_path):
    text = jump_lab.ssh_config.read_text().replace("ProxyJump jump", "ProxyJump jump,jump")
    cfg = tmp_path / "cfg"
    cfg.write_text(text)
    by, plain = _fleet_and_ssh(jump_lab, cfg, tmp_path, ["lab02"])
    assert by["lab02"].outcome == FanoutOutcome.SUCCESS, by["lab02"].error
    assert plain["lab02"] == 0
    t = resolve_host(load_inventory(tmp_path / "inv.yaml").host("lab02"), load_ssh_config(str(cfg)))
    assert [h.name for h in t.chain()] == ["jump", "jump", "lab02"]


# ------------------------------------------- known_hosts: every file ssh reads, every key type

@pytest.fixture(scope="module")
def multikey_lab(tmp_path_factory):
    """One sshd with an ed25519 and an RSA host key (the lab's have ed25519 only)."""
    d = tmp_path_factory.mktemp("multikey")
    lb = lab_up(1, d / "lab")
    sd = lb.dir / "sshd" / "00"
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(sd / "host_rsa")], check=True)
    cfg = sd / "sshd_config"
    cfg.write_text(cfg.read_text().replace("HostKey ", f"HostKey {sd / 'host_rsa'}\nHostKey ", 1))
    os.kill(lb.sshd_pids[0], signal.SIGHUP)
    time.sleep(0.8)
    yield lb, (sd / "host_ed25519.pub").read_text().split()[:2], (sd / "host_rsa.pub").read_text().split()[:2]
    lab_down(d / "lab")


def _other_key(tmp_path: Path, kind: str) -> list[str]:
    p = tmp_path / f"other_{kind}"
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(p)], check=True)
    return p.with_suffix(".pub").read_text().split()[:2]


def _kh_world(lb, tmp_path: Path, user_files: dict[str, str], global_files: dict[str, str],
              extra: str = "", name: str = "mk", index: int = 0):
    """An ssh_config whose UserKnownHostsFile/GlobalKnownHostsFile lists hold the given texts, an
    inventory whose own known_hosts is empty; fleet's and plain ssh's verdicts for the host."""
    h = lb.hosts[index]
    paths = {}
    for label, text in {**user_files, **global_files}.items():
        p = paths[label] = tmp_path / label
        p.write_text(text + ("\n" if text else ""))
    ukh = " ".join(str(paths[k]) for k in user_files) or "/dev/null"
    gkh = " ".join(str(paths[k]) for k in global_files) or "/dev/null"
    cfg = tmp_path / "cfg"
    cfg.write_text(f"Host {name}\n  HostName {h.address}\n  Port {h.port}\n  User {lb.user}\n  IdentityFile {lb.key}\n"
                   f"  IdentitiesOnly yes\n  UserKnownHostsFile {ukh}\n  GlobalKnownHostsFile {gkh}\n"
                   f"  BatchMode yes\n{extra}  StrictHostKeyChecking yes\n")
    empty = tmp_path / "inventory_known_hosts"
    empty.touch()
    inv_p = tmp_path / "inv.yaml"
    inv_p.write_text(f"ssh_config: {cfg}\nknown_hosts: {empty}\nhosts:\n  {name}: {{}}\n")
    inv = load_inventory(inv_p)
    r = fanout_hosts(inv, list(inv.hosts), "true", opts(tmp_path)).results[0]
    o = ssh("-F", str(cfg), name, "true")
    return r, o, paths


def test_stale_rsa_line_before_current_ed25519_is_no_changed_key(multikey_lab, tmp_path):
    """A host known under several key types: accepted when the offered key matches one, because
    the handshake asks for the known types in OpenSSH's order (ed25519 first), not the file's."""
    lb, ed, _rsa = multikey_lab
    name = f"[{lb.hosts[0].address}]:{lb.hosts[0].port}"
    stale = _other_key(tmp_path, "rsa")
    r, o, _ = _kh_world(lb, tmp_path, {"kh": f"{name} {' '.join(stale)}\n{name} {' '.join(ed)}"}, {})
    assert o.returncode == 0, o.stderr
    assert r.outcome == FanoutOutcome.SUCCESS, r.error


def test_stale_ed25519_with_current_rsa_is_a_changed_key_for_both(multikey_lab, tmp_path):
    lb, _ed, rsa = multikey_lab
    name = f"[{lb.hosts[0].address}]:{lb.hosts[0].port}"
    stale = _other_key(tmp_path, "ed25519")
    r, o, _ = _kh_world(lb, tmp_path, {"kh": f"{name} {' '.join(rsa)}\n{name} {' '.join(stale)}"}, {})
    assert o.returncode != 0 and b"CHANGED" in o.stderr.upper()
    assert r.outcome == FanoutOutcome.FAILURE and r.error_kind == "host_key_changed", r.error


def test_only_rsa_known_is_accepted_like_ssh(multikey_lab, tmp_path):
    lb, _ed, rsa = multikey_lab
    name = f"[{lb.hosts[0].address}]:{lb.hosts[0].port}"
    r, o, _ = _kh_world(lb, tmp_path, {"kh": f"{name} {' '.join(rsa)}"}, {})
    assert o.returncode == 0, o.stderr
    assert r.outcome == FanoutOutcome.SUCCESS, r.error


@pytest.mark.parametrize("case", ["second_user_file", "global_only", "second_global_file", "revoked_in_global",
                                  "revoked_in_second_user_file", "changed_in_global"])
def test_every_known_hosts_file_ssh_reads_decides(lab, tmp_path, case):
    h = lab.hosts[5]
    name = f"[{h.address}]:{h.port}"
    line = next(l for l in lab.known_hosts.read_text().splitlines() if l.startswith(name + " "))
    key = line.split(" ", 1)[1]
    other = " ".join(_other_key(tmp_path, "ed25519"))
    user, glob_, ok = {
        "second_user_file": ({"u1": "", "u2": line}, {}, True),
        "global_only": ({"u1": ""}, {"g1": line}, True),
        "second_global_file": ({"u1": ""}, {"g1": "", "g2": line}, True),
        "revoked_in_global": ({"u1": line}, {"g1": f"@revoked * {key}"}, False),
        "revoked_in_second_user_file": ({"u1": line, "u2": f"@revoked {name} {key}"}, {}, False),
        "changed_in_global": ({"u1": ""}, {"g1": f"{name} {other}"}, False),
    }[case]
    r, o, _ = _kh_world(lab, tmp_path, user, glob_, index=5)
    assert (o.returncode == 0) == ok, (case, o.stderr)
    assert (r.outcome == FanoutOutcome.SUCCESS) == ok, (case, r.error)
    if case.startswith("revoked"):
        assert r.error_kind == "host_key_revoked"


def test_accepted_key_is_written_hashed_with_hash_known_hosts(lab, tmp_path):
    h = lab.hosts[6]
    r, o, paths = _kh_world(lab, tmp_path, {"kh": ""}, {}, index=6, extra="  HashKnownHosts yes\n"
                            "  StrictHostKeyChecking accept-new\n")
    assert r.outcome == FanoutOutcome.SUCCESS, r.error
    text = paths["kh"].read_text()
    assert text.startswith("|1|") and str(h.port) not in text and h.address not in text
    # plain ssh, strict, finds the key fleet filed (hashed, under [host]:port)
    o = ssh("-F", "/dev/null", "-i", str(lab.key), "-o", f"UserKnownHostsFile={paths['kh']}", "-o",
            "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes", "-p", str(h.port),
            f"{lab.user}@{h.address}", "true")
    assert o.returncode == 0, o.stderr


def test_default_known_hosts2_is_read(lab, tmp_path, monkeypatch):
    """No UserKnownHostsFile: ~/.ssh/known_hosts and ~/.ssh/known_hosts2 (fleet's ~ is $HOME)."""
    h = lab.hosts[7]
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    line = next(l for l in lab.known_hosts.read_text().splitlines() if l.startswith(f"[{h.address}]:{h.port} "))
    (home / ".ssh" / "known_hosts2").write_text(line + "\n")
    cfg = tmp_path / "cfg"
    cfg.write_text(f"Host kh2\n  HostName {h.address}\n  Port {h.port}\n  User {lab.user}\n  IdentityFile {lab.key}\n"
                   f"  GlobalKnownHostsFile /dev/null\n")
    (tmp_path / "empty").touch()
    inv_p = tmp_path / "inv.yaml"
    inv_p.write_text(f"ssh_config: {cfg}\nknown_hosts: {tmp_path / 'empty'}\nhosts:\n  kh2: {{}}\n")
    inv = load_inventory(inv_p)
    r = fanout_hosts(inv, list(inv.hosts), "true", opts(tmp_path)).results[0]
    assert r.outcome == FanoutOutcome.SUCCESS, r.error


# ------------------------------------------------------------------ ProxyCommand via a shell

RELAY = r'''
import os, socket, sys, threading
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
def up():
    for b in iter(lambda: os.read(0, 65536), b""):
        s.sendall(b)
    s.shutdown(socket.SHUT_WR)
threading.Thread(target=up, daemon=True).start()
for b in iter(lambda: s.recv(65536), b""):
    while b:
        b = b[os.write(1, b):]
'''


def _proxy_world(lab, tmp_path: Path):
    h = lab.hosts[8]
    relay = tmp_path / "relay.py"
    relay.write_text(RELAY)
    cfg = tmp_path / "cfg"
    # $(...), ${VAR} and a pipe-free exec: only a shell makes sense of this line, as for ssh
    cfg.write_text(f"Host viaproxy\n  HostName {h.address}\n  Port {h.port}\n  User {lab.user}\n"
                   f"  IdentityFile {lab.key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {lab.known_hosts}\n"
                   f"  GlobalKnownHostsFile /dev/null\n  BatchMode yes\n"
                   f"  ProxyCommand ${{FLEET_PY}} {relay} $(echo %h) %p\n")
    return h, cfg


def test_proxycommand_argv_runs_through_a_shell_like_ssh(lab, tmp_path, monkeypatch):
    import shlex

    import paramiko

    from fleet.ssh.hostkeys import fingerprint
    monkeypatch.setenv("FLEET_PY", sys.executable)
    h, cfg = _proxy_world(lab, tmp_path)
    o = ssh("-F", str(cfg), "viaproxy", "true")
    assert o.returncode == 0, o.stderr
    hop = resolve_host(load_inventory_for(tmp_path, cfg, "viaproxy"), load_ssh_config(str(cfg)))
    assert hop.proxy_command == f"${{FLEET_PY}} {tmp_path / 'relay.py'} $(echo {h.address}) {h.port}"
    assert hop.proxy_argv[1:] == ("-c", "exec " + hop.proxy_command)
    t = paramiko.Transport(paramiko.ProxyCommand(shlex.join(hop.proxy_argv)))
    try:
        t.start_client(timeout=10)
        want = next(l for l in lab.known_hosts.read_text().splitlines() if l.startswith(f"[{h.address}]:{h.port} "))
        assert fingerprint(t.get_remote_server_key()) == fingerprint(paramiko.Ed25519Key(
            data=__import__("base64").b64decode(want.split()[2])))
    finally:
        t.close()


def load_inventory_for(tmp_path: Path, cfg: Path, name: str):
    inv_p = tmp_path / "inv.yaml"
    inv_p.write_text(f"ssh_config: {cfg}\nhosts:\n  {name}: {{}}\n")
    return load_inventory(inv_p).host(name)


def test_fanout_through_a_shell_proxycommand(lab, tmp_path, monkeypatch):
    monkeypatch.setenv("FLEET_PY", sys.executable)
    h, cfg = _proxy_world(lab, tmp_path)
    inv_p = tmp_path / "inv.yaml"
    inv_p.write_text(f"ssh_config: {cfg}\nknown_hosts: {lab.known_hosts}\nhosts:\n  viaproxy: {{}}\n")
    inv = load_inventory(inv_p)
    r = fanout_hosts(inv, list(inv.hosts), "echo ${SSH_CONNECTION##* }", opts(tmp_path)).results[0]
    assert r.outcome == FanoutOutcome.SUCCESS, r.error
    assert r.stdout.strip() == str(h.port)

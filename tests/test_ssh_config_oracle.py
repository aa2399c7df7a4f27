"""fleet's ssh_config reader against the real OpenSSH client, option by option.

Every file of ``tests/ssh_configs/`` is one rule of ssh_config(5) (its first line says which).
Each is resolved by fleet and by ``ssh -G -F FILE NAME`` (HOME is the test's own); what ``ssh
-G`` does not expand (IdentityFile, ProxyCommand) is taken from ``ssh -v``, which prints the
expanded values before it would connect (a harmless ProxyCommand stands in for the network).
A file's header says which names to ask for (``# hosts:``; ``!name``: ssh refuses it, so fleet
must raise its BadInput) and may carry more files (``#--- file: PATH [mode=NNN]``); ``@D@`` is
the directory they are written to. The odd configs of the table and the generated ones must
never raise anything but fleet's own errors, and must fail exactly when ``ssh -G`` fails.
"""
from __future__ import annotations

import os
import pwd
import re
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.errors import BadInput, FleetError
from fleet.ssh.config import load_ssh_config

CORPUS = Path(__file__).resolve().parent / "ssh_configs"
PW_HOME = pwd.getpwuid(os.getuid()).pw_dir
KEYS = ("hostname", "port", "user", "identitiesonly", "connecttimeout", "hostkeyalias", "userknownhostsfile",
        "globalknownhostsfile", "stricthostkeychecking", "hashknownhosts", "proxyjump", "sendenv", "setenv",
        "canonicalizehostname")
SSH_WORDS = {"stricthostkeychecking": {"true": "yes", "false": "off"},
             "canonicalizehostname": {"true": "yes", "false": "no"}}


def materialize(src: str, d: Path) -> tuple[Path, list[str]]:
    """Write a corpus entry under ``d``: (main config path, host names)."""
    text = src.replace("@D@", str(d))
    parts = re.split(r"^#--- file: (\S+)(?: mode=(\d+))?\n", text, flags=re.M)
    main = d / "config"
    main.write_text(parts[0])
    for name, mode, body in zip(parts[1::3], parts[2::3], parts[3::3]):
        p = d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(body)
        p.chmod(int(mode, 8) if mode else 0o644)
    m = re.search(r"^# hosts: (.+)$", parts[0], flags=re.M)
    return main, (m.group(1).split() if m else [])


def run_ssh(args: list[str], home: Path, timeout: float = 20) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
    env["HOME"] = str(home)
    return subprocess.run(["ssh", *args], capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL,
                          timeout=timeout)


def norm(v: str, home: Path) -> str:
    """ssh's ``~`` and ``%d`` are the password database's home; fleet's are $HOME."""
    return " ".join(str(home) + w[len(PW_HOME):] if w == PW_HOME or w.startswith(PW_HOME + "/") else w
                    for w in v.split(" "))


def ssh_view(cfg: Path, name: str, home: Path) -> dict[str, list[str]] | None:
    """What ssh makes of ``name`` (None if it refuses the config)."""
    g = run_ssh(["-G", "-F", str(cfg), name], home)
    if g.returncode != 0:
        return None
    out: dict[str, list[str]] = {}
    for line in g.stdout.splitlines():
        k, _, v = line.partition(" ")
        out.setdefault(k, []).append(norm(SSH_WORDS.get(k, {}).get(v, v), home))
    for k in ("sendenv", "setenv"):
        out.setdefault(k, [])
    # IdentityFile and ProxyCommand tokens are expanded when ssh connects: ask ssh -v
    extra = [] if "proxycommand" in out else ["-o", "ProxyCommand=true"]
    v = run_ssh(["-v", "-F", str(cfg), "-o", "BatchMode=yes", "-o", "IdentityFile=none", *extra, name, "true"], home)
    ids: list[str] = []
    for m in re.finditer(r"^debug1: identity file (.*) type -?\d+$", v.stderr, flags=re.M):
        f = norm(m.group(1), home)
        if not (f.endswith("-cert") and f[:-5] in ids):  # ssh also tries KEY-cert for each KEY
            ids.append(f)
    out["identityfile"] = ids
    pc = re.search(r"^debug1: Executing proxy command: exec (.*)$", v.stderr, flags=re.M)
    out["proxycommand"] = [pc.group(1)] if pc and "proxycommand" in out else []
    return out


def fleet_view(cfg: Path, name: str, home: Path) -> dict[str, list[str]]:
    d = load_ssh_config(str(cfg)).lookup(name)
    out: dict[str, list[str]] = {}
    for k, v in d.items():
        vals = v if isinstance(v, list) else [v]
        out[k] = [norm(str(x), home) for x in vals]
    out.setdefault("proxycommand", [])
    return out


def compare(cfg: Path, names: list[str], home: Path) -> None:
    for spec in names:
        refused, name = spec.startswith("!"), spec.lstrip("!")
        want = ssh_view(cfg, name, home)
        assert (want is None) == refused, f"{cfg.name} {name}: ssh -G {'accepted' if want else 'refused'} it"
        if want is None:
            with pytest.raises(BadInput) as ei:
                load_ssh_config(str(cfg)).lookup(name)
            assert "\n" not in str(ei.value)
            continue
        got = fleet_view(cfg, name, home)
        for k in (*KEYS, "identityfile", "proxycommand"):
            assert got.get(k, []) == want.get(k, []), f"{cfg.name} {name} {k}: fleet {got.get(k)} ssh {want.get(k)}"


def corpus() -> list[str]:
    return sorted(p.name for p in CORPUS.glob("*.conf"))


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("FLEET_ORACLE_VAR", "from-env")
    return tmp_path, home


@pytest.mark.parametrize("entry", corpus())
def test_corpus_entry_resolves_like_ssh(entry, scratch):
    d, home = scratch
    cfg, names = materialize((CORPUS / entry).read_text(), d)
    assert names, f"{entry} names no hosts"
    compare(cfg, names, home)


# Odd and bad configs: fleet must agree with ssh -G on refusing them (a one-line BadInput naming
# file:line), or on what they mean.
ODD = [
    "Host *\n  Bogus yes\n", "Host *\n  Port 0\n", "Host *\n  Port 99999\n", "Host *\n  Port 22x\n",
    "Host *\n  User a b\n", "Host *\n  User \"a\n", "Host *\n  ConnectTimeout 1.5\n", "Host *\n  ConnectTimeout -1\n",
    "Host *\n  ConnectTimeout NONE\n", "Match bogus x\n", "Match\n", "Match host\n", "Match all host x\n",
    "Match canonical final all\n", "Match !all\n  User neg\n", "Host *\n  HostName %p\n",
    "Host *\n  HostName x%\n", "Host *\n  UserKnownHostsFile ${FLEET_NO_SUCH_VAR}\n",
    "Host *\n  UserKnownHostsFile %z\n", "Host *\n  IdentitiesOnly maybe\n",
    "Host *\n  StrictHostKeyChecking maybe\n", "Host *\n  ProxyJump a:b:c\n", "Host *\n  ProxyJump @x\n",
    "Host *\n  ProxyJump ssh://[fe80::1]\n", "Host *\n  SendEnv A=B\n", "Host *\n  SetEnv A\n",
    "Host *\n  CanonicalDomains bad..dom\n", "Host *\n  CanonicalDomains -x\n",
    "Host *\n  GlobalKnownHostsFile none x\n", "Host *\n  HostName\n", "Host\n", "Host \"\"\n",
    "Host *\n  IgnoreUnknown Foo*\n  FooBar yes\n", "Host *\n  FooBar yes\n  IgnoreUnknown Foo*\n",
    "Host x\n  IgnoreUnknown Foo*\nHost *\n  FooBar yes\n", "Include\n", "Include \"\"\n",
    "Include @D@/nosuch/*\nHost *\n  User fine\n", "\x00\nHost *\n  User nul\n", "Host *\n  User a\x00b\n",
    "Host *\n\tUser\ttabs\t\n", "Host=*\n  User=eq\n", "Host = *\n  User = = eq2\n", "  \n#\n   # x\n",
    "Host *\n  User 'single quoted'\n", "Host *\n  User a\\ b\n", "Host *\n  User \"\"\n",
    "Host *\n  CanonicalizeHostname maybe\n", "Host *\n  CanonicalizeMaxDots x\n",
    "Host *\n  CanonicalizePermittedCNAMEs a\n", "Host *\n  Port 2222 # x\n  User u # c\n",
    "Host *\n  IdentityFile ~nosuchuserxyz/key\n", "Host *\n  ProxyCommand %z\n", "Host *\n  ProxyJump %z\n",
    "Host *\n  ProxyCommand -\n", "Host *\n  LogLevel\n", "Host *\n  BatchMode maybe\n",
    "Host *\n  ServerAliveInterval 1q\n", "Host *\n  ConnectionAttempts x\n", "Host *\n  Ciphers a b\n",
    "Host *\n  RSAAuthentication yes\n", "Host *\n  UseRoaming no\n",
]


def ssh_dies_before_connecting(cfg: Path, name: str, home: Path) -> bool:
    """For what ``ssh -G`` does not expand: does ``ssh`` itself stop before the handshake?"""
    g = run_ssh(["-G", "-F", str(cfg), name], home).stdout
    direct = not re.search(r"^proxy(command|jump) ", g, flags=re.M)
    v = run_ssh(["-v", "-F", str(cfg), "-o", "BatchMode=yes", *(["-o", "ProxyCommand=true"] if direct else []),
                 name, "true"], home)
    return v.returncode != 0 and not re.search(r"kex_exchange_identification|Connection closed|banner", v.stderr)


def agree(cfg: Path, name: str, home: Path) -> None:
    """fleet refuses ``cfg`` exactly when ssh does (a one-line BadInput), else means the same."""
    want = ssh_view(cfg, name, home)
    try:
        got = fleet_view(cfg, name, home)
    except BadInput as exc:
        assert "\n" not in str(exc) and "ssh_config" in str(exc), str(exc)
        if want is not None and not re.search(r"(?im)^\s*proxycommand[\s=]+-\s*$", cfg.read_text()):
            # what ssh -G leaves unexpanded must make ssh itself stop (fleet cannot use "ProxyCommand -")
            assert ssh_dies_before_connecting(cfg, name, home), f"fleet refused what ssh takes: {exc}"
        return
    assert want is not None, f"ssh -G refused it, fleet took it: {got}"
    for k in (*KEYS, "identityfile", "proxycommand"):
        assert got.get(k, []) == want.get(k, []), f"{k}: fleet {got.get(k)} ssh {want.get(k)}"


@pytest.mark.parametrize("text", ODD, ids=[f"odd{i}" for i in range(len(ODD))])
def test_odd_config_agrees_with_ssh(text, scratch):
    d, home = scratch
    cfg = d / "config"
    cfg.write_text(text.replace("@D@", str(d)))
    agree(cfg, "h", home)


_WORDS = st.sampled_from(["Host", "Match", "HostName", "User", "Port", "IdentityFile", "ProxyJump",
                          "ProxyCommand", "ConnectTimeout", "HostKeyAlias", "UserKnownHostsFile",
                          "IdentitiesOnly", "Include", "all", "final", "host", "exec", "none", "yes", "*", "!x",
                          "%h", "%%", "%", "#", "# c", "\"", "'", "=", "\\", "a b", "x,y", "22", "0", "ssh",
                          "1m", "[h]:2", "u@h", "${HOME}", "~", "\t", "NAS.Example.COM", "::1", "010.1", "\x00"])


_KW = st.sampled_from(["Host", "Match host", "Match final host", "Match user", "Match originalhost", "HostName",
                       "User", "Port", "IdentityFile", "ProxyJump", "ProxyCommand", "ConnectTimeout", "HostKeyAlias",
                       "UserKnownHostsFile", "GlobalKnownHostsFile", "IdentitiesOnly", "StrictHostKeyChecking",
                       "HashKnownHosts", "CanonicalizeHostname", "SendEnv", "SetEnv", "  HostName", "\tUser"])
_VAL = st.sampled_from(["h", "H", "*", "!h", "h*", "?", "x", "none", "None", "yes", "No", "ask", "accept-new",
                        "always", "22", "2222", "0", "ssh", "65536", "1m", "30", "1.5", "u@j:2200", "j1,j2",
                        "ssh://u@j", "[::1]:22", "true %h %p", "%h.example", "NAS.EXAMPLE", "10.0.0.001",
                        "fd00::0001", "%%", "%r@%h", "~/k_%h", "${HOME}/x", "\"a b\"", "'q'", "a=b", "A", "-A",
                        "#", "# c", "a#b", "%"])
_SEP = st.sampled_from([" ", "=", " = ", "\t", "  "])
_LINE = st.tuples(_KW, _SEP, st.lists(_VAL, min_size=1, max_size=2)).map(lambda t: t[0] + t[1] + " ".join(t[2]))


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(lines=st.lists(_LINE, min_size=1, max_size=8))
def test_generated_option_lines_agree_with_ssh(lines, tmp_path_factory):
    """Plausible lines (keyword, separator, odd values, comments): the same verdict and values as ssh."""
    test_generated_configs_agree_with_ssh.hypothesis.inner_test(lines, tmp_path_factory)


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(lines=st.lists(st.lists(_WORDS, min_size=1, max_size=5).map(" ".join), min_size=1, max_size=6))
def test_generated_configs_agree_with_ssh(lines, tmp_path_factory):
    """Configs made of odd words: never a traceback, and refused exactly when ssh refuses them."""
    d = tmp_path_factory.mktemp("gen")
    home = d / "home"
    (home / ".ssh").mkdir(parents=True)
    cfg = d / "config"
    cfg.write_text("\n".join(lines).replace("exec", "exec true") + "\n")
    old = os.environ["HOME"]
    os.environ["HOME"] = str(home)
    try:
        agree(cfg, "h", home)
    except FleetError as exc:  # agree() handles BadInput: anything else of fleet's is wrong here
        raise AssertionError(f"unexpected {type(exc).__name__}: {exc}") from None
    finally:
        os.environ["HOME"] = old

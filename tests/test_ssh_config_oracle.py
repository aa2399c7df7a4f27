"""fleet's ssh_config reader against the real OpenSSH client, option by option.

Every file of ``tests/ssh_configs/`` is one rule of ssh_config(5) (its first line says which).
Each is resolved by fleet and by ``ssh -G -F FILE NAME`` (HOME is the test's own); what ``ssh
-G`` does not expand (IdentityFile, ProxyCommand) is taken from ``ssh -v``, which prints the
expanded values before it would connect (a harmless ProxyCommand stands in for the network).
A file's header says which names to ask for (``# hosts:``; ``!name``: ssh refuses it, so fleet
must raise its BadInput) and may carry more files (``#--- file: PATH [mode=NNN]``); ``@D@`` is
the directory they are written to. The odd configs of ``ssh_configs/odd.json`` and generated
ones must never raise anything but fleet's own errors, and must fail exactly when ssh fails.
Real ssh is never let to follow a config's ProxyJump or run a ProxyCommand other than ``true``.
"""
from __future__ import annotations

import json
import os
import pwd
import re
import signal
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
        "canonicalizehostname", "hostkeyalgorithms", "casignaturealgorithms")
SSH_WORDS = {"stricthostkeychecking": {"true": "yes", "false": "off"},
             "canonicalizehostname": {"true": "yes", "false": "no"}}


def materialize(src: str, d: Path) -> tuple[Path, list[str]]:
    """Write a corpus entry under ``d``: (main config path, host names)."""
    text = src.replace("@D@", str(d))
    parts = re.split(r"^#--- file: (\S+)(?: mode=(\d+))?\n", text, flags=re.M)
    main = d / "config"
    main.write_text(parts[0])
    for name, mode, body in zip(parts[1::3], parts[2::3], parts[3::3], strict=True):
        p = d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(body)
        p.chmod(int(mode, 8) if mode else 0o644)
    m = re.search(r"^# hosts: (.+)$", parts[0], flags=re.M)
    return main, (m.group(1).split() if m else [])


def run_ssh(args: list[str], home: Path, timeout: float = 20) -> subprocess.CompletedProcess:
    """Plain ssh with HOME set, in a process group of its own that is killed afterwards (nothing
    it started outlives it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
    env["HOME"] = str(home)
    p = subprocess.Popen(["ssh", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                         env=env, text=True, errors="surrogateescape", start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


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
    # IdentityFile and ProxyCommand tokens are expanded when ssh connects: ask ssh -v. Never let
    # it follow a config's ProxyJump or an unknown ProxyCommand (ssh -W can recurse without end):
    # a harmless ProxyCommand given first stands in, unless the config's own is a corpus "true ...".
    own = safe_proxy(out)
    v = run_ssh(["-v", "-F", str(cfg), "-o", "BatchMode=yes", "-o", "IdentityFile=none",
                 *([] if own else ["-o", "ProxyCommand=true"]), name, "true"], home)
    ids: list[str] = []
    for m in re.finditer(r"^debug1: identity file (.*) type -?\d+$", v.stderr, flags=re.M):
        f = norm(unvis(m.group(1)), home)
        if not (f.endswith("-cert") and f[:-5] in ids):  # ssh also tries KEY-cert for each KEY
            ids.append(f)
    out["identityfile"] = ids
    pc = re.search(r"^debug1: Executing proxy command: exec (.*)$", v.stderr, flags=re.M)
    out["proxycommand"] = ([unvis(pc.group(1))] if pc else []) if own else (["?"] if "proxycommand" in out else [])
    return out


def safe_proxy(g: dict[str, list[str]]) -> bool:
    """The config's ProxyCommand may be run by the oracle (the corpus's all start with ``true``)."""
    return "proxyjump" not in g and bool(g.get("proxycommand")) and g["proxycommand"][0].startswith("true ")


def unvis(s: str) -> str:
    """ssh's log escapes (``\\303\\251``, ``\\\\``) back to text."""
    raw = re.sub(rb"\\([0-7]{3}|\\)", lambda m: bytes([int(m.group(1), 8)]) if m.group(1) != b"\\" else b"\\",
                 s.encode("utf-8", "surrogateescape"))
    return raw.decode("utf-8", "surrogateescape")


def same(k: str, got: list[str], want: list[str]) -> bool:
    return bool(got) if want == ["?"] else got == want


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
            assert same(k, got.get(k, []), want.get(k, [])), f"{cfg.name} {name} {k}: fleet {got.get(k)} ssh {want.get(k)}"


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
ODD: list[str] = json.loads((CORPUS / "odd.json").read_text())  # odd and bad configs, one per entry


def ssh_dies_before_connecting(cfg: Path, name: str, home: Path, why: str) -> bool:
    """For what ``ssh -G`` does not expand: does ``ssh`` itself stop before the handshake?"""
    g = ssh_view(cfg, name, home) or {}
    if "proxyjump" in g:
        # ssh would run "ssh -W ... JUMP", which fails (or recurses for ever) in the child: fleet
        # refuses the ProxyJump at once instead; never run it here
        return "ProxyJump" in why or "jumphost loop" in why
    own = safe_proxy(g)
    if "proxycommand" in g and not own:  # let ssh expand the config's ProxyCommand, but run only "true ..."
        tamed = cfg.with_name(cfg.name + ".tamed")
        tamed.write_text(re.sub(r"(?im)^(\s*proxycommand[\s=]+)(?!none\s*$)", r"\1true ", cfg.read_text()))
        cfg, own = tamed, True
    v = run_ssh(["-v", "-F", str(cfg), "-o", "BatchMode=yes", *([] if own else ["-o", "ProxyCommand=true"]),
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
            assert ssh_dies_before_connecting(cfg, name, home, str(exc)), f"fleet refused what ssh takes: {exc}"
        return
    assert want is not None, f"ssh -G refused it, fleet took it: {got}"
    for k in (*KEYS, "identityfile", "proxycommand"):
        assert same(k, got.get(k, []), want.get(k, [])), f"{k}: fleet {got.get(k)} ssh {want.get(k)}"


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
                          "1m", "[h]:2", "u@h", "${HOME}", "~", "\t", "NAS.Example.COM", "::1", "010.1", "\x00",
                          "\u00e9", "\u2028", "\x0c", "\r", "IgnoreUnknown", "SendEnv", "Bogus"])


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


# ------------------------------------------------ what ssh -G cannot show on this machine

def _cfg(d: Path, text: str) -> Path:
    p = d / "config"
    p.write_text(text.replace("@D@", str(d)))
    return p


def test_canonical_domains_found_rename_and_reparse(scratch, monkeypatch):
    """With a resolver that knows web.corp.example (the lab has no DNS), as ssh: the name gets
    the domain, the config is read again for it (Host *.corp.example, Match canonical), and a
    permitted CNAME is followed."""
    import fleet.ssh.config as c
    d, _ = scratch
    answers = {"web.corp.example.": (True, "web.corp.example"), "db.corp.example.": (True, "real-db.corp.example"),
               "other": (True, ""), "a.b.c": (True, "")}  # (PermittedCNAMEs: ssh looks up a name not found too)
    monkeypatch.setattr(c, "lookup", lambda name: answers.get(name, (False, "")))
    cfg = load_ssh_config(str(_cfg(d, "CanonicalizeHostname yes\nCanonicalDomains nothere.example corp.example\n"
                                       "CanonicalizePermittedCNAMEs *.corp.example:*.corp.example\n"
                                       "Host *.corp.example\n  User corpuser\nMatch canonical\n  Port 2022\n")))
    web = cfg.lookup("web")
    assert (web["hostname"], web["user"], web["port"]) == ("web.corp.example", "corpuser", "2022")
    assert cfg.lookup("db")["hostname"] == "real-db.corp.example"
    other = cfg.lookup("other")  # not found anywhere: kept (CanonicalizeFallbackLocal yes), re-parsed
    assert (other["hostname"], other["port"]) == ("other", "2022")
    assert cfg.lookup("a.b.c")["hostname"] == "a.b.c"  # more dots than CanonicalizeMaxDots


def test_recursive_includes_are_refused_at_once(scratch):
    import time
    d, _ = scratch
    for i in range(12):  # 12 files each including all 12: ssh would walk 12**16 files
        (d / "fan" / f"f{i}").parent.mkdir(exist_ok=True)
        (d / "fan" / f"f{i}").write_text(f"Include {d}/fan/*\nUser u{i}\n")
    (d / "self").write_text(f"Host nomatch\n  Include {d}/self\n")
    for main in (d / "fan" / "f0", d / "self"):
        t0 = time.monotonic()
        with pytest.raises(BadInput, match="Too many recursive configuration includes"):
            load_ssh_config(str(main))
        assert time.monotonic() - t0 < 2


def test_wide_include_fanout_is_bounded(scratch):
    d, _ = scratch
    (d / "w").mkdir()
    for i in range(8):  # no loop, but 8**5 paths: refused, not walked for minutes
        (d / "w" / f"l{i}").write_text("".join(f"Include {d}/w/m{j}\n" for j in range(8)) + "User x\n")
        (d / "w" / f"m{i}").write_text("".join(f"Include {d}/w/n{j}\n" for j in range(8)))
        (d / "w" / f"n{i}").write_text("".join(f"Include {d}/w/o{j}\n" for j in range(8)))
        (d / "w" / f"o{i}").write_text("".join(f"Include {d}/w/p{j}\n" for j in range(8)))
        (d / "w" / f"p{i}").write_text("Port 22\n" * 100)
    cfg = load_ssh_config(str(_cfg(d, "".join(f"Include {d}/w/l{j}\n" for j in range(8)))))
    with pytest.raises(BadInput, match="more than"):
        cfg.lookup("h")


def test_bastion_with_proxycommand_none_under_host_star_proxyjump(scratch):
    from fleet.inventory.model import Host
    from fleet.ssh.config import resolve_host
    d, _ = scratch
    cfg = load_ssh_config(str(_cfg(d, "Host bastion\n  HostName 10.9.9.9\n  ProxyCommand none\n"
                                       "Host j1\n  ProxyJump should-be-ignored\nHost *\n  ProxyJump bastion\n")))
    t = resolve_host(Host(name="app", address="app", explicit=frozenset()), cfg)
    assert [h.name for h in t.chain()] == ["bastion", "app"] and t.first.hostname == "10.9.9.9"
    # several hops: like ssh -J j1 j2 (the earlier hops are the later hop's own -J, its config ignored)
    cfg = load_ssh_config(str(_cfg(d, "Host bastion\n  ProxyCommand none\nHost app\n  ProxyJump u@j1:2201,j2\n"
                                       "Host *\n  ProxyJump bastion\n")))
    t = resolve_host(Host(name="app", address="app", explicit=frozenset()), cfg)
    assert [(h.name, h.port) for h in t.chain()] == [("bastion", 22), ("j1", 2201), ("j2", 22), ("app", 22)]
    assert t.chain()[1].user == "u"


@pytest.mark.parametrize("text,match", [
    ("Host *\n  ProxyJump %h\n", "jumphost loop"),
    ("Host *\n  ProxyJump none # no jump\n", "named 'none'"),
    ("Host a\n  ProxyJump b\nHost b\n  ProxyJump a\n", "longer than"),
    ("Host *\n  IdentityFile ${FLEET_NO_SUCH_VAR}/k\n", "has no value"),
])
def test_refused_with_file_and_line(scratch, text, match):
    d, _ = scratch
    p = _cfg(d, text)
    with pytest.raises(BadInput, match=match) as ei:
        load_ssh_config(str(p)).lookup("a")
    assert str(p) in str(ei.value) and "\n" not in str(ei.value)


def test_match_exec_runs_through_the_shell_with_tokens_and_only_if_needed(scratch):
    d, _ = scratch
    cfg = load_ssh_config(str(_cfg(d, "Host h\n  HostName H.Example\n  Port 2200\n"
                                       "Match exec \"echo %h %p %r %n >> @D@/ran; test %n = h\"\n  User matched\n"
                                       "Match host nomatch exec \"touch @D@/never\"\n  User no\n")))
    assert cfg.lookup("h")["user"] == "matched"
    # %h in a first-pass Match is HostName as written, %-expanded (ssh lowercases it only afterwards)
    assert (d / "ran").read_text().split() == ["H.Example", "2200", pwd.getpwuid(os.getuid()).pw_name, "h"]
    assert not (d / "never").exists()


def test_inventory_values_act_as_ssh_dash_o(scratch):
    from fleet.inventory.model import Host
    from fleet.ssh.config import resolve_host
    d, _ = scratch
    cfg = load_ssh_config(str(_cfg(d, "Match user deploy\n  Port 2222\nHost web\n  HostName Web.Internal\n"
                                       "  User nobody\n  Port 22\n")))
    t = resolve_host(Host(name="web", address="Override.Example", user="deploy", explicit=frozenset({"address", "user"})),
                     cfg)
    assert (t.hostname, t.user, t.port, t.key_name) == ("override.example", "deploy", 2222, "[override.example]:2222")


def test_config_files_and_their_permissions(scratch):
    d, home = scratch
    with pytest.raises(BadInput, match="no such file"):
        load_ssh_config(str(d / "missing"))
    assert load_ssh_config("none").lookup("h")["hostname"] == "h"
    user_cfg = home / ".ssh" / "config"
    user_cfg.write_text("Host h\n  User mine\n")
    user_cfg.chmod(0o666)  # ssh refuses a ~/.ssh/config others can write
    with pytest.raises(BadInput, match="Bad owner or permissions"):
        load_ssh_config(None)
    user_cfg.chmod(0o600)
    assert load_ssh_config("~/.ssh/config").lookup("h")["user"] == "mine"


def test_newer_openssh_keywords_and_paramiko_configs_are_read(scratch):
    import paramiko

    from fleet.inventory.model import Host
    from fleet.ssh.config import resolve_host
    d, _ = scratch
    # keywords of OpenSSH releases newer than this one's ssh (9.4+, 10.x) are accepted and ignored
    cfg = load_ssh_config(str(_cfg(d, "Host *\n  Tag t\n  ChannelTimeout session=5m\n  ObscureKeystrokeTiming no\n")))
    assert cfg.lookup("h")["hostname"] == "h"
    legacy = paramiko.SSHConfig.from_text("Host old\n  HostName 10.0.0.9\n  Port 2022\n  User legacy\n")
    t = resolve_host(Host(name="old", address="old", explicit=frozenset()), legacy)
    assert (t.hostname, t.port, t.user) == ("10.0.0.9", 2022, "legacy")

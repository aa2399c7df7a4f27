"""inventory.export against the real tools: ansible-inventory / ansible and ClusterShell's nodeset
and clush must select the same hosts fleet selects, and reach the lab's real sshd hosts."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import inv_cmd, write_inventory

from fleet.errors import BadInput, SelectorError
from fleet.inventory import load_inventory, load_inventory_text
from fleet.inventory.export import export_inventory
from fleet.inventory.select import names, select

BIN = Path(sys.executable).parent
TOOLS = ("ansible", "ansible-inventory", "nodeset", "clush")
MISSING = [t for t in TOOLS if not (BIN / t).exists()]
assert not MISSING, f"{', '.join(MISSING)} missing from {BIN}: pip install -e '.[test]' (ansible-core, ClusterShell)"

# Names Ansible rejects or that would clash there: dashes, dots, a leading digit, a group named
# like a host, a group named like tag:gpu's Ansible group, Ansible's own 'ungrouped', an alias
# named like a group.
INV_TEXT = """
known_hosts: kh
ssh_config: ssh_cfg
defaults: {user: ops, tags: [fleet]}
hosts:
  web-1: {address: 10.0.0.1, aliases: [www, front-door], tags: [rack-a, edge]}
  web-2: {address: 10.0.0.2, port: 2222, tags: [rack-a]}
  db.main: {identity_file: keys/db, aliases: [gpu], tags: [rack-b, "2024"]}
  epyc6: {aliases: [epyc], tags: [gpu, linux]}
  epyc7: {tags: [gpu, linux]}
  box: {auth: local, aliases: [localbox], tags: [linux]}
groups:
  gpu: [epyc6, epyc7]
  web-tier: [web-1, web-2]
  tag_gpu: [db.main]
  ungrouped: [box]
  epyc6: [epyc6, db.main]
  "01": [web-2]
  rack.b: [db.main]
"""

# fleet selector, the Ansible pattern, the nodeset expression (as in the README's table)
TABLE = [
    ("web-1", "web-1", "web-1"),
    ("www", "www", "@alias:www"),
    ("front-door", "front_door", "@alias:front-door"),
    ("gpu", "gpu_2", "@alias:gpu"),                                  # an alias, not the group
    ("@gpu", "gpu", "@gpu"),
    ("@epyc6", "epyc6_2", "@epyc6"),                                 # a group named like a host
    ("tag:gpu", "tag_gpu_2", "@tag:gpu"),
    ("@tag_gpu", "tag_gpu", "@tag_gpu"),
    ("tag:rack-a", "tag_rack_a", "@tag:rack-a"),
    ("@web-tier,@01", "web_tier:_01", "@web-tier,@01"),
    ("all", "all", "@all"),
    ("*", "all", "@all"),
    ("!@gpu", "all:!gpu", "@all!@gpu"),                              # exclusions alone: all but
    ("!web-1,@web-tier", "web_tier:!web-1", "@web-tier!web-1"),      # exclusions after inclusions
    ("@gpu,!epyc6,epyc6", "gpu:epyc6:!epyc6", "@gpu,epyc6!epyc6"),
    ("all,!tag:linux,!@ungrouped", "all:!tag_linux:!ungrouped_2", "@all!@tag:linux!@ungrouped"),
    ("@rack.b,tag:2024,localbox", "rack_b:tag_2024:localbox", "@rack.b,@tag:2024,@alias:localbox"),
    ("tag:fleet,!@web-tier,!gpu", "tag_fleet:!web_tier:!gpu_2", "@tag:fleet!@web-tier!@alias:gpu"),
    ("epyc,epyc7", "epyc:epyc7", "@alias:epyc,epyc7"),
]


def tool_env(home: Path, cs_dir: Path | None = None) -> dict:
    """Ansible and ClusterShell confined to ``home``: no ~/.ansible, /etc/ansible or ~/.config
    read or written, no host key prompt, no ssh master left running."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "CLUSTERSHELL_"))}
    (home / ".ansible" / "tmp").mkdir(parents=True, exist_ok=True)
    cfg = home / "ansible.cfg"
    cfg.write_text("")
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), LC_ALL="C.UTF-8", LANG="C.UTF-8",
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
               ANSIBLE_CONFIG=str(cfg), ANSIBLE_HOME=str(home / ".ansible"),
               ANSIBLE_LOCAL_TEMP=str(home / ".ansible" / "tmp"), ANSIBLE_HOST_KEY_CHECKING="True",
               ANSIBLE_SSH_ARGS="-o ControlMaster=no", ANSIBLE_INVENTORY_ENABLED="yaml",
               ANSIBLE_INVENTORY_UNPARSED_FAILED="True", ANSIBLE_NOCOLOR="1", ANSIBLE_TIMEOUT="10",
               ANSIBLE_SSH_RETRIES="0", ANSIBLE_DEPRECATION_WARNINGS="False")
    if cs_dir is not None:
        env["CLUSTERSHELL_CFGDIR"] = str(cs_dir)
    return env


def run(args: list, env: dict, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / args[0]), *map(str, args[1:])], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The inventory above, exported both ways once, and an environment for the tools."""
    d = tmp_path_factory.mktemp("export")
    (d / "inventory.yaml").write_text(INV_TEXT)
    inv = load_inventory(d / "inventory.yaml")
    ans = export_inventory(inv, "ansible", output=d / "hosts.yaml")
    cs = export_inventory(inv, "clustershell", output=d / "cs")
    return inv, ans, cs, d, tool_env(d, d / "cs")


def ansible_hosts(pattern: str, world) -> set[str]:
    _inv, _ans, _cs, d, env = world
    p = run(["ansible", "-i", d / "hosts.yaml", pattern, "--list-hosts"], env, d)
    assert p.returncode == 0, p.stderr
    assert "WARNING" not in p.stderr, p.stderr
    return {ln.strip() for ln in p.stdout.splitlines()[1:] if ln.strip()}


def nodeset_hosts(expr: str, world) -> set[str]:
    _inv, _ans, _cs, d, env = world
    p = run(["nodeset", "-e", expr], env, d)
    assert p.returncode == 0, p.stderr
    return set(p.stdout.split())


@pytest.mark.parametrize("sel,pattern,expr", TABLE, ids=[t[0] for t in TABLE])
def test_same_hosts_in_fleet_ansible_and_nodeset(world, sel, pattern, expr):
    inv, ans, cs, _d, _env = world
    want = set(names(select(inv, sel)))
    assert ans.pattern(sel, inv) == pattern and cs.pattern(sel, inv) == expr
    assert ansible_hosts(pattern, world) == want
    assert nodeset_hosts(expr, world) == want


def test_ansible_inventory_list_has_every_group_tag_alias_and_only_stated_vars(world):
    inv, ans, _cs, d, env = world
    p = run(["ansible-inventory", "-i", d / "hosts.yaml", "--list"], env, d)
    assert p.returncode == 0 and "WARNING" not in p.stderr, p.stderr
    doc = json.loads(p.stdout)

    def members(group: str) -> set[str]:
        g = doc.get(group, {})
        return set(g.get("hosts", [])).union(*[members(c) for c in g.get("children", [])])

    assert members("all") == {h.name for h in inv.hosts}
    terms = [f"@{g}" for g in inv.groups] + [f"tag:{t}" for h in inv.hosts for t in h.tags] + \
            [a for h in inv.hosts for a in h.aliases]
    for term in terms:
        assert members(ans.names[term]) == set(names(select(inv, term))), term
    assert len(set(ans.names.values())) == len(ans.names)  # no two fleet terms share a group
    hv = doc["_meta"]["hostvars"]
    common = f"-F {d / 'ssh_cfg'} -o 'UserKnownHostsFile=~/.ssh/known_hosts {d / 'kh'}'"
    assert all(v.pop("ansible_ssh_common_args") == common for v in hv.values())  # from all.vars
    assert hv["web-2"] == {"ansible_host": "10.0.0.2", "ansible_port": 2222, "ansible_user": "ops"}
    assert hv["epyc6"] == {"ansible_user": "ops"}  # no address/port: ssh_config says where it is
    assert hv["db.main"] == {"ansible_user": "ops", "ansible_ssh_private_key_file": str(d / "keys" / "db"),
                             "ansible_ssh_extra_args": "-o IdentitiesOnly=yes"}
    assert hv["box"] == {"ansible_connection": "local"}
    text = (d / "hosts.yaml").read_text()
    assert "# note: renamed for Ansible" in text and "@web-tier -> web_tier" in text and "gpu -> gpu_2" in text


def test_clustershell_groups_list_and_ssh_options(world):
    inv, _ans, cs, d, env = world
    for src, want in (("fleet", {"all"} | set(inv.groups)), ("tag", {t for h in inv.hosts for t in h.tags}),
                      ("alias", {a for h in inv.hosts for a in h.aliases})):
        p = run(["nodeset", "-l", "-s", src], env, d)
        assert p.returncode == 0, p.stderr
        assert {g.removeprefix(f"@{src}:") for g in p.stdout.split()} == want, p.stdout
    assert cs.ssh_options == f"-F {d / 'cs' / 'ssh_config'}"
    assert f"ssh_options: -F {d / 'cs' / 'ssh_config'}" in (d / "cs" / "clush.conf").read_text()
    cfg = (d / "cs" / "ssh_config").read_text()
    assert "Host web-2\n  HostName 10.0.0.2\n  Port 2222\n  User ops\n" in cfg
    assert f"Host db.main\n  User ops\n  IdentityFile {d / 'keys' / 'db'}\n  IdentitiesOnly yes\n" in cfg
    assert "Host box" not in cfg and f"Include {d / 'ssh_cfg'}" in cfg
    assert f"UserKnownHostsFile ~/.ssh/known_hosts {d / 'kh'}" in cfg
    # ssh itself reads it the same way: stated values first, the rest from the included file
    (d / "ssh_cfg").write_text("Host web-2 epyc6\n  Port 2200\n  HostName from-config\n")
    p = subprocess.run(["ssh", "-G", "-F", str(d / "cs" / "ssh_config"), "web-2"], capture_output=True, text=True,
                       env=env, timeout=10)
    assert p.returncode == 0, p.stderr
    assert {"hostname 10.0.0.2", "port 2222", "user ops"} <= set(p.stdout.splitlines())
    p = subprocess.run(["ssh", "-G", "-F", str(d / "cs" / "ssh_config"), "epyc6"], capture_output=True, text=True,
                       env=env, timeout=10)
    assert {"hostname from-config", "port 2200", "user ops"} <= set(p.stdout.splitlines()), p.stdout


def test_a_subset_exports_only_its_hosts_and_says_what_it_left_out(world, tmp_path):
    inv = world[0]
    ans = export_inventory(inv, "ansible", "@gpu,!epyc7")
    assert ans.hosts == ("epyc6",)
    assert "left out, no exported host in them: @web-tier, @tag_gpu, @ungrouped, @01, @rack.b" in ans.text
    assert ans.pattern("tag:linux", inv) == "tag_linux"
    with pytest.raises(BadInput, match="'@web-tier' in selector '@web-tier' names no exported host"):
        ans.pattern("@web-tier", inv)
    cs = export_inventory(inv, "clustershell", "@gpu")
    assert "fleet:\n  all: epyc6,epyc7\n  gpu: epyc6,epyc7\n  epyc6: epyc6\n" in cs.text
    with pytest.raises(SelectorError, match="unknown group '@nope'"):
        export_inventory(inv, "ansible", "@nope")
    with pytest.raises(BadInput, match="did you mean 'ansible'"):
        export_inventory(inv, "ansibel")
    with pytest.raises(BadInput, match="is a directory"):
        export_inventory(inv, "ansible", output=tmp_path)
    (tmp_path / "f").write_text("")
    with pytest.raises(BadInput, match="is a file"):
        export_inventory(inv, "clustershell", output=tmp_path / "f")


def test_no_ssh_config_no_known_hosts_no_stated_settings_means_no_ssh_options():
    inv = load_inventory_text("hosts:\n  a: {tags: [t]}\n  b: {}\n", "/x/inv.yaml")
    ans = export_inventory(inv, "ansible")
    assert "vars" not in ans.text and "a:\n    b:\n" in ans.text
    cs = export_inventory(inv, "clustershell")
    assert cs.ssh_options is None and "no ssh_options needed" in cs.text and "note" not in cs.text
    assert export_inventory(inv, "ansible", ssh_config="/etc/fleet/ssh_config").text.count("-F /etc/fleet/ssh_config") == 2


# --------------------------------------------------------------------------- the lab's real sshd

def _reach(inventory: Path, tmp_path: Path, hosts: list[str]):
    """Export ``inventory``, then run 'echo hi' on ``hosts`` with ansible's raw module and with clush."""
    inv = load_inventory(inventory)
    sel = ",".join(hosts)
    ans = export_inventory(inv, "ansible", output=tmp_path / "hosts.yaml")
    cs = export_inventory(inv, "clustershell", output=tmp_path / "cs")
    env = tool_env(tmp_path, tmp_path / "cs")
    p = run(["ansible", "-i", tmp_path / "hosts.yaml", "-m", "raw", "-a", "echo hi", ans.pattern(sel, inv)], env,
            tmp_path, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    for h in hosts:
        h = inv.host(h).name
        assert f"{h} | CHANGED | rc=0 >>\nhi" in p.stdout, p.stdout
    p = run(["clush", "--nostdin", "-w", cs.pattern(sel, inv), "echo", "hi"], env, tmp_path, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert sorted(p.stdout.splitlines()) == sorted(f"{inv.host(h).name}: hi" for h in hosts), p.stdout + p.stderr
    return ans, cs


def test_ansible_raw_and_clush_reach_the_lab_through_its_ssh_config(lab, tmp_path):
    ans, cs = _reach(lab.inventory, tmp_path, ["lab02", "l3"])
    assert f"ansible_ssh_common_args: -F {lab.ssh_config}" in ans.text and "ansible_host" not in ans.text
    assert cs.ssh_options == f"-F {tmp_path / 'cs' / 'ssh_config'}"  # for known_hosts, then the lab's file


def test_ansible_raw_and_clush_reach_the_lab_with_what_the_inventory_states(lab, tmp_path):
    # address, port, user, identity_file and known_hosts in the inventory, no ssh_config at all
    p = write_inventory(tmp_path / "inv.yaml", lab, names=["lab01", "lab04"])
    ans, cs = _reach(p, tmp_path, ["lab01", "lab04"])
    assert "ansible_port" in ans.text and "ansible_ssh_private_key_file" in ans.text and "-F" not in ans.text
    assert "Include ~/.ssh/config" in (tmp_path / "cs" / "ssh_config").read_text()


def test_cli_export(tmp_path):
    p = tmp_path / "inventory.yaml"
    p.write_text(INV_TEXT)
    r = inv_cmd("inventory.export", "--format", "ansible", "--inventory", str(p), "--hosts", "@gpu", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == export_inventory(load_inventory(p), "ansible", "@gpu").text
    r = inv_cmd("inventory.export", "--format", "clustershell", "--inventory", str(p), "--output",
                str(tmp_path / "cs"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert {x.name for x in (tmp_path / "cs").iterdir()} == {"groups.d", "groups.conf", "clush.conf", "ssh_config"}
    assert "CLUSTERSHELL_CFGDIR" in r.stderr and r.stdout == ""
    r = inv_cmd("inventory.export", "--format", "chef", "--inventory", str(p), cwd=tmp_path)
    assert r.returncode == 2 and "not an export format" in r.stderr

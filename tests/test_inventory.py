"""Strict inventory: every rejection names line, column, problem and fix."""
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.errors import InventoryError
from fleet.inventory import load_inventory, load_inventory_text
from fleet.inventory.importer import vm_endpoints_to_yaml

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = (ROOT / "inventory.yaml").read_text()

# (yaml, line, column, words in the problem, words in the fix)
BAD = [
    ("hosts:\n  a: {user: x}\n  a: {user: y}\n", 3, 3, "duplicate key 'a'", "keep one"),
    ("hosts:\n  a:\n    user: x\n    user: y\n", 4, 5, "duplicate key 'user'", "silently drop"),
    ("hosts:\n  a: {usr: x}\n", 2, 7, "unknown key 'usr'", "did you mean 'user'"),
    ("hostz:\n  a: {}\n", 1, 1, "unknown key 'hostz'", "did you mean 'hosts'"),
    ("hosts:\n  a: {port: 70000}\n", 2, 13, "not a TCP port", "1 to 65535"),
    ("hosts:\n  a: {port: twenty}\n", 2, 13, "not a TCP port", "port: 22"),
    ("hosts:\n  a: {port: 0}\n", 2, 13, "not a TCP port", "1 to 65535"),
    ("hosts:\n  -rf: {user: x}\n", 2, 3, "not a plain hostname", "not starting with '-'"),
    ("hosts:\n  'bad name': {user: x}\n", 2, 3, "not a plain hostname", "no spaces"),
    ("hosts:\n  'a;rm': {user: x}\n", 2, 3, "not a plain hostname", "shell"),
    ("hosts:\n  a: {aliases: ['$(id)']}\n", 2, 17, "not a plain hostname", "letters, digits"),
    ("hosts:\n  a: {aliases: [b]}\n  b: {}\n", 2, 17, "already the name of host 'b'", "own aliases"),
    ("hosts:\n  a: {aliases: [x]}\n  b: {aliases: [x]}\n", 3, 17, "already an alias of host 'a'", "own aliases"),
    ("hosts:\n  a: {auth: kerberos}\n", 2, 13, "not an auth mode", "ssh-key"),
    ("hosts:\n  a: {auth: sshkey}\n", 2, 13, "not an auth mode", "did you mean 'ssh-key'"),
    ("hosts:\n  a: {opencode: {url: 'ftp://x:1'}}\n", 2, 23, "not a server URL", "http://"),
    ("hosts:\n  a: {opencode: {url: 'http://x:99999'}}\n", 2, 23, "not a server URL", "scheme, host and port"),
    ("hosts:\n  a: {opencode: {url: 'http://u:p@x:1'}}\n", 2, 23, "must not carry credentials", "password_env"),
    ("hosts:\n  a: {opencode: {url: 'http://x:1', password: hunter2}}\n", 2, 37, "not allowed", "password_env"),
    ("hosts:\n  a: {}\ngroups:\n  g: [a, bb]\n", 4, 10, "not a host in this inventory", "known hosts"),
    ("hosts:\n  alpha: {}\ngroups:\n  g: [alpah]\n", 4, 7, "'alpah' is not a host", "did you mean 'alpha'"),
    ("hosts:\n  a: {}\ncanary: zz\n", 3, 9, "canary 'zz' is not a host", "known hosts"),
    ("hosts:\n  a: {}\ndefault_host: b\n", 3, 15, "default_host 'b'", "known hosts"),
    ("hosts:\n  a: {}\nroutes:\n  dispatch: '@nogroup'\n", 4, 13, "unknown group", "groups"),
    ("hosts:\n  a: {}\nslack: {token: xoxb-1}\n", 3, 9, "not allowed", "token_env"),
    ("hosts:\n  a: {}\nslack: {token_env: X}\n", 3, 8, "slack has no channel", "channel"),
    ("hosts:\n  a:\n\tuser: x\n", 3, 1, "invalid YAML", "spaces, not tabs"),
    ("hosts: [a, b]\n", 1, 8, "must be a mapping", "key: value"),
    ("hosts: {}\n", 1, 8, "'hosts' is empty", "at least one host"),
    ("", 1, 1, "empty", "hosts:"),
    ("defaults: {user: x}\n", 1, 1, "no 'hosts:' section", "hosts:"),
    ("hosts:\n  a: {tags: gpu}\n", 2, 13, "must be a list", "[a, b]"),
    ("hosts:\n  a: {repos: {root: relative/dir}}\n", 2, 21, "must be absolute", "/home/feng/repos"),
    ("hosts:\n  all: {}\n", 2, 3, "reserved", "another name"),
    ("defaults: {aliases: [x]}\nhosts:\n  a: {}\n", 1, 12, "not allowed in defaults", "one host"),
    ("hosts:\n  a: {opencode: {password_env: 'X Y', url: 'http://a:1'}}\n", 2, 32, "not an environment variable", "OPENCODE_PASSWORD"),
    ("hosts:\n  a: {user: [x]}\n", 2, 13, "plain name", "list"),
    ("hosts:\n  a: {}\n<<: {b: 1}\n", 3, 1, "unsupported key", "merge keys"),
]


@pytest.mark.parametrize("text,line,col,problem,fix", BAD, ids=[str(i) for i in range(len(BAD))])
def test_each_bad_inventory_names_position_problem_and_fix(text, line, col, problem, fix):
    with pytest.raises(InventoryError) as ei:
        load_inventory_text(text, "inv.yaml")
    e = ei.value
    assert e.path == "inv.yaml"
    assert (e.line, e.column) == (line, col), str(e)
    assert problem in str(e), str(e)
    assert fix in str(e), str(e)
    assert str(e).startswith("inv.yaml")


def test_corpus_is_big_enough():
    assert len(BAD) >= 25


def test_example_inventory_loads_and_defaults_merge():
    inv = load_inventory(ROOT / "inventory.yaml")
    names = [h.name for h in inv.hosts]
    assert names == ["homedesktop-wsl", "macmini", "epyc6"]
    mac = inv.host("mac")
    assert mac.name == "macmini" and mac.port == 22 and mac.repos_root == "~/repos"
    assert mac.repo_path("affordabot") == "~/repos/affordabot"
    epyc = inv.host("epyc6")
    assert epyc.repos_root == "/home/feng/repos"
    assert epyc.repo_path("affordabot") == "/home/feng/repos/affordabot-main"
    assert epyc.opencode.password_file.endswith("/.config/fleet/epyc6.password")
    assert inv.canary == "macmini" and inv.default_host == "epyc6"
    assert inv.slack.channel == "C09MQGMFKDE" and inv.slack.token_env == "SLACK_BOT_TOKEN"


def test_relative_paths_are_relative_to_the_inventory_file(tmp_path):
    p = tmp_path / "sub" / "inv.yaml"
    p.parent.mkdir()
    p.write_text("known_hosts: kh\nhosts:\n  a: {identity_file: keys/id}\n")
    inv = load_inventory(p)
    assert inv.known_hosts == str(p.parent / "kh")
    assert inv.hosts[0].identity_file == str(p.parent / "keys" / "id")


def test_missing_file_is_bad_input_with_advice(tmp_path):
    with pytest.raises(InventoryError, match="file not found.*--inventory"):
        load_inventory(tmp_path / "nope.yaml")


MUTATIONS = st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(
    ["", ":", " ", "-", "\n", "\t", "[", "]", "{", "}", "'", '"', "&a", "*a", "!!int ", "<<", "#", "%", "@",
     "!", "|", ">", "?", ",", "99999", "null", "~", "\x00", "é", "hosts:", "  x: 1\n"])), min_size=1, max_size=6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(MUTATIONS)
def test_random_mutations_raise_only_inventory_error(muts):
    text = EXAMPLE
    for pos, s in muts:
        i = pos % (len(text) + 1)
        text = text[:i] + s + text[i + 1:]
    try:
        load_inventory_text(text, "fuzz.yaml", ROOT)
    except InventoryError as e:
        assert str(e).startswith("fuzz.yaml")


SEED_JSON = {
    "vms": {
        "homedesktop": {"opencode": "http://localhost:4105", "ssh": None, "tailscale": None, "local": True},
        "macmini": {"opencode": "http://macmini.tail76761.ts.net:4105", "ssh": "fengning@macmini",
                    "tailscale": "macmini.tail76761.ts.net"},
        "epyc6": {"opencode": "http://epyc6.tail76761.ts.net:4105", "ssh": "feng@epyc6",
                  "tailscale": "epyc6.tail76761.ts.net"},
    },
    "default_vm": "epyc6",
    "slack_audit_channel": "C09MQGMFKDE",
}


def test_vm_endpoints_import_round_trip():
    text, dropped = vm_endpoints_to_yaml(SEED_JSON)
    inv = load_inventory_text(text, "imported.yaml")
    assert [h.name for h in inv.hosts] == ["homedesktop", "macmini", "epyc6"]
    by = {h.name: h for h in inv.hosts}
    assert by["homedesktop"].auth == "local" and by["homedesktop"].opencode.url == "http://localhost:4105"
    assert by["macmini"].user == "fengning" and by["macmini"].address == "macmini.tail76761.ts.net"
    assert by["macmini"].auth == "tailscale"
    assert by["epyc6"].user == "feng" and by["epyc6"].opencode.url == "http://epyc6.tail76761.ts.net:4105"
    assert inv.default_host == "epyc6" and inv.slack.channel == "C09MQGMFKDE"
    assert dropped == []


def test_import_reports_what_it_drops():
    data = json.loads(json.dumps(SEED_JSON))
    data["vms"]["epyc6"]["gpu_count"] = 8
    data["extra"] = 1
    _, dropped = vm_endpoints_to_yaml(data)
    assert any("vms.epyc6.gpu_count" in d for d in dropped)
    assert any("'extra'" in d for d in dropped)

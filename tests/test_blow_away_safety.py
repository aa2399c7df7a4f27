"""blow-away cannot destroy: the host-side script under bash and dash, inside a throwaway tree.

Every run puts a logging stand-in for ``rm`` first on PATH, so even a wrong verdict removes
nothing: the log says what *would* have been removed, and the tests assert on that. No test
names a real system path as a target; the root that "resolves to /" is a symlink made inside
the test's own temp dir.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.errors import InventoryError, Refused
from fleet.inventory import Host, load_inventory_text
from fleet.ops.blow_away import blow_away_command, blow_away_paths

SHELLS = ["bash", "dash"]


def make_tree(base: Path) -> dict[str, Path]:
    """base/root/{repo,link_out->../outside,link_slash->/}, base/outside, base/rl->/, base/home/user."""
    (base / "root" / "repo" / "sub").mkdir(parents=True, exist_ok=True)
    (base / "outside").mkdir(exist_ok=True)
    (base / "home" / "user").mkdir(parents=True, exist_ok=True)
    for link, to in ((base / "root" / "link_out", "../outside"), (base / "root" / "link_slash", "/"),
                     (base / "rl", "/"), (base / "rhome", "home")):
        if not link.is_symlink():
            link.symlink_to(to)
    fakebin = base / "fakebin"
    fakebin.mkdir(exist_ok=True)
    rm = fakebin / "rm"
    rm.write_text(f'#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done >> {base}/rm.log\n')
    rm.chmod(0o755)
    return {"base": base, "root": base / "root", "home": base / "home" / "user", "fakebin": fakebin}


def run_script(tree: dict[str, Path], shell: str, path: str, root: str) -> tuple[int, str, list[str]]:
    log = tree["base"] / "rm.log"
    log.unlink(missing_ok=True)
    env = {"PATH": f"{tree['fakebin']}:/usr/bin:/bin", "HOME": str(tree["home"])}
    p = subprocess.run([shell, "-c", blow_away_command(path, root)], cwd=tree["base"], env=env,
                       capture_output=True, text=True, timeout=20)
    removed = [a for a in log.read_text().splitlines() if a not in ("-rf", "--")] if log.exists() else []
    return p.returncode, p.stdout + p.stderr, removed


@pytest.mark.parametrize("shell", SHELLS)
def test_root_that_resolves_to_slash_is_refused(tmp_path, shell):
    """The reproduction from the issue: root is a symlink to /, path root/etc."""
    t = make_tree(tmp_path)
    rl = str(tmp_path / "rl")
    code, out, removed = run_script(t, shell, f"{rl}/etc", rl)
    assert code == 96 and "resolves to /" in out and removed == []


@pytest.mark.parametrize("shell", SHELLS)
def test_home_and_its_ancestors_are_refused_as_roots(tmp_path, shell):
    t = make_tree(tmp_path)
    for root in (str(t["home"]), str(tmp_path / "home"), str(tmp_path / "rhome"), "~"):
        code, out, removed = run_script(t, shell, f"{root}/user", root)
        assert code == 96 and removed == [], (root, out)


@pytest.mark.parametrize("shell", SHELLS)
def test_symlinked_repo_escaping_the_root_is_refused(tmp_path, shell):
    t = make_tree(tmp_path)
    root = str(t["root"])
    for path in (f"{root}/link_out", f"{root}/link_slash", f"{root}/../outside", f"{root}/repo/../../outside"):
        code, out, removed = run_script(t, shell, path, root)
        assert code in (92, 94) and removed == [], (path, out)


@pytest.mark.parametrize("shell", SHELLS)
def test_legit_repo_is_removed_and_named(tmp_path, shell):
    t = make_tree(tmp_path)
    code, out, removed = run_script(t, shell, f"{t['root']}/repo", str(t["root"]))
    assert code == 0 and removed == [str(t["root"].resolve() / "repo")] and "removed" in out


@pytest.mark.parametrize("shell", SHELLS)
def test_shell_payloads_in_paths_never_run(tmp_path, shell):
    t = make_tree(tmp_path)
    pwned = tmp_path / "PWNED"
    payloads = [f"$(touch {pwned})", f"`touch {pwned}`", f'"; touch {pwned}; echo "', f"'; touch {pwned}; '",
                f"a\nb; touch {pwned}"]
    for pl in payloads:
        for root, path in ((f"{t['root']}{pl}", f"{t['root']}{pl}/repo"), (str(t["root"]), f"{t['root']}/{pl}")):
            code, out, removed = run_script(t, shell, path, root)
            assert not pwned.exists(), (pl, out)
            assert removed == [], (pl, out)


names = st.sampled_from(["repo", "..", ".", "link_out", "link_slash", "sub", "", "$(touch P)", "`touch P`",
                         '"; touch P; echo "', "a\nb", "~", "*"])
roots = st.sampled_from(["root", "rl", "root/..", "root/repo", "home", "home/user", "rhome", "outside",
                         "root/link_slash", "root/link_out", "/", "~", "//", "root/$(touch P)"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(root=roots, parts=st.lists(names, min_size=0, max_size=4), shell=st.sampled_from(SHELLS),
       slashes=st.sampled_from(["/", "//"]))
def test_property_never_removes_outside_a_sane_root(tmp_path, root, parts, shell, slashes):
    t = make_tree(tmp_path)
    r = root if root.startswith(("/", "~")) else f"{tmp_path}/{root}"
    path = r + slashes + "/".join(parts)
    code, out, removed = run_script(t, shell, path, r)
    assert not (tmp_path / "P").exists() and not Path("P").exists()
    sane = str(t["root"].resolve())
    for target in removed:
        assert target.startswith(sane + "/"), (root, parts, target, out)


def test_loader_refuses_shell_special_characters_in_repo_paths():
    for bad in ("/srv/x$(touch /tmp/PWNED)", "/srv/`id`", '/srv/a"b', "/srv/a;b"):
        with pytest.raises(InventoryError, match="shell-special"):
            load_inventory_text(f"hosts:\n  h: {{repos: {{root: '{bad}'}}}}\n", "t.yaml")
    inv = load_inventory_text("hosts:\n  h: {repos: {root: '/srv/my repos', paths: {a: 'x/y-z_1.2'}}}\n", "t.yaml")
    assert inv.host("h").repos_root == "/srv/my repos"


def test_lexical_check_refuses_insane_roots_before_anything_runs():
    for root in ("/", "//", "/etc", "/usr/local", "~", "/home"):
        h = Host(name="h", address="h", repos_root=root)
        with pytest.raises(Refused, match="not a place to remove repos"):
            blow_away_paths([h], "demo")
    ok = blow_away_paths([Host(name="h", address="h", repos_root="/srv/repos")], "demo")
    assert ok == {"h": ("/srv/repos/demo", "/srv/repos")}

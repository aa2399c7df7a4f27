"""Issue 21, worktrees: only fleet's own branch is ever deleted, and never one holding the only copy
of a commit (1); the inventory's repo paths are used everywhere (3); the plan says what will be
refused, checked on the host before any token, so a refusal never spends one (13).

On the session lab (real sshd, real git), each test with repos of its own under a lab host's root.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fleet.errors import Refused
from fleet.inventory import load_inventory_text
from fleet.ops.worktrees import create_worktree, list_worktrees, remove_worktree
from fleet.safety.gate import ConfirmationRequired
from fleet.safety.tokens import TokenStore

ID = ["-c", "user.name=t", "-c", "user.email=t@t.invalid"]


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *ID, *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


def new_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    git("init", "-q", "-b", "main", cwd=path)
    (path / "README").write_text("base\n")
    git("add", "-A", cwd=path)
    git("commit", "-qm", "base", cwd=path)
    return path


def inventory(lab, host_index: int, paths: dict[str, str] | None = None):
    h = lab.hosts[host_index]
    extra = (", paths: {" + ", ".join(f"{k}: {v}" for k, v in paths.items()) + "}") if paths else ""
    text = (f"known_hosts: {lab.known_hosts}\ndefaults: {{user: {lab.user}, auth: ssh-key, "
            f"identity_file: {lab.key}}}\nhosts:\n  {h.name}: {{address: {h.address}, port: {h.port}, "
            f"repos: {{root: {h.repos_root}{extra}}}}}\n")
    return load_inventory_text(text, "inv.yaml"), h.name, Path(h.repos_root)


def gated(inv, host, args, st, **kw):
    """Ask for the token, then run with it (what a person does)."""
    with pytest.raises(ConfirmationRequired) as ei:
        remove_worktree(inv, host, args=args, settings=st, **kw)
    return ei.value, remove_worktree(inv, host, args=args, settings=st, confirm=ei.value.token, **kw)


def branches(repo: Path) -> list[str]:
    return git("branch", "--format=%(refname:short)", cwd=repo).split()


def test_delete_branch_never_deletes_a_branch_someone_checked_out_in_the_worktree(lab, tmp_path, st):
    inv, name, root = inventory(lab, 14)
    repo = new_repo(root / f"rel-{tmp_path.name}")
    h = inv.host(name)
    wt = Path(create_worktree(inv, h, repo.name, str(repo), "wt1")["path"])
    git("branch", "release-1.0", cwd=repo)
    git("checkout", "-q", "release-1.0", cwd=wt)  # someone switched the worktree to a release branch
    (wt / "fix").write_text("release fix\n")
    git("add", "-A", cwd=wt)
    git("commit", "-qm", "release fix", cwd=wt)
    fix = git("rev-parse", "HEAD", cwd=wt).strip()
    plan, out = gated(inv, name, {"repo": repo.name, "name": "wt1", "force": False, "delete_branch": True}, st)
    assert "release-1.0" in plan.plan.describe()  # the plan says what is checked out there, and that it stays
    assert out[0].outcome == "removed", out
    assert "release-1.0" in branches(repo), "a branch fleet did not make was deleted"
    assert git("rev-parse", "release-1.0", cwd=repo).strip() == fix
    assert "fleet/wt1" not in branches(repo)  # fleet's own branch (nothing only on it) is the one deleted


def test_delete_branch_refuses_commits_found_nowhere_else_unless_force(lab, tmp_path, st):
    inv, name, root = inventory(lab, 14)
    repo = new_repo(root / f"ahead-{tmp_path.name}")
    h = inv.host(name)
    wt = Path(create_worktree(inv, h, repo.name, str(repo), "wt2")["path"])
    (wt / "work").write_text("agent work\n")
    git("add", "-A", cwd=wt)
    git("commit", "-qm", "agent work", cwd=wt)
    args = {"repo": repo.name, "name": "wt2", "force": False, "delete_branch": True}
    with pytest.raises(Refused) as ei:
        remove_worktree(inv, name, args=args, settings=st)
    assert not isinstance(ei.value, ConfirmationRequired), "a token was issued for a removal that is refused"
    msg = str(ei.value)
    assert "fleet/wt2" in msg and "1 commit" in msg and "--force" in msg and "\n" not in msg
    assert wt.is_dir() and "fleet/wt2" in branches(repo)
    assert TokenStore(st.token_dir).list() == []
    # without --delete-branch the worktree goes and the branch (with the work) stays
    _, out = gated(inv, name, dict(args, delete_branch=False), st)
    assert out[0].outcome == "removed" and not wt.exists() and "fleet/wt2" in branches(repo)


def test_delete_branch_with_force_says_it_drops_the_commits_and_does(lab, tmp_path, st):
    inv, name, root = inventory(lab, 14)
    repo = new_repo(root / f"force-{tmp_path.name}")
    wt = Path(create_worktree(inv, inv.host(name), repo.name, str(repo), "wt3")["path"])
    (wt / "work").write_text("agent work\n")
    git("add", "-A", cwd=wt)
    git("commit", "-qm", "agent work", cwd=wt)
    plan, out = gated(inv, name, {"repo": repo.name, "name": "wt3", "force": True, "delete_branch": True}, st)
    assert "1 commit" in plan.plan.describe()
    assert out[0].outcome == "removed" and "fleet/wt3" not in branches(repo)


def test_repo_paths_in_the_inventory_are_used_for_list_and_remove(lab, tmp_path, st):
    inv0, name, root = inventory(lab, 15)
    elsewhere = new_repo(tmp_path / "elsewhere" / "proj")
    inv, _, _ = inventory(lab, 15, {"proj": str(elsewhere)})
    h = inv.host(name)
    wt = Path(create_worktree(inv, h, "proj", h.repo_path("proj"), "wt4")["path"])
    (wt / "work").write_text("agent work\n")
    git("add", "-A", cwd=wt)
    git("commit", "-qm", "agent work", cwd=wt)
    rows, errors = list_worktrees(inv, [h])
    row = next(w for w in rows if w.path == str(wt))
    assert not errors and not row.dirty and row.ahead == "1", row
    _, out = gated(inv, name, {"repo": "proj", "name": "wt4", "force": False, "delete_branch": False}, st)
    assert out[0].outcome == "removed", out
    assert not wt.exists() and "fleet/wt4" in branches(elsewhere)


def test_a_dirty_worktree_is_refused_before_any_token_and_a_refusal_spends_none(lab, tmp_path, st):
    inv, name, root = inventory(lab, 15)
    repo = new_repo(root / f"dirty-{tmp_path.name}")
    wt = Path(create_worktree(inv, inv.host(name), repo.name, str(repo), "wt5")["path"])
    args = {"repo": repo.name, "name": "wt5", "force": False, "delete_branch": False}
    with pytest.raises(ConfirmationRequired) as ei:  # clean: the plan, and a token for it
        remove_worktree(inv, name, args=args, settings=st)
    token = ei.value.token
    assert "clean" in ei.value.plan.describe()
    (wt / "scratch").write_text("uncommitted\n")  # then it gets dirty before the person confirms
    with pytest.raises(Refused) as ei2:
        remove_worktree(inv, name, args=args, settings=st, confirm=token)
    assert not isinstance(ei2.value, ConfirmationRequired)
    assert "uncommitted changes" in str(ei2.value) and "--force" in str(ei2.value)
    assert wt.is_dir() and (wt / "scratch").exists()
    assert [t["state"] for t in TokenStore(st.token_dir).list()] == ["valid"]  # not spent on the refusal
    (wt / "scratch").unlink()
    out = remove_worktree(inv, name, args=args, settings=st, confirm=token)  # the same token still works
    assert out[0].outcome == "removed" and not wt.exists()


def test_force_on_a_dirty_worktree_is_said_in_the_plan(lab, tmp_path, st):
    inv, name, root = inventory(lab, 15)
    repo = new_repo(root / f"forced-{tmp_path.name}")
    wt = Path(create_worktree(inv, inv.host(name), repo.name, str(repo), "wt6")["path"])
    (wt / "scratch").write_text("uncommitted\n")
    plan, out = gated(inv, name, {"repo": repo.name, "name": "wt6", "force": True, "delete_branch": False}, st)
    assert "uncommitted changes" in plan.plan.describe()
    assert out[0].outcome == "removed" and not wt.exists()


def test_a_missing_worktree_is_said_in_the_plan(lab, tmp_path, st):
    inv, name, root = inventory(lab, 15)
    repo = new_repo(root / f"missing-{tmp_path.name}")
    plan, out = gated(inv, name, {"repo": repo.name, "name": "nosuch", "force": False, "delete_branch": False}, st)
    assert "nothing to remove" in plan.plan.describe()
    assert "nothing to remove" in out[0].detail

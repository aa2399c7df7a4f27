"""One worktree per dispatch, on the lab (real sshd, real git, real `opencode serve`)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import agent_settings, fresh_agent_lab

from fleet.inventory import load_inventory
from fleet.ops import dispatch as dx
from fleet.ops.worktrees import list_worktrees, remove_worktree
from fleet.results import FanoutOutcome
from fleet.safety.gate import ConfirmationRequired, Refused


@pytest.fixture(scope="module")
def wlab(agent_lab):
    return fresh_agent_lab(agent_lab, 1, agents=1)



def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


def test_two_worktree_dispatches_work_in_two_checkouts(wlab, tmp_path, st):
    inv = load_inventory(wlab.inventory)
    recs = dx.SessionRecords(tmp_path / "sessions.jsonl")
    runs = [dx.dispatch(inv, "lab01", args={"task": f"please [write: from-{i}.txt]", "repo": "demo"},
                        settings=st, records=recs, poll=0.2, worktree=True).results[0] for i in (1, 2)]
    assert all(r.outcome == FanoutOutcome.SUCCESS for r in runs), [r.error for r in runs]
    a, b = runs
    assert a.worktree != b.worktree and a.directory == a.worktree and a.branch.startswith("fleet/dx-")
    demo = Path(wlab.hosts[0].repos_root) / "demo"
    listed = git("worktree", "list", "--porcelain", cwd=demo)
    assert a.worktree in listed and b.worktree in listed
    assert (Path(a.worktree) / "from-1.txt").exists() and not (demo / "from-1.txt").exists()
    assert (Path(b.worktree) / "from-2.txt").exists() and not (Path(a.worktree) / "from-2.txt").exists()
    events = [json.loads(x) for x in (tmp_path / "journal.jsonl").read_text().splitlines()]
    assert any(e["operation"] == "worktree_created" and e["detail"]["worktree"] == a.worktree for e in events)
    rows, errors = list_worktrees(inv, [inv.host("lab01")], records=recs)
    mine = {w.path: w for w in rows}
    assert not errors and mine[a.worktree].dirty and mine[a.worktree].session == a.session_id
    # commit in one worktree: clean, one commit ahead of the base
    git("-c", "user.name=t", "-c", "user.email=t@t.invalid", "add", "-A", cwd=Path(b.worktree))
    git("-c", "user.name=t", "-c", "user.email=t@t.invalid", "commit", "-qm", "agent work", cwd=Path(b.worktree))
    rows, _ = list_worktrees(inv, [inv.host("lab01")], records=recs)
    w = next(x for x in rows if x.path == b.worktree)
    assert not w.dirty and w.ahead == "1"


def test_worktree_failure_leaves_no_session(wlab, tmp_path, st):
    inv = load_inventory(wlab.inventory)
    plain = Path(wlab.hosts[0].repos_root) / "plain"
    plain.mkdir(exist_ok=True)  # a directory, not a git repository
    from fleet.agent.client import OpenCodeClient
    with OpenCodeClient(inv.host("lab01")) as oc:
        before = {s["id"] for s in oc.list_sessions(all_dirs=True)}
    r = dx.dispatch(inv, "lab01", args={"task": "t", "repo": "plain"}, settings=st, poll=0.2,
                    worktree=True).results[0]
    assert r.outcome == FanoutOutcome.FAILURE and "not a git repository" in r.error and not r.session_id
    with OpenCodeClient(inv.host("lab01")) as oc:
        assert {s["id"] for s in oc.list_sessions(all_dirs=True)} == before


def test_remove_needs_a_token_refuses_dirty_without_force(wlab, tmp_path, st):
    inv = load_inventory(wlab.inventory)
    r = dx.dispatch(inv, "lab01", args={"task": "please [write: dirt.txt]", "repo": "demo"}, settings=st,
                    poll=0.2, worktree=True).results[0]
    assert r.outcome == FanoutOutcome.SUCCESS, r.error
    name = r.branch.split("/", 1)[1]
    args = {"repo": "demo", "name": name, "force": False, "delete_branch": False}
    with pytest.raises(Refused) as refused:  # checked on the host before any token is issued
        remove_worktree(inv, "lab01", args=args, settings=st)
    assert not isinstance(refused.value, ConfirmationRequired)
    assert "uncommitted changes" in str(refused.value) and "--force" in str(refused.value)
    assert Path(r.worktree).exists()
    forced = dict(args, force=True, delete_branch=True)
    with pytest.raises(ConfirmationRequired) as ei:
        remove_worktree(inv, "lab01", args=forced, settings=st)
    assert "--force discards them" in ei.value.plan.describe()
    out = remove_worktree(inv, "lab01", args=forced, settings=st, confirm=ei.value.token)
    assert out[0].outcome == "removed" and not Path(r.worktree).exists()
    demo = Path(wlab.hosts[0].repos_root) / "demo"
    assert r.branch not in git("branch", "--list", cwd=demo)


def test_remove_never_leaves_the_worktrees_dir(wlab, tmp_path, st):
    """A symlink planted where a worktree would be, pointing at a throwaway victim: refused."""
    inv = load_inventory(wlab.inventory)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("keep")
    wt_dir = Path(wlab.hosts[0].repos_root) / ".worktrees" / "demo"
    wt_dir.mkdir(parents=True, exist_ok=True)
    (wt_dir / "evil").symlink_to(victim)
    args = {"repo": "demo", "name": "evil", "force": True, "delete_branch": False}
    with pytest.raises(Refused) as refused:  # found before any token: none is issued
        remove_worktree(inv, "lab01", args=args, settings=st)
    assert not isinstance(refused.value, ConfirmationRequired) and "symlink" in str(refused.value)
    assert (victim / "keep").read_text() == "keep"
    from fleet.errors import BadInput
    with pytest.raises(BadInput):
        remove_worktree(inv, "lab01", args=dict(args, name="../../x"), settings=st)


def test_a_second_orchestrator_lists_aborts_and_tears_down_anothers_session(wlab, tmp_path, monkeypatch):
    """Two HOMEs as two machines: B has no records of A's dispatch, and works from the server's marks;
    B's abort is posted in A's Slack thread."""
    from stand_ins import FakeSlack

    from fleet.audit.journal import Journal
    from fleet.audit.trail import AuditTrail
    from fleet.inventory import load_inventory_text
    from fleet.ops.sessions import abort_sessions, find_session_host, host_sessions, teardown

    slack = FakeSlack()
    try:
        text = f"slack: {{channel: C0AUDIT, base_url: '{slack.url}/api/'}}\n" + wlab.inventory.read_text()
        inv = load_inventory_text(text, str(wlab.inventory))
        a_home, b_home = tmp_path / "a", tmp_path / "b"
        monkeypatch.setenv("FLEET_MACHINE", "machine-a")
        a_trail = AuditTrail(a_home / "journal.jsonl", inv.slack, "xoxb-t")
        a = dx.dispatch(inv, "lab01", args={"task": "please [slow] long job", "repo": "demo"},
                        settings=agent_settings(a_home),
                        records=dx.SessionRecords(a_home / "sessions.jsonl"), wait=False, worktree=True,
                        audit_trail=a_trail).results[0]
        assert a.outcome == FanoutOutcome.SUCCESS and a_trail.close(timeout=5)
        a_root = Journal(a_home / "journal.jsonl").load().thread_ts(
            next(e for e in Journal(a_home / "journal.jsonl").load().events if e["operation"] == "dispatch_requested")
            ["dispatch_id"])
        monkeypatch.setenv("FLEET_MACHINE", "machine-b")
        b_recs = dx.SessionRecords(b_home / "sessions.jsonl")  # empty: B never saw the dispatch
        row = next(r for r in host_sessions(inv.host("lab01"), b_recs) if r.session_id == a.session_id)
        assert row.fleet and row.machine == "machine-a" and row.branch == a.branch and row.worktree == a.worktree
        assert find_session_host(list(inv.hosts), b_recs, a.session_id).name == "lab01"
        b_trail = AuditTrail(b_home / "journal.jsonl", inv.slack, "xoxb-t")
        assert abort_sessions(inv.host("lab01"), a.session_id, records=b_recs, audit=b_trail) == [a.session_id]
        assert b_trail.close(timeout=5)
        aborted = [p for p in slack.posts if "aborted" in (p["text"] or "")]
        assert aborted and aborted[-1]["thread_ts"] == a_root  # B's abort lands in A's thread
        b_st = agent_settings(b_home)
        with pytest.raises(ConfirmationRequired) as ei:
            teardown(inv, "lab01", args={}, settings=b_st, records=b_recs)
        out = teardown(inv, "lab01", args={}, settings=b_st, records=b_recs, confirm=ei.value.token)
        assert a.session_id in out[0].deleted
        # the worktree stays (it may hold work): teardown names it and the command that removes it
        kept = next(w for w in out[0].worktrees if w["path"] == a.worktree)
        assert kept["branch"] == a.branch and kept["repo"] == "demo" and Path(a.worktree).is_dir()
        from fleet.cli.agent_render import teardown_lines
        line = teardown_lines(out)
        assert f"worktrees.remove --hosts lab01 --repo demo --name {Path(a.worktree).name}" in line
        from fleet.ops.worktrees import remove_worktree
        rm_args = {"repo": kept["repo"], "name": kept["name"]}
        with pytest.raises(ConfirmationRequired) as rm:
            remove_worktree(inv, "lab01", args=rm_args, settings=b_st)
        remove_worktree(inv, "lab01", args=rm_args, settings=b_st, confirm=rm.value.token)
        assert not Path(a.worktree).exists()  # the named command is the one that removes it
    finally:
        slack.close()

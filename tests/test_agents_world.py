"""The agent plane in a lab like the world, against the real `opencode serve`: servers that run in
the host's home directory (not a git project) with several repos, agents that spawn real
subagents (the stand-in model's ``[task: ...]`` marker makes OpenCode's ``task`` tool run one),
errors that end the wait at once, aborts that stop the whole tree and the tools it left
running, the server's major version checked everywhere, rules and budgets per dispatch."""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import fresh_agent_lab, records, run_async, wait_for
from stand_ins import FakeOpenCode

from fleet.agent.client import OpenCodeClient
from fleet.inventory import load_inventory, load_inventory_text
from fleet.ops import dispatch as dx
from fleet.ops import sessions as ses
from fleet.results import FanoutOutcome, PreflightStatus
from fleet.safety.gate import ConfirmationRequired

BD = str(Path(__file__).parent / "fakebd" / "bd")


@pytest.fixture(scope="module")
def world(agent_lab):
    return fresh_agent_lab(agent_lab, 2, agents=2)




def journal(tmp_path: Path) -> list[dict]:
    return [json.loads(x) for x in (tmp_path / "journal.jsonl").read_text().splitlines()]


def pgrep(text: str) -> list[int]:
    p = subprocess.run(["pgrep", "-f", "-x", text], capture_output=True, text=True)
    return [int(x) for x in p.stdout.split()]


def test_the_lab_is_like_the_world(world, tmp_path, st):
    """Each server runs in its host's home (not a git project) with two real repos; a subagent is
    a real child session, and the turn's tokens are the whole tree's."""
    inv = load_inventory(world.inventory)
    for lh in world.hosts:
        home = Path(lh.repos_root).parent
        assert not (home / ".git").exists()
        for repo in ("demo", "site"):
            assert (Path(lh.repos_root) / repo / ".git").is_dir()
        with OpenCodeClient(inv.host(lh.name), None) as oc:
            assert oc.request("GET", "/path")["directory"] == str(home)
    r = dx.dispatch(inv, "lab01", args={"task": "please [task: [bash: echo from-the-child]]", "repo": "site"},
                    settings=st, records=records(tmp_path), poll=0.2).results[0]
    assert r.outcome == FanoutOutcome.SUCCESS, r.error
    assert r.directory.endswith("/repos/site") and "from-the-child" in r.answer
    with OpenCodeClient(inv.host("lab01"), r.directory) as oc:
        kids = oc.request("GET", f"/session/{r.session_id}/children")
        assert len(kids) == 1 and kids[0]["parentID"] == r.session_id
        kid_msgs = oc.messages(kids[0]["id"])
    assert any("from-the-child" in json.dumps(m) for m in kid_msgs)
    # two model calls of the session (the task, then the answer), two of the subagent's: 15 each
    assert r.tokens["total"] == 60, r.tokens


def test_every_view_sees_sessions_of_every_repo(world, tmp_path, st):
    """sessions, watch, wait --dispatch, abort --all-sessions and teardown, from a machine that
    has no record of the dispatch: the server lists only its own (home) project under GET /session."""
    from fleet.ops.wait import dispatch_sessions
    from fleet.ops.watch import Watcher

    inv = load_inventory(world.inventory)
    h = inv.host("lab02")
    sent = dx.dispatch(inv, "lab02", args={"task": "please [slow] in site", "repo": "site"}, settings=st,
                       records=records(tmp_path), wait=False)
    sid = sent.results[0].session_id
    row = wait_for(lambda: next((x for x in ses.host_sessions(h) if x.session_id == sid and x.state == "busy"),
                                None))
    assert row is not None and row.repo == "site" and row.fleet
    w = Watcher([h], lambda change: None).start()
    try:
        assert w.ready(15)
        assert any(x["session"] == sid and x["state"] == "busy" for x in w.rows())
    finally:
        w.close()
    assert dispatch_sessions(inv, sent.dispatch_id, None, [h]) == [(h, sid)]  # found by its marks on the server
    assert ses.abort_sessions(h, all_sessions=True) == [sid]
    with OpenCodeClient(h, row.directory) as oc:
        assert sid not in oc.status()
    # teardown: a busy session of another repo is stopped, then deleted
    again = dx.dispatch(inv, "lab02", args={"task": "please [slow] again", "repo": "site"}, settings=st,
                        wait=False).results[0]
    assert again.outcome == FanoutOutcome.SUCCESS, again.error
    assert wait_for(lambda: any(x.session_id == again.session_id and x.state == "busy" for x in ses.host_sessions(h)))
    recs = records(tmp_path / "elsewhere")  # another orchestrator: no records of either session
    with pytest.raises(ConfirmationRequired) as ei:
        ses.teardown(inv, "lab02", args={}, settings=st, records=recs)
    out = ses.teardown(inv, "lab02", args={}, settings=st, records=recs, confirm=ei.value.token,
                       audit_trail=_trail(tmp_path))
    assert not out[0].error, out
    assert list(out[0].aborted) == [again.session_id] and {sid, again.session_id} <= set(out[0].deleted)
    left = {x.session_id for x in ses.host_sessions(h)}
    assert sid not in left and again.session_id not in left
    ops = [(e["operation"], e["detail"].get("session_id")) for e in journal(tmp_path)]
    assert ops.index(("aborted", again.session_id)) < ops.index(("gated_action_run", None))


def _trail(tmp_path: Path):
    from fleet.audit.trail import AuditTrail
    return AuditTrail(tmp_path / "journal.jsonl", None, None)


def test_a_bad_model_fails_at_once_with_the_servers_words(world, tmp_path, st):
    """The server says 'Model not found' only in a session.error event, before any reply."""
    inv = load_inventory(world.inventory)
    events: list = []
    t0 = time.monotonic()
    r = dx.dispatch(inv, "lab01", args={"task": "hello", "repo": "demo", "model": "fake/nonexistent"}, settings=st,
                    records=records(tmp_path), poll=0.2, timeout=20,
                    on_event=lambda h, k, x: events.append((time.monotonic(), k, x))).results[0]
    took = time.monotonic() - t0
    assert r.outcome == FanoutOutcome.FAILURE, (r.outcome, r.error)
    assert "Model not found: fake/nonexistent" in r.error and r.error_kind == "agent_error"
    sent = next(t for t, k, _ in events if k == "session")
    assert took < 10 and events[-1][0] - sent < 5, (took, events)
    assert any(e["operation"] == "failed" and "Model not found" in e["detail"]["error"] for e in journal(tmp_path))


def test_a_subagents_permission_shows_on_the_dispatch_and_is_answered_there(world, tmp_path, st):
    from fleet.ops.watch import Watcher

    inv = load_inventory(world.inventory)
    h = inv.host("lab01")
    cmd = f"echo ask-child-{secrets.token_hex(3)}"
    changes: list = []
    w = Watcher([h], changes.append).start()
    events: list = []
    try:
        assert w.ready(15)
        t, box = run_async(lambda: dx.dispatch(
            inv, "lab01", args={"task": f"please [task: [bash: {cmd}]]", "repo": "demo"}, settings=st,
            records=records(tmp_path), poll=0.2, on_event=lambda hh, k, x: events.append((k, x))))
        sid = wait_for(lambda: next((x for k, x in events if k == "session"), None))
        live = wait_for(lambda: next((x for k, x in events if k == "status" and x.startswith("needs-input")), None))
        assert live and f"bash: {cmd} (subagent ses_" in live, events
        row = next(x for x in ses.host_sessions(h) if x.session_id == sid)
        assert row.state == "needs-input" and cmd in row.waiting and "subagent" in row.waiting
        kid = next(x for x in ses.host_sessions(h) if x.parent == sid)
        assert kid.state == "needs-input" and kid.waiting == f"bash: {cmd}"
        assert wait_for(lambda: any(c["session"] == sid and c["state"] == "needs-input" and cmd in c["waiting"]
                                    for c in changes), 10), changes
        assert ses.answer_permission(h, sid, "once", records=records(tmp_path)) == [f"bash: {cmd}"]
        t.join(60)
    finally:
        w.close()
    r = box["out"].results[0]
    assert r.outcome == FanoutOutcome.SUCCESS and cmd.split()[-1] in r.answer, r.error
    assert r.tokens["total"] == 60
    asked = [e for e in journal(tmp_path) if e["operation"] == "needs_input"]
    assert len(asked) == 1 and cmd in asked[0]["detail"]["request"]


def test_abort_stops_the_subagent_first_and_leaves_no_request(world, tmp_path, st):
    inv = load_inventory(world.inventory)
    h = inv.host("lab02")
    cmd = f"echo ask-abort-{secrets.token_hex(3)}"
    r = dx.dispatch(inv, "lab02", args={"task": f"please [task: [bash: {cmd}]]", "repo": "demo"}, settings=st,
                    records=records(tmp_path), wait=False).results[0]
    assert wait_for(lambda: any(x.session_id == r.session_id and x.state == "needs-input"
                                for x in ses.host_sessions(h)))
    kid = next(x for x in ses.host_sessions(h) if x.parent == r.session_id)
    assert ses.abort_sessions(h, r.session_id, records=records(tmp_path)) == [r.session_id]
    rows = {x.session_id: x for x in ses.host_sessions(h)}
    assert rows[r.session_id].state == "idle" and rows[kid.session_id].state == "idle"
    with OpenCodeClient(h, r.directory) as oc:
        assert oc.permissions(sessions={r.session_id, kid.session_id}) == []
        assert not {r.session_id, kid.session_id} & set(oc.status())


def test_abort_stops_a_tool_process_that_outlives_it(world, tmp_path, st):
    """OpenCode kills its bash tool's process group on abort, not a process that left it: fleet
    finds that one on the host over SSH and stops its group, and says so."""
    from fleet.app import Fleet

    inv = load_inventory(world.inventory)
    plain, escaped = (f"sleep 300.{secrets.randbelow(10**6):06d}" for _ in range(2))
    try:
        _abort_and_check(inv, world, tmp_path, st, Fleet, plain, escaped)
    finally:  # never leave this test's own sleepers behind, whatever happened (by their pids)
        for pid in pgrep(plain) + pgrep(escaped):
            os.kill(pid, signal.SIGKILL)


def _abort_and_check(inv, world, tmp_path, st, Fleet, plain, escaped):
    for tool, survives in ((f"setsid -w {escaped}", escaped), (plain, None)):
        r = dx.dispatch(inv, "lab01", args={"task": f"please [bash: {tool}]", "repo": "demo"}, settings=st,
                        records=records(tmp_path), wait=False).results[0]
        target = survives or plain
        assert wait_for(lambda t=target: pgrep(t), 30), f"{target} never started"
        time.sleep(0.5)
        with Fleet(str(world.inventory), st) as fl:
            host, done = fl.abort(r.session_id, host="lab01", slack=False)
        assert host.name == "lab01" and list(done) == [r.session_id]
        assert wait_for(lambda t=target: not pgrep(t), 5), (f"{target} still runs after the abort", getattr(done, "notes", None))
        if survives:
            assert any(f"({survives})" in n and "outlived the abort: stopped its process group" in n
                       for n in done.notes), done.notes
            events = journal(tmp_path)
            assert any(e["operation"] == "tool_stopped" and survives in e["detail"]["note"] for e in events)
        else:
            assert done.notes == []  # OpenCode stopped it itself: nothing to do, nothing said


def test_a_refused_claim_leaves_no_worktree_or_branch(world, tmp_path, st, monkeypatch):
    from fleet.ops.beads import Beads

    d = tmp_path / ".beads"
    d.mkdir()
    (d / "issues.json").write_text(json.dumps({"bd-held": {
        "id": "bd-held", "title": "held", "status": "in_progress", "assignee": "macmini", "priority": 1,
        "created_at": "2026-05-28T12:00:00Z", "updated_at": "2026-05-28T12:00:00Z"}}))
    monkeypatch.setenv("BEADS_DIR", str(d))
    inv = load_inventory(world.inventory)
    r = dx.dispatch(inv, "lab01", args={"task": "t", "repo": "demo", "issue": "bd-held"}, settings=st,
                    records=records(tmp_path), poll=0.2, worktree=True, beads=Beads(BD)).results[0]
    assert r.outcome == FanoutOutcome.FAILURE and "already claimed by macmini" in r.error
    root = Path(world.hosts[0].repos_root)
    assert not (root / ".worktrees" / "demo" / "bd-held").exists()
    branches = subprocess.run(["git", "-C", str(root / "demo"), "branch", "--list", "fleet/*"], capture_output=True,
                              text=True).stdout
    assert "fleet/bd-held" not in branches and not r.session_id


def test_preflight_deep_and_status_fail_a_server_that_is_down_refuses_or_speaks_2x(world, tmp_path):
    from conftest import inv_cmd

    from fleet.ops.preflight import deep_preflight

    lh = world.hosts[0]
    real = load_inventory(world.inventory).host("lab01").opencode
    wrong = tmp_path / "wrong-pw"
    wrong.write_text("not-the-password\n")
    wrong.chmod(0o600)
    v2 = FakeOpenCode()
    v2.faults["GET /global/health"] = "v2"
    closed = __import__("socket").socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    try:
        ssh = f"address: {lh.address}, port: {lh.port}"
        text = (f"known_hosts: {world.known_hosts}\ndefaults: {{user: {world.user}, auth: ssh-key, "
                f"identity_file: {world.key}}}\nhosts:\n"
                f"  good: {{{ssh}, opencode: {{url: '{real.url}', password_file: {real.password_file}}}}}\n"
                f"  down: {{{ssh}, opencode: 'http://127.0.0.1:{port}'}}\n"
                f"  badpw: {{{ssh}, opencode: {{url: '{real.url}', password_file: {wrong}}}}}\n"
                f"  newer: {{{ssh}, opencode: '{v2.url}'}}\n")
        p = tmp_path / "inv.yaml"
        p.write_text(text)
        inv = load_inventory_text(text, str(p))
        got = {r.host: r for r in deep_preflight(inv, list(inv.hosts), timeout=5)}
        assert got["good"].status == PreflightStatus.OK and got["good"].opencode.startswith("ok 1.18")
        for name, words in (("down", "cannot connect"), ("badpw", "401"), ("newer", "OpenCode 2.0.1 speaks an API")):
            r = got[name]
            assert r.status == PreflightStatus.FAILED and r.failed_check == "opencode", (name, r)
            assert words in r.error_detail and r.opencode.startswith("DOWN"), (name, r)
        assert "fleet speaks 1.x" in got["newer"].error_detail
        cli = inv_cmd("preflight", "--deep", "--inventory", str(p), "--hosts", "good,newer")
        assert cli.returncode == 1, cli.stdout + cli.stderr
        ok = inv_cmd("preflight", "--deep", "--inventory", str(p), "--hosts", "good")
        assert ok.returncode == 0, ok.stdout + ok.stderr
    finally:
        v2.close()


def test_rules_per_dispatch_become_the_sessions_ruleset(world, tmp_path, st):
    """--allow lets a command the server's config asks about run unasked; --deny stops one the
    config allows; both are the session's own rules (set at creation), journaled."""
    inv = load_inventory(world.inventory)
    events: list = []
    ok = dx.dispatch(inv, "lab02", args={"task": "please [bash: echo ask-but-allowed]", "repo": "demo"},
                     settings=st, records=records(tmp_path), poll=0.2, timeout=60, allow=["bash:echo ask*"],
                     on_event=lambda h, k, x: events.append((k, x))).results[0]
    assert ok.outcome == FanoutOutcome.SUCCESS and "tool said: ask-but-allowed" in ok.answer, ok.error
    assert not any(x.startswith("needs-input") for k, x in events if k == "status")
    with OpenCodeClient(inv.host("lab02"), ok.directory) as oc:
        assert oc.get_session(ok.session_id)["permission"] == [
            {"permission": "bash", "pattern": "echo ask*", "action": "allow"}]
    no = dx.dispatch(inv, "lab02", args={"task": "please [bash: echo never-runs]", "repo": "demo"}, settings=st,
                     records=records(tmp_path), poll=0.2, timeout=60, deny=["bash"]).results[0]
    assert no.outcome != FanoutOutcome.TIMEOUT and "tool said: never-runs" not in no.answer, no
    rules = [e for e in journal(tmp_path) if e["operation"] == "permission_rules"]
    assert [e["detail"]["rules"][0]["action"] for e in rules] == ["allow", "deny"]


def test_max_tokens_stops_the_agent_with_its_subagent(world, tmp_path, st):
    """OpenCode bills a step when it ends (its tools included), 15 tokens a model call here. The
    subagent's first step (its tool call) is billed while the session's own step (the task tool,
    still running) is not: 15 tokens, over 10, and fleet stops the tree while the subagent's
    next call stalls; journaled."""
    inv = load_inventory(world.inventory)
    h = inv.host("lab01")
    t0 = time.monotonic()
    r = dx.dispatch(inv, "lab01", args={"task": "please [task: [bash: echo step-one] [slow-reply]]", "repo": "demo"},
                    settings=st, records=records(tmp_path), poll=0.2, timeout=60, max_tokens=10).results[0]
    assert r.outcome == FanoutOutcome.ABORTED and r.error_kind == "over_budget", (r.outcome, r.error)
    assert "15 tokens used, over --max-tokens 10" in r.error and time.monotonic() - t0 < 20, r.error
    assert r.tokens["total"] == 15  # all of them the subagent's
    rows = [x for x in ses.host_sessions(h) if x.session_id == r.session_id or x.parent == r.session_id]
    assert len(rows) == 2 and all(x.state == "idle" for x in rows), rows
    over = [e for e in journal(tmp_path) if e["operation"] == "over_budget"]
    assert len(over) == 1 and over[0]["outcome"] == "aborted" and over[0]["detail"]["max_tokens"] == 10

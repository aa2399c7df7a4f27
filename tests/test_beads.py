"""Beads claims against a stand-in `bd` that follows contracts-beads.md; dispatch ordering."""
import json
import multiprocessing
import os
from pathlib import Path

import pytest
from stand_ins import FakeOpenCode

from fleet.inventory import load_inventory_text
from fleet.ops import dispatch as dx
from fleet.ops import sessions as ses
from fleet.ops.beads import AlreadyClaimed, Beads
from fleet.results import FanoutOutcome
from fleet.settings import Settings

BD = str(Path(__file__).parent / "fakebd" / "bd")


@pytest.fixture
def beads_dir(tmp_path, monkeypatch):
    d = tmp_path / ".beads"
    d.mkdir()
    (d / "issues.json").write_text(json.dumps({
        "bd-a1b2": {"id": "bd-a1b2", "title": "Fix login", "status": "open", "priority": 1, "issue_type": "task",
                    "created_at": "2026-05-28T12:00:00Z", "updated_at": "2026-05-28T12:00:00Z"},
        "bd-c3d4": {"id": "bd-c3d4", "title": "Other", "status": "in_progress", "assignee": "macmini", "priority": 2,
                    "created_at": "2026-05-28T12:00:00Z", "updated_at": "2026-05-28T12:00:00Z"},
    }))
    monkeypatch.setenv("BEADS_DIR", str(d))
    return d


def issue(d, iid):
    return json.loads((d / "issues.json").read_text())[iid]


@pytest.fixture
def oc():
    s = FakeOpenCode()
    yield s
    s.close()


def inv_for(url):
    return load_inventory_text(
        f"hosts:\n  epyc6: {{user: u, opencode: '{url}', repos: {{root: /r}}}}\n"
        f"  macmini: {{user: u, opencode: '{url}', repos: {{root: /r}}}}\n", "t.yaml")


def go(inv, host, iid, beads, **kw):
    return dx.dispatch(inv, host, args={"task": "t", "repo": "demo", "issue": iid},
                       settings=Settings(token_dir="/tmp/tk"), beads=beads, poll=0.05, **kw)


def test_claim_then_session_recorded(beads_dir, oc):
    r = go(inv_for(oc.url), "epyc6", "bd-a1b2", Beads(BD)).results[0]
    assert r.outcome == FanoutOutcome.SUCCESS, r.error
    i = issue(beads_dir, "bd-a1b2")
    assert i["assignee"] == "epyc6" and i["status"] == "in_progress"
    assert i["metadata"] == {"session_id": r.session_id, "fleet_host": "epyc6"}
    again = go(inv_for(oc.url), "epyc6", "bd-a1b2", Beads(BD)).results[0]  # re-claiming one's own is fine
    assert again.outcome == FanoutOutcome.SUCCESS


def test_held_by_another_host_refused_before_any_session(beads_dir, oc):
    r = go(inv_for(oc.url), "epyc6", "bd-c3d4", Beads(BD)).results[0]
    assert r.outcome == FanoutOutcome.FAILURE and "already claimed by macmini" in r.error
    assert not any(p == "/session" for m, p, _ in oc.hits)


@pytest.mark.parametrize("setup,words", [
    ("missing", "'bd' is not installed"),
    ("uninit", "Beads is not initialised"),
    ("unknown", "does not exist"),
    ("partial", "different issue 'bd-a1b2'"),
    ("garbage", "did not answer JSON"),
])
def test_bd_problems_are_clear_and_nothing_is_created(beads_dir, oc, monkeypatch, tmp_path, setup, words):
    bd, iid = BD, "bd-a1b2"
    if setup == "missing":
        monkeypatch.setenv("PATH", str(tmp_path / "empty"))
        monkeypatch.delenv("FLEET_BD", raising=False)
        bd = None
    elif setup == "uninit":
        monkeypatch.setenv("BEADS_DIR", str(tmp_path / "nothing"))
    elif setup == "unknown":
        iid = "bd-zzzz"
    elif setup == "partial":
        iid = "a1"
    elif setup == "garbage":
        monkeypatch.setenv("FAKE_BD_MODE", "garbage")
    r = go(inv_for(oc.url), "epyc6", iid, Beads(bd)).results[0]
    assert r.outcome == FanoutOutcome.FAILURE and words in r.error, r.error
    assert not any(p == "/session" for m, p, _ in oc.hits)
    if setup not in ("missing", "uninit"):
        assert "assignee" not in issue(beads_dir, "bd-a1b2")


def test_claim_released_when_the_session_cannot_be_created(beads_dir, oc):
    oc.faults["POST /session"] = "500"
    r = go(inv_for(oc.url), "epyc6", "bd-a1b2", Beads(BD)).results[0]
    assert r.outcome == FanoutOutcome.FAILURE
    i = issue(beads_dir, "bd-a1b2")
    assert i["status"] == "open" and "assignee" not in i


def test_a_claim_another_actor_holds_when_read_again_is_refused(beads_dir, oc, tmp_path):
    """bd answers the claim with our name, but the issue read back says another actor holds it (a
    race bd resolved the other way, a sync from another clone): no session, no dispatch."""
    racing = tmp_path / "bd-racing"
    racing.write_text(f"""#!/usr/bin/env python3
import json, os, subprocess, sys
out = subprocess.run([sys.executable, {BD!r}, *sys.argv[1:]], capture_output=True, text=True)
sys.stdout.write(out.stdout); sys.stderr.write(out.stderr)
if "--claim" in sys.argv and out.returncode == 0:  # another machine claims it right after
    db = os.path.join(os.environ["BEADS_DIR"], "issues.json")
    issues = json.load(open(db)); issues["bd-a1b2"]["assignee"] = "macmini"
    json.dump(issues, open(db, "w"))
sys.exit(out.returncode)
""")
    racing.chmod(0o755)
    r = go(inv_for(oc.url), "epyc6", "bd-a1b2", Beads(str(racing))).results[0]
    assert r.outcome == FanoutOutcome.FAILURE and "already claimed by macmini" in r.error, r.error
    assert not any(p == "/session" for m, p, _ in oc.hits)
    assert issue(beads_dir, "bd-a1b2")["assignee"] == "macmini"  # theirs: not released by us


def test_abort_marks_blocked_with_who_and_why(beads_dir, oc, tmp_path):
    recs = dx.SessionRecords(tmp_path / "s.jsonl")
    inv = inv_for(oc.url)
    r = go(inv, "epyc6", "bd-a1b2", Beads(BD), records=recs).results[0]
    ses.abort_sessions(inv.host("epyc6"), r.session_id, records=recs, beads=Beads(BD), reason="wrong branch")
    i = issue(beads_dir, "bd-a1b2")
    assert i["status"] == "blocked" and "wrong branch" in i["notes"] and r.session_id in i["notes"]


def test_one_issue_for_many_hosts_refused(beads_dir, oc):
    from fleet.errors import BadInput
    with pytest.raises(BadInput, match="each host needs its own issue"):
        go(inv_for(oc.url), "all", "bd-a1b2", Beads(BD))


def _claim(args):
    d, host = args
    os.environ["BEADS_DIR"] = d
    try:
        Beads(BD).claim("bd-a1b2", host)
        return host
    except AlreadyClaimed:
        return None


def test_two_concurrent_claims_leave_exactly_one_claimant(beads_dir):
    with multiprocessing.get_context("fork").Pool(4) as pool:
        got = pool.map(_claim, [(str(beads_dir), h) for h in ("epyc6", "macmini", "epyc7", "wsl")])
    winners = [g for g in got if g]
    assert len(winners) == 1 and issue(beads_dir, "bd-a1b2")["assignee"] == winners[0]


@pytest.mark.parametrize("problem", ["env_unset", "file_0644"])
def test_claim_never_leaks_when_the_client_cannot_be_built(beads_dir, oc, tmp_path, problem, monkeypatch):
    """The issue's reproduction: password env var unset, or password file 0644."""
    if problem == "env_unset":
        monkeypatch.delenv("NO_SUCH_PW", raising=False)
        auth = "password_env: NO_SUCH_PW"
    else:
        pw = tmp_path / "pw"
        pw.write_text("secret\n")
        pw.chmod(0o644)
        auth = f"password_file: {pw}"
    inv = load_inventory_text(f"hosts:\n  epyc6: {{user: u, opencode: {{url: '{oc.url}', {auth}}}, "
                              f"repos: {{root: /r}}}}\n", "t.yaml")
    r = go(inv, "epyc6", "bd-a1b2", Beads(BD)).results[0]
    assert r.outcome == FanoutOutcome.FAILURE
    i = issue(beads_dir, "bd-a1b2")
    assert i["status"] == "open" and not i.get("assignee")  # never claimed
    assert not [h for h in oc.hits if h[1] == "/session"]


def test_python_api_dispatch_journals_and_records_itself(oc, own_home):
    """No audit trail, no records given: the library operation writes both (issue 11 #5)."""
    run = dx.dispatch(inv_for(oc.url), "epyc6", args={"task": "hello", "repo": "demo"}, poll=0.05)
    assert run.results[0].outcome == FanoutOutcome.SUCCESS, run.results[0].error
    journal = Path(os.environ["INVOKE_FLEET_JOURNAL"])
    ops_seen = [json.loads(l).get("operation") for l in journal.read_text().splitlines() if l.strip()]
    assert "dispatch_requested" in ops_seen and "completed" in ops_seen
    sessions = journal.parent / "sessions.jsonl"
    assert run.results[0].session_id in sessions.read_text()

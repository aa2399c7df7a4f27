"""Dispatch against the real `opencode serve` (npm opencode-ai, pinned) with the lab's stand-in model."""
import json
import os
import re
import time
from pathlib import Path

import pytest
from conftest import inv_cmd, records, running_lab

from fleet.agent.client import AuthRefused, OpenCodeClient
from fleet.inventory import load_inventory
from fleet.ops import dispatch as dx
from fleet.ops import sessions as ses
from fleet.results import FanoutOutcome
from fleet.safety.gate import ConfirmationRequired


@pytest.fixture(scope="module")
def agents(tmp_path_factory):
    with running_lab(tmp_path_factory.mktemp("agentlab"), 4, agents=3) as lab:
        yield lab




def test_dispatch_waits_for_the_answer(agents, tmp_path, st):
    inv = load_inventory(agents.inventory)
    seen = []
    run = dx.dispatch(inv, "lab01", args={"task": "say hi", "repo": "demo"}, settings=st,
                      records=records(tmp_path), on_event=lambda h, k, t: seen.append((h, k, t)), poll=0.2)
    r = run.results[0]
    assert r.outcome == FanoutOutcome.SUCCESS, r.error
    assert r.answer == "DONE: say hi" and r.tokens.get("total") == 15 and r.session_id.startswith("ses")
    assert r.directory == str(Path(agents.hosts[0].repos_root) / "demo")
    assert seen[0] == ("lab01", "session", r.session_id) and ("lab01", "answer", "DONE: say hi") in seen
    assert records(tmp_path).find("lab01", r.session_id)["directory"] == r.directory


def test_usage_is_the_whole_turn_not_its_last_step(agents, tmp_path, st):
    # a tool call makes two model calls (the tool request, then the answer): each bills 15 tokens
    inv = load_inventory(agents.inventory)
    r = dx.dispatch(inv, "lab03", args={"task": "check [bash: true]", "repo": "demo"}, settings=st,
                    records=records(tmp_path), poll=0.2).results[0]
    assert r.outcome == FanoutOutcome.SUCCESS, r.error
    with OpenCodeClient(inv.host("lab03"), r.directory) as oc:
        steps = [m for m in oc.messages(r.session_id) if m["info"]["role"] == "assistant"]
    assert len(steps) == 2
    assert r.tokens.get("total") == 30 and r.tokens.get("input") == 20 and r.tokens.get("output") == 10


def test_agent_error_is_failure_with_its_message(agents, tmp_path, st):
    inv = load_inventory(agents.inventory)
    r = dx.dispatch(inv, "lab02", args={"task": "please [fail]", "repo": "demo"}, settings=st,
                    records=records(tmp_path), poll=0.2).results[0]
    assert r.outcome == FanoutOutcome.FAILURE and "fake model refuses" in r.error and r.error_kind == "agent_error"


def test_resume_with_session(agents, tmp_path, st):
    inv = load_inventory(agents.inventory)
    first = dx.dispatch(inv, "lab01", args={"task": "one", "repo": "demo"}, settings=st,
                        records=records(tmp_path), poll=0.2).results[0]
    again = dx.dispatch(inv, "lab01", args={"task": "two", "repo": "demo", "session": first.session_id},
                        settings=st, records=records(tmp_path), poll=0.2).results[0]
    assert again.outcome == FanoutOutcome.SUCCESS and again.answer == "DONE: two"
    assert again.session_id == first.session_id and not again.created
    with OpenCodeClient(inv.host("lab01"), first.directory) as oc:
        users = [m for m in oc.messages(first.session_id) if m["info"]["role"] == "user"]
    assert len(users) == 2  # the prompt was sent once each time


def test_password_right_and_wrong(agents, tmp_path):
    inv = load_inventory(agents.inventory)
    good = inv.host("lab01")
    with OpenCodeClient(good, None) as oc:
        assert oc.health()["healthy"] is True
    bad_pw = tmp_path / "pw"
    bad_pw.write_text("wrong\n")
    os.chmod(bad_pw, 0o600)
    text = agents.inventory.read_text().replace(good.opencode.password_file, str(bad_pw))
    p = tmp_path / "inv.yaml"
    p.write_text(text.replace("known_hosts: known_hosts", f"known_hosts: {agents.known_hosts}")
                 .replace("identity_file: client_ed25519", f"identity_file: {agents.key}"))
    bad = load_inventory(p).host("lab01")
    with pytest.raises(AuthRefused) as ei:
        with OpenCodeClient(bad, None) as oc:
            oc.health()
    assert "401" in str(ei.value) and "username 'opencode'" in str(ei.value)
    assert good.opencode.url in str(ei.value) and "lab01" in str(ei.value) and "wrong" not in str(ei.value)


def test_all_three_in_parallel_overlap(agents, tmp_path, st):
    inv = load_inventory(agents.inventory)
    run = dx.dispatch(inv, "@agents", args={"task": "par", "repo": "demo"}, mode="canary", canary="lab01",
                      settings=st, records=records(tmp_path), poll=0.2)
    assert [r.outcome for r in run.results] == [FanoutOutcome.SUCCESS] * 3
    rest = [r for r in run.results if r.host != "lab01"]
    # the two after the canary ran together: together they took less than one after the other
    canary = run.results[0].duration_ms
    assert run.duration_ms < canary + sum(r.duration_ms for r in rest) - min(r.duration_ms for r in rest) / 2


def test_canary_failure_means_the_rest_never_get_the_task(agents, tmp_path, st):
    inv = load_inventory(agents.inventory)
    before = {}
    for name in ("lab02", "lab03"):
        before[name] = len(ses.host_sessions(inv.host(name)))
    run = dx.dispatch(inv, "@agents", args={"task": "x [fail]", "repo": "demo"}, mode="canary", canary="lab01",
                      settings=st, records=records(tmp_path), poll=0.2)
    by = {r.host: r for r in run.results}
    assert by["lab01"].outcome == FanoutOutcome.FAILURE
    assert by["lab02"].outcome == by["lab03"].outcome == FanoutOutcome.ABORTED
    for name in ("lab02", "lab03"):
        assert len(ses.host_sessions(inv.host(name))) == before[name]


def test_mode_off_refuses_remote_agents(agents, tmp_path, st):
    from fleet.errors import Refused
    inv = load_inventory(agents.inventory)
    with pytest.raises(Refused, match="mode off"):
        dx.dispatch(inv, "lab01", args={"task": "x", "repo": "demo"}, mode="off", settings=st)


def test_teardown_is_gated_and_deletes_fleet_sessions(agents, tmp_path, st):
    inv = load_inventory(agents.inventory)
    recs = records(tmp_path)
    r = dx.dispatch(inv, "lab02", args={"task": "t", "repo": "demo"}, settings=st, records=recs,
                    poll=0.2).results[0]
    with pytest.raises(ConfirmationRequired) as ei:
        ses.teardown(inv, "lab02", args={}, settings=st, records=recs)
    assert any(x.session_id == r.session_id for x in ses.host_sessions(inv.host("lab02")))
    out = ses.teardown(inv, "lab02", args={}, settings=st, records=recs, confirm=ei.value.token)
    assert r.session_id in out[0].deleted
    assert not any(x.session_id == r.session_id for x in ses.host_sessions(inv.host("lab02")))
    assert recs.for_host("lab02") == []


def test_cli_dispatch_prints_session_and_answer(agents, tmp_path):
    env = {"INVOKE_FLEET_JOURNAL": str(tmp_path / "j.jsonl"), "INVOKE_FLEET_TOKEN_DIR": str(tmp_path / "tok")}
    p = inv_cmd("dispatch", "--inventory", str(agents.inventory), "--host", "lab01", "--repo", "demo",
                "--task", "hello cli", env=env)
    assert p.returncode == 0, p.stderr
    assert re.search(r"lab01: session ses\w+", p.stderr)
    assert "DONE: hello cli" in p.stdout and "tokens=15" in p.stdout
    journal = [json.loads(x) for x in (tmp_path / "j.jsonl").read_text().splitlines()]
    ops = [e["operation"] for e in journal if e["type"] == "event"]
    assert ops == ["dispatch_requested", "session_created", "task_sent", "completed"]
    assert len({e["dispatch_id"] for e in journal if e["type"] == "event"}) == 1
    p = inv_cmd("status", "--inventory", str(agents.inventory), "--json", env=env)
    doc = json.loads(p.stdout)
    assert p.returncode == 0 and [s["version"] for s in doc["servers"]] == ["1.18.33"] * 3
    p = inv_cmd("dispatch", "--inventory", str(agents.inventory), "--host", "lab04", "--repo", "demo",
                "--task", "x", env=env)
    assert p.returncode == 2 and "lab04 has no OpenCode server" in p.stderr


def test_no_wait_then_sessions_shows_busy_then_abort(agents, tmp_path, st):
    inv = load_inventory(agents.inventory)
    h = inv.host("lab03")
    t0 = time.monotonic()
    r = dx.dispatch(inv, "lab03", args={"task": "think hard [slow]", "repo": "demo"}, settings=st,
                    records=records(tmp_path), wait=False).results[0]
    assert r.outcome == FanoutOutcome.SUCCESS and not r.waited and time.monotonic() - t0 < 15
    state = ""
    for _ in range(60):
        rows = {x.session_id: x for x in ses.host_sessions(h, records(tmp_path))}
        state = rows[r.session_id].state
        if state == "busy":
            time.sleep(2)  # let the run settle into the model call before stopping it
            break
        time.sleep(0.25)
    assert state == "busy" and rows[r.session_id].fleet
    assert ses.abort_sessions(h, r.session_id, records=records(tmp_path)) == [r.session_id]
    with OpenCodeClient(h, r.directory) as oc:
        for _ in range(40):
            if r.session_id not in oc.status():
                break
            time.sleep(0.25)
        assert r.session_id not in oc.status()
        msgs = oc.messages(r.session_id)
    # the stand-in stalls 60 s; idle this soon means the abort stopped the run. An assistant
    # message, if OpenCode made one before the abort, carries MessageAbortedError.
    assert time.monotonic() - t0 < 45
    answers = [m for m in msgs if m["info"]["role"] == "assistant"]
    assert all((m["info"].get("error") or {}).get("name") == "MessageAbortedError" for m in answers)

"""`dispatch --no-wait` in canary mode returns at once: the canary gets the task, the rest wait for
it in the journal, and a follower (here: the detached one dispatch starts, no service running)
sends them the task once the canary's agent succeeded, or journals them not sent when it failed.
Against the real `opencode serve` lab agents with the stand-in model."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import journal, running_slow_lab, wait_for

from fleet.agent.client import OpenCodeClient
from fleet.inventory import load_inventory
from fleet.ops import sessions as ses

FLEET = str(Path(sys.executable).parent / "fleet")


@pytest.fixture(scope="module")
def alab(tmp_path_factory):
    # a [slow] turn: long enough to see the dispatch return before it ends
    with running_slow_lab(tmp_path_factory.mktemp("nowaitlab"), 2, 3, agents=2) as lab:
        yield lab


def fleet(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([FLEET, *args], env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def ops_of(did: str, op: str, host: str | None = None) -> list[dict]:
    return [e for e in journal() if e.get("type") == "event" and e.get("dispatch_id") == did
            and e.get("operation") == op and (host is None or e.get("host") == host)]


def sessions_of(inv, host: str, did: str) -> list:
    return [r for r in ses.host_sessions(inv.host(host)) if r.dispatch_id == did]


def test_no_wait_canary_returns_at_once_and_the_rest_get_the_task_after_the_canary(alab):
    inv = load_inventory(alab.inventory)
    gated = {"INVOKE_FLEET_GATED": "dispatch"}  # the plan shown is confirmed once; the rest get that plan
    cmd = ("dispatch", "--inventory", str(alab.inventory), "--hosts", "lab01,lab02", "--repo", "demo",
           "--task", "think it over [slow]", "--no-wait", "--json", "--no-slack")
    shown = fleet(*cmd, env=gated)
    assert shown.returncode == 3 and "canary:    lab01 runs first" in shown.stderr, shown.stderr
    token = re.search(r"--confirm (\S+)", shown.stderr).group(1)
    p = fleet(*cmd, "--confirm", token, env=gated)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    did, (canary, rest) = doc["dispatch_id"], doc["results"]
    # returned while the canary's agent still works: its turn has no finished answer on the server
    with OpenCodeClient(inv.host("lab01"), canary["directory"]) as oc:
        msgs = oc.messages(canary["session_id"])
    assert not [m for m in msgs if m["info"]["role"] == "assistant" and (m["info"].get("time") or {}).get("completed")]
    assert not sessions_of(inv, "lab02", did)  # nor was the second host sent anything yet
    assert (canary["host"], canary["state"]) == ("lab01", "sent") and canary["session_id"]
    assert (rest["host"], rest["state"], rest["session_id"]) == ("lab02", "waiting_for_canary", "")
    assert any("waiting for the canary lab01" in n for n in doc["notes"])
    gate = ops_of(did, "canary_gate")
    assert len(gate) == 1 and gate[0]["detail"]["hosts"] == "lab02" and "canary:" in gate[0]["detail"]["plan"]
    # no dispatch or wait process is alive now: the follower sends lab02 its task once lab01 is done...
    assert wait_for(lambda: sessions_of(inv, "lab02", did), 40), journal()[-4:]
    canary_end = ops_of(did, "completed", "lab01")
    assert canary_end and canary_end[0]["epoch"] < ops_of(did, "dispatch_requested", "lab02")[0]["epoch"]
    assert len(ops_of(did, "rest_sent")) == 1
    # ...and follows it to its end: each end journaled once
    assert wait_for(lambda: ops_of(did, "completed", "lab02"), 40), journal()[-4:]
    w = fleet("wait", "--inventory", str(alab.inventory), "--dispatch", did, "--json", "--no-slack")
    assert w.returncode == 0, w.stderr
    assert [(r["host"], r["outcome"]) for r in json.loads(w.stdout)["results"]] == [("lab01", "SUCCESS"),
                                                                                      ("lab02", "SUCCESS")]
    assert sorted(e["host"] for e in ops_of(did, "completed")) == ["lab01", "lab02"]
    assert len(ops_of(did, "dispatch_requested", "lab02")) == 1 and len(sessions_of(inv, "lab02", did)) == 1
    # the token was spent once, by the dispatch; the gated run of lab02 is journaled when it was sent
    assert len([e for e in journal() if e.get("operation") == "token_used"]) == 1
    runs = [e for e in journal() if e.get("operation") == "gated_action_run" and e["detail"].get("run_id") == did]
    assert sorted((e["host"], e["outcome"]) for e in runs) == [("lab01", "success"), ("lab02", "success")]
    assert [e for e in runs if e["host"] == "lab02"][0]["epoch"] > ops_of(did, "rest_sent")[0]["epoch"]


def test_a_failing_canary_means_the_rest_are_never_sent_and_that_is_journaled(alab):
    inv = load_inventory(alab.inventory)
    p = fleet("dispatch", "--inventory", str(alab.inventory), "--hosts", "lab01,lab02", "--repo", "demo",
              "--task", "do it [fail]", "--no-wait", "--no-slack")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[1].split()[:2] == ["lab01", "SENT"] and "waiting for the canary" in lines[2]
    assert "SUCCESS" not in p.stdout + p.stderr  # nothing is done yet: never said so
    did = ops_of_gate_did()
    assert wait_for(lambda: ops_of(did, "rest_not_sent"), 40), journal()[-4:]
    not_sent = [e for e in ops_of(did, "failed", "lab02") if e["outcome"] == "not_sent"]
    assert len(not_sent) == 1 and not_sent[0]["detail"]["error"].startswith("not sent: canary lab01 failed")
    assert not ops_of(did, "dispatch_requested", "lab02") and not sessions_of(inv, "lab02", did)
    # fleet sessions and fleet wait say so for the dispatch
    s = fleet("sessions", "--inventory", str(alab.inventory), "--json")
    row = [(r["host"], r["state"].split(" (")[0]) for r in json.loads(s.stdout)["sessions"] if r["dispatch_id"] == did]
    assert sorted(row) == [("lab01", "idle"), ("lab02", "not sent: canary lab01 failed")]
    w = fleet("wait", "--inventory", str(alab.inventory), "--dispatch", did, "--json", "--no-slack")
    assert w.returncode == 1
    got = {r["host"]: r for r in json.loads(w.stdout)["results"]}
    assert got["lab01"]["outcome"] == "FAILURE" and got["lab02"]["state"] == "not_sent"
    assert got["lab02"]["error"].startswith("not sent: canary lab01 failed")
    assert len([e for e in ops_of(did, "failed", "lab02")]) == 1  # journaled once, whoever looked again


def ops_of_gate_did() -> str:
    gates = [e for e in journal() if e.get("operation") == "canary_gate"]
    assert len(gates) == 1
    return str(gates[0]["dispatch_id"])

"""See and steer agents, against the real `opencode serve` running real tools (the lab's stand-in
model asks for them): needs-input from a real permission request, approve / deny / policies,
a missing repo found fast, abort that tells the truth, and what the agent changed."""
from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest
from conftest import fresh_agent_lab, records, run_async, wait_for

from fleet.errors import BadInput
from fleet.inventory import load_inventory
from fleet.ops import dispatch as dx
from fleet.ops.sessions import abort_sessions, answer_permission, host_sessions
from fleet.results import FanoutOutcome


@pytest.fixture(scope="module")
def agents(agent_lab):
    return fresh_agent_lab(agent_lab, 2, agents=2)






def test_real_tool_runs_and_its_change_is_reported(agents, tmp_path, st):
    inv = load_inventory(agents.inventory)
    r = dx.dispatch(inv, "lab01", args={"task": "please [write: notes-from-agent.txt]", "repo": "demo"},
                    settings=st, records=records(tmp_path), poll=0.2).results[0]
    assert r.outcome == FanoutOutcome.SUCCESS, r.error
    assert (Path(agents.hosts[0].repos_root) / "demo" / "notes-from-agent.txt").exists()
    assert [f["file"] for f in r.files] == ["notes-from-agent.txt"] and r.files[0]["additions"] == 1
    r2 = dx.dispatch(inv, "lab01", args={"task": "please [bash: echo tool-output-42]", "repo": "demo"},
                     settings=st, records=records(tmp_path), poll=0.2).results[0]
    assert r2.outcome == FanoutOutcome.SUCCESS and "tool-output-42" in r2.answer


def test_permission_shows_as_needs_input_then_approve_finishes(agents, tmp_path, st):
    inv = load_inventory(agents.inventory)
    events: list = []
    t, box = run_async(lambda: dx.dispatch(
        inv, "lab02", args={"task": "please [bash: echo ask-approve-me]", "repo": "demo"}, settings=st,
        records=records(tmp_path), poll=0.2, on_event=lambda h, k, x: events.append((k, x))))
    sid = wait_for(lambda: next((x for k, x in events if k == "session"), None))
    row = wait_for(lambda: next((r for r in host_sessions(inv.host("lab02"), records(tmp_path))
                                 if r.session_id == sid and r.state == "needs-input"), None))
    assert row is not None and "echo ask-approve-me" in row.waiting
    assert wait_for(lambda: any(k == "status" and x.startswith("needs-input: bash") for k, x in events))
    answered = answer_permission(inv.host("lab02"), sid, "once", records=records(tmp_path))
    assert answered == ["bash: echo ask-approve-me"]
    t.join(60)
    r = box["out"].results[0]
    assert r.outcome == FanoutOutcome.SUCCESS and "ask-approve-me" in r.answer


def test_deny_ends_the_turn_with_the_denial(agents, tmp_path, st):
    inv = load_inventory(agents.inventory)
    events: list = []
    t, box = run_async(lambda: dx.dispatch(
        inv, "lab02", args={"task": "please [bash: echo ask-deny-me]", "repo": "demo"}, settings=st,
        records=records(tmp_path), poll=0.2, on_event=lambda h, k, x: events.append((k, x))))
    sid = wait_for(lambda: next((x for k, x in events if k == "session"), None))
    assert wait_for(lambda: any(k == "status" and x.startswith("needs-input") for k, x in events))
    answer_permission(inv.host("lab02"), sid, "reject", "not on this machine", records=records(tmp_path))
    t.join(60)
    r = box["out"].results[0]
    assert not t.is_alive() and r.outcome != FanoutOutcome.TIMEOUT
    assert "tool said: ask-deny-me" not in r.answer  # the command never ran


@pytest.mark.parametrize("policy", ["allow", "deny"])
def test_unattended_policy_never_hangs(agents, tmp_path, st, policy):
    inv = load_inventory(agents.inventory)
    r = dx.dispatch(inv, "lab01", args={"task": f"please [bash: echo ask-policy-{policy}]", "repo": "demo"},
                    settings=st, records=records(tmp_path), poll=0.2, timeout=60,
                    on_permission=policy).results[0]
    assert r.outcome != FanoutOutcome.TIMEOUT, r.error
    ran = f"tool said: ask-policy-{policy}" in r.answer
    assert ran == (policy == "allow")


def test_nobody_answers_ends_timeout_naming_the_request(agents, tmp_path, st):
    inv = load_inventory(agents.inventory)
    r = dx.dispatch(inv, "lab01", args={"task": "please [bash: echo ask-nobody]", "repo": "demo"},
                    settings=st, records=records(tmp_path), poll=0.2, timeout=6).results[0]
    assert r.outcome == FanoutOutcome.TIMEOUT and r.error_kind == "needs_input"
    assert r.pending == "bash: echo ask-nobody" and "fleet approve" in r.error
    answer_permission(inv.host("lab01"), r.session_id, "reject", records=records(tmp_path))  # leave it clean


def test_missing_repo_fails_in_seconds_naming_what_is_there(agents, tmp_path, st):
    inv = load_inventory(agents.inventory)
    r = dx.dispatch(inv, "lab01", args={"task": "t", "repo": "dmeo"}, settings=st,
                    records=records(tmp_path), poll=0.2, timeout=600).results[0]
    assert r.outcome == FanoutOutcome.FAILURE and "does not exist" in r.error and "demo" in r.error
    assert not r.session_id  # nothing was sent


def test_abort_unknown_session_is_an_error(agents, tmp_path):
    inv = load_inventory(agents.inventory)
    with pytest.raises(BadInput, match="has no session ses_doesnotexist"):
        abort_sessions(inv.host("lab01"), "ses_doesnotexist", records=records(tmp_path))


def test_abort_of_a_busy_session_ends_aborted_and_idle(agents, tmp_path, st):
    inv = load_inventory(agents.inventory)
    events: list = []
    t, box = run_async(lambda: dx.dispatch(
        inv, "lab02", args={"task": "please [slow] think", "repo": "demo"}, settings=st,
        records=records(tmp_path), poll=0.2, on_event=lambda h, k, x: events.append((k, x))))
    sid = wait_for(lambda: next((x for k, x in events if k == "session"), None))
    assert wait_for(lambda: any(k == "status" and x == "busy" for k, x in events))
    done = abort_sessions(inv.host("lab02"), sid, records=records(tmp_path))
    assert done == [sid]
    t.join(60)
    assert box["out"].results[0].outcome == FanoutOutcome.ABORTED
    row = next(r for r in host_sessions(inv.host("lab02"), records(tmp_path)) if r.session_id == sid)
    assert row.state == "idle"


def test_watch_json_shows_busy_needs_input_idle(agents, tmp_path, st):
    import json
    import subprocess
    import sys

    inv = load_inventory(agents.inventory)
    fleet = str(Path(sys.executable).parent / "fleet")
    w = subprocess.Popen([fleet, "watch", "--inventory", str(agents.inventory), "--hosts", "lab01", "--json",
                          "--duration", "40"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         stdin=subprocess.DEVNULL, cwd=tmp_path)
    try:
        time.sleep(2.0)  # the watcher is connected
        events: list = []
        t, box = run_async(lambda: dx.dispatch(
            inv, "lab01", args={"task": "please [bash: echo ask-watched]", "repo": "demo"}, settings=st,
            records=records(tmp_path), poll=0.2, on_event=lambda h, k, x: events.append((k, x))))
        sid = wait_for(lambda: next((x for k, x in events if k == "session"), None))
        assert wait_for(lambda: any(k == "status" and x.startswith("needs-input") for k, x in events))
        answer_permission(inv.host("lab01"), sid, "once", records=records(tmp_path))
        t.join(60)
        assert box["out"].results[0].outcome == FanoutOutcome.SUCCESS
        time.sleep(1.0)
    finally:
        w.terminate()
        out, err = w.communicate(timeout=10)
    states = [json.loads(line)["state"] for line in out.splitlines()
              if line.strip() and json.loads(line)["session"] == sid]
    firsts = [s for i, s in enumerate(states) if i == 0 or states[i - 1] != s]
    assert "busy" in firsts and "needs-input" in firsts and firsts[-1] == "idle", firsts
    assert firsts.index("busy") < firsts.index("needs-input") < len(firsts) - 1


def test_event_stream_dropped_mid_run_still_ends(agents, tmp_path):
    """Kill the stream's connection while the agent works: it reconnects, re-reads, and the wait ends."""
    from fleet.agent.client import OpenCodeClient
    from fleet.agent.events import EventStream, SessionWaker

    inv = load_inventory(agents.inventory)
    h = inv.host("lab02")
    d = h.repo_path("demo")
    with OpenCodeClient(h, d) as oc:
        sid = oc.create_session("drop test")["id"]
        waker = SessionWaker(sid)
        waker.stream = EventStream(h, waker, directory=d, on_connect=waker.reconnected).start()
        assert waker.stream.connected.wait(10)
        before = len(oc.messages(sid))
        oc.prompt_async(sid, "please [bash: sleep 2; echo survived-the-drop]")
        threading.Timer(1.0, waker.stream.drop).start()
        try:
            ans = oc.wait_idle(sid, before, 60, poll=5.0, waker=waker)  # a slow poll: events must carry it
        finally:
            waker.stream.close()
    assert ans is not None and "survived-the-drop" in ans.text
    assert waker.stream.reconnects >= 1


def test_slack_stop_from_an_allowed_user_aborts_and_others_are_refused(agents, tmp_path, st):
    """The seed's human interrupt flow, with the Slack stand-in serving conversations.replies."""
    from stand_ins import FakeSlack

    from fleet.audit.journal import Journal
    from fleet.audit.trail import AuditTrail
    from fleet.inventory import load_inventory_text
    from fleet.ops.listen import Listener

    slack = FakeSlack()
    try:
        text = (f"slack: {{channel: C0AUDIT, base_url: '{slack.url}/api/', allowed_users: [U0ALLOWED]}}\n"
                + agents.inventory.read_text())
        inv = load_inventory_text(text, str(agents.inventory))
        trail = AuditTrail(tmp_path / "journal.jsonl", inv.slack, "xoxb-test")
        recs = records(tmp_path)
        r = dx.dispatch(inv, "lab02", args={"task": "please [slow] work", "repo": "demo"}, settings=st,
                        records=recs, wait=False, audit_trail=trail).results[0]
        assert r.outcome == FanoutOutcome.SUCCESS and trail.close(timeout=5)
        did = recs.find("lab02", r.session_id)["dispatch_id"]
        root = Journal(tmp_path / "journal.jsonl").load().thread_ts(did)
        assert root and any(p["ts"] == root for p in slack.posts)
        # the agent is at work (prompt_async returns before the server marks the session busy)
        assert wait_for(lambda: any(x.session_id == r.session_id and x.state == "busy"
                                    for x in host_sessions(inv.host("lab02"), recs)))
        slack.reply(root, "U0OTHER", "stop")
        lst = Listener(inv, AuditTrail(tmp_path / "journal.jsonl", inv.slack, "xoxb-test"), "xoxb-test", recs)
        acts = lst.poll_once()
        assert [a["outcome"] for a in acts] == ["refused"]
        row = next(x for x in host_sessions(inv.host("lab02"), recs) if x.session_id == r.session_id)
        assert row.state == "busy"  # someone else's "stop" changed nothing
        slack.reply(root, "U0ALLOWED", "stop")
        acts = lst.poll_once()
        assert [(a["command"], a["outcome"]) for a in acts] == [("stop", "ok")]
        row = next(x for x in host_sessions(inv.host("lab02"), recs) if x.session_id == r.session_id)
        assert row.state == "idle"
        replies = [p for p in slack.posts if p.get("thread_ts") == root and "Stopped. What next?" in (p["text"] or "")]
        assert replies
        ops = {(e["operation"], e["detail"].get("by")) for e in Journal(tmp_path / "journal.jsonl").load().events}
        assert ("slack_stop", "U0ALLOWED") in ops and ("listen_refused", "U0OTHER") in ops
    finally:
        slack.close()


def test_busy_with_no_event_shows_stuck_then_finishes(agents, tmp_path, st):
    inv = load_inventory(agents.inventory)
    events: list = []
    r = dx.dispatch(inv, "lab01", args={"task": "please [bash: sleep 5; echo woke]", "repo": "demo"},
                    settings=st, records=records(tmp_path), poll=0.2, stall_timeout=1.5,
                    on_event=lambda h, k, x: events.append((k, x))).results[0]
    assert r.outcome == FanoutOutcome.SUCCESS and "woke" in r.answer
    assert any(k == "status" and x.startswith("stuck (no event for") for k, x in events), events
    ops = [json.loads(x)["operation"] for x in (tmp_path / "journal.jsonl").read_text().splitlines()]
    assert "stuck" in ops


def test_a_question_shows_as_needs_input_and_answer_lets_it_go_on(agents, tmp_path, st):
    from fleet.ops.sessions import answer_question

    inv = load_inventory(agents.inventory)
    events: list = []
    t, box = run_async(lambda: dx.dispatch(
        inv, "lab01", args={"task": "please [ask: deploy now?]", "repo": "demo"}, settings=st,
        records=records(tmp_path), poll=0.2, on_permission="allow",  # a policy never answers a question
        on_event=lambda h, k, x: events.append((k, x))))
    sid = wait_for(lambda: next((x for k, x in events if k == "session"), None))
    assert wait_for(lambda: any(k == "status" and x.startswith("needs-input: question: deploy now? (yes/no)")
                                for k, x in events))
    row = next(r for r in host_sessions(inv.host("lab01"), records(tmp_path)) if r.session_id == sid)
    assert row.state == "needs-input" and "deploy now?" in row.waiting
    assert answer_question(inv.host("lab01"), sid, "YES", records=records(tmp_path)) == [
        "question: deploy now? (yes/no)"]
    t.join(60)
    r = box["out"].results[0]
    assert r.outcome == FanoutOutcome.SUCCESS and '"deploy now?"="yes"' in r.answer


def test_usage_so_far_in_dispatch_and_watch(agents, tmp_path, st):
    """Tokens and cost while the agent works: dispatch's live usage and the watch board grow step
    by step (each model call bills 15 tokens in the lab), and end at the turn's total."""
    from fleet.ops.watch import Watcher

    inv = load_inventory(agents.inventory)
    changes: list = []
    w = Watcher([inv.host("lab02")], changes.append).start()
    try:
        events: list = []
        r = dx.dispatch(inv, "lab02", args={"task": "please [bash: echo counted]", "repo": "demo"},
                        settings=st, records=records(tmp_path), poll=0.2,
                        on_event=lambda h, k, x: events.append((k, x))).results[0]
        assert r.outcome == FanoutOutcome.SUCCESS and r.tokens["total"] == 30
        usage = [x for k, x in events if k == "usage"]
        assert usage[0].startswith("15 tok") and usage[-1].startswith("30 tok"), usage
        assert events[-1] == ("end", "SUCCESS")
        assert wait_for(lambda: any(c["session"] == r.session_id and c["tokens"] == 30 for c in changes), 10)
        mine = [c for c in changes if c["session"] == r.session_id]
        assert any(c["state"] == "busy" and c["tokens"] == 15 for c in mine), mine  # so far, mid-turn
        assert mine[-1]["repo"] == "demo" and mine[-1]["cost"] == 0.0
    finally:
        w.close()
    # a watcher that starts after the fact reads the totals from the session's messages
    late: list = []
    w2 = Watcher([inv.host("lab02")], late.append).start()
    assert w2.ready(10)
    w2.close()
    row = next(x for x in w2.rows() if x["session"] == r.session_id)
    assert row["tokens"] == 30 and row["state"] == "idle"


def test_many_host_dispatch_shows_a_live_board_on_a_terminal(agents, tmp_path):
    """fleet dispatch --hosts a,b with stderr on a terminal (a pty): a board redrawn in place, one
    line per host, then the report."""
    import sys

    fleet = str(Path(sys.executable).parent / "fleet")
    p, board, out = run_on_a_terminal([fleet, "dispatch", "--inventory", str(agents.inventory), "--hosts",
                                       "lab01,lab02", "--repo", "demo", "--task",
                                       "please [bash: sleep 1; echo boarded]", "--no-slack"], tmp_path, "stderr")
    assert p.returncode == 0, (out, board)
    assert "HOST" in board and "TOKENS / COST" in board and "\x1b[J" in board
    assert "\x1b[3F" in board  # redrawn in place: up over the header and two host lines
    assert re.search(r"lab01 +ses_\w+ +busy +bash: sleep 1", board), board[-2000:]
    assert re.search(r"lab02 +ses_\w+ +SUCCESS", board) and "30 tok" in board
    text = out.decode()
    assert "total: 2 hosts" in text and "60 tokens" in text


def run_on_a_terminal(cmd: list[str], cwd: Path, which: str):
    """Run ``cmd`` with its stdout or stderr on a pty (the other piped): (process, what the
    terminal got, the pipe's bytes)."""
    import os
    import pty
    import subprocess

    master, slave = pty.openpty()
    env = dict(os.environ, COLUMNS="160", LINES="40", NO_COLOR="1")
    kw = {"stdout": slave, "stderr": subprocess.PIPE} if which == "stdout" else {"stdout": subprocess.PIPE,
                                                                                  "stderr": slave}
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, cwd=cwd, env=env, **kw)
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    out, err = p.communicate(timeout=120)
    os.close(master)
    return p, seen.decode(errors="replace"), (err if which == "stdout" else out)


def test_watch_on_a_terminal_draws_the_board_in_place(agents, tmp_path, st):
    import sys

    inv = load_inventory(agents.inventory)
    r = dx.dispatch(inv, "lab01", args={"task": "please [bash: echo on-the-board]", "repo": "demo"},
                    settings=st, records=records(tmp_path), poll=0.2).results[0]
    fleet = str(Path(sys.executable).parent / "fleet")
    p, screen, _ = run_on_a_terminal([fleet, "watch", "--inventory", str(agents.inventory), "--hosts", "lab01",
                                      "--duration", "2.5"], tmp_path, "stdout")
    assert p.returncode == 0, screen
    frames = screen.split("\x1b[H")[1:]
    assert len(frames) >= 2  # drawn, then redrawn in place (the ages move)
    last = frames[-1]
    assert re.search(rf"lab01 +demo +{r.session_id} +idle +.* 30 +\$0\.0000", last), last
    assert last.splitlines()[0].startswith("HOST") and "\x1b[K" in last


def test_slack_answer_replies_to_the_agents_question(agents, tmp_path, st):
    """An allowed user answers the agent's question from its Slack thread; the agent goes on with it."""
    from stand_ins import FakeSlack

    from fleet.agent.client import OpenCodeClient
    from fleet.audit.journal import Journal
    from fleet.audit.trail import AuditTrail
    from fleet.inventory import load_inventory_text
    from fleet.ops.listen import Listener

    slack = FakeSlack()
    try:
        inv = load_inventory_text(f"slack: {{channel: C0AUDIT, base_url: '{slack.url}/api/', allowed_users: "
                                  f"[U0ALLOWED]}}\n" + agents.inventory.read_text(), str(agents.inventory))
        trail = AuditTrail(tmp_path / "journal.jsonl", inv.slack, "xoxb-test")
        recs = records(tmp_path)
        r = dx.dispatch(inv, "lab02", args={"task": "please [ask: ship it?]", "repo": "demo"}, settings=st,
                        records=recs, wait=False, audit_trail=trail).results[0]
        assert trail.close(timeout=5)
        h = inv.host("lab02")
        assert wait_for(lambda: any(x.session_id == r.session_id and x.state == "needs-input"
                                    for x in host_sessions(h, recs)))
        root = Journal(tmp_path / "journal.jsonl").load().thread_ts(recs.find("lab02", r.session_id)["dispatch_id"])
        lst = Listener(inv, AuditTrail(tmp_path / "journal.jsonl", inv.slack, "xoxb-test"), "xoxb-test", recs)
        slack.reply(root, "U0ALLOWED", "answer")
        slack.reply(root, "U0ALLOWED", "answer Yes")
        acts = lst.poll_once()
        assert [(a["command"], a["outcome"]) for a in acts] == [("answer", "unknown"), ("answer", "ok")], acts
        assert any("Answer what?" in (p["text"] or "") for p in slack.posts)
        assert any((p["text"] or "").startswith("Answered.") and "ship it?" in p["text"] for p in slack.posts)
        assert wait_for(lambda: all(x.state == "idle" for x in host_sessions(h, recs) if x.session_id == r.session_id))
        with OpenCodeClient(h, r.directory) as oc:
            last = [m for m in oc.messages(r.session_id) if m["info"]["role"] == "assistant"][-1]
        assert '"ship it?"="yes"' in "".join(p.get("text", "") for p in last["parts"]).lower()
    finally:
        slack.close()


def test_watch_is_not_held_up_by_a_host_that_does_not_answer(agents, tmp_path):
    """An offline machine (its port drops SYNs, as a sleeping laptop on Tailscale) is listed first:
    the board still starts at once, shows the reachable host's sessions, and says the other is down."""
    from fleet.inventory import load_inventory_text
    from fleet.lab import Blackholes
    from fleet.ops.watch import Watcher

    holes = Blackholes(1)
    port = holes.ports[0]
    try:
        text = agents.inventory.read_text().replace(
            "hosts:\n", f"hosts:\n  asleep: {{address: 127.0.0.1, opencode: {{url: 'http://127.0.0.1:{port}'}}}}\n", 1)
        inv = load_inventory_text(text, str(agents.inventory))
        with dx.OpenCodeClient(inv.host("lab01"), inv.host("lab01").repo_path("demo")) as oc:
            sid = oc.create_session("seen despite the sleeper")["id"]
        changes: list = []
        w = Watcher([inv.host("asleep"), inv.host("lab01")], changes.append)
        t0 = time.monotonic()
        w.start()
        started = time.monotonic() - t0
        try:
            assert wait_for(lambda: any(c["session"] == sid for c in changes), 10), changes
            assert wait_for(lambda: any(c["host"] == "asleep" and c["state"] == "down" for c in changes), 20)
            down = next(c for c in changes if c["host"] == "asleep")
            assert down["session"] == "" and "timed out after 3s" in down["step"], down
        finally:
            w.close()
        assert started < 3.0, started  # start() waits for no server (it read them one by one: 5 s for this one)
    finally:
        holes.close()


def test_wait_follows_a_no_wait_dispatch_to_its_end(agents, tmp_path, st):
    """dispatch --no-wait leaves the agent working; wait picks it up, reports the turn's review
    (answer, files, tokens of the whole turn), and journals the end once (it reaches Slack)."""
    from fleet.audit.trail import AuditTrail
    from fleet.ops.wait import wait_sessions

    inv = load_inventory(agents.inventory)
    recs = records(tmp_path)
    trail = AuditTrail(tmp_path / "journal.jsonl", None, None)
    r = dx.dispatch(inv, "lab01", args={"task": "please [bash: sleep 2; echo waited-for | tee waited.txt]",
                                       "repo": "demo"}, settings=st, records=recs, wait=False,
                    audit_trail=trail).results[0]
    assert r.outcome == FanoutOutcome.SUCCESS and not r.waited
    events: list = []
    run = wait_sessions([(inv.host("lab01"), r.session_id)], records=recs, audit=trail, poll=0.2,
                        on_event=lambda h, k, x: events.append((k, x)))
    w = run.results[0]
    assert w.outcome == FanoutOutcome.SUCCESS, w.error
    assert "waited-for" in w.answer and [f["file"] for f in w.files] == ["waited.txt"]
    assert w.tokens["total"] >= 30 and w.directory == r.directory
    assert any(k == "status" and x.startswith("busy") for k, x in events), events
    # waiting again on the ended turn answers at once with the same review, journaled once
    again = wait_sessions([(inv.host("lab01"), r.session_id)], records=recs, audit=trail, poll=0.2).results[0]
    assert again.outcome == FanoutOutcome.SUCCESS and again.answer == w.answer
    trail.close()
    ops = [json.loads(x) for x in (tmp_path / "journal.jsonl").read_text().splitlines()]
    did = recs.find("lab01", r.session_id)["dispatch_id"]
    assert [e["operation"] for e in ops if e["dispatch_id"] == did].count("completed") == 1


def test_wait_dispatch_cli_over_hosts_and_bad_input(agents, tmp_path):
    import subprocess
    import sys

    fleet = str(Path(sys.executable).parent / "fleet")
    env = dict(__import__("os").environ)

    def run(*args):
        return subprocess.run([fleet, *args, "--inventory", str(agents.inventory)], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, cwd=tmp_path, env=env, timeout=120)
    p = run("dispatch", "--hosts", "lab01,lab02", "--repo", "demo", "--task", "please [bash: sleep 1; echo both]",
            "--no-wait", "--json", "--no-slack", "--mode", "enforced")
    assert p.returncode == 0, p.stderr
    did = json.loads(p.stdout)["dispatch_id"]
    w = run("wait", "--dispatch", did, "--json", "--no-slack")
    assert w.returncode == 0, w.stderr
    out = json.loads(w.stdout)
    assert sorted(r["host"] for r in out["results"]) == ["lab01", "lab02"]
    assert all(r["outcome"] == "SUCCESS" and "both" in r["answer"] for r in out["results"])
    bad = run("wait", "--session", "ses_doesnotexist", "--host", "lab01", "--no-slack")
    assert bad.returncode == 2 and "lab01 has no session ses_doesnotexist" in bad.stderr and "Traceback" not in bad.stderr
    neither = run("wait", "--no-slack")
    assert neither.returncode == 2 and "--session ID" in neither.stderr
    unknown = run("wait", "--dispatch", "d-nosuch", "--no-slack")
    assert unknown.returncode == 2 and "no session of dispatch d-nosuch" in unknown.stderr


def test_wait_takes_over_a_dispatch_that_timed_out_on_a_permission(agents, tmp_path, st):
    """Nobody answered in time: the dispatch ends TIMEOUT naming the request; a later wait with
    a policy lets the agent go on and finishes the turn; the request is journaled once."""
    from fleet.audit.trail import AuditTrail
    from fleet.ops.wait import wait_sessions

    inv = load_inventory(agents.inventory)
    recs = records(tmp_path)
    trail = AuditTrail(tmp_path / "journal.jsonl", None, None)
    r = dx.dispatch(inv, "lab02", args={"task": "please [bash: echo ask-later]", "repo": "demo"}, settings=st,
                    records=recs, poll=0.2, timeout=3, audit_trail=trail).results[0]
    assert r.outcome == FanoutOutcome.TIMEOUT and r.pending == "bash: echo ask-later"
    w = wait_sessions([(inv.host("lab02"), r.session_id)], records=recs, audit=trail, poll=0.2,
                      on_permission="allow").results[0]
    assert w.outcome == FanoutOutcome.SUCCESS and "ask-later" in w.answer, w.error
    trail.close()
    ops = [json.loads(x)["operation"] for x in (tmp_path / "journal.jsonl").read_text().splitlines()]
    assert ops.count("needs_input") == 1 and ops.count("permission_answered") == 1 and ops.count("completed") == 1


def test_dispatch_retry_failed_sends_again_only_where_nothing_is_at_work(agents, tmp_path):
    """lab02 was asleep (its port drops SYNs) and lab01's agent outlived the timeout: --retry-failed,
    once lab02 is back, sends the same task to lab02 only, and says why not to lab01."""
    import subprocess
    import sys

    from fleet.lab import Blackholes

    fleet = str(Path(sys.executable).parent / "fleet")
    text = agents.inventory.read_text()
    lab02_url = load_inventory(agents.inventory).host("lab02").opencode.url
    inv_path = tmp_path / "inventory.yaml"

    def run(*args):
        return subprocess.run([fleet, *args, "--inventory", str(inv_path), "--no-slack"], capture_output=True,
                              text=True, stdin=subprocess.DEVNULL, cwd=tmp_path, timeout=120)
    with Blackholes(1) as holes:
        inv_path.write_text(text.replace(lab02_url, f"http://127.0.0.1:{holes.ports[0]}"))
        first = run("dispatch", "--hosts", "lab01,lab02", "--repo", "demo", "--task", "please [slow] retry me",
                    "--timeout", "3", "--mode", "enforced", "--json")
    assert first.returncode == 1, first.stderr
    ends = {r["host"]: r for r in json.loads(first.stdout)["results"]}
    assert ends["lab01"]["outcome"] == "TIMEOUT" and ends["lab02"]["outcome"] == "FAILURE"
    assert ends["lab02"]["session_id"] == ""
    inv_path.write_text(text)  # lab02 is back
    again = run("dispatch", "--retry-failed", "--mode", "enforced", "--json")
    assert "retry: 'please [slow] retry me' for demo to 1 host(s): lab02" in again.stderr, again.stderr
    assert f"lab01 (TIMEOUT: its agent may still be at work; see fleet wait --session {ends['lab01']['session_id']})" \
        in again.stderr
    out = json.loads(again.stdout)
    assert [r["host"] for r in out["results"]] == ["lab02"] and out["results"][0]["session_id"].startswith("ses")
    # the [slow] agent, reached this time, outlives the same 3 s timeout as before
    assert again.returncode == 1 and out["results"][0]["outcome"] == "TIMEOUT"
    bad = run("dispatch", "--retry-failed", "--task", "other")
    assert bad.returncode == 2 and "drop --repo, --task" in bad.stderr
    for h, sid in (("lab01", ends["lab01"]["session_id"]), ("lab02", out["results"][0]["session_id"])):
        abort_sessions(load_inventory(agents.inventory).host(h), sid)


def test_listen_follows_another_orchestrators_dispatch_until_every_host_ended(agents, tmp_path, st, monkeypatch):
    """Machine A dispatches to two hosts; machine B (its own HOME: no journal, no records) runs
    listen. One host's session is aborted: the dispatch is still open (the other host works); a
    'stop' in the thread, read by B, stops the other one, found by fleet's marks on the server."""
    from stand_ins import FakeSlack

    from fleet.audit.journal import Journal
    from fleet.audit.trail import AuditTrail
    from fleet.inventory import load_inventory_text
    from fleet.ops.listen import Listener

    slack = FakeSlack()
    try:
        inv = load_inventory_text(f"slack: {{channel: C0AUDIT, base_url: '{slack.url}/api/', allowed_users: "
                                  f"[U0ALLOWED]}}\n" + agents.inventory.read_text(), str(agents.inventory))
        a_home, b_home = tmp_path / "a", tmp_path / "b"
        monkeypatch.setenv("FLEET_MACHINE", "machine-a")
        a_trail = AuditTrail(a_home / "journal.jsonl", inv.slack, "xoxb-test")
        a_recs = records(a_home)
        run = dx.dispatch(inv, "lab01,lab02", args={"task": "please [slow] two hosts", "repo": "demo"},
                          settings=st, mode="enforced", records=a_recs, poll=0.2, timeout=2, audit_trail=a_trail)
        assert [r.outcome for r in run.results] == [FanoutOutcome.TIMEOUT, FanoutOutcome.TIMEOUT]
        s1, s2 = (r.session_id for r in run.results)
        abort_sessions(inv.host("lab01"), s1, records=a_recs, audit=a_trail)
        assert a_trail.close(timeout=5)
        root = Journal(a_home / "journal.jsonl").load().thread_ts(run.dispatch_id)
        monkeypatch.setenv("FLEET_MACHINE", "machine-b")
        b = Listener(inv, AuditTrail(b_home / "journal.jsonl", inv.slack, "xoxb-test"), "xoxb-test",
                     records(b_home))
        assert b.poll_once() == [] and run.dispatch_id in b.followed  # found in the channel, still open
        reads = slack.reads.count("conversations.replies")
        assert b.poll_once() == [] and slack.reads.count("conversations.replies") == reads  # nothing new: not read
        slack.reply(root, "U0ALLOWED", "stop")
        acts = b.poll_once()
        assert [(x["command"], x["outcome"]) for x in acts] == [("stop", "ok")], acts
        assert any(f"lab02 {s2}: stopped" in n for n in acts[0]["notes"]), acts
        row = next(x for x in host_sessions(inv.host("lab02")) if x.session_id == s2)
        assert row.state == "idle"
    finally:
        slack.close()


def test_abort_right_after_a_no_wait_dispatch_stops_the_run(agents, tmp_path, st):
    """prompt_async returns before the run starts: an abort that comes first stops nothing and
    the run starts after it (seen: 'still busy 5s after abort'). fleet aborts until it is stopped."""
    inv = load_inventory(agents.inventory)
    for _ in range(3):
        r = dx.dispatch(inv, "lab01", args={"task": "please [slow] abort me at once", "repo": "demo"}, settings=st,
                        records=records(tmp_path), wait=False).results[0]
        assert abort_sessions(inv.host("lab01"), r.session_id, records=records(tmp_path)) == [r.session_id]
        time.sleep(1.5)
        row = next(x for x in host_sessions(inv.host("lab01")) if x.session_id == r.session_id)
        assert row.state == "idle"


def test_python_api_wait_dispatch_journals_and_redacts_without_being_asked(agents, tmp_path, st):
    from fleet import wait_dispatch

    inv = load_inventory(agents.inventory)
    sent = dx.dispatch(inv, "lab01", args={"task": "please [bash: echo from-the-api]", "repo": "demo"},
                       settings=st, wait=False)
    run = wait_dispatch(inv, sent.dispatch_id, settings=st, poll=0.2)
    assert [r.outcome for r in run.results] == [FanoutOutcome.SUCCESS] and "from-the-api" in run.results[0].answer
    ends = [json.loads(x) for x in (tmp_path / "journal.jsonl").read_text().splitlines()]
    assert [e["operation"] for e in ends if e["dispatch_id"] == sent.dispatch_id][-1] == "completed"


def test_a_review_waits_for_a_diff_the_turns_patches_promise():
    """The server works a turn's diff out after the turn ended: when the turn's patch parts name
    files and the diff is still empty, the review asks again for a moment; with no patch, at once."""
    from fleet.agent.review import review

    class Server:
        def __init__(self, patched: bool, late: int) -> None:
            self.calls, self.late = 0, late
            parts = [{"type": "patch", "files": ["/r/waited.txt"]}] if patched else [{"type": "text", "text": "hi"}]
            self.msgs = [{"info": {"id": "m0", "role": "user"}, "parts": []},
                         {"info": {"id": "m1", "role": "assistant"}, "parts": parts}]

        def messages(self, sid):
            return self.msgs

        def diff(self, sid, mid):
            self.calls += 1
            return [] if self.calls <= self.late else [{"file": "waited.txt", "additions": 1, "deletions": 0}]

        def todo(self, sid):
            return []
    late = Server(patched=True, late=2)
    files, _ = review(late, "s", 0)
    assert [f["file"] for f in files] == ["waited.txt"] and late.calls == 3
    none = Server(patched=False, late=2)
    assert review(none, "s", 0) == ((), ()) and none.calls == 1  # nothing promised: no waiting

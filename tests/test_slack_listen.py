"""``fleet listen`` end to end (issue 23): the real CLI, the real lab agents (``opencode serve``
running real tools), and the Socket Mode capable Slack stand-in.

Every reply and click is acted on at most once, ever (restarts, reconnects, repeated passes);
a reply or click answers the request that was pending when the person wrote it, never a later
one; buttons; only allowed users act; stop, then continue, in the same session and thread."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import fresh_agent_lab
from conftest import wait_for as shared_wait_for
from slack_stand_in import SocketSlack

from fleet.audit.journal import Journal
from fleet.inventory import load_inventory
from fleet.ops.sessions import answer_permission, host_sessions

FLEET = str(Path(sys.executable).parent / "fleet")
BD = str(Path(__file__).parent / "fakebd" / "bd")
CHANNEL = "C0AUDIT"


@pytest.fixture(scope="module")
def agents(agent_lab):
    return fresh_agent_lab(agent_lab, 2, agents=2)


def wait_for(cond, timeout=40.0, every=0.2):
    return shared_wait_for(cond, timeout, every)  # this module's agents get longer by default


class World:
    """One test's Slack stand-in, inventory (with its slack: section), journal and CLI runs."""

    def __init__(self, tmp_path: Path, agents, slack: SocketSlack) -> None:
        self.slack = slack
        self.inv_path = tmp_path / "inventory.yaml"
        self.inv_path.write_text(f"slack: {{channel: {CHANNEL}, base_url: '{slack.url}/api/', "
                                 f"allowed_users: [U0ALLOWED]}}\n" + agents.inventory.read_text())
        self.inv = load_inventory(self.inv_path)
        self.journal = Journal(os.environ["INVOKE_FLEET_JOURNAL"])
        beads = tmp_path / ".beads"
        beads.mkdir()
        (beads / "issues.json").write_text(json.dumps({"bd-s1": {
            "id": "bd-s1", "title": "Stop me", "status": "open", "priority": 1, "issue_type": "task",
            "created_at": "2026-05-28T12:00:00Z", "updated_at": "2026-05-28T12:00:00Z"}}))
        self.beads = beads
        self.env = dict(os.environ, SLACK_BOT_TOKEN="xoxb-test", FLEET_BD=BD, BEADS_DIR=str(beads))
        self.env.pop("SLACK_APP_TOKEN", None)
        self.cwd = tmp_path
        self.procs: list[subprocess.Popen] = []

    def _env(self, app: bool) -> dict:
        return dict(self.env, SLACK_APP_TOKEN="xapp-1-test") if app else self.env

    def fleet(self, *args: str, app: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([FLEET, *args, "--inventory", str(self.inv_path)], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, cwd=self.cwd, env=self._env(app), timeout=timeout)

    def bg(self, *args: str, app: bool = False) -> subprocess.Popen:
        p = subprocess.Popen([FLEET, *args, "--inventory", str(self.inv_path)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL, cwd=self.cwd,
                             env=self._env(app))
        self.procs.append(p)
        return p

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.communicate(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()

    # -------------------------------------------------------------- what happened
    def events(self) -> list[dict]:
        return self.journal.load().events

    def needs_input(self, index: int) -> dict | None:
        """The index-th needs-input post in the channel (fleet's metadata says its operation)."""
        got = [p for p in self.slack.posts
               if ((p.get("metadata") or {}).get("event_payload") or {}).get("operation") == "needs_input"]
        return got[index] if len(got) > index else None

    def root(self, dispatch_id: str) -> str | None:
        return self.journal.load().thread_ts(dispatch_id)

    def waiting(self, host: str, sid: str) -> str:
        row = next((r for r in host_sessions(self.inv.host(host)) if r.session_id == sid), None)
        return row.waiting if row is not None and row.state == "needs-input" else ""

    def state(self, host: str, sid: str) -> str:
        row = next((r for r in host_sessions(self.inv.host(host)) if r.session_id == sid), None)
        return row.state if row is not None else "gone"

    def session_waiting_on(self, host: str, text: str) -> str | None:
        row = next((r for r in host_sessions(self.inv.host(host)) if text in r.waiting), None)
        return row.session_id if row is not None else None

    def said(self, thread_ts: str, head: str) -> list[dict]:
        """fleet's replies in a thread that start with ``head``."""
        return [p for p in self.slack.thread_posts(thread_ts) if (p.get("text") or "").startswith(head)]

    def no_wait(self, host: str, task: str, *extra: str) -> tuple[str, str, str]:
        """A --no-wait dispatch, delivered to Slack: (dispatch id, session id, thread root)."""
        p = self.fleet("dispatch", "--host", host, "--repo", "demo", "--task", task, "--no-wait", "--json", *extra)
        assert p.returncode == 0, p.stderr
        doc = json.loads(p.stdout)
        assert self.fleet("audit.replay").returncode == 0  # everything it journaled is in Slack
        root = self.root(doc["dispatch_id"])
        assert root, "the dispatch's thread was not posted"
        return doc["dispatch_id"], doc["results"][0]["session_id"], root


@pytest.fixture
def world(tmp_path, agents):
    slack = SocketSlack()
    w = World(tmp_path, agents, slack)
    try:
        yield w
    finally:
        w.close()
        slack.close()


def test_a_reply_is_never_bound_to_a_later_request_after_a_restart(world):
    """Repro (a): D1 asks `echo ask-harmless-one`, the allowed user writes `approve`, D1 finishes;
    D2 resumes the same session and asks `echo ask-DANGEROUS-two`; nobody writes anything more.
    A fresh `fleet listen` must not approve it: the reply was acted on once, for D1's request."""
    w = world
    d1 = w.bg("dispatch", "--host", "lab02", "--repo", "demo", "--task", "please [bash: echo ask-harmless-one]",
              "--json", "--timeout", "120")
    first = wait_for(lambda: w.needs_input(0))
    assert first, "D1's needs-input was not posted"
    w.slack.reply(first["thread_ts"], "U0ALLOWED", "approve")
    l1 = w.fleet("listen", "--duration", "3", "--interval", "0.5")
    assert l1.returncode == 0, l1.stderr
    out, err = d1.communicate(timeout=90)
    r1 = json.loads(out)["results"][0]
    assert r1["outcome"] == "SUCCESS" and "ask-harmless-one" in r1["answer"], err
    sid = r1["session_id"]
    d2 = w.bg("dispatch", "--host", "lab02", "--repo", "demo", "--session", sid, "--task",
              "please [bash: echo ask-DANGEROUS-two]", "--json", "--timeout", "120")
    try:
        assert wait_for(lambda: "ask-DANGEROUS-two" in w.waiting("lab02", sid))
        assert wait_for(lambda: w.needs_input(1)), "D2's needs-input was not posted"
        l2 = w.fleet("listen", "--duration", "3", "--interval", "0.5")
        assert l2.returncode == 0, l2.stderr
        time.sleep(1.0)
        assert "ask-DANGEROUS-two" in w.waiting("lab02", sid), "a fresh listen approved D2's request"
        answered = [e["detail"].get("request", "") for e in w.events() if e["operation"] == "permission_answered"]
        assert answered == ["bash: echo ask-harmless-one"], answered
        approved = [p for p in w.slack.posts if (p.get("text") or "").startswith("Approved")]
        assert len(approved) == 1, [p["text"] for p in approved]
    finally:
        answer_permission(w.inv.host("lab02"), sid, "reject")
        d2.communicate(timeout=60)


def test_a_reply_binds_to_the_request_pending_when_it_was_written(world):
    """D1 stops waiting (a timeout: its thread stays open) on `echo ask-bind-one`; the allowed
    user writes `approve` there, but nobody listens; the request is approved on the CLI. D2
    resumes the same session and asks `echo ask-bind-DANGER`. When a listener starts, the
    `approve` binds to D1's request (written after it, before D2's): stale, nothing approved."""
    w = world
    d1 = w.fleet("dispatch", "--host", "lab01", "--repo", "demo", "--task", "please [bash: echo ask-bind-one]",
                 "--json", "--timeout", "3")
    r1 = json.loads(d1.stdout)["results"][0]
    assert r1["outcome"] == "TIMEOUT" and "ask-bind-one" in r1["pending"], d1.stderr
    sid = r1["session_id"]
    first = wait_for(lambda: w.needs_input(0))
    assert first
    w.slack.reply(first["thread_ts"], "U0ALLOWED", "approve")
    assert w.fleet("approve", "--session", sid, "--host", "lab01").returncode == 0
    assert wait_for(lambda: w.state("lab01", sid) == "idle")
    d2 = w.bg("dispatch", "--host", "lab01", "--repo", "demo", "--session", sid, "--task",
              "please [bash: echo ask-bind-DANGER]", "--json", "--timeout", "120")
    try:
        assert wait_for(lambda: "ask-bind-DANGER" in w.waiting("lab01", sid))
        lst = w.fleet("listen", "--duration", "3", "--interval", "0.5")
        assert lst.returncode == 0, lst.stderr
        time.sleep(1.0)
        assert "ask-bind-DANGER" in w.waiting("lab01", sid), "the reply was bound to a later request"
        said = w.said(first["thread_ts"], "Nothing answered")
        assert len(said) == 1 and "no longer pending" in said[0]["text"], [p["text"] for p in
                                                                          w.slack.thread_posts(first["thread_ts"])]
    finally:
        answer_permission(w.inv.host("lab01"), sid, "reject")
        d2.communicate(timeout=60)


def test_one_stop_is_acted_on_once_over_many_passes_and_restarts(world):
    """Repro (b): one `stop` reply was acted on at every pass (16 "Stopped." posts): now once,
    across passes and a restart; the Beads issue is blocked, the agent idle."""
    w = world
    did, sid, root = w.no_wait("lab01", "please [slow] stop me once", "--issue", "bd-s1")
    assert wait_for(lambda: w.state("lab01", sid) == "busy")
    w.slack.reply(root, "U0ALLOWED", "stop")
    first = w.fleet("listen", "--interval", "0.2", "--duration", "3")
    assert first.returncode == 0, first.stderr
    again = w.fleet("listen", "--interval", "0.2", "--duration", "2")  # a restart
    assert again.returncode == 0, again.stderr
    stopped = w.said(root, "Stopped.")
    assert len(stopped) == 1, f"{len(stopped)} 'Stopped.' replies"
    assert "continue" in stopped[0]["text"]  # says what can come next
    assert [e["operation"] for e in w.events()].count("slack_stop") == 1
    assert w.state("lab01", sid) == "idle"
    assert json.loads((w.beads / "issues.json").read_text())["bd-s1"]["status"] == "blocked"


def test_stop_then_continue_goes_on_in_the_same_session_and_thread(world):
    """The seed's interrupt flow whole: stop, "Stopped. What next?", status (live), then
    `continue <instructions>` sends them to the same session and the thread goes on."""
    w = world
    did, sid, root = w.no_wait("lab01", "please [slow] long work")
    assert wait_for(lambda: w.state("lab01", sid) == "busy")
    lst = w.bg("listen", "--interval", "0.3", "--duration", "60")
    w.slack.reply(root, "U0ALLOWED", "stop")
    assert wait_for(lambda: w.said(root, "Stopped.")), "no 'Stopped.' reply"
    assert w.state("lab01", sid) == "idle"
    w.slack.reply(root, "U0ALLOWED", "status")
    status = wait_for(lambda: w.said(root, "Status"))
    assert status and sid in status[0]["text"] and "idle" in status[0]["text"], status
    w.slack.reply(root, "U0ALLOWED", "continue please [bash: echo resumed-after-stop]")

    def done():
        return [p for p in w.slack.thread_posts(root)
                if ((p.get("metadata") or {}).get("event_payload") or {}).get("operation") == "completed"
                and "resumed-after-stop" in (p.get("text") or "")]
    assert wait_for(done, 60), [p.get("text") for p in w.slack.thread_posts(root)]
    sent = [e for e in w.events() if e["operation"] == "task_sent" and e["dispatch_id"] == did]
    assert len(sent) == 2 and {e["detail"]["session_id"] for e in sent} == {sid}  # the same session
    assert len(w.said(root, "Stopped.")) == 1
    lst.terminate()
    lst.communicate(timeout=20)


def test_a_click_answers_exactly_the_request_it_was_posted_for(world):
    """Socket Mode: a needs-input post carries buttons. A click on D1's post, after D1's request
    was answered and a later one waits in the same session, says it is stale and approves
    nothing; a click on D2's post approves D2's request, updates the post in place, and a
    second click says it was answered already."""
    w = world
    lst = w.bg("listen", "--duration", "90", app=True)
    w.slack.wait_link(20)
    d1 = w.bg("dispatch", "--host", "lab02", "--repo", "demo", "--task", "please [bash: echo ask-click-one]",
              "--json", "--timeout", "120")
    p1 = wait_for(lambda: w.needs_input(0))
    assert p1, "D1's needs-input was not posted"
    sid = wait_for(lambda: w.session_waiting_on("lab02", "ask-click-one"))
    assert w.fleet("approve", "--session", sid, "--host", "lab02").returncode == 0
    out, _ = d1.communicate(timeout=90)
    assert json.loads(out)["results"][0]["outcome"] == "SUCCESS"
    d2 = w.bg("dispatch", "--host", "lab02", "--repo", "demo", "--session", sid, "--task",
              "please [bash: echo ask-click-two]", "--json", "--timeout", "120")
    try:
        p2 = wait_for(lambda: w.needs_input(1))
        assert p2 and wait_for(lambda: "ask-click-two" in w.waiting("lab02", sid))
        stale = w.slack.click(CHANNEL, p1, "U0ALLOWED", "fleet_approve_once")
        assert w.slack.wait_ack(stale), "the interactive envelope was not acknowledged"
        assert wait_for(lambda: any("no longer" in (e.get("text") or "") for e in w.slack.ephemerals)), \
            w.slack.ephemerals
        time.sleep(1.0)
        assert "ask-click-two" in w.waiting("lab02", sid), "a click on D1's post approved D2's request"
        ok = w.slack.click(CHANNEL, p2, "U0ALLOWED", "fleet_approve_once")
        assert w.slack.wait_ack(ok)
        out2, err2 = d2.communicate(timeout=90)
        r2 = json.loads(out2)["results"][0]
        assert r2["outcome"] == "SUCCESS" and "ask-click-two" in r2["answer"], err2
        upd = wait_for(lambda: [u for u in w.slack.updates if u.get("ts") == p2["ts"]])
        assert upd and "approved by <@U0ALLOWED> at" in upd[-1]["text"], upd
        w.slack.click(CHANNEL, p2, "U0ALLOWED", "fleet_approve_once")  # clicked again
        assert wait_for(lambda: any("already" in (e.get("text") or "") for e in w.slack.ephemerals))
        answered = [e for e in w.events() if e["operation"] == "permission_answered"
                    and "ask-click-two" in e["detail"].get("request", "")]
        assert len(answered) == 1 and answered[0]["detail"].get("by") == "U0ALLOWED", answered
    finally:
        if d2.poll() is None:
            answer_permission(w.inv.host("lab02"), sid, "reject")
            d2.communicate(timeout=60)
        lst.terminate()
        lst.communicate(timeout=20)


def test_a_click_from_someone_not_allowed_is_refused_and_journaled(world):
    w = world
    lst = w.bg("listen", "--duration", "90", app=True)
    w.slack.wait_link(20)
    d = w.bg("dispatch", "--host", "lab01", "--repo", "demo", "--task", "please [bash: echo ask-refuse-me]",
             "--json", "--timeout", "120")
    try:
        p = wait_for(lambda: w.needs_input(0))
        assert p, "the needs-input was not posted"
        sid = wait_for(lambda: w.session_waiting_on("lab01", "ask-refuse-me"))
        env = w.slack.click(CHANNEL, p, "U0OTHER", "fleet_approve_once")
        assert w.slack.wait_ack(env)
        refusal = wait_for(lambda: [e for e in w.slack.ephemerals if e.get("user") == "U0OTHER"])
        assert refusal and "allowed" in refusal[0]["text"], w.slack.ephemerals
        assert wait_for(lambda: [e for e in w.events() if e["operation"] == "listen_refused"
                                 and e["detail"].get("by") == "U0OTHER"])
        time.sleep(1.0)
        assert "ask-refuse-me" in w.waiting("lab01", sid)  # nothing answered
        deny = w.slack.click(CHANNEL, p, "U0ALLOWED", "fleet_deny")
        assert w.slack.wait_ack(deny)
        out, _ = d.communicate(timeout=90)
        r = json.loads(out)["results"][0]
        assert "tool said: ask-refuse-me" not in r["answer"]  # denied: the command never ran
        upd = wait_for(lambda: [u for u in w.slack.updates if u.get("ts") == p["ts"]])
        assert upd and "denied by <@U0ALLOWED> at" in upd[-1]["text"], upd
    finally:
        if d.poll() is None:
            answer_permission(w.inv.host("lab01"), sid, "reject")
            d.communicate(timeout=60)
        lst.terminate()
        lst.communicate(timeout=20)


def test_socket_mode_messages_once_through_redelivery_and_reconnect(world):
    """Message events in a dispatch thread are acted on, each envelope acknowledged; a
    redelivered envelope is not acted on again; after Slack's `disconnect` the client
    reconnects (a new apps.connections.open) and a reply written meanwhile is caught up, once."""
    w = world
    did, sid, root = w.no_wait("lab01", "please [slow] socket work")
    assert wait_for(lambda: w.state("lab01", sid) == "busy")
    lst = w.bg("listen", "--duration", "90", app=True)
    link = w.slack.wait_link(20)
    ts, env = w.slack.message_event(CHANNEL, root, "U0ALLOWED", "status")
    assert w.slack.wait_ack(env), "the events_api envelope was not acknowledged"
    assert wait_for(lambda: w.said(root, "Status")), "no status reply"
    again = w.slack.message_event(CHANNEL, root, "U0ALLOWED", "status", ts=ts, retry_attempt=1)[1]
    assert w.slack.wait_ack(again)
    time.sleep(1.5)
    assert len(w.said(root, "Status")) == 1  # the redelivery was not acted on again
    w.slack.reply(root, "U0ALLOWED", "stop")  # written while the link goes down: no event for it
    link.send_text(json.dumps({"type": "disconnect", "reason": "refresh_requested",
                               "debug_info": {"host": "stand-in"}}))
    w.slack.wait_link(30, count=2)
    assert len(w.slack.calls_of("apps.connections.open")) >= 2
    assert wait_for(lambda: w.said(root, "Stopped.")), "the reply written meanwhile was not caught up"
    assert wait_for(lambda: w.state("lab01", sid) == "idle")
    time.sleep(1.5)
    assert len(w.said(root, "Stopped.")) == 1 and len(w.said(root, "Status")) == 1
    lst.terminate()
    out, err = lst.communicate(timeout=20)
    assert "Traceback" not in err, err

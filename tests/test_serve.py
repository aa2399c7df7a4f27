"""`fleet serve`: one per state directory (a lock), an owner-only Unix socket; a CLI fanout through
it is the in-process one (output, exit code, artifacts, Ctrl-C) over warm connections; every open
dispatch followed to its end with no dispatch or wait process alive, also after kill -9."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    ctrl_c_once_running,
    journal,
    logins,
    running_slow_lab,
    serve_process,
    wait_for,
    write_inventory,
)
from test_ssh_world import _marker, no_process

FLEET = str(Path(sys.executable).parent / "fleet")


def state_dir() -> Path:
    return Path(os.environ["INVOKE_FLEET_JOURNAL"]).parent


def sock() -> Path:
    return state_dir() / "run" / "fleet.sock"


def fleet(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([FLEET, *args], env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def service(*args: str):
    return serve_process(sock(), *args)


def test_one_service_per_state_directory_owner_only_status_and_stop(tmp_path):
    with service() as proc:
        assert stat.S_IMODE(sock().stat().st_mode) == 0o600
        assert stat.S_IMODE(sock().parent.stat().st_mode) == 0o700
        second = fleet("serve")
        assert second.returncode == 3 and "already runs" in second.stderr and str(proc.pid) in second.stderr
        st = fleet("serve", "status", "--json")
        assert st.returncode == 0 and json.loads(st.stdout)["pid"] == proc.pid
        assert fleet("serve", "stop").returncode == 0
        proc.wait(timeout=10)
    assert not sock().exists()
    assert fleet("serve", "status").returncode == 1  # not running: said, exit 1


def test_a_fanout_through_the_service_is_the_in_process_one_over_warm_connections(lab, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", lab, names=["lab01", "lab02", "lab03"])
    cmd = "echo out-$((6*7)); echo err >&2; [ $(hostname) ] && exit 3"
    here = fleet("fanout", "--inventory", str(inv), "--all", "--no-canary", "--json", cmd)
    with service():
        before = logins(lab)
        first = fleet("fanout", "--inventory", str(inv), "--all", "--no-canary", "--json", cmd)
        after_first = logins(lab)
        second = fleet("fanout", "--inventory", str(inv), "--all", "--no-canary", "--json", cmd)
        after_second = logins(lab)
        table = fleet("fanout", "--inventory", str(inv), "--all", "--no-canary", cmd)
        st = json.loads(fleet("serve", "status", "--json").stdout)
    assert here.returncode == first.returncode == second.returncode == table.returncode == 1
    keep = ("host", "outcome", "exit_code", "stdout", "stderr", "attempts", "error_kind")
    a, b = json.loads(here.stdout), json.loads(second.stdout)
    assert [{k: r[k] for k in keep} for r in a["results"]] == [{k: r[k] for k in keep} for r in b["results"]]
    assert a["counts"] == b["counts"] and a["mode"] == b["mode"]
    assert after_first - before == 3 and after_second == after_first  # the second run: no new login
    assert st["calls"] >= 3 and st["warm"] == 3
    for r in (json.loads(first.stdout), b):
        art = Path(r["artifacts_dir"])
        assert (art / "summary.json").exists() and (art / "lab01.stdout").read_text() == "out-42\n"
    assert "out-42" in table.stdout and "FAILURE" in table.stdout and "lab[01-03] (3)" in table.stdout


def test_ctrl_c_through_the_service_stops_the_remote_command_and_prints_the_summary(lab, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", lab, names=["lab05", "lab06"])
    m = _marker()
    with service():
        proc = subprocess.Popen([FLEET, "fanout", "--inventory", str(inv), "--all", "--canary=lab05",
                                 f"sleep {m}; true"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL)
        out, err = ctrl_c_once_running(proc, f"^sleep {m}")
        assert proc.returncode == 130, err
        assert b"ABORTED" in out + err
        assert no_process(f"^sleep {m}")
        assert fleet("serve", "status").returncode == 0  # the service goes on


def test_an_older_or_newer_service_is_not_used_and_the_run_happens_here(lab, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", lab, names=["lab01"])
    code = ("import sys, fleet; fleet.__version__ = '9.9.9'; from fleet.cli.program import main; "
            f"sys.argv = ['fleet', 'fanout', '--inventory', {str(inv)!r}, '--all', '--json', 'echo here']; main()")
    with service():
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    assert "version" in p.stderr and "running here instead" in p.stderr
    assert json.loads(p.stdout)["results"][0]["stdout"] == "here\n"


@pytest.fixture(scope="module")
def alab(tmp_path_factory):
    # a [slow] turn long enough to kill the service under it
    with running_slow_lab(tmp_path_factory.mktemp("svlab"), 1, 10, agents=1) as lab:
        yield lab




def ops_of(did: str, op: str) -> list[dict]:
    return [e for e in journal() if e.get("dispatch_id") == did and e.get("operation") == op]


def test_a_no_wait_dispatch_is_followed_to_its_end_with_nobody_at_a_terminal(alab, tmp_path):
    with service("--inventory", str(alab.inventory)):
        p = fleet("dispatch", "--inventory", str(alab.inventory), "--host", "lab01", "--repo", "demo",
                  "--task", "please [bash: echo ask-served]", "--no-wait", "--json")
        assert p.returncode == 0, p.stderr
        sent = json.loads(p.stdout)
        did, sid = sent["dispatch_id"], sent["results"][0]["session_id"]
        # no dispatch or wait process is alive now: the service journals the request...
        assert wait_for(lambda: ops_of(did, "needs_input")), journal()[-5:]
        # a `fleet wait` now is given the service's view: it waits on the service's follow
        w = subprocess.Popen([FLEET, "wait", "--inventory", str(alab.inventory), "--dispatch", did, "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        try:
            assert wait_for(lambda: json.loads(fleet("serve", "status", "--json").stdout)["waiting"].get(did), 20)
            a = fleet("approve", "--inventory", str(alab.inventory), "--session", sid)
            assert a.returncode == 0, a.stderr
            out, err = w.communicate(timeout=90)
        finally:
            if w.poll() is None:
                w.kill()
        assert w.returncode == 0, err
        got = json.loads(out)
        assert [(r["host"], r["outcome"], r["session_id"]) for r in got["results"]] == [("lab01", "SUCCESS", sid)]
        # ...and the end, once
        assert wait_for(lambda: ops_of(did, "completed"))
        time.sleep(2.5)  # a second report would come within the service's grace (2 s)
    assert len(ops_of(did, "needs_input")) == 1 and len(ops_of(did, "completed")) == 1


def test_after_kill_9_a_new_service_posts_the_end_once(alab, tmp_path):
    with service("--inventory", str(alab.inventory)) as first:
        p = fleet("dispatch", "--inventory", str(alab.inventory), "--host", "lab01", "--repo", "demo",
                  "--task", "please [slow] think", "--no-wait", "--json")
        assert p.returncode == 0, p.stderr
        did = json.loads(p.stdout)["dispatch_id"]
        assert wait_for(lambda: did in json.loads(fleet("serve", "status", "--json").stdout)["following"], 20)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    assert not ops_of(did, "completed")
    with service("--inventory", str(alab.inventory)):  # the stale socket and lock are taken over
        assert wait_for(lambda: ops_of(did, "completed"), 90)
        time.sleep(2.5)
    assert len(ops_of(did, "completed")) == 1


def test_persist_starts_the_service_on_the_first_call_and_it_leaves_when_idle(lab, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", lab, names=["lab01", "lab02"])
    env = {"INVOKE_FLEET_PERSIST": "3"}
    assert not sock().exists()
    first = fleet("fanout", "--inventory", str(inv), "--all", "--json", "echo one", env=env)
    assert first.returncode == 0, first.stderr
    assert sock().exists() and fleet("serve", "status").returncode == 0
    before = logins(lab)
    second = fleet("fanout", "--inventory", str(inv), "--all", "--json", "echo two", env=env)
    assert second.returncode == 0 and logins(lab) == before  # warm: no new login
    assert wait_for(lambda: not sock().exists(), 20)  # idle past 'persist': it went away


def test_one_orchestrator_at_a_time_the_other_takes_over_when_the_first_is_gone(tmp_path):
    lease = tmp_path / "shared" / "orchestrator.lease"
    homes = [tmp_path / "a", tmp_path / "b"]
    # both machines' journals hold the same open dispatch (a server nobody can reach)
    ev = {"type": "event", "id": "ev_1", "time": "t", "epoch": time.time(), "actor": "x", "host": "h1",
          "operation": "dispatch_requested", "outcome": "requested", "dispatch_id": "dx-shared", "channel": "",
          "detail": {}}
    inv = tmp_path / "inv.yaml"
    inv.write_text("hosts:\n  h1: {address: 127.0.0.1, opencode: {url: 'http://127.0.0.1:9'}}\n")
    envs = []
    for i, h in enumerate(homes):
        (h / "state").mkdir(parents=True)
        (h / "state" / "journal.jsonl").write_text(json.dumps(ev) + "\n")
        envs.append({**os.environ, "HOME": str(h), "INVOKE_FLEET_JOURNAL": str(h / "state" / "journal.jsonl"),
                     "INVOKE_FLEET_LEASE": str(lease), "INVOKE_FLEET_LEASE_TTL": "3",
                     "FLEET_MACHINE": f"machine-{i}"})

    def status(env):
        p = subprocess.run([FLEET, "serve", "status", "--json"], env=env, capture_output=True, text=True, timeout=30)
        return json.loads(p.stdout)

    procs = []
    try:
        for env in envs:
            procs.append(subprocess.Popen([FLEET, "serve", "--inventory", str(inv)], env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, stdin=subprocess.DEVNULL))
            assert wait_for(lambda env=env: status(env).get("running"), 20)
        assert wait_for(lambda: status(envs[0])["followed_total"] >= 1, 20)
        a, b = status(envs[0]), status(envs[1])
        assert a["lease"]["mine"] and not b["lease"]["mine"] and b["lease"]["holder"].startswith("machine-0:")
        assert b["followed_total"] == 0  # the one standing by acts on nothing
        os.kill(procs[0].pid, signal.SIGKILL)
        procs[0].wait(timeout=10)
        assert wait_for(lambda: status(envs[1])["lease"]["mine"], 20)  # after the lease expired
        assert wait_for(lambda: status(envs[1])["followed_total"] >= 1, 20)
        assert status(envs[1])["lease"]["holder"].startswith("machine-1:")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def test_a_dispatch_whose_wait_timed_out_stays_open_for_the_service():
    from fleet.serve.follow import open_dispatches
    now = time.time()

    def ev(op, outcome, host="h1", did="dx-1"):
        return {"dispatch_id": did, "operation": op, "outcome": outcome, "host": host, "epoch": now}
    started = [ev("dispatch_requested", "requested"), ev("dispatch_requested", "requested", "h2")]
    # a gated dispatch journals each host's end again as gated_action_run: a timeout is no end
    timed_out = started + [ev("timeout", "timeout"), ev("gated_action_run", "timeout"),
                           ev("completed", "success", "h2"), ev("gated_action_run", "success", "h2")]
    assert open_dispatches(timed_out, now) == ["dx-1"]
    assert open_dispatches(timed_out + [ev("completed", "success")], now) == []


def test_a_follow_that_failed_is_retried_soon_not_after_the_rest(tmp_path):
    """A dispatch picked up before it wrote its session records fails its first follow: the next
    try comes after the scan interval (then 2x, 4x ...), not after the 30 s rest."""
    from fleet.serve.follow import Follower

    j = tmp_path / "journal.jsonl"
    j.write_text(json.dumps({"type": "event", "id": "e1", "operation": "dispatch_requested", "dispatch_id": "dx-1",
                             "host": "h", "outcome": "", "epoch": time.time()}) + "\n")
    tries: list[float] = []

    def follow(did: str) -> None:
        tries.append(time.monotonic())
        if len(tries) == 1:
            raise ValueError("no session of dispatch dx-1 is known here yet")
    f = Follower(str(j), follow, interval=0.2)
    f.scan()
    assert wait_for(lambda: len(tries) == 1 and not f.following)
    assert wait_for(lambda: f.scan() or len(tries) == 2, timeout=5)
    assert f.errors and f.errors[0].startswith("dx-1: ValueError")


def test_a_face_waiting_on_the_service_gets_its_live_events_and_run_or_waits_itself(tmp_path):
    from fleet.results import DispatchResult, DispatchRun, FanoutOutcome
    from fleet.serve.follow import Follower

    j = tmp_path / "journal.jsonl"
    j.write_text(json.dumps({"type": "event", "id": "e1", "operation": "dispatch_requested", "dispatch_id": "dx-1",
                             "host": "h", "outcome": "", "epoch": time.time()}) + "\n")

    def follow(did: str) -> DispatchRun:
        f.relay(did)("h", "session", "ses_1")
        return DispatchRun(did, "t", "r", results=[DispatchResult("h", FanoutOutcome.SUCCESS, session_id="ses_1")])
    f = Follower(str(j), follow, interval=60)
    sent: list[dict] = []
    r, w = os.pipe()
    try:
        f.answer_wait({"dispatch_id": "dx-1"}, sent.append, os.fdopen(r, "rb"))
    finally:
        os.close(w)
    assert [e["event"] for e in sent] == ["following", "live", "done"], sent
    assert sent[1] == {"event": "live", "host": "h", "kind": "session", "text": "ses_1"}
    assert sent[2]["run"]["results"][0]["session_id"] == "ses_1" and f.waiting() == {}
    # a dispatch its journal does not hold open: the face follows the agents itself
    other: list[dict] = []
    f.answer_wait({"dispatch_id": "dx-2"}, other.append, None)
    assert other == [{"event": "fallback"}] and f.waiting() == {}


def test_ctrl_c_in_a_served_wait_reports_each_session_aborted_as_the_in_process_wait_does(mocker):
    from fleet.serve import client, use

    class Records:
        def all(self):
            return [{"dispatch_id": "dx-1", "host": "b", "session_id": "ses_b"},
                    {"dispatch_id": "dx-9", "host": "c", "session_id": "ses_c"}]

    class Settings:
        dispatch_timeout, stall_timeout = 60.0, 30.0

        def path(self, what):
            return "/nonexistent/journal.jsonl"

    fl = mocker.Mock(records=Records(), settings=Settings())
    sock = mocker.Mock()
    mocker.patch.object(client, "connect", return_value=sock)

    def answers(*a, **kw):  # the service said where one agent is, then the person pressed Ctrl-C
        yield {"event": "following"}
        yield {"event": "live", "host": "a", "kind": "session", "text": "ses_a"}
        raise KeyboardInterrupt
    mocker.patch.object(client, "answers", side_effect=answers)
    mocker.patch.dict(os.environ, {"FLEET_NO_SERVICE": ""})
    seen: list = []
    run = use.wait_via_service(fl, "dx-1", on_event=lambda *e: seen.append(e))
    assert run is not None and run.interrupted and run.exit_code == 130
    assert [(r.host, r.session_id, r.outcome.value) for r in run.results] == [
        ("a", "ses_a", "ABORTED"), ("b", "ses_b", "ABORTED")]
    assert all("fleet serve follows it" in r.error for r in run.results) and sock.close.called
    assert seen == [("a", "session", "ses_a")]
    # nothing known of the dispatch: Ctrl-C ends the call as before
    fl.records = mocker.Mock(all=lambda: [])

    def quiet(*a, **kw):
        yield {"event": "following"}
        raise KeyboardInterrupt
    mocker.patch.object(client, "answers", side_effect=quiet)
    with pytest.raises(KeyboardInterrupt):
        use.wait_via_service(fl, "dx-1")

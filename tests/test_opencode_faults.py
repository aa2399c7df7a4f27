"""OpenCode client against a contract-following stand-in, for faults the real server cannot show."""
import pytest
from stand_ins import FakeOpenCode

from fleet.agent.client import (
    AuthRefused,
    OpenCodeClient,
    ProtocolError,
    ResponseTimeout,
    ServerError,
    SessionNotFound,
    Unreachable,
)
from fleet.inventory import load_inventory_text
from fleet.ops import dispatch as dx
from fleet.results import FanoutOutcome
from fleet.settings import Settings


@pytest.fixture
def oc_server():
    s = FakeOpenCode()
    yield s
    s.close()


def host_for(url: str, extra: str = ""):
    inv = load_inventory_text(f"hosts:\n  box: {{user: u, opencode: {{url: '{url}'{extra}}}, repos: {{root: /srv/repos}}}}\n",
                              "t.yaml")
    return inv, inv.host("box")


def client(url, **kw):
    return OpenCodeClient(host_for(url)[1], "/srv/repos/demo", **kw)


def test_every_call_carries_the_directory(oc_server):
    with client(oc_server.url) as c:
        sid = c.create_session("t")["id"]
        c.status()
        c.messages(sid)
    assert [q.get("directory") for _, _, q in oc_server.hits] == ["/srv/repos/demo"] * 3


@pytest.mark.parametrize("fault,exc,words", [
    ("500", ServerError, "server error 500: database is locked"),
    ("nonjson", ProtocolError, "expected JSON from POST /session, got text/html"),
    ("truncated", ProtocolError, "broke the HTTP exchange"),
    ("404", SessionNotFound, "Session not found"),
])
def test_faults_are_typed_and_name_host_and_url(oc_server, fault, exc, words):
    oc_server.faults["POST /session"] = fault
    with pytest.raises(exc) as ei:
        with client(oc_server.url) as c:
            c.create_session("t")
    msg = str(ei.value)
    assert words in msg and msg.startswith("box:") and oc_server.url + "/session" in msg


def test_hanging_server_times_out(oc_server):
    oc_server.faults["GET /session/status"] = "hang"
    with pytest.raises(ResponseTimeout, match="did not answer GET /session/status in time"):
        with client(oc_server.url, timeout=1.0) as c:
            c.status()


def test_unreachable_says_what_was_tried(closed_port):
    with pytest.raises(Unreachable) as ei:
        with client(f"http://127.0.0.1:{closed_port}", connect_attempts=3) as c:
            c.health()
    assert "after 3 attempts" in str(ei.value) and f"127.0.0.1:{closed_port}" in str(ei.value)


def test_401_names_the_username(tmp_path):
    s = FakeOpenCode(password="right")
    try:
        pw = tmp_path / "pw"
        pw.write_text("wrong")
        pw.chmod(0o600)
        _, h = host_for(s.url, f", password_file: {pw}")
        with pytest.raises(AuthRefused, match="username 'opencode'"):
            with OpenCodeClient(h, None) as c:
                c.health()
        pw.write_text("right")
        with OpenCodeClient(h, None) as c:
            assert c.health()["healthy"]
    finally:
        s.close()


def test_password_file_with_loose_mode_is_refused(tmp_path, oc_server):
    from fleet.errors import BadInput
    pw = tmp_path / "pw"
    pw.write_text("x")
    pw.chmod(0o644)
    _, h = host_for(oc_server.url, f", password_file: {pw}")
    with pytest.raises(BadInput, match="chmod 600"):
        OpenCodeClient(h, None)


@pytest.mark.parametrize("fault", ["500", "drop", "hang"])
def test_a_prompt_is_never_sent_twice(oc_server, fault):
    oc_server.faults["prompt_async"] = fault
    inv, _ = host_for(oc_server.url)
    run = dx.dispatch(inv, "box", args={"task": "do it", "repo": "demo"}, settings=Settings(token_dir="/tmp/x"),
                      client_factory=lambda h, d: OpenCodeClient(h, d, timeout=1.5), poll=0.05)
    r = run.results[0]
    assert r.outcome in (FanoutOutcome.FAILURE, FanoutOutcome.TIMEOUT) and "box" in r.error
    assert sum(1 for m, p, _ in oc_server.hits if p.endswith("/prompt_async")) == 1


def test_dispatch_against_stand_in_succeeds(oc_server):
    inv, _ = host_for(oc_server.url)
    r = dx.dispatch(inv, "box", args={"task": "hi", "repo": "demo"}, settings=Settings(token_dir="/tmp/x"),
                    poll=0.05).results[0]
    assert r.outcome == FanoutOutcome.SUCCESS and r.answer == "ok: hi" and r.cost == 0.5


def test_resume_unknown_session_is_clear(oc_server):
    inv, _ = host_for(oc_server.url)
    r = dx.dispatch(inv, "box", args={"task": "hi", "repo": "demo", "session": "ses_nope"},
                    settings=Settings(token_dir="/tmp/x"), poll=0.05).results[0]
    assert r.outcome == FanoutOutcome.FAILURE and r.error_kind == "not_found" and "ses_nope" in r.error
    assert not any(p.endswith("prompt_async") for _, p, _ in oc_server.hits)


def test_trickling_server_cannot_hold_a_dispatch_past_its_deadline():
    """The issue's reproduction: a server that trickles one byte at a time never ends a read."""
    import threading as _t

    from fleet.inventory import load_inventory_text
    from fleet.ops import dispatch as dxm
    from fleet.settings import Settings

    s = FakeOpenCode()
    s.faults["GET /session/status"] = "trickle"
    try:
        inv = load_inventory_text(f"hosts:\n  h: {{opencode: '{s.url}', repos: {{root: /r}}}}\n", "t.yaml")
        box = {}
        th = _t.Thread(target=lambda: box.update(run=dxm.dispatch(
            inv, "h", args={"task": "t", "repo": "demo"}, settings=Settings(), timeout=2, poll=0.05)), daemon=True)
        th.start()
        th.join(30)
        assert not th.is_alive(), "dispatch still running past its deadline"
        r = box["run"].results[0]
        assert r.outcome.value == "TIMEOUT" and "h" in r.error
    finally:
        s.close()


def test_server_of_an_unknown_api_version_is_refused_before_sending():
    from fleet.inventory import load_inventory_text
    from fleet.ops import dispatch as dxm
    from fleet.settings import Settings

    s = FakeOpenCode()
    s.faults["GET /global/health"] = "v2"
    try:
        inv = load_inventory_text(f"hosts:\n  h: {{opencode: '{s.url}', repos: {{root: /r}}}}\n", "t.yaml")
        r = dxm.dispatch(inv, "h", args={"task": "t", "repo": "demo"}, settings=Settings(), poll=0.05).results[0]
        assert r.outcome.value == "FAILURE" and "API fleet does not know" in r.error
        assert not [h for h in s.hits if h[1] == "/session"]
    finally:
        s.close()


def test_watch_board_totals_from_messages_when_the_server_keeps_none(oc_server):
    """A server whose sessions carry no tokens/cost (older than 1.18): the board reads the session's
    messages once and sums every assistant message; one that keeps them is not read at all."""
    from fleet.ops.watch import Watcher

    inv, h = host_for(oc_server.url)
    with OpenCodeClient(h, "/srv/repos/demo") as c:
        old = c.create_session("old server")["id"]
        new = c.create_session("new server")["id"]
    oc_server.messages[old] = [
        {"info": {"id": "msg_1", "role": "assistant", "tokens": {"input": 10, "output": 5}, "cost": 0.25}, "parts": []},
        {"info": {"id": "msg_2", "role": "user"}, "parts": []},
        {"info": {"id": "msg_3", "role": "assistant", "tokens": {"total": 40, "input": 30}, "cost": 0.5}, "parts": []}]
    oc_server.sessions[new].update(tokens={"input": 7, "output": 3, "reasoning": 0, "cache": {"read": 2, "write": 0}},
                                   cost=0.125)
    w = Watcher([h], lambda row: None).start()
    assert w.ready(10)  # the stand-in has no event stream: its board is read over REST all the same
    w.close()
    rows = {r["session"]: r for r in w.rows()}
    assert (rows[old]["tokens"], rows[old]["cost"]) == (55, 0.75)
    assert (rows[new]["tokens"], rows[new]["cost"]) == (12, 0.125) and rows[new]["repo"] == "demo"
    assert ("GET", f"/session/{new}/message") not in [(m, p) for m, p, _ in oc_server.hits]
    host_row = next(r for r in w.rows() if r["session"] == "")
    assert host_row["state"] == "no-events" and "/global/event: HTTP 404" in host_row["step"]


def test_following_a_turn_ends_in_a_value(oc_server):
    """The turn's end is a value, not client state: no answer when the wait runs out, the
    server's failure when the task never starts, else the answer with the tokens and cost of
    every model call of the turn (not only the last message's)."""
    from fleet.agent.turn import TurnEnd, follow_turn

    with client(oc_server.url) as c:
        sid = c.create_session("t")["id"]
        assert follow_turn(c, sid, 0, 0.2, poll=0.05) == TurnEnd(None, None)
        with pytest.raises(ServerError, match="never started it"):
            follow_turn(c, sid, 0, 5, poll=0.05, start_grace=0.1)
        oc_server.messages[sid] = [
            {"info": {"id": "msg_u", "role": "user"}, "parts": []},
            {"info": {"id": "msg_1", "role": "assistant", "tokens": {"total": 10}, "cost": 0.25}, "parts": []},
            {"info": {"id": "msg_2", "role": "assistant", "time": {"completed": 2}, "tokens": {"total": 5},
                      "cost": 0.5}, "parts": [{"type": "text", "text": "done"}]}]
        end = follow_turn(c, sid, 0, 5, poll=0.05)
    assert end.pending is None and end.answer is not None and end.answer.text == "done"
    assert (end.answer.tokens["total"], end.answer.cost) == (15, 0.75)

"""The agent plane bounded against any server: hostile loopback stand-ins for what the real
`opencode serve` never does (a gigabyte reply, a line without end, wrong types, a lost run, an
abort that does not stop), and the input checks that need no server at all."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from stand_ins import FakeOpenCode

from fleet.inventory import load_inventory_text
from fleet.ops import dispatch as dx
from fleet.results import FanoutOutcome
from fleet.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
FLEET = str(Path(sys.executable).parent / "fleet")


@pytest.fixture
def oc():
    s = FakeOpenCode()
    yield s
    s.close()


def inventory(tmp_path: Path, **urls: str) -> Path:
    lines = ["hosts:"] + [f"  {name}: {{user: u, opencode: '{url}', repos: {{root: /srv/repos}}}}"
                          for name, url in urls.items()]
    p = tmp_path / "inventory.yaml"
    p.write_text("\n".join(lines) + "\n")
    return p


def fleet(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([FLEET, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          stdin=subprocess.DEVNULL)


class Hostile:
    """A raw HTTP server on loopback: ``reply(path)`` writes whatever it likes to the socket."""

    def __init__(self, reply) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.reply = reply
        self.done = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.done.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                got = conn.recv(4096)
                if not got:
                    return
                head += got
            path = head.split(b" ", 2)[1].decode()
            self.reply(conn, path)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.done.set()
        self.sock.close()


def in_a_small_process(code: str, timeout: float = 120) -> dict:
    """Run ``code`` (which prints one JSON line) in a Python limited to 1 GiB of data, and return
    what it printed plus its peak RSS in MB: a reader that holds a whole gigabyte fails here."""
    wrapper = ("import resource, json, sys\n"
               "resource.setrlimit(resource.RLIMIT_DATA, (1 << 30, 1 << 30))\n"
               f"sys.path.insert(0, {str(ROOT)!r})\n" + code +
               "\nprint(json.dumps({'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))\n")
    p = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, timeout=timeout,
                       cwd=str(ROOT), stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr[-2000:]
    out: dict = {}
    for line in p.stdout.splitlines():
        out.update(json.loads(line))
    return out


def test_a_gigabyte_health_reply_costs_megabytes_and_says_so():
    """The issue's reproduction: a 1 GiB /global/health body took 3 GB of RSS."""
    def reply(conn: socket.socket, path: str) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n")
        chunk = b" " * (1 << 20)
        for _ in range(1024):
            conn.sendall(chunk)
    srv = Hostile(reply)
    try:
        got = in_a_small_process(
            "from fleet.inventory import load_inventory_text\n"
            "from fleet.ops.sessions import server_status\n"
            f"inv = load_inventory_text(\"hosts:\\n  big: {{opencode: '{srv.url}'}}\\n\", 't.yaml')\n"
            "r = server_status(inv.host('big'), timeout=30)\n"
            "print(json.dumps({'healthy': r['healthy'], 'error': r['error']}))\n")
    finally:
        srv.close()
    assert got["healthy"] is False and "larger than 8 MiB" in got["error"] and got["error"].startswith("big:")
    assert got["rss_mb"] < 400, got


def test_an_event_line_without_end_is_dropped_and_the_stream_goes_on():
    """A 64 MiB ``data:`` line (a server gone wrong) is skipped as it streams by; the next event arrives."""
    def reply(conn: socket.socket, path: str) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
        conn.sendall(b'data: {"type":"server.connected","properties":{}}\n\n')
        conn.sendall(b'data: {"type":"message.part.updated","properties":{"junk":"')
        chunk = b"x" * (1 << 20)
        for _ in range(64):
            conn.sendall(chunk)
        conn.sendall(b'"}}\n\ndata: {"type":"session.idle","properties":{"sessionID":"ses_after"}}\n\n')
        time.sleep(5)
    srv = Hostile(reply)
    try:
        got = in_a_small_process(
            "import time\n"
            "from fleet.inventory import load_inventory_text\n"
            "from fleet.agent.events import EventStream\n"
            f"inv = load_inventory_text(\"hosts:\\n  big: {{opencode: '{srv.url}'}}\\n\", 't.yaml')\n"
            "seen = []\n"
            "s = EventStream(inv.host('big'), seen.append, directory='/r').start()\n"
            "end = time.monotonic() + 60\n"
            "while time.monotonic() < end and not any(e.get('type') == 'session.idle' for e in seen):\n"
            "    time.sleep(0.1)\n"
            "s.close()\n"
            "print(json.dumps({'types': [e.get('type') for e in seen]}))\n")
    finally:
        srv.close()
    assert got["types"][-1] == "session.idle" and "message.part.updated" not in got["types"], got
    assert got["rss_mb"] < 300, got


def test_wrong_types_are_one_line_per_host_not_a_crash(oc, tmp_path):
    """The issue's reproduction: {"healthy":"yes","version":18} crashed status with a TypeError."""
    good = FakeOpenCode()
    try:
        oc.replies["GET /global/health"] = (200, b'{"healthy":"yes","version":18}')
        p = fleet("status", "--inventory", str(inventory(tmp_path, odd=oc.url, fine=good.url)), cwd=tmp_path)
        assert p.returncode == 1, p.stderr
        assert "unexpected error" not in p.stderr and "Traceback" not in p.stderr
        rows = [line for line in p.stdout.splitlines() if line.startswith(("odd", "fine"))]
        assert len(rows) == 2 and "healthy" in rows[1] and "DOWN" in rows[0], p.stdout
        assert "'healthy' should be true or false, got a string ('yes')" in p.stdout
        # a board of sessions with wrong types inside: what can be read is read, the rest dropped
        oc.replies.pop("GET /global/health")
        oc.replies["GET /experimental/session"] = (200, json.dumps([
            {"id": "ses_1", "time": "yesterday", "title": 5, "metadata": [], "directory": "/srv/repos/demo"},
            7, {"id": 9}, {"id": "ses_2", "directory": "/srv/repos/demo", "tokens": {"input": "many"}, "cost": "$1"}
        ]).encode())
        oc.replies["GET /session/status"] = (200, b'{"ses_1": "busy", "ses_2": {"type": 3}}')
        oc.replies["GET /permission"] = (200, b'[1, {"id": 2}, {"id": "per_1", "sessionID": 5}]')
        good.replies["GET /experimental/session"] = (200, b'{"sessions": []}')
        p = fleet("sessions", "--inventory", str(inventory(tmp_path, odd=oc.url, fine=good.url)), "--json",
                  cwd=tmp_path)
        assert "unexpected error" not in p.stderr and "Traceback" not in p.stderr, p.stderr
        doc = json.loads(p.stdout)
        assert sorted(r["session_id"] for r in doc["sessions"]) == ["ses_1", "ses_2"]
        assert [r["tokens"] for r in doc["sessions"] if r["session_id"] == "ses_2"] == [0]
        assert p.returncode == 1 and len(doc["errors"]) == 1, doc["errors"]
        assert doc["errors"][0].startswith("fine: session list: expected an array, got an object"), doc["errors"]
    finally:
        good.close()


def test_a_run_the_server_lost_is_seen_not_waited_out(oc):
    """A server restart drops the run: the session goes idle with no reply. fleet says so in
    seconds (LOST_GRACE) instead of waiting out the whole timeout."""
    from fleet.agent.client import OpenCodeClient
    from fleet.agent.turn import follow_turn
    from fleet.errors import ServerError

    inv = load_inventory_text(f"hosts:\n  box: {{opencode: '{oc.url}', repos: {{root: /srv/repos}}}}\n", "t.yaml")
    with OpenCodeClient(inv.host("box"), "/srv/repos/demo") as c:
        sid = c.create_session("t")["id"]
        oc.messages[sid] = [{"info": {"id": "msg_u", "role": "user"}, "parts": []}]
        oc.busy.add(sid)
        threading.Timer(1.0, oc.busy.discard, args=(sid,)).start()  # the run is gone
        t0 = time.monotonic()
        with pytest.raises(ServerError, match="was it restarted"):
            follow_turn(c, sid, 0, 20, poll=0.1)
    assert time.monotonic() - t0 < 12


def test_an_abort_that_does_not_stop_exits_1(oc, tmp_path):
    """A host that did not succeed is exit 1, not 2 (bad input)."""
    inv = inventory(tmp_path, box=oc.url)
    from fleet.agent.client import OpenCodeClient
    with OpenCodeClient(load_inventory_text(inv.read_text(), str(inv)).host("box"), "/srv/repos/demo") as c:
        sid = c.create_session("t")["id"]
    oc.busy.add(sid)
    oc.stubborn.add(sid)
    p = fleet("abort", "--inventory", str(inv), "--host", "box", "--session", sid, "--no-slack", cwd=tmp_path)
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert f"still busy 5s after abort: {sid}" in p.stderr and "Traceback" not in p.stderr


def test_a_repo_that_is_a_path_is_refused_before_anything(oc, tmp_path):
    """The issue's reproduction: dispatch --repo ../../../../victim1."""
    inv = inventory(tmp_path, box=oc.url)
    p = fleet("dispatch", "--inventory", str(inv), "--host", "box", "--repo", "../../../../victim1", "--task", "t",
              "--no-slack", cwd=tmp_path)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "not a plain repo name" in p.stderr
    assert not [h for h in oc.hits if h[1] in ("/session", "/file")]


def test_a_server_of_another_major_version_is_refused_naming_both(oc, tmp_path):
    oc.faults["GET /global/health"] = "v2"
    inv = inventory(tmp_path, box=oc.url)
    p = fleet("status", "--inventory", str(inv), "--json", cwd=tmp_path)
    assert p.returncode == 1
    s = json.loads(p.stdout)["servers"][0]
    assert s["healthy"] is False and s["version"] == "2.0.1"
    assert "OpenCode 2.0.1 speaks an API fleet does not know (fleet speaks 1.x, tested with 1.18.33)" in s["error"]
    r = dx.dispatch(load_inventory_text(inv.read_text(), str(inv)), "box", args={"task": "t", "repo": "demo"},
                    settings=Settings(token_dir=str(tmp_path / "tok")), poll=0.05).results[0]
    assert r.outcome == FanoutOutcome.FAILURE and "2.0.1" in r.error and "1.x" in r.error
    assert r.error.count("box:") == 1  # named once
    assert not [h for h in oc.hits if h[1] == "/session"]


def test_max_cost_stops_the_agent_and_is_journaled(oc, tmp_path):
    """A turn that has cost more than --max-cost is stopped (the server's own bill, read while it works)."""
    oc.running_turns = True
    st = Settings(token_dir=str(tmp_path / "tok"), journal=str(tmp_path / "journal.jsonl"))
    inv = load_inventory_text(inventory(tmp_path, box=oc.url).read_text(), "t.yaml")
    t0 = time.monotonic()
    r = dx.dispatch(inv, "box", args={"task": "spend", "repo": "demo"}, settings=st, poll=0.05, timeout=30,
                    max_cost=0.1).results[0]
    assert time.monotonic() - t0 < 10
    assert r.outcome == FanoutOutcome.ABORTED and r.error_kind == "over_budget", r.error
    assert "$0.5000 spent, over --max-cost 0.1" in r.error and r.cost == 0.5
    assert any(p.endswith("/abort") for _, p, _ in oc.hits) and r.session_id not in oc.busy
    ops = [json.loads(x) for x in (tmp_path / "journal.jsonl").read_text().splitlines()]
    over = [e for e in ops if e["operation"] == "over_budget"]
    assert len(over) == 1 and over[0]["detail"]["max_cost"] == 0.1


@pytest.mark.parametrize("flags,words", [
    ({"max_tokens": 100, "wait": False}, "drop --no-wait"),
    ({"max_cost": -1}, "more than 0"),
    ({"allow": ["bash git"]}, "PERMISSION:PATTERN"),
    ({"deny": ["bash:"]}, "PERMISSION:PATTERN"),
])
def test_bad_rules_and_budgets_are_refused_before_anything(oc, tmp_path, flags, words):
    from fleet.errors import BadInput
    inv = load_inventory_text(inventory(tmp_path, box=oc.url).read_text(), "t.yaml")
    with pytest.raises(BadInput, match=words):
        dx.dispatch(inv, "box", args={"task": "t", "repo": "demo"}, settings=Settings(token_dir=str(tmp_path)),
                    **flags)
    assert not oc.hits


def test_rules_reach_the_new_session_as_its_ruleset(oc, tmp_path):
    from fleet.agent.asks import permission_rules
    assert permission_rules(["bash:make *"], ["bash:git push*", "webfetch"], ["edit"]) == [
        {"permission": "edit", "pattern": "*", "action": "ask"},
        {"permission": "bash", "pattern": "make *", "action": "allow"},
        {"permission": "bash", "pattern": "git push*", "action": "deny"},
        {"permission": "webfetch", "pattern": "*", "action": "deny"}]
    seen = []
    inv = load_inventory_text(inventory(tmp_path, box=oc.url).read_text(), "t.yaml")

    from fleet.agent.client import OpenCodeClient

    class Spy(OpenCodeClient):
        def create_session(self, title, metadata=None, permission=None):
            seen.append(permission)
            return super().create_session(title, metadata, permission)
    r = dx.dispatch(inv, "box", args={"task": "t", "repo": "demo"}, settings=Settings(token_dir=str(tmp_path)),
                    poll=0.05, deny=["bash"], client_factory=Spy).results[0]
    assert r.outcome == FanoutOutcome.SUCCESS, r.error
    assert seen == [[{"permission": "bash", "pattern": "*", "action": "deny"}]]


def test_bounded_lines_drop_only_the_long_line():
    from fleet.agent.events import bounded_lines
    chunks = [b"a\nbb", b"b\n" + b"x" * 50, b"y" * 50 + b"\nok\n", b"tail"]
    assert list(bounded_lines(iter(chunks), limit=40)) == ["a", "bbb", "ok", "tail"]


def test_a_server_without_the_cross_project_listing_is_asked_per_repo_directory(tmp_path):
    """Older servers have no GET /experimental/session: fleet lists the server's own project and
    each repo directory the inventory names."""
    from fleet.ops.sessions import host_sessions

    s = FakeOpenCode(cross_project=False)
    try:
        inv = load_inventory_text(f"hosts:\n  box: {{opencode: '{s.url}', repos: {{root: /srv/repos, paths: "
                                  f"{{demo: demo, site: /elsewhere/site}}}}}}\n", "t.yaml")
        from fleet.agent.client import OpenCodeClient
        for d in ("/srv/repos/demo", "/elsewhere/site"):
            with OpenCodeClient(inv.host("box"), d) as c:
                c.create_session("t")
        rows = host_sessions(inv.host("box"))
        assert sorted(r.directory for r in rows) == ["/elsewhere/site", "/srv/repos/demo"]
        asked = {q.get("directory") for m, p, q in s.hits if (m, p) == ("GET", "/session")}
        assert asked == {None, "/srv/repos/demo", "/elsewhere/site"}, asked
    finally:
        s.close()

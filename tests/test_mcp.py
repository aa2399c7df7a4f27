"""`fleet mcp` driven by the MCP SDK's own client over stdio: a real MCP session, no mocks."""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import anyio
import pytest
from conftest import running_lab
from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client

FLEET = str(Path(sys.executable).parent / "fleet")
TOKEN_RE = re.compile(r"\b[a-z2-7]{4}(?:-[a-z2-7]{4}){5}\b")


@pytest.fixture(scope="module")
def mlab(tmp_path_factory):
    with running_lab(tmp_path_factory.mktemp("mcplab"), 2, agents=1) as lab:
        yield lab


def call(inventory: Path, steps, elicit=None, cwd: Path | None = None):
    """Open a session to `fleet mcp`, run ``steps(session)`` (async), return its result."""
    async def main():
        params = StdioServerParameters(command=FLEET, args=["mcp", "--inventory", str(inventory)],
                                       env=dict(os.environ), cwd=str(cwd) if cwd else None)
        async with stdio_client(params) as (r, w):
            async with ClientSession(r, w, elicitation_callback=elicit,
                                     client_info=types.Implementation(name="test-client", version="1")) as s:
                await s.initialize()
                return await steps(s)
    return anyio.run(main)


def data(result: types.CallToolResult) -> dict:
    assert not result.isError, result.content
    if result.structuredContent is not None:
        return result.structuredContent.get("result", result.structuredContent)
    return json.loads(result.content[0].text)


def journal() -> list[dict]:
    p = Path(os.environ["INVOKE_FLEET_JOURNAL"])
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def test_tools_preflight_fanout_and_the_journal_names_the_client(mlab, tmp_path):
    async def steps(s):
        tools = {t.name for t in (await s.list_tools()).tools}
        pre = data(await s.call_tool("preflight", {"selector": "all"}))
        seen = []

        async def progress(p, total, message):
            seen.append((p, total, message))
        fan = data(await s.call_tool("fanout", {"command": "echo hi-$((40+2))", "selector": "all"},
                                           progress_callback=progress))
        return tools, pre, fan, seen
    tools, pre, fan, seen = call(mlab.inventory, steps, cwd=tmp_path)
    assert {"hosts", "preflight", "fanout", "dispatch", "wait", "answer", "sessions", "status", "abort", "approve", "deny",
            "teardown", "audit_tail"} <= tools
    assert pre["ok"] is True
    assert [r["outcome"] for r in fan["results"]] == ["SUCCESS", "SUCCESS"]
    assert all(r["stdout"] == "hi-42\n" for r in fan["results"])
    assert len(seen) == 2 and seen[-1][0] == 2  # one progress step per host
    calls = [e for e in journal() if e["operation"] == "mcp_call"]
    assert {e["detail"]["tool"] for e in calls} >= {"preflight", "fanout"}
    assert all(e["detail"]["client"] == "test-client/1" for e in calls)


def test_errors_are_one_line_tool_errors(mlab, tmp_path):
    async def steps(s):
        return await s.call_tool("fanout", {"command": "true", "selector": "nosuchhost"})
    res = call(mlab.inventory, steps, cwd=tmp_path)
    assert res.isError and "unknown host 'nosuchhost'" in res.content[0].text
    assert "Traceback" not in res.content[0].text


def _gated(mlab, tmp_path, elicit):
    async def steps(s):
        return await s.call_tool("teardown", {"selector": "lab01"})
    return call(mlab.inventory, steps, elicit=elicit, cwd=tmp_path)


def test_gated_tool_runs_once_when_the_person_accepts(mlab, tmp_path):
    asked = []

    async def accept(ctx, params):
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"confirm": True})
    res = _gated(mlab, tmp_path, accept)
    out = data(res)
    assert out["teardown"][0]["host"] == "lab01"
    assert len(asked) == 1 and "operation: teardown" in asked[0] and "lab01" in asked[0]
    assert not TOKEN_RE.search(json.dumps(out))  # the token never reaches the model
    used = [e for e in journal() if e["operation"] == "token_used"]
    assert len(used) == 1


def test_gated_tool_declined_does_nothing(mlab, tmp_path):
    async def decline(ctx, params):
        return types.ElicitResult(action="decline")
    res = _gated(mlab, tmp_path, decline)
    assert res.isError and "declined" in res.content[0].text
    assert not [e for e in journal() if e["operation"] in ("token_used", "gated_action_run")]


def test_client_without_elicitation_gets_the_plan_not_the_token(mlab, tmp_path):
    res = _gated(mlab, tmp_path, None)
    text = res.content[0].text
    assert res.isError and "operation: teardown" in text and "fleet command" in text
    assert not TOKEN_RE.search(text)


def test_dispatch_follows_progress_to_the_end(mlab, tmp_path):
    async def steps(s):
        seen = []

        async def progress(p, total, message):
            seen.append(message)
        out = data(await s.call_tool("dispatch", {"repo": "demo", "task": "say hi", "selector": "lab01"},
                                     progress_callback=progress))
        return out, seen
    out, seen = call(mlab.inventory, steps, cwd=tmp_path)
    r = out["results"][0]
    assert r["outcome"] == "SUCCESS" and r["answer"] == "DONE: say hi"
    assert any("session ses" in m for m in seen) and any(m and "busy" in m for m in seen)
    assert "lab01: 15 tok $0.0000" in seen and seen[-1] == "lab01: SUCCESS"  # usage so far, then the end


def accepted(lab) -> int:
    return sum(p.read_text().count("Accepted publickey") for p in Path(lab.dir).glob("sshd/*/sshd.log"))


def test_second_fanout_makes_no_new_ssh_connection_and_a_dead_host_fails_cleanly(mlab, tmp_path):
    import signal
    import subprocess
    import time as _t

    counts = []

    async def steps(s):
        counts.append(accepted(mlab))
        first = data(await s.call_tool("fanout", {"command": "echo one", "selector": "all"}))
        _t.sleep(0.5)
        counts.append(accepted(mlab))
        second = data(await s.call_tool("fanout", {"command": "echo two", "selector": "all"}))
        _t.sleep(0.5)
        counts.append(accepted(mlab))
        # kill the hosts' sshd and its per-connection children: the kept connections die
        pid = mlab.sshd_pids[0]
        subprocess.run(["pkill", "-KILL", "-P", str(pid)], check=False)
        os.kill(pid, signal.SIGKILL)
        _t.sleep(0.5)
        third = await s.call_tool("fanout", {"command": "echo three", "selector": "all"})
        return first, second, third
    first, second, third = call(mlab.inventory, steps, cwd=tmp_path)
    assert [r["outcome"] for r in first["results"]] == ["SUCCESS", "SUCCESS"]
    assert [r["stdout"] for r in second["results"]] == ["two\n", "two\n"]
    assert counts[1] - counts[0] == 2 and counts[2] == counts[1]  # the second run: no handshake at all
    out = data(third)  # the dead kept connections are dropped, the hosts dialled again: a clean failure
    assert all(r["outcome"] in ("FAILURE", "PREFLIGHT_FAILED") for r in out["results"])
    assert all("refused" in r["error"] for r in out["results"])


def test_python_fleet_object_keeps_connections(lab, tmp_path):
    from test_modes import opts, settings

    from fleet import Fleet

    with Fleet(str(lab.inventory), settings=settings(tmp_path)) as f:
        a = f.fanout("lab01,lab02", "true", no_canary=True, options=opts(tmp_path))
        b = f.fanout("lab01,lab02", "true", no_canary=True, options=opts(tmp_path))
        assert a.exit_code == b.exit_code == 0
        assert f.pool.dials == 2 and f.pool.reused == 2


def test_kept_connections_are_not_woken_ten_times_a_second(lab, tmp_path):
    """paramiko wakes each transport every 0.1 s (its socket timeout); a kept connection is
    checked every IDLE_CHECK s instead (50 idle connections cost 2% of a core before), and gets
    paramiko's own timeout back when it is taken for a command."""
    from test_modes import opts, settings

    from fleet import Fleet
    from fleet.ssh.warm import BUSY_CHECK, IDLE_CHECK

    def kept(f):
        return [s for lst in f.pool._free.values() for s, _ in lst]

    def check(sess):
        return sess.conn.client.get_transport().sock.gettimeout()

    with Fleet(str(lab.inventory), settings=settings(tmp_path)) as f:
        f.fanout("lab01,lab02", "true", no_canary=True, options=opts(tmp_path))
        assert [check(s) for s in kept(f)] == [IDLE_CHECK, IDLE_CHECK]
        one = kept(f)[0]
        taken = f.pool.take(one.host, one.target)
        assert taken is one and check(one) == BUSY_CHECK
        f.pool.give(one)
        b = f.fanout("lab01,lab02", "echo again", no_canary=True, options=opts(tmp_path))
        assert b.exit_code == 0 and [r.stdout for r in b.results] == ["again\n", "again\n"]
        assert f.pool.dials == 2 and [check(s) for s in kept(f)] == [IDLE_CHECK, IDLE_CHECK]


def test_orchestrator_dispatches_without_waiting_then_waits(mlab, tmp_path):
    """An orchestrator agent hands out work with no_wait, goes on, and later collects the result."""
    async def steps(s):
        sent = data(await s.call_tool("dispatch", {"repo": "demo", "task": "please [bash: sleep 1; echo later]",
                                                    "selector": "lab01", "no_wait": True}))
        got = data(await s.call_tool("wait", {"dispatch_id": sent["dispatch_id"]}))
        one = data(await s.call_tool("wait", {"session": sent["results"][0]["session_id"]}))
        neither = await s.call_tool("wait", {})
        return sent, got, one, neither
    sent, got, one, neither = call(mlab.inventory, steps, cwd=tmp_path)
    assert sent["results"][0]["waited"] is False
    r = got["results"][0]
    assert r["outcome"] == "SUCCESS" and "later" in r["answer"] and r["session_id"] == sent["results"][0]["session_id"]
    assert one["results"][0]["answer"] == r["answer"]
    assert neither.isError and "session, or dispatch_id" in neither.content[0].text

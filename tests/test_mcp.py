"""`fleet mcp` driven by the MCP SDK's own client over stdio: a real MCP session, no mocks.

Every tool result is checked as a client that trusts the schema would: its structuredContent
validates (jsonschema) against the tool's declared outputSchema, and equals the text form."""
from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import anyio
import jsonschema
import pytest
from conftest import fresh_agent_lab, journal, logins, running, running_lab, wait_for
from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import McpError
from test_ssh_world import _marker, no_process

import fleet

FLEET = str(Path(sys.executable).parent / "fleet")
TOKEN_RE = re.compile(r"\b[a-z2-7]{4}(?:-[a-z2-7]{4}){5}\b")


@pytest.fixture(scope="module")
def mlab(agent_lab):
    return fresh_agent_lab(agent_lab, 2, agents=1)


class Checked:
    """A client session that checks every tool result against the tool's outputSchema."""

    def __init__(self, s: ClientSession) -> None:
        self.s = s
        self.schemas: dict[str, dict] = {}
        self.init: types.InitializeResult | None = None

    def __getattr__(self, name):
        return getattr(self.s, name)

    async def call_tool(self, name, args=None, **kw) -> types.CallToolResult:
        if not self.schemas:
            self.schemas = {t.name: t.outputSchema for t in (await self.s.list_tools()).tools}
        res = await self.s.call_tool(name, args, **kw)
        schema = self.schemas.get(name)
        if not res.isError and schema is not None:  # test_every_tool_declares_... sees that every tool has one
            assert res.structuredContent is not None, f"{name} returned no structuredContent"
            jsonschema.validate(res.structuredContent, schema)
            assert json.loads(res.content[0].text) == res.structuredContent, f"{name}: text and structure differ"
        elif res.isError:
            assert len(res.content) == 1 and res.content[0].type == "text"
        return res


def call(inventory: Path, steps, elicit=None, cwd: Path | None = None, env: dict | None = None,
         errlog=None):
    """Open a session to `fleet mcp`, run ``steps(session)`` (async), return its result."""
    async def main():
        params = StdioServerParameters(command=FLEET, args=["mcp", "--inventory", str(inventory)],
                                       env={**os.environ, **(env or {})}, cwd=str(cwd) if cwd else None)
        async with stdio_client(params, **({"errlog": errlog} if errlog else {})) as (r, w):
            async with ClientSession(r, w, elicitation_callback=elicit,
                                     client_info=types.Implementation(name="test-client", version="1")) as s:
                c = Checked(s)
                c.init = await s.initialize()
                return await steps(c)
    return anyio.run(main)


def data(result: types.CallToolResult) -> dict:
    """A tool's result (checked against its outputSchema by :class:`Checked`)."""
    assert not result.isError, result.content
    if result.structuredContent is not None:
        return result.structuredContent
    return json.loads(result.content[0].text)


def error(result: types.CallToolResult) -> str:
    """A tool error's text: one line (fleet's rule), never a traceback or pydantic's dump."""
    assert result.isError, result
    text = result.content[0].text
    assert "\n" not in text and "Traceback" not in text and "pydantic" not in text, text
    assert not text.startswith("Error executing tool"), text
    return text






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
    steps_ = [x for x in seen if "still running" not in x[2]]
    assert len(steps_) == 2 and steps_[-1][:2] == (2, 2)  # one progress step per host, of 2
    calls = [e for e in journal() if e["operation"] == "mcp_call"]
    assert {e["detail"]["tool"] for e in calls} >= {"preflight", "fanout"}
    assert all(e["detail"]["client"] == "test-client/1" for e in calls)


def test_every_tool_declares_its_result_arguments_and_hints(mlab, tmp_path):
    """outputSchema: a real closed object per tool; every argument described, closed inputs,
    enums where a word is one of a few; the four hints on every tool; serverInfo is fleet."""
    async def steps(s):
        return (await s.list_tools()).tools, s.init
    tools, init = call(mlab.inventory, steps, cwd=tmp_path)
    assert init.serverInfo.name == "fleet" and init.serverInfo.version == fleet.__version__
    for t in tools:
        out = t.outputSchema
        assert out and out["type"] == "object" and out["properties"] and out["additionalProperties"] is False, t.name
        jsonschema.Draft202012Validator.check_schema(out)
        assert t.inputSchema["additionalProperties"] is False, t.name
        for name, p in t.inputSchema.get("properties", {}).items():
            assert p.get("description"), f"{t.name}.{name} has no description"
        a = t.annotations
        assert a is not None and None not in (a.readOnlyHint, a.destructiveHint, a.idempotentHint, a.openWorldHint), t.name
        assert t.description and t.title
    by = {t.name: t for t in tools}

    def enum(tool, arg):
        p = by[tool].inputSchema["properties"][arg]
        return next((x["enum"] for x in p.get("anyOf", [p]) if "enum" in x), None)
    from fleet.agent.asks import POLICY_REPLY
    from fleet.safety.gate import MODES
    assert enum("fanout", "mode") == list(MODES)
    assert enum("dispatch", "on_permission") == enum("wait", "on_permission") == list(POLICY_REPLY)
    assert by["fanout"].inputSchema["required"] == ["command", "selector"]
    assert by["teardown"].inputSchema["required"] == ["selector"]
    assert by["hosts"].annotations.readOnlyHint and not by["fanout"].annotations.readOnlyHint
    assert by["fanout"].annotations.destructiveHint and by["teardown"].annotations.destructiveHint
    outcomes = by["fanout"].outputSchema["$defs"]["FanoutOutcome"]["enum"]
    assert outcomes == ["SUCCESS", "FAILURE", "TIMEOUT", "ABORTED", "PREFLIGHT_FAILED"]


def test_unknown_arguments_are_errors_and_fanout_never_defaults_to_all_hosts(mlab, tmp_path):
    ran = tmp_path / "ran"

    async def steps(s):
        return [await s.call_tool("fanout", {"hosts": "@odd", "command": f"touch {ran}"}),
                await s.call_tool("fanout", {"command": f"touch {ran}"}),
                await s.call_tool("sessions", {"selector": "all", "verbose": True})]
    wrong, none, extra = call(mlab.inventory, steps, cwd=tmp_path)
    assert "unknown argument 'hosts'" in error(wrong) and "write selector instead" in error(wrong)
    assert "argument 'selector' is required" in error(none)
    assert "unknown argument 'verbose'" in error(extra) and "sessions takes: selector" in error(extra)
    assert not ran.exists()  # nothing ran anywhere


def test_argument_errors_are_one_line_naming_the_argument(mlab, tmp_path):
    async def steps(s):
        return [await s.call_tool("fanout", {"command": "true", "selector": "all", "timeout": "soon"}),
                await s.call_tool("fanout", {"command": "true", "selector": "all", "mode": "yolo"}),
                await s.call_tool("dispatch", {"repo": "demo", "task": "x", "on_permission": "maybe"}),
                await s.call_tool("audit_tail", {"lines": 0}),
                await s.call_tool("fanout", {"command": "", "selector": "all"}),
                await s.call_tool("nosuchtool", {})]
    timeout, mode, perm, lines, empty, tool = [error(r) for r in call(mlab.inventory, steps, cwd=tmp_path)]
    assert timeout.startswith('fanout: argument timeout="soon": write a number of at least 0')
    assert 'argument mode="yolo": write one of off, canary, enforced' in mode
    assert 'argument on_permission="maybe": write one of ask, allow, deny' in perm
    assert "argument lines=0: write a whole number of at least 1" in lines
    assert 'argument command="": write text' in empty
    assert "unknown tool 'nosuchtool'" in tool


def test_errors_are_one_line_tool_errors(mlab, tmp_path):
    async def steps(s):
        return await s.call_tool("fanout", {"command": "true", "selector": "nosuchhost"})
    res = call(mlab.inventory, steps, cwd=tmp_path)
    assert "unknown host 'nosuchhost'" in error(res)


def test_every_reading_tool_gives_its_declared_structure(mlab, tmp_path):
    async def steps(s):
        return {name: data(await s.call_tool(name, args)) for name, args in [
            ("settings", {}), ("hosts", {"selector": "@odd"}), ("preflight", {"selector": "lab01", "deep": True}),
            ("sessions", {}), ("status", {}), ("audit_tail", {"lines": 3})]}
    out = call(mlab.inventory, steps, cwd=tmp_path)
    assert out["settings"]["settings"]["mode"] == "canary"
    assert [h["name"] for h in out["hosts"]["hosts"]] == ["lab01"]
    assert out["preflight"]["results"][0]["opencode"].startswith("ok")
    assert [s["host"] for s in out["status"]["servers"]] == ["lab01"] and out["status"]["servers"][0]["healthy"]
    assert 1 <= len(out["audit_tail"]["events"]) <= 3


def test_artifacts_never_land_in_the_clients_working_directory(mlab, tmp_path, monkeypatch):
    """OpenCode starts a local MCP server in its project: a relative artifacts_dir (the
    default) goes under fleet's state directory, and the result names it absolutely."""
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "invoke.yaml").write_text("fleet:\n  mode: canary\n")
    monkeypatch.delenv("INVOKE_FLEET_ARTIFACTS_DIR")

    async def steps(s):
        return (data(await s.call_tool("fanout", {"command": "true", "selector": "lab01"})),
                data(await s.call_tool("settings", {})))
    fan, st = call(mlab.inventory, steps, cwd=proj)
    state = Path(os.environ["HOME"]) / ".local" / "state" / "fleet" / "artifacts"
    assert Path(fan["artifacts_dir"]).is_absolute() and Path(fan["artifacts_dir"]).parent == state
    assert (Path(fan["artifacts_dir"]) / "summary.json").exists()
    assert st["settings"]["artifacts_dir"] == str(state)
    assert sorted(p.name for p in proj.iterdir()) == ["invoke.yaml"]


def test_stderr_is_quiet_unless_asked(mlab, tmp_path):
    async def steps(s):
        await s.list_tools()
        data(await s.call_tool("hosts", {}))
    quiet, loud = tmp_path / "quiet.log", tmp_path / "loud.log"
    with quiet.open("w") as f:
        call(mlab.inventory, steps, cwd=tmp_path, errlog=f)
    with loud.open("w") as f:
        call(mlab.inventory, steps, cwd=tmp_path, errlog=f, env={"FLEET_MCP_LOG": "info"})
    assert quiet.read_text() == ""
    assert "CallToolRequest" in loud.read_text()


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
    assert "declined" in error(res)
    assert not [e for e in journal() if e["operation"] in ("token_used", "gated_action_run")]


def test_client_without_elicitation_gets_the_plan_not_the_token(mlab, tmp_path):
    res = _gated(mlab, tmp_path, None)
    text = res.content[0].text
    assert res.isError and "operation: teardown" in text and "fleet command" in text
    assert not TOKEN_RE.search(text)


def test_the_plan_a_person_confirms_cannot_be_forged(mlab, tmp_path, monkeypatch):
    """A command written by the model is one escaped line of the plan: no newline, carriage
    return, terminal escape or bidi mark from it reaches the person's screen."""
    ran = tmp_path / "ran"
    forged = f"touch {ran}\nhosts:     nobody (0)\r\x1b[2K\u202eok\u2066"
    asked = []

    async def decline(ctx, params):
        asked.append(params.message)
        return types.ElicitResult(action="decline")

    async def steps(s):
        return await s.call_tool("fanout", {"command": forged, "selector": "lab01"})
    monkeypatch.setenv("INVOKE_FLEET_GATED", "fanout")
    res = call(mlab.inventory, steps, elicit=decline, cwd=tmp_path)
    assert res.isError and "declined" in res.content[0].text and not ran.exists()
    msg = asked[0]
    assert all(c.isprintable() for c in msg.replace("\n", ""))
    lines = msg.split("\n")
    assert [ln for ln in lines if ln.startswith("hosts:")] == ["hosts:     lab01 (1)"]
    (cmd,) = [ln for ln in lines if ln.startswith("command:")]
    assert "\\nhosts:     nobody (0)\\r\\x1b[2K\\u202eok\\u2066" in cmd


def test_long_calls_send_a_heartbeat(mlab, tmp_path):
    """Clients that reset their timeout on progress (OpenCode, the TypeScript SDK, the
    Inspector) must never time out a long call: progress comes at least every heartbeat."""
    seen = []

    async def steps(s):
        async def progress(p, total, message):
            seen.append((time.monotonic(), p, total, message))
        t0 = time.monotonic()
        out = data(await s.call_tool("fanout", {"command": "sleep 3", "selector": "lab01"},
                                     progress_callback=progress))
        return t0, time.monotonic(), out
    t0, t1, out = call(mlab.inventory, steps, cwd=tmp_path, env={"FLEET_MCP_HEARTBEAT": "0.5"})
    times = [t0] + [x[0] for x in seen] + [t1]
    assert max(b - a for a, b in zip(times[:-1], times[1:], strict=True)) < 2.0, seen
    values = [x[1] for x in seen]
    assert values == sorted(set(values)) and values[-1] == 1 and values[0] < 1  # only grows; the step last
    assert all(x[2] == 1 for x in seen)
    assert any("fanout: still running (0 of 1 done" in x[3] for x in seen)
    assert out["results"][0]["outcome"] == "SUCCESS"


def test_cancel_stops_the_run_as_ctrl_c_and_the_server_serves_on(mlab, tmp_path):
    """notifications/cancelled during a fanout: the remote command is killed, the cancel is
    the call's one answer, the next call on the same session works."""
    m = _marker()
    log = tmp_path / "server.log"

    async def steps(s):
        await s.call_tool("hosts", {"selector": "lab01"})  # the schemas are read: the next id is the fanout's
        got: dict = {}

        async def fan():
            try:
                got["result"] = await s.call_tool("fanout", {"command": f"sleep {m}; true", "selector": "lab01"})
            except McpError as exc:
                got["error"] = exc.error.message
        async with anyio.create_task_group() as tg:
            rid = s._request_id
            tg.start_soon(fan)
            assert await anyio.to_thread.run_sync(lambda: wait_for(lambda: running(f"^sleep {m}"), 20, 0.1))
            t0 = time.monotonic()
            await s.send_notification(types.ClientNotification(types.CancelledNotification(
                params=types.CancelledNotificationParams(requestId=rid, reason="the person pressed stop"))))
        answered = time.monotonic() - t0
        gone = await anyio.to_thread.run_sync(no_process, f"^sleep {m}")
        after = await s.call_tool("hosts", {"selector": "lab01"})
        return got, answered, gone, after
    with log.open("w") as f:
        got, answered, gone, after = call(mlab.inventory, steps, cwd=tmp_path, errlog=f)
    assert gone, "the remote command still runs after the cancel"
    assert got == {"error": "Request cancelled"} and answered < 2
    assert not after.isError and data(after)["hosts"][0]["name"] == "lab01"
    assert "Traceback" not in log.read_text() and "already responded" not in log.read_text()
    ops = [(e["operation"], e["detail"].get("tool")) for e in journal() if e["operation"].startswith("mcp_")]
    assert ("mcp_cancelled", "fanout") in ops


def test_dispatch_follows_progress_to_the_end(mlab, tmp_path):
    async def steps(s):
        seen = []

        async def progress(p, total, message):
            seen.append(message)
        out = data(await s.call_tool("dispatch", {"repo": "demo", "task": "say hi", "selector": "lab01"},
                                     progress_callback=progress))
        return out, [m for m in seen if "still running" not in m]
    out, seen = call(mlab.inventory, steps, cwd=tmp_path)
    r = out["results"][0]
    assert r["outcome"] == "SUCCESS" and r["answer"] == "DONE: say hi"
    assert any("session ses" in m for m in seen) and any(m and "busy" in m for m in seen)
    assert "lab01: 15 tok $0.0000" in seen and seen[-1] == "lab01: SUCCESS"  # usage so far, then the end




def test_second_fanout_makes_no_new_ssh_connection_and_a_dead_host_fails_cleanly(tmp_path):
    with running_lab(tmp_path / "lab", 2) as own:  # its sshd is killed: a lab of its own
        _second_fanout_and_a_dead_host(own, tmp_path)


def _second_fanout_and_a_dead_host(mlab, tmp_path):
    import signal
    import subprocess
    import time as _t

    counts = []

    async def steps(s):
        counts.append(logins(mlab))
        first = data(await s.call_tool("fanout", {"command": "echo one", "selector": "all"}))
        _t.sleep(0.5)
        counts.append(logins(mlab))
        second = data(await s.call_tool("fanout", {"command": "echo two", "selector": "all"}))
        _t.sleep(0.5)
        counts.append(logins(mlab))
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


def test_result_schemas_keep_every_key_the_result_types_give():
    """The schemas follow the result types' to_dict: a key a result type gains and the schema
    lacks would be dropped from structuredContent (the text would still have it)."""
    from fleet import schemas as S
    from fleet.cli.render import host_dict
    from fleet.inventory.model import Host, OpenCodeEndpoint
    from fleet.results import (
        CheckResult,
        DispatchResult,
        DispatchRun,
        FanoutOutcome,
        FanoutResult,
        FanoutRun,
        PreflightResult,
        PreflightStatus,
        SessionRow,
    )
    from fleet.settings import Settings

    def same(model, d):
        assert model.model_validate(d).model_dump(mode="json") == json.loads(json.dumps(d))

    pf = PreflightResult("h", "u", "ssh-key", PreflightStatus.OK, (CheckResult("tcp", True, 1),), opencode="ok 1")
    same(S.PreflightResultSet, {"results": [pf.to_dict()], "ok": True})
    run = FanoutRun("r1", "true", [FanoutResult("h", FanoutOutcome.SUCCESS, "true", "u", 0, "out", "", 1, 2,
                                                preflight=pf, collected=("a",))], artifacts_dir="/x", mode="off")
    same(S.FanoutRunResult, run.to_dict())
    d = DispatchRun("d1", "task", "repo", "off", [DispatchResult(
        "h", FanoutOutcome.SUCCESS, "ses_1", tokens={"input": 1, "cache": {"read": 0, "write": 0}, "total": 1},
        files=({"file": "a", "additions": 1, "deletions": 0, "status": "modified"},),
        todo=({"content": "x", "status": "done"},))])
    same(S.DispatchRunResult, d.to_dict())
    row = SessionRow("h", "ses_1", "t", "idle", 1, "/d", True)
    same(S.SessionsResult, {"sessions": [row.to_dict()], "errors": []})
    host = Host("h", "127.0.0.1", opencode=OpenCodeEndpoint("http://x"), repos={"a": "/a"})
    same(S.HostsResult, {"hosts": [host_dict(host)]})
    from dataclasses import asdict
    same(S.SettingsResult, {"settings": asdict(Settings())})

"""`fleet mcp` attaches to a running `fleet serve`: every MCP server an MCP client starts runs its
fanouts over the service's warm connections (one set of connections per user), and a cancelled
call still stops the remote command as Ctrl-C does."""
from __future__ import annotations

import json
import random
import time

from conftest import logins, running, wait_for, write_inventory
from test_mcp import call, data
from test_mcp_clients import Raw
from test_serve import fleet, service
from test_ssh_world import no_process


def test_two_mcp_servers_share_the_services_connections(lab, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", lab, names=["lab01", "lab02"])

    async def one_fanout(s):
        return data(await s.call_tool("fanout", {"command": "echo via-$((6*7))", "selector": "all"}))

    with service():
        before = logins(lab)
        first = call(inv, one_fanout, cwd=tmp_path)  # one MCP server (as one client starts it)...
        after_first = logins(lab)
        second = call(inv, one_fanout, cwd=tmp_path)  # ...and another, a new process
        after_second = logins(lab)
        st = json.loads(fleet("serve", "status", "--json").stdout)
    for run in (first, second):
        assert [(r["host"], r["outcome"], r["stdout"]) for r in run["results"]] == [
            ("lab01", "SUCCESS", "via-42\n"), ("lab02", "SUCCESS", "via-42\n")]
    assert after_first - before == 2  # the service dialled each host once
    assert after_second == after_first  # the second MCP server's fanout: no new login, the service's connections
    assert st["calls"] >= 2 and st["warm"] >= 2


def test_a_cancelled_mcp_fanout_through_the_service_kills_the_remote_command(lab, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", lab, names=["lab01"])
    m = f"7.{random.randint(10**8, 10**9)}"
    done = tmp_path / "finished"
    with service():
        warm = fleet("fanout", "--inventory", str(inv), "--all", "--no-canary", "true")
        assert warm.returncode == 0, warm.stderr
        kept = logins(lab)
        raw = Raw(inv, tmp_path, tmp_path / "stderr.log", env={"FLEET_MCP_HEARTBEAT": "0.5"})
        try:
            raw.send({"id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}})
            raw.answer(1)
            raw.send({"method": "notifications/initialized"})
            raw.send({"id": 2, "method": "tools/call", "params": {
                "name": "fanout", "arguments": {"command": f"sleep {m}; touch {done}", "selector": "lab01"}}})
            assert wait_for(lambda: running(f"^sleep {m}"), 20, 0.1)
            ran_warm = logins(lab) == kept  # the service's kept connection ran it: no new login
            time.sleep(0.5)
            t_cancel = time.monotonic()
            raw.send({"method": "notifications/cancelled", "params": {"requestId": 2, "reason": "stop"}})
            gone = no_process(f"^sleep {m}", wait=3.0)  # it would end by itself ~6 s from now
            raw.collect(until=t_cancel + 4)
            raw.send({"id": 3, "method": "ping"})
            assert raw.answer(3)["result"] == {}
        finally:
            raw.close()
    assert ran_warm
    assert gone, "the remote command still runs after the cancel"
    assert not done.exists()
    answers = [x for _, x in raw.seen if x.get("id") == 2 and ("result" in x or "error" in x)]
    assert len(answers) == 1 and answers[0]["error"]["message"] == "Request cancelled", answers

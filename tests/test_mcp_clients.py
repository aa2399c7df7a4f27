"""`fleet mcp` driven by clients that are not fleet's: raw JSON-RPC over stdio (what every
client sends, byte for byte) and the MCP Inspector's CLI (the TypeScript SDK's client, which
validates structuredContent against the tool's outputSchema).

The Inspector 2.x needs Node >= 22.19; it is installed with npm under .tools/mcp-inspector
(node@22 from the npm registry, beside @modelcontextprotocol/inspector), by ``make setup`` or,
failing that, by the fixture here. Once installed it runs offline."""
from __future__ import annotations

import json
import os
import queue
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import jsonschema
import pytest
from conftest import ROOT, fresh_agent_lab, running, wait_for
from test_ssh_world import no_process

import fleet

FLEET = str(Path(sys.executable).parent / "fleet")
INSPECTOR_DIR = ROOT / ".tools" / "mcp-inspector"
INSPECTOR_PACKAGES = ("node@22.23.3", "@modelcontextprotocol/inspector@2.12.0")


@pytest.fixture(scope="module")
def mlab(agent_lab):
    return fresh_agent_lab(agent_lab, 2, agents=1)




# ------------------------------------------------------------------------ raw JSON-RPC

class Raw:
    """`fleet mcp` as a child process, spoken to in JSON-RPC lines on stdin/stdout."""

    def __init__(self, inventory: Path, cwd: Path, errlog: Path, env: dict | None = None) -> None:
        self.err = errlog.open("w")
        self.p = subprocess.Popen([FLEET, "mcp", "--inventory", str(inventory)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=self.err, cwd=str(cwd),
                                  env={**os.environ, **(env or {})})
        self.q: queue.Queue = queue.Queue()
        self.seen: list[tuple[float, dict]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.p.stdout:
            self.q.put((time.monotonic(), json.loads(line)))
        self.q.put(None)

    def send(self, msg: dict) -> None:
        self.p.stdin.write((json.dumps({"jsonrpc": "2.0", **msg}) + "\n").encode())
        self.p.stdin.flush()

    def collect(self, until: float) -> None:
        while (left := until - time.monotonic()) > 0:
            try:
                item = self.q.get(timeout=left)
            except queue.Empty:
                return
            if item is None:
                return
            self.seen.append(item)

    def answer(self, rid: int, wait: float = 30) -> dict:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            for _, m in self.seen:
                if m.get("id") == rid and ("result" in m or "error" in m):
                    return m
            self.collect(min(deadline, time.monotonic() + 0.2))
        raise AssertionError(f"no answer to request {rid}: {self.seen[-3:]}")

    def close(self) -> int:
        self.p.stdin.close()
        try:
            return self.p.wait(15)
        finally:
            if self.p.poll() is None:
                self.p.kill()
            self.err.close()


def test_cancel_over_raw_json_rpc_stops_the_run_and_answers_once(mlab, tmp_path):
    """A 6 s fanout cancelled after a second: the remote command is killed as Ctrl-C kills it,
    the run ends ABORTED in its summary, the request gets exactly one response (before: two,
    an AssertionError, and `fleet mcp` exited), nothing more about it is sent, and the server
    answers the next requests."""
    m = f"6.{random.randint(10**8, 10**9)}"
    done = tmp_path / "finished"
    raw = Raw(mlab.inventory, tmp_path, tmp_path / "stderr.log", env={"FLEET_MCP_HEARTBEAT": "0.5"})
    try:
        raw.send({"id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}})
        init = raw.answer(1)["result"]
        raw.send({"method": "notifications/initialized"})
        raw.send({"id": 2, "method": "tools/call", "params": {
            "name": "fanout", "arguments": {"command": f"sleep {m}; touch {done}", "selector": "lab01"},
            "_meta": {"progressToken": "fan"}}})
        assert wait_for(lambda: running(f"^sleep {m}"), 20, 0.1)
        time.sleep(1.0)
        t_cancel = time.monotonic()
        raw.send({"method": "notifications/cancelled", "params": {"requestId": 2, "reason": "stop"}})
        gone = no_process(f"^sleep {m}", wait=3.0)  # the sleep would end by itself ~5 s from now
        raw.collect(until=t_cancel + 8)  # past the sleep's own end: a late second answer would be here
        assert raw.p.poll() is None, "fleet mcp exited after the cancel"
        raw.send({"id": 3, "method": "ping"})
        assert raw.answer(3)["result"] == {}
        raw.send({"id": 4, "method": "tools/call", "params": {"name": "hosts", "arguments": {"selector": "lab02"}}})
        after = raw.answer(4)["result"]
    finally:
        rc = raw.close()
    assert gone, "the remote command still runs after the cancel"
    assert not done.exists()
    answers = [(t, x) for t, x in raw.seen if x.get("id") == 2 and ("result" in x or "error" in x)]
    assert len(answers) == 1 and answers[0][1]["error"]["message"] == "Request cancelled", answers
    progress = [(t, x) for t, x in raw.seen if x.get("method") == "notifications/progress"
                and x["params"]["progressToken"] == "fan"]
    assert progress and all(t <= answers[0][0] for t, _ in progress)  # heartbeats while it ran, none after
    assert after["structuredContent"]["hosts"][0]["name"] == "lab02"
    assert rc == 0
    assert init["serverInfo"] == {"name": "fleet", "version": fleet.__version__}
    log = (tmp_path / "stderr.log").read_text()
    assert "Traceback" not in log and "already responded" not in log, log
    summary = json.loads((Path(os.environ["INVOKE_FLEET_ARTIFACTS_DIR"]) / "latest" / "summary.json").read_text())
    assert summary["command"] == f"sleep {m}; touch {done}" and summary["interrupted"] is True
    assert summary["results"][0]["outcome"] == "ABORTED" and "killed" in summary["results"][0]["error"]


# ------------------------------------------------------------------------ the MCP Inspector

def _node_ok(node: Path) -> bool:
    try:
        v = subprocess.run([str(node), "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return False
    major, minor = (int(x) for x in v.lstrip("v").split(".")[:2])
    return (major, minor) >= (22, 19)


@pytest.fixture(scope="module")
def inspector() -> Path:
    """The Inspector's bin directory (its node first on PATH), installed once if missing."""
    bin_dir = INSPECTOR_DIR / "node_modules" / ".bin"
    pkg = INSPECTOR_DIR / "node_modules" / "@modelcontextprotocol" / "inspector" / "package.json"
    pinned = INSPECTOR_PACKAGES[1].rsplit("@", 1)[1]
    if not (pkg.exists() and json.loads(pkg.read_text()).get("version") == pinned and _node_ok(bin_dir / "node")):
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("the MCP Inspector is not installed (.tools/mcp-inspector) and there is no npm to install it")
        INSPECTOR_DIR.mkdir(parents=True, exist_ok=True)
        r = subprocess.run([npm, "install", "--prefix", str(INSPECTOR_DIR), "--no-audit", "--no-fund", "--silent",
                            *INSPECTOR_PACKAGES], capture_output=True, text=True, timeout=900)
        if r.returncode or not _node_ok(bin_dir / "node"):
            pytest.skip(f"the MCP Inspector could not be installed: npm install {' '.join(INSPECTOR_PACKAGES)} "
                        f"needs the npm registry: {(r.stderr or r.stdout)[-300:]}")
    return bin_dir


def inspect(bin_dir: Path, *args: str, inventory: Path, cwd: Path) -> tuple[int, dict, str]:
    """``inspector --cli --format json ARGS -- fleet mcp``: (exit code, its JSON, its stderr)."""
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "MCP_INSPECTOR_SECRET_STORE": "memory"}
    # the Inspector starts a stdio server with a few variables of its own: hand fleet's on
    passed = [x for k, v in os.environ.items() if k.startswith(("INVOKE_FLEET_", "FLEET_")) for x in ("-e", f"{k}={v}")]
    r = subprocess.run([str(bin_dir / "inspector"), "--cli", "--format", "json", *passed, *args, "--",
                        FLEET, "mcp", "--inventory", str(inventory)], cwd=str(cwd), env=env, capture_output=True,
                       text=True, timeout=120, stdin=subprocess.DEVNULL)
    out = r.stdout.strip()
    return r.returncode, (json.loads(out.splitlines()[0]) if out else {}), r.stderr


def test_inspector_sees_fleet_its_schemas_and_hints(mlab, tmp_path, inspector):
    rc, init, err = inspect(inspector, "--method", "initialize", inventory=mlab.inventory, cwd=tmp_path)
    assert rc == 0, err
    assert init["result"]["serverInfo"] == {"name": "fleet", "version": fleet.__version__}
    rc, listed, err = inspect(inspector, "--method", "tools/list", "--strict", inventory=mlab.inventory, cwd=tmp_path)
    assert rc == 0, err  # --strict: exit 6 on an error-severity schema portability problem
    tools = listed["result"]["tools"]
    assert len(tools) >= 14
    for t in tools:
        assert t["outputSchema"]["type"] == "object" and t["outputSchema"]["additionalProperties"] is False, t["name"]
        assert t["inputSchema"]["additionalProperties"] is False, t["name"]
        assert set(t["annotations"]) >= {"readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint"}


def test_inspector_calls_tools_and_their_structure_validates(mlab, tmp_path, inspector):
    """The Inspector (the TypeScript SDK's client) validates structuredContent against the
    outputSchema itself, and fails the call when it does not fit."""
    rc, listed, err = inspect(inspector, "--method", "tools/list", inventory=mlab.inventory, cwd=tmp_path)
    schemas = {t["name"]: t["outputSchema"] for t in listed["result"]["tools"]}
    for name, args in [("fanout", {"command": "echo hi", "selector": "@odd"}), ("preflight", {"selector": "all"}),
                       ("settings", {}), ("sessions", {"selector": "@agents"}), ("status", {})]:
        rc, out, err = inspect(inspector, "--method", "tools/call", "--tool-name", name,
                               "--tool-args-json", json.dumps(args), inventory=mlab.inventory, cwd=tmp_path)
        assert rc == 0, (name, out, err)
        res = out["result"]
        assert not res.get("isError") and "structuredContent" in res, (name, res)
        jsonschema.validate(res["structuredContent"], schemas[name])
        assert json.loads(res["content"][0]["text"]) == res["structuredContent"]
        if name == "fanout":
            assert [(r["host"], r["stdout"]) for r in res["structuredContent"]["results"]] == [("lab01", "hi\n")]


def test_inspector_gets_one_line_errors_for_wrong_arguments(mlab, tmp_path, inspector):
    ran = tmp_path / "ran"
    rc, out, err = inspect(inspector, "--method", "tools/call", "--tool-name", "fanout", "--tool-args-json",
                           json.dumps({"hosts": "@odd", "command": f"touch {ran}"}), inventory=mlab.inventory,
                           cwd=tmp_path)
    res = out["result"]
    assert res["isError"] is True and rc != 0
    (text,) = [c["text"] for c in res["content"]]
    assert text.startswith("fanout: unknown argument 'hosts'; write selector instead") and "\n" not in text
    assert not ran.exists()  # before: ran on every host of the inventory

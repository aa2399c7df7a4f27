"""`fleet sessions` and `fleet watch` take their rows from a running `fleet serve`'s live board
(real `opencode serve`, real `fleet serve`, the real CLI).

The proof that the rows come from the service and not from the servers: the inventory names
each server's password by an environment variable (``password_env``) that only the service's
environment holds. The CLI, without it, cannot read any server (FLEET_NO_SERVICE=1 shows that:
exit 1, no rows), so whatever it lists came from the service's board."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import fresh_agent_lab, serve_process, wait_for

FLEET = str(Path(sys.executable).parent / "fleet")


def _env(home: Path, **extra: str) -> dict[str, str]:
    """An environment of this module's own (HOME, state), without the suite's per-test variables."""
    drop = ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME", "SSH_AUTH_SOCK", "FLEET_INVENTORY", "SLACK_BOT_TOKEN")
    env = {k: v for k, v in os.environ.items()
           if k not in drop and not k.startswith("INVOKE_FLEET_") and not k.startswith("FLEET_BOARD_PW_")}
    env.update(HOME=str(home), INVOKE_FLEET_JOURNAL=str(home / "state" / "journal.jsonl"),
               INVOKE_FLEET_TOKEN_DIR=str(home / "tokens"), INVOKE_FLEET_ARTIFACTS_DIR=str(home / "artifacts"))
    env.update(extra)
    return env


class World:
    def __init__(self, lab, d: Path) -> None:
        self.lab = lab
        text = Path(lab.inventory).read_text()
        base = Path(lab.inventory).parent
        self.pw: dict[str, str] = {}
        for h, pwf in re.findall(r"^  (\w+):\n(?:    .*\n)*?    opencode: \{url: '[^']+', password_file: (\S+)\}",
                                 text, re.M):
            var = f"FLEET_BOARD_PW_{h.upper()}"
            self.pw[var] = Path(pwf).read_text().strip()
            text = text.replace(f"password_file: {pwf}", f"password_env: {var}")
        assert len(self.pw) == 2, text
        for key in ("known_hosts", "ssh_config"):
            text = text.replace(f"{key}: {key}\n", f"{key}: {base / key}\n")
        self.inv = d / "inventory.yaml"
        self.inv.write_text(text)
        self.home = d / "home"
        self.home.mkdir()
        self.env = _env(self.home)  # the CLI's: no server password
        self.svc_env = _env(self.home, **self.pw)  # the service's

    def fleet(self, *args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([FLEET, *args], env={**self.env, **(env or {})}, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def sessions(self, *extra: str, env: dict | None = None) -> tuple[int, dict]:
        p = self.fleet("sessions", "--inventory", str(self.inv), "--json", *extra, env=env)
        return p.returncode, json.loads(p.stdout) if p.stdout.strip() else {"stderr": p.stderr}

    def client(self, host: str):
        from fleet.agent.client import OpenCodeClient
        from fleet.inventory import load_inventory
        h = load_inventory(self.inv).host(host)
        return OpenCodeClient(h, h.repo_path("demo"))


def service(w: World):
    return serve_process(w.home / "state" / "run" / "fleet.sock", "--inventory", str(w.inv), env=w.svc_env)


@pytest.fixture(scope="module")
def world(agent_lab, tmp_path_factory):
    lab = fresh_agent_lab(agent_lab, 2, agents=2)
    w = World(lab, tmp_path_factory.mktemp("board"))
    old = {k: os.environ.get(k) for k in w.pw}
    os.environ.update(w.pw)  # this process's own clients (to make sessions on the servers)
    try:
        with service(w) as proc:
            w.proc = proc
            yield w
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_sessions_lists_a_no_wait_dispatch_and_its_states_from_the_service(world):
    # the reference, without the service: this CLI cannot read the servers (no password)
    code, doc = world.sessions(env={"FLEET_NO_SERVICE": "1"})
    assert code == 1 and doc["sessions"] == [] and doc["source"] == "servers"
    assert all("FLEET_BOARD_PW_" in e for e in doc["errors"]) and len(doc["errors"]) == 2, doc
    p = world.fleet("dispatch", "--inventory", str(world.inv), "--host", "lab01", "--repo", "demo", "--task",
                    "please [bash: sleep 4; echo board-seen]", "--no-wait", "--json", env=world.pw)
    assert p.returncode == 0, p.stderr
    sent = json.loads(p.stdout)
    did, sid = sent["dispatch_id"], sent["results"][0]["session_id"]

    def row(state: str):
        code, doc = world.sessions()
        assert code == 0 and doc["source"] == "service" and doc["errors"] == [], doc
        return next((r for r in doc["sessions"] if r["session_id"] == sid and r["state"] == state), None)
    busy = wait_for(lambda: row("busy"), 20, 0.1)
    assert busy is not None, world.sessions()
    assert busy["host"] == "lab01" and busy["repo"] == "demo" and busy["dispatch_id"] == did and busy["fleet"]
    assert busy["machine"] and busy["title"].startswith(f"fleet {did}") and 0 <= busy["age_s"] < 60
    idle = wait_for(lambda: row("idle"), 30, 0.2)
    assert idle is not None and idle["tokens"] and idle["tokens"] > 0, idle
    table = world.fleet("sessions", "--inventory", str(world.inv), "--hosts", "lab01")
    assert table.returncode == 0 and re.search(rf"lab01 +demo +{sid} +idle ", table.stdout), table.stdout
    # a session deleted on its server leaves the board
    with world.client("lab01") as oc:
        oc.delete_session(sid)
    assert wait_for(lambda: sid not in [r["session_id"] for r in world.sessions()[1]["sessions"]], 10, 0.2)


def test_watch_json_prints_the_board_and_its_changes_from_the_service(world):
    with world.client("lab02") as oc:
        sid = oc.create_session("watched through the service")["id"]
    w = subprocess.Popen([FLEET, "watch", "--inventory", str(world.inv), "--json", "--duration", "15"],
                         env=world.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         stdin=subprocess.DEVNULL)
    lines: list[dict] = []
    try:
        import threading

        def read() -> None:
            assert w.stdout is not None
            for line in w.stdout:
                lines.append(json.loads(line))
        t = threading.Thread(target=read, daemon=True)
        t.start()
        assert wait_for(lambda: any(r["session"] == sid for r in lines), 10, 0.1), lines
        with world.client("lab02") as oc:
            oc.prompt_async(sid, "please [bash: sleep 1; echo watched-live]")
        assert wait_for(lambda: [r["state"] for r in lines if r["session"] == sid][-1:] == ["idle"]
                        and "busy" in [r["state"] for r in lines if r["session"] == sid], 20, 0.1), lines
    finally:
        w.send_signal(signal.SIGINT)
        try:
            _, err = w.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            w.kill()
            _, err = w.communicate()
    assert w.returncode == 0, err
    assert not [r for r in lines if r["state"] == "down"], lines  # the servers were never read from here
    assert {r["title"] for r in lines if r["session"] == sid} == {"watched through the service"}


def test_another_inventory_or_a_changed_one_is_read_from_the_servers(world):
    # the lab's own inventory (password files): not the service's world, so the CLI reads the servers
    code, doc = world.sessions()
    assert code == 0 and doc["source"] == "service"
    p = world.fleet("sessions", "--inventory", str(world.lab.inventory), "--json")
    assert p.returncode == 0, p.stderr
    other = json.loads(p.stdout)
    assert other["source"] == "servers" and other["errors"] == []
    assert {r["session_id"] for r in other["sessions"]} == {r["session_id"] for r in doc["sessions"]}
    # the service's own inventory, changed since its board read it: read here, until the board follows it
    world.inv.write_text(world.inv.read_text() + "# changed\n")
    code, doc = world.sessions(env=world.pw)
    assert code == 0 and doc["source"] == "servers", doc
    assert wait_for(lambda: world.sessions()[1].get("source") == "service", 20, 0.3)


def test_mcp_sessions_read_the_services_board(world):
    """An MCP server started by a client (with no server password, like the CLI here) answers
    ``sessions`` from the running service's board."""
    import anyio
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    with world.client("lab01") as oc:
        sid = oc.create_session("seen over MCP")["id"]

    async def main():
        params = StdioServerParameters(command=FLEET, args=["mcp", "--inventory", str(world.inv)], env=world.env,
                                       cwd=str(world.home))
        async with stdio_client(params) as (r, w), ClientSession(r, w) as s:
            await s.initialize()
            return (await s.call_tool("sessions", {"selector": "all"})).structuredContent
    got = wait_for(lambda: (lambda d: d if sid in {x["session_id"] for x in d["sessions"]} else None)(anyio.run(main)),
                   20, 0.5)
    assert got is not None and not got["errors"], got
    row = next(x for x in got["sessions"] if x["session_id"] == sid)
    assert row["host"] == "lab01" and row["title"] == "seen over MCP"

"""One mind for every face: `fleet`, `inv`, `dx-dispatch`, `fleet mcp` and the Python API read the
same settings from the same sources (user file, a project file in a parent directory, the
environment) and behave the same under them (mode off runs here; a gated fanout is refused)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from conftest import ROOT
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

BIN = Path(sys.executable).parent
INVENTORY = "hosts:\n  far1: {address: 127.0.0.1, port: 9}\n  far2: {address: 127.0.0.1, port: 9}\n"
FACES = ["fleet", "inv", "mcp", "api"]
SOURCES = ["user", "project", "env"]


def place(tmp: Path, source: str, section: dict) -> tuple[Path, dict]:
    """Write the settings where ``source`` says; return (working directory, extra environment)."""
    home = Path(os.environ["HOME"])
    work = tmp / "proj" / "sub" / "dir"  # a project file is found from a subdirectory
    work.mkdir(parents=True)
    (tmp / "proj" / "inventory.yaml").write_text(INVENTORY)
    env = {"FLEET_INVENTORY": str(tmp / "proj" / "inventory.yaml")}
    text = "fleet:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in section.items())
    if source == "user":
        (home / ".config" / "fleet").mkdir(parents=True, exist_ok=True)
        (home / ".config" / "fleet" / "invoke.yaml").write_text(text)
    elif source == "project":
        (tmp / "proj" / "invoke.yaml").write_text(text)
    else:
        for k, v in section.items():
            env[f"INVOKE_FLEET_{k.upper()}"] = ",".join(v) if isinstance(v, list) else str(v)
    return work, env


def cli(face: str, args: list[str], work: Path, env: dict) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "fleet")] if face == "fleet" else [sys.executable, "-m", "invoke", "--search-root", str(ROOT)]
    return subprocess.run(cmd + args, cwd=work, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


def mcp(work: Path, env: dict, tool: str, args: dict) -> tuple[bool, dict | str]:
    async def main():
        params = StdioServerParameters(command=str(BIN / "fleet"), args=["mcp"], env={**os.environ, **env},
                                       cwd=str(work))
        async with stdio_client(params) as (r, w):
            async with ClientSession(r, w) as s:
                await s.initialize()
                res = await s.call_tool(tool, args)
                text = res.content[0].text
                return res.isError, (text if res.isError else json.loads(text))
    return anyio.run(main)


def api(work: Path, env: dict, what: str) -> tuple[int, str]:
    """The Python API in a fresh interpreter (its own cwd and environment, as a script would run)."""
    code = {
        "settings": "from fleet import Fleet; import json, dataclasses; "
                    "print(json.dumps(dataclasses.asdict(Fleet().settings)))",
        "fanout": "from fleet import Fleet, FleetError\n"
                  "try:\n    r = Fleet().fanout('all', 'echo here-$((6*7))')\n"
                  "    print(' '.join(f'{x.host}={x.stdout.strip()}' for x in r.results))\n"
                  "except FleetError as e:\n    print('refused', e.exit_code, str(e).splitlines()[0])\n",
    }[what]
    p = subprocess.run([sys.executable, "-c", code], cwd=work, env={**os.environ, **env}, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.returncode, p.stdout.strip()


def effective(face: str, work: Path, env: dict) -> dict:
    if face in ("fleet", "inv"):
        p = cli(face, ["settings", "--json"], work, env)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)["settings"]
    if face == "mcp":
        err, doc = mcp(work, env, "settings", {})
        assert not err, doc
        return doc["settings"]
    return json.loads(api(work, env, "settings")[1])


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("face", FACES)
def test_every_face_reads_the_same_settings_from_every_source(tmp_path, face, source):
    work, env = place(tmp_path, source, {"mode": "enforced", "gated": ["fanout", "dispatch"], "concurrency": 7})
    st = effective(face, work, env)
    assert (st["mode"], list(st["gated"]), st["concurrency"]) == ("enforced", ["fanout", "dispatch"], 7)


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("face", FACES + ["dx-dispatch"])
def test_mode_off_keeps_everything_on_this_machine_on_every_face(tmp_path, face, source):
    work, env = place(tmp_path, source, {"mode": "off"})
    if face in ("fleet", "inv"):
        p = cli(face, ["fanout", "--all", "--json", "echo here-$((6*7))"], work, env)
        assert p.returncode == 0, p.stderr
        res = json.loads(p.stdout)["results"]
        assert [(r["host"], r["stdout"]) for r in res] == [("local", "here-42\n")]
    elif face == "mcp":
        err, doc = mcp(work, env, "fanout", {"command": "echo here-$((6*7))", "selector": "all"})
        assert not err, doc
        assert [(r["host"], r["stdout"]) for r in doc["results"]] == [("local", "here-42\n")]
    elif face == "api":
        assert api(work, env, "fanout")[1] == "local=here-42"
    else:  # dispatch never runs locally: mode off refuses it before anything is sent
        p = subprocess.run([str(BIN / "dx-dispatch"), "far1", "demo", "hello"], cwd=work, env={**os.environ, **env},
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 3 and "mode off" in p.stderr, p.stderr


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("face", FACES)
def test_a_gated_fanout_is_refused_on_every_face(tmp_path, face, source):
    work, env = place(tmp_path, source, {"gated": ["fanout"]})
    if face in ("fleet", "inv"):
        p = cli(face, ["fanout", "--all", "true"], work, env)
        assert p.returncode == 3 and "is gated" in p.stderr, p.stderr
        assert "Traceback" not in p.stderr
    elif face == "mcp":  # this client cannot ask the person: refused, nothing done, no token shown
        err, text = mcp(work, env, "fanout", {"command": "true", "selector": "all"})
        assert err and "is gated" in text and "--confirm" not in text
    else:
        out = api(work, env, "fanout")[1]
        assert out.startswith("refused 3 'fanout' is gated"), out


@pytest.mark.parametrize("face", ["mcp", "api"])
def test_a_client_cannot_change_the_persons_mode(tmp_path, face):
    work, env = place(tmp_path, "user", {"mode": "enforced"})
    for asked in ("off", "canary"):
        if face == "mcp":
            err, text = mcp(work, env, "fanout", {"command": "id", "selector": "all", "mode": asked})
            assert err and "cannot change it" in text and "nothing was done" in text
        else:
            code = (f"from fleet import Fleet, FleetError\ntry:\n    Fleet().fanout('all', 'id', mode={asked!r})\n"
                    f"except FleetError as e:\n    print(e.exit_code, e)\n")
            p = subprocess.run([sys.executable, "-c", code], cwd=work, env={**os.environ, **env},
                               capture_output=True, text=True, timeout=60)
            assert p.stdout.startswith("3 ") and "cannot change it" in p.stdout, p.stdout + p.stderr
    if face == "mcp":
        err, text = mcp(work, env, "fanout", {"command": "id", "selector": "all", "no_canary": True})
        assert err and "cannot skip it" in text


def test_the_cli_may_still_choose_the_mode_a_person_typed(tmp_path):
    work, env = place(tmp_path, "user", {"mode": "enforced"})
    p = cli("fleet", ["fanout", "--all", "--mode", "off", "--json", "echo typed"], work, env)
    assert p.returncode == 0 and json.loads(p.stdout)["results"][0]["host"] == "local", p.stderr


def test_the_older_user_file_is_still_read_and_said_once(tmp_path):
    home = Path(os.environ["HOME"])
    (home / ".config" / "fleet").mkdir(parents=True)
    (home / ".config" / "fleet" / "config.yaml").write_text("fleet:\n  concurrency: 5\n")
    work, env = place(tmp_path, "env", {"mode": "canary"})
    p = cli("fleet", ["settings", "--json"], work, env)
    assert p.returncode == 0 and json.loads(p.stdout)["settings"]["concurrency"] == 5
    assert p.stderr.count("config.yaml") == 1 and "invoke.yaml" in p.stderr


def test_the_seeds_fanout_ssh_logs_as_the_cli_does(lab, tmp_path, monkeypatch):
    import logging

    from conftest import write_inventory

    from fleet import fanout_ssh, load_inventory
    inv = load_inventory(write_inventory(tmp_path / "inv.yaml", lab, names=["lab01"]))
    monkeypatch.setenv("INVOKE_FLEET_ARTIFACTS_DIR", str(tmp_path / "art"))
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())
    log = logging.getLogger("fleet-test-seed")
    log.addHandler(Keep())
    log.setLevel(logging.INFO)
    r = fanout_ssh("lab01", "echo hi", inventory=inv, logger=log)
    assert r.stdout == "hi\n"
    assert any(x.startswith("success host=lab01 ") and 'command="echo hi"' in x for x in seen), seen
    logs = list((tmp_path / "art").glob("*/fanout.log"))
    assert logs and "success host=lab01" in logs[0].read_text()

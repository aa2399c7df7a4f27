"""Lab agents: one real ``opencode serve`` per lab host on loopback, with a stand-in model.

Each agent runs, as on a user's machine, in its lab host's home directory (``hosts/<name>``:
not a git project; the repos are under ``~/repos``, several of them, so sessions span
projects), which is also its HOME (state, config); a random password in a 0600 file, and a
global config pointing at the lab's fake model server (whose markers, ``[task: ...]`` among
them, make the real server run real tools and real subagents). The opencode
binary comes from ``.tools/`` (``make setup`` installs the pinned npm package
``opencode-ai``), ``$FLEET_OPENCODE_BIN``, or PATH.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from fleet.errors import AgentError  # noqa: F401 - re-exported where they were defined
from fleet.lab.base import Lab, free_ports, seed_repos

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def find_opencode() -> str:
    """The opencode binary, or an AgentError saying how to install it."""
    env = os.environ.get("FLEET_OPENCODE_BIN")
    cands = [env] if env else []
    cands += [str(PROJECT_ROOT / ".tools/node_modules/opencode-linux-x64/bin/opencode"),
              str(PROJECT_ROOT / ".tools/node_modules/.bin/opencode")]
    for c in cands:
        if c and os.access(c, os.X_OK):
            return c
    found = shutil.which("opencode")
    if found:
        return found
    raise AgentError("opencode is not installed: run 'make setup' (installs the pinned npm package "
                     "opencode-ai into .tools/) or set FLEET_OPENCODE_BIN")


def _config(model_port: int) -> dict[str, Any]:
    return {"$schema": "https://opencode.ai/config.json", "autoupdate": False, "share": "disabled",
            "model": "fake/fake-model", "small_model": "fake/fake-model",
            # bash commands that start with "ask" need a person's approval: a real permission.asked
            "permission": {"bash": {"*": "allow", "echo ask*": "ask"}, "edit": "allow"},
            "provider": {"fake": {"npm": "@ai-sdk/openai-compatible", "name": "Fake LLM",
                                  "options": {"baseURL": f"http://127.0.0.1:{model_port}/v1", "apiKey": "dummy"},
                                  "models": {"fake-model": {"name": "Fake Model"}}}}}


def _wait_health(url: str, password: str, deadline: float, proc: subprocess.Popen, log: Path) -> str:
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AgentError(f"opencode serve exited with {proc.returncode}: see {log}")
        try:
            # Short timeouts: a first poll during start-up can hang (opencode-lab.md).
            r = httpx.get(url + "/global/health", auth=("opencode", password), timeout=2.0)
            if r.status_code == 200 and r.json().get("healthy"):
                return str(r.json().get("version", ""))
            last = f"HTTP {r.status_code}"
        except (httpx.HTTPError, ValueError) as exc:
            last = str(exc) or type(exc).__name__
        time.sleep(0.25)
    raise AgentError(f"opencode at {url} not healthy in time ({last}): see {log}")


def start_agents(lab: Lab, count: int, timeout: float = 90.0) -> list[dict[str, Any]]:
    """Start the fake model and ``count`` OpenCode servers; returns their records (pids, urls)."""
    oc = find_opencode()
    adir = lab.dir / "agents"
    adir.mkdir(parents=True, exist_ok=True)
    agents: list[dict[str, Any]] = []
    lab.agents = agents  # filled as processes start, so a failure half-way is still cleaned up
    mport = free_ports(1)[0]
    mlog = adir / "fakellm.log"
    model = subprocess.Popen([sys.executable, "-m", "fleet.lab.fakellm", "--port", str(mport), "--tag", str(lab.dir)],
                             stdout=open(mlog, "w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             cwd=str(PROJECT_ROOT), start_new_session=True,
                             env=dict(os.environ, PYTHONPATH=str(PROJECT_ROOT)))
    (adir / "fakellm.pid").write_text(str(model.pid))
    agents.append({"host": None, "pid": model.pid, "url": f"http://127.0.0.1:{mport}", "role": "model"})
    ports = free_ports(count)
    procs = []
    for i, h in enumerate(lab.hosts[:count]):
        d = adir / h.name
        d.mkdir(parents=True, exist_ok=True)
        # as on a user's machine: the server runs in the host's home directory (not a git
        # project), with the repos under ~/repos, so sessions of several projects are real
        home = Path(h.repos_root).parent
        (home / ".config" / "opencode").mkdir(parents=True, exist_ok=True)
        (home / ".config" / "opencode" / "opencode.json").write_text(json.dumps(_config(mport), indent=2))
        pw = secrets.token_urlsafe(18)
        pwf = d / "password"
        fd = os.open(pwf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(pw + "\n")
        seed_repos(lab.dir, [h.repos_root])
        env = dict(os.environ, HOME=str(home), OPENCODE_SERVER_PASSWORD=pw, OPENCODE_DISABLE_AUTOUPDATE="1",
                   OPENCODE_DISABLE_MODELS_FETCH="1", OPENCODE_DISABLE_SHARE="1",
                   OPENCODE_DISABLE_LSP_DOWNLOAD="1", npm_config_registry="http://127.0.0.1:9/",
                   XDG_CONFIG_HOME=str(home / ".config"), XDG_DATA_HOME=str(home / ".local/share"),
                   XDG_STATE_HOME=str(home / ".local/state"), XDG_CACHE_HOME=str(home / ".cache"))
        env.pop("OPENCODE_SERVER_USERNAME", None)
        log = d / "opencode.log"
        p = subprocess.Popen([oc, "serve", "--port", str(ports[i]), "--hostname", "127.0.0.1"],
                             cwd=str(home), env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        (d / "opencode.pid").write_text(str(p.pid))
        url = f"http://127.0.0.1:{ports[i]}"
        rec = {"host": h.name, "pid": p.pid, "url": url, "password_file": str(pwf), "role": "agent",
               "log": str(log), "home": str(home)}
        agents.append(rec)
        procs.append((rec, p, pw, log))
    deadline = time.monotonic() + timeout
    for rec, p, pw, log in procs:
        rec["version"] = _wait_health(str(rec["url"]), pw, deadline, p, log)
    return agents

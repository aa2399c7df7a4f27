"""Secrets never leave: dx-dispatch and inv dispatch with a known password, scanned everywhere."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

from conftest import inv_cmd
from stand_ins import FakeOpenCode, FakeSlack

PASSWORD = "s3cr3t+pw/with=odd&chars"
SLACK_TOKEN = "xoxb-1111-2222-secretslacktokenvalue"


def forms(pw: str) -> list[str]:
    return [pw, quote(pw, safe=""), base64.b64encode(pw.encode()).decode(),
            base64.b64encode(f"opencode:{pw}".encode()).decode()]


def test_every_task_with_a_known_password_and_slack_token_leaks_nothing(tmp_path, own_home):
    s = FakeOpenCode(password=PASSWORD)
    slack = FakeSlack()
    try:
        inv = tmp_path / "inv.yaml"
        inv.write_text(f"slack: {{channel: C0AUDIT, base_url: '{slack.url}/api/'}}\n"
                       f"hosts:\n  epyc6: {{user: u, opencode: {{url: '{s.url}', password_env: OC_PW}}, "
                       f"repos: {{root: /r}}}}\n")
        env = {"OC_PW": PASSWORD, "SLACK_BOT_TOKEN": SLACK_TOKEN}
        outs = []
        for args in (["dispatch", "--host", "epyc6", "--repo", "demo", "--task", f"say {PASSWORD}"],
                     ["wait", "--host", "epyc6", "--session", "ses_fake1"],
                     ["sessions", "--all"], ["status", "--all"], ["sessions", "--all", "--json"],
                     ["abort", "--host", "epyc6", "--all-sessions"], ["teardown", "--all"],
                     ["audit.tail", "--json"], ["audit.replay"], ["inventory.show", "--all", "--json"]):
            p = inv_cmd(*args[:1], "--inventory", str(inv), *args[1:], env=env) if args[0] not in (
                "audit.tail",) else inv_cmd(*args, env=env)
            outs += [p.stdout, p.stderr]
        exe = str(Path(sys.executable).parent / "dx-dispatch")
        p = subprocess.run([exe, "epyc6", "demo", f"again {PASSWORD}"], capture_output=True, text=True,
                           env=dict(os.environ, **env, FLEET_INVENTORY=str(inv)), cwd=tmp_path, timeout=60)
        outs += [p.stdout, p.stderr]
        posts = [json.dumps(x) for x in slack.posts]
        assert posts, "nothing reached the Slack stand-in"
        hay = outs + posts
        leaks = scan([own_home, tmp_path], hay) + [SLACK_TOKEN for h in hay if SLACK_TOKEN in h]
        assert leaks == [], leaks
    finally:
        s.close()
        slack.close()


def scan(paths: list[Path], texts: list[str]) -> list[str]:
    hay = list(texts)
    for root in paths:
        for p in ([root] if root.is_file() else root.rglob("*")):
            if p.is_file():
                hay.append(p.read_bytes().decode(errors="replace"))
    return [f for f in forms(PASSWORD) for h in hay if f in h]


def test_dx_dispatch_and_inv_dispatch_never_write_the_password(tmp_path, own_home):
    s = FakeOpenCode(password=PASSWORD)
    s.faults["prompt_async"] = "echo_auth"
    try:
        inv = tmp_path / "inv.yaml"
        inv.write_text(f"hosts:\n  epyc6: {{user: u, opencode: {{url: '{s.url}', password_env: OC_PW}}, "
                       f"repos: {{root: /r}}}}\n")
        env = dict(os.environ, OC_PW=PASSWORD, FLEET_INVENTORY=str(inv), INVOKE_FLEET_MODE="canary")
        exe = str(Path(sys.executable).parent / "dx-dispatch")
        p = subprocess.run([exe, "epyc6", "affordabot", "Run make test", "--no-slack"], capture_output=True,
                           text=True, env=env, cwd=tmp_path, timeout=60)
        assert p.returncode == 1 and "Authorization" in p.stdout + p.stderr, p.stdout + p.stderr
        q = inv_cmd("dispatch", "--inventory", str(inv), "--host", "epyc6", "--repo", "affordabot", "--task", "t",
                    env={"OC_PW": PASSWORD})
        assert q.returncode == 1
        leaks = scan([own_home], [p.stdout, p.stderr, q.stdout, q.stderr])
        assert leaks == [], leaks
        journal = Path(os.environ["INVOKE_FLEET_JOURNAL"])
        assert journal.exists() and "[redacted]" in journal.read_text()
    finally:
        s.close()


def test_dx_dispatch_reads_mode_from_the_environment_outside_the_project(tmp_path):
    s = FakeOpenCode()
    try:
        inv = tmp_path / "inv.yaml"
        inv.write_text(f"hosts:\n  epyc6: {{user: u, opencode: '{s.url}', repos: {{root: /r}}}}\n")
        env = dict(os.environ, FLEET_INVENTORY=str(inv), INVOKE_FLEET_MODE="off")
        exe = str(Path(sys.executable).parent / "dx-dispatch")
        p = subprocess.run([exe, "epyc6", "affordabot", "Run make test", "--no-slack"], capture_output=True,
                           text=True, env=env, cwd=tmp_path, timeout=60)
        assert p.returncode == 3 and "mode off" in p.stderr, p.stderr
        assert not [h for h in s.hits if h[1].startswith("/session")]
    finally:
        s.close()


def test_retry_of_a_task_that_held_a_secret_is_refused_not_resent_redacted(tmp_path, own_home):
    """The last dispatch's summary keeps the task with secrets redacted (like the journal): a
    retry would send '[redacted]' to the agent, so it is refused with what to do."""
    s = FakeOpenCode(password=PASSWORD)
    try:
        inv = tmp_path / "inv.yaml"
        inv.write_text(f"hosts:\n  epyc6: {{user: u, opencode: {{url: '{s.url}', password_env: OC_PW}}, "
                       f"repos: {{root: /r}}}}\n"
                       f"  gone: {{user: u, opencode: {{url: 'http://127.0.0.1:1', password_env: OC_PW}}, "
                       f"repos: {{root: /r}}}}\n")
        env = {"OC_PW": PASSWORD}
        first = inv_cmd("dispatch", "--inventory", str(inv), "--hosts", "epyc6,gone", "--repo", "demo", "--task",
                        f"use {PASSWORD} please", "--canary", "epyc6", "--no-slack", env=env)
        assert first.returncode == 1  # 'gone' refused the connection: it is the one to retry
        again = inv_cmd("dispatch", "--inventory", str(inv), "--retry-failed", "--no-slack",
                        env=env)
        assert again.returncode == 2 and "held a secret" in again.stderr and "--task" in again.stderr
        assert scan([own_home, tmp_path], [first.stdout, first.stderr, again.stdout, again.stderr]) == []
    finally:
        s.close()

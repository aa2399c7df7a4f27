"""``fleet listen`` and ``audit.replay`` when Slack misbehaves (issue 23): hangs, 5xx, HTML
bodies, invalid_auth, 429 with any Retry-After (none, ``soon``, ``-5``, huge). Waits are
bounded, each fault is one clear line, the listener keeps going where it can, stops with exit 1
and a reason where it cannot, and ``--duration`` is honoured. The real CLI against the stand-in."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slack_stand_in import Fault, SocketSlack

from fleet.audit.trail import AuditTrail
from fleet.inventory import load_inventory

FLEET = str(Path(sys.executable).parent / "fleet")
CHANNEL = "C0AUDIT"


@pytest.fixture
def slack():
    s = SocketSlack()
    yield s
    s.close()


class Setup:
    """An inventory with a slack: section, and a journal holding one open dispatch whose thread is
    in the stand-in, with an allowed user's reply in it."""

    def __init__(self, tmp_path: Path, slack: SocketSlack) -> None:
        self.slack = slack
        self.inv_path = tmp_path / "inventory.yaml"
        self.inv_path.write_text(f"slack: {{channel: {CHANNEL}, base_url: '{slack.url}/api/', "
                                 f"allowed_users: [U0ALLOWED]}}\nhosts:\n  h1: {{address: 127.0.0.1}}\n")
        self.inv = load_inventory(self.inv_path)
        self.journal = os.environ["INVOKE_FLEET_JOURNAL"]
        self.cwd = tmp_path

    def open_dispatch(self, did: str = "dx-fault-1") -> str:
        trail = AuditTrail(self.journal, self.inv.slack, "xoxb-test")
        trail.record("dispatch_requested", "h1", "requested", dispatch_id=did, repo="demo", task="t")
        assert trail.close(timeout=5)
        root = next(p["ts"] for p in self.slack.posts if not p.get("thread_ts"))
        self.slack.reply(root, "U0ALLOWED", "hello")  # an allowed user's word fleet does not know
        return root

    def run(self, *args: str, timeout: float = 60, app: bool = False) -> tuple[subprocess.CompletedProcess, float]:
        env = dict(os.environ, SLACK_BOT_TOKEN="xoxb-test")
        env.pop("SLACK_APP_TOKEN", None)
        if app:
            env["SLACK_APP_TOKEN"] = "xapp-1-test"
        t0 = time.monotonic()
        try:
            p = subprocess.run([FLEET, *args, "--inventory", str(self.inv_path)], capture_output=True, text=True,
                               stdin=subprocess.DEVNULL, cwd=self.cwd, env=env, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"fleet {' '.join(args)} still running after {timeout}s: {exc.stderr!r}")
        return p, time.monotonic() - t0

    def answered(self, root: str) -> bool:
        return any((p.get("text") or "").startswith("I know") for p in self.slack.thread_posts(root))


@pytest.fixture
def world(tmp_path, slack):
    return Setup(tmp_path, slack)


def clean(err: str) -> None:
    assert "Traceback" not in err and "unexpected error" not in err and "a bug" not in err, err


@pytest.mark.parametrize("retry_after", [None, "soon", "-5", "99999", "1"])
def test_replies_always_rate_limited_duration_is_honoured(world, retry_after):
    world.open_dispatch()
    world.slack.faults["conversations.replies"] = Fault("429", retry_after)
    p, took = world.run("listen", "--duration", "2", "--interval", "0.5")
    assert p.returncode == 0, p.stderr
    clean(p.stderr)
    assert took < 10, f"--duration 2 took {took:.1f}s"
    lines = [ln for ln in p.stderr.splitlines() if "rate limited" in ln]
    assert len(lines) == 1 and "conversations.replies" in lines[0], p.stderr


def test_history_rate_limited_with_a_bad_retry_after_still_reads_followed_threads(world):
    root = world.open_dispatch()
    world.slack.faults["conversations.history"] = Fault("429", "soon")
    p, took = world.run("listen", "--duration", "3", "--interval", "0.5")
    assert p.returncode == 0, p.stderr
    clean(p.stderr)
    assert took < 10 and world.answered(root)
    lines = [ln for ln in p.stderr.splitlines() if "rate limited" in ln]
    assert len(lines) == 1 and "conversations.history" in lines[0], p.stderr


def test_a_hanging_read_is_bounded_by_the_duration(world):
    world.open_dispatch()
    world.slack.faults["conversations.replies"] = Fault("hang", hang_s=60)
    p, took = world.run("listen", "--duration", "3", "--interval", "0.5")
    assert p.returncode == 0, p.stderr
    clean(p.stderr)
    assert took < 9, f"--duration 3 took {took:.1f}s with a hanging Slack"
    assert len([ln for ln in p.stderr.splitlines() if "did not answer" in ln]) == 1, p.stderr


@pytest.mark.parametrize("kind,said", [("502", "HTTP 502"), ("html", "not JSON")])
def test_a_5xx_or_an_html_body_is_one_line_and_the_listener_goes_on(world, kind, said):
    root = world.open_dispatch()
    world.slack.faults["conversations.replies"] = Fault(kind, times=2)
    p, took = world.run("listen", "--duration", "4", "--interval", "0.3")
    assert p.returncode == 0, p.stderr
    clean(p.stderr)
    assert len([ln for ln in p.stderr.splitlines() if said in ln]) == 1, p.stderr
    assert world.answered(root), "the listener did not go on once Slack was back"
    assert len([x for x in world.slack.thread_posts(root) if (x.get("text") or "").startswith("I know")]) == 1


def test_the_listeners_own_post_rate_limited_goes_on(world):
    root = world.open_dispatch()
    world.slack.faults["chat.postMessage"] = Fault("429", "soon", times=1)
    p, took = world.run("listen", "--duration", "4", "--interval", "0.3")
    assert p.returncode == 0, p.stderr
    clean(p.stderr)
    assert took < 12 and world.answered(root)


@pytest.mark.parametrize("method", ["conversations.history", "conversations.replies"])
def test_invalid_auth_stops_with_exit_1_and_the_reason(world, method):
    world.open_dispatch()
    world.slack.faults[method] = Fault("invalid_auth")
    p, took = world.run("listen", "--duration", "20", "--interval", "0.5")
    assert p.returncode == 1, p.stderr
    clean(p.stderr)
    assert "invalid_auth" in p.stderr and "SLACK_BOT_TOKEN" in p.stderr, p.stderr
    assert took < 10


def test_socket_mode_with_a_refused_app_token_stops_with_exit_1(world):
    world.open_dispatch()
    world.slack.faults["apps.connections.open"] = Fault("invalid_auth")
    p, took = world.run("listen", "--duration", "20", app=True)
    assert p.returncode == 1, p.stderr
    clean(p.stderr)
    assert "invalid_auth" in p.stderr and "SLACK_APP_TOKEN" in p.stderr, p.stderr
    assert took < 10


def test_polling_says_so_once_when_only_a_bot_token_is_set(world):
    world.open_dispatch()
    p, _ = world.run("listen", "--duration", "2", "--interval", "0.3")
    assert p.returncode == 0, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if "polling" in ln]
    assert len(lines) == 1 and "SLACK_APP_TOKEN" in lines[0], p.stderr


@pytest.mark.parametrize("retry_after", ["soon", "-5"])
def test_replay_waits_out_any_retry_after(world, retry_after):
    trail = AuditTrail(world.journal, world.inv.slack, None)  # no token: the event stays pending
    trail.record("dispatch_requested", "h1", "requested", dispatch_id="dx-replay-1", repo="demo", task="t")
    world.slack.faults["chat.postMessage"] = Fault("429", retry_after, times=1)
    p, took = world.run("audit.replay", "--max-wait", "30")
    assert p.returncode == 0, p.stderr
    clean(p.stderr)
    assert "delivered 1, pending 0" in p.stdout and took < 15

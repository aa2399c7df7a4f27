"""Audit trail: journal first, Slack off the operation's path, lossless and exactly-once replay."""
import json
import multiprocessing
import os
import stat
import time

import pytest
from stand_ins import FakeSlack

from fleet.audit.trail import AuditTrail, Journal, replay
from fleet.inventory import SlackSettings

TOKEN = "xoxb-1111-2222-secret-token"


@pytest.fixture
def slack():
    s = FakeSlack()
    yield s
    s.close()


def settings(s):
    return SlackSettings(channel="C0AUDIT", base_url=s.url + "/api/")


def dispatch_events(trail, did="dx-1", host="epyc6"):
    trail.record("dispatch_requested", host, "requested", did, task="Run make test", repo="affordabot")
    trail.record("session_created", host, "ok", did, session_id="ses_1")
    trail.record("completed", host, "success", did, session_id="ses_1", answer="all green")


def test_journal_is_0600_fsynced_and_complete(tmp_path):
    t = AuditTrail(tmp_path / "j.jsonl", None, None)
    e = t.record("dispatch_requested", "epyc6", "requested", "dx-1", task="x")
    t.close()
    assert stat.S_IMODE(os.stat(tmp_path / "j.jsonl").st_mode) == 0o600
    rec = json.loads((tmp_path / "j.jsonl").read_text())
    assert {"id", "time", "actor", "host", "operation", "outcome", "dispatch_id"} <= set(rec)
    assert rec["id"] == e["id"] and "@" in rec["actor"]
    st = Journal(tmp_path / "j.jsonl").load()
    assert st.events[0]["id"] == e["id"]
    # no Slack configured: the journal's alone, never pending (no replay would deliver it)
    assert st.pending() == [] and st.journal_only()[0]["id"] == e["id"]


def test_slow_slack_does_not_delay_the_operation(slack, tmp_path):
    slack.mode, slack.delay = "slow", 10.0
    t0 = time.monotonic()
    t = AuditTrail(tmp_path / "j.jsonl", settings(slack), TOKEN)
    dispatch_events(t)
    t.close()  # bounded flush (200 ms)
    took = time.monotonic() - t0
    assert took < 2.0, took
    assert len(Journal(tmp_path / "j.jsonl").load().events) == 3


def test_thread_structure_replies_carry_first_ts(slack, tmp_path):
    t = AuditTrail(tmp_path / "j.jsonl", settings(slack), TOKEN)
    dispatch_events(t)
    assert t.close(timeout=10)
    posts = slack.posts
    assert len(posts) == 3 and posts[0]["thread_ts"] is None
    assert posts[1]["thread_ts"] == posts[0]["ts"] and posts[2]["thread_ts"] == posts[0]["ts"]
    assert all(p["metadata"]["event_type"] == "fleet_audit" for p in posts)
    st = Journal(tmp_path / "j.jsonl").load()
    assert not st.pending() and all(d["thread_ts"] == posts[0]["ts"] for d in st.delivered.values())
    assert slack.auth[0] == f"Bearer {TOKEN}"


def test_outage_then_replay_delivers_everything_once(tmp_path):
    down = FakeSlack()
    url = down.url
    down.close()  # Slack is down
    t = AuditTrail(tmp_path / "j.jsonl", SlackSettings(channel="C0AUDIT", base_url=url + "/api/"), TOKEN)
    dispatch_events(t, "dx-1")
    dispatch_events(t, "dx-2", "macmini")
    t.close(timeout=5)
    assert len(Journal(tmp_path / "j.jsonl").load().pending()) == 6
    up = FakeSlack()
    try:
        rep = replay(str(tmp_path / "j.jsonl"), settings(up), TOKEN)
        assert (rep.delivered, rep.pending) == (6, 0)
        rep2 = replay(str(tmp_path / "j.jsonl"), settings(up), TOKEN)
        assert rep2.delivered == 0 and len(up.posts) == 6
        ids = [p["metadata"]["event_payload"]["event_id"] for p in up.posts]
        assert len(set(ids)) == 6
        roots = [p for p in up.posts if p["thread_ts"] is None]
        assert len(roots) == 2  # one thread per dispatch
    finally:
        up.close()


def test_rate_limit_is_honoured(slack, tmp_path):
    t = AuditTrail(tmp_path / "j.jsonl", settings(slack), TOKEN, post=False)
    dispatch_events(t)
    slack.mode, slack.limit_count, slack.retry_after = "ratelimit", 2, 3
    slept = []
    rep = replay(str(tmp_path / "j.jsonl"), settings(slack), TOKEN, sleep=slept.append)
    assert rep.delivered == 3 and slept == [3.0, 3.0] and len(slack.posts) == 3


def test_slack_refusing_for_good_marks_failed_and_retry_failed_delivers(slack, tmp_path):
    slack.mode = "error"  # channel_not_found: no retry of the same event will change it
    t = AuditTrail(tmp_path / "j.jsonl", settings(slack), TOKEN)
    dispatch_events(t)
    t.close(timeout=5)
    st = Journal(tmp_path / "j.jsonl").load()
    assert len(st.failed) == 3 and {f["error"] for f in st.failed.values()} == {"channel_not_found"}
    assert "channel_not_found" in t.last_error
    rep = replay(str(tmp_path / "j.jsonl"), settings(slack), TOKEN)
    assert rep.delivered == 0 and rep.pending == 0  # failed ones wait for --retry-failed
    slack.mode = "ok"
    rep = replay(str(tmp_path / "j.jsonl"), settings(slack), TOKEN, retry_failed=True)
    assert rep.delivered == 3 and len(slack.posts) == 3


def test_one_refused_event_does_not_block_the_rest(slack, tmp_path):
    slack.refuse_text = "REFUSE-ME"
    t = AuditTrail(tmp_path / "j.jsonl", settings(slack), TOKEN, post=False)
    t.record("dispatch_requested", "epyc6", "requested", dispatch_id="dx-1", task="REFUSE-ME " * 3)
    t.record("session_created", "epyc6", "ok", dispatch_id="dx-1", session_id="ses_1")
    t.record("completed", "epyc6", "success", dispatch_id="dx-1", session_id="ses_1")
    rep = replay(str(tmp_path / "j.jsonl"), settings(slack), TOKEN)
    assert rep.delivered == 2 and "msg_too_long" in rep.stopped
    from fleet.cli.render import format_events
    st = Journal(tmp_path / "j.jsonl").load()
    assert "[failed: msg_too_long]" in format_events(st.events, st.delivered, st.failed)


def test_wrong_shaped_journal_lines_are_skipped_not_fatal(slack, tmp_path):
    t = AuditTrail(tmp_path / "j.jsonl", settings(slack), TOKEN, post=False)
    t.record("completed", "epyc6", "success", dispatch_id="dx-1")
    with open(tmp_path / "j.jsonl", "a") as f:
        for bad in ('[1,2,3]', 'null', '{"type":"event"}', '{"type":"delivered"}', '"text"', '{"type":"event","id":5}'):
            f.write(bad + "\n")
    st = Journal(tmp_path / "j.jsonl").load()
    assert len(st.events) == 1 and st.skipped == 6
    rep = replay(str(tmp_path / "j.jsonl"), settings(slack), TOKEN)
    assert rep.delivered == 1


def test_replay_never_sends_to_another_channel(slack, tmp_path):
    t = AuditTrail(tmp_path / "j.jsonl", settings(slack), TOKEN, post=False)
    dispatch_events(t)
    other = SlackSettings(channel="C0OTHER", base_url=slack.url + "/api/")
    rep = replay(str(tmp_path / "j.jsonl"), other, TOKEN)
    assert rep.delivered == 0 and slack.posts == []
    assert replay(str(tmp_path / "j.jsonl"), settings(slack), TOKEN).delivered == 3


def test_find_pages_back_to_the_event(slack, tmp_path):
    """An event posted before a crash (attempt journaled, no 'delivered') is found on a later page."""
    from fleet.audit.trail import SlackPoster
    t = AuditTrail(tmp_path / "j.jsonl", settings(slack), TOKEN, post=False)
    e = t.record("completed", "epyc6", "success")  # no dispatch id: a root message
    SlackPoster(settings(slack), TOKEN).post(e, None)
    Journal(tmp_path / "j.jsonl").append({"type": "attempt", "event_id": e["id"], "time": "x"})
    poster = SlackPoster(settings(slack), TOKEN)
    for i in range(7):  # newer messages in front of it
        poster.post({"id": f"ev_other{i}", "operation": "x", "outcome": "y"}, None)
    slack.page_size = 2
    rep = replay(str(tmp_path / "j.jsonl"), settings(slack), TOKEN)
    assert rep.delivered == 1 and len(slack.posts) == 8  # found, not posted twice
    assert slack.reads.count("conversations.history") >= 4


def _replay(args):
    path, url = args
    return replay(path, SlackSettings(channel="C0AUDIT", base_url=url + "/api/"), TOKEN).delivered


def test_two_concurrent_replays_post_each_event_once(slack, tmp_path):
    t = AuditTrail(tmp_path / "j.jsonl", settings(slack), TOKEN, post=False)
    for i in range(10):
        dispatch_events(t, f"dx-{i}")
    with multiprocessing.get_context("fork").Pool(2) as pool:
        got = pool.map(_replay, [(str(tmp_path / "j.jsonl"), slack.url)] * 2)
    assert sum(got) == 30 and len(slack.posts) == 30
    assert len({p["metadata"]["event_payload"]["event_id"] for p in slack.posts}) == 30


def test_unknown_fate_is_checked_in_the_channel_before_reposting(slack, tmp_path):
    j = tmp_path / "j.jsonl"
    t = AuditTrail(j, settings(slack), TOKEN, post=False)
    e = t.record("dispatch_requested", "epyc6", "requested", "dx-1")
    # a crash after the post reached Slack but before 'delivered' was written:
    Journal(j).append({"type": "attempt", "event_id": e["id"]})
    slack.posts.append({"ts": "1699999999.000001", "text": "x", "channel": "C0AUDIT", "thread_ts": None,
                        "metadata": {"event_type": "fleet_audit", "event_payload": {"event_id": e["id"]}}})
    rep = replay(str(j), settings(slack), TOKEN)
    assert rep.delivered == 1 and len(slack.posts) == 1
    assert Journal(j).load().delivered[e["id"]]["ts"] == "1699999999.000001"


def test_torn_last_line_is_set_aside_and_nothing_else_lost(tmp_path):
    j = tmp_path / "j.jsonl"
    t = AuditTrail(j, None, None)
    dispatch_events(t)
    with open(j, "a") as f:
        f.write('{"type": "event", "id": "ev_torn", "operation": "comp')  # crash mid-write
    st = Journal(j).load()
    assert len(st.events) == 3 and st.torn and "ev_torn" in st.torn[0]
    assert "ev_torn" in (tmp_path / "j.jsonl.torn").read_text()
    t.record("aborted", "epyc6", "aborted", "dx-1")
    st = Journal(j).load()
    assert len(st.events) == 4 and not st.torn


def test_no_secret_in_journal_or_posts(slack, tmp_path, monkeypatch):
    t = AuditTrail(tmp_path / "j.jsonl", settings(slack), TOKEN, secrets_=["opencode-pass-123"])
    t.record("failed", "epyc6", "failure", "dx-1", error=f"401 with opencode-pass-123 and {TOKEN}",
             task="use token abcd-efgh-ijkl-mnop-qrst-uvwx please")
    assert t.close(timeout=10)
    text = (tmp_path / "j.jsonl").read_text() + json.dumps(slack.posts)
    for secret in ("opencode-pass-123", TOKEN, "abcd-efgh-ijkl-mnop-qrst-uvwx"):
        assert secret not in text
    assert "[redacted]" in text and "[token]" in text

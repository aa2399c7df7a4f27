"""Issue 21 (12): the audit trail says one thing. "pending" means a replay will deliver it; an event
journaled while no Slack was configured is marked as never to be posted (tail, --json, replay
agree); a Slack audit that was asked for but cannot happen says so."""
from __future__ import annotations

import io
from contextlib import redirect_stderr

from stand_ins import FakeSlack

from fleet.audit.journal import Journal
from fleet.audit.trail import AuditTrail, replay
from fleet.cli.common import say_audit
from fleet.cli.render import format_events
from fleet.inventory import SlackSettings

TOKEN = "xoxb-1111-2222-secret-token"


def test_events_from_before_slack_are_never_pending_and_replay_agrees(tmp_path):
    j = tmp_path / "j.jsonl"
    before = AuditTrail(j, None, None)  # no slack: section in the inventory yet
    before.record("fanout", "lab01", "ok")
    before.close()
    slack = FakeSlack()
    try:
        s = SlackSettings(channel="C0AUDIT", base_url=slack.url + "/api/")
        later = AuditTrail(j, s, None, post=False)  # Slack configured now; this one waits for a replay
        later.record("teardown", "lab01", "ok")
        st = Journal(j).load()
        assert [e["operation"] for e in st.pending()] == ["teardown"]  # only what a replay will deliver
        text = format_events(st.events, st.delivered, st.failed)
        first, second = text.splitlines()
        assert "[pending]" not in first and "no Slack" in first, first
        assert "[pending]" in second
        rep = replay(str(j), s, TOKEN)
        assert (rep.delivered, rep.pending) == (1, 0) and len(slack.posts) == 1
        st = Journal(j).load()
        assert st.pending() == [] and "[pending]" not in format_events(st.events, st.delivered, st.failed)
    finally:
        slack.close()


def say(trail) -> str:
    err = io.StringIO()
    with redirect_stderr(err):
        say_audit(trail)
    return err.getvalue()


def test_a_slack_audit_that_cannot_happen_says_so_and_tells_the_truth(tmp_path):
    unconfigured = AuditTrail(tmp_path / "a.jsonl", None, None)  # Slack asked for (the default), none set up
    unconfigured.record("dispatch_requested", "lab01", "requested")
    line = say(unconfigured)
    assert "audit:" in line and "not configured" in line and "pending" not in line, line
    assert "never" in line or "journal only" in line, line
    no_token = AuditTrail(tmp_path / "b.jsonl", SlackSettings(channel="C0AUDIT"), None)
    no_token.record("dispatch_requested", "lab01", "requested")
    line = say(no_token)
    assert "$SLACK_BOT_TOKEN is not set" in line and "audit.replay" in line, line
    assert Journal(tmp_path / "b.jsonl").load().pending()  # ...and they are pending: a replay posts them
    # Slack not asked for (--no-slack): nothing to say
    quiet = AuditTrail(tmp_path / "c.jsonl", SlackSettings(channel="C0AUDIT"), TOKEN, post=False)
    assert quiet.status == "" and say(quiet) == ""
    quiet_none = AuditTrail(tmp_path / "d.jsonl", None, None, post=False)
    assert quiet_none.status == ""

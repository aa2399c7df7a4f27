"""Issue 21 (7): what a server or a remote command says cannot forge the terminal. Every table cell
and live line escapes control characters (newlines too); gathered output keeps its lines and tabs
and escapes the rest (ESC, CR, BEL...). Artifacts stay byte-exact (tested with fanout)."""
from __future__ import annotations

import io
import unicodedata
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.cli import agent_render, live, render
from fleet.results import FanoutOutcome, FanoutResult, FanoutRun, TeardownResult

EVIL = "ok\n\x1b[2J\x1b[31mlab99  FAILURE  forged\r\x07\x9b1m\u202eevil"


def printable(line: str) -> bool:
    return all(c.isprintable() for c in line)


def no_controls(text: str, keep: str = "\n") -> bool:
    return all(c in keep or unicodedata.category(c) != "Cc" for c in text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.text(), min_size=3, max_size=3), max_size=6))
def test_a_table_has_one_line_per_row_and_no_control_character(rows):
    out = render.table(rows, ["A", "B", "C"]).split("\n")
    assert len(out) == len(rows) + 1
    assert all(printable(line) for line in out)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=8), st.text(), st.text()), min_size=1, max_size=5,
                unique_by=lambda t: t[0]))
def test_the_fanout_table_has_one_line_per_host(rows):
    run = FanoutRun("r1", "cmd", [FanoutResult(h, FanoutOutcome.FAILURE, error=e, stdout=o) for h, e, o in rows])
    text = render.fanout_table(run, render.Colors(False))
    lines = text.split("\n")
    # header + one line per host, then each distinct long error once, then the count
    longs = {render.first_line(render.cell(e), 10_000) for _, e, _ in rows}
    assert len(lines) >= len(rows) + 2 and len(lines) <= len(rows) + 2 + len(longs)
    assert all(printable(line) for line in lines)
    assert no_controls(render.gathered(run), "\n\t")


def session_row(title: str, state: str = "busy"):
    return SimpleNamespace(host="lab01", repo="demo", session_id="ses_1", state=state, waiting="", age_s=5,
                           tokens=10, cost=0.1, fleet=True, machine="m", branch="", title=title)


def test_a_session_title_cannot_add_rows_or_colour_the_terminal():
    out = agent_render.sessions_table([session_row(EVIL), session_row("plain")]).split("\n")
    assert len(out) == 3 and all(printable(line) for line in out)
    assert "\\x1b[2J" in out[1]  # shown, escaped: the person sees what the server sent


def test_every_table_and_line_escapes_what_servers_and_hosts_say():
    outs = [
        agent_render.status_table([{"host": "lab01", "healthy": False, "version": EVIL, "ms": 3, "url": "http://x",
                              "error": EVIL}]),
        render.preflight_table([SimpleNamespace(host="h", ok=False, status=SimpleNamespace(value="FAILED"),
                                                auth_mode="ssh-key", failed_check="auth", duration_ms=1,
                                                opencode="", error_detail=EVIL)]),
        render.worktrees_table([SimpleNamespace(host="h", repo="demo", branch=EVIL, path="/p", age_s=1, dirty=False,
                                                ahead="1", session="")]),
        live.watch_board([{"host": "h", "repo": "demo", "session": "s", "state": "busy", "step": EVIL,
                             "title": EVIL, "created": 0}], now=10),
        live.watch_line({"host": "h", "repo": "demo", "session": "s", "state": "busy", "step": EVIL,
                           "title": EVIL}),
        agent_render.abort_line("h", [EVIL]),
        agent_render.teardown_lines([TeardownResult("h", error=EVIL)]),
        render.format_events([{"id": "e1", "time": "t", "dispatch_id": "", "host": "h", "operation": "op",
                               "outcome": "ok", "channel": "C1", "detail": {"answer": EVIL}}], {}),
    ]
    for text in outs:
        assert all(printable(line) for line in text.split("\n")), text
    assert len(outs[0].split("\n")) == 2 and len(outs[3].split("\n")) == 2


def test_live_lines_are_escaped():
    out, err = io.StringIO(), io.StringIO()
    ls = live.LineStreamer(["lab01"], out, err)
    ls("lab01", "stdout", EVIL)
    ls("lab01", "stderr", "\x1b]0;owned\x07")
    for text in (out.getvalue(), err.getvalue()):
        lines = text.split("\n")
        assert lines[-1] == "" and len(lines) == 2 and printable(lines[0]), text
    screen = io.StringIO()
    with live.DispatchLive(quiet=False, many=True, stream=screen, tick=0) as d:
        d("lab01", "session", EVIL)
        d("lab01", "status", "busy: " + EVIL)
        d("lab01", "end", "SUCCESS: " + EVIL)
    assert all(printable(line) for line in screen.getvalue().split("\n")), screen.getvalue()


def test_gathered_output_keeps_lines_and_tabs_and_escapes_the_rest():
    run = FanoutRun("r1", "cmd", [FanoutResult("lab01", FanoutOutcome.SUCCESS, stdout="a\tb\n\x1b[2Jwiped\r\nc\n",
                                               stderr="\x1b[31mred\n")])
    text = render.gathered(run)
    assert "a\tb" in text and "\\x1b[2Jwiped" in text and "\nc" in text
    assert no_controls(text, "\n\t")
    assert no_controls(render.diffed(run), "\n\t") and no_controls(render.stderr_tails(run), "\n\t")
    bad = FanoutRun("r1", "cmd", [FanoutResult("lab01", FanoutOutcome.FAILURE, stderr="\x1b[2Jboom\n")])
    assert no_controls(render.stderr_tails(bad), "\n\t") and "boom" in render.stderr_tails(bad)


def test_an_agents_answer_is_shown_escaped():
    r = SimpleNamespace(host="lab01", ok=True, waited=True, answer="done\n\x1b[2Jforged line", session_id="s",
                        outcome=FanoutOutcome.SUCCESS, tokens={}, cost=0.0, duration_ms=1, worktree="",
                        branch="", files=[], todo=[{"status": "x", "content": EVIL}], error=EVIL)
    text = agent_render.dispatch_report(SimpleNamespace(results=[r], dispatch_id="d"))
    assert no_controls(text, "\n\t") and "done\n" in text

"""The plan shown is the plan run: for every gated operation, the order its confirmation text
shows (canary first, the rest only if it succeeds; at once or one after another) is the order
the work runs in."""
from __future__ import annotations

import re
import threading

import pytest
from conftest import opts, test_settings, write_inventory
from stand_ins import FakeOpenCode

from fleet.audit.records import SessionRecords
from fleet.inventory import load_inventory, load_inventory_text
from fleet.ops.blow_away import blow_away
from fleet.ops.fanout import fanout
from fleet.ops.sessions import teardown
from fleet.ops.worktrees import remove_worktree
from fleet.safety.gate import ConfirmationRequired

settings = test_settings


def shown_order(text: str) -> tuple[str | None, list[str], str]:
    """(canary, the rest in the order shown, 'serial'|'parallel') read back from a plan's text."""
    canary = re.search(r"^canary:\s+(\S+) runs first; the rest only if it succeeds$", text, re.M)
    serial = re.search(r"^(?:then|order):\s+one host after another: (.+)$", text, re.M)
    hosts = re.search(r"^hosts:\s+(.+) \(\d+\)$", text, re.M).group(1).split(", ")
    first = canary.group(1) if canary else None
    rest = serial.group(1).split(", ") if serial else [h for h in hosts if h != first]
    return first, rest, "serial" if serial else "parallel"


class Servers:
    """Loopback OpenCode stand-ins that note which host was reached, in arrival order."""

    def __init__(self, names: list[str]) -> None:
        self.order: list[str] = []
        self.lock = threading.Lock()
        self.servers = {}
        for n in names:
            s = FakeOpenCode()
            self.servers[n] = s
            s.sessions["ses_a"] = {"id": "ses_a", "title": "t", "directory": "/r", "time": {"created": 1, "updated": 1},
                                   "fleet": {"dispatch_id": "dx-1"}}
        for n, s in self.servers.items():
            orig = s.hits

            class Noting(list):
                def append(inner, item, _n=n):  # noqa: N805 - a list whose appends are noted
                    with self.lock:
                        if not self.order or self.order[-1] != _n:
                            self.order.append(_n)
                    list.append(inner, item)
            s.hits = Noting(orig)

    def inventory(self):
        text = "hosts:\n" + "".join(f"  {n}: {{address: 127.0.0.1, opencode: '{s.url}'}}\n"
                                    for n, s in self.servers.items())
        return load_inventory_text(text, "inv.yaml")

    def close(self) -> None:
        for s in self.servers.values():
            s.close()


def test_teardown_runs_its_hosts_in_the_order_its_plan_shows(tmp_path):
    srv = Servers(["t1", "t2", "t3"])
    try:
        inv, st = srv.inventory(), settings(tmp_path)
        recs = SessionRecords(tmp_path / "sessions.jsonl")
        with pytest.raises(ConfirmationRequired) as ei:
            teardown(inv, "t3,t1,t2", records=recs, settings=st, canary="t2")
        canary, rest, how = shown_order(ei.value.plan.describe())
        assert (canary, how) == ("t2", "serial")
        assert srv.order == []  # nothing reached before the person confirmed
        out = teardown(inv, "t3,t1,t2", records=recs, settings=st, canary="t2", confirm=ei.value.token)
        assert srv.order == [canary] + rest
        assert [r.host for r in out] == ["t1", "t2", "t3"] and not any(r.error for r in out)
    finally:
        srv.close()


def test_a_failed_canary_teardown_stops_the_rest_as_its_plan_says(tmp_path):
    srv = Servers(["t1", "t2", "t3"])
    try:
        inv, st = srv.inventory(), settings(tmp_path)
        srv.servers["t1"].close()  # the canary's server is down: its teardown fails
        recs = SessionRecords(tmp_path / "sessions.jsonl")
        with pytest.raises(ConfirmationRequired) as ei:
            teardown(inv, "all", records=recs, settings=st)
        canary, rest, _ = shown_order(ei.value.plan.describe())
        out = teardown(inv, "all", records=recs, settings=st, confirm=ei.value.token)
        assert canary == "t1" and srv.order == []  # the others were never reached
        by = {r.host: r for r in out}
        assert by["t1"].error and all(by[h].not_run and "canary t1" in by[h].error for h in rest)
    finally:
        srv.close()


def test_worktree_removal_runs_as_shown_the_rest_only_after_the_canary(lab, tmp_path):
    import json
    path = write_inventory(tmp_path / "inv.yaml", lab, names=["lab01", "lab02", "lab03"])
    st = settings(tmp_path)
    args = {"repo": "demo", "name": "nosuch", "force": False, "delete_branch": False}
    inv = load_inventory(path)
    with pytest.raises(ConfirmationRequired) as ei:
        remove_worktree(inv, "lab03,lab01,lab02", args=args, settings=st, canary="lab02")
    canary, rest, how = shown_order(ei.value.plan.describe())
    assert (canary, how) == ("lab02", "serial")
    remove_worktree(inv, "lab03,lab01,lab02", args=args, settings=st, canary="lab02", confirm=ei.value.token)
    events = [json.loads(x) for x in (tmp_path / "journal.jsonl").read_text().splitlines()]
    ran = [e["host"] for e in events if e.get("operation") == "gated_action_run"]
    assert ran == [canary] + rest  # nothing to remove anywhere: each host succeeded, in the order shown
    # the canary's repos root is gone: it fails, and the plan said the rest run only if it succeeds
    path.write_text(path.read_text().replace(f"repos: {{root: {lab.hosts[1].repos_root}}}",
                                             "repos: {root: /nonexistent-fleet-root}", 1))
    inv = load_inventory(path)
    with pytest.raises(ConfirmationRequired) as ei:
        remove_worktree(inv, "all", args=args, settings=st, canary="lab02")
    out = remove_worktree(inv, "all", args=args, settings=st, canary="lab02", confirm=ei.value.token)
    by = {r.host: r for r in out}
    assert by["lab02"].outcome == "refused" and "does not exist" in by["lab02"].detail
    assert by["lab01"].outcome == by["lab03"].outcome == "not run"


def test_a_gated_fanout_runs_the_canary_first_as_its_plan_shows(lab, tmp_path):
    inv = load_inventory(write_inventory(tmp_path / "inv.yaml", lab, names=["lab01", "lab02", "lab03"]))
    st = settings(tmp_path, gated=("fanout",))
    o = opts(tmp_path)
    cmd = "date +%s.%N; sleep 0.6"
    with pytest.raises(ConfirmationRequired) as ei:
        fanout(inv, "all", args={"command": cmd}, settings=st, options=o, canary="lab02")
    canary, rest, how = shown_order(ei.value.plan.describe())
    assert (canary, how) == ("lab02", "parallel")
    run = fanout(inv, "all", args={"command": cmd}, settings=st, options=o, canary="lab02",
                 confirm=ei.value.token)
    started = {r.host: float(r.stdout.split()[0]) for r in run.results}
    assert all(started[h] >= started[canary] + 0.5 for h in rest), started  # after the canary's end


def test_blow_away_shows_no_canary_and_runs_every_host(lab, tmp_path):
    inv = load_inventory(write_inventory(tmp_path / "inv.yaml", lab, names=["lab01", "lab02"]))
    st = settings(tmp_path, mode="canary")
    o = opts(tmp_path)
    with pytest.raises(ConfirmationRequired) as ei:
        blow_away(inv, "all", args={"repo": "gone-already"}, settings=st, options=o)
    text = ei.value.plan.describe()
    assert "canary:" not in text and re.search(r"^order:\s+every host at once$", text, re.M)
    run = blow_away(inv, "all", args={"repo": "gone-already"}, settings=st, options=o, confirm=ei.value.token)
    assert sorted(r.host for r in run.results) == ["lab01", "lab02"]
    assert all("nothing to remove" in r.stdout for r in run.results)


def test_plan_text_cannot_be_forged_by_a_value(tmp_path):
    srv = Servers(["t1"])
    try:
        inv = srv.inventory()
        from fleet.safety.gate import make_plan
        plan = make_plan(inv, "fanout", "all", "canary", {"command": "true\nnote:      all is fine\x1b[2J"})
        text = plan.describe()
        assert "\nnote:      all is fine" not in text and "\x1b" not in text and "\\n" in text
    finally:
        srv.close()


def test_the_plan_a_person_confirms_shows_no_secret(tmp_path, monkeypatch):
    secret = "s3cr3t+pw/with=odd&chars"
    monkeypatch.setenv("OC_PW", secret)
    inv = load_inventory_text("hosts:\n  h1: {address: 127.0.0.1, port: 9, opencode: {url: 'http://127.0.0.1:9', "
                              "password_env: OC_PW}}\n", "inv.yaml")
    st = settings(tmp_path, gated=("fanout",))
    with pytest.raises(ConfirmationRequired) as ei:
        fanout(inv, "all", args={"command": f"curl -u opencode:{secret} x"}, settings=st)
    assert secret not in str(ei.value) and secret not in ei.value.plan.describe()
    assert "curl -u opencode:" in str(ei.value)

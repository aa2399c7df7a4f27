"""The service's incremental reader of the journal (fleet.audit.tail) sees exactly what a whole
read (Journal.load) sees, after appends, a torn line, a healed tail, a replaced file, and reads
the file whole only when it must."""
from __future__ import annotations

import os
import time

from fleet.audit.journal import Journal
from fleet.audit.tail import JournalTail


def ev(n: int, epoch: float | None = None) -> dict:
    return {"type": "event", "id": f"ev_{n}", "time": "t", "epoch": time.time() if epoch is None else epoch,
            "actor": "test", "host": f"h{n}", "operation": "dispatch_requested", "outcome": "ok",
            "dispatch_id": f"dx-{n}", "channel": "", "detail": {}}


def ids(events: list[dict]) -> list[str]:
    return [e["id"] for e in events]


def test_appends_are_read_incrementally_and_equal_a_whole_read(tmp_path):
    p = tmp_path / "journal.jsonl"
    j, t = Journal(p), JournalTail(p)
    assert t.events() == []
    for n in range(3):
        j.append(ev(n))
    assert ids(t.events()) == ids(j.load().events) == ["ev_0", "ev_1", "ev_2"]
    j.append({"type": "delivered", "event_id": "ev_0"})  # not an event: not listed
    for n in range(3, 6):
        j.append(ev(n))
        assert ids(t.events()) == ids(j.load().events)
    assert t.reads == 1  # one whole read, then only what was appended


def test_a_line_being_written_is_read_once_it_is_whole(tmp_path):
    p = tmp_path / "journal.jsonl"
    j, t = Journal(p), JournalTail(p)
    j.append(ev(0))
    line = open(p, "rb").read()
    with open(p, "ab") as f:
        f.write(line[:20].replace(b"ev_0", b"ev_9"))  # half a line
    assert ids(t.events()) == ["ev_0"]
    with open(p, "ab") as f:
        f.write(line[20:].replace(b"ev_0", b"ev_9"))
    assert ids(t.events()) == ["ev_0", "ev_9"]


def test_a_healed_tail_a_replaced_or_rewritten_journal_is_read_again(tmp_path):
    p = tmp_path / "journal.jsonl"
    j, t = Journal(p), JournalTail(p)
    for n in range(3):
        j.append(ev(n))
    assert len(t.events()) == 3
    with open(p, "ab") as f:
        f.write(b'{"type": "event", "torn')  # a crash mid-write; the next append sets it aside
    j.append(ev(3))
    assert ids(t.events()) == ids(j.load().events) == ["ev_0", "ev_1", "ev_2", "ev_3"]
    other = tmp_path / "other.jsonl"
    Journal(other).append(ev(7))
    os.replace(other, p)  # another file at the path
    assert ids(t.events()) == ["ev_7"]
    open(p, "w").close()  # rotated by truncation (`: > journal`), then more written than was there
    for n in range(10, 14):
        j.append(ev(n))
    assert ids(t.events()) == ["ev_10", "ev_11", "ev_12", "ev_13"]
    os.unlink(p)
    assert t.events() == []


def test_events_older_than_keep_are_let_go(tmp_path):
    p = tmp_path / "journal.jsonl"
    j = Journal(p)
    j.append(ev(0, epoch=time.time() - 3 * 86400))
    j.append(ev(1))
    assert ids(JournalTail(p, keep=2 * 86400).events()) == ["ev_1"]
    assert ids(JournalTail(p).events()) == ["ev_0", "ev_1"]

"""The bounded worker pool with kept threads (what `fleet serve` turns on): a run still has at most
its width at once, the next run reuses the threads, and Ctrl-C leaves the hosts not yet started
not started."""
from __future__ import annotations

import ctypes
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from fleet import workers


@dataclass(frozen=True)
class H:
    name: str


@pytest.fixture
def kept(monkeypatch):
    pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="test-lane")
    monkeypatch.setattr(workers, "_lanes", pool)
    yield pool
    pool.shutdown(wait=True)


def test_kept_threads_keep_the_width_and_are_reused(kept):
    hosts = [H(f"h{i:02d}") for i in range(20)]
    lock, now, most, seen = threading.Lock(), [0], [0], []

    def work(h: H) -> str:
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
            seen.append(threading.get_ident())
        time.sleep(0.02)
        with lock:
            now[0] -= 1
        return h.name.upper()

    first, cut = workers.run_bounded(hosts, work, 4, "t", on_interrupt=lambda: None, not_started=lambda h: "-")
    assert not cut and first == {h.name: h.name.upper() for h in hosts}
    assert most[0] == 4  # never more than the run's width at once
    threads = set(seen)
    seen.clear()
    second, _ = workers.run_bounded(hosts[:4], work, 4, "t", on_interrupt=lambda: None, not_started=lambda h: "-")
    assert len(second) == 4 and set(seen) <= threads  # the same threads, none started anew


def test_an_error_is_the_hosts_and_ctrl_c_leaves_the_rest_not_started(kept):
    def boom(h: H) -> str:
        if h.name == "bad":
            raise ValueError("no")
        return "ok"
    got, _ = workers.run_bounded([H("a"), H("bad")], boom, 2, "t", on_interrupt=lambda: None,
                                 not_started=lambda h: "-", on_error=lambda h, e: f"error: {e}")
    assert got == {"a": "ok", "bad": "error: no"}

    started, stop = [], threading.Event()

    def slow(h: H) -> str:
        started.append(h.name)
        stop.wait(5)
        return "done"
    main = threading.get_ident()
    threading.Timer(0.3, lambda: ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(main), ctypes.py_object(KeyboardInterrupt))).start()  # Ctrl-C in 0.3 s
    hosts = [H(f"s{i}") for i in range(6)]
    got, cut = workers.run_bounded(hosts, slow, 2, "t", on_interrupt=stop.set, not_started=lambda h: "not started",
                                   drain_timeout=5)
    assert cut
    assert sorted(started) == ["s0", "s1"]  # two lanes: the first two began, the others never did
    assert got == {"s0": "done", "s1": "done", **{f"s{i}": "not started" for i in range(2, 6)}}

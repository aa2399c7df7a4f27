"""The bounded worker pool shared by fanout and dispatch.

Fabric's ThreadingGroup starts one thread per host and joins without bound; fleet caps the
workers and waits in short slices in the calling (main) thread, so Ctrl-C lands there and
every host still gets a result.
"""
from __future__ import annotations

import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Callable, Protocol, Sequence, TypeVar


class Named(Protocol):
    """Anything with a name (a host, a (host, session) pair's host): what the pool keys results by."""

    @property
    def name(self) -> str: ...


R = TypeVar("R")
Host = TypeVar("Host", bound=Named)


def run_bounded(hosts: Sequence[Host], work: Callable[[Host], R], width: int, name: str, *,
                on_interrupt: Callable[[], None], not_started: Callable[[Host], R],
                drain_timeout: float | None = None,
                on_drain_error: Callable[[Host, Exception], R] | None = None,
                on_error: Callable[[Host, Exception], R] | None = None) -> tuple[dict[str, R], bool]:
    """Run ``work`` on each host, at most ``width`` at once. Returns (results by host name, interrupted).

    On Ctrl-C: ``on_interrupt()`` (stop in-flight work), hosts not yet started get
    ``not_started(host)``, and in-flight hosts are waited for (``drain_timeout``); an error
    while draining becomes ``on_drain_error(host, exc)`` (or is raised without one).
    """
    results: dict[str, R] = {}
    interrupted = False
    pool, futs = _start(hosts, work, width, name)
    try:
        pending = set(futs)
        first_error: Exception | None = None
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            for f in done:
                try:
                    results[futs[f].name] = f.result()
                except Exception as exc:  # noqa: BLE001 - one host's failure is that host's result
                    if on_error is None:
                        first_error = first_error or exc
                    else:
                        results[futs[f].name] = on_error(futs[f], exc)
        if first_error is not None:
            raise first_error
    except KeyboardInterrupt:
        interrupted = True
        on_interrupt()
        for f, h in futs.items():
            if f.cancel():
                results[h.name] = not_started(h)
        for f, h in futs.items():
            if h.name not in results:
                try:
                    results[h.name] = f.result(timeout=drain_timeout)
                except Exception as exc:  # noqa: BLE001 - handed to the caller's policy
                    if on_drain_error is None:
                        raise
                    results[h.name] = on_drain_error(h, exc)
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        else:
            for f in futs:
                f.cancel()  # lanes take no host whose future is cancelled
    return results, interrupted


# A long-lived process (``fleet serve``) keeps its worker threads between runs: starting 50
# threads costs a run a few ms each on a loaded machine. ``keep_threads()`` turns it on.
_lanes: ThreadPoolExecutor | None = None


def keep_threads(size: int = 512) -> None:
    """Reuse worker threads across runs in this process (a run still has at most its width)."""
    global _lanes
    if _lanes is None:
        _lanes = ThreadPoolExecutor(max_workers=size, thread_name_prefix="fleet-lane")


def _start(hosts: Sequence[Host], work: Callable[[Host], R], width: int,
           name: str) -> tuple[ThreadPoolExecutor | None, dict[Future, Host]]:
    """Start the run: a pool of its own, or ``width`` lanes on the kept threads, each taking
    the next host whose future is not cancelled. Each host's future."""
    if _lanes is None:
        pool = ThreadPoolExecutor(max_workers=max(1, min(width, len(hosts) or 1)), thread_name_prefix=name)
        return pool, {pool.submit(work, h): h for h in hosts}
    futs: dict[Future, Host] = {Future(): h for h in hosts}
    queue = list(futs.items())
    lock = threading.Lock()

    def lane() -> None:
        while True:
            with lock:
                if not queue:
                    return
                f, h = queue.pop(0)
            if not f.set_running_or_notify_cancel():
                continue
            try:
                f.set_result(work(h))
            except BaseException as exc:  # noqa: BLE001 - the host's outcome, as a pool's future holds it
                f.set_exception(exc)
    for _ in range(max(1, min(width, len(hosts)))):
        _lanes.submit(lane)
    return None, futs


_pools: dict[str, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def shared_pool(name: str, size: int) -> ThreadPoolExecutor:
    """The process's background pool ``name`` of ``size`` threads, made on first use."""
    with _pools_lock:
        pool = _pools.get(name)
        if pool is None:
            pool = _pools[name] = ThreadPoolExecutor(max_workers=size, thread_name_prefix=name)
        return pool


def call_with_timeout(fn: Callable[..., R], *args: Any, timeout: float, **kwargs: Any) -> R:
    """``fn(*args, **kwargs)``, or :class:`TimeoutError` after ``timeout`` seconds (the call is
    left to finish on its own). Blocking calls that take no timeout of their own (getaddrinfo)
    run on a small helper pool, so the caller can stop waiting."""
    fut = shared_pool("fleet-helper", 16).submit(fn, *args, **kwargs)
    try:
        return fut.result(timeout=timeout)
    except FutureTimeout:
        raise TimeoutError(f"no answer in {timeout:g}s") from None

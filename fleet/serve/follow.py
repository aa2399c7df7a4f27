"""Every open dispatch, followed to its end by the service, whichever face sent it.

Open dispatches come from the journal (a ``dispatch_requested`` whose hosts have not all ended),
so a service that starts after ``kill -9`` or a reboot picks up every one still open. Following
one is :meth:`fleet.app.Fleet.wait`: needs-input, stuck, errors and the end are journaled (and so
posted to the dispatch's Slack thread) once. Once, also when a ``dispatch`` or ``wait`` process
follows the same agent at the same time: the service journals a needs-input or an end only after
a short grace, under a lock, when nobody else journaled it meanwhile (:class:`OnceTrail`).
A ``--no-wait`` canary dispatch stays open while its other hosts wait for the canary: following
it sends them the task once the canary's agent succeeded (:mod:`fleet.ops.canary_rest`).
"""
from __future__ import annotations

import fcntl
import os
import queue
import threading
import time
from typing import Any, Callable

from fleet.audit.journal import ENDS, host_ended
from fleet.audit.tail import tail_of
from fleet.ops.canary_rest import GATE

WINDOW = 24 * 3600.0  # dispatches older than a day are not picked up again


def open_dispatches(events: list[dict[str, Any]], now: float | None = None) -> list[str]:
    """Dispatch ids, oldest first, whose hosts have not all ended (within :data:`WINDOW`)."""
    now = time.time() if now is None else now
    started: dict[str, set[str]] = {}
    ended: dict[str, set[str]] = {}
    for e in events:
        did = e.get("dispatch_id")
        if not did:
            continue
        op, host = e.get("operation", ""), e.get("host", "")
        if op == "dispatch_requested" and now - float(e.get("epoch") or 0) <= WINDOW:
            started.setdefault(did, set()).add(host)
        elif op == GATE and now - float(e.get("epoch") or 0) <= WINDOW:
            # a --no-wait canary dispatch: the rest wait for the canary, so it is open until each
            # of them was sent and ended, or was journaled not sent
            rest = str((e.get("detail") or {}).get("hosts") or "")
            started.setdefault(did, set()).update([host] + [h for h in rest.split(",") if h])
        elif host_ended(op, e.get("outcome", "")):
            ended.setdefault(did, set()).add(host)
    return [d for d, hosts in started.items() if not hosts <= ended.get(d, set())]


class OnceTrail:
    """An audit trail whose needs-input and end events are journaled once across processes: the
    service waits ``grace`` seconds (a live ``dispatch``/``wait`` journals its own at once), then,
    under a lock, journals only what the journal does not hold yet."""

    def __init__(self, trail: Any, lock_file: str, grace: float = 2.0) -> None:
        self._trail = trail
        self._lock_file = lock_file
        self.grace = grace

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trail, name)

    def record_now(self, operation: str, host: str | None, outcome: str, dispatch_id: str = "",
                   **detail: Any) -> dict[str, Any] | None:
        """Journal at once: for events already decided once elsewhere (the canary gate's, under
        its own lock)."""
        return self._trail.record(operation, host, outcome, dispatch_id, **detail)

    def _seen(self, operation: str, dispatch_id: str, detail: dict[str, Any], host: str = "") -> bool:
        sid = str(detail.get("session_id") or "")
        req = str(detail.get("request_id") or "")
        for e in tail_of(self._trail.journal.path).events():
            if e.get("dispatch_id") != dispatch_id or str((e.get("detail") or {}).get("session_id") or "") != sid:
                continue
            if host and e.get("host") and e.get("host") != host:
                continue  # two hosts that never got a session (sid '') end each on its own
            if operation in ENDS and host_ended(e.get("operation", ""), e.get("outcome", "")):
                return True
            if operation == "needs_input" and e.get("operation") == "needs_input" and \
                    str((e.get("detail") or {}).get("request_id") or "") == req:
                return True
        return False

    def record(self, operation: str, host: str | None, outcome: str, dispatch_id: str = "",
               **detail: Any) -> dict[str, Any] | None:
        """Journal one event; a needs-input or an end only if nobody journaled it meanwhile."""
        if operation not in ENDS and operation != "needs_input":
            return self._trail.record(operation, host, outcome, dispatch_id, **detail)
        time.sleep(self.grace)
        with open(self._lock_file, "a") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            try:
                if self._seen(operation, dispatch_id, detail, host or ""):
                    return None
                return self._trail.record(operation, host, outcome, dispatch_id, **detail)
            finally:
                fcntl.flock(lk, fcntl.LOCK_UN)


class Follower:
    """Finds open dispatches in the journal every ``interval`` seconds and follows each one on a
    thread of its own until it ends (or its wait times out: then it is picked up again)."""

    def __init__(self, journal: str, follow: Callable[[str], Any], interval: float = 3.0,
                 may_act: Callable[[], bool] | None = None) -> None:
        self.journal = journal
        self.may_act = may_act or (lambda: True)  # only the orchestrator lease's holder follows
        self._follow = follow
        self.interval = interval
        self.following: dict[str, float] = {}
        self.rested: dict[str, float] = {}  # when each dispatch's last follow ended
        self.rest = 30.0  # a follow that ended with the dispatch still open is retried after this
        # a follow that failed (e.g. picked up before the dispatch wrote its session records) is
        # retried sooner: after interval, 2x, 4x ... up to rest
        self.failures: dict[str, int] = {}
        self.followed_total = 0
        self.errors: list[str] = []
        self._waiting: dict[str, list[queue.Queue[tuple[Any, ...]]]] = {}  # faces waiting on a dispatch (wait)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Follower:
        self._thread = threading.Thread(target=self._run, name="fleet-follower", daemon=True)
        self._thread.start()
        return self

    def scan(self) -> list[str]:
        """Start following every open dispatch not followed yet; returns the ones started."""
        if not os.path.exists(self.journal) or not self.may_act():
            return []
        started = []
        for did in open_dispatches(tail_of(self.journal).events()):
            with self._lock:
                if did in self.following or time.time() - self.rested.get(did, 0.0) < self.rest:
                    continue
                self.following[did] = time.time()
                self.followed_total += 1
            threading.Thread(target=self._one, args=(did,), name=f"fleet-follow-{did}", daemon=True).start()
            started.append(did)
        return started

    def _one(self, did: str) -> None:
        failed = False
        run: Any = None
        try:
            run = self._follow(did)
        except Exception as exc:  # noqa: BLE001 - one dispatch's trouble never stops the others
            self.errors.append(f"{did}: {type(exc).__name__}: {exc}")
            failed = True
        finally:
            with self._lock:
                self.following.pop(did, None)
                for q in self._waiting.pop(did, []):  # a face's wait: the run, or None (it waits itself)
                    q.put(("done", run.to_dict() if hasattr(run, "to_dict") else None))
                n = self.failures.get(did, 0) + 1 if failed else 0
                self.failures[did] = n
                # rested such that it is picked up again after min(rest, interval * 2**(n-1))
                wait = min(self.rest, self.interval * 2 ** (n - 1)) if n else self.rest
                self.rested[did] = time.time() - self.rest + wait

    def waiting(self) -> dict[str, int]:
        """How many faces wait on each dispatch the service follows (``fleet wait``)."""
        with self._lock:
            return {d: len(qs) for d, qs in self._waiting.items() if qs}

    def relay(self, did: str) -> Callable[[str, str, str], None]:
        """The live-event hook of ``did``'s follow: each event goes to the faces waiting on it."""
        def on_event(host: str, kind: str, text: str) -> None:
            with self._lock:
                qs = list(self._waiting.get(did, ()))
            for q in qs:
                q.put(("live", host, kind, text))
        return on_event

    def answer_wait(self, req: dict[str, Any], send: Callable[[dict[str, Any]], None], rfile: Any) -> None:
        """``{"op": "wait", "dispatch_id": ID}``: ``following``, then ``live`` events (host, kind,
        text) as the service's follow sees them, then ``done`` with its run (``run`` None: the
        follow failed, the face waits itself). ``fallback`` when the service does not follow it
        (not open in its journal, or it stands by)."""
        did = str(req.get("dispatch_id") or "")
        q: queue.Queue[tuple[Any, ...]] = queue.Queue()
        with self._lock:
            self._waiting.setdefault(did, []).append(q)
        if did not in self.following:
            with self._lock:  # picked up now, as the next scan would, when it is open
                self.rested.pop(did, None)
            self.scan()
        with self._lock:
            if did not in self.following and q.empty():
                self._waiting.get(did, []).remove(q)
                send({"event": "fallback"})
                return
        send({"event": "following"})

        def client() -> None:  # the face sends nothing more: the end of its stream is the face gone
            rfile.readline()
            q.put(("gone",))
        threading.Thread(target=client, name="fleet-wait-client", daemon=True).start()
        while True:
            item = q.get()
            if item[0] == "gone":
                with self._lock:
                    if q in self._waiting.get(did, []):
                        self._waiting[did].remove(q)
                return
            if item[0] == "live":
                send({"event": "live", "host": item[1], "kind": item[2], "text": item[3]})
            else:
                send({"event": "done", "run": item[1]})
                return

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.scan()
            except Exception as exc:  # noqa: BLE001 - a torn journal line must not end the service
                self.errors.append(f"scan: {type(exc).__name__}: {exc}")
            self._stop.wait(self.interval)

    def close(self) -> None:
        self._stop.set()


def service_follows(journal: str) -> str | None:
    """Who follows a dispatch made now, if the service does: it runs for this state directory,
    is this fleet's version and acts (holds the orchestrator lease, or needs none). Else None."""
    from fleet.serve import client

    ev = client.status(journal)
    if not ev or ev.get("event") != "done":
        return None  # none runs, or another version (its follower may not know the canary gate)
    st = ev.get("status") or {}
    lease = st.get("lease")
    if isinstance(lease, dict) and not lease.get("mine"):
        return None  # standing by: the orchestrator that acts reads another journal
    return f"the service (fleet serve, pid {st.get('pid')})"

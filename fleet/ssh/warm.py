"""Warm SSH connections for a long-lived process (``fleet mcp``, the :class:`~fleet.api.Fleet` object).

A connection that finished its command is kept, authenticated, for ``idle`` seconds and handed
to the next command for the same host and target: no new handshake. One command at a time per
connection. A kept connection found dead is dropped and the host is dialled again, once, before
the command starts (never after: a command that started is never repeated). Every new
connection is checked against known_hosts as always; kept ones were checked when made.

A kept connection also gets a session channel opened ahead (a *spare*, in the background, as
soon as it is given back), so its next command sends only its exec request: one round trip
less per command, what a ControlMaster's client pays for opening its channel.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

from fleet.ssh.session import SSHSession

# paramiko wakes every transport's thread every 0.1 s (its socket timeout) to see whether it is
# still wanted: 50 kept connections cost 2% of a core doing nothing. A kept connection is
# checked every IDLE_CHECK s instead, and back to paramiko's own 0.1 s when it is used again.
# (Closing does not wait for the check: paramiko closes the socket under the thread.)
IDLE_CHECK = 5.0
BUSY_CHECK = 0.1


def _set_check(sess: SSHSession, seconds: float) -> None:
    for conn in list(sess.conns):
        t = conn.client.get_transport()
        sock = getattr(t, "sock", None)
        if sock is not None:
            try:
                sock.settimeout(seconds)
            except (OSError, AttributeError):
                pass


def open_spare_soon(sess: SSHSession) -> None:
    """Open ``sess``'s next command's channel in the background (a pool of its own: opening 50 at
    a high RTT never holds up the helper pool's lookups; 64 threads, so the spares of a fanout at
    the default concurrency (32) are all asked for at once: one round trip, where 8 threads took
    ceil(N/8)). A command that comes meanwhile waits for its spare (``sess.due``)."""
    from fleet.workers import shared_pool

    sess.due.clear()
    try:
        shared_pool("fleet-spare", 64).submit(sess.prepare)
    except RuntimeError:  # the pool is shut down (the process exits): no spare comes, none is waited for
        sess.due.set()


class ConnectionPool:
    """Authenticated :class:`SSHSession` objects by host and target, closed after ``idle`` seconds."""

    def __init__(self, idle: float = 600.0) -> None:
        self.idle = idle
        self._free: dict[tuple, list[tuple[SSHSession, float]]] = {}
        self._lock = threading.Lock()
        self.spares = True  # open the next command's channel ahead on each kept connection
        self.dials = 0   # new connections made through the pool (for tests and benchmarks)
        self.reused = 0
        self._held = 0   # calls in spares_after(): spares wait for the last of them to end
        self._later: list[SSHSession] = []

    @staticmethod
    def key(sess_or_host: Any, target: Any = None) -> tuple:
        host = getattr(sess_or_host, "host", sess_or_host)
        tgt = target if target is not None else getattr(sess_or_host, "target", None)
        return (host.name, repr(tgt))

    def take(self, host: Any, target: Any) -> SSHSession | None:
        """A live kept connection for ``host``/``target``, or None. Dead or stale ones are closed."""
        now = time.monotonic()
        with self._lock:
            free = self._free.get(self.key(host, target), [])
            while free:
                sess, since = free.pop()
                t = sess.conn.client.get_transport() if sess.conn else None
                if now - since <= self.idle and t is not None and t.is_active():
                    self.reused += 1
                    sess._closed.clear()  # noqa: SLF001 - back in use
                    _set_check(sess, BUSY_CHECK)
                    return sess
                sess.close()
        return None

    def give(self, sess: SSHSession) -> None:
        """Keep ``sess`` for the next command (closes what has idled too long)."""
        now = time.monotonic()
        _set_check(sess, IDLE_CHECK)
        with self._lock:
            later = self.spares and self._held > 0
            if later:
                self._later.append(sess)
        if self.spares and not later:
            open_spare_soon(sess)
        with self._lock:
            self._free.setdefault(self.key(sess), []).append((sess, now))
            for k, lst in self._free.items():
                keep = []
                for s, since in lst:
                    if now - since > self.idle:
                        s.close()
                    else:
                        keep.append((s, since))
                self._free[k] = keep

    @contextmanager
    def spares_after(self) -> Iterator[None]:
        """The spares of the connections given back meanwhile are opened when this ends, not while
        the call's other hosts still run: a served call (fleet.serve.server) holds them until its
        client has its exit status. Opening a channel costs CPU the call's last hosts wait for
        (~3 ms of a 10-host call on a 2-core machine); the next call finds them open all the same.
        A connection used again before then opens its own channel, as without spares; its spare
        opening now is no harm (``prepare`` opens none on a closed one, nor a second one)."""
        with self._lock:
            self._held += 1
        try:
            yield
        finally:
            with self._lock:
                self._held -= 1
                later, self._later = (self._later, []) if self._held == 0 else ([], self._later)
            for sess in later:
                open_spare_soon(sess)

    def close(self) -> None:
        """Close every kept connection."""
        with self._lock:
            for lst in self._free.values():
                for s, _ in lst:
                    s.close()
            self._free.clear()

    def __len__(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._free.values())


__all__ = ["ConnectionPool"]

"""One orchestrator at a time (the seed's rule): of the services that see the same dispatches,
only the holder of the orchestrator lease follows them, journals their ends and answers Slack;
the others stand by with their warm connections and take over when the holder is gone past the
lease's expiry.

The lease is a small JSON file in a directory every orchestrator's machine sees (the ``lease``
setting: a path on a shared or synced filesystem), changed only under a lock on a file beside it:
``{"holder": "machine:pid", "since": ..., "expires": ...}``, renewed while its holder runs. A
filesystem whose locks do not reach across machines (some network mounts) cannot keep two
holders apart: put the lease where ``flock`` holds (a local disk shared by users of one host, or
a cluster filesystem with working locks).
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from typing import Any

from fleet.files import write_atomic

TTL = 30.0  # seconds a lease lasts without renewal (the lease_ttl setting); renewed every third of it


def me() -> str:
    """This service's name in the lease: the machine (``FLEET_MACHINE`` or the host name) and pid."""
    return f"{os.environ.get('FLEET_MACHINE') or socket.gethostname()}:{os.getpid()}"


class Lease:
    """The orchestrator lease at ``path`` for ``holder``."""

    def __init__(self, path: str, holder: str | None = None, ttl: float = TTL) -> None:
        self.path = os.path.abspath(os.path.expanduser(path))
        self.holder = holder or me()
        self.ttl = ttl

    def read(self) -> dict[str, Any] | None:
        """The lease as it stands (holder, since, expires), or None when nobody ever held it."""
        try:
            with open(self.path, encoding="utf-8") as f:
                doc = json.load(f)
            return doc if isinstance(doc, dict) else None
        except (OSError, ValueError):
            return None

    def try_hold(self, now: float | None = None) -> bool:
        """Take or renew the lease; True when this service holds it now."""
        now = time.time() if now is None else now
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(self.path + ".lock", "a") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            try:
                cur = self.read()
                if cur and cur.get("holder") != self.holder and float(cur.get("expires") or 0) > now:
                    return False
                since = cur["since"] if cur and cur.get("holder") == self.holder else now
                write_atomic(self.path, json.dumps({"holder": self.holder, "since": since,
                                                    "expires": now + self.ttl}), 0o644)
                return True
            finally:
                fcntl.flock(lk, fcntl.LOCK_UN)

    def release(self) -> None:
        """Give the lease up (a service that stops cleanly), so another takes over at once."""
        with open(self.path + ".lock", "a") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            try:
                cur = self.read()
                if cur and cur.get("holder") == self.holder:
                    write_atomic(self.path, json.dumps({**cur, "expires": 0}), 0o644)
            finally:
                fcntl.flock(lk, fcntl.LOCK_UN)

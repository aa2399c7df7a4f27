"""The sessions fleet created, kept locally (``sessions.jsonl`` beside the journal): a locked,
fsynced append-only file, so ``sessions`` can mark fleet's own and ``teardown`` knows what to delete."""
from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from fleet.files import append_line, locked, write_atomic, writing


def new_dispatch_id() -> str:
    """A short id grouping every event of one dispatch (one Slack thread)."""
    return "dx-" + time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


class SessionRecords:
    """The sessions fleet created (teardown deletes only these). JSON Lines under a lock."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(os.path.expanduser(str(path)))

    def _locked(self):
        return locked(self.path.with_suffix(""), ".lock")

    def add(self, rec: dict[str, Any]) -> None:
        """Append one record (fsynced)."""
        with writing("the session records", self.path, "journal"), self._locked():
            append_line(self.path, json.dumps(rec, sort_keys=True) + "\n")

    def all(self) -> list[dict[str, Any]]:
        """Every record (torn lines skipped)."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        out = []
        for ln in lines:
            try:
                out.append(json.loads(ln))
            except ValueError:
                continue
        return out

    def for_host(self, host: str) -> list[dict[str, Any]]:
        """Records of one host."""
        return [r for r in self.all() if r.get("host") == host]

    def find(self, host: str, sid: str) -> dict[str, Any] | None:
        """The record of one session, if fleet created it."""
        for r in self.for_host(host):
            if r.get("session_id") == sid:
                return r
        return None

    def remove(self, host: str, sids: set[str]) -> None:
        """Drop records (atomic rewrite under the lock)."""
        with writing("the session records", self.path, "journal"), self._locked():
            keep = [r for r in self.all() if not (r.get("host") == host and r.get("session_id") in sids)]
            write_atomic(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in keep))

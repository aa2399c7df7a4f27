"""Beads (``bd`` CLI) claims, coded to contracts-beads.md: atomic claim, session metadata, block.

Claims use bd's compare-and-swap (``bd --actor HOST update ID --claim --json``), never a
read-then-write. Every reply is checked: arrays for show/update, exit 1 with stderr text
for refusals, and the returned id must equal the one asked for (bd resolves partial ids).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from typing import Any

from fleet.errors import AlreadyClaimed, BeadsError  # noqa: F401 - re-exported where they were defined

_CLAIMED_BY = re.compile(r"already claimed by (.+)$")
_NOT_CLAIMABLE = re.compile(r"not claimable: status (\S+)")


class Beads:
    """A subprocess client for ``bd``. ``cwd`` is where bd finds its ``.beads`` database."""

    def __init__(self, bd: str | None = None, cwd: str | None = None, timeout: float = 30.0) -> None:
        self.bd = bd or os.environ.get("FLEET_BD") or shutil.which("bd")
        self.cwd = cwd
        self.timeout = timeout

    def _run(self, args: list[str], actor: str | None = None) -> tuple[int, str, str]:
        if not self.bd:
            raise BeadsError("the Beads CLI 'bd' is not installed (not on PATH): install it "
                             "(https://github.com/steveyegge/beads) or leave out --issue")
        cmd = [self.bd] + (["--actor", actor] if actor else []) + args
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout, cwd=self.cwd,
                               stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise BeadsError(f"the Beads CLI '{self.bd}' cannot be run: is it installed?") from None
        except subprocess.TimeoutExpired:
            raise BeadsError(f"bd {' '.join(args[:2])} did not answer within {self.timeout:g}s") from None
        return p.returncode, p.stdout, p.stderr

    def _fail(self, what: str, issue: str, out: str, err: str) -> BeadsError:
        text = (err.strip() or out.strip()).splitlines()
        first = text[0] if text else "no output"
        if "no beads database found" in (err + out) or "Database not initialized" in (err + out):
            return BeadsError(f"Beads is not initialised here (bd: {first}): run 'bd init' in the repo, or set "
                              f"BEADS_DIR to its .beads directory")
        if "no issue found" in (err + out) or "no issues found" in (err + out):
            return BeadsError(f"Beads issue {issue} does not exist (bd: {first}): check the id with 'bd list'")
        if "ambiguous ID" in (err + out):
            return BeadsError(f"Beads id {issue} is ambiguous (bd: {first}): give the full id")
        try:
            doc = json.loads(out)
            if isinstance(doc, dict) and doc.get("error"):
                first = str(doc["error"])
        except ValueError:
            pass
        return BeadsError(f"bd {what} {issue} failed: {first}")

    def _array(self, what: str, issue: str, out: str) -> dict[str, Any]:
        try:
            doc = json.loads(out)
        except ValueError:
            raise BeadsError(f"bd {what} {issue} did not answer JSON (got {out.strip()[:80]!r}): is this "
                             f"bd >= 1.0 with --json?") from None
        if isinstance(doc, dict) and isinstance(doc.get("data"), list):  # BD_JSON_ENVELOPE=1
            doc = doc["data"]
        if not isinstance(doc, list) or not doc or not isinstance(doc[0], dict):
            raise BeadsError(f"bd {what} {issue} answered an unexpected shape: {out.strip()[:80]!r}")
        item = doc[0]
        if item.get("id") != issue:
            raise BeadsError(f"bd resolved '{issue}' to a different issue '{item.get('id')}' (partial id match): "
                             f"give the full id")
        return item

    def show(self, issue: str) -> dict[str, Any]:
        """``bd show ID --json`` -> the issue (exact id only)."""
        code, out, err = self._run(["show", issue, "--json"])
        if code != 0:
            raise self._fail("show", issue, out, err)
        return self._array("show", issue, out)

    def check_claimable(self, issue: str, host: str) -> dict[str, Any]:
        """Before any session exists: the issue exists and is free or already ours."""
        item = self.show(issue)
        holder = item.get("assignee") or ""
        if holder and holder != host:
            raise AlreadyClaimed(issue, holder, host)
        status = item.get("status", "open")
        if status not in ("open",) and not (status == "in_progress" and holder == host):
            raise BeadsError(f"Beads issue {issue} is '{status}', not open: it cannot be claimed "
                             f"(reopen it with 'bd update {issue} --status open')")
        return item

    def claim(self, issue: str, host: str) -> dict[str, Any]:
        """Atomic claim for ``host`` (re-claiming one's own is fine), then the issue read again:
        a claim answered with our name while another actor holds the issue (a bd that resolved a
        race the other way, a sync from another clone) is refused, not trusted."""
        self.check_claimable(issue, host)
        code, out, err = self._run(["update", issue, "--claim", "--json"], actor=host)
        if code != 0:
            m = _CLAIMED_BY.search(err.strip())
            if m:
                raise AlreadyClaimed(issue, m.group(1).strip(), host)
            raise self._fail("claim", issue, out, err)
        item = self._array("update --claim", issue, out)
        if item.get("assignee") != host:
            raise AlreadyClaimed(issue, item.get("assignee") or "someone else", host)
        now = self.show(issue)
        if (now.get("assignee") or "") != host:
            raise AlreadyClaimed(issue, now.get("assignee") or "nobody (the claim did not hold)", host)
        return now

    def release(self, issue: str, host: str) -> None:
        """Undo our claim (the session could not be created)."""
        code, out, err = self._run(["update", issue, "--assignee", "", "--status", "open", "--json"], actor=host)
        if code != 0:
            raise self._fail("release", issue, out, err)

    def record_session(self, issue: str, host: str, session_id: str, worktree: str | None = None) -> None:
        """Store the OpenCode session, host and worktree (the seed's Session Tracking) on the issue."""
        extra = ["--set-metadata", f"worktree={worktree}"] if worktree else []
        code, out, err = self._run(["update", issue, "--set-metadata", f"session_id={session_id}",
                                    "--set-metadata", f"fleet_host={host}", *extra, "--json"], actor=host)
        if code != 0:
            raise self._fail("update", issue, out, err)
        self._array("update", issue, out)

    def block(self, issue: str, host: str, note: str) -> None:
        """Mark the issue blocked with a note saying who aborted and why."""
        code, out, err = self._run(["update", issue, "--status", "blocked", "--append-notes", note, "--json"],
                                   actor=host)
        if code != 0:
            raise self._fail("update", issue, out, err)
        self._array("update", issue, out)

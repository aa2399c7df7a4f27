"""What one agent turn changed: the files (with lines added and removed) and the todo list.

The answer alone does not say what an agent did, so every followed turn is reviewed, and the
journal (and so Slack) and the terminal report sum the files up in the same words. Light on
purpose (no HTTP library): the renderer imports :func:`files_summary` from here.
"""
from __future__ import annotations

import time
from typing import Any

from fleet.errors import OpenCodeError


def review(oc: Any, sid: str, before: int) -> tuple[tuple[dict[str, Any], ...], tuple[dict[str, Any], ...]]:
    """(files, todo): what the turn that began at message ``before`` changed (each file with its
    additions, deletions and status), and the session's todo list. Empty if the server says
    nothing (or cannot): a review never fails the turn it describes."""
    files: list[dict[str, Any]] = []
    todo: list[dict[str, Any]] = []
    try:
        msgs = oc.messages(sid)
        mid = (msgs[before].get("info") or {}).get("id") if len(msgs) > before else None

        def diff() -> list[dict[str, Any]]:
            return [{"file": d.get("file", ""), "additions": int(d.get("additions") or 0),
                     "deletions": int(d.get("deletions") or 0), "status": d.get("status", "")}
                    for d in (oc.diff(sid, mid) if hasattr(oc, "diff") else [])]
        files = diff()
        # the server works the turn's diff out after the turn has ended: a busy one may not have it
        # yet when the turn's patch parts say files changed; ask again for a moment
        deadline = time.monotonic() + PATCH_WAIT
        while not files and _patched(msgs[before:]) and time.monotonic() < deadline:
            time.sleep(0.2)
            files = diff()
        todo = [{"content": t.get("content", ""), "status": t.get("status", "")}
                for t in (oc.todo(sid) if hasattr(oc, "todo") else [])]
    except (OpenCodeError, ValueError, TypeError):
        pass
    return tuple(files), tuple(todo)


PATCH_WAIT = 5.0  # seconds a turn whose patch parts name files waits for the server's diff of it


def _patched(msgs: list[dict[str, Any]]) -> bool:
    """Whether these messages hold a ``patch`` part naming files (the turn changed some)."""
    return any(p.get("type") == "patch" and p.get("files") for m in msgs for p in (m.get("parts") or ()))


def files_summary(files: Any) -> str:
    """``3 files +12 -4`` for what an agent changed (empty when nothing): one wording for the
    journal (and so Slack) and the terminal report."""
    if not files:
        return ""
    return (f"{len(files)} file{'s' if len(files) != 1 else ''} +{sum(f['additions'] for f in files)} "
            f"-{sum(f['deletions'] for f in files)}")


__all__ = ["files_summary", "review"]

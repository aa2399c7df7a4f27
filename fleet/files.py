"""Local files fleet keeps for the user: one helper for each rule they share.

- :func:`locked`: an exclusive lock (``flock`` on ``<path><suffix>``) across threads and processes;
- :func:`append_line`: append one line to an owner-only file and fsync before returning;
- :func:`loose_mode`: the 0600 rule for secrets (passwords, keys, the token secret).
"""
from __future__ import annotations

import fcntl
import os
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def locked(path: Path, suffix: str = ".lock") -> Iterator[None]:
    """Hold an exclusive lock tied to ``path`` (the parent directory is made 0700 if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(str(path) + suffix, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def append_line(path: Path, line: str) -> None:
    """Append ``line`` (with its newline) to ``path`` (created 0600) and fsync before returning."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def loose_mode(path: str | os.PathLike[str]) -> int | None:
    """The file's mode if others (group or world) may read or write it, else None. Raises OSError."""
    m = os.stat(path).st_mode
    return stat.S_IMODE(m) if m & (stat.S_IRWXG | stat.S_IRWXO) else None


__all__ = ["append_line", "locked", "loose_mode"]

"""Local files fleet keeps for the user: one helper for each rule they share.

- :func:`locked`: an exclusive lock (``flock`` on ``<path><suffix>``) across threads and processes;
- :func:`append_line`: append one line to an owner-only file and fsync before returning;
- :func:`write_atomic`: replace a file whole (a temporary beside it, fsynced, renamed over it):
  a reader sees the old file or the new one, never half of one;
- :func:`loose_mode`: the 0600 rule for secrets (passwords, keys, the token secret);
- :func:`writing` and :func:`ensure_writable`: a file fleet must keep that cannot be written (disk
  full, read-only, a path through a file) is a :class:`~fleet.errors.StorageError` naming the path
  and what to do, never a bare ``OSError``; checked before anything is sent that must be recorded.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from fleet.errors import StorageError


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


def write_atomic(path: str | os.PathLike[str], text: str, mode: int = 0o600, sync: bool = True) -> None:
    """Write ``text`` to ``path`` atomically, the file created with ``mode`` (0600 by default);
    synced to the disk before it replaces the old one unless ``sync`` is False (a file that is
    replaced again soon, where the old or the new one after a crash are both right)."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, p)
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def loose_mode(path: str | os.PathLike[str]) -> int | None:
    """The file's mode if others (group or world) may read or write it, else None. Raises OSError."""
    m = os.stat(path).st_mode
    return stat.S_IMODE(m) if m & (stat.S_IRWXG | stat.S_IRWXO) else None


def storage_error(exc: OSError, what: str, path: str | os.PathLike[str] | None = None,
                  setting: str | None = None) -> StorageError:
    """``exc`` (raised writing ``what`` at ``path``) as one line: the path, why, and what to do."""
    where = str(path if path is not None else (exc.filename or ""))
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        todo = "free some space on that disk"
    elif exc.errno == errno.EROFS:
        todo = "that file system is read-only: use a writable place"
    elif exc.errno in (errno.ENOTDIR, errno.EISDIR, errno.ENOENT):
        todo = "a part of that path is not a directory: use a directory path"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        todo = "you may not write there: fix its permissions or use another place"
    else:
        todo = "fix that path"
    if setting:
        todo += f" (or set 'fleet.{setting}', ${'INVOKE_FLEET_' + setting.upper()}, to another place)"
    why = exc.strerror or type(exc).__name__
    return StorageError(f"cannot write {what} {where}: {why}: {todo}, then run it again", where)


@contextmanager
def writing(what: str, path: str | os.PathLike[str], setting: str | None = None) -> Iterator[None]:
    """Turn an ``OSError`` while writing ``what`` at ``path`` into a :class:`StorageError`."""
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        raise storage_error(exc, what, path, setting) from None


def ensure_writable(directory: str | os.PathLike[str], what: str, setting: str | None = None) -> Path:
    """Make ``directory`` (0700 where it is new) and prove a file can be written in it, before
    anything is sent that must be recorded there. Returns it; raises :class:`StorageError`.

    A page is written (a full disk, a quota, a read-only mount or a missing permission refuses
    it: ext4, XFS, btrfs and tmpfs reserve the blocks at ``write``) and the free space is read,
    but nothing is synced: a sync here waited for the disk on every run, and the records that
    must survive a crash (the journal, the run's summary) sync themselves."""
    d = Path(os.path.expanduser(str(directory)))
    with writing(what, d, setting):
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = os.statvfs(d)
        if st.f_bavail * st.f_frsize < _PAGE and st.f_blocks:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(d))
        probe = d / f".fleet-write-check.{os.getpid()}.{threading.get_ident()}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"fleet write check\n" * (_PAGE // 18 + 1))  # a page's worth
        finally:
            os.close(fd)
            try:
                os.unlink(probe)
            except OSError:
                pass
    return d


_PAGE = 4096


__all__ = ["append_line", "ensure_writable", "locked", "loose_mode", "storage_error", "writing"]

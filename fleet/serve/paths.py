"""Where the service of a state directory lives: a 0700 directory holding its socket (0600),
its lock and a small JSON note (pid, version, since). One service per user and state directory:
the directory of the journal setting, so a test's (or another profile's) state has its own."""
from __future__ import annotations

import os

TYPE_CHECKING = False  # imported by the thin client (fleet.cli.entry): no typing at start
if TYPE_CHECKING:
    from typing import Any


def run_dir(journal: str) -> str:
    """``<state dir>/run`` for the journal's state directory (made 0700 when missing)."""
    d = os.path.join(os.path.dirname(os.path.abspath(os.path.expanduser(journal))), "run")
    return d


def ensure_run_dir(journal: str) -> str:
    """The run directory, made owner-only (0700) if missing, refused if someone else can enter it."""
    from fleet.errors import Refused

    d = run_dir(journal)
    os.makedirs(d, mode=0o700, exist_ok=True)
    st = os.stat(d)
    if st.st_uid != os.getuid():
        raise Refused(f"{d} belongs to another user: the service's directory must be yours alone")
    if st.st_mode & 0o077:
        os.chmod(d, 0o700)
    return d


def socket_path(journal: str) -> str:
    """The service's Unix socket."""
    return os.path.join(run_dir(journal), "fleet.sock")


def lock_path(journal: str) -> str:
    """The lock the one service of this state directory holds while it runs."""
    return os.path.join(run_dir(journal), "serve.lock")


def info_path(journal: str) -> str:
    """The running service's note: pid, version, since, socket."""
    return os.path.join(run_dir(journal), "serve.json")


def read_info(journal: str) -> dict[str, Any] | None:
    """The running service's note, or None."""
    from fleet.serve import wire

    try:
        with open(info_path(journal), encoding="utf-8") as f:
            data = wire.loads(f.read())
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None

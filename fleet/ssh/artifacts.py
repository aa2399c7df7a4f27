"""The artifacts folder: one directory per run, ``latest`` pointing at the newest, old runs pruned,
and the last run's failures for ``--retry-failed`` (Ansible's retry list)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from fleet.errors import BadInput

LATEST = "latest"


def link_latest(base: Path, run_dir: Path) -> None:
    """Point ``base/latest`` at ``run_dir`` (atomically: a new link renamed over the old one)."""
    tmp = base / f".{LATEST}.{os.getpid()}"
    try:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(run_dir.name)
        os.replace(tmp, base / LATEST)
    except OSError:
        tmp.unlink(missing_ok=True)


def prune(base: Path, keep: int) -> list[str]:
    """Remove the oldest run folders beyond ``keep`` (0 keeps all); only folders fleet made
    (a ``summary.json`` inside, a run-id name), never ``latest``'s target. Returns what went."""
    if keep <= 0 or not base.is_dir():
        return []
    latest = (base / LATEST).resolve() if (base / LATEST).is_symlink() else None
    runs = sorted(p for p in base.iterdir()
                  if p.is_dir() and not p.is_symlink() and (p / "summary.json").exists() and p.name[:8].isdigit())
    gone = []
    for p in runs[:-keep]:
        if latest is not None and p.resolve() == latest:
            continue
        shutil.rmtree(p, ignore_errors=True)
        gone.append(p.name)
    return gone


def last_failed(artifacts_dir: str) -> tuple[str, list[str]]:
    """(command, hosts that did not succeed) of the last run, from ``latest/summary.json``."""
    p = Path(os.path.expanduser(artifacts_dir)) / LATEST / "summary.json"
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise BadInput(f"no last run to retry: {p} does not exist (run a fanout first)") from None
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot read the last run's summary {p}: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
        raise BadInput(f"{p} is not a fleet run summary")
    failed = [r["host"] for r in doc["results"] if isinstance(r, dict) and r.get("outcome") != "SUCCESS"
              and r.get("host") != "local"]
    if not failed:
        raise BadInput(f"the last run ({doc.get('run_id')}) had no failed hosts: nothing to retry")
    return str(doc.get("command") or ""), failed


__all__ = ["last_failed", "link_latest", "prune"]

"""The artifacts folder: one directory per run, ``latest`` pointing at the newest (from the moment
it starts), old runs pruned, and the last run's failures for ``--retry-failed`` (Ansible's retry
list), a run killed before it finished included."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
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
    # run ids sort by time; only the names past ``keep`` are looked at more closely
    names = sorted(e.name for e in os.scandir(base) if e.name[:8].isdigit() and e.is_dir(follow_symlinks=False))
    if len(names) <= keep:
        return []
    latest = (base / LATEST).resolve() if (base / LATEST).is_symlink() else None
    runs = [base / n for n in names]
    runs = [p for p in runs if (p / "summary.json").exists()]
    gone = []
    for p in runs[:-keep]:
        if latest is not None and p.resolve() == latest:
            continue
        shutil.rmtree(p, ignore_errors=True)
        gone.append(p.name)
    return gone


def prune_soon(base: Path, keep: int, later: bool) -> None:
    """:func:`prune` now, or ``later`` on a background thread: a long-lived caller (the service,
    a ``Fleet`` object with warm connections) answers first."""
    if not later:
        prune(base, keep)
        return
    from fleet.workers import shared_pool

    shared_pool("fleet-prune", 1).submit(prune, base, keep)


@dataclass(frozen=True)
class LastRun:
    """What ``--retry-failed`` reruns: the last run's command on its hosts that did not succeed."""

    run_id: str
    command: str
    hosts: list[str]
    note: str = ""  # said to the person before the rerun (e.g. the last run did not finish)


def _ended(log: Path) -> dict[str, str]:
    """Each host's end as ``fanout.log`` recorded it (success, failure, timeout...), last one wins."""
    from fleet.ssh.kvlog import parse_line

    ends = {"success", "failure", "timeout", "aborted", "preflight_failed"}
    out: dict[str, str] = {}
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return out
    for ln in lines:
        event, fields = parse_line(ln)
        if event in ends and fields.get("host"):
            out[fields["host"]] = event
    return out


def last_failed(artifacts_dir: str) -> LastRun:
    """The last run (``latest``, even one that never finished: killed, or the machine went down)
    and its hosts that did not succeed; for a run that did not finish, every planned host without
    a success in its ``fanout.log``. A command recorded redacted (it held a secret) is refused:
    rerunning it would send ``[redacted]``."""
    p = Path(os.path.expanduser(artifacts_dir)) / LATEST / "summary.json"
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise BadInput(f"no last run to retry: {p} does not exist (run a fanout first)") from None
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot read the last run's summary {p}: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
        raise BadInput(f"{p} is not a fleet run summary")
    run_id = str(doc.get("run_id") or "")
    if doc.get("operation", "fanout") != "fanout":
        raise BadInput(f"the last run ({run_id}) was a {doc.get('operation')}, not a fanout: nothing to retry "
                       f"with fanout --retry-failed; run that command again")
    if doc.get("command_redacted"):
        raise BadInput(f"the last run's command ({run_id}) held a secret, which fleet never writes to disk, so it "
                       f"cannot be sent again from {p}: run it again as fanout --hosts HOSTS \"COMMAND\"")
    note = ""
    if doc.get("finished") is False:
        ended = _ended(p.parent / "fanout.log")
        planned = [str(h) for h in doc.get("hosts") or () if h != "local"]
        failed = [h for h in planned if ended.get(h) != "success"]
        missing = [h for h in planned if h not in ended]
        note = (f"the last run ({run_id}) did not finish (killed, or the machine stopped): "
                f"{len(missing)} host(s) have no result" + (f" ({', '.join(missing)})" if missing else ""))
    else:
        failed = [r["host"] for r in doc["results"] if isinstance(r, dict) and r.get("outcome") != "SUCCESS"
                  and r.get("host") != "local"]
    if not failed:
        raise BadInput(f"the last run ({run_id}) had no failed hosts: nothing to retry")
    return LastRun(run_id, str(doc.get("command") or ""), failed, note)


__all__ = ["LastRun", "last_failed", "link_latest", "prune", "prune_soon"]

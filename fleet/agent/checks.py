"""Checks of one OpenCode server before a task is sent to it.

A task sent to a server fleet cannot follow, or for a directory the host does not have, is
accepted and then never answered (the agent idles with no reply): these refuse both up front,
with what to do. A client without the endpoint (a stand-in) is not checked.
"""
from __future__ import annotations

from typing import Any

from fleet.errors import BadInput, OpenCodeError
from fleet.inventory import Host

KNOWN_API_MAJOR = "1"  # the classic OpenCode HTTP API fleet speaks (contracts: 1.18 to 1.19)
TESTED_WITH = "1.18.33"


def version_problem(version: str) -> str:
    """Why fleet will not talk to an OpenCode server of ``version`` (empty: it will). OpenCode
    2.x drops session metadata, ``session.status``, todo and per-session permissions: misread
    halfway through a task, so refused up front, naming both versions."""
    major = version.strip().lstrip("v").split(".")[0]
    if not version or major == KNOWN_API_MAJOR:
        return ""
    return (f"OpenCode {version} speaks an API fleet does not know (fleet speaks {KNOWN_API_MAJOR}.x, "
            f"tested with {TESTED_WITH}): pin the server to {KNOWN_API_MAJOR}.x or update fleet")


def check_server(oc: Any, host: Host) -> None:
    """Healthy, and an API fleet knows: refuse a server of another major version up front, before
    a session exists, rather than misread its replies halfway through a task."""
    if not hasattr(oc, "health"):
        return
    h = oc.health()
    if not h.get("healthy", False):
        raise BadInput(f"{host.name}: the OpenCode server says it is not healthy; see its log")
    why = version_problem(str(h.get("version", "")))
    if why:
        raise BadInput(f"{host.name}: {why}")


def check_repo_dir(oc: Any, host: Host, directory: str) -> None:
    """Refuse a repo directory that is not on the host (else the agent idles with no reply),
    naming the repos the host has."""
    if not hasattr(oc, "list_dir"):
        return
    try:
        oc.list_dir(directory)
        return
    except OpenCodeError:
        pass
    parent = directory.rstrip("/").rsplit("/", 1)[0] or "/"
    try:
        have = sorted(e.get("name", "") for e in oc.list_dir(parent) if e.get("type") == "directory"
                      and not str(e.get("name", "")).startswith("."))
        where = f"; {parent} there holds: {', '.join(have) or 'no repos'}"
    except OpenCodeError:
        where = f"; {parent} is not there either"
    raise BadInput(f"{host.name}: repo directory {directory} does not exist on the host{where}. "
                   f"Check --repo and the inventory's repos for {host.name}")


__all__ = ["KNOWN_API_MAJOR", "TESTED_WITH", "check_repo_dir", "check_server", "version_problem"]

"""fleet: drive a fleet of machines that run AI coding agents.

The Python API (usable without Invoke)::

    from fleet import fanout_ssh, run_preflight_checks, PreflightStatus, FanoutOutcome

Names are imported lazily (PEP 562), so ``import fleet`` and ``inv --list`` stay fast; the
heavy libraries (Fabric, paramiko, httpx, slack-sdk) load on first use.
"""
from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (16 ms of every start)

__version__ = "0.2.0"

_EXPORTS: dict[str, str] = {
    "Fleet": "app", "ConnectionPool": "ssh.warm",
    # errors and exit statuses
    "BadInput": "errors", "FleetError": "errors", "InventoryError": "errors", "Refused": "errors",
    "SelectorError": "errors", "EXIT_BAD_INPUT": "errors", "EXIT_HOST_FAILED": "errors",
    "EXIT_INTERRUPTED": "errors", "EXIT_OK": "errors", "EXIT_REFUSED": "errors",
    # inventory and selection
    "Host": "inventory", "Inventory": "inventory", "OpenCodeEndpoint": "inventory", "SlackSettings": "inventory",
    "load_inventory": "inventory", "load_inventory_text": "inventory", "select": "inventory.select",
    "Settings": "settings",
    # preflight and fanout (the seed's names)
    "run_preflight_checks": "ssh.preflight", "preflight_many": "ssh.preflight",
    "fanout_ssh": "ssh.oneshot", "fanout_hosts": "ssh.runner", "FanoutOptions": "ssh.runner", "FanoutRunner": "ssh.runner",
    "CheckResult": "results", "FanoutOutcome": "results", "FanoutResult": "results", "FanoutRun": "results",
    "PreflightResult": "results", "PreflightStatus": "results",
    # modes and tokens
    "MODES": "safety.gate", "ConfirmationRequired": "safety.gate", "Plan": "safety.gate", "Operation": "safety.gate",
    "make_plan": "safety.gate", "resolve_mode": "safety.gate",
    "Scope": "safety.tokens", "TokenRefused": "safety.tokens", "TokenStore": "safety.tokens",
    # dispatch, audit, beads
    "DispatchResult": "results", "DispatchRun": "results", "SessionRecords": "audit.records",
    "wait_session": "ops.wait", "wait_sessions": "ops.wait", "wait_dispatch": "ops.wait", "Watcher": "ops.watch",
    "AuditTrail": "audit.trail", "Journal": "audit.trail", "replay": "audit.trail",
    "AlreadyClaimed": "ops.beads", "Beads": "ops.beads", "BeadsError": "ops.beads",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'fleet' has no attribute {name!r}")
    import importlib  # here, not at the top: the thin client imports this package on every run

    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)


if TYPE_CHECKING:  # static names for type checkers and IDEs
    from typing import Any

    from fleet.audit.records import SessionRecords
    from fleet.audit.trail import AuditTrail, Journal, replay
    from fleet.errors import (
        EXIT_BAD_INPUT,
        EXIT_HOST_FAILED,
        EXIT_INTERRUPTED,
        EXIT_OK,
        EXIT_REFUSED,
        BadInput,
        FleetError,
        InventoryError,
        Refused,
        SelectorError,
    )
    from fleet.inventory import Host, Inventory, OpenCodeEndpoint, SlackSettings, load_inventory, load_inventory_text
    from fleet.inventory.select import select
    from fleet.ops.beads import AlreadyClaimed, Beads, BeadsError
    from fleet.ops.wait import wait_dispatch, wait_session, wait_sessions
    from fleet.ops.watch import Watcher
    from fleet.results import (
        CheckResult,
        DispatchResult,
        DispatchRun,
        FanoutOutcome,
        FanoutResult,
        FanoutRun,
        PreflightResult,
        PreflightStatus,
    )
    from fleet.safety.gate import MODES, ConfirmationRequired, Operation, Plan, make_plan, resolve_mode
    from fleet.safety.tokens import Scope, TokenRefused, TokenStore
    from fleet.settings import Settings
    from fleet.ssh.oneshot import fanout_ssh
    from fleet.ssh.preflight import preflight_many, run_preflight_checks
    from fleet.ssh.runner import FanoutOptions, FanoutRunner, fanout_hosts

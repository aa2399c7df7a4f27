"""fleet: drive a fleet of machines that run AI coding agents.

The Python API (usable without Invoke)::

    from fleet import fanout_ssh, run_preflight_checks, PreflightStatus, FanoutOutcome

Names are imported lazily (PEP 562), so ``import fleet`` and ``inv --list`` stay fast; the
heavy libraries (Fabric, paramiko, httpx, slack-sdk) load on first use.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

_EXPORTS: dict[str, str] = {
    "Fleet": "api", "ConnectionPool": "connpool",
    # errors and exit statuses
    "BadInput": "errors", "FleetError": "errors", "InventoryError": "errors", "Refused": "errors",
    "SelectorError": "errors", "EXIT_BAD_INPUT": "errors", "EXIT_HOST_FAILED": "errors",
    "EXIT_INTERRUPTED": "errors", "EXIT_OK": "errors", "EXIT_REFUSED": "errors",
    # inventory and selection
    "Host": "inventory", "Inventory": "inventory", "OpenCodeEndpoint": "inventory", "SlackSettings": "inventory",
    "load_inventory": "inventory", "load_inventory_text": "inventory", "select": "selectors",
    "Settings": "settings",
    # preflight and fanout (the seed's names)
    "run_preflight_checks": "preflight", "preflight_many": "preflight",
    "fanout_ssh": "fanout", "fanout_hosts": "fanout", "FanoutOptions": "fanout", "FanoutRunner": "fanout",
    "CheckResult": "results", "FanoutOutcome": "results", "FanoutResult": "results", "FanoutRun": "results",
    "PreflightResult": "results", "PreflightStatus": "results",
    # modes and tokens
    "MODES": "modes", "ConfirmationRequired": "modes", "Plan": "modes", "guarded": "modes",
    "make_plan": "modes", "resolve_mode": "modes",
    "Scope": "tokens", "TokenRefused": "tokens", "TokenStore": "tokens",
    # dispatch, audit, beads
    "DispatchResult": "dispatch", "DispatchRun": "dispatch", "SessionRecords": "records",
    "wait_session": "follow", "wait_sessions": "follow", "wait_dispatch": "follow", "Watcher": "watch",
    "AuditTrail": "audit", "Journal": "audit", "replay": "audit",
    "AlreadyClaimed": "beads", "Beads": "beads", "BeadsError": "beads",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'fleet' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)


if TYPE_CHECKING:  # static names for type checkers and IDEs
    from .audit import AuditTrail, Journal, replay
    from .beads import AlreadyClaimed, Beads, BeadsError
    from .dispatch import DispatchResult, DispatchRun
    from .follow import wait_dispatch, wait_session, wait_sessions
    from .watch import Watcher
    from .records import SessionRecords
    from .errors import (EXIT_BAD_INPUT, EXIT_HOST_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_REFUSED, BadInput,
                         FleetError, InventoryError, Refused, SelectorError)
    from .fanout import FanoutOptions, FanoutRunner, fanout_hosts, fanout_ssh
    from .inventory import Host, Inventory, OpenCodeEndpoint, SlackSettings, load_inventory, load_inventory_text
    from .modes import MODES, ConfirmationRequired, Plan, guarded, make_plan, resolve_mode
    from .preflight import preflight_many, run_preflight_checks
    from .results import (CheckResult, FanoutOutcome, FanoutResult, FanoutRun, PreflightResult,
                          PreflightStatus)
    from .selectors import select
    from .settings import Settings
    from .tokens import Scope, TokenRefused, TokenStore

"""fleet: drive a fleet of machines that run AI coding agents.

The Python API (usable without Invoke)::

    from fleet import fanout_ssh, run_preflight_checks, PreflightStatus, FanoutOutcome
"""
from __future__ import annotations

from .errors import (BadInput, FleetError, InventoryError, Refused, SelectorError,
                     EXIT_BAD_INPUT, EXIT_HOST_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_REFUSED)
from .fanout import FanoutOptions, FanoutRunner, fanout_hosts, fanout_ssh
from .inventory import Host, Inventory, OpenCodeEndpoint, SlackSettings, load_inventory, load_inventory_text
from .preflight import preflight_many, run_preflight_checks
from .results import (CheckResult, FanoutOutcome, FanoutResult, FanoutRun, PreflightResult,
                      PreflightStatus)
from .selectors import select
from .settings import Settings

__all__ = [
    "BadInput", "FleetError", "InventoryError", "Refused", "SelectorError",
    "EXIT_BAD_INPUT", "EXIT_HOST_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_REFUSED",
    "FanoutOptions", "FanoutRunner", "fanout_hosts", "fanout_ssh",
    "Host", "Inventory", "OpenCodeEndpoint", "SlackSettings", "load_inventory", "load_inventory_text",
    "preflight_many", "run_preflight_checks",
    "CheckResult", "FanoutOutcome", "FanoutResult", "FanoutRun", "PreflightResult", "PreflightStatus",
    "select", "Settings",
]

"""Helpers shared by the Python API and the tasks."""
from __future__ import annotations

import os

from .inventory import Inventory, load_inventory


def default_inventory_path() -> str:
    """``$FLEET_INVENTORY`` if set, else ``./inventory.yaml``."""
    return os.environ.get("FLEET_INVENTORY") or "inventory.yaml"


def default_inventory() -> Inventory:
    """Load the inventory the Python API uses when none is given."""
    return load_inventory(default_inventory_path())

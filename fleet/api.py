"""The Python API's ``Fleet`` object: warm connections for repeated fanouts."""
from __future__ import annotations

import os

from fleet.inventory import Inventory, default_inventory, default_inventory_path, load_inventory

__all__ = ["Fleet", "default_inventory", "default_inventory_path"]


class Fleet:
    """The Python API with warm connections: fan out again and again without new handshakes.

    ::

        with Fleet("inventory.yaml") as f:
            f.fanout("@gpu", "nvidia-smi")
            f.fanout("@gpu", "uptime")      # same connections, no handshake

    Modes, gates, audit and redaction apply as everywhere (it calls :func:`fleet.ops.fanout`).
    """

    def __init__(self, inventory: str | Inventory | None = None, settings: object | None = None,
                 idle: float | None = None) -> None:
        from fleet.settings import load_settings
        from fleet.ssh.warm import ConnectionPool

        self.inventory = inventory if isinstance(inventory, Inventory) else load_inventory(
            inventory or default_inventory_path())
        self.settings = settings or load_settings(os.getcwd())
        self.pool = ConnectionPool(idle=idle if idle is not None else self.settings.warm_idle)  # type: ignore[attr-defined]

    def fanout(self, selector: str, command: str, **kw: object):
        """:func:`fleet.ops.fanout` over this object's warm connections; returns the run."""
        from fleet.ops import fanout as ops

        return ops.fanout(self.inventory, selector, args={"command": command}, settings=self.settings,
                          pool=self.pool, **kw)

    def close(self) -> None:
        """Close every kept connection."""
        self.pool.close()

    def __enter__(self) -> "Fleet":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

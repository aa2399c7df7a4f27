"""The seed's one-host call, ``fanout_ssh(host, command)``: a fanout of one host, with its
artifacts and key=value log, under the person's settings."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from fleet.inventory import Host, Inventory
from fleet.results import FanoutResult
from fleet.ssh.runner import FanoutOptions, FanoutRunner


def fanout_ssh(host: str | Host, command: str, timeout_sec: float | None = 3600.0, max_retries: int = 1,
               preflight: bool = True, inventory: Inventory | None = None,
               options: FanoutOptions | None = None, logger: Any = None) -> FanoutResult:
    """Run ``command`` on one host (the seed's API). ``max_retries=1`` means 2 attempts in all.
    Like every fanout it writes its artifacts and the seed's key=value log (``fanout.log``) under
    the ``artifacts_dir`` setting; ``logger`` (a :mod:`logging` logger) also gets each log line."""
    from fleet.inventory import default_inventory
    from fleet.settings import load_settings
    from fleet.ssh.kvlog import LogLines

    inv = inventory or default_inventory()
    h = inv.host(host) if isinstance(host, str) else host
    opts = replace(options or FanoutOptions.from_settings(load_settings()), command_timeout=timeout_sec,
                   attempts=max_retries + 1, preflight=preflight)
    runner = FanoutRunner(inv, command, opts, log_stream=LogLines(logger) if logger is not None else None)
    try:
        return runner.run_host(h)
    finally:
        runner.finish()


__all__ = ["fanout_ssh"]

"""The secrets an inventory names (OpenCode passwords, the Slack token), in every form they can
take in output, so every face redacts the same ones."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from fleet.safety.redact import secret_forms

if TYPE_CHECKING:  # pragma: no cover
    from fleet.inventory import Inventory


def inventory_secrets(inv: Inventory) -> list[str]:
    """The OpenCode passwords of every host (and their encoded forms) and the Slack token."""
    from fleet.agent.password import resolve_password

    found: list[str] = []
    for h in inv.hosts:
        if h.opencode is None:
            continue
        try:
            pw = resolve_password(h.opencode, h.name)
        except Exception:  # noqa: BLE001 - an unreadable password is reported where it is used
            pw = None
        if pw:
            found += secret_forms(pw, h.opencode.username)
    if inv.slack is not None and os.environ.get(inv.slack.token_env):
        found += secret_forms(os.environ[inv.slack.token_env])
    return found


__all__ = ["inventory_secrets", "secret_forms"]

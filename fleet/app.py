"""The one application context every face shares: settings, and an audit trail that knows
every secret the inventory names, so redaction is the same whoever calls (``inv`` tasks,
``dx-dispatch``, the Python API)."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from fleet.safety.redact import secret_forms

if TYPE_CHECKING:  # pragma: no cover
    from fleet.audit.trail import AuditTrail
    from fleet.inventory import Inventory
    from fleet.settings import Settings


def inventory_secrets(inv: "Inventory") -> list[str]:
    """The OpenCode passwords of every host (and their encoded forms) and the Slack token."""
    from fleet.agent.client import resolve_password

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


def audit_trail(inv: "Inventory", settings: "Settings", post: bool = True) -> "AuditTrail":
    """The audit trail for ``inv`` with every secret it names redacted."""
    from fleet.audit.trail import AuditTrail

    token = os.environ.get(inv.slack.token_env) if inv.slack else None
    return AuditTrail(settings.path("journal"), inv.slack, token, secrets_=inventory_secrets(inv), post=post)


__all__ = ["audit_trail", "inventory_secrets", "secret_forms"]

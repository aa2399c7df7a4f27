"""An OpenCode server's password, from an env var or a 0600 file (never the inventory). A
module of its own so that what redacts secrets (every face, every run) needs no HTTP client."""
from __future__ import annotations

import os

from fleet.errors import BadInput
from fleet.files import loose_mode
from fleet.inventory import OpenCodeEndpoint


def resolve_password(ep: OpenCodeEndpoint, host: str) -> str | None:
    """The server password from its env var or 0600 file; None when the inventory names neither."""
    if ep.password_env:
        val = os.environ.get(ep.password_env)
        if not val:
            raise BadInput(f"{host}: environment variable {ep.password_env} (the OpenCode password) is not "
                           f"set: export it, or point the inventory at a 0600 password_file instead")
        return val
    if ep.password_file:
        p = ep.password_file
        try:
            loose = loose_mode(p)
        except FileNotFoundError:
            raise BadInput(f"{host}: OpenCode password_file {p} does not exist: create it with the password "
                           f"and 'chmod 600 {p}'") from None
        if loose is not None:
            raise BadInput(f"{host}: OpenCode password_file {p} is readable by others (mode "
                           f"{loose:04o}): run 'chmod 600 {p}'")
        with open(p, encoding="utf-8") as f:
            val = f.read().strip()
        if not val:
            raise BadInput(f"{host}: OpenCode password_file {p} is empty")
        return val
    return None


__all__ = ["resolve_password"]

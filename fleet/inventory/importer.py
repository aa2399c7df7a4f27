"""Import the seed's ``~/.agent-skills/vm-endpoints.json`` into inventory YAML."""
from __future__ import annotations

import json
import re
from typing import Any

from fleet.errors import BadInput
from fleet.names import is_plain_name

_KNOWN_VM = {"opencode", "ssh", "tailscale", "local"}
_KNOWN_TOP = {"vms", "default_vm", "slack_audit_channel"}


def _y(s: str) -> str:
    return json.dumps(s) if not re.match(r"^[A-Za-z0-9_./:@-]+$", s) or s in ("yes", "no", "on", "off", "true",
                                                                              "false", "null", "~") else s


def vm_endpoints_to_yaml(data: Any, source: str = "vm-endpoints.json") -> tuple[str, list[str]]:
    """Return (inventory YAML, what was dropped). Everything with a place in the inventory is kept."""
    if not isinstance(data, dict) or not isinstance(data.get("vms"), dict):
        raise BadInput(f"{source}: expected an object with a 'vms' mapping, as in "
                       f'{{"vms": {{"epyc6": {{"ssh": "feng@epyc6", ...}}}}}}')
    dropped: list[str] = []
    for k in data:
        if k not in _KNOWN_TOP:
            dropped.append(f"top-level key '{k}' (no place in the inventory)")
    lines = [f"# Imported from {source} by 'inv inventory.import'.", "hosts:"]
    for name, vm in data["vms"].items():
        if not is_plain_name(str(name)):
            raise BadInput(f"{source}: VM name '{name}' is not a plain hostname; rename it first")
        if not isinstance(vm, dict):
            raise BadInput(f"{source}: vms.{name} must be an object")
        lines.append(f"  {name}:")
        for k in vm:
            if k not in _KNOWN_VM:
                dropped.append(f"vms.{name}.{k} (no place in the inventory)")
        ssh = vm.get("ssh")
        ts = vm.get("tailscale")
        user = address = None
        if ssh:
            user, _, sshhost = str(ssh).rpartition("@")
            if not user:
                user, sshhost = None, str(ssh)
            port = None
            if ":" in sshhost:
                sshhost, _, port = sshhost.partition(":")
            address = sshhost
            if port:
                lines.append(f"    port: {int(port)}")
        if ts:
            if address and address not in (name, ts):
                dropped.append(f"vms.{name}.ssh host '{address}' (the tailscale name '{ts}' is used as address)")
            address = ts
        if vm.get("local"):
            lines.append("    auth: local")
            if not address:
                address = "localhost"
        elif ts:
            lines.append("    auth: tailscale")
        else:
            lines.append("    auth: ssh-key")
        if user:
            lines.append(f"    user: {_y(user)}")
        if address and address != name:
            lines.append(f"    address: {_y(address)}")
        if vm.get("opencode"):
            lines.append(f"    opencode: {{url: {_y(str(vm['opencode']).rstrip('/'))}}}")
    if data.get("default_vm"):
        lines.append(f"default_host: {_y(str(data['default_vm']))}")
    if data.get("slack_audit_channel"):
        lines.append(f"slack: {{channel: {_y(str(data['slack_audit_channel']))}}}")
    return "\n".join(lines) + "\n", dropped

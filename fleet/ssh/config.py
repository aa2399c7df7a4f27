"""Where ``ssh NAME`` would go: an inventory host resolved through ssh_config, as OpenSSH does.

The inventory's host name is looked up in the ssh_config file(s) (``~/.ssh/config`` then
``/etc/ssh/ssh_config``, or the one file the ``ssh_config`` setting or the inventory names, as
``ssh -F`` would) for HostName, Port, User, IdentityFile, IdentitiesOnly, ProxyJump (any
number of hops), ProxyCommand, ConnectTimeout, HostKeyAlias, UserKnownHostsFile and
StrictHostKeyChecking. What the inventory states explicitly wins; its built-in defaults do
not. Each jump hop is resolved the same way and becomes a :class:`Hop` of its own, so it gets
fleet's host-key policy and timeouts like the target.
"""
from __future__ import annotations

import getpass
import glob
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fleet.errors import BadInput
from fleet.ssh.knownhosts import key_name

if TYPE_CHECKING:  # pragma: no cover
    import paramiko

    from fleet.inventory import Host

SYSTEM_CONFIG = "/etc/ssh/ssh_config"
DEFAULT_IDENTITIES = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")
MAX_HOPS = 8


@dataclass(frozen=True)
class Hop:
    """One SSH endpoint, resolved: where TCP goes, who logs in, which key, how the key is filed."""

    name: str                      # what the user wrote (inventory name or jump spec)
    hostname: str                  # where the connection goes
    port: int
    user: str
    key_name: str                  # known_hosts name: HostKeyAlias, host or [host]:port
    identities: tuple[str, ...]    # IdentityFile list (expanded), may be empty
    identities_only: bool = False
    connect_timeout: float | None = None
    known_hosts: tuple[str, ...] = ()   # UserKnownHostsFile, empty = fleet's default files
    accept_new: bool = False       # StrictHostKeyChecking accept-new / no in ssh_config
    proxy_command: str | None = None
    via: "Hop | None" = None       # the previous hop (ProxyJump), None = direct

    def chain(self) -> list["Hop"]:
        """Every hop from the first to this one."""
        out: list[Hop] = []
        h: Hop | None = self
        while h is not None:
            out.append(h)
            h = h.via
        return out[::-1]

    @property
    def first(self) -> "Hop":
        """The hop the TCP connection from this machine goes to."""
        return self.chain()[0]

    def describe(self) -> str:
        """``user@host:port`` plus the jump chain, for messages."""
        s = f"{self.user}@{self.hostname}:{self.port}"
        if self.via is not None:
            s += " via " + " -> ".join(h.name for h in self.chain()[:-1])
        return s


def _read_with_includes(path: Path, depth: int = 0) -> str:
    """The file's text with ``Include`` lines replaced by the files they name (paramiko has no Include)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    if depth > 8:
        return ""
    out = []
    for line in text.splitlines():
        m = re.match(r"\s*include\s*[=\s]\s*(.+)$", line, re.IGNORECASE)
        if not m:
            out.append(line)
            continue
        for pat in shlex.split(m.group(1)):
            pat = os.path.expanduser(pat)
            if not os.path.isabs(pat):
                # relative Includes are relative to ~/.ssh for user files (as OpenSSH does)
                base = Path("~/.ssh").expanduser() if not str(path).startswith("/etc/") else Path("/etc/ssh")
                pat = str(base / pat)
            for inc in sorted(glob.glob(pat)):
                out.append(_read_with_includes(Path(inc), depth + 1))
    return "\n".join(out)


def load_ssh_config(path: str | None) -> "paramiko.SSHConfig":
    """The ssh_config to apply. ``None`` or ``~/.ssh/config``: the user's file, then the system's.

    Any other path is read alone, like ``ssh -F PATH``. A missing file is an empty config.
    """
    import paramiko

    texts: list[str] = []
    default_user = os.path.expanduser("~/.ssh/config")
    p = os.path.expanduser(path) if path else default_user
    if path is not None and path.strip() in ("", "none"):
        return paramiko.SSHConfig()
    texts.append(_read_with_includes(Path(p)))
    if os.path.abspath(p) == os.path.abspath(default_user):
        texts.append(_read_with_includes(Path(SYSTEM_CONFIG)))
    # "Host *" between files: options at the top of the second file apply to every host, as
    # they would when OpenSSH reads it on its own (first value obtained wins in both).
    try:
        return paramiko.SSHConfig.from_text("\nHost *\n".join(t for t in texts if t))
    except Exception as exc:  # noqa: BLE001 - paramiko raises several types for bad config
        raise BadInput(f"cannot read ssh_config {p}: {exc}; fix that line or point the "
                       f"'ssh_config' setting elsewhere") from None


def _yes(v: object) -> bool:
    return str(v).strip().lower() in ("yes", "true")


def _timeout(v: object, where: str) -> float | None:
    if v is None:
        return None
    try:
        t = float(str(v))
    except ValueError:
        raise BadInput(f"ConnectTimeout {v!r} for {where} in ssh_config is not a number of seconds") from None
    return t if t > 0 else None


def _port(v: object, where: str) -> int:
    try:
        p = int(str(v))
    except ValueError:
        p = -1
    if not 1 <= p <= 65535:
        raise BadInput(f"Port {v!r} for {where} in ssh_config is not a TCP port: write 1-65535")
    return p


def _parse_jump(spec: str) -> tuple[str | None, str, int | None]:
    """``[user@]host[:port]`` or ``ssh://[user@]host[:port]``."""
    s = spec.strip()
    if s.startswith("ssh://"):
        s = s[6:].rstrip("/")
    user = None
    if "@" in s:
        user, s = s.rsplit("@", 1)
    port = None
    if s.startswith("["):
        host, _, rest = s[1:].partition("]")
        if rest.startswith(":"):
            port = int(rest[1:]) if rest[1:].isdigit() else None
    elif s.count(":") == 1:
        host, p = s.split(":")
        port = int(p) if p.isdigit() else None
    else:
        host = s
    if not host:
        raise BadInput(f"ProxyJump entry '{spec}' names no host: write e.g. ProxyJump user@jump:22")
    return user or None, host, port


def _resolve(cfg: "paramiko.SSHConfig", name: str, *, hostname: str | None = None, port: int | None = None,
             user: str | None = None, identities: tuple[str, ...] | None = None,
             jump: str | None = None, identities_only: bool | None = None, depth: int = 0) -> Hop:
    if depth > MAX_HOPS:
        raise BadInput(f"ProxyJump chain for {name} is longer than {MAX_HOPS} hops (a loop?): check ssh_config")
    o = cfg.lookup(name)
    hn = hostname or o.get("hostname") or name
    pt = port if port is not None else (_port(o["port"], name) if "port" in o else 22)
    us = user or o.get("user") or getpass.getuser()
    if identities is None:
        identities = tuple(os.path.expanduser(p) for p in o.get("identityfile", []))
    kh = tuple(os.path.expanduser(p) for p in str(o.get("userknownhostsfile", "")).split() if p)
    strict = str(o.get("stricthostkeychecking", "ask")).lower()
    jump_spec = jump if jump is not None else o.get("proxyjump")
    via = None
    proxy_command = None
    if jump_spec and jump_spec.strip().lower() != "none":
        hops = [h for h in jump_spec.split(",") if h.strip()]
        last_user, last_host, last_port = _parse_jump(hops[-1])
        earlier = ",".join(hops[:-1]) or None
        via = _resolve(cfg, last_host, port=last_port, user=last_user, jump=earlier, depth=depth + 1)
    elif o.get("proxycommand") and str(o["proxycommand"]).strip().lower() != "none":
        proxy_command = str(o["proxycommand"])
    return Hop(name=name, hostname=hn, port=pt, user=us,
               key_name=key_name(hn, pt, o.get("hostkeyalias")),
               identities=tuple(identities), identities_only=identities_only if identities_only is not None else _yes(o.get("identitiesonly", "no")),
               connect_timeout=_timeout(o.get("connecttimeout"), name), known_hosts=kh,
               accept_new=strict in ("accept-new", "no", "off"), proxy_command=proxy_command, via=via)


def resolve_host(host: "Host", cfg: "paramiko.SSHConfig") -> Hop:
    """Where ``ssh host.name`` would go, with what the inventory states explicitly on top."""
    ex = host.is_explicit
    return _resolve(cfg, host.name,
                    hostname=host.address if ex("address") else None,
                    port=host.port if ex("port") else None,
                    user=host.user if ex("user") and host.user else None,
                    identities=(host.identity_file,) if ex("identity_file") and host.identity_file else None,
                    # an identity_file in the inventory is the one key to use (as with -i and IdentitiesOnly)
                    identities_only=True if ex("identity_file") and host.identity_file else None)


__all__ = ["DEFAULT_IDENTITIES", "Hop", "load_ssh_config", "resolve_host"]

"""The inventory as data: which machines exist, how to reach them, what they are called.

Frozen value objects, built by :mod:`fleet.inventory.loader` from YAML (or by hand in Python).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

from fleet.names import did_you_mean

if TYPE_CHECKING:  # pragma: no cover
    from fleet.errors import SelectorError


AUTH_MODES = ("local", "ssh-key", "tailscale", "agent")


HOST_KEYS = ("user", "address", "port", "auth", "aliases", "tags", "identity_file",
             "opencode", "repos")


DEFAULTS_KEYS = tuple(k for k in HOST_KEYS if k not in ("aliases", "address"))


TOP_KEYS = ("hosts", "default_host", "canary", "groups", "routes", "slack", "known_hosts",
            "ssh_config", "defaults")


# Fields whose inventory value wins over ssh_config only when the inventory states them.
SSH_FIELDS = ("address", "port", "user", "identity_file")


OPENCODE_KEYS = ("url", "username", "password_env", "password_file")


REPOS_KEYS = ("root", "paths")


SLACK_KEYS = ("channel", "base_url", "token_env", "allowed_users", "app_token_env")


_RESERVED = {"all"}


@dataclass(frozen=True)
class OpenCodeEndpoint:
    """Where a host's OpenCode server listens and how to find its password (never inline)."""

    url: str
    username: str = "opencode"
    password_env: str | None = None
    password_file: str | None = None


@dataclass(frozen=True)
class Host:
    """One machine, with defaults already merged in."""

    name: str
    address: str
    port: int = 22
    user: str | None = None
    auth: str = "ssh-key"
    aliases: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    identity_file: str | None = None
    opencode: OpenCodeEndpoint | None = None
    repos_root: str | None = None
    repos: Mapping[str, str] = field(default_factory=dict)
    # Which of SSH_FIELDS the inventory stated (host or defaults); None: all (a Host built in Python).
    explicit: frozenset[str] | None = field(default=None, compare=False)

    def is_explicit(self, name: str) -> bool:
        """True when the inventory said ``name`` itself (so it wins over ssh_config)."""
        return self.explicit is None or name in self.explicit

    def repo_path(self, repo: str) -> str | None:
        """The working-copy path of ``repo`` on this host, or None if the inventory has none."""
        path = self.repos.get(repo)
        if path is None:
            if self.repos_root is None:
                return None
            return f"{self.repos_root.rstrip('/')}/{repo}"
        if path.startswith("/") or path.startswith("~"):
            return path
        if self.repos_root is None:
            return None
        return f"{self.repos_root.rstrip('/')}/{path}"


@dataclass(frozen=True)
class SlackSettings:
    """The audit channel. The token comes from the env var ``token_env``, never a file."""

    channel: str
    base_url: str | None = None
    token_env: str = "SLACK_BOT_TOKEN"
    allowed_users: tuple[str, ...] = ()  # Slack user ids whose replies in a dispatch thread act (fleet listen)
    app_token_env: str = "SLACK_APP_TOKEN"  # the app-level token (xapp-...) for Socket Mode


@dataclass(frozen=True)
class Inventory:
    """A validated inventory. Hosts keep the order of the file."""

    path: str
    hosts: tuple[Host, ...]
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    default_host: str | None = None
    canary: str | None = None
    routes: Mapping[str, str] = field(default_factory=dict)
    slack: SlackSettings | None = None
    known_hosts: str | None = None
    ssh_config: str | None = None
    digest: str = ""  # of the file's text: confirmation tokens are bound to it

    def host(self, name: str) -> Host:
        """The host called ``name`` (canonical name or alias)."""
        canon = self.names_index().get(name)
        if canon is None:
            raise unknown_host(self, name)
        for h in self.hosts:
            if h.name == canon:
                return h
        raise KeyError(name)  # unreachable: the index is built from hosts

    def names_index(self) -> dict[str, str]:
        """Every name and alias -> canonical name."""
        index: dict[str, str] = {}
        for h in self.hosts:
            index[h.name] = h.name
            for a in h.aliases:
                index[a] = h.name
        return index


def unknown_host(inv: Inventory, name: str) -> "SelectorError":
    """The error for a host name or alias the inventory does not know, with a suggestion."""
    from fleet.errors import SelectorError

    hint = did_you_mean(name, inv.names_index(), 0.5)
    hint = f"; {hint}" if hint else f"; known hosts: {', '.join(h.name for h in inv.hosts[:20])}" + (
        ", ..." if len(inv.hosts) > 20 else "")
    return SelectorError(f"unknown host '{name}' in {inv.path}{hint}")

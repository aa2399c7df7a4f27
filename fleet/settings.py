"""Settings: one typed table of defaults, filled from Invoke's config (``fleet:`` namespace).

Invoke merges, lowest first: these defaults, ``invoke.yaml`` beside ``tasks.py``, ``-f``
files, then ``INVOKE_FLEET_<KEY>`` environment variables. Flags on a task win over all.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping

from fleet.errors import BadInput


@dataclass(frozen=True)
class Settings:
    """Every setting fleet reads, with its default."""

    inventory: str = "inventory.yaml"
    mode: str = "canary"
    concurrency: int = 32
    connect_timeout: float = 10.0
    command_timeout: float = 3600.0
    preflight_timeout: float = 5.0
    attempts: int = 2
    retry_delay: float = 2.0
    artifacts_dir: str = "artifacts"
    journal: str = "~/.local/state/fleet/journal.jsonl"
    token_ttl: int = 600
    token_dir: str = "~/.config/fleet"
    gated: tuple[str, ...] = ()
    dispatch_timeout: float = 1800.0
    ssh_config: str = "~/.ssh/config"
    artifacts_keep: int = 50
    preflight_deep: bool = False
    worktree: bool = False  # dispatch in a new git worktree by default
    stall_timeout: float = 300.0  # seconds busy with no event before an agent shows as stuck (0 = never)
    warm_idle: float = 600.0  # seconds a long-lived fleet (mcp, the Fleet object) keeps an idle SSH connection

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> "Settings":
        """Build from the ``fleet`` config mapping; wrong types are bad input naming the key."""
        s = cls()
        if not data:
            return s
        known = {f.name: f for f in fields(cls)}
        updates: dict[str, Any] = {}
        for key, value in dict(data).items():
            if value is None:
                continue  # not set: the default
            if key not in known:
                from fleet.names import did_you_mean
                hint = did_you_mean(key, known)
                hint = f"; {hint}" if hint else f"; known settings: {', '.join(known)}"
                raise BadInput(f"unknown setting 'fleet.{key}'{hint}")
            default = getattr(s, key)
            flag = f"setting 'fleet.{key}' (INVOKE_FLEET_{key.upper()})"
            try:
                if isinstance(default, bool):
                    if isinstance(value, str):
                        if value.strip().lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off", ""):
                            raise ValueError
                        value = value.strip().lower() in ("1", "true", "yes", "on")
                    value = bool(value)
                elif isinstance(default, (int, float)):
                    lo, positive = _RANGES.get(key, (0, False))
                    value = number(flag, value, type(default), lo, positive)
                    if key == "attempts" and value > 10:
                        raise BadInput(f"{flag} {value}: write a number from 1 to 10")
                elif isinstance(default, tuple):
                    if isinstance(value, str):
                        value = tuple(x.strip() for x in value.split(",") if x.strip())
                    else:
                        value = tuple(str(x) for x in (value or ()))
                elif isinstance(value, bool):
                    value = "on" if value else "off"  # YAML 1.1 reads a bare off/on as a boolean
                else:
                    value = str(value)
            except (TypeError, ValueError):
                raise BadInput(f"setting 'fleet.{key}' has value {value!r}: write a "
                               f"{type(default).__name__}, e.g. {default!r}") from None
            updates[key] = value
        return replace(s, **updates)

    def outside_project(self) -> "Settings":
        """These settings for a command run outside any project: relative artifacts and journal
        paths go under the user's state dir, and a relative inventory that is not here is looked
        for in the user's config dir."""
        state = os.path.join(os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "fleet")
        conf = os.path.join(os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"), "fleet")
        upd: dict[str, Any] = {}
        for key in ("artifacts_dir", "journal"):
            v = os.path.expanduser(str(getattr(self, key)))
            if not os.path.isabs(v):
                upd[key] = os.path.join(state, v)
        inv = os.path.expanduser(self.inventory)
        if not os.path.isabs(inv) and not os.path.exists(inv):
            upd["inventory"] = os.path.join(conf, inv)
        return replace(self, **upd)

    def sessions_path(self) -> str:
        """Where the records of the sessions fleet created live: beside the journal."""
        return os.path.join(os.path.dirname(self.path("journal")), "sessions.jsonl")

    def path(self, key: str) -> str:
        """A path setting with ``~`` expanded."""
        return os.path.expanduser(str(getattr(self, key)))


DEFAULTS = Settings()

# (minimum, must be > 0) for number settings
_RANGES = {"concurrency": (1, True), "connect_timeout": (0, True), "command_timeout": (0, False),
           "preflight_timeout": (0, True), "attempts": (1, True), "retry_delay": (0, False),
           "token_ttl": (1, True), "dispatch_timeout": (0, True), "artifacts_keep": (0, False), "warm_idle": (0, False), "stall_timeout": (0, False)}


def number(flag: str, value: Any, kind: type = float, minimum: float | None = 0, positive: bool = False) -> Any:
    """A number flag or setting, checked: non-numeric, NaN, infinite, negative (below ``minimum``)
    or zero when ``positive`` is bad input naming ``flag``."""
    import math

    what = "a whole number" if kind is int else "a number"
    try:
        if isinstance(value, bool):
            raise ValueError
        v = kind(value) if kind is float else int(str(value).strip())
    except (TypeError, ValueError):
        raise BadInput(f"{flag} {value}: write {what}" + (f" of at least {minimum:g}" if minimum is not None else "")) from None
    if kind is float and (math.isnan(v) or math.isinf(v)):
        raise BadInput(f"{flag} {value}: write {what} of seconds, not {value}")
    if positive and v <= 0:
        raise BadInput(f"{flag} {value}: write {what} greater than 0")
    if minimum is not None and v < minimum:
        raise BadInput(f"{flag} {value}: write {what} of at least {minimum:g}")
    return v


USER_CONFIG = "~/.config/fleet/config.yaml"


def load_settings(project_dir: str | None = None, user_config: str | None = USER_CONFIG) -> Settings:
    """Settings as every face reads them, from any directory: defaults, the user's config file
    (``~/.config/fleet/config.yaml``, a ``fleet:`` mapping), the project's ``invoke.yaml`` when
    ``project_dir`` has one, then ``INVOKE_FLEET_*`` environment variables."""
    from invoke import Config

    cfg = Config(defaults={"fleet": {k.name: None for k in fields(Settings)}},
                 project_location=project_dir, lazy=True)
    if user_config and os.path.isfile(os.path.expanduser(user_config)):
        cfg.set_runtime_path(os.path.expanduser(user_config))
        cfg.load_runtime()
    if project_dir:
        cfg.load_project()
    try:
        cfg.load_shell_env()
    except Exception as exc:  # noqa: BLE001 - Invoke's own casting errors, said the fleet way
        raise BadInput(f"an INVOKE_FLEET_* environment variable could not be read: {exc}") from None
    return Settings.from_mapping(dict(cfg.get("fleet") or {}))

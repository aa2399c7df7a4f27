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
    lease: str = ""  # a file every orchestrator sees: only its holder's service follows dispatches
    lease_ttl: float = 30.0  # seconds the orchestrator lease lasts without renewal
    persist: float = 0.0  # > 0: the first CLI call starts `fleet serve` in the background, gone after this idle time

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
                    value = number(flag, value, type(default), lo, positive, _MAXIMA.get(key, MAX_NUMBER))
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

    def in_project(self, project: str) -> "Settings":
        """These settings for a command run in the project at ``project``: relative paths are
        relative to the project's directory (where its ``invoke.yaml`` is), whatever
        subdirectory the command runs in."""
        upd: dict[str, Any] = {}
        for key in ("artifacts_dir", "journal", "token_dir", "inventory"):
            v = str(getattr(self, key))
            if v and not os.path.isabs(os.path.expanduser(v)):
                upd[key] = os.path.join(project, v)
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
           "token_ttl": (1, True), "dispatch_timeout": (0, True), "artifacts_keep": (0, False), "warm_idle": (0, False), "stall_timeout": (0, False), "persist": (0, False), "lease_ttl": (1, True)}

# Ceilings: beyond them a value overflows what it feeds (a token's 4-byte expiry, the C time a
# thread waits with) or means nothing a person wants. No number fleet reads exceeds MAX_NUMBER.
MAX_NUMBER = 1_000_000_000
YEAR = 365 * 86400
_MAXIMA = {"token_ttl": 86400, "attempts": 10, "connect_timeout": YEAR, "command_timeout": YEAR,
           "preflight_timeout": YEAR, "retry_delay": YEAR, "dispatch_timeout": YEAR, "stall_timeout": YEAR,
           "warm_idle": YEAR, "persist": YEAR, "concurrency": 100_000, "artifacts_keep": 1_000_000}


def flag_or(flag: str, value: Any, default: Any, kind: type = float, minimum: float = 0,
            positive: bool = False) -> Any:
    """A number flag, checked as :func:`number` does, or ``default`` (the setting) when the flag
    was not given: the one rule every face uses for "--flag, else the setting"."""
    return default if value is None else number(flag, value, kind, minimum, positive)


def number(flag: str, value: Any, kind: type = float, minimum: float | None = 0, positive: bool = False,
           maximum: float | None = MAX_NUMBER) -> Any:
    """A number flag or setting, checked: non-numeric, NaN, infinite, negative (below ``minimum``),
    zero when ``positive``, or above ``maximum`` (by default :data:`MAX_NUMBER`, so no value can
    overflow what it feeds) is bad input naming ``flag``."""
    import math

    def n(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else f"{x:g}"

    what = "a whole number" if kind is int else "a number"
    span = (f" from {n(minimum)} to {n(maximum)}" if minimum is not None and maximum is not None else
            f" of at least {n(minimum)}" if minimum is not None else
            f" of at most {n(maximum)}" if maximum is not None else "")
    try:
        if isinstance(value, bool):
            raise ValueError
        v = kind(value) if kind is float else int(str(value).strip())
    except (TypeError, ValueError):
        raise BadInput(f"{flag} {value}: write {what}{span}") from None
    if kind is float and (math.isnan(v) or math.isinf(v)):
        raise BadInput(f"{flag} {value}: write {what} of seconds, not {value}")
    if positive and v <= 0:
        raise BadInput(f"{flag} {value}: write {what} greater than 0" + (f" and at most {n(maximum)}" if maximum else ""))
    if minimum is not None and v < minimum:
        raise BadInput(f"{flag} {value}: write {what}{span}")
    if maximum is not None and v > maximum:
        raise BadInput(f"{flag} {value}: write {what}{span}")
    return v


def user_config_dir() -> str:
    """fleet's directory of the user's settings: ``$XDG_CONFIG_HOME/fleet`` (``~/.config/fleet``)."""
    return os.path.join(os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"), "fleet")


def user_file() -> str:
    """The user's settings file, read by every face: ``~/.config/fleet/invoke.yaml``."""
    return os.path.join(user_config_dir(), "invoke.yaml")


LEGACY_USER_FILE = "config.yaml"  # read by fleet mcp / dx-dispatch / the API before 0.3: still read, with a note
ENV_PREFIX = "INVOKE_FLEET_"
_said_legacy: set[str] = set()


def find_project(start: str) -> str | None:
    """The nearest directory from ``start`` up whose ``invoke.yaml`` has a ``fleet:`` section."""
    d = os.path.abspath(start)
    while True:
        p = os.path.join(d, "invoke.yaml")
        try:
            with open(p, encoding="utf-8") as f:
                if any(line.startswith("fleet:") for line in f):
                    return d
        except OSError:
            pass
        parent = os.path.dirname(d)
        if parent == d:
            return None
        d = parent


def _read_fleet_section(path: str) -> dict[str, Any]:
    """The ``fleet:`` mapping of a YAML (or JSON) settings file; bad files are bad input."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:  # libyaml when present (10x faster: the service reads settings on every call)
            data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        except yaml.YAMLError:
            data = yaml.safe_load(text)  # the pure-Python parser's message, which the error is worded from
    except OSError as exc:
        raise BadInput(f"settings file {path} cannot be read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise BadInput(f"settings file {path}{where} is not valid YAML: fix it or remove it") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BadInput(f"settings file {path} must be a mapping with a 'fleet:' section")
    section = data.get("fleet")
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise BadInput(f"settings file {path}: 'fleet:' must be a mapping of settings, e.g. fleet: {{mode: canary}}")
    return dict(section)


@dataclass(frozen=True)
class Sources:
    """Where the effective settings came from (shown by ``fleet settings``)."""

    files: tuple[str, ...] = ()
    project: str | None = None
    env: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    origin: tuple[tuple[str, str], ...] = ()  # (setting, where its value came from)


def load_settings(cwd: str | None = None, *, runtime_file: str | None = None,
                  overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None,
                  with_sources: bool = False) -> Any:
    """The effective settings, the same for every face (``fleet``, ``inv``, ``dx-dispatch``,
    ``fleet mcp``, the Python API). Lowest first:

    1. the built-in defaults (:class:`Settings`);
    2. the user's file ``~/.config/fleet/invoke.yaml`` (``$XDG_CONFIG_HOME``), after the older
       ``~/.config/fleet/config.yaml`` if that still exists (said once on stderr);
    3. the project's ``invoke.yaml``: the nearest one with a ``fleet:`` section from ``cwd`` up;
    4. a file given with ``-f`` (``runtime_file``);
    5. ``INVOKE_FLEET_<KEY>`` environment variables;
    6. ``overrides``: the flags a person typed.

    Relative paths in the settings are relative to the project's directory; outside a project,
    artifacts and journal go to the user's state directory (see :meth:`Settings.outside_project`).
    """
    env = os.environ if environ is None else environ
    cwd = os.path.abspath(cwd or os.getcwd())
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    files: list[str] = []

    def take(data: Mapping[str, Any], where: str) -> None:
        for k, v in data.items():
            if v is not None:
                merged[k] = v
                origin[k] = where

    legacy = os.path.join(user_config_dir(), LEGACY_USER_FILE)
    if os.path.isfile(legacy):
        data = _read_fleet_section(legacy)
        if data:
            if legacy not in _said_legacy:
                _said_legacy.add(legacy)
                import sys
                print(f"fleet: reading settings from {legacy}; move them to {user_file()} (the file every "
                      f"face reads)", file=sys.stderr)
            take(data, legacy)
            files.append(legacy)
    uf = user_file()
    if os.path.isfile(uf):
        take(_read_fleet_section(uf), uf)
        files.append(uf)
    project = find_project(cwd)
    if project is not None:
        pf = os.path.join(project, "invoke.yaml")
        take(_read_fleet_section(pf), pf)
        files.append(pf)
    if runtime_file:
        take(_read_fleet_section(os.path.expanduser(runtime_file)), runtime_file)
        files.append(runtime_file)
    known = {f.name for f in fields(Settings)}
    env_used = []
    for k in sorted(known):
        v = env.get(ENV_PREFIX + k.upper())
        if v is not None:
            take({k: v}, f"${ENV_PREFIX}{k.upper()}")
            env_used.append(ENV_PREFIX + k.upper())
    for k in env:
        if k.startswith(ENV_PREFIX) and k[len(ENV_PREFIX):].lower() not in known:
            from fleet.names import did_you_mean
            hint = did_you_mean(k[len(ENV_PREFIX):].lower(), known)
            raise BadInput(f"unknown setting in ${k}" + (f"; {hint}" if hint else f"; known settings: {', '.join(sorted(known))}"))
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    take(flags, "flag")
    st = Settings.from_mapping(merged)
    if project is not None:
        st = st.in_project(project)
    else:
        st = st.outside_project()
    if with_sources:
        return st, Sources(tuple(files), project, tuple(env_used), tuple(sorted(flags)),
                           tuple(sorted(origin.items())))
    return st

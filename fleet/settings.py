"""Settings: one typed table of defaults, filled from Invoke's config (``fleet:`` namespace).

Invoke merges, lowest first: these defaults, ``invoke.yaml`` beside ``tasks.py``, ``-f``
files, then ``INVOKE_FLEET_<KEY>`` environment variables. Flags on a task win over all.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping

from .errors import BadInput


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

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> "Settings":
        """Build from the ``fleet`` config mapping; wrong types are bad input naming the key."""
        s = cls()
        if not data:
            return s
        known = {f.name: f for f in fields(cls)}
        updates: dict[str, Any] = {}
        for key, value in dict(data).items():
            if key not in known:
                import difflib
                close = difflib.get_close_matches(key, list(known), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else f"; known settings: {', '.join(known)}"
                raise BadInput(f"unknown setting 'fleet.{key}'{hint}")
            default = getattr(s, key)
            try:
                if isinstance(default, bool):
                    value = bool(value)
                elif isinstance(default, int):
                    value = int(value)
                elif isinstance(default, float):
                    value = float(value)
                elif isinstance(default, tuple):
                    if isinstance(value, str):
                        value = tuple(x.strip() for x in value.split(",") if x.strip())
                    else:
                        value = tuple(str(x) for x in (value or ()))
                else:
                    value = str(value)
            except (TypeError, ValueError):
                raise BadInput(f"setting 'fleet.{key}' has value {value!r}: write a "
                               f"{type(default).__name__}, e.g. {default!r}") from None
            updates[key] = value
        return replace(s, **updates)

    def path(self, key: str) -> str:
        """A path setting with ``~`` expanded."""
        return os.path.expanduser(str(getattr(self, key)))


DEFAULTS = Settings()


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
        raise BadInput(f"{flag} {value!r}: write {what}" + (f" of at least {minimum:g}" if minimum is not None else "")) from None
    if kind is float and (math.isnan(v) or math.isinf(v)):
        raise BadInput(f"{flag} {value!r}: write {what} of seconds, not {value}")
    if positive and v <= 0:
        raise BadInput(f"{flag} {value!r}: write {what} greater than 0")
    if minimum is not None and v < minimum:
        raise BadInput(f"{flag} {value!r}: write {what} of at least {minimum:g}")
    return v

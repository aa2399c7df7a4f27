"""Two rules used everywhere a person types a name: what a plain name is, and "did you mean".

A plain name (host, alias, group, tag, user, repo) can never start with '-' (an option), never
holds a space or a shell character, and never ends in a newline: it is safe as a path component
and as an argument.
"""
from __future__ import annotations

import difflib
import re
from typing import Iterable

_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}")


def is_plain_name(s: str) -> bool:
    """True for ``epyc6``, ``mac-mini``, ``lab01.example``; False for ``-x``, ``a b``, ``x-``, ``x\\n``."""
    return bool(_PLAIN.fullmatch(s)) and not s.endswith("-") and s not in (".", "..")


def closest(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The choice closest to ``word``, if any is close enough."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return close[0] if close else None


def did_you_mean(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str:
    """``did you mean 'x'?`` for the closest choice, or an empty string."""
    c = closest(word, choices, cutoff)
    return f"did you mean '{c}'?" if c else ""


__all__ = ["closest", "did_you_mean", "is_plain_name"]

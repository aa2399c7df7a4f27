"""Shell text fleet sends to hosts, in one place: POSIX sh (bash and dash alike), paths only as
positional parameters, never as shell text."""
from __future__ import annotations

import shlex

# x PATH: the path with a leading ~ or ~/ made $HOME on the host (as the inventory writes roots)
EXPAND_HOME = ('x() { case "$1" in "~") printf "%s" "$HOME";; "~/"*) printf "%s/%s" "$HOME" "${1#??}";; '
               '*) printf "%s" "$1";; esac; }; ')


def script(body: str, *params: str) -> str:
    """``sh -c BODY sh PARAM...``: the body as one quoted word, each parameter quoted on its own."""
    return "sh -c " + shlex.quote(body) + " sh " + " ".join(shlex.quote(p) for p in params)


__all__ = ["EXPAND_HOME", "script"]

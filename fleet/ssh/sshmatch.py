"""OpenSSH's patterns (``match.c``) and its ``Match`` keyword (``readconf.c: match_cfg_line``).

Patterns know only ``*`` and ``?`` (``Host [ab]x`` is the literal name ``[ab]x``), lists are
comma-separated with ``!`` negation. ``Match`` criteria are case-insensitive words (``Match Host
db``): ``all``, ``canonical``, ``final``, ``host``, ``originalhost``, ``user``, ``localuser`` and
``exec`` (run through ``$SHELL -c`` as ssh runs it, only if the criteria before it matched), each
evaluated with the values known at that point of the file.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from typing import Callable

from fleet.ssh.sshlex import LexError, lower, strdelim

EXEC_TIMEOUT = 30.0  # ssh waits forever for a Match exec; fleet gives up (an error) after this
_SUB_MAX = 1023      # OpenSSH's subpattern buffer: a longer one never matches


def match_pattern(s: str, pattern: str) -> bool:
    """``*`` any run, ``?`` one character, anything else itself (case-sensitive)."""
    si = pi = 0
    star, mark = -1, 0
    while si < len(s):
        if pi < len(pattern) and pattern[pi] == "*":
            star, mark = pi, si
            pi += 1
        elif pi < len(pattern) and (pattern[pi] == "?" or pattern[pi] == s[si]):
            si += 1
            pi += 1
        elif star >= 0:
            pi = star + 1
            mark += 1
            si = mark
        else:
            return False
    while pi < len(pattern) and pattern[pi] == "*":
        pi += 1
    return pi == len(pattern)


def match_pattern_list(s: str, patterns: str, dolower: bool) -> int:
    """1 if a pattern of the list matches and no negated one does, -1 if a negated one does, else 0."""
    positive = 0
    for sub in patterns.split(","):
        negated = sub.startswith("!")
        if negated:
            sub = sub[1:]
        if len(sub) >= _SUB_MAX:
            return 0
        if dolower:
            sub = lower(sub)
        if match_pattern(s, sub):
            if negated:
                return -1
            positive = 1
    return positive


def match_hostname(host: str, patterns: str) -> int:
    """:func:`match_pattern_list` for a host name, both sides lowercased."""
    return match_pattern_list(lower(host), patterns, True)


@dataclass(frozen=True)
class Criterion:
    """One ``Match`` criterion: ``attr`` (lowercased), ``!``, and its argument."""

    attr: str
    negate: bool
    arg: str | None = None


_WITH_ARG = ("host", "originalhost", "user", "localuser", "exec")


def parse_match(rest: str) -> list[Criterion]:
    """The criteria of a ``Match`` line; LexError for what ssh refuses."""
    out: list[Criterion] = []
    cp: str | None = rest
    attributes = 0
    while True:
        attrib, cp = strdelim(cp)
        if not attrib:
            break
        if attrib.startswith("#"):
            cp = None
            break
        negate = attrib.startswith("!")
        name = lower(attrib[1:] if negate else attrib)
        if name == "all":
            arg, nxt = strdelim(cp)
            if attributes > 1 or (arg and not arg.startswith("#")):
                raise LexError(f"'{attrib}' cannot be combined with other Match attributes")
            out.append(Criterion("all", negate))
            cp = None if arg is None or arg.startswith("#") else nxt
            return out
        attributes += 1
        if name in ("canonical", "final"):
            out.append(Criterion(name, negate))
            continue
        arg, cp = strdelim(cp)
        if not arg or arg.startswith("#"):
            raise LexError(f"Missing Match criteria for {attrib}")
        if name not in _WITH_ARG:
            raise LexError(f"Unsupported Match attribute {attrib}")
        out.append(Criterion(name, negate, arg))
    if attributes == 0:
        raise LexError("One or more attributes required for Match")
    return out


@dataclass
class MatchState:
    """What a ``Match`` line is evaluated against (the values known at that line)."""

    host: str           # HostName so far (%h-expanded), or the name given; the final name in the final pass
    original: str       # the name given (inventory name / jump host)
    user: str           # User so far, or the local user
    local_user: str
    final: bool         # this is the re-parse after canonicalisation ("Match final")
    exec_tokens: Callable[[], dict[str, str]]
    want_final: Callable[[], None]


def run_exec(cmd: str) -> bool:
    """``Match exec``: True if ``$SHELL -c cmd`` exits 0 (stdin and stdout /dev/null, as ssh)."""
    shell = os.environ.get("SHELL")
    if shell is None:
        shell = "/bin/sh"
    if not os.access(shell, os.X_OK):
        raise LexError(f'Shell "{shell}" is not executable (needed for Match exec)')
    try:
        p = subprocess.run([shell, "-c", cmd], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, timeout=EXEC_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise LexError(f"match exec '{cmd[:100]}' did not finish within {EXEC_TIMEOUT:g}s") from None
    except OSError as exc:
        raise LexError(f"match exec '{cmd[:100]}' could not run: {exc}") from None
    if p.returncode < 0:
        raise LexError(f"match exec '{cmd[:100]}' error (killed by signal {-p.returncode})")
    return p.returncode == 0


def eval_match(crits: list[Criterion], st: MatchState) -> bool:
    """ssh's verdict for one ``Match`` line."""
    from fleet.ssh.tokens import expand

    result = True
    for c in crits:
        if c.attr == "all":
            return result and not c.negate
        if c.attr in ("canonical", "final"):
            if c.attr == "final":
                st.want_final()
            r = st.final
        elif c.attr == "host":
            r = match_hostname(st.host, c.arg or "") == 1
        elif c.attr == "originalhost":
            r = match_hostname(st.original, c.arg or "") == 1
        elif c.attr == "user":
            r = match_pattern_list(st.user, c.arg or "", False) == 1
        elif c.attr == "localuser":
            r = match_pattern_list(st.local_user, c.arg or "", False) == 1
        else:  # exec
            cmd = expand(c.arg or "", st.exec_tokens())
            if not result:
                continue  # ssh skips the command once an earlier criterion failed
            r = run_exec(cmd)
        if r == c.negate:
            result = False
    return result


__all__ = ["Criterion", "MatchState", "eval_match", "match_hostname", "match_pattern", "match_pattern_list",
           "parse_match", "run_exec"]

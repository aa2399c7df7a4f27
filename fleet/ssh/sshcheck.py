"""One ssh_config line checked as OpenSSH checks it, active or not: argument counts, flags, times,
ports (numbers or service names), StrictHostKeyChecking and CanonicalizeHostname words, list
keywords (``none`` alone), ``Match`` criteria, SendEnv/SetEnv forms, CanonicalDomains; and the
permission rule for included files (Debian's ``secure_permissions``)."""
from __future__ import annotations

import grp
import os
import pwd
from typing import Any, Protocol

from fleet.ssh import sshlex as lx
from fleet.ssh.sshmatch import Criterion, parse_match

MAX_HOSTFILES = 32


class LineLike(Protocol):
    kw: str
    rest: str
    argv: list[str]
    crits: list[Criterion]


def _one(ln: "LineLike") -> str:
    if not ln.argv or ln.argv[0] == "":
        raise lx.LexError("Missing argument.")
    if len(ln.argv) > 1:
        raise lx.LexError(f"keyword {ln.kw} extra arguments at end of line")
    return ln.argv[0]


def _check_list(ln: "LineLike", limit: int) -> list[str]:
    for i, a in enumerate(ln.argv):
        if a == "":
            raise lx.LexError(f"keyword {ln.kw} empty argument")
        if lx.lower(a) == "none" and (i > 0 or len(ln.argv) > 1):
            raise lx.LexError(f'keyword {ln.kw} "none" argument must appear alone.')
    if len(ln.argv) > limit:
        raise lx.LexError(f"too many {ln.kw} entries.")
    return list(ln.argv)


def check_line(ln: "LineLike", kind: str) -> Any:
    """Check one line as ssh does and return its value (LexError with ssh's complaint); a
    ``Match`` line gets its criteria in ``ln.crits``."""
    kw = ln.kw
    if kind in (lx.FLAG, lx.TIME, lx.INT, lx.ONE):
        arg = _one(ln)
        if kind == lx.FLAG:
            return lx.flag(arg)
        if kind == lx.INT:
            return lx.atoi(arg)
        if kind == lx.TIME:
            t = -1 if arg == "none" else lx.convtime(arg)
            if t < 0 and arg != "none":
                raise lx.LexError("invalid time value.")
            return t
        if kw == "port":
            p = lx.a2port(arg)
            if p <= 0:
                raise lx.LexError(f"Bad port '{arg}'.")
            return p
        if kw == "stricthostkeychecking":
            return lx.multistate(arg, lx.STRICT)
        if kw == "canonicalizehostname":
            return lx.multistate(arg, lx.CANONICALIZE)
        if kw in ("hostkeyalgorithms", "casignaturealgorithms") and arg[:1] != "-":
            from fnmatch import fnmatchcase

            from fleet.ssh import algs
            known = algs.ALL_HOST_KEY if kw[0] == "h" else algs.ALL_SIGNATURE  # a CA signs with a plain key
            names = arg[1:] if arg[:1] in "+^" else arg
            if not all(any(fnmatchcase(k, n) for k in known) for n in names.split(",")):
                raise lx.LexError(f"Bad key types '{arg}'.")
        return arg
    if kind == lx.CMD:
        raw = ln.rest.lstrip(lx.WS + "=")
        return lx.parse_jump(raw) if kw == "proxyjump" else raw
    if kw == "host":
        if any(a == "" for a in ln.argv):
            raise lx.LexError("keyword host empty argument")
    elif kw == "match":
        ln.crits = parse_match(ln.rest)
    elif kw == "sendenv":
        if any(a == "" or "=" in a for a in ln.argv):
            raise lx.LexError("Invalid environment name.")
    elif kw == "setenv":
        if any("=" not in a for a in ln.argv):
            raise lx.LexError("Invalid SetEnv.")
    elif kw in ("userknownhostsfile", "globalknownhostsfile"):
        return _check_list(ln, MAX_HOSTFILES)
    elif kw == "canonicaldomains":
        _check_list(ln, MAX_HOSTFILES)
        return [a if lx.lower(a) == "none" else lx.valid_domain(a) for a in ln.argv]
    elif kw == "canonicalizepermittedcnames":
        out = []
        for i, a in enumerate(ln.argv):
            if lx.lower(a) == "none":
                if i > 0 or len(ln.argv) > 1:
                    raise lx.LexError(f'keyword {kw} "none" argument must appear alone.')
                return []
            src, colon, dst = (a, ":", a) if a == "*" else lx.lower(a).partition(":")
            if not colon or not dst:
                raise lx.LexError(f'Invalid permitted CNAME "{a}"')
            out.append((src, dst))
        return out
    return None


def secure(st: os.stat_result) -> bool:
    """Debian's ``secure_permissions``: owned by root or us, not world-writable, and
    group-writable only for a group whose one member is the owner."""
    uid = os.getuid()
    if st.st_uid not in (0, uid) or st.st_mode & 0o002:
        return False
    if not st.st_mode & 0o020:
        return True
    try:
        g = grp.getgrgid(st.st_gid)
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        return False
    members = [p for p in pwd.getpwall() if p.pw_gid == g.gr_gid]
    if any(p.pw_uid != uid for p in members):
        return False
    if g.gr_mem and (g.gr_mem[0] != owner or len(g.gr_mem) > 1):
        return False
    return bool(members or g.gr_mem)


__all__ = ["LineLike", "check_line", "secure"]

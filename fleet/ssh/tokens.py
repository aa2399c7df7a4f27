"""ssh_config TOKENS, ``~`` and ``${VAR}`` as OpenSSH expands them, and its host-name canonicalisation.

- :func:`expand`: ``%%`` ``%h`` ``%p`` ... (only the tokens a keyword accepts: ssh_config(5)
  TOKENS; any other is an error, as for ``ssh``) and, where ssh does, ``${VAR}`` (unset: error).
- :func:`tilde`: ``~/x`` and ``~user/x``. fleet's ``~`` (and ``%d``) is ``$HOME``, as everywhere in
  fleet (ssh itself takes the home directory from the password database).
- :func:`numeric_addr`, :func:`is_addr`, :func:`lookup`: what ssh asks the resolver for
  (``getaddrinfo``), so ``fd00:0:0:0::0001`` becomes ``fd00::1`` and ``000.000.000.000``
  ``0.0.0.0``, exactly as the C library says to ``ssh``.
"""
from __future__ import annotations

import getpass
import hashlib
import os
import pwd
import socket
from dataclasses import dataclass

from fleet.ssh.sshlex import LexError, valid_domain
from fleet.workers import call_with_timeout

DNS_TIMEOUT = 15.0  # a canonicalisation lookup that takes longer counts as "not found"


@dataclass(frozen=True)
class Local:
    """Who and where this side is, for tokens and ``Match localuser``."""

    user: str
    uid: int
    home: str
    hostname: str

    @property
    def short(self) -> str:
        """``%L``: the host name up to the first dot."""
        return self.hostname.split(".", 1)[0]


def local() -> Local:
    """This process's user (from the password database, as ssh), ``$HOME`` and host name."""
    uid = os.getuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = getpass.getuser()
    return Local(user=user, uid=uid, home=os.path.expanduser("~"), hostname=socket.gethostname())


def conn_hash(me: Local, host: str, port: int, user: str) -> str:
    """``%C``: SHA-1 of ``%l%h%p%r`` (OpenSSH 9.2)."""
    return hashlib.sha1(f"{me.hostname}{host}{port}{user}".encode("utf-8", "surrogateescape")).hexdigest()


def expand(s: str, keys: dict[str, str], dollar: bool = False) -> str:
    """OpenSSH's ``percent_expand`` (and ``percent_dollar_expand`` with ``dollar``). LexError
    for an unknown token, a lone ``%``, or an unset ``${VAR}``."""
    out: list[str] = []
    i, n = 0, len(s)
    while i < n:
        if dollar and s.startswith("${", i):
            j = s.find("}", i + 2)
            if j < 0:
                raise LexError(f"environment variable '{s[i + 2:]}' missing closing '}}'")
            name = s[i + 2:j]
            if not name:
                raise LexError("zero-length environment variable")
            val = os.environ.get(name)
            if val is None:
                raise LexError(f"env var ${{{name}}} has no value")
            out.append(val)
            i = j + 1
            continue
        c = s[i]
        i += 1
        if c != "%":
            out.append(c)
            continue
        if i >= n:
            raise LexError("invalid format (a lone '%' at the end: write %% for a percent sign)")
        k = s[i]
        i += 1
        if k == "%":
            out.append("%")
        elif k in keys:
            out.append(keys[k])
        else:
            raise LexError(f"unknown key %{k} (this keyword takes only %{', %'.join(sorted(keys))} and %%)")
    return "".join(out)


def tilde(path: str, me: Local) -> str:
    """OpenSSH's ``tilde_expand_filename`` (``~`` being ``$HOME``). LexError for ``~nosuchuser``."""
    if not path.startswith("~"):
        return path
    rest = path[1:]
    user, slash, tail = rest.partition("/")
    if user:
        try:
            home = pwd.getpwnam(user).pw_dir
        except KeyError:
            raise LexError(f"No such user {user}") from None
    else:
        home = me.home
    tail = tail.lstrip("/") if slash else ""
    return home + ("" if home.endswith("/") else "/") + tail


def default_tokens(me: Local, host: str, host_arg: str, port: int, user: str, alias: str | None) -> dict[str, str]:
    """The tokens of IdentityFile, UserKnownHostsFile, Match exec...: %C %d %h %i %k %L %l %n %p %r %u."""
    return {"C": conn_hash(me, host, port, user), "L": me.short, "i": str(me.uid), "k": alias or host_arg,
            "l": me.hostname, "n": host_arg, "p": str(port), "d": me.home, "h": host, "r": user, "u": me.user}


def proxy_tokens(host: str, host_arg: str, port: int, user: str, alias: str | None) -> dict[str, str]:
    """The tokens of ProxyCommand and ProxyJump: %h %k %n %p %r."""
    return {"h": host, "k": alias or host_arg, "n": host_arg, "p": str(port), "r": user}


# ------------------------------------------------------------------- addresses and DNS

def _b(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def is_addr_fast(name: str) -> bool:
    """Can only be an address: has ``%`` or ``:``, or is only digits and dots."""
    return "%" in name or ":" in name or all(c in "0123456789." for c in name)


def numeric_addr(name: str) -> str | None:
    """The address ``name`` is, as ``getnameinfo(NI_NUMERICHOST)`` writes it, or None."""
    if "\0" in name:
        return None
    try:
        infos = socket.getaddrinfo(_b(name), "22", 0, socket.SOCK_STREAM, 0,
                                   socket.AI_NUMERICHOST | socket.AI_NUMERICSERV)
        if len(infos) != 1:
            return None
        return socket.getnameinfo(infos[0][4], socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)[0]
    except (OSError, UnicodeError, ValueError):
        return None


def is_addr(name: str) -> bool:
    """OpenSSH's ``is_addr``: such names are not lowercased (they are canonicalised instead)."""
    return is_addr_fast(name) or numeric_addr(name) is not None


def lookup(name: str) -> tuple[bool, str]:
    """(found, canonical name) for a DNS name, as ssh's ``resolve_host`` with AI_CANONNAME."""
    if "\0" in name:
        return False, ""
    try:
        infos = call_with_timeout(socket.getaddrinfo, _b(name), "22", 0, socket.SOCK_STREAM, 0,
                                  socket.AI_CANONNAME, timeout=DNS_TIMEOUT)
    except (OSError, UnicodeError, ValueError, TimeoutError):
        return False, ""
    if not infos:
        return False, ""
    cname = infos[0][3] or ""
    try:
        if cname:
            valid_domain(cname)
    except LexError:
        return True, ""  # ssh ignores a bad CNAME
    return True, cname[:-1] if cname.endswith(".") else cname


__all__ = ["Local", "default_tokens", "expand", "is_addr", "is_addr_fast", "local", "lookup", "numeric_addr",
           "proxy_tokens", "tilde"]

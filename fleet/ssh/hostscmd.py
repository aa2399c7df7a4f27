"""ssh_config's ``KnownHostsCommand``, run as ssh runs it (sshconnect.c ``load_hostkeys_command``).

The value is split into words as ssh splits it (no shell); every word but the program gets the
tokens of IdentityFile and the like (``%C %d %h %i %k %L %l %n %p %r %u``) and the command's own:
``%H`` the name looked up in known_hosts, ``%I`` why it runs (``ORDER`` while choosing which
host-key algorithms to ask for, ``HOSTNAME`` to check the key the host showed), ``%t`` ``%f``
``%K`` the key's type, SHA256 fingerprint and base64 (``NONE`` for ORDER). What it prints is read
as known_hosts lines, after the files. A command that cannot run, or exits other than 0, ends
the connection, as with ssh.
"""
from __future__ import annotations

import os
import subprocess

from fleet.ssh import sshlex as lx
from fleet.ssh.tokens import expand

TIMEOUT = 30.0


class CommandFailed(Exception):
    """KnownHostsCommand could not run or did not exit 0 (the message says how)."""


def template(value: str, tokens: dict[str, str]) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The command's words and the tokens known when ssh_config is read (LexError on bad quotes)."""
    words = lx.argv_split(value)
    if not words:
        raise lx.LexError("KnownHostsCommand yielded no arguments")
    return tuple(words), tuple(sorted(tokens.items()))


def run(cmd: tuple[tuple[str, ...], tuple[tuple[str, str], ...]], name: str, invocation: str,
        keytype: str = "NONE", fp: str = "NONE", b64: str = "NONE") -> bytes:
    """Run it for the known_hosts name ``name``; its standard output (:class:`CommandFailed`)."""
    words, toks = cmd
    keys = {**dict(toks), "H": name, "I": invocation, "t": keytype, "f": fp, "K": b64}
    try:
        argv = [words[0], *(expand(w, keys, dollar=True) for w in words[1:])]
    except lx.LexError as exc:
        raise CommandFailed(f"KnownHostsCommand: {exc}") from None
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT,
                           env=dict(os.environ))
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CommandFailed(f"KnownHostsCommand {words[0]} could not run ({getattr(exc, 'strerror', None) or exc})") \
            from None
    if p.returncode != 0:
        err = p.stderr.decode("utf-8", "replace").strip().splitlines()
        raise CommandFailed(f"KnownHostsCommand {words[0]} exited {p.returncode}"
                            + (f" ({err[-1][:200]})" if err else ""))
    return p.stdout


__all__ = ["CommandFailed", "run", "template"]

"""ssh_config's algorithm lists as OpenSSH assembles them (``kex_assemble_names``):
``HostKeyAlgorithms`` and ``CASignatureAlgorithms``.

A value replaces the default list; ``+LIST`` appends to it, ``-LIST`` removes what its patterns
match, ``^LIST`` puts LIST first; a list's entries may be patterns (``ssh-ed25519*``), each
standing for the algorithms it matches, and names ssh does not know are dropped; a list left
empty is refused, as ssh refuses it. With ``HostKeyAlgorithms`` unset or given as ``+``/``-``,
ssh prefers the algorithms known_hosts has keys for (``order_hostkeyalgs``); an explicit list is
asked for in its own order. The lists are OpenSSH 9.2's (what ``ssh -G`` prints on Debian 12).
"""
from __future__ import annotations

from fnmatch import fnmatchcase

from fleet.errors import ConnectFailed

# ssh -Q HostKeyAlgorithms (every host-key algorithm OpenSSH 9.2 knows)
ALL_HOST_KEY = (
    "ssh-ed25519", "ssh-ed25519-cert-v01@openssh.com", "sk-ssh-ed25519@openssh.com",
    "sk-ssh-ed25519-cert-v01@openssh.com", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256-cert-v01@openssh.com",
    "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp384-cert-v01@openssh.com", "ecdsa-sha2-nistp521",
    "ecdsa-sha2-nistp521-cert-v01@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
    "sk-ecdsa-sha2-nistp256-cert-v01@openssh.com", "webauthn-sk-ecdsa-sha2-nistp256@openssh.com", "ssh-dss",
    "ssh-dss-cert-v01@openssh.com", "ssh-rsa", "ssh-rsa-cert-v01@openssh.com", "rsa-sha2-256",
    "rsa-sha2-256-cert-v01@openssh.com", "rsa-sha2-512", "rsa-sha2-512-cert-v01@openssh.com")

# KEX_DEFAULT_PK_ALG: ssh's HostKeyAlgorithms when ssh_config sets none
DEFAULT_HOST_KEY = (
    "ssh-ed25519-cert-v01@openssh.com", "ecdsa-sha2-nistp256-cert-v01@openssh.com",
    "ecdsa-sha2-nistp384-cert-v01@openssh.com", "ecdsa-sha2-nistp521-cert-v01@openssh.com",
    "sk-ssh-ed25519-cert-v01@openssh.com", "sk-ecdsa-sha2-nistp256-cert-v01@openssh.com",
    "rsa-sha2-512-cert-v01@openssh.com", "rsa-sha2-256-cert-v01@openssh.com", "ssh-ed25519", "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
    "rsa-sha2-512", "rsa-sha2-256")

# SSH_ALLOWED_CA_SIGALGS: the CA signatures ssh accepts on a host certificate by default (no ssh-rsa,
# SHA-1); any signature algorithm may be named
DEFAULT_CA_SIGNATURE = (
    "ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com", "rsa-sha2-512", "rsa-sha2-256")
ALL_SIGNATURE = tuple(a for a in ALL_HOST_KEY if "-cert-" not in a)


def _cat(a: list[str], b: list[str]) -> list[str]:
    return a + [x for x in b if x not in a]


def assemble(value: str | None, default: tuple[str, ...], known: tuple[str, ...]) -> tuple[str, ...]:
    """The list ssh uses for ``value`` (None or "": the default); ValueError when none is left or
    a pattern is negated (ssh refuses both)."""
    if not value:
        return default
    if value[0] == "-":  # as ssh: what is left may be nothing (then no handshake can agree)
        pats = [p for p in value[1:].split(",") if p]
        return tuple(a for a in default if not any(fnmatchcase(a, p) for p in pats))
    wanted = _cat(list(default), value[1:].split(",")) if value[0] == "+" else \
        _cat(value[1:].split(","), list(default)) if value[0] == "^" else value.split(",")
    out: list[str] = []
    for p in wanted:
        if p.startswith("!"):
            raise ValueError(f"negated algorithm pattern {p} (a list here may not negate)")
        out = _cat(out, [a for a in known if fnmatchcase(a, p)])
    if not out:
        raise ValueError(f"{value} leaves no algorithm ssh knows")
    return tuple(out)


def prefers_known(value: str | None) -> bool:
    """Whether ssh asks first for what known_hosts has for the host (HostKeyAlgorithms unset, +, -)."""
    return not value or value[0] in "+-"


class NoHostKeyAlgorithm(ConnectFailed):
    """The server offers no host-key algorithm that HostKeyAlgorithms allows: a setting to fix,
    so not retried (ssh does not retry it either)."""

    retryable = False


def explain(msg: str, hop: object) -> str:
    """paramiko's handshake failure ``msg``, with what to do when no host-key algorithm agreed."""
    if "no acceptable host key" not in msg.lower():
        return msg
    wanted = ",".join(getattr(hop, "host_key_algorithms", ()))
    return (f"{msg} (the server offers no host-key algorithm that HostKeyAlgorithms allows and fleet can "
            f"verify: {wanted}); fix HostKeyAlgorithms in ssh_config; nothing was run")


__all__ = ["ALL_HOST_KEY", "ALL_SIGNATURE", "DEFAULT_CA_SIGNATURE", "DEFAULT_HOST_KEY", "NoHostKeyAlgorithm", "assemble",
           "explain", "prefers_known"]

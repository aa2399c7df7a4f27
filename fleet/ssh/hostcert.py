"""OpenSSH host certificates (PROTOCOL.certkeys), checked as ``ssh`` checks them.

A host that an organisation signs with an SSH CA shows a certificate in the handshake;
known_hosts trusts the CA with a ``@cert-authority <patterns> <ca key>`` line. ssh accepts the
certificate when it is a *host* certificate, signed (validly, with an algorithm
CASignatureAlgorithms allows) by a CA listed for the host's known_hosts name, now within its
validity, listing the name connected to (HostName, or HostKeyAlias when set) among its
principals (or listing none), with no critical options. :func:`parse_cert` reads the blob,
:func:`cert_problem` says why one is not acceptable (None: it is). Revocation and the choice of
CA lines are :mod:`fleet.ssh.hostkeys`' part; the algorithms offered in the handshake are
:data:`CERT_ALGORITHMS`, first when a CA could match (as OpenSSH's order_hostkeyalgs).
"""
from __future__ import annotations

import struct
import time
from dataclasses import dataclass

import paramiko

CERT_SUFFIX = "-cert-v01@openssh.com"

# The certificate host-key algorithms paramiko verifies, in OpenSSH's default HostKeyAlgorithms order.
CERT_ALGORITHMS = ("ssh-ed25519-cert-v01@openssh.com", "ecdsa-sha2-nistp256-cert-v01@openssh.com",
                   "ecdsa-sha2-nistp384-cert-v01@openssh.com", "ecdsa-sha2-nistp521-cert-v01@openssh.com",
                   "rsa-sha2-512-cert-v01@openssh.com", "rsa-sha2-256-cert-v01@openssh.com")

# OpenSSH's default CASignatureAlgorithms (8.2 on): no ssh-rsa (SHA-1) signatures.
CA_SIGNATURE_ALGORITHMS = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
                           "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
                           "rsa-sha2-512", "rsa-sha2-256")

USER_CERT, HOST_CERT = 1, 2
FOREVER = 0xFFFFFFFFFFFFFFFF

# How many SSH strings (mpints are strings on the wire) the certified key has, by its plain type.
_KEY_FIELDS = {"ssh-rsa": 2, "ssh-dss": 4, "ecdsa-sha2-nistp256": 2, "ecdsa-sha2-nistp384": 2,
               "ecdsa-sha2-nistp521": 2, "ssh-ed25519": 1, "sk-ecdsa-sha2-nistp256@openssh.com": 3,
               "sk-ssh-ed25519@openssh.com": 2}

# paramiko's classes for the CA key types it can verify a signature with.
_CA_CLASSES: dict[str, type[paramiko.PKey]] = {
    "ssh-ed25519": paramiko.Ed25519Key, "ssh-rsa": paramiko.RSAKey, "ecdsa-sha2-nistp256": paramiko.ECDSAKey,
    "ecdsa-sha2-nistp384": paramiko.ECDSAKey, "ecdsa-sha2-nistp521": paramiko.ECDSAKey}


class CertError(ValueError):
    """A certificate blob that is not one (truncated, unknown type, trailing bytes)."""


class WireReader:
    """SSH wire data read field by field (bytes, uint32/64, strings); what is short raises
    ``error`` naming ``what`` (a certificate here, a key revocation list in :mod:`fleet.ssh.krl`)."""

    error: type[ValueError] = CertError
    what = "certificate"

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.error(f"{self.what} is truncated")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack(">Q", self.take(8))[0])

    def string(self) -> bytes:
        return self.take(self.u32())

    def text(self) -> str:
        try:
            return self.string().decode("utf-8")
        except UnicodeDecodeError:
            raise self.error(f"{self.what} has a field that is not UTF-8")

    def done(self) -> bool:
        return self.pos == len(self.data)

    def left(self) -> int:
        return len(self.data) - self.pos


def _strings(data: bytes) -> tuple[str, ...]:
    r, out = WireReader(data), []
    while not r.done():
        out.append(r.text())
    return tuple(out)


def _names(data: bytes) -> tuple[str, ...]:
    """The option names of a critical-options or extensions field (name, data pairs)."""
    r, out = WireReader(data), []
    while not r.done():
        out.append(r.text())
        r.string()
    return tuple(out)


def ssh_string(b: bytes) -> bytes:
    """``b`` as an SSH wire string (length-prefixed)."""
    return struct.pack(">I", len(b)) + b


def _leading_name(blob: bytes) -> str:
    """The algorithm name an SSH key or signature blob starts with ('?' if unreadable)."""
    try:
        return WireReader(blob).text()
    except CertError:
        return "?"


@dataclass(frozen=True)
class HostCert:
    """One OpenSSH certificate, as PROTOCOL.certkeys lays it out."""

    cert_type: str          # e.g. ssh-ed25519-cert-v01@openssh.com
    key_type: str           # the certified key's plain type, e.g. ssh-ed25519
    key_blob: bytes         # the certified plain public key, as a known_hosts line holds it
    serial: int
    type: int               # 1 user, 2 host
    key_id: str
    principals: tuple[str, ...]
    valid_after: int
    valid_before: int
    critical: tuple[str, ...]    # critical option names
    extensions: tuple[str, ...]
    ca_blob: bytes          # the signature key (the CA's public key)
    signature: bytes
    signed: bytes           # everything the CA signed (all but the signature field)

    @property
    def ca_type(self) -> str:
        return _leading_name(self.ca_blob)

    @property
    def signature_algorithm(self) -> str:
        return _leading_name(self.signature)

    def validity(self) -> str:
        """``from X to Y`` (UTC), ``forever``, as ``ssh-keygen -L`` words it."""
        if self.valid_after == 0 and self.valid_before == FOREVER:
            return "forever"
        return f"from {format_time(self.valid_after)} to {format_time(self.valid_before)}"


def format_time(t: int) -> str:
    """A certificate time in UTC (``forever``/``always`` for the open ends)."""
    if t >= FOREVER:
        return "forever"
    if t == 0:
        return "always"
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
    except (OverflowError, OSError, ValueError):
        return str(t)


def parse_cert(blob: bytes) -> HostCert:
    """Read an OpenSSH certificate blob; :class:`CertError` if it is not a well-formed one."""
    r = WireReader(blob)
    cert_type = r.text()
    if not cert_type.endswith(CERT_SUFFIX):
        raise CertError(f"{cert_type} is not a certificate type")
    key_type = cert_type[:-len(CERT_SUFFIX)]
    if key_type not in _KEY_FIELDS:
        raise CertError(f"unknown certificate type {cert_type}")
    r.string()  # nonce
    start = r.pos
    for _ in range(_KEY_FIELDS[key_type]):
        r.string()
    key_blob = ssh_string(key_type.encode()) + blob[start:r.pos]
    serial, ctype, key_id = r.u64(), r.u32(), r.text()
    principals = _strings(r.string())
    valid_after, valid_before = r.u64(), r.u64()
    critical, extensions = _names(r.string()), _names(r.string())
    r.string()  # reserved
    ca_blob = r.string()
    signed = blob[:r.pos]
    signature = r.string()
    if not r.done():
        raise CertError("certificate has trailing bytes")
    return HostCert(cert_type, key_type, key_blob, serial, ctype, key_id, principals, valid_after, valid_before,
                    critical, extensions, ca_blob, signature, signed)


def signature_problem(cert: HostCert, allowed: tuple[str, ...] = CA_SIGNATURE_ALGORITHMS) -> str | None:
    """Why the CA's signature on ``cert`` is not acceptable to ssh (``allowed``: its
    CASignatureAlgorithms), or None if it verifies."""
    alg = cert.signature_algorithm
    if alg not in allowed:
        return f"is signed with {alg}, which CASignatureAlgorithms does not allow"
    cls = _CA_CLASSES.get(cert.ca_type)
    if cls is None:
        return f"is signed by a {cert.ca_type} CA key, which fleet cannot verify"
    try:
        ca = cls(msg=paramiko.Message(cert.ca_blob))
        ok = ca.verify_ssh_sig(cert.signed, paramiko.Message(cert.signature))
    except (paramiko.SSHException, ValueError, TypeError, IndexError, struct.error):
        ok = False
    return None if ok else "has a CA signature that does not verify (forged or corrupted)"


def cert_problem(cert: HostCert, principal: str, now: float | None = None,
                 allowed: tuple[str, ...] = CA_SIGNATURE_ALGORITHMS) -> str | None:
    """Why ssh would not accept ``cert`` (already known to be signed by a trusted CA) for a host
    it connects to as ``principal``, in words for a message, or None when it would."""
    bad = signature_problem(cert, allowed)
    if bad:
        return bad
    if cert.type != HOST_CERT:
        return "is a user certificate, not a host certificate"
    t = int(time.time() if now is None else now)
    if t < cert.valid_after:
        return f"is not valid yet (valid {cert.validity()})"
    if t >= cert.valid_before:
        return f"has expired (valid until {format_time(cert.valid_before)})"
    if cert.principals and principal not in cert.principals:
        return f"has principals {','.join(cert.principals)}, which do not include {principal}"
    if cert.critical:
        return f"has critical options ssh does not support for hosts ({','.join(cert.critical)})"
    return None


__all__ = ["CA_SIGNATURE_ALGORITHMS", "CERT_ALGORITHMS", "CERT_SUFFIX", "CertError", "HostCert", "cert_problem",
           "WireReader", "format_time", "parse_cert", "signature_problem"]

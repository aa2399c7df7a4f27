"""OpenSSH key revocation lists (KRLs, ``ssh-keygen -k``), read as ssh reads a ``RevokedHostKeys``
file (PROTOCOL.krl, krl.c's ``ssh_krl_check_key``).

A key is revoked when its plain public key (a certificate's key without the certificate) is
listed, or its SHA1 or SHA256 hash is; a certificate also when its CA key is revoked so, or when
a certificates section for its CA (or for any CA) lists its serial (one, a range, a bitmap;
serial 0 never) or its key id. A KRL that cannot be read refuses every key, as with ssh.
Signature sections are skipped (ssh does not check them for RevokedHostKeys).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from fleet.ssh.hostcert import CERT_SUFFIX, CertError, WireReader, parse_cert

MAGIC = b"SSHKRL\n\0"
CERTIFICATES, EXPLICIT_KEY, FINGERPRINT_SHA1, SIGNATURE, FINGERPRINT_SHA256 = 1, 2, 3, 4, 5
SERIAL_LIST, SERIAL_RANGE, SERIAL_BITMAP, KEY_ID = 0x20, 0x21, 0x22, 0x23


class KRLError(ValueError):
    """The file is not a KRL ssh would read."""


class _Reader(WireReader):
    error, what = KRLError, "key revocation list"


@dataclass
class _CertRevocations:
    ca: bytes  # b"": any CA (key ids only, as ssh-keygen writes them)
    serials: set[int] = field(default_factory=set)
    ranges: list[tuple[int, int]] = field(default_factory=list)
    key_ids: set[bytes] = field(default_factory=set)

    def revokes(self, serial: int, key_id: bytes) -> bool:
        if key_id in self.key_ids:
            return True
        if serial == 0:
            return False
        return serial in self.serials or any(lo <= serial <= hi for lo, hi in self.ranges)


@dataclass
class KRL:
    keys: set[bytes] = field(default_factory=set)
    sha1: set[bytes] = field(default_factory=set)
    sha256: set[bytes] = field(default_factory=set)
    certs: list[_CertRevocations] = field(default_factory=list)

    def key_revoked(self, blob: bytes) -> bool:
        """Whether the plain public key ``blob`` is revoked (listed, or its hash is)."""
        return (blob in self.keys or hashlib.sha1(blob).digest() in self.sha1  # noqa: S324 - KRL's format
                or hashlib.sha256(blob).digest() in self.sha256)

    def cert_revoked(self, ca: bytes, serial: int, key_id: bytes) -> bool:
        """Whether a certificate signed by ``ca`` with ``serial`` and ``key_id`` is revoked by a
        certificates section (its CA key's own revocation is :meth:`key_revoked`)."""
        return any((not c.ca or c.ca == ca) and c.revokes(serial, key_id) for c in self.certs)


def revoked(krl: KRL, blob: bytes) -> str | None:
    """How ``krl`` revokes the key or certificate ``blob`` as ssh's ``ssh_krl_check_key`` does
    (in words: "its key", "its CA key", "its certificate ..."), or None."""
    name = blob[4:4 + int.from_bytes(blob[:4], "big")].decode("ascii", "replace") if len(blob) >= 4 else ""
    if not name.endswith(CERT_SUFFIX):
        return "its key" if krl.key_revoked(blob) else None
    try:
        cert = parse_cert(blob)
    except CertError as exc:
        raise KRLError(f"the certificate cannot be read ({exc})") from None
    if krl.key_revoked(cert.key_blob):
        return "its key"
    if krl.key_revoked(cert.ca_blob):
        return "its certificate's CA key"
    if krl.cert_revoked(cert.ca_blob, cert.serial, cert.key_id.encode("utf-8", "surrogateescape")):
        return f"its host certificate (serial {cert.serial}, id {cert.key_id!r})"
    return None


def _certs_section(data: bytes) -> _CertRevocations:
    r = _Reader(data)
    out = _CertRevocations(r.string())
    r.string()  # reserved
    while r.left():
        kind, sub = r.u8(), _Reader(r.string())
        if kind == SERIAL_LIST:
            while sub.left():
                out.serials.add(sub.u64())
        elif kind == SERIAL_RANGE:
            lo, hi = sub.u64(), sub.u64()
            if lo > hi or lo == 0:
                raise KRLError("bad serial range")
            out.ranges.append((lo, hi))
        elif kind == SERIAL_BITMAP:
            offset, bits = sub.u64(), int.from_bytes(sub.string(), "big")
            i = 0
            while bits:
                if bits & 1:
                    out.serials.add(offset + i)
                bits >>= 1
                i += 1
        elif kind == KEY_ID:
            while sub.left():
                out.key_ids.add(sub.string())
        else:
            raise KRLError(f"unsupported certificate section {kind:#x}")
    return out


def parse(data: bytes) -> KRL:
    """The KRL in ``data`` (:class:`KRLError` when ssh would not read it)."""
    r = _Reader(data)
    if r.take(len(MAGIC)) != MAGIC:
        raise KRLError("not a KRL")
    if r.u32() != 1:
        raise KRLError("unsupported KRL format version")
    r.u64(), r.u64(), r.u64()  # version, generated date, flags
    r.string(), r.string()  # reserved, comment
    krl = KRL()
    while r.left():
        kind, sec = r.u8(), r.string()
        if kind == CERTIFICATES:
            krl.certs.append(_certs_section(sec))
        elif kind in (EXPLICIT_KEY, FINGERPRINT_SHA1, FINGERPRINT_SHA256):
            s = _Reader(sec)
            target = {EXPLICIT_KEY: krl.keys, FINGERPRINT_SHA1: krl.sha1, FINGERPRINT_SHA256: krl.sha256}[kind]
            size = {FINGERPRINT_SHA1: 20, FINGERPRINT_SHA256: 32}.get(kind)
            while s.left():
                item = s.string()
                if size is not None and len(item) != size:
                    raise KRLError("bad fingerprint length")
                target.add(item)
        elif kind == SIGNATURE:
            continue
        else:
            raise KRLError(f"unsupported section {kind}")
    return krl


__all__ = ["KRL", "KRLError", "MAGIC", "parse", "revoked"]

"""known_hosts as OpenSSH reads it: patterns, negation, hashed names, ``@revoked``, ``@cert-authority``.

paramiko's own parser raises on a ``@cert-authority`` or malformed line (one bad line would
stop every run), knows no wildcards or negation, and cannot tell a revoked key. This module
reads each file once per run, skips (and remembers) what it cannot use, and gives the same
verdict ``ssh -o StrictHostKeyChecking=yes`` would over all the files it is given: known (the
offered key is listed, whatever other types are), changed, revoked (a ``@revoked`` line in any
file, under any name) or unknown. ``@cert-authority`` lines (:meth:`KnownHosts.authorities`)
decide host certificates (:mod:`fleet.ssh.hostcert`), never a plain key.
"""
from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import hmac
import os
import struct
import threading
from dataclasses import dataclass
from enum import Enum


class Verdict(str, Enum):
    """What a known_hosts lookup says about a host's key."""

    KNOWN = "known"
    CHANGED = "changed"
    REVOKED = "revoked"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Entry:
    """One usable line of a known_hosts file."""

    marker: str  # "", "@revoked" or "@cert-authority"
    patterns: str
    keytype: str
    blob: bytes
    path: str
    line: int

    def matches(self, name: str) -> bool:
        """True if ``name`` (e.g. ``host`` or ``[host]:2222``) matches this line's host field."""
        return match_hosts(self.patterns, name)


def _blob_type(blob: bytes) -> str | None:
    if len(blob) < 4:
        return None
    n = struct.unpack(">I", blob[:4])[0]
    if n > len(blob) - 4 or n > 64:
        return None
    try:
        return blob[4:4 + n].decode("ascii")
    except UnicodeDecodeError:
        return None


def _match_one(pattern: str, name: str) -> bool:
    if pattern.startswith("|1|"):
        parts = pattern.split("|")
        if len(parts) != 4:
            return False
        try:
            salt = base64.b64decode(parts[2], validate=True)
            want = base64.b64decode(parts[3], validate=True)
        except (binascii.Error, ValueError):
            return False
        got = hmac.new(salt, name.encode(), hashlib.sha1).digest()
        return hmac.compare_digest(got, want)
    # OpenSSH's match_pattern: '*' and '?' only ('[' is literal, as in "[host]:port").
    if "*" not in pattern and "?" not in pattern:
        return pattern.lower() == name.lower()
    translated = "".join("[[]" if c == "[" else ("[]]" if c == "]" else c) for c in pattern.lower())
    return fnmatch.fnmatchcase(name.lower(), translated)


def match_hosts(field: str, name: str) -> bool:
    """OpenSSH's ``match_hostname``: any positive pattern matches and no negated one does."""
    positive = False
    for pat in field.split(","):
        if not pat:
            continue
        if pat.startswith("!"):
            if _match_one(pat[1:], name):
                return False
        elif _match_one(pat, name):
            positive = True
    return positive


def hash_name(name: str, salt: bytes | None = None) -> str:
    """``name`` hashed as ssh writes it with HashKnownHosts yes: ``|1|salt|HMAC-SHA1(salt, name)``."""
    salt = salt if salt is not None else os.urandom(20)
    mac = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(mac).decode()}"


# OpenSSH's default HostKeyAlgorithms order (plain key types): the handshake asks first for the
# types known_hosts has for the host, in this order, as OpenSSH's order_hostkeyalgs does.
PREFERRED_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
                   "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com", "ssh-rsa", "ssh-dss")


def key_name(hostname: str, port: int, alias: str | None = None) -> str:
    """The name OpenSSH files a host under: HostKeyAlias if set, else ``host`` or ``[host]:port``."""
    if alias:
        return alias
    return hostname if port == 22 else f"[{hostname}]:{port}"


class KnownHosts:
    """Parsed known_hosts files (each read once, on first use), shared by every connection."""

    def __init__(self) -> None:
        self._files: dict[str, list[Entry]] = {}
        self.skipped: list[tuple[str, int, str]] = []  # (path, line, why) of lines OpenSSH ignores too
        self._lock = threading.Lock()

    def entries(self, paths: tuple[str, ...] | list[str]) -> list[Entry]:
        """Every entry of ``paths``, in order (files are parsed once)."""
        out: list[Entry] = []
        for p in paths:
            p = os.path.expanduser(p)
            with self._lock:
                if p not in self._files:
                    self._files[p] = self._parse(p)
                out.extend(self._files[p])
        return out

    def add(self, path: str, entry: Entry) -> None:
        """Remember a just-accepted key for the rest of the run."""
        p = os.path.expanduser(path)
        with self._lock:
            self._files.setdefault(p, []).append(entry)

    def inject(self, label: str, data: bytes) -> None:
        """Read ``data`` as the known_hosts file ``label`` (what KnownHostsCommand printed)."""
        entries = self._parse(label, data)
        with self._lock:
            self._files[label] = entries

    def _parse(self, path: str, data: bytes | None = None) -> list[Entry]:
        if data is None:
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                return []  # a missing or unreadable file knows nothing, as for ssh
        out = []
        for i, raw in enumerate(data.splitlines(), start=1):
            line = raw.decode("utf-8", errors="replace").strip()
            if not line or line.startswith("#"):
                continue
            fields = line.split()
            marker = ""
            if fields[0].startswith("@"):
                marker = fields.pop(0)
                if marker not in ("@revoked", "@cert-authority"):
                    self.skipped.append((path, i, f"unknown marker {marker}"))
                    continue
            if len(fields) < 3:
                self.skipped.append((path, i, "too few fields"))
                continue
            hosts, keytype, b64 = fields[0], fields[1], fields[2]
            try:
                blob = base64.b64decode(b64, validate=True)
            except (binascii.Error, ValueError):
                self.skipped.append((path, i, "key is not base64"))
                continue
            if _blob_type(blob) != keytype:
                self.skipped.append((path, i, "key does not match its type"))
                continue
            out.append(Entry(marker, hosts, keytype, blob, path, i))
        return out

    def verdict(self, paths: tuple[str, ...] | list[str], name: str, keytype: str, blob: bytes,
                bare: str | None = None) -> tuple[Verdict, list[Entry]]:
        """OpenSSH's verdict for the key ``blob`` offered by the host filed under ``name``.

        ``bare``: for ``[host]:port`` names, the host alone; like OpenSSH ("found matching key
        w/out port"), the same key filed under it is accepted too. Returns the verdict and the
        entries that decided it (for messages).
        """
        entries = self.entries(paths)
        for e in entries:
            # A revoked key is refused whatever else is known, under any name it is listed for.
            if e.marker == "@revoked" and e.blob == blob:
                return Verdict.REVOKED, [e]
        mine = [e for e in entries if not e.marker and e.matches(name)]
        for e in mine:
            if e.blob == blob:
                return Verdict.KNOWN, [e]
        same_type = [e for e in mine if e.keytype == keytype]
        if not same_type and bare:
            for e in entries:
                if not e.marker and e.blob == blob and e.matches(bare):
                    return Verdict.KNOWN, [e]
        if same_type:
            return Verdict.CHANGED, same_type
        return Verdict.UNKNOWN, mine  # ``mine`` then holds keys of other types, if any

    def authorities(self, paths: tuple[str, ...] | list[str], name: str, bare: str | None = None) -> list[Entry]:
        """The ``@cert-authority`` lines for ``name`` (or, like ssh's retry without the port,
        for ``bare``), in file order."""
        return [e for e in self.entries(paths)
                if e.marker == "@cert-authority" and (e.matches(name) or (bare is not None and e.matches(bare)))]

    def revoked(self, paths: tuple[str, ...] | list[str], blob: bytes) -> Entry | None:
        """The ``@revoked`` line listing ``blob`` (a host or CA key), under any name, or None."""
        return next((e for e in self.entries(paths) if e.marker == "@revoked" and e.blob == blob), None)

    def known_types(self, paths: tuple[str, ...] | list[str], name: str) -> list[str]:
        """Key types known for ``name``, in OpenSSH's preference order (not the files' order), so
        the handshake asks for one of them first: a stale ``ssh-rsa`` line before the current
        ``ssh-ed25519`` one must not make the server show its RSA key."""
        seen: list[str] = []
        for e in self.entries(paths):
            if not e.marker and e.keytype not in seen and e.matches(name):
                seen.append(e.keytype)
        rank = {t: i for i, t in enumerate(PREFERRED_TYPES)}
        return sorted(seen, key=lambda t: (rank.get(t, len(rank)), seen.index(t)))


__all__ = ["PREFERRED_TYPES", "Entry", "KnownHosts", "Verdict", "hash_name", "key_name", "match_hosts"]

"""Scoped confirmation tokens for gated operations.

A token is bound to a scope (operation + sorted host set + digest of the arguments), expires
(10 min default), works once, can be revoked, and is HMAC-signed with a local secret kept
owner-only (0600) in the user's config dir. It is 24 base32 characters, typed as six
groups of four: ``k7qm-2xpa-...``.

Layout of ``token_dir``: ``token.key`` (the secret), ``issued/<id>.json`` (what each token
was for, so a wrong-scope refusal can say so), ``spent/<id>`` and ``revoked/<id>``
(created with O_EXCL, so two processes racing to spend one token cannot both win).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fleet.errors import (
    BadInput,
    Refused,
    TokenRefused,  # noqa: F401 - re-exported where they were defined
)
from fleet.files import loose_mode, write_atomic, writing

_NONCE = 4
_EXP = 4
_MAC = 7
_RAW = _NONCE + _EXP + _MAC  # 15 bytes -> 24 base32 characters, no padding
MAX_TTL = 86400  # a confirmation is for now: a day at most (and the expiry must fit its 4 bytes)


@dataclass(frozen=True)
class Scope:
    """What a token confirms."""

    operation: str
    hosts: tuple[str, ...]
    args_digest: str
    args_summary: str = ""
    # Everything the digest covers, kept in the local token record so a refusal can say what changed.
    detail: Any = field(default=None, compare=False)

    @classmethod
    def of(cls, operation: str, hosts: list[str] | tuple[str, ...], args: dict[str, Any],
           plan: dict[str, Any] | None = None) -> "Scope":
        """Scope of ``operation`` on ``hosts`` with ``args`` and the rest of the ``plan``
        (mode, canary, batches, resolved targets and paths, options, inventory digest): any
        JSON-able mappings. A token confirms exactly this; change any of it and it is refused."""
        detail = {"args": args, **(plan or {})}
        blob = json.dumps(detail, sort_keys=True, separators=(",", ":"), default=str).encode()
        summary = ", ".join(f"{k}={v!r}" for k, v in sorted(args.items()))
        return cls(operation, tuple(sorted(set(hosts))), hashlib.sha256(blob).hexdigest()[:16],
                   summary[:200], json.loads(json.dumps(detail, sort_keys=True, default=str)))

    def signing_bytes(self) -> bytes:
        """The canonical bytes the MAC covers."""
        return json.dumps([self.operation, list(self.hosts), self.args_digest], separators=(",", ":")).encode()

    def describe(self) -> str:
        """For messages: operation, hosts, arguments."""
        hosts = ",".join(self.hosts)
        return f"'{self.operation}' on [{hosts}] with {self.args_summary or 'no arguments'}"


def _changes(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of what differs between two plan details."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new)):
            out += _changes(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [prefix.rstrip(".") or "plan"]


def _encode(raw: bytes) -> str:
    s = base64.b32encode(raw).decode().lower()
    return "-".join(s[i:i + 4] for i in range(0, len(s), 4))


def _decode(token: str) -> bytes | None:
    s = "".join(token.split()).replace("-", "").upper()
    if len(s) != 24:
        return None
    try:
        raw = base64.b32decode(s)
    except (ValueError, binascii.Error):
        return None
    return raw if len(raw) == _RAW else None


class TokenStore:
    """Issues and spends tokens. ``clock`` is injectable for tests (seconds since the epoch)."""

    def __init__(self, directory: str | os.PathLike[str] = "~/.config/fleet", ttl: int = 600,
                 clock: Callable[[], float] = time.time) -> None:
        self.dir = Path(os.path.expanduser(str(directory)))
        self.ttl = ttl
        self.clock = clock

    # --------------------------------------------------------------- secret
    @property
    def secret_path(self) -> Path:
        """Where the signing secret lives."""
        return self.dir / "token.key"

    def _secret(self) -> bytes:
        p = self.secret_path
        if not p.exists():
            with writing("the token secret", p, "token_dir"):
                self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                try:
                    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                except FileExistsError:
                    pass
                else:
                    try:
                        with os.fdopen(fd, "wb") as f:
                            f.write(secrets.token_bytes(32))
                            f.flush()
                            os.fsync(f.fileno())
                    except OSError:
                        p.unlink(missing_ok=True)  # never leave a short secret behind
                        raise
        st = os.stat(p)
        loose = loose_mode(p)
        if loose is not None:
            raise Refused(f"token secret {p} is readable or writable by others (mode "
                          f"{loose:04o}): refusing to use it. Run 'chmod 600 {p}' "
                          f"and, if others may have read it, delete it so a new one is made")
        if st.st_uid != os.geteuid():
            raise Refused(f"token secret {p} belongs to another user (uid {st.st_uid}): refusing to use it")
        data = p.read_bytes()
        if len(data) < 16:
            raise Refused(f"token secret {p} is damaged (too short): delete it so a new one is made")
        return data

    def _mac(self, secret: bytes, nonce: bytes, exp: bytes, scope: Scope) -> bytes:
        return hmac.new(secret, nonce + exp + scope.signing_bytes(), hashlib.sha256).digest()[:_MAC]

    # --------------------------------------------------------------- issue / check
    def issue(self, scope: Scope, ttl: int | None = None) -> str:
        """A new token for ``scope``."""
        life = int(ttl if ttl is not None else self.ttl)
        if not 1 <= life <= MAX_TTL:
            raise BadInput(f"token ttl {life}s: write a whole number of seconds from 1 to {MAX_TTL} "
                           f"(setting 'fleet.token_ttl', INVOKE_FLEET_TOKEN_TTL)")
        secret = self._secret()
        nonce = secrets.token_bytes(_NONCE)
        expires = int(self.clock()) + life
        exp = struct.pack(">I", expires)
        token = _encode(nonce + exp + self._mac(secret, nonce, exp, scope))
        rec = {"id": nonce.hex(), "operation": scope.operation, "hosts": list(scope.hosts),
               "args_digest": scope.args_digest, "args": scope.args_summary, "expires": expires,
               "issued": int(self.clock()), "detail": scope.detail}
        d = self.dir / "issued"
        with writing("a confirmation token's record", d, "token_dir"):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(d / f"{nonce.hex()}.json", json.dumps(rec))
        return token

    def _record(self, nid: str) -> dict[str, Any] | None:
        p = self.dir / "issued" / f"{nid}.json"
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError):
            return None

    def verify(self, token: str, scope: Scope, spend: bool = True) -> None:
        """Accept ``token`` for ``scope`` (and spend it), or raise :class:`TokenRefused`."""
        raw = _decode(token or "")
        if raw is None:
            raise TokenRefused("malformed", f"confirmation token '{token}' is malformed or truncated: "
                               f"expected 24 letters and digits like abcd-efgh-ijkl-mnop-qrst-uvwx; "
                               f"copy it whole from the refusal message")
        secret = self._secret()
        nonce, exp, mac = raw[:_NONCE], raw[_NONCE:_NONCE + _EXP], raw[_NONCE + _EXP:]
        nid = nonce.hex()
        if not hmac.compare_digest(mac, self._mac(secret, nonce, exp, scope)):
            rec = self._record(nid)
            if rec is not None:
                other = Scope(rec["operation"], tuple(rec["hosts"]), rec["args_digest"], rec.get("args", ""))
                if hmac.compare_digest(mac, self._mac(secret, nonce, exp, other)):
                    changed = _changes(rec.get("detail"), scope.detail)
                    if other.operation != scope.operation:
                        changed.insert(0, "operation")
                    if other.hosts != scope.hosts:
                        changed.insert(0, "hosts")
                    what = f" (changed since it was issued: {', '.join(changed)})" if changed else ""
                    raise TokenRefused("wrong_scope", f"this token was issued for {other.describe()}, "
                                       f"not for {scope.describe()}{what}: run the command without "
                                       f"--confirm to see the new plan and get a token for it")
            raise TokenRefused("forged", "confirmation token signature does not match any token issued "
                               "on this machine (forged, altered, or made with another secret): run the "
                               "command without --confirm to get a real one")
        expires = struct.unpack(">I", exp)[0]
        now = self.clock()
        if (self.dir / "revoked" / nid).exists():
            raise TokenRefused("revoked", "confirmation token was revoked: run the command without "
                               "--confirm to get a new one")
        if now >= expires:
            ago = int(now - expires)
            rec = self._record(nid)
            lasted = (f"it was issued for {int(expires - rec['issued'])}s"
                      if rec is not None and isinstance(rec.get("issued"), (int, float)) else "")
            raise TokenRefused("expired", f"confirmation token expired {ago}s ago{' (' + lasted + ')' if lasted else ''}"
                               f": run the command without --confirm to get a new one")
        if (self.dir / "spent" / nid).exists():
            raise TokenRefused("reused", "confirmation token was already used (each token works once): "
                               "run the command without --confirm to get a new one")
        if spend:
            d = self.dir / "spent"
            with writing("the spent-token mark", d / nid, "token_dir"):
                d.mkdir(parents=True, exist_ok=True, mode=0o700)
                try:
                    fd = os.open(d / nid, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                except FileExistsError:
                    raise TokenRefused("reused", "confirmation token was already used (each token works "
                                       "once): run the command without --confirm to get a new one") from None
                try:
                    os.write(fd, str(int(now)).encode())
                except OSError:
                    pass  # the mark is its existence (made above); the time in it is only a note
                finally:
                    os.close(fd)

    def revoke(self, token: str) -> dict[str, Any]:
        """Revoke a token, given whole or by the id ``token.list`` shows; returns its record.
        Unknown or malformed tokens are bad input."""
        t = (token or "").strip().lower()
        if len(t) == 2 * _NONCE and all(c in "0123456789abcdef" for c in t):
            nid = t
        else:
            raw = _decode(token or "")
            if raw is None:
                raise BadInput(f"'{token}' is not a fleet token or token id: expected the 24 letters and digits "
                               f"(abcd-efgh-ijkl-mnop-qrst-uvwx) or the 8-character id from 'token.list'")
            nid = raw[:_NONCE].hex()
        rec = self._record(nid)
        if rec is None:
            raise BadInput(f"token '{token}' was not issued on this machine: nothing to revoke "
                           f"(see 'inv token.list')")
        d = self.dir / "revoked"
        with writing("the revoked-token mark", d / nid, "token_dir"):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
            (d / nid).touch()
        return rec

    def list(self) -> list[dict[str, Any]]:
        """Every issued token's record with its state: valid, expired, used or revoked."""
        out: list[dict[str, Any]] = []
        d = self.dir / "issued"
        if not d.exists():
            return out
        now = self.clock()
        for p in sorted(d.glob("*.json")):
            try:
                rec = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            nid = rec["id"]
            if (self.dir / "revoked" / nid).exists():
                state = "revoked"
            elif (self.dir / "spent" / nid).exists():
                state = "used"
            elif now >= rec["expires"]:
                state = "expired"
            else:
                state = "valid"
            rec["state"] = state
            out.append(rec)
        return sorted(out, key=lambda r: r.get("issued", 0))

"""Redaction: the one place that knows what a secret looks like in text. Every journal line,
Slack post, ``--json`` document and printed answer of every face goes through :class:`Redactor`."""
from __future__ import annotations

import base64
import re
from typing import Any, Iterable
from urllib.parse import quote


def secret_forms(value: str, username: str | None = None) -> list[str]:
    """Every form a secret may take in text: plain, URL-encoded, base64, and inside HTTP Basic auth."""
    out = [value, quote(value, safe=""), base64.b64encode(value.encode()).decode()]
    if username:
        out.append(base64.b64encode(f"{username}:{value}".encode()).decode())
    return [s for s in dict.fromkeys(out) if s]


_TOKEN_RE = re.compile(r"\b[a-z2-7]{4}(?:-[a-z2-7]{4}){5}\b")  # fleet confirmation tokens


_SLACK_RE = re.compile(r"xox[abposr]-[A-Za-z0-9-]+")


# An Authorization header echoed back by a server (Basic or Bearer credentials).
_AUTH_RE = re.compile(r"(?i)\b(basic|bearer)\s+[A-Za-z0-9+/=._~-]{8,}")


class Redactor:
    """Removes secrets (known values, fleet tokens, Slack tokens) from anything journalled or posted."""

    def __init__(self, secrets_: Iterable[str] = (), patterns: bool = True) -> None:
        self.values = sorted({s for s in secrets_ if s and len(s) >= 4}, key=len, reverse=True)
        self.patterns = patterns

    @classmethod
    def none(cls) -> "Redactor":
        """One that changes nothing: for machine-read output fleet parses and never shows as is."""
        return cls((), patterns=False)

    def text(self, s: str) -> str:
        """Redacted copy of ``s``."""
        for v in self.values:
            s = s.replace(v, "[redacted]")
        if not self.patterns:
            return s
        s = _TOKEN_RE.sub("[token]", s)
        s = _AUTH_RE.sub(lambda m: m.group(1) + " [redacted]", s)
        return _SLACK_RE.sub("[slack-token]", s)

    def value(self, v: Any) -> Any:
        """Redacted copy of any JSON-able value."""
        if isinstance(v, str):
            return self.text(v)
        if isinstance(v, dict):
            return {k: self.value(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [self.value(x) for x in v]
        return v

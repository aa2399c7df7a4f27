"""Slack's Web API as ``fleet listen`` calls it: every call bounded, every fault one clear line.

- a 429 waits out its Retry-After, whatever it says (missing, ``soon``, ``-5``, a day) read by
  :func:`fleet.audit.slack.retry_after`, each wait at most 30 s and never past the deadline
  (``--duration``), three tries a call; then the call is skipped until the next pass;
- a hang (no answer within the call's timeout: 10 s, less near the deadline), a 5xx, an HTML
  or other non-JSON body, an unreachable Slack: the call is skipped, said once, and tried again
  next pass: the listener keeps going;
- a token Slack will not take (``invalid_auth``, ``token_revoked``, ``missing_scope``, ...) or a
  channel it cannot read stops the listener: :class:`ListenStopped` (exit 1) with the reason;
- any other ``ok: false`` is :class:`SlackRefused`, for the caller to judge.

slack-sdk's own logging is kept quiet: what a person needs is said here, once.
"""
from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any, Callable

from fleet.audit.slack import retry_after
from fleet.errors import FleetError
from fleet.inventory import SlackSettings

# Slack errors no retry will change: the listener cannot go on.
FATAL = {"invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired", "no_permission",
         "missing_scope", "channel_not_found", "not_in_channel", "not_allowed_token_type", "ekm_access_denied",
         "team_access_not_granted", "org_login_required", "invalid_token"}
MAX_WAIT = 30.0  # the longest wait for one 429
TRIES = 3
TIMEOUT = 10.0


class ListenStopped(FleetError):
    """The listener cannot go on (Slack will not take its token, or cannot show the channel)."""

    exit_code = 1


class SlackRefused(Exception):
    """Slack answered ``ok: false`` with ``error`` (not one that stops the listener)."""

    def __init__(self, method: str, error: str) -> None:
        self.method = method
        self.error = error
        super().__init__(f"{method}: {error}")


def quiet_logger(name: str) -> logging.Logger:
    """A logger that says nothing (slack-sdk logs every failure at ERROR to stderr otherwise)."""
    lg = logging.getLogger(name)
    if not lg.handlers:
        lg.addHandler(logging.NullHandler())
    lg.propagate = False
    return lg


class Once:
    """Says each line at most once per key (a fault that repeats every pass is one line)."""

    def __init__(self, out: Callable[[str], None] | None = None) -> None:
        self.out = out or (lambda line: print(line, file=sys.stderr, flush=True))
        self.said: set[str] = set()

    def __call__(self, key: str, line: str) -> None:
        if key not in self.said:
            self.said.add(key)
            self.out(line)


def _error(exc: Any) -> tuple[int, str, Any]:
    resp = getattr(exc, "response", None)
    status = int(getattr(resp, "status_code", 0) or 0)
    try:
        err = str(resp.get("error") or "") if resp is not None else ""
    except (AttributeError, TypeError, ValueError):
        err = ""
    return status, err, getattr(resp, "headers", None)


def _needed(exc: Any) -> str:
    try:
        return str(exc.response.get("needed") or "")
    except (AttributeError, TypeError, ValueError):
        return ""


def _headers_value(headers: Any, name: str) -> str | None:
    try:
        v = headers.get(name, headers.get(name.lower())) if headers is not None else None
    except AttributeError:
        return None
    if isinstance(v, (list, tuple)):
        v = v[0] if v else None
    return None if v is None else str(v)


class SlackWeb:
    """slack-sdk's WebClient behind one bounded :meth:`call`. ``deadline`` (monotonic) bounds every
    wait and timeout; ``note`` says each fault once."""

    def __init__(self, settings: SlackSettings, token: str, note: Once, sleep: Callable[[float], None] = time.sleep,
                 token_env: str | None = None) -> None:
        from slack_sdk import WebClient

        kw: dict[str, Any] = {"token": token, "timeout": int(TIMEOUT), "retry_handlers": [],
                              "logger": quiet_logger("fleet.listen.web")}
        if settings.base_url:
            kw["base_url"] = settings.base_url if settings.base_url.endswith("/") else settings.base_url + "/"
        self.client = WebClient(**kw)
        self.note = note
        self.sleep = sleep
        self.token_env = token_env or settings.token_env
        self.deadline: float | None = None
        self.limited: dict[str, float] = {}  # method -> not before (monotonic), after a 429 not waited out

    def left(self) -> float | None:
        """Seconds to the deadline (None: no deadline)."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def call(self, method: str, token_env: str | None = None, wait: bool = True, **kw: Any) -> dict[str, Any] | None:
        """One Web API call (``conversations.replies``, ``chat.update``...); its answer, or None
        when Slack could not answer now (said once). ``wait``: a 429 is waited out and tried
        again; else the method is not called again before its Retry-After. Raises
        :class:`ListenStopped` or :class:`SlackRefused`."""
        from slack_sdk.errors import SlackApiError

        fn = getattr(self.client, method.replace(".", "_"))
        if time.monotonic() < self.limited.get(method, 0.0):
            return None
        for _ in range(TRIES):
            left = self.left()
            if left is not None and left <= 0:
                return None
            timeout = TIMEOUT if left is None else max(1.0, min(TIMEOUT, math.ceil(left)))
            self.client.timeout = int(timeout)
            try:
                resp = fn(**kw)
                return resp.data if isinstance(resp.data, dict) else {}
            except SlackApiError as exc:
                status, err, headers = _error(exc)
                if status == 429 or err == "ratelimited":
                    raw = _headers_value(headers, "Retry-After")
                    pause = min(MAX_WAIT, max(0.5, retry_after(headers, 1.0)))
                    left = self.left()
                    self.note(f"429 {method}", f"listen: Slack rate limited {method} (Retry-After: "
                                               f"{'none' if raw is None else repr(raw)}): waiting {pause:g}s at most "
                                               f"before trying again, within --duration; the listener goes on")
                    if not wait:
                        self.limited[method] = time.monotonic() + pause
                        return None
                    if left is not None and left <= pause:
                        if left > 0:
                            self.sleep(left)
                        return None
                    self.sleep(pause)
                    continue
                if err in FATAL:
                    env = token_env or self.token_env
                    needed = _needed(exc)
                    raise ListenStopped(f"listen stopped: Slack said {err} to {method}"
                                        + (f" (it needs the scope {needed})" if needed else "")
                                        + f": check the token in ${env} (and the app's scopes, and that it is in "
                                          f"the channel)") from None
                if status >= 500:
                    self.note(f"5xx {method}", f"listen: Slack answered {method} with HTTP {status}: skipped, "
                                               f"tried again next pass")
                    return None
                if err.startswith("Received a response in a non-JSON format") or (status and status != 200):
                    what = f"HTTP {status}, " if status != 200 else ""
                    self.note(f"body {method}", f"listen: Slack answered {method} with a body that is not JSON "
                                                f"({what}an HTML page: a proxy or an outage?): skipped, tried again "
                                                f"next pass")
                    return None
                raise SlackRefused(method, err or f"HTTP {status}") from None
            except Exception as exc:  # noqa: BLE001 - any transport failure: skipped, tried again
                if _timed_out(exc):
                    self.note(f"hang {method}", f"listen: Slack did not answer {method} within {timeout:g}s: "
                                                f"skipped, tried again next pass")
                else:
                    self.note(f"down {method}", f"listen: Slack unreachable for {method} ({type(exc).__name__}: "
                                                f"{str(exc)[:120]}): tried again next pass")
                return None
        return None


def _timed_out(exc: BaseException) -> bool:
    import socket

    if isinstance(exc, (TimeoutError, socket.timeout)):
        return True
    reason = getattr(exc, "reason", None)
    return isinstance(reason, (TimeoutError, socket.timeout)) or "timed out" in str(exc)


__all__ = ["FATAL", "ListenStopped", "Once", "SlackRefused", "SlackWeb", "quiet_logger"]

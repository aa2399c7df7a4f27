"""The HTTP side of an OpenCode server, coded to contracts-opencode.md: how fleet talks, not what.

Every call carries the repo's ``directory`` (status and events are per directory), Basic
auth when the server has a password (username default ``opencode``; the password comes
from an env var or a 0600 file, never the inventory), and timeouts. Connect errors are
retried with tenacity; nothing that may have reached the server is ever sent twice.

Bounded against any server: every reply is read with a size cap (:data:`MAX_BODY`; a server
that sends a gigabyte costs a few megabytes, then a clear error), every exchange has an overall
deadline (not only per read), and a reply of the wrong shape is one :class:`ProtocolError` line
naming the host (:meth:`HTTPClient._shape`), never a ``TypeError`` halfway through a task.
The endpoints are :mod:`fleet.agent.client`'s.
"""
from __future__ import annotations

import functools
import ssl
import threading
import time
from typing import Any, TypeVar

import httpx
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_fixed

from fleet.agent.password import resolve_password
from fleet.errors import (
    AuthRefused,
    BadInput,
    ProtocolError,
    ResponseTimeout,
    ServerError,
    SessionNotFound,
    Unreachable,
)
from fleet.inventory import Host, OpenCodeEndpoint

MAX_BODY = 8 * 1024 * 1024  # bytes of one reply (decoded): a few MB, far above any the contract describes
MAX_MESSAGES_BODY = 64 * 1024 * 1024  # a long session's messages (tool outputs are capped at ~50 kB each)


class BodyTooLarge(Exception):
    """A reply went past its cap (raised inside the exchange, mapped to :class:`ProtocolError`)."""


class Reply:
    """One bounded reply: status, headers and the (decoded) body bytes."""

    def __init__(self, status_code: int, headers: httpx.Headers, body: bytes) -> None:
        self.status_code = status_code
        self.headers = headers
        self.body = body

    @property
    def text(self) -> str:
        """The body as text (undecodable bytes replaced)."""
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body as JSON (ValueError if it is not)."""
        import json as _json
        try:
            return _json.loads(self.body)
        except RecursionError:  # nested deeper than Python parses: not a reply of the contract
            raise ValueError("JSON nested too deeply") from None


def _excerpt(resp: Reply, n: int = 200) -> str:
    text = resp.text
    try:
        doc = resp.json()
        if isinstance(doc, dict):
            data = doc.get("data")
            for cand in ((data or {}).get("message") if isinstance(data, dict) else None, doc.get("message"),
                         doc.get("_tag"), doc.get("name")):
                if isinstance(cand, str) and cand:
                    return cand[:n]
    except ValueError:
        pass
    text = " ".join(text.split())
    return text[:n] + ("…" if len(text) > n else "")


def _kind(value: Any) -> str:
    """A JSON type's name, for an error a person reads: ``a string ('yes')``."""
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
             dict: "an object", type(None): "null"}
    shown = repr(value)
    return names.get(type(value), type(value).__name__) + (f" ({shown[:40]})" if not isinstance(value, (list, dict))
                                                            else "")


@functools.lru_cache(maxsize=1)
def tls_context() -> ssl.SSLContext:
    """One TLS context for the process, as httpx makes it (certifi, SSL_CERT_FILE/DIR): httpx reads
    the CA bundle again for every client, about 20 ms of CPU each, and fleet makes a client per
    server per call (and one per event stream)."""
    return httpx.create_ssl_context()


_C = TypeVar("_C", bound="HTTPClient")


class HTTPClient:
    """The HTTP side of one host's OpenCode server: auth, deadlines, caps, errors mapped once.
    Use as a context manager, or call :meth:`close`. :class:`~fleet.agent.client.OpenCodeClient`
    adds the endpoints."""

    def _scrub(self, text: str) -> str:
        for f in self._secrets:
            text = text.replace(f, "[redacted]")
        return text

    def __init__(self, host: Host, directory: str | None = None, timeout: float = 30.0,
                 connect_timeout: float = 5.0, connect_attempts: int = 3,
                 transport: httpx.BaseTransport | None = None) -> None:
        if host.opencode is None:
            raise BadInput(f"{host.name} has no OpenCode server in the inventory: add "
                           f"opencode: {{url: http://HOST:4105}} under it")
        self.host = host
        self.endpoint: OpenCodeEndpoint = host.opencode
        self.base = host.opencode.url
        self.directory = directory
        self.username = host.opencode.username
        password = resolve_password(host.opencode, host.name)
        self.has_password = password is not None
        from fleet.safety.redact import secret_forms
        # A server may echo the request (Authorization header included) in an error body: every
        # reply text that goes into an error is scrubbed of our own credentials first.
        self._secrets = secret_forms(password, self.username) if password else []
        auth = httpx.BasicAuth(self.username, password) if password is not None else None
        self.connect_attempts = max(1, connect_attempts)
        self.timeout = timeout
        self.deadline: float | None = None  # monotonic time no call may outlive (set by dispatch)
        self._make = lambda: httpx.Client(base_url=self.base, auth=auth, transport=transport, verify=tls_context(),
                                          timeout=httpx.Timeout(timeout, connect=connect_timeout),
                                          headers={"User-Agent": "fleet/0.2"})
        self.http = self._make()

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    # ------------------------------------------------------------------ transport
    def _send(self, method: str, path: str, kwargs: dict[str, Any], total: float, limit: int) -> Reply:
        """One HTTP exchange with an overall deadline and a size cap: httpx bounds each read, not
        the whole reply, so a server that trickles a byte at a time would never end, and one that
        sends a gigabyte would fill the memory. The exchange runs on a helper thread reading the
        body in chunks up to ``limit`` bytes; past ``total`` its client is dropped (closing its
        socket) and a fresh one serves later calls. Ctrl-C reaches the waiting (main) thread at once."""
        box: dict[str, Any] = {}
        http = self.http

        def go() -> None:
            try:
                req = http.build_request(method, path, **kwargs)
                resp = http.send(req, stream=True)
                try:
                    chunks, size = [], 0
                    for chunk in resp.iter_bytes():
                        size += len(chunk)
                        if size > limit:
                            raise BodyTooLarge(f"the reply to {method} {path} is larger than "
                                               f"{limit // (1024 * 1024)} MiB")
                        chunks.append(chunk)
                    box["resp"] = Reply(resp.status_code, resp.headers, b"".join(chunks))
                finally:
                    resp.close()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                box["exc"] = exc
        t = threading.Thread(target=go, name="fleet-http", daemon=True)
        t.start()
        t.join(max(0.05, total))
        if t.is_alive():
            stuck, self.http = self.http, self._make()
            threading.Thread(target=stuck.close, daemon=True).start()
            raise httpx.ReadTimeout(f"no complete reply within {total:g}s")
        if "exc" in box:
            raise box["exc"]
        return box["resp"]

    def request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
                expect_json: bool = True, timeout: float | None = None, limit: int = MAX_BODY) -> Any:
        """One call. Connect failures are retried (nothing was sent); everything else is mapped once."""
        return self.exchange(method, path, json=json, params=params, expect_json=expect_json, timeout=timeout,
                             limit=limit)[0]

    def exchange(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
                 expect_json: bool = True, timeout: float | None = None,
                 limit: int = MAX_BODY) -> tuple[Any, httpx.Headers]:
        """:meth:`request`, with the reply's headers (paging cursors live there)."""
        q = dict(params or {})
        if self.directory and "directory" not in q:
            q["directory"] = self.directory
        url = self.base + path
        kwargs: dict[str, Any] = {"params": q}
        if json is not None:
            kwargs["json"] = json
        if timeout is not None:
            kwargs["timeout"] = httpx.Timeout(timeout, connect=self.http.timeout.connect)
        total = (timeout if timeout is not None else self.timeout) + (self.http.timeout.connect or 0.0)
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise ResponseTimeout(self.host.name, url, f"out of time before {method} {path} (the "
                                      f"operation's deadline passed)")
            total = min(total, left)
        try:
            for attempt in Retrying(stop=stop_after_attempt(self.connect_attempts), wait=wait_fixed(0.5),
                                    retry=retry_if_exception_type(httpx.ConnectError), reraise=True):
                with attempt:
                    resp = self._send(method, path, kwargs, total, limit)
        except httpx.ConnectError as exc:
            raise Unreachable(self.host.name, url, f"cannot connect to the OpenCode server after "
                              f"{self.connect_attempts} attempts ({exc or 'connection refused'}); is "
                              f"'opencode serve' running there and is the URL in the inventory right?") from None
        except httpx.ConnectTimeout:
            raise Unreachable(self.host.name, url, f"connecting to the OpenCode server timed out after "
                              f"{self.http.timeout.connect:g}s: is the host up (and Tailscale connected)?") from None
        except httpx.TimeoutException:
            raise ResponseTimeout(self.host.name, url, f"the server accepted the request but did not answer "
                                  f"{method} {path} in time") from None
        except httpx.RemoteProtocolError as exc:
            raise ProtocolError(self.host.name, url, f"the server broke the HTTP exchange: {exc}") from None
        except httpx.HTTPError as exc:
            raise Unreachable(self.host.name, url, f"HTTP error: {exc}") from None
        except BodyTooLarge as exc:
            raise ProtocolError(self.host.name, url, f"{exc}: not an OpenCode reply fleet will read") from None
        if resp.status_code == 401:
            how = (f"username '{self.username}' with the password from the inventory's "
                   f"{'password_env' if self.endpoint.password_env else 'password_file'}"
                   if self.has_password else "no password (the inventory names none, but the server wants one)")
            raise AuthRefused(self.host.name, url, f"401 Unauthorized: the server refused {how}")
        if resp.status_code == 404:
            raise SessionNotFound(self.host.name, url, f"404 not found: {self._scrub(_excerpt(resp)) or path}")
        if resp.status_code >= 400:
            raise ServerError(self.host.name, url, f"server error {resp.status_code}: "
                              f"{self._scrub(_excerpt(resp)) or '(empty body)'}")
        if not expect_json or resp.status_code == 204:
            return None, resp.headers
        try:
            return resp.json(), resp.headers
        except ValueError:
            raise ProtocolError(self.host.name, url, f"expected JSON from {method} {path}, got "
                                f"{resp.headers.get('content-type', 'no content type')}: "
                                f"{' '.join(resp.text.split())[:120]!r}") from None

    def _shape(self, value: Any, kind: type, what: str, path: str) -> Any:
        if not isinstance(value, kind):
            raise ProtocolError(self.host.name, self.base + path, f"{what}: expected "
                                f"{_kind(kind())}, got {_kind(value)}")
        return value

    def _items(self, value: Any, what: str, path: str) -> list[dict[str, Any]]:
        """A JSON array of objects: the array is required, items that are not objects are dropped
        (one odd entry must not hide the rest)."""
        return [v for v in self._shape(value, list, what, path) if isinstance(v, dict)]


__all__ = ["MAX_BODY", "MAX_MESSAGES_BODY", "BodyTooLarge", "HTTPClient", "Reply", "resolve_password", "tls_context"]

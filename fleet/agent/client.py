"""An httpx client for one OpenCode server (``opencode serve``), coded to contracts-opencode.md.

Every call carries the repo's ``directory`` (status and events are per directory), Basic
auth when the server has a password (username default ``opencode``; the password comes
from an env var or a 0600 file, never the inventory), and timeouts. Connect errors are
retried with tenacity; nothing that may have reached the server is ever sent twice.

Bounded against any server: every reply is read with a size cap (:data:`MAX_BODY`; a server
that sends a gigabyte costs a few megabytes, then a clear error), every exchange has an overall
deadline (not only per read), and every reply is checked for the shape the contract promises
before anyone reads it, so a wrong type is one :class:`ProtocolError` line naming the host,
never a ``TypeError`` halfway through a task.

HTTP only (the endpoints and their errors): what the replies mean lives beside it, following a
turn to its end in :mod:`fleet.agent.turn`, tokens and cost in :mod:`fleet.agent.usage`.
"""
from __future__ import annotations

import functools
import os
import ssl
import threading
import time
from typing import TYPE_CHECKING, Any

import httpx
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_fixed

from fleet.errors import (  # noqa: F401
    AuthRefused,
    BadInput,
    OpenCodeError,
    ProtocolError,
    ResponseTimeout,
    ServerError,
    SessionNotFound,
    Unreachable,
)
from fleet.files import loose_mode
from fleet.inventory import Host, OpenCodeEndpoint

if TYPE_CHECKING:
    from fleet.agent.turn import Answer


def resolve_password(ep: OpenCodeEndpoint, host: str) -> str | None:
    """The server password from its env var or 0600 file; None when the inventory names neither."""
    if ep.password_env:
        val = os.environ.get(ep.password_env)
        if not val:
            raise BadInput(f"{host}: environment variable {ep.password_env} (the OpenCode password) is not "
                           f"set: export it, or point the inventory at a 0600 password_file instead")
        return val
    if ep.password_file:
        p = ep.password_file
        try:
            loose = loose_mode(p)
        except FileNotFoundError:
            raise BadInput(f"{host}: OpenCode password_file {p} does not exist: create it with the password "
                           f"and 'chmod 600 {p}'") from None
        if loose is not None:
            raise BadInput(f"{host}: OpenCode password_file {p} is readable by others (mode "
                           f"{loose:04o}): run 'chmod 600 {p}'")
        with open(p, encoding="utf-8") as f:
            val = f.read().strip()
        if not val:
            raise BadInput(f"{host}: OpenCode password_file {p} is empty")
        return val
    return None


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


class OpenCodeClient:
    """One host's OpenCode server. Use as a context manager, or call :meth:`close`."""

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

    def __enter__(self) -> "OpenCodeClient":
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

    def _sessions(self, value: Any, path: str) -> list[dict[str, Any]]:
        """Sessions as the contract has them: an object with a string ``id`` (others dropped), and
        the fields fleet reads of the right type (a wrong one is left out, not trusted)."""
        out = []
        for s in self._items(value, "session list", path):
            if isinstance(s.get("id"), str) and s["id"]:
                out.append(_clean_session(s))
        return out

    # ------------------------------------------------------------------ API
    def health(self) -> dict[str, Any]:
        """``GET /global/health`` -> ``{healthy: bool, version: str}``, checked: a server that says
        ``"healthy": "yes"`` or a numeric version is not one fleet can trust to follow the contract."""
        h = self._shape(self.request("GET", "/global/health"), dict, "health", "/global/health")
        if not isinstance(h.get("healthy"), bool):
            raise ProtocolError(self.host.name, self.base + "/global/health", f"health: 'healthy' should be "
                                f"true or false, got {_kind(h.get('healthy'))}: not an OpenCode server fleet knows")
        if not isinstance(h.get("version", ""), str):
            raise ProtocolError(self.host.name, self.base + "/global/health", f"health: 'version' should be "
                                f"a string like \"1.18.33\", got {_kind(h.get('version'))}")
        return h

    def create_session(self, title: str, metadata: dict[str, Any] | None = None,
                       permission: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """``POST /session``; returns the Session (with ``id``). ``metadata`` is kept by the server;
        ``permission`` is the session's own ruleset (``[{permission, pattern, action}]``), which
        OpenCode applies after the configured rules (so it wins where both match)."""
        body: dict[str, Any] = {"title": title}
        if metadata:
            body["metadata"] = metadata
        if permission:
            body["permission"] = permission
        s = self._shape(self.request("POST", "/session", json=body), dict, "session", "/session")
        if not isinstance(s.get("id"), str) or not s["id"]:
            raise ProtocolError(self.host.name, self.base + "/session", "created session has no id")
        return _clean_session(s)

    def get_session(self, sid: str) -> dict[str, Any]:
        """``GET /session/{id}`` (any directory: the server finds the session by its id)."""
        s = self._shape(self.request("GET", f"/session/{sid}"), dict, "session", f"/session/{sid}")
        return _clean_session(s)

    def children(self, sid: str) -> list[dict[str, Any]]:
        """``GET /session/{id}/children``: the subagent sessions the session's ``task`` tool made."""
        return self._sessions(self.request("GET", f"/session/{sid}/children"), f"/session/{sid}/children")

    def tree(self, sid: str, limit: int = 200) -> list[dict[str, Any]]:
        """Every descendant of ``sid`` (children, their children...), breadth first, at most
        ``limit``: subagents work, ask and bill like the session that started them."""
        out: list[dict[str, Any]] = []
        seen = {sid}
        todo = [sid]
        while todo and len(out) < limit:
            for c in self.children(todo.pop(0)):
                if c["id"] not in seen and len(out) < limit:
                    seen.add(c["id"])
                    out.append(c)
                    todo.append(c["id"])
        return out

    def list_sessions(self, all_dirs: bool = False, limit: int = 200,
                      directories: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """Sessions, most recently updated first: of this directory, or with ``all_dirs`` of
        every project on the server.

        ``GET /session`` lists one project only (the server's own, without a directory), so a
        server started in ``$HOME`` would list none of the repos' sessions. Across projects:
        ``GET /experimental/session`` (paged by its ``x-next-cursor`` header), and on a server
        without it one ``GET /session`` per directory in ``directories`` (the repo directories the
        inventory names) plus the server's own."""
        if not all_dirs:
            return self._sessions(self.request("GET", "/session"), "/session")[:limit]
        saved = self.directory
        self.directory = None
        try:
            try:
                return self._all_sessions(limit)
            except SessionNotFound:  # a server without the cross-project listing
                pass
            got: dict[str, dict[str, Any]] = {}
            for d in (None, *directories):
                self.directory = d
                try:
                    for s in self._sessions(self.request("GET", "/session"), "/session"):
                        got.setdefault(s["id"], s)
                except SessionNotFound:
                    continue
            return sorted(got.values(), key=lambda s: -_num((s.get("time") or {}).get("updated")))[:limit]
        finally:
            self.directory = saved

    def _all_sessions(self, limit: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        cursor: str | None = None
        while len(out) < limit:
            params: dict[str, Any] = {"limit": min(100, limit - len(out))}
            if cursor:
                params["cursor"] = cursor
            got, headers = self.exchange("GET", "/experimental/session", params=params)
            page = self._sessions(got, "/experimental/session")
            fresh = [s for s in page if s["id"] not in seen]
            seen.update(s["id"] for s in fresh)
            out += fresh
            nxt = headers.get("x-next-cursor")
            if not fresh or not nxt or nxt == cursor or len(page) < params["limit"]:
                break
            cursor = nxt
        return out[:limit]

    def status(self) -> dict[str, Any]:
        """``GET /session/status``: busy/retry sessions of this directory (idle ones are absent);
        entries that are not objects are dropped."""
        got = self._shape(self.request("GET", "/session/status"), dict, "status", "/session/status")
        return {k: v for k, v in got.items() if isinstance(k, str) and isinstance(v, dict)}

    def prompt_async(self, sid: str, text: str, model: str | None = None) -> None:
        """``POST /session/{id}/prompt_async`` (204). Sent once; never retried after it left."""
        body: dict[str, Any] = {"parts": [{"type": "text", "text": text}]}
        if model:
            provider, _, mid = model.partition("/")
            body["model"] = {"providerID": provider, "modelID": mid}
        self.request("POST", f"/session/{sid}/prompt_async", json=body, expect_json=False)

    def messages(self, sid: str) -> list[dict[str, Any]]:
        """``GET /session/{id}/message``, oldest first, each ``{info: {...}, parts: [...]}`` (a
        message of another shape is dropped; parts that are not objects too)."""
        got = self._items(self.request("GET", f"/session/{sid}/message", limit=MAX_MESSAGES_BODY), "messages",
                          f"/session/{sid}/message")
        out = []
        for m in got:
            info = m.get("info")
            if not isinstance(info, dict):
                continue
            parts = m.get("parts")
            out.append({"info": info, "parts": [p for p in parts if isinstance(p, dict)] if isinstance(parts, list)
                        else []})
        return out

    def abort(self, sid: str) -> bool:
        """``POST /session/{id}/abort``."""
        return bool(self.request("POST", f"/session/{sid}/abort"))

    def delete_session(self, sid: str) -> bool:
        """``DELETE /session/{id}`` (its subagent sessions go with it)."""
        return bool(self.request("DELETE", f"/session/{sid}"))

    def permissions(self, sid: str | None = None, sessions: set[str] | None = None) -> list[dict[str, Any]]:
        """Pending permission requests of this directory (``GET /permission``), of one session if
        ``sid`` (or of any in ``sessions``). A server without the endpoint has none."""
        return self._pending("/permission", "permissions", sid, sessions)

    def questions(self, sid: str | None = None, sessions: set[str] | None = None) -> list[dict[str, Any]]:
        """Pending questions (``GET /question``: the agent's question tool), filtered as :meth:`permissions`."""
        return self._pending("/question", "questions", sid, sessions)

    def _pending(self, path: str, what: str, sid: str | None, sessions: set[str] | None) -> list[dict[str, Any]]:
        try:
            got = self._items(self.request("GET", path), what, path)
        except SessionNotFound:
            return []
        want = sessions if sessions is not None else ({sid} if sid is not None else None)
        return [p for p in got if isinstance(p.get("id"), str) and isinstance(p.get("sessionID"), str)
                and (want is None or p["sessionID"] in want)]

    def reply_question(self, request_id: str, answers: list[list[str]]) -> bool:
        """Answer a question request: one list of chosen labels (or free text) per question."""
        return bool(self.request("POST", f"/question/{request_id}/reply", json={"answers": answers}))

    def reject_question(self, request_id: str) -> bool:
        """Turn a question down (the agent is told nobody answered it)."""
        return bool(self.request("POST", f"/question/{request_id}/reject"))

    def list_dir(self, path: str) -> list[dict[str, Any]]:
        """Entries of a directory on the host (``GET /file?path=.`` scoped to it); raises if it is not there."""
        saved = self.directory
        self.directory = path
        try:
            got = self.request("GET", "/file", params={"path": "."})
        finally:
            self.directory = saved
        return [e for e in got if isinstance(e, dict)] if isinstance(got, list) else []

    def reply_permission(self, request_id: str, reply: str, message: str | None = None) -> bool:
        """Answer a permission request: ``once``, ``always`` or ``reject``."""
        body: dict[str, Any] = {"reply": reply}
        if message:
            body["message"] = message
        return bool(self.request("POST", f"/permission/{request_id}/reply", json=body))

    def diff(self, sid: str, message_id: str | None = None) -> list[dict[str, Any]]:
        """Files the session (or one turn of it, ``message_id``) changed: file, additions, deletions, status."""
        got = self.request("GET", f"/session/{sid}/diff", params={"messageID": message_id} if message_id else None)
        return [d for d in got if isinstance(d, dict)] if isinstance(got, list) else []

    def todo(self, sid: str) -> list[dict[str, Any]]:
        """The session's todo list."""
        got = self.request("GET", f"/session/{sid}/todo")
        return [t for t in got if isinstance(t, dict)] if isinstance(got, list) else []

    def wait_idle(self, sid: str, after: int, timeout: float, **kw: Any) -> Answer | None:
        """The end of the turn after message ``after`` (an Answer), or None on timeout: kept for
        callers of the old API; following a turn is :func:`fleet.agent.turn.follow_turn`, which
        also says what the agent waits on when the wait runs out."""
        from fleet.agent.turn import follow_turn
        return follow_turn(self, sid, after, timeout, **kw).answer


def _num(v: Any) -> float:
    """A number the server sent, or 0 for anything else (``True`` is not a number here)."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0.0


def _clean_session(s: dict[str, Any]) -> dict[str, Any]:
    """A session with the fields fleet reads made safe: strings that are not strings, times and
    metadata that are not objects, are dropped (the rest of the session is kept as it came)."""
    out = dict(s)
    for k in ("title", "directory", "parentID", "projectID"):
        if k in out and not isinstance(out[k], str):
            out.pop(k)
    for k in ("time", "metadata", "tokens"):
        if k in out and not isinstance(out[k], dict):
            out.pop(k)
    if isinstance(out.get("time"), dict):
        out["time"] = {k: v for k, v in out["time"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return out

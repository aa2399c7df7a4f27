"""An httpx client for one OpenCode server (``opencode serve``), coded to contracts-opencode.md.

Every call carries the repo's ``directory`` (status and events are per directory), Basic
auth when the server has a password (username default ``opencode``; the password comes
from an env var or a 0600 file, never the inventory), and timeouts. Connect errors are
retried with tenacity; nothing that may have reached the server is ever sent twice.
"""
from __future__ import annotations

import functools
import os
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

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


def _excerpt(resp: httpx.Response, n: int = 200) -> str:
    try:
        text = resp.text
    except Exception:  # noqa: BLE001
        return ""
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


@dataclass
class Answer:
    """The end of an agent run: its final text, usage and error."""

    text: str = ""
    error: str = ""
    error_name: str = ""
    tokens: dict[str, Any] = field(default_factory=dict)
    cost: float = 0.0
    message_id: str = ""
    completed: bool = False


def describe_request(req: dict[str, Any]) -> str:
    """A pending request for a person: ``bash: echo ask-me``, or ``question: deploy now? (yes/no)``."""
    if isinstance(req.get("questions"), list):
        qs = [q for q in req["questions"] if isinstance(q, dict)]
        return "question: " + "; ".join(
            f"{q.get('question', '')}" + (f" ({'/'.join(str(o.get('label')) for o in q.get('options') or [])})"
                                          if q.get("options") else "") for q in qs)
    pats = req.get("patterns") or []
    what = ", ".join(str(p) for p in pats) if isinstance(pats, list) else str(pats)
    return f"{req.get('permission', 'permission')}: {what}".strip().rstrip(":")


def extract_answer(message: dict[str, Any]) -> Answer:
    """From one ``{info, parts}`` assistant message: text parts joined, error, tokens, cost."""
    info = message.get("info") or {}
    parts = message.get("parts") or []
    text = "".join(p.get("text", "") for p in parts
                   if isinstance(p, dict) and p.get("type") == "text" and not p.get("synthetic") and not p.get("ignored"))
    err = info.get("error") or {}
    emsg = ""
    if isinstance(err, dict) and err:
        data = err.get("data") or {}
        emsg = (data.get("message") if isinstance(data, dict) else "") or err.get("name", "error")
    return Answer(text=text, error=emsg, error_name=(err.get("name", "") if isinstance(err, dict) else ""),
                  tokens=dict(info.get("tokens") or {}), cost=float(info.get("cost") or 0.0),
                  message_id=str(info.get("id", "")),
                  completed=bool((info.get("time") or {}).get("completed")) or bool(err))


def add_usage(total: dict[str, Any], tokens: Any) -> dict[str, Any]:
    """``total`` plus one message's ``tokens`` (input, output, reasoning, cache read/write, total)."""
    if not isinstance(tokens, dict):
        return total
    for k in ("input", "output", "reasoning"):
        total[k] = int(total.get(k) or 0) + int(tokens.get(k) or 0)
    cache = tokens.get("cache") if isinstance(tokens.get("cache"), dict) else {}
    tc = total.setdefault("cache", {"read": 0, "write": 0})
    for k in ("read", "write"):
        tc[k] = int(tc.get(k) or 0) + int(cache.get(k) or 0)
    # older servers send no total: it is the sum OpenCode itself would show
    own = tokens.get("total")
    total["total"] = int(total.get("total") or 0) + int(own if own is not None else (
        sum(int(tokens.get(k) or 0) for k in ("input", "output", "reasoning")) + int(cache.get("read") or 0)
        + int(cache.get("write") or 0)))
    return total


def session_usage(session: dict[str, Any]) -> tuple[int, float] | None:
    """(total tokens, cost) a server keeps on the session itself (``tokens``, ``cost``: 1.18 has
    them, updated after each model call), or None when it keeps none."""
    tok = session.get("tokens") if isinstance(session, dict) else None
    if not isinstance(tok, dict):
        return None
    try:
        cost = float(session.get("cost") or 0.0)
    except (TypeError, ValueError):
        cost = 0.0
    return int(add_usage({}, tok).get("total") or 0), cost


def message_bill(info: Any) -> tuple[dict[str, Any], float] | None:
    """(tokens, cost) OpenCode billed on one assistant message's info (each model call is one),
    or None for any other message; a cost that is not a number counts as 0."""
    if not isinstance(info, dict) or info.get("role") != "assistant":
        return None
    try:
        cost = float(info.get("cost") or 0.0)
    except (TypeError, ValueError):
        cost = 0.0
    return dict(info.get("tokens") or {}), cost


def turn_usage(messages: list[dict[str, Any]]) -> tuple[dict[str, Any], float]:
    """Tokens and cost of every assistant message in ``messages`` ({info, parts} or bare infos):
    a turn with tool calls is one assistant message per model call, each billed on its own."""
    tokens: dict[str, Any] = {}
    cost = 0.0
    for m in messages:
        bill = message_bill(m.get("info", m) if isinstance(m, dict) else None)
        if bill is not None:
            add_usage(tokens, bill[0])
            cost += bill[1]
    return tokens, cost


@functools.lru_cache(maxsize=1)
def tls_context() -> ssl.SSLContext:
    """One TLS context for the process, as httpx makes it (certifi, SSL_CERT_FILE/DIR): httpx reads
    the CA bundle again for every client, about 20 ms of CPU each, and fleet makes a client per
    server per call (and one per event stream)."""
    return httpx.create_ssl_context()


SAFETY_WAKE = 15.0  # with the event stream up: re-read a waiting session's state at least this often


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
        self.pending_input: dict[str, Any] | None = None  # the request a session waits on, if any
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
    def _send(self, method: str, path: str, kwargs: dict[str, Any], total: float) -> httpx.Response:
        """One HTTP exchange with an overall deadline: httpx bounds each read, not the whole reply,
        so a server that trickles a byte at a time would never end. The exchange runs on a
        helper thread; past ``total`` its client is dropped (closing its socket) and a fresh one
        serves later calls. Ctrl-C reaches the waiting (main) thread at once."""
        box: dict[str, Any] = {}

        def go() -> None:
            try:
                box["resp"] = self.http.request(method, path, **kwargs)
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
                expect_json: bool = True, timeout: float | None = None) -> Any:
        """One call. Connect failures are retried (nothing was sent); everything else is mapped once."""
        q = dict(params or {})
        if self.directory and "directory" not in q:
            q["directory"] = self.directory
        url = self.base + path
        kwargs: dict[str, Any] = {"params": q}
        if json is not None:
            kwargs["json"] = json
        if timeout is not None:
            kwargs["timeout"] = httpx.Timeout(timeout, connect=self.http.timeout.connect)
        total = (timeout if timeout is not None else self.timeout) + self.http.timeout.connect
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
                    resp = self._send(method, path, kwargs, total)
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
        if resp.status_code == 401:
            how = (f"username '{self.username}' with the password from the inventory's "
                   f"{'password_env' if self.host.opencode.password_env else 'password_file'}"
                   if self.has_password else "no password (the inventory names none, but the server wants one)")
            raise AuthRefused(self.host.name, url, f"401 Unauthorized: the server refused {how}")
        if resp.status_code == 404:
            raise SessionNotFound(self.host.name, url, f"404 not found: {self._scrub(_excerpt(resp)) or path}")
        if resp.status_code >= 400:
            raise ServerError(self.host.name, url, f"server error {resp.status_code}: "
                              f"{self._scrub(_excerpt(resp)) or '(empty body)'}")
        if not expect_json or resp.status_code == 204:
            return None
        try:
            return resp.json()
        except ValueError:
            raise ProtocolError(self.host.name, url, f"expected JSON from {method} {path}, got "
                                f"{resp.headers.get('content-type', 'no content type')}: "
                                f"{' '.join(resp.text.split())[:120]!r}") from None

    def _shape(self, value: Any, kind: type, what: str, path: str) -> Any:
        if not isinstance(value, kind):
            raise ProtocolError(self.host.name, self.base + path, f"{what}: expected a JSON "
                                f"{kind.__name__}, got {type(value).__name__}")
        return value

    # ------------------------------------------------------------------ API
    def health(self) -> dict[str, Any]:
        """``GET /global/health`` -> ``{healthy, version}``."""
        return self._shape(self.request("GET", "/global/health"),
                           dict, "health", "/global/health")

    def create_session(self, title: str, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        """``POST /session``; returns the Session (with ``id``). ``metadata`` is kept by the server."""
        body: dict[str, Any] = {"title": title}
        if metadata:
            body["metadata"] = metadata
        s = self._shape(self.request("POST", "/session", json=body), dict, "session", "/session")
        if not isinstance(s.get("id"), str):
            raise ProtocolError(self.host.name, self.base + "/session", "created session has no id")
        return s

    def get_session(self, sid: str) -> dict[str, Any]:
        """``GET /session/{id}``."""
        return self._shape(self.request("GET", f"/session/{sid}"), dict, "session", f"/session/{sid}")

    def list_sessions(self, all_dirs: bool = False) -> list[dict[str, Any]]:
        """``GET /session`` (this directory, or every one with ``all_dirs``)."""
        saved = self.directory
        if all_dirs:
            self.directory = None
        try:
            return self._shape(self.request("GET", "/session"), list, "session list", "/session")
        finally:
            self.directory = saved

    def status(self) -> dict[str, Any]:
        """``GET /session/status``: busy/retry sessions of this directory (idle ones are absent)."""
        return self._shape(self.request("GET", "/session/status"), dict, "status", "/session/status")

    def prompt_async(self, sid: str, text: str, model: str | None = None) -> None:
        """``POST /session/{id}/prompt_async`` (204). Sent once; never retried after it left."""
        body: dict[str, Any] = {"parts": [{"type": "text", "text": text}]}
        if model:
            provider, _, mid = model.partition("/")
            body["model"] = {"providerID": provider, "modelID": mid}
        self.request("POST", f"/session/{sid}/prompt_async", json=body, expect_json=False)

    def messages(self, sid: str) -> list[dict[str, Any]]:
        """``GET /session/{id}/message``, oldest first."""
        return self._shape(self.request("GET", f"/session/{sid}/message"), list, "messages",
                           f"/session/{sid}/message")

    def abort(self, sid: str) -> bool:
        """``POST /session/{id}/abort``."""
        return bool(self.request("POST", f"/session/{sid}/abort"))

    def delete_session(self, sid: str) -> bool:
        """``DELETE /session/{id}``."""
        return bool(self.request("DELETE", f"/session/{sid}"))

    def permissions(self, sid: str | None = None) -> list[dict[str, Any]]:
        """Pending permission requests (``GET /permission``), of one session if ``sid``. A server
        without the endpoint has none."""
        try:
            got = self._shape(self.request("GET", "/permission"), list, "permissions", "/permission")
        except SessionNotFound:
            return []
        return [p for p in got if isinstance(p, dict) and (sid is None or p.get("sessionID") == sid)]

    def questions(self, sid: str | None = None) -> list[dict[str, Any]]:
        """Pending questions (``GET /question``: the agent's question tool), of one session if ``sid``."""
        try:
            got = self._shape(self.request("GET", "/question"), list, "questions", "/question")
        except SessionNotFound:
            return []
        return [q for q in got if isinstance(q, dict) and (sid is None or q.get("sessionID") == sid)]

    def reply_question(self, request_id: str, answers: list[list[str]]) -> bool:
        """Answer a question request: one list of chosen labels (or free text) per question."""
        return bool(self.request("POST", f"/question/{request_id}/reply", json={"answers": answers}))

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

    def wait_idle(self, sid: str, after: int, timeout: float, poll: float = 0.5,
                  on_status: Callable[[str], None] | None = None,
                  stop: Callable[[], bool] | None = None, start_grace: float = 60.0,
                  on_input: Callable[[dict[str, Any]], str | None] | None = None,
                  waker: Any = None, stall: float | None = None) -> Answer | None:
        """Poll until the run that started after message index ``after`` ends; None on timeout.

        The status map drops idle sessions, and a run may not be marked busy yet right after
        ``prompt_async`` returns, so the end is: not busy AND a finished assistant message
        beyond ``after``. With a ``waker`` (:class:`fleet.events.SessionWaker` fed by the server's
        event stream), the state is re-read when an event about the session arrives, not on a
        timer; while the stream is down it falls back to polling every ``poll`` seconds.
        """
        deadline = time.monotonic() + timeout
        last_state = ""
        idle_since = time.monotonic()
        started = False
        answered: set[str] = set()
        self.pending_input = None
        while True:
            st = self.status().get(sid) or {"type": "idle"}
            state = st.get("type", "idle") if isinstance(st, dict) else "idle"
            if state == "retry":
                state = f"retry (attempt {st.get('attempt')}: {st.get('message', '')})"
            if state != "idle" and waker is not None and getattr(waker, "step", ""):
                state = f"busy: {waker.step}" if state == "busy" else state
            quiet = time.monotonic() - getattr(waker, "last_event", time.monotonic()) if waker is not None else 0.0
            if stall and state.startswith("busy") and quiet > stall and getattr(waker, "stream", None) is not None \
                    and waker.stream.connected.is_set():
                # busy, the stream is up, and the server has said nothing about it for a while
                state = f"stuck (no event for {quiet:.0f}s{'; ' + waker.step if waker.step else ''})"
            if state != "idle":
                started = True
                # a pending permission is "needs-input": say so at once, let the policy answer it
                pend = [p for p in self.permissions(sid) if p.get("id") not in answered]
                if not pend:
                    pend = self.questions(sid)  # a question waits for a person whatever the policy
                self.pending_input = pend[0] if pend else None
                if pend:
                    state = "needs-input: " + describe_request(pend[0])
                    if on_input is not None and "questions" not in pend[0]:
                        reply = on_input(pend[0])
                        if reply:
                            self.reply_permission(str(pend[0]["id"]), reply)
                            answered.add(str(pend[0]["id"]))
            if state == "idle":
                msgs = self.messages(sid)
                newer = [m for m in msgs[after:] if (m.get("info") or {}).get("role") == "assistant"]
                if newer:
                    ans = extract_answer(newer[-1])
                    if ans.completed:
                        ans.tokens, ans.cost = turn_usage(newer)  # every model call of the turn
                        if on_status and last_state and last_state != "idle":
                            on_status("idle")
                        return ans
                if not started and time.monotonic() - idle_since > start_grace:
                    raise ServerError(self.host.name, f"{self.base}/session/{sid}",
                                      f"the server accepted the task but never started it (session idle "
                                      f"for {start_grace:g}s with no reply); check the server's log")
            shown = state if started or state != "idle" else "queued"
            if on_status and shown != last_state:
                on_status(shown)
            last_state = shown
            if time.monotonic() >= deadline or (stop is not None and stop()):
                return None
            stream = getattr(waker, "stream", None)
            if stream is not None and stream.connected.is_set():
                # an event wakes it; else a safety re-read every SAFETY_WAKE s (the stream is up and
                # a reconnect wakes it too), or when a quiet busy session crosses the stall bound
                nap = min(SAFETY_WAKE, deadline - time.monotonic())
                if stall and state.startswith("busy"):
                    nap = min(nap, stall - quiet + 0.05)
                waker.wake.wait(max(0.05, nap))
                waker.wake.clear()
            else:
                time.sleep(poll)

"""Live events from OpenCode servers: one SSE subscription per server, reconnecting with backoff.

OpenCode's ``GET /event`` (one directory) and ``GET /global/event`` (all of them, each event
wrapped as ``{directory, payload}``) stream ``data: {json}`` lines: ``session.status``,
``session.idle``, ``session.error``, ``permission.asked``, ``message.part.updated`` (tool steps)
and more, with a heartbeat every 10 s. Events carry no ids and a reconnect loses the gap, so
fleet uses them as *wake-ups*: whoever waits re-reads the state over REST when woken (and after
every reconnect), and falls back to polling while the stream is down. Completion is then seen
within milliseconds of the server saying so, and nothing is polled between events.

A session's turn is a tree: the agent's ``task`` tool runs subagents in child sessions (their
``parentID`` is the session that made them), which ask, fail and bill like it does. A
:class:`SessionWaker` follows the whole tree: it learns each child from its ``session.created``
event, and keeps every ``session.error`` of the tree (the only place a failure before any reply
is seen).

Bounded: an event line longer than :data:`MAX_EVENT_LINE` is skipped (read and dropped, never
held whole), so a server cannot fill the memory through its stream.
"""
from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable

import httpx

from fleet.agent.client import resolve_password, tls_context
from fleet.agent.usage import Usage, message_usage
from fleet.inventory import Host

Handler = Callable[[dict[str, Any]], None]

MAX_EVENT_LINE = 4 * 1024 * 1024  # bytes of one SSE line; a tool part with a large output fits


def bounded_lines(chunks: Any, limit: int = MAX_EVENT_LINE) -> Any:
    """Lines (str) from an iterator of byte chunks, each at most ``limit`` bytes: a longer line is
    dropped as it streams by (its bytes are never kept), and the next line is read as usual."""
    buf = b""
    skipping = False
    for chunk in chunks:
        buf += chunk
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                break
            line, buf = buf[:nl], buf[nl + 1:]
            if skipping:
                skipping = False
                continue
            yield line.rstrip(b"\r").decode("utf-8", errors="replace")
        if len(buf) > limit:
            buf = b""
            skipping = True
    if buf and not skipping:
        yield buf.rstrip(b"\r").decode("utf-8", errors="replace")


def session_of(ev: dict[str, Any]) -> str | None:
    """The session an event is about, if it says."""
    p = ev.get("properties")
    if not isinstance(p, dict):
        return None
    for key in ("sessionID",):
        if isinstance(p.get(key), str):
            return p[key]
    for inner in ("info", "part"):
        v = p.get(inner)
        if isinstance(v, dict) and isinstance(v.get("sessionID"), str):
            return v["sessionID"]
    return None


def step_of(ev: dict[str, Any]) -> str | None:
    """``bash: make test`` for a tool step that is running, from ``message.part.updated``."""
    if ev.get("type") != "message.part.updated":
        return None
    props = ev.get("properties")
    part = props.get("part") if isinstance(props, dict) else None
    if not isinstance(part, dict) or part.get("type") != "tool":
        return None
    state = part.get("state")
    if not isinstance(state, dict) or state.get("status") not in ("pending", "running"):
        return None
    got = state.get("input")
    inp: dict[str, Any] = got if isinstance(got, dict) else {}
    what = state.get("title") or inp.get("command") or inp.get("filePath") or inp.get("description") or ""
    return f"{part.get('tool', 'tool')}: {str(what)[:80]}".rstrip(": ")


class EventStream:
    """A background SSE subscription to one server. ``on_event(ev)`` gets every event (for
    ``/global/event``, the payload with ``directory`` added); ``on_connect()`` runs after each
    (re)connect, so the listener can re-read what the gap may have hidden."""

    def __init__(self, host: Host, on_event: Handler, directory: str | None = None,
                 on_connect: Callable[[], object] | None = None, backoff_max: float = 5.0,
                 on_error: Callable[[str], None] | None = None) -> None:
        if host.opencode is None:
            raise ValueError(f"{host.name} has no OpenCode server")
        self.host = host
        self.url = host.opencode.url
        self.directory = directory
        self.on_event = on_event
        self.on_connect = on_connect
        self.on_error = on_error  # a connect that failed (why), before the next try
        self.backoff_max = backoff_max
        self.connected = threading.Event()
        self.reconnects = 0
        self._stop = threading.Event()
        self._client: httpx.Client | None = None
        pw = resolve_password(host.opencode, host.name)
        self._auth = httpx.BasicAuth(host.opencode.username, pw) if pw is not None else None
        self._thread = threading.Thread(target=self._run, name=f"fleet-events-{host.name}", daemon=True)

    def start(self) -> "EventStream":
        """Begin following (returns at once)."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop following and drop the connection."""
        self._stop.set()
        self.drop()

    def drop(self) -> None:
        """Cut the current connection (it reconnects unless closed): what a network blip does."""
        c = self._client
        if c is not None:
            threading.Thread(target=c.close, daemon=True).start()

    def _run(self) -> None:
        delay = 0.2
        path = "/event" if self.directory else "/global/event"
        params = {"directory": self.directory} if self.directory else None
        while not self._stop.is_set():
            failed = ""
            self._client = httpx.Client(base_url=self.url, auth=self._auth, verify=tls_context(),
                                        timeout=httpx.Timeout(5.0, read=35.0))  # heartbeats every 10 s
            try:
                with self._client.stream("GET", path, params=params,
                                         headers={"Accept": "text/event-stream"}) as resp:
                    if resp.status_code != 200:
                        failed = f"{self.url}{path}: HTTP {resp.status_code}"
                        raise httpx.HTTPError(failed)
                    self.connected.set()
                    if self.on_connect is not None:
                        self.on_connect()
                    delay = 0.2
                    for line in bounded_lines(resp.iter_bytes()):
                        if self._stop.is_set():
                            return
                        if not line.startswith("data:"):
                            continue
                        try:
                            ev = json.loads(line[5:].strip())
                        except ValueError:
                            continue
                        if not isinstance(ev, dict):
                            continue
                        if "payload" in ev and isinstance(ev["payload"], dict):  # /global/event wrapper
                            ev = dict(ev["payload"], directory=ev.get("directory"))
                        if not isinstance(ev.get("type", ""), str) or not isinstance(ev.get("properties", {}), dict):
                            continue
                        self.on_event(ev)
            except Exception as exc:  # noqa: BLE001 - any break of the stream: reconnect (REST covers the gap)
                if not self.connected.is_set() and not failed:
                    failed = f"{self.url}{path}: {type(exc).__name__}" + (f": {exc}" if str(exc) else "")
            finally:
                self.connected.clear()
                try:
                    self._client.close()
                except Exception:  # noqa: BLE001
                    pass
            if self._stop.is_set():
                return
            if failed and self.on_error is not None:
                try:
                    self.on_error(failed)
                except Exception:  # noqa: BLE001 - the listener's trouble is not the stream's
                    pass
            self.reconnects += 1
            self._stop.wait(delay)
            delay = min(self.backoff_max, delay * 2)


def error_of(ev: dict[str, Any]) -> tuple[str, str] | None:
    """``(name, message)`` of a ``session.error`` event: the server's own words, first line."""
    if ev.get("type") != "session.error":
        return None
    err = (ev.get("properties") or {}).get("error")
    if not isinstance(err, dict):
        return "UnknownError", "the session failed (the server gave no detail)"
    data = err.get("data")
    msg = data.get("message") if isinstance(data, dict) else None
    got = err.get("name")
    name: str = got if isinstance(got, str) and got else "UnknownError"
    text: str = msg if isinstance(msg, str) and msg.strip() else name
    return name, text.strip().splitlines()[0][:500]


class SessionWaker:
    """Wakes a waiter when an event concerns its session or one of its subagents' sessions, and
    remembers the agent's current step, the tree's errors, and the tokens and cost of the
    messages it has seen finish so far (subagents' included)."""

    def __init__(self, sid: str, on_step: Callable[[str], None] | None = None,
                 on_usage: Callable[[int, float], None] | None = None) -> None:
        self.sid = sid
        self.wake = threading.Event()
        self.step = ""
        self.on_step = on_step
        self.on_usage = on_usage
        self.usage = Usage()
        self.tree: set[str] = {sid}  # the session and every descendant seen so far
        self.errors: list[tuple[str, str, str]] = []  # (session, name, message) of session.error events
        self.resync = True  # the REST view (tree, state) needs a fresh read: at start, after a reconnect
        self._said: tuple[int, float] = (0, 0.0)
        self._lock = threading.Lock()
        self.last_event = time.monotonic()
        self.stream: EventStream | None = None  # the subscription feeding it (set by whoever subscribes)

    def add(self, sids: Any) -> None:
        """Sessions of the tree found over REST (``GET /session/{id}/children``)."""
        with self._lock:
            self.tree.update(sids)

    def __call__(self, ev: dict[str, Any]) -> None:
        if ev.get("type") in ("server.connected", "server.heartbeat"):
            return
        if ev.get("type") in ("session.created", "session.updated"):
            info = (ev.get("properties") or {}).get("info")
            if isinstance(info, dict) and isinstance(info.get("id"), str) and info.get("parentID") in self.tree:
                with self._lock:
                    self.tree.add(info["id"])  # a subagent of the tree: follow it too
        sid = session_of(ev)
        if sid is not None and sid not in self.tree:
            return
        self.last_event = time.monotonic()
        err = error_of(ev)
        if err is not None and sid is not None:
            with self._lock:
                self.errors.append((sid, *err))
        step = step_of(ev)
        if step and step != self.step:
            self.step = step
            if self.on_step is not None:
                self.on_step(step)
        mu = message_usage(ev)
        if mu is not None and self.usage.update(*mu) and self.on_usage is not None:
            totals = self.usage.totals()
            if totals != self._said and any(totals):
                self._said = totals
                self.on_usage(*totals)
        self.wake.set()

    def reconnected(self) -> None:
        """After a (re)connect the gap is unknown: wake the waiter to re-read the state."""
        self.resync = True
        self.wake.set()


__all__ = ["MAX_EVENT_LINE", "EventStream", "SessionWaker", "bounded_lines", "error_of", "session_of", "step_of"]

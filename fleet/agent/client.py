"""An httpx client for one OpenCode server (``opencode serve``): its endpoints, coded to
contracts-opencode.md (and checked against the real 1.18.33).

HTTP only (the endpoints and their errors): how a call is made, bounded and mapped is
:mod:`fleet.agent.transport`; what the replies mean lives beside it, following a turn to its
end in :mod:`fleet.agent.turn`, tokens and cost in :mod:`fleet.agent.usage`. Every reply is
checked for the shape the contract promises before anyone reads it (lists of objects, string
ids): an odd entry is dropped, a wrong top-level type is a :class:`ProtocolError`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fleet.agent.transport import (  # noqa: F401 - the client's public names, where they were
    MAX_BODY,
    MAX_MESSAGES_BODY,
    HTTPClient,
    _kind,
    resolve_password,
    tls_context,
)
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

if TYPE_CHECKING:
    from fleet.agent.turn import Answer


class OpenCodeClient(HTTPClient):
    """One host's OpenCode server. Use as a context manager, or call :meth:`close`."""

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
        """``GET /session/{id}/children``: the subagent sessions the session's ``task`` tool made
        (none on a server without the endpoint)."""
        try:
            got = self.request("GET", f"/session/{sid}/children")
        except SessionNotFound:
            return []
        return self._sessions(got, f"/session/{sid}/children")

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

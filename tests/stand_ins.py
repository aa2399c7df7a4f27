"""Local stand-ins on loopback: an OpenCode server for faults the real one cannot show, and Slack."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class _Server:
    def __init__(self, handler_cls) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_cls)
        self.httpd.daemon_threads = True
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.port = self.httpd.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.t = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.t.start()

    def close(self) -> None:
        # shutdown() waits for serve_forever to notice; it was seen waiting forever once (CI
        # would then hang to its limit): bound the wait, then close the socket regardless
        stopper = threading.Thread(target=self.httpd.shutdown, daemon=True)
        stopper.start()
        stopper.join(5.0)
        self.httpd.server_close()


class FakeOpenCode(_Server):
    """Follows contracts-opencode.md; ``fault`` per route makes it misbehave.

    fault values: "500" (UnknownError JSON), "nonjson" (HTML 200), "truncated" (cut JSON),
    "hang" (never answers), "404", "drop" (closes the connection without a reply).
    """

    def __init__(self, password: str | None = None, cross_project: bool = True) -> None:
        self.password = password
        self.cross_project = cross_project  # GET /experimental/session (1.18 has it; older servers 404)
        self.replies: dict[str, tuple[int, bytes]] = {}  # "METHOD /path" -> a canned (status, body)
        self.busy: set[str] = set()  # sessions GET /session/status reports busy (an abort ends it...)
        self.stubborn: set[str] = set()  # ...except for these: busy whatever abort says (OpenCode #16721)
        self.running_turns = False  # prompt_async starts a turn that runs (busy, a step billed) until aborted
        self.faults: dict[str, str] = {}
        self.hits: list[tuple[str, str, dict]] = []
        self.sessions: dict[str, dict] = {}
        self.messages: dict[str, list] = {}
        super().__init__(_OCHandler)


class _OCHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _send(self, code: int, body: bytes, ctype: str = "application/json", length: int | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def _route(self, method: str) -> None:
        srv: FakeOpenCode = self.server.owner  # type: ignore[attr-defined]
        u = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        srv.hits.append((method, u.path, q))
        if srv.password is not None:
            import base64
            want = "Basic " + base64.b64encode(f"opencode:{srv.password}".encode()).decode()
            if self.headers.get("Authorization") != want:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="Secure Area"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        key = f"{method} {u.path}"
        if key in srv.replies:
            code, canned = srv.replies[key]
            return self._send(code, canned)
        fault = srv.faults.get(key) or srv.faults.get(u.path.rsplit("/", 1)[-1])
        if fault == "500":
            return self._send(500, json.dumps({"name": "UnknownError", "data": {"message": "database is locked",
                                                                                  "ref": "err_1234"}}).encode())
        if fault == "v2":
            return self._send(200, b'{"healthy": true, "version": "2.0.1"}')
        if fault == "echo_auth":  # a server that echoes the request's credentials in its error
            return self._send(500, json.dumps({"name": "UnknownError", "data": {
                "message": f"bad request with Authorization: {self.headers.get('Authorization')}"}}).encode())
        if fault == "nonjson":
            return self._send(200, b"<html><body>proxy login</body></html>", "text/html")
        if fault == "truncated":
            self._send(200, b'{"id": "ses_tr', length=40)
            self.close_connection = True
            self.connection.shutdown(2)  # the body stops short: the peer hangs up mid-reply
            return
        if fault == "trickle":  # headers at once, then one byte every half second, forever
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "100000")
            self.end_headers()
            try:
                for _ in range(600):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.5)
            except OSError:
                pass
            return
        if fault == "hang":
            time.sleep(30)
            return
        if fault == "404":
            return self._send(404, json.dumps({"name": "NotFoundError", "data": {"message": "Session not found"}}).encode())
        if fault == "drop":
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if key == "GET /global/health":
            return self._send(200, b'{"healthy": true, "version": "1.19.3"}')
        if key == "POST /session":
            sid = f"ses_fake{len(srv.sessions) + 1}"
            s = {"id": sid, "slug": "x", "projectID": "p", "directory": q.get("directory", "/"), "title": "t",
                 "version": "1.19.3", "time": {"created": 1, "updated": 1}}
            srv.sessions[sid] = s
            srv.messages[sid] = []
            return self._send(200, json.dumps(s).encode())
        parts = u.path.strip("/").split("/")
        if len(parts) >= 2 and parts[0] == "session" and parts[1] not in srv.sessions and parts[1] != "status":
            return self._send(404, json.dumps({"name": "NotFoundError", "data": {"message": f"Session not found: {parts[1]}"}}).encode())
        if key == "GET /session/status":
            return self._send(200, json.dumps({sid: {"type": "busy"} for sid in srv.busy}).encode())
        if key == "GET /experimental/session" and srv.cross_project:
            return self._send(200, json.dumps(list(srv.sessions.values())[::-1]).encode())
        if len(parts) == 3 and parts[2] == "children" and method == "GET":
            kids = [x for x in srv.sessions.values() if x.get("parentID") == parts[1]]
            return self._send(200, json.dumps(kids).encode())
        if key in ("GET /permission", "GET /question"):
            return self._send(200, b"[]")
        if key == "GET /file":  # the directory listing (contract: list of {name, path, type})
            return self._send(200, json.dumps([{"name": "README.md", "type": "file"}]).encode())
        if len(parts) == 3 and parts[2] in ("diff", "todo") and method == "GET":
            return self._send(200, b"[]")
        if len(parts) == 3 and parts[2] == "prompt_async":
            sid = parts[1]
            text = json.loads(body)["parts"][0]["text"]
            if srv.running_turns:
                srv.busy.add(sid)
                srv.messages[sid] += [{"info": {"id": "msg_u", "role": "user", "time": {"created": 1}},
                                       "parts": [{"type": "text", "text": text}]},
                                      {"info": {"id": "msg_a", "role": "assistant", "time": {"created": 1},
                                                "tokens": {"total": 40}, "cost": 0.5}, "parts": []}]
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            srv.messages[sid] += [{"info": {"id": "msg_u", "role": "user"}, "parts": [{"type": "text", "text": text}]},
                                  {"info": {"id": "msg_a", "role": "assistant", "time": {"created": 1, "completed": 2},
                                            "tokens": {"total": 3}, "cost": 0.5},
                                   "parts": [{"type": "text", "text": "ok: " + text}]}]
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if len(parts) == 3 and parts[2] == "message" and method == "GET":
            return self._send(200, json.dumps(srv.messages[parts[1]]).encode())
        if len(parts) == 3 and parts[2] == "abort":
            if parts[1] not in srv.stubborn:
                srv.busy.discard(parts[1])
            return self._send(200, b"true")
        if method == "DELETE" and len(parts) == 2:
            srv.sessions.pop(parts[1], None)
            return self._send(200, b"true")
        if key == "GET /session":
            return self._send(200, json.dumps(list(srv.sessions.values())).encode())
        if len(parts) == 2 and parts[0] == "session" and method == "GET":
            return self._send(200, json.dumps(srv.sessions[parts[1]]).encode())
        return self._send(404, json.dumps({"name": "NotFoundError", "data": {"message": "no route"}}).encode())

    def do_GET(self):
        self._route("GET")

    def do_POST(self):
        self._route("POST")

    def do_DELETE(self):
        self._route("DELETE")


class FakeSlack(_Server):
    """Slack Web API stand-in: chat.postMessage, conversations.replies/history, with modes.

    mode: "ok", "slow" (sleeps ``delay``), "ratelimit" (429 + Retry-After for the next
    ``limit_count`` posts), "error" (ok: false), "down" (use close()).
    """

    def __init__(self) -> None:
        self.mode = "ok"
        self.refuse_text: str | None = None  # a post whose text holds this gets msg_too_long
        self.page_size: int | None = None    # history/replies pages smaller than asked
        self.reads: list[str] = []
        self.delay = 10.0
        self.retry_after = 1
        self.limit_count = 0
        self.posts: list[dict] = []
        self.lock = threading.Lock()
        self.seq = 0
        self.auth: list[str] = []
        super().__init__(_SlackHandler)

    def reply(self, thread_ts: str, user: str, text: str) -> str:
        """A person's reply in a thread, with a fresh ts (Slack's ts is the post's time, and grows)."""
        with self.lock:
            self.seq += 1
            ts = f"{int(time.time())}.{self.seq:06d}"
            self.posts.append({"ts": ts, "thread_ts": thread_ts, "user": user, "text": text})
        return ts


class _SlackHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _json(self, code: int, doc, headers: dict | None = None) -> None:
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self, form: dict | None = None):
        srv: FakeSlack = self.server.owner  # type: ignore[attr-defined]
        u = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        q.update(form or {})
        if u.path.endswith("conversations.replies"):
            msgs = [p for p in srv.posts if p["ts"] == q.get("ts") or p.get("thread_ts") == q.get("ts")]
        elif u.path.endswith("conversations.history"):
            msgs = []
            for p in [p for p in srv.posts if not p.get("thread_ts")][::-1]:  # newest first, as Slack does
                replies = [r["ts"] for r in srv.posts if r.get("thread_ts") == p["ts"] and r["ts"] != p["ts"]]
                # a thread's root carries reply_count and latest_reply, as Slack's does
                msgs.append(dict(p, reply_count=len(replies), latest_reply=max(replies, key=float)) if replies
                            else p)
        else:
            return self._json(404, {"ok": False, "error": "unknown_method"})
        srv.reads.append(u.path.rsplit("/", 1)[-1])
        size = min(int(q.get("limit") or 100), srv.page_size or 10**9)
        start = int(q.get("cursor") or 0)
        page = msgs[start:start + size]
        more = start + size < len(msgs)
        return self._json(200, {"ok": True, "messages": page, "has_more": more,
                                "response_metadata": {"next_cursor": str(start + size) if more else ""}})

    def do_POST(self):
        srv: FakeSlack = self.server.owner  # type: ignore[attr-defined]
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n)
        srv.auth.append(self.headers.get("Authorization", ""))
        if "conversations." in self.path:  # slack-sdk POSTs every method, params in the body
            ctype = self.headers.get("Content-Type", "")
            form = json.loads(raw or b"{}") if "json" in ctype else {k: v[0] for k, v in parse_qs(raw.decode()).items()}
            return self.do_GET(form)
        if not urlparse(self.path).path.endswith("chat.postMessage"):
            return self._json(404, {"ok": False, "error": "unknown_method"})
        if srv.mode == "slow":
            time.sleep(srv.delay)
        with srv.lock:
            if srv.mode == "ratelimit" and srv.limit_count > 0:
                srv.limit_count -= 1
                return self._json(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": str(srv.retry_after)})
            if srv.mode == "error":
                return self._json(200, {"ok": False, "error": "channel_not_found"})
            doc = json.loads(raw or b"{}")
            if srv.refuse_text and srv.refuse_text in (doc.get("text") or ""):
                return self._json(200, {"ok": False, "error": "msg_too_long"})
            srv.seq += 1
            ts = f"{int(time.time())}.{srv.seq:06d}"  # Slack's ts is the post's epoch time
            post = {"ts": ts, "text": doc.get("text"), "channel": doc.get("channel"),
                    "thread_ts": doc.get("thread_ts"), "metadata": doc.get("metadata")}
            srv.posts.append(post)
        return self._json(200, {"ok": True, "channel": doc.get("channel"), "ts": ts, "message": post})

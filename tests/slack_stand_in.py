"""A Socket Mode capable Slack stand-in on loopback, on top of :class:`stand_ins.FakeSlack`.

Beside FakeSlack's ``chat.postMessage`` and ``conversations.replies/history`` it serves
``chat.update``, ``chat.postEphemeral``, ``auth.test`` and ``apps.connections.open`` (which
hands out a ``ws://`` URL of this same server), and a WebSocket endpoint (``/link``) that speaks
Socket Mode: it sends ``hello``, then the envelopes a test pushes (``events_api`` message
events, ``interactive`` block_actions), answers pings, and records every acknowledgement.

Faults per Web API method (``faults[method] = Fault(...)``): a 429 with any Retry-After (or none),
a 5xx, an HTML body, a hang, or ``ok: false`` with an error such as ``invalid_auth``.
"""
from __future__ import annotations

import base64
import hashlib
import json
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass
from urllib.parse import parse_qs, urlparse

from stand_ins import FakeSlack, _SlackHandler

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@dataclass
class Fault:
    """How one Web API method misbehaves: ``kind`` is 429, 500, 502, html, hang or an error
    string (``ok: false``); ``retry_after`` the 429's header (None: no header); ``times`` how
    many calls misbehave (None: every one)."""

    kind: str
    retry_after: str | None = None
    times: int | None = None
    hang_s: float = 60.0


class SocketSlack(FakeSlack):
    """FakeSlack plus Socket Mode, the methods fleet's listener uses, and faults."""

    def __init__(self) -> None:
        super().__init__()
        self.httpd.RequestHandlerClass = _Handler  # same server, a handler that knows more methods
        self.faults: dict[str, Fault] = {}
        self.calls: list[tuple[str, dict]] = []  # (method, params) of every Web API call
        self.updates: list[dict] = []
        self.ephemerals: list[dict] = []
        self.app_tokens: list[str] = []
        self.acks: list[str] = []
        self.sent: list[dict] = []  # envelopes sent
        self.connections: list[_Link] = []
        self.opened = threading.Event()  # a WebSocket is up (hello sent)

    # ------------------------------------------------------------ Web API side
    def calls_of(self, method: str) -> list[dict]:
        return [p for m, p in self.calls if m == method]

    def thread_posts(self, thread_ts: str) -> list[dict]:
        return [p for p in self.posts if p.get("thread_ts") == thread_ts]

    # ------------------------------------------------------------ Socket Mode side
    def link(self) -> _Link | None:
        live = [c for c in self.connections if not c.closed]
        return live[-1] if live else None

    def wait_link(self, timeout: float = 10.0, count: int = 1) -> _Link:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            live = self.link()
            if live is not None and len(self.connections) >= count and live.hello:
                return live
            time.sleep(0.05)
        raise AssertionError(f"no Socket Mode connection (connections: {len(self.connections)})")

    def envelope(self, kind: str, payload: dict, envelope_id: str | None = None, retry_attempt: int = 0) -> str:
        """Send one envelope on the live connection; returns its id."""
        eid = envelope_id or str(uuid.uuid4())
        env = {"envelope_id": eid, "type": kind, "payload": payload, "accepts_response_payload": False}
        if kind == "events_api":
            env["retry_attempt"] = retry_attempt
            env["retry_reason"] = "timeout" if retry_attempt else ""
        link = self.wait_link()
        self.sent.append(env)
        link.send_text(json.dumps(env))
        return eid

    def message_event(self, channel: str, thread_ts: str, user: str, text: str, ts: str | None = None,
                      post: bool = True, envelope_id: str | None = None, retry_attempt: int = 0) -> tuple[str, str]:
        """A person's reply in a thread, as Slack sends it: stored (so conversations.replies has it)
        and pushed as an events_api envelope. Returns (ts, envelope id)."""
        if ts is None:
            ts = self.reply(thread_ts, user, text) if post else f"{time.time():.6f}"
        ev = {"type": "message", "channel": channel, "user": user, "text": text, "ts": ts,
              "thread_ts": thread_ts, "channel_type": "channel", "event_ts": ts}
        eid = self.envelope("events_api", {"type": "event_callback", "event_id": f"Ev{ts}", "event": ev,
                                           "event_time": int(float(ts))}, envelope_id, retry_attempt)
        return ts, eid

    def click(self, channel: str, message: dict, user: str, action_id: str, envelope_id: str | None = None) -> str:
        """A button click on ``message`` (a post with blocks), as Slack sends it."""
        # the buttons as posted: a click can come from a client that has not seen the update yet
        btns = [e for b in message.get("posted_blocks") or message.get("blocks") or [] if b.get("type") == "actions"
                for e in b.get("elements") or [] if e.get("action_id") == action_id]
        assert btns, f"the post has no button {action_id}: {message.get('blocks')}"
        btn = btns[0]
        payload = {"type": "block_actions", "user": {"id": user, "username": user.lower()},
                   "api_app_id": "A0FLEET", "trigger_id": f"tr-{uuid.uuid4().hex[:8]}",
                   "container": {"type": "message", "message_ts": message["ts"], "channel_id": channel,
                                 "is_ephemeral": False, "thread_ts": message.get("thread_ts")},
                   "channel": {"id": channel}, "message": dict(message),
                   "actions": [{"action_id": action_id, "block_id": "fleet", "type": "button",
                                "value": btn.get("value"), "text": btn.get("text"),
                                "action_ts": f"{time.time():.6f}"}]}
        return self.envelope("interactive", payload, envelope_id)

    def wait_ack(self, envelope_id: str, timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if envelope_id in self.acks:
                return True
            time.sleep(0.05)
        return False


class _Link:
    """One Socket Mode WebSocket connection (server side)."""

    def __init__(self, sock: socket.socket, owner: SocketSlack) -> None:
        self.sock = sock
        self.owner = owner
        self.closed = False
        self.hello = False
        self.lock = threading.Lock()

    def _frame(self, opcode: int, data: bytes) -> bytes:
        n = len(data)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([n])
        elif n < 65536:
            head += bytes([126]) + struct.pack("!H", n)
        else:
            head += bytes([127]) + struct.pack("!Q", n)
        return head + data

    def send_text(self, text: str) -> None:
        with self.lock:
            self.sock.sendall(self._frame(0x1, text.encode()))

    def drop(self) -> None:
        """Close the TCP connection without a close frame (a network drop)."""
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def _read(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        return buf

    def serve(self) -> None:
        self.send_text(json.dumps({"type": "hello", "num_connections": 1,
                                   "connection_info": {"app_id": "A0FLEET"},
                                   "debug_info": {"host": "stand-in", "approximate_connection_time": 3600}}))
        self.hello = True
        self.owner.opened.set()
        try:
            while not self.closed:
                b1, b2 = self._read(2)
                opcode, n = b1 & 0x0F, b2 & 0x7F
                if n == 126:
                    n = struct.unpack("!H", self._read(2))[0]
                elif n == 127:
                    n = struct.unpack("!Q", self._read(8))[0]
                mask = self._read(4) if b2 & 0x80 else b"\0\0\0\0"
                data = bytes(c ^ mask[i % 4] for i, c in enumerate(self._read(n)))
                if opcode == 0x9:  # ping: pong with the same payload
                    with self.lock:
                        self.sock.sendall(self._frame(0xA, data))
                elif opcode == 0x8:
                    break
                elif opcode == 0x1:
                    try:
                        doc = json.loads(data)
                    except ValueError:
                        continue
                    if isinstance(doc, dict) and doc.get("envelope_id"):
                        self.owner.acks.append(str(doc["envelope_id"]))
        except (OSError, ConnectionError, ValueError):
            pass
        finally:
            self.closed = True
            try:
                self.sock.close()
            except OSError:
                pass


class _Handler(_SlackHandler):
    def _fault(self, method: str) -> bool:
        srv: SocketSlack = self.server.owner  # type: ignore[attr-defined]
        f = srv.faults.get(method)
        if f is None or f.times == 0:
            return False
        if f.times is not None:
            f.times -= 1
        if f.kind == "429":
            self.send_response(429)
            body = b'{"ok": false, "error": "ratelimited"}'
            self.send_header("Content-Type", "application/json")
            if f.retry_after is not None:
                self.send_header("Retry-After", f.retry_after)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif f.kind in ("500", "502", "503"):
            body = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
            self.send_response(int(f.kind))
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif f.kind == "html":
            body = b"<!DOCTYPE html><html><body>Sign in to your proxy</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif f.kind == "hang":
            time.sleep(f.hang_s)
            self.close_connection = True
        else:
            self._json(200, {"ok": False, "error": f.kind})
        return True

    def do_GET(self, form: dict | None = None):
        if form is None and self.headers.get("Upgrade", "").lower() == "websocket":
            return self._websocket()
        return super().do_GET(form)

    def _websocket(self) -> None:
        srv: SocketSlack = self.server.owner  # type: ignore[attr-defined]
        key = self.headers.get("Sec-WebSocket-Key", "")
        accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        self.wfile.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode())
        self.wfile.flush()
        link = _Link(self.connection, srv)
        srv.connections.append(link)
        link.serve()
        self.close_connection = True

    def do_POST(self):
        srv: SocketSlack = self.server.owner  # type: ignore[attr-defined]
        path = urlparse(self.path).path
        method = path.rsplit("/", 1)[-1]
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        ctype = self.headers.get("Content-Type", "")
        form = (json.loads(raw or b"{}") if "json" in ctype else
                {k: v[0] for k, v in parse_qs(raw.decode()).items()})
        with srv.lock:
            srv.calls.append((method, dict(form)))
        srv.auth.append(self.headers.get("Authorization", ""))
        if self._fault(method):
            return
        if method.startswith("conversations."):
            return self.do_GET(form)
        if method == "apps.connections.open":
            tok = self.headers.get("Authorization", "").removeprefix("Bearer ")
            srv.app_tokens.append(tok)
            if not tok.startswith("xapp-"):
                return self._json(200, {"ok": False, "error": "not_allowed_token_type"})
            return self._json(200, {"ok": True, "url": f"ws://127.0.0.1:{srv.port}/link/?ticket={uuid.uuid4().hex}"})
        if method == "auth.test":
            return self._json(200, {"ok": True, "user_id": "U0FLEETBOT", "bot_id": "B0FLEET", "team_id": "T0"})
        if method == "chat.postEphemeral":
            srv.ephemerals.append(form)
            return self._json(200, {"ok": True, "message_ts": f"{time.time():.6f}"})
        if method == "chat.update":
            with srv.lock:
                srv.updates.append(form)
                for p in srv.posts:
                    if p["ts"] == form.get("ts"):
                        p["text"] = form.get("text", p.get("text"))
                        blocks = form.get("blocks")
                        p["blocks"] = json.loads(blocks) if isinstance(blocks, str) else blocks
                        if form.get("metadata"):
                            md = form["metadata"]
                            p["metadata"] = json.loads(md) if isinstance(md, str) else md
                        p["edited"] = {"ts": f"{time.time():.6f}"}
            return self._json(200, {"ok": True, "ts": form.get("ts"), "channel": form.get("channel")})
        if method == "chat.postMessage":
            if srv.mode == "error":
                return self._json(200, {"ok": False, "error": "channel_not_found"})
            with srv.lock:
                srv.seq += 1
                ts = f"{int(time.time())}.{srv.seq:06d}"
                md = form.get("metadata")
                blocks = form.get("blocks")
                post = {"ts": ts, "text": form.get("text"), "channel": form.get("channel"),
                        "thread_ts": form.get("thread_ts"), "bot_id": "B0FLEET",
                        "metadata": json.loads(md) if isinstance(md, str) else md,
                        "blocks": json.loads(blocks) if isinstance(blocks, str) else blocks}
                post["posted_blocks"] = post["blocks"]
                srv.posts.append(post)
            return self._json(200, {"ok": True, "channel": form.get("channel"), "ts": ts, "message": post})
        return self._json(404, {"ok": False, "error": "unknown_method"})

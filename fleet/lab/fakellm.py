"""A stand-in model server (OpenAI chat-completions, streaming) for the lab's real OpenCode.

Replies ``DONE: <last user text>``. A prompt containing ``[slow]`` stalls for
``FAKE_SLOW_DELAY`` seconds (default 60) so abort can be shown; ``[fail]`` answers
HTTP 400 so the agent ends with an error. Loopback only. Run: ``python -m fleet.lab.fakellm --port P``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fleet-fakellm/1"

    def log_message(self, fmt, *args):  # quiet: the lab keeps its own log
        if os.environ.get("FAKE_LLM_LOG"):
            sys.stderr.write("fakellm: " + fmt % args + "\n")

    def _json(self, code: int, doc) -> None:
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.rstrip("/").endswith("/models"):
            self._json(200, {"object": "list", "data": [
                {"id": "fake-model", "object": "model", "created": 0, "owned_by": "fake"}]})
        else:
            self._json(404, {"error": {"message": "not found"}})

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        try:
            req = json.loads(self.rfile.read(n) or b"{}")
        except ValueError:
            return self._json(400, {"error": {"message": "bad json"}})
        msgs = req.get("messages") or []
        last = ""
        for m in msgs:
            if m.get("role") == "user":
                last = _text(m.get("content"))
        is_title = any("title generator" in _text(m.get("content")) for m in msgs if m.get("role") == "system")
        if "[fail]" in last and not is_title:
            return self._json(400, {"error": {"message": "fake model refuses: [fail] in prompt",
                                              "type": "invalid_request_error"}})
        if "[slow]" in last and not is_title:
            delay = float(os.environ.get("FAKE_SLOW_DELAY", "60"))
            end = time.monotonic() + delay
            while time.monotonic() < end:
                time.sleep(0.1)
        delay = float(os.environ.get("FAKE_DELAY", "0"))
        if delay:
            time.sleep(delay)
        reply = "DONE: " + last.strip()
        if not req.get("stream"):
            return self._json(200, {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                                    "model": "fake-model", "choices": [{"index": 0, "message": {
                                        "role": "assistant", "content": reply}, "finish_reason": "stop"}],
                                    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        now = int(time.time())

        def chunk(delta, finish=None, usage=None):
            d = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": now, "model": "fake-model",
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            if usage:
                d["usage"] = usage
            self.wfile.write(b"data: " + json.dumps(d).encode() + b"\n\n")
            self.wfile.flush()
        try:
            chunk({"role": "assistant", "content": ""})
            chunk({"content": "DONE:"})
            chunk({"content": " " + last.strip()})
            chunk({}, "stop", {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15})
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True


def serve(port: int = 0) -> ThreadingHTTPServer:
    """Start the server on 127.0.0.1 in a background thread; returns it (``server_port``)."""
    srv = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--tag", default="", help="ignored; lets lab.down find this process by its lab dir")
    a = ap.parse_args()
    srv = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    srv.daemon_threads = True
    print(f"fakellm listening on http://127.0.0.1:{srv.server_port}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

"""A stand-in model server (OpenAI chat-completions, streaming) for the lab's real OpenCode.

Replies ``DONE: <last user text>``. Markers in the prompt make it act like a model that works:

- ``[bash: CMD]``: asks OpenCode's ``bash`` tool to run CMD, then (after the tool's result)
  answers ``DONE: ran CMD: <first line of output>``; the real server runs the real tool, and
  the lab's permission rules make ``[bash: ask-...]`` commands ask for approval first;
- ``[write: PATH]``: asks the ``write`` tool to write PATH (so the session's diff is real);
- ``[task: PROMPT]``: asks OpenCode's ``task`` tool to run a subagent on PROMPT (brackets may
  nest: ``[task: [bash: echo ask-child]]``); the subagent's model calls come here too, so the
  child session runs PROMPT's own markers (a child that asks for a permission, for example);
- ``[ask: Q]``: asks the ``question`` tool (yes/no);
- ``[slow]``: stalls ``FAKE_SLOW_DELAY`` seconds (default 60), so abort can be shown;
- ``[slow-reply]``: stalls as long, but only before the reply that follows a tool's result (the
  step with the tool is billed first: OpenCode bills a step when it ends, tools included);
- ``[fail]``: answers HTTP 400, so the agent ends with an error.

Loopback only. Run: ``python -m fleet.lab.fakellm --port P``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_BASH = re.compile(r"\[bash:\s*([^\]]+)\]")
_WRITE = re.compile(r"\[write:\s*([^\]]+)\]")
_ASK = re.compile(r"\[ask:\s*([^\]]+)\]")


def _task_prompt(text: str) -> str | None:
    """The PROMPT of the first ``[task: PROMPT]`` marker, with nested brackets balanced."""
    i = text.find("[task:")
    if i < 0:
        return None
    depth, j = 0, i
    while j < len(text):
        if text[j] == "[":
            depth += 1
        elif text[j] == "]":
            depth -= 1
            if depth == 0:
                return text[i + len("[task:"):j].strip()
        j += 1
    return None


def _has_tool(tools: list, name: str) -> bool:
    return any(((t or {}).get("function") or {}).get("name") == name for t in tools or [])


def _tool_param(tools: list, name: str, wanted: tuple[str, ...]) -> str:
    """The parameter of tool ``name`` (from the request's schema) that best matches ``wanted``."""
    for t in tools or []:
        fn = (t or {}).get("function") or {}
        if fn.get("name") == name:
            props = list(((fn.get("parameters") or {}).get("properties") or {}).keys())
            for w in wanted:
                if w in props:
                    return w
    return wanted[0]


def _plan_tool(last_user: str, msgs: list, tools: list) -> tuple[str, dict] | None:
    """The tool call the prompt's marker asks for, if its result is not in the conversation yet."""
    if not tools or (msgs and msgs[-1].get("role") == "tool"):
        return None
    # a subagent first: its prompt may hold other markers, which are the child's to act on
    sub = _task_prompt(last_user)
    if sub is not None and _has_tool(tools, "task"):
        return "task", {_tool_param(tools, "task", ("description",)): f"lab subagent: {sub[:40]}",
                        _tool_param(tools, "task", ("prompt",)): sub,
                        _tool_param(tools, "task", ("subagent_type", "agent")): "general"}
    m = _BASH.search(last_user)
    if m:
        cmd = m.group(1).strip()
        return "bash", {_tool_param(tools, "bash", ("command", "cmd")): cmd,
                        _tool_param(tools, "bash", ("description",)): f"run {cmd[:40]}"}
    m = _ASK.search(last_user)
    if m and _has_tool(tools, "question"):
        return "question", {"questions": [{"question": m.group(1).strip(), "header": "fleet lab",
                                           "options": [{"label": "yes", "description": "go on"},
                                                       {"label": "no", "description": "stop here"}]}]}
    m = _WRITE.search(last_user)
    if m:
        path = m.group(1).strip()
        return "write", {_tool_param(tools, "write", ("filePath", "file_path", "path")): path,
                         _tool_param(tools, "write", ("content",)): f"written by the lab agent for: {last_user[:60]}\n"}
    return None


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
        dump = os.environ.get("FAKE_LLM_DUMP")
        if dump:  # every request, one JSON line each: what OpenCode asked the model (for debugging the lab)
            with open(dump, "a", encoding="utf-8") as f:
                f.write(json.dumps(req) + "\n")
        msgs = req.get("messages") or []
        last = ""
        for m in msgs:
            if m.get("role") == "user":
                last = _text(m.get("content"))
        is_title = any("title generator" in _text(m.get("content")) for m in msgs if m.get("role") == "system")
        if "[fail]" in last and not is_title:
            return self._json(400, {"error": {"message": "fake model refuses: [fail] in prompt",
                                              "type": "invalid_request_error"}})
        after_tool = bool(msgs) and msgs[-1].get("role") == "tool"
        if ("[slow]" in last or ("[slow-reply]" in last and after_tool)) and not is_title:
            delay = float(os.environ.get("FAKE_SLOW_DELAY", "60"))
            end = time.monotonic() + delay
            while time.monotonic() < end:
                time.sleep(0.1)
        delay = float(os.environ.get("FAKE_DELAY", "0"))
        if delay:
            time.sleep(delay)
        reply = "DONE: " + last.strip()
        tool = None if is_title else _plan_tool(last, msgs, req.get("tools") or [])
        if msgs and msgs[-1].get("role") == "tool" and not is_title:
            out = _text(msgs[-1].get("content")).strip().splitlines()
            reply = f"DONE: {last.strip()} -> tool said: {out[0][:200] if out else '(nothing)'}"
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
            if tool is not None:
                name, args = tool
                chunk({"tool_calls": [{"index": 0, "id": f"call_{int(time.time() * 1000)}", "type": "function",
                                       "function": {"name": name, "arguments": json.dumps(args)}}]})
                chunk({}, "tool_calls", {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15})
            else:
                chunk({"content": reply[:5]})
                chunk({"content": reply[5:]})
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

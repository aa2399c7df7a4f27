"""The machinery under ``fleet mcp``'s tools, apart from the tools themselves.

- :class:`FleetMCP`: FastMCP with fleet's rules: unknown arguments are errors, every argument
  error is one line naming the argument and what to write (:mod:`fleet.cli.mcp_args`), a
  tool's failure is one line (never
  "Error executing tool ..." and a pydantic dump), ``serverInfo`` names fleet and its version,
  stderr stays quiet unless ``FLEET_MCP_LOG`` asks, and one request gets one response even when
  the client cancels it (python-sdk #2416: a cancel racing the result answered twice and the
  server exited).
- :class:`Worker`: a library call on a thread of its own; a cancelled call interrupts it as
  Ctrl-C interrupts the CLI (the run's own interrupt path kills the remote commands), waits for
  it to stop, and sends nothing more.
- :class:`Live`: progress from any thread, in order, and a heartbeat while the work is quiet, so
  a client that resets its timeout on progress never times out a long call.
"""
from __future__ import annotations

import ctypes
import logging
import math
import os
import sys
import threading
import time
from typing import Any, Callable, Literal, cast

import anyio
import anyio.from_thread
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.server.fastmcp import Context, FastMCP
from mcp.server.fastmcp.exceptions import ToolError
from mcp.server.fastmcp.tools.base import Tool
from mcp.shared.session import RequestResponder
from mcp.types import ToolAnnotations
from pydantic import ValidationError

from fleet.cli.mcp_args import argument_error, check_arguments
from fleet.errors import FleetError
from fleet.names import did_you_mean
from fleet.safety.gate import shown

LOG_ENV = "FLEET_MCP_LOG"  # debug, info, warning (default: quiet), error
HEARTBEAT_ENV = "FLEET_MCP_HEARTBEAT"  # seconds of quiet before a progress heartbeat
HEARTBEAT = 2.0  # well under 10 s, and under a 5 s client timeout (OpenCode documents 5000 ms as its default)
DRAIN = 30.0  # seconds a cancelled call may take to stop (Ctrl-C's drain: connect timeout + 5 s)

log = logging.getLogger("fleet.mcp")


def one_line(exc: BaseException) -> str:
    """An error as fleet's one line: its first line, control characters escaped."""
    text = str(exc).strip()
    return shown(text.splitlines()[0] if text else type(exc).__name__)


def heartbeat_interval() -> float:
    """Seconds of quiet before a heartbeat (``FLEET_MCP_HEARTBEAT``, else :data:`HEARTBEAT`)."""
    raw = os.environ.get(HEARTBEAT_ENV, "")
    try:
        v = float(raw)
    except ValueError:
        return HEARTBEAT
    return v if math.isfinite(v) and v > 0 else HEARTBEAT


def log_level() -> Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]:
    """The server's log level from ``FLEET_MCP_LOG``: WARNING (quiet) unless asked."""
    raw = os.environ.get(LOG_ENV, "").strip().upper()
    if raw in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        return cast(Any, raw)
    if raw:
        print(f"fleet mcp: ${LOG_ENV}={shown(raw.lower())}: write debug, info, warning or error; "
              f"logging warnings only", file=sys.stderr)
    return "WARNING"


# ------------------------------------------------------------------------ the client

def client_name(ctx: Context) -> str:
    """``name/version`` the client gave at initialize (for the journal)."""
    try:
        info = ctx.session.client_params.clientInfo  # type: ignore[union-attr,unused-ignore]
        return shown(f"{info.name}/{info.version}") if info else "unknown"
    except Exception:  # noqa: BLE001
        return "unknown"


def can_elicit(ctx: Context) -> bool:
    """True when the client said it can ask its person (elicitation)."""
    try:
        return ctx.session.client_params.capabilities.elicitation is not None  # type: ignore[union-attr,unused-ignore]
    except Exception:  # noqa: BLE001
        return False


# ------------------------------------------------------------------------ progress

class Live:
    """One call's progress to the client: steps from any thread (fleet's pool threads too), sent
    in order by one task, and a heartbeat after :func:`heartbeat_interval` seconds of quiet.

    Progress only grows: a step is the next whole number (a host done, an agent's event); a
    heartbeat adds a fraction that never reaches the next step. Nothing is sent when the client
    gave no progress token, and nothing after the call ends.
    """

    def __init__(self, ctx: Context, tool: str) -> None:
        self.ctx = ctx
        self.tool = tool
        meta = getattr(ctx.request_context, "meta", None)
        self.enabled = getattr(meta, "progressToken", None) is not None
        self.interval = heartbeat_interval()
        self.total: float | None = None
        self.done = 0
        self.last = ""
        self.sent = 0
        self._t0 = time.monotonic()
        self._token = anyio.lowlevel.current_token()
        self._loop_thread = threading.get_ident()
        self._send: MemoryObjectSendStream[tuple[str, str, float | None]]
        self._recv: MemoryObjectReceiveStream[tuple[str, str, float | None]]
        self._send, self._recv = anyio.create_memory_object_stream[tuple[str, str, float | None]](math.inf)

    def step(self, message: str, total: float | None = None) -> None:
        """One step of the work (from any thread): ``message`` says what happened."""
        self._put(("step", message, total))

    def set_total(self, total: float) -> None:
        """How many steps the work has (hosts), once known."""
        self._put(("total", "", total))

    def _put(self, item: tuple[str, str, float | None]) -> None:
        if not self.enabled:
            return
        try:
            if threading.get_ident() == self._loop_thread:
                self._send.send_nowait(item)
            else:
                anyio.from_thread.run_sync(self._send.send_nowait, item, token=self._token)
        except Exception:  # noqa: BLE001 - the call ended, or the server is going: progress is best effort
            pass

    def close(self) -> None:
        """No more steps: the pump sends what is queued and ends."""
        self._send.close()

    async def pump(self) -> None:
        """Send the steps in order; a heartbeat whenever the work is quiet."""
        beats = 0
        async with self._recv:
            while True:
                item: tuple[str, str, float | None] | None = None
                with anyio.move_on_after(self.interval):
                    try:
                        item = await self._recv.receive()
                    except anyio.EndOfStream:
                        return
                if item is None:
                    beats += 1
                    value = self.done + beats / (beats + 1)
                    secs = time.monotonic() - self._t0
                    what = f"{self.done} of {self.total:g} done; " if self.total is not None else ""
                    message = f"{self.tool}: still running ({what}{secs:.0f} s)" + (
                        f"; last: {self.last}" if self.last else "")
                else:
                    kind, text, total = item
                    if total is not None:
                        self.total = total
                    if kind == "total":
                        continue
                    beats = 0
                    self.done += 1
                    value, message, self.last = self.done, shown(text), shown(text)
                try:
                    await self.ctx.report_progress(value, self.total, message)
                    self.sent += 1
                except Exception:  # noqa: BLE001 - progress is best effort
                    pass


# ------------------------------------------------------------------------ the work

def interrupt_thread(ident: int) -> None:
    """Ctrl-C for one thread: a KeyboardInterrupt raised in it at its next bytecode."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(KeyboardInterrupt))


class Worker:
    """``fn()`` on a thread of its own. Cancelled, the call interrupts it once (a
    KeyboardInterrupt, what Ctrl-C gives the CLI: a fanout's remote commands killed, a
    dispatch's wait ended, every host still gets a result) and waits, bounded, for it to stop.
    The interrupt lands when the thread next runs Python: at once for a fanout (it waits in
    0.2 s slices), within the agent plane's wake-up (up to 15 s) for a dispatch or wait."""

    def __init__(self, fn: Callable[[], Any], name: str) -> None:
        self.fn = fn
        self.result: Any = None
        self.error: BaseException | None = None
        self.interrupted = False
        self.finished = threading.Event()
        self._lock = threading.Lock()
        self._wake = anyio.Event()
        self._token = anyio.lowlevel.current_token()
        self.thread = threading.Thread(target=self._main, name=f"fleet-mcp-{name}", daemon=True)

    def _main(self) -> None:
        try:
            try:
                self.result = self.fn()
            except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt too: this call's outcome
                self.error = exc
        except BaseException as exc:  # noqa: BLE001 - the one interrupt, landing as fn ended
            self.error = self.error or exc
        finally:
            self.finished.set()
            try:
                anyio.from_thread.run_sync(self._wake.set, token=self._token)
            except BaseException:  # noqa: BLE001 - the loop polls `finished` too
                pass

    def interrupt(self) -> None:
        """Interrupt the work once (never after it finished)."""
        with self._lock:
            if self.interrupted or self.finished.is_set() or self.thread.ident is None:
                return
            self.interrupted = True
            interrupt_thread(self.thread.ident)

    async def _until_finished(self) -> None:
        while not self.finished.is_set():
            with anyio.move_on_after(0.5):
                await self._wake.wait()

    async def run(self, on_cancel: Callable[[], None] | None = None) -> Any:
        """The work's result (or its exception); cancelled: interrupted, ``on_cancel()``, waited
        for until it stops, and the cancellation raised on."""
        self.thread.start()
        try:
            await self._until_finished()
        except anyio.get_cancelled_exc_class():
            self.interrupt()
            log.info("%s: cancelled by the client; interrupted", self.thread.name)
            if on_cancel is not None:
                on_cancel()
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(DRAIN):
                    await self._until_finished()
            if not self.finished.is_set():
                log.warning("%s: still stopping %.0f s after the cancel", self.thread.name, DRAIN)
            raise
        if self.error is not None:
            if isinstance(self.error, KeyboardInterrupt):
                raise ToolError("interrupted: nothing more was done") from None
            raise self.error
        return self.result


# ------------------------------------------------------------------------ the server

def _answer_once(responder: RequestResponder[Any, Any]) -> None:
    """One response per request: a result after a cancel (or a second cancel) is dropped, not
    asserted on (python-sdk #2416 ended the whole server there)."""
    respond, cancel = responder.respond, responder.cancel

    async def respond_once(response: Any) -> None:
        if getattr(responder, "_completed", False):
            log.debug("request %s: already answered (cancelled); result dropped", responder.request_id)
            return
        await respond(response)

    async def cancel_once() -> None:
        if getattr(responder, "_completed", False):
            return
        await cancel()
    vars(responder)["respond"] = respond_once  # this instance only
    vars(responder)["cancel"] = cancel_once


class FleetMCP(FastMCP):
    """FastMCP with fleet's rules on arguments, errors, identity, logging and responses."""

    def __init__(self, name: str, version: str, instructions: str) -> None:
        level = log_level()
        super().__init__(name, instructions=instructions, log_level=level)
        logging.getLogger("mcp").setLevel(level)  # the SDK's INFO line per request: only when asked
        self._mcp_server.version = version  # serverInfo: fleet's version, not the SDK's
        inner = self._mcp_server._handle_message

        async def handle(message: Any, session: Any, lifespan_context: Any, raise_exceptions: bool = False) -> None:
            if isinstance(message, RequestResponder):
                _answer_once(message)
            await inner(message, session, lifespan_context, raise_exceptions)
        vars(self._mcp_server)["_handle_message"] = handle

    def fleet_tool(self, fn: Callable[..., Any], *, result: type, title: str, read_only: bool,
                   destructive: bool, idempotent: bool, open_world: bool) -> Tool:
        """Register ``fn`` (its docstring is the description) with its result's schema as
        ``outputSchema``, closed input schema and annotations."""
        fn.__annotations__["return"] = result
        self.add_tool(fn, title=title, structured_output=True, annotations=ToolAnnotations(
            title=title, readOnlyHint=read_only, destructiveHint=destructive, idempotentHint=idempotent,
            openWorldHint=open_world))
        tool = self._tool_manager.get_tool(fn.__name__)
        assert tool is not None
        tool.parameters["additionalProperties"] = False
        tool.parameters.pop("title", None)
        return tool

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> Any:
        tool = self._tool_manager.get_tool(name)
        if tool is None:
            names = [t.name for t in self._tool_manager.list_tools()]
            hint = did_you_mean(name, names)
            raise ToolError(f"unknown tool '{shown(name)}'" + (f"; {hint}" if hint else "")
                            + f"; tools: {', '.join(names)}")
        check_arguments(tool, arguments)
        try:
            return await tool.run(arguments, context=self.get_context(), convert_result=True)
        except ToolError as exc:
            cause = exc.__cause__
            if isinstance(cause, ToolError):
                raise ToolError(str(cause)) from None
            if isinstance(cause, ValidationError):
                if cause.title == tool.fn_metadata.arg_model.__name__:
                    raise ToolError(argument_error(tool, cause)) from None
                log.error("%s: result does not fit its schema: %s", name, cause)
                raise ToolError(f"{name}: fleet made a result that does not fit the tool's output schema "
                                f"(a fleet bug): {one_line(cause)}") from None
            if isinstance(cause, FleetError):
                raise ToolError(one_line(cause)) from None
            if cause is not None:
                log.error("%s: unexpected error", name, exc_info=cause)
                raise ToolError(f"{name}: unexpected error (a fleet bug): {type(cause).__name__}: "
                                f"{one_line(cause)}") from None
            raise ToolError(one_line(exc)) from None


__all__ = ["FleetMCP", "Live", "Worker", "can_elicit", "client_name", "heartbeat_interval", "log_level", "one_line"]

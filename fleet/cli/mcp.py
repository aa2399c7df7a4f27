"""``fleet mcp``: fleet as an MCP server (stdio) for orchestrator agents.

One more face over the same library layer: every tool parses its input, calls one library
operation, and returns the same dict as ``--json``; modes, routes, gates, audit and redaction
happen below, as for the CLI. Long calls report progress (one step per host). Errors come back
as tool errors with fleet's one-line messages.

The person stays in the loop: a gated plan (teardown, blow-away, worktrees.remove, anything in
``gated:``) is shown to the *person* through MCP elicitation; only their accept runs it, and the
confirmation token is spent inside the server, never shown to the model. A client without
elicitation gets the refusal with the plan and the CLI command to run, not the token. Every
call is journaled with the client's name.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable

import anyio
import anyio.lowlevel
from mcp.server.fastmcp import Context, FastMCP
from mcp.server.fastmcp.exceptions import ToolError
from pydantic import BaseModel, Field

from fleet.errors import ConfirmationRequired, FleetError


class Confirm(BaseModel):
    """What the person answers to a gated plan."""

    confirm: bool = Field(description="Run exactly this plan")


def _client_name(ctx: Context) -> str:
    try:
        info = ctx.session.client_params.clientInfo  # type: ignore[union-attr,unused-ignore]
        return f"{info.name}/{info.version}" if info else "unknown"
    except Exception:  # noqa: BLE001
        return "unknown"


def _can_elicit(ctx: Context) -> bool:
    try:
        return ctx.session.client_params.capabilities.elicitation is not None  # type: ignore[union-attr,unused-ignore]
    except Exception:  # noqa: BLE001
        return False


def _reporter(ctx: Context) -> Callable[[float, float | None, str], None]:
    """Report progress to the client from any thread (fleet's pool threads included)."""
    token = anyio.lowlevel.current_token()
    lock = threading.Lock()

    def report(done: float, total: float | None, message: str) -> None:
        with lock:
            try:
                anyio.from_thread.run(ctx.report_progress, done, total, message, token=token)
            except Exception:  # noqa: BLE001 - progress is best effort
                pass
    return report


def _progress(ctx: Context, total: int) -> Callable[[Any], None]:
    """A per-host result callback that reports one step of ``total`` to the client."""
    report = _reporter(ctx)
    done = [0]

    def step(r: Any) -> None:
        done[0] += 1
        msg = f"{getattr(r, 'host', '')}: {getattr(getattr(r, 'outcome', None), 'value', '')}".strip(": ")
        report(done[0], total, msg)
    return step


async def _run(ctx: Context, tool: str, fn: Callable[..., Any], fl: Any = None) -> Any:
    """Run a library call on a worker thread; journal the call with the client's name; map
    fleet's errors to tool errors; ask the person for a gated plan."""
    client = _client_name(ctx)
    trail = None
    if fl is not None:
        try:
            fl.refresh()
            trail = fl.trail()
        except FleetError as exc:
            raise ToolError(str(exc).splitlines()[0]) from None
        trail.record("mcp_call", "", "called", tool=tool, client=client)
    try:
        try:
            return await anyio.to_thread.run_sync(fn)
        except ConfirmationRequired as exc:
            plan = exc.plan.describe()  # values escaped: a command cannot forge a line of it
            if not _can_elicit(ctx):
                raise ToolError(
                    f"'{exc.plan.operation}' is gated: a person must confirm it, and this client cannot ask "
                    f"one. Nothing was done. The plan:\n{plan}\nRun the same operation with the fleet "
                    f"command in a terminal: it shows this plan and a token to confirm it with.") from None
            answer = await ctx.elicit(message=f"fleet asks you to confirm a gated operation. The plan:\n{plan}",
                                      schema=Confirm)
            accepted = answer.action == "accept" and bool(getattr(answer.data, "confirm", False))
            if trail is not None:
                trail.record("mcp_confirmation", ",".join(exc.plan.host_names), "accepted" if accepted else "declined",
                             tool=tool, client=client, operation_gated=exc.plan.operation)
            if not accepted:
                raise ToolError(f"the person declined '{exc.plan.operation}'; nothing was done") from None
            token = exc.token  # spent here, never returned to the model
            return await anyio.to_thread.run_sync(lambda: fn(token))
    except FleetError as exc:
        raise ToolError(str(exc).splitlines()[0] if not isinstance(exc, ConfirmationRequired) else
                        f"'{exc.plan.operation}' needs confirmation") from None
    finally:
        if trail is not None:
            trail.close()


def build_server(inventory: str | None = None) -> FastMCP:
    """The MCP server with fleet's tools (``inventory``: path, else $FLEET_INVENTORY or the setting)."""
    logging.getLogger("paramiko").setLevel(logging.WARNING)  # stderr is the client's log: keep it quiet
    from fleet.app import Fleet
    # the one application context: the person's settings (the same loader as the CLI's), warm
    # connections across calls of this session; an MCP client cannot change the mode
    fl = Fleet(inventory, face="mcp", warm=True)
    server = FastMCP("fleet", instructions="Drive a fleet of machines that run OpenCode agents: preflight, "
                     "fanout, dispatch, sessions, abort, approvals. Gated operations are confirmed by the person.")

    @server.tool()
    async def settings(ctx: Context) -> dict:
        """The person's effective settings (mode, gated, concurrency, ...): what every call here runs under."""
        from dataclasses import asdict

        def go() -> dict:
            return {"settings": asdict(fl.settings)}
        return await _run(ctx, "settings", go, fl)

    @server.tool()
    async def hosts(ctx: Context, selector: str = "all") -> dict:
        """The inventory's hosts (name, user, address, auth, tags, OpenCode URL, repos)."""
        from fleet.cli.render import host_dict
        return await _run(ctx, "hosts", lambda: {"hosts": [host_dict(h) for h in fl.select(selector)]}, fl)

    @server.tool()
    async def preflight(ctx: Context, selector: str = "all", deep: bool = False) -> dict:
        """Is each host usable? (--deep: a real login and the OpenCode server's health)."""
        def go() -> dict:
            res = fl.preflight(selector, deep=deep)
            return {"results": [r.to_dict() for r in res], "ok": all(r.ok for r in res)}
        return await _run(ctx, "preflight", go, fl)

    @server.tool()
    async def fanout(ctx: Context, command: str, selector: str = "all", mode: str | None = None,
                     canary: str | None = None, no_canary: bool = False, timeout: float | None = None) -> dict:
        """Run one shell command on the selected hosts; every host's outcome, exit code and output.
        ``mode``/``no_canary`` may only repeat the person's settings: a client cannot change them."""
        step = _progress(ctx, len(fl.select(selector)))  # the reporter is made on the event loop

        def go(confirm: str | None = None) -> dict:
            opts = fl.fanout_options(timeout=timeout)
            return fl.fanout(selector, command, mode=mode, canary=canary, no_canary=no_canary, options=opts,
                             on_result=step, confirm=confirm).to_dict()
        return await _run(ctx, "fanout", go, fl)

    @server.tool()
    async def dispatch(ctx: Context, repo: str, task: str, selector: str | None = None, no_wait: bool = False,
                       worktree: bool = False, issue: str | None = None, on_permission: str = "ask",
                       timeout: float | None = None) -> dict:
        """Hand a task to the OpenCode agent on a host (or a selector of hosts) and follow it to the end."""
        sel = selector or fl.inventory.default_host
        if not sel:
            raise ToolError("say which host: selector (the inventory has no default_host)")
        statuses: list[str] = []
        report = _reporter(ctx)

        def on_event(host: str, kind: str, text: str) -> None:
            if kind in ("session", "status", "usage", "end"):  # the same live view as the CLI's
                statuses.append(f"{host}: {kind} {text}" if kind == "session" else f"{host}: {text}")
                report(len(statuses), None, statuses[-1])

        def go(confirm: str | None = None) -> dict:
            return fl.dispatch(sel, repo, task, issue=issue, wait=not no_wait, timeout=timeout, on_event=on_event,
                               worktree=worktree or None, on_permission=on_permission, confirm=confirm).to_dict()
        return await _run(ctx, "dispatch", go, fl)

    @server.tool()
    async def sessions(ctx: Context, selector: str = "all") -> dict:
        """What each host's agent is doing: busy / idle / needs-input (and what it asks), by whom."""
        def go() -> dict:
            rows, errors = fl.sessions(selector)
            return {"sessions": [r.to_dict() for r in rows], "errors": errors}
        return await _run(ctx, "sessions", go, fl)

    @server.tool()
    async def status(ctx: Context, selector: str = "all") -> dict:
        """Health and version of each OpenCode server (a wedged one is DOWN, not a hang)."""
        return await _run(ctx, "status", lambda: {"servers": fl.status(selector)}, fl)

    @server.tool()
    async def abort(ctx: Context, session: str, host: str | None = None, reason: str = "aborted from MCP") -> dict:
        """Stop an agent session and check it stopped."""
        def go() -> dict:
            h, done = fl.abort(session, host=host, reason=reason)
            return {"host": h.name, "aborted": done}
        return await _run(ctx, "abort", go, fl)

    @server.tool()
    async def approve(ctx: Context, session: str, host: str | None = None, always: bool = False) -> dict:
        """Approve the permission an agent waits on."""
        def go() -> dict:
            h, done = fl.answer_permission(session, "always" if always else "once", host=host)
            return {"host": h.name, "answered": done}
        return await _run(ctx, "approve", go, fl)

    @server.tool()
    async def deny(ctx: Context, session: str, host: str | None = None, message: str | None = None) -> dict:
        """Reject the permission an agent waits on."""
        def go() -> dict:
            h, done = fl.answer_permission(session, "reject", host=host, message=message)
            return {"host": h.name, "answered": done}
        return await _run(ctx, "deny", go, fl)

    @server.tool()
    async def answer(ctx: Context, session: str, text: str, host: str | None = None) -> dict:
        """Answer the question an agent asks (its question tool): an option's label, or free text."""
        def go() -> dict:
            h, done = fl.answer_question(session, text, host=host)
            return {"host": h.name, "answered": done}
        return await _run(ctx, "answer", go, fl)

    @server.tool()
    async def wait(ctx: Context, session: str | None = None, dispatch_id: str | None = None, host: str | None = None,
                   timeout: float | None = None, on_permission: str = "ask") -> dict:
        """Follow agents already at work (a no_wait dispatch: one session, or every session of a
        dispatch_id) to the end of their turn; the same result as dispatch (answer, files, usage)."""
        if bool(session) == bool(dispatch_id):
            raise ToolError("say what to wait for: session, or dispatch_id")
        report = _reporter(ctx)
        said: list[str] = []

        def on_event(h: str, kind: str, text: str) -> None:
            if kind in ("status", "usage", "end"):
                said.append(f"{h}: {text}")
                report(len(said), None, said[-1])

        def go() -> dict:
            return fl.wait(session=session, dispatch_id=dispatch_id, host=host, timeout=timeout,
                           on_permission=on_permission, on_event=on_event).to_dict()
        return await _run(ctx, "wait", go, fl)

    @server.tool()
    async def teardown(ctx: Context, selector: str) -> dict:
        """Abort running sessions and delete the ones fleet created (gated: the person confirms)."""
        def go(confirm: str | None = None) -> dict:
            return {"teardown": fl.teardown(selector, confirm=confirm)}
        return await _run(ctx, "teardown", go, fl)

    @server.tool()
    async def audit_tail(ctx: Context, lines: int = 20) -> dict:
        """The last audit events (journal), with their Slack delivery state."""
        from fleet.audit.journal import Journal

        def go() -> dict:
            j = Journal(fl.settings.path("journal")).load()
            return {"events": j.events[-max(1, lines):], "pending": len(j.pending())}
        return await _run(ctx, "audit_tail", go, fl)

    server.fleet = fl  # type: ignore[attr-defined]
    server.fleet_pool = fl.pool  # type: ignore[attr-defined]
    return server


def serve(inventory: str | None = None) -> None:
    """Run the server over stdio until the client goes away."""
    build_server(inventory).run("stdio")


__all__ = ["build_server", "serve"]

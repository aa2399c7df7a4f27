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
import os
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


def _settings():
    from fleet.settings import load_settings
    return load_settings(os.getcwd())


def _inventory(path: str | None):
    from fleet.inventory import load_inventory
    st = _settings()
    return load_inventory(path or os.environ.get("FLEET_INVENTORY") or st.inventory)


def _client_name(ctx: Context) -> str:
    try:
        info = ctx.session.client_params.clientInfo  # type: ignore[union-attr]
        return f"{info.name}/{info.version}" if info else "unknown"
    except Exception:  # noqa: BLE001
        return "unknown"


def _can_elicit(ctx: Context) -> bool:
    try:
        return ctx.session.client_params.capabilities.elicitation is not None  # type: ignore[union-attr]
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


async def _run(ctx: Context, tool: str, fn: Callable[[], Any], inv: Any = None) -> Any:
    """Run a library call on a worker thread; journal the call with the client's name; map
    fleet's errors to tool errors; ask the person for a gated plan."""
    client = _client_name(ctx)
    trail = None
    if inv is not None:
        from fleet.app import audit_trail
        trail = audit_trail(inv, _settings())
        trail.record("mcp_call", "", "called", tool=tool, client=client)
    try:
        try:
            return await anyio.to_thread.run_sync(fn)
        except ConfirmationRequired as exc:
            plan = exc.plan.describe()
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
    from fleet.ssh.warm import ConnectionPool
    pool = ConnectionPool(idle=_settings().warm_idle)  # warm connections across calls of this session
    server = FastMCP("fleet", instructions="Drive a fleet of machines that run OpenCode agents: preflight, "
                     "fanout, dispatch, sessions, abort, approvals. Gated operations are confirmed by the person.")

    @server.tool()
    async def hosts(ctx: Context, selector: str = "all") -> dict:
        """The inventory's hosts (name, user, address, auth, tags, OpenCode URL, repos)."""
        from fleet.cli.render import host_dict
        from fleet.inventory.select import select
        inv = _inventory(inventory)
        return await _run(ctx, "hosts", lambda: {"hosts": [host_dict(h) for h in select(inv, selector)]}, inv)

    @server.tool()
    async def preflight(ctx: Context, selector: str = "all", deep: bool = False) -> dict:
        """Is each host usable? (--deep: a real login and the OpenCode server's health)."""
        from fleet.inventory.select import select
        from fleet.ops.preflight import deep_preflight
        from fleet.ssh.preflight import preflight_many
        inv = _inventory(inventory)
        st = _settings()
        chosen = select(inv, selector)

        def go() -> dict:
            res = deep_preflight(inv, chosen, st.preflight_timeout, st.concurrency) if deep else \
                preflight_many(chosen, st.preflight_timeout, st.concurrency, inventory=inv, ssh_config=st.ssh_config)
            return {"results": [r.to_dict() for r in res], "ok": all(r.ok for r in res)}
        return await _run(ctx, "preflight", go, inv)

    @server.tool()
    async def fanout(ctx: Context, command: str, selector: str = "all", mode: str | None = None,
                     canary: str | None = None, no_canary: bool = False, timeout: float | None = None) -> dict:
        """Run one shell command on the selected hosts; every host's outcome, exit code and output."""
        from dataclasses import replace

        from fleet.inventory.select import select
        from fleet.ops import fanout as ops
        from fleet.ssh.runner import FanoutOptions
        inv = _inventory(inventory)
        st = _settings()
        opts = FanoutOptions(concurrency=st.concurrency, connect_timeout=st.connect_timeout,
                             command_timeout=st.command_timeout, attempts=st.attempts, retry_delay=st.retry_delay,
                             preflight_timeout=st.preflight_timeout, artifacts_dir=st.artifacts_dir,
                             ssh_config=st.ssh_config, artifacts_keep=st.artifacts_keep)
        if timeout is not None:
            opts = replace(opts, command_timeout=timeout or None)
        step = _progress(ctx, len(select(inv, selector)))

        def go(confirm: str | None = None) -> dict:
            return ops.fanout(inv, selector, args={"command": command}, mode=mode, canary=canary,
                              no_canary=no_canary, settings=st, options=opts, on_result=step,
                              confirm=confirm, pool=pool).to_dict()
        return await _run(ctx, "fanout", go, inv)

    @server.tool()
    async def dispatch(ctx: Context, repo: str, task: str, selector: str | None = None, no_wait: bool = False,
                       worktree: bool = False, issue: str | None = None, on_permission: str = "ask",
                       timeout: float | None = None) -> dict:
        """Hand a task to the OpenCode agent on a host (or a selector of hosts) and follow it to the end."""
        from fleet.ops import dispatch as dx
        inv = _inventory(inventory)
        st = _settings()
        sel = selector or inv.default_host
        if not sel:
            raise ToolError("say which host: selector (the inventory has no default_host)")
        statuses: list[str] = []
        report = _reporter(ctx)

        def on_event(host: str, kind: str, text: str) -> None:
            if kind in ("session", "status", "usage", "end"):  # the same live view as the CLI's
                statuses.append(f"{host}: {kind} {text}" if kind == "session" else f"{host}: {text}")
                report(len(statuses), None, statuses[-1])

        def go(confirm: str | None = None) -> dict:
            return dx.dispatch(inv, sel, args={"task": task, "repo": repo, "session": None, "model": None,
                                               "issue": issue}, settings=st, wait=not no_wait,
                               timeout=timeout or st.dispatch_timeout, concurrency=st.concurrency,
                               on_event=on_event, worktree=worktree, on_permission=on_permission,
                               confirm=confirm).to_dict()
        return await _run(ctx, "dispatch", go, inv)

    @server.tool()
    async def sessions(ctx: Context, selector: str = "all") -> dict:
        """What each host's agent is doing: busy / idle / needs-input (and what it asks), by whom."""
        from fleet.audit.records import SessionRecords
        from fleet.inventory.select import select
        from fleet.ops.sessions import sessions_many
        inv = _inventory(inventory)

        def go() -> dict:
            rows, errors = sessions_many(select(inv, selector), SessionRecords(_settings().sessions_path()))
            return {"sessions": [r.to_dict() for r in rows], "errors": errors}
        return await _run(ctx, "sessions", go, inv)

    @server.tool()
    async def status(ctx: Context, selector: str = "all") -> dict:
        """Health and version of each OpenCode server (a wedged one is DOWN, not a hang)."""
        from fleet.inventory.select import select
        from fleet.ops.sessions import server_statuses
        inv = _inventory(inventory)
        return await _run(ctx, "status", lambda: {"servers": server_statuses(select(inv, selector))}, inv)

    def _session_host(inv: Any, recs: Any, session: str, host: str | None) -> Any:
        from fleet.ops.sessions import find_session_host
        h = inv.host(host) if host else find_session_host(list(inv.hosts), recs, session)
        if h is None:
            raise ToolError(f"no host runs session {session}: give host")
        return h

    async def _session_op(ctx: Context, tool: str, session: str, host: str | None, op: Callable[..., Any]) -> Any:
        from fleet.audit.records import SessionRecords
        inv = _inventory(inventory)
        recs = SessionRecords(_settings().sessions_path())
        h = _session_host(inv, recs, session, host)

        def go() -> Any:
            from fleet.app import audit_trail
            trail = audit_trail(inv, _settings())
            try:
                return op(h, recs, trail)
            finally:
                trail.close()
        return await _run(ctx, tool, go, inv)

    @server.tool()
    async def abort(ctx: Context, session: str, host: str | None = None, reason: str = "aborted from MCP") -> dict:
        """Stop an agent session and check it stopped."""
        from fleet.ops.beads import Beads
        from fleet.ops.sessions import abort_sessions
        return await _session_op(ctx, "abort", session, host, lambda h, recs, trail: {
            "host": h.name, "aborted": abort_sessions(h, session, False, recs, trail, Beads(), reason)})

    @server.tool()
    async def approve(ctx: Context, session: str, host: str | None = None, always: bool = False) -> dict:
        """Approve the permission an agent waits on."""
        from fleet.ops.sessions import answer_permission
        return await _session_op(ctx, "approve", session, host, lambda h, recs, trail: {
            "host": h.name, "answered": answer_permission(h, session, "always" if always else "once", None,
                                                          trail, recs)})

    @server.tool()
    async def deny(ctx: Context, session: str, host: str | None = None, message: str | None = None) -> dict:
        """Reject the permission an agent waits on."""
        from fleet.ops.sessions import answer_permission
        return await _session_op(ctx, "deny", session, host, lambda h, recs, trail: {
            "host": h.name, "answered": answer_permission(h, session, "reject", message, trail, recs)})

    @server.tool()
    async def answer(ctx: Context, session: str, text: str, host: str | None = None) -> dict:
        """Answer the question an agent asks (its question tool): an option's label, or free text."""
        from fleet.ops.sessions import answer_question
        return await _session_op(ctx, "answer", session, host, lambda h, recs, trail: {
            "host": h.name, "answered": answer_question(h, session, text, trail, recs)})

    @server.tool()
    async def wait(ctx: Context, session: str | None = None, dispatch_id: str | None = None, host: str | None = None,
                   timeout: float | None = None, on_permission: str = "ask") -> dict:
        """Follow agents already at work (a no_wait dispatch: one session, or every session of a
        dispatch_id) to the end of their turn; the same result as dispatch (answer, files, usage)."""
        from fleet.audit.records import SessionRecords
        from fleet.ops.wait import wait_dispatch, wait_sessions
        if bool(session) == bool(dispatch_id):
            raise ToolError("say what to wait for: session, or dispatch_id")
        inv = _inventory(inventory)
        st = _settings()
        recs = SessionRecords(st.sessions_path())
        report = _reporter(ctx)
        said: list[str] = []

        def on_event(h: str, kind: str, text: str) -> None:
            if kind in ("status", "usage", "end"):
                said.append(f"{h}: {text}")
                report(len(said), None, said[-1])
        kw = {"timeout": timeout or st.dispatch_timeout, "on_permission": on_permission, "records": recs,
              "stall_timeout": st.stall_timeout, "concurrency": st.concurrency, "on_event": on_event}

        def go() -> dict:
            from fleet.app import audit_trail
            trail = audit_trail(inv, st)
            try:
                if session:
                    h = _session_host(inv, recs, session, host)
                    return wait_sessions([(h, session)], strict=True, audit=trail, **kw).to_dict()
                return wait_dispatch(inv, dispatch_id, audit=trail, **kw).to_dict()
            finally:
                trail.close()
        return await _run(ctx, "wait", go, inv)

    @server.tool()
    async def teardown(ctx: Context, selector: str) -> dict:
        """Abort running sessions and delete the ones fleet created (gated: the person confirms)."""
        from fleet.audit.records import SessionRecords
        from fleet.ops.sessions import teardown as do_teardown
        inv = _inventory(inventory)
        st = _settings()

        def go(confirm: str | None = None) -> dict:
            return {"teardown": do_teardown(inv, selector, args={}, settings=st, confirm=confirm,
                                            records=SessionRecords(st.sessions_path()))}
        return await _run(ctx, "teardown", go, inv)

    @server.tool()
    async def audit_tail(ctx: Context, lines: int = 20) -> dict:
        """The last audit events (journal), with their Slack delivery state."""
        from fleet.audit.journal import Journal
        j = Journal(_settings().path("journal")).load()
        return await _run(ctx, "audit_tail", lambda: {"events": j.events[-max(1, lines):],
                                                      "pending": len(j.pending())}, _inventory(inventory))

    server.fleet_pool = pool  # type: ignore[attr-defined]
    return server


def serve(inventory: str | None = None) -> None:
    """Run the server over stdio until the client goes away."""
    build_server(inventory).run("stdio")


__all__ = ["build_server", "serve"]

"""``fleet mcp``: fleet as an MCP server (stdio) for orchestrator agents.

One more face over the same library layer: one :class:`fleet.app.Fleet` context per server
(face ``mcp``); every tool parses its input, calls one Fleet operation on a worker thread, and
returns the same dict as ``--json``, as ``structuredContent`` (checked against the tool's
``outputSchema``, :mod:`fleet.schemas`) and as text. Modes, routes, gates, audit and redaction
happen below, as for the CLI.

- Arguments: unknown ones are errors (``additionalProperties: false``), a tool that acts on
  hosts is told which (``fanout`` has no default selector), every argument error is one line
  naming the argument and what to write; a tool's failure is fleet's one-line message.
- Long calls report progress (a host done, an agent's state) and a heartbeat every
  ``FLEET_MCP_HEARTBEAT`` seconds (2) while quiet, so clients that reset their timeout on
  progress never time out.
- Cancellation (``notifications/cancelled``) interrupts the call as Ctrl-C interrupts the CLI:
  a fanout's remote commands are killed, a dispatch or wait stops waiting (the agent goes on, as
  after Ctrl-C: abort stops it); one response goes out and the server serves on.
- Artifacts never go to the client's working directory (OpenCode starts servers in its
  project): a relative ``artifacts_dir`` is under fleet's state directory.
- stderr is quiet unless ``FLEET_MCP_LOG=info`` (or debug) asks.

The person stays in the loop: a gated plan (teardown, blow-away, worktrees.remove, anything in
``gated:``) is shown to the *person* through MCP elicitation, every line escaped; only their
accept runs it, and the confirmation token is spent inside the server, never shown to the
model. A client without elicitation gets the refusal with the plan and the CLI command to run,
not the token. A client cannot change the person's mode or skip the canary. Every call is
journaled with the client's name (a cancelled one twice: called, cancelled).
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, replace
from typing import Any, Callable

import anyio
import anyio.to_thread
from mcp.server.fastmcp import Context
from mcp.server.fastmcp.exceptions import ToolError
from pydantic import BaseModel, Field

from fleet import __version__
from fleet import schemas as S
from fleet.app import Fleet
from fleet.cli.mcp_args import (  # noqa: F401 - the tools' annotations name them
    AgentTimeout,
    Always,
    AnswerText,
    Canary,
    Command,
    CommandTimeout,
    Deep,
    DenyMessage,
    DispatchId,
    DispatchSelector,
    Host,
    Issue,
    Lines,
    Mode,
    NoCanary,
    NoWait,
    OnPermission,
    ReadSelector,
    Reason,
    Repo,
    Selector,
    Session,
    Task,
    WaitSession,
    Worktree,
)
from fleet.cli.mcp_runtime import FleetMCP, Live, Worker, can_elicit, client_name, one_line
from fleet.errors import BadInput, ConfirmationRequired, FleetError
from fleet.safety.gate import shown
from fleet.settings import Settings, find_project


class Confirm(BaseModel):
    """What the person answers to a gated plan."""

    confirm: bool = Field(description="Run exactly this plan")


# ------------------------------------------------------------------------ paths

def state_dir() -> str:
    """fleet's state directory: ``$XDG_STATE_HOME/fleet`` (``~/.local/state/fleet``)."""
    return os.path.join(os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "fleet")


def off_the_project(st: Settings, cwd: str | None = None) -> Settings:
    """``st`` with artifacts out of the project ``fleet mcp`` was started in: a client starts
    its servers in *its* working directory (OpenCode: the project it works on), and a relative
    ``artifacts_dir`` (the default) would fill it; they go under fleet's state directory, as
    they do for a command run outside any project. An explicit path elsewhere is kept."""
    project = find_project(cwd or os.getcwd())
    if project is None:
        return st  # relative paths are already under the state directory
    root = os.path.realpath(project)
    where = os.path.realpath(st.path("artifacts_dir"))
    if where != root and not where.startswith(root + os.sep):
        return st
    return replace(st, artifacts_dir=os.path.join(state_dir(), "artifacts"))


class McpFleet(Fleet):
    """The one application context of a ``fleet mcp`` server (face ``mcp``, warm connections):
    the person's settings, read again before each call, with artifacts off the project. When a
    ``fleet serve`` runs for the state directory (or ``persist`` starts one), fanouts run over
    its connections: one set of connections per user, however many MCP clients start a server."""

    def __init__(self, inventory: str | None = None) -> None:
        super().__init__(inventory, face="mcp", warm=True, use_service=True)
        self.settings = off_the_project(self.settings)

    def refresh(self) -> None:
        super().refresh()
        self.settings = off_the_project(self.settings)


# ------------------------------------------------------------------------ one call

def elicitation_message(plan: Any, client: str) -> str:
    """What the person reads before they accept a gated plan. Every line is escaped again
    (control characters, newlines, bidi marks): nothing a model or a command wrote can forge a
    line of it, and no line but these exists."""
    lines = [f"fleet: the MCP client {shown(client)} asks to run a gated operation. Nothing runs unless you "
             f"accept.", "The plan:"]
    lines += [shown(line) for line in plan.describe().split("\n")]
    lines.append("Accept runs exactly this plan, once. Values are shown escaped (\\n is a newline in them).")
    return "\n".join(lines)


async def _confirmed(ctx: Context, tool: str, exc: ConfirmationRequired, trail: Any, client: str) -> str:
    """Ask the person for a gated plan; their accept gives the token (never the model)."""
    plan = exc.plan
    if not can_elicit(ctx):
        raise ToolError(
            f"'{plan.operation}' is gated: a person must confirm it, and this client cannot ask one. Nothing "
            f"was done. The plan:\n{plan.describe()}\nRun the same operation with the fleet command in a "
            f"terminal: it shows this plan and a token to confirm it with.")
    answer = await ctx.elicit(message=elicitation_message(plan, client), schema=Confirm)
    accepted = answer.action == "accept" and bool(getattr(answer.data, "confirm", False))
    trail.record("mcp_confirmation", ",".join(plan.host_names), "accepted" if accepted else "declined",
                 tool=tool, client=client, operation_gated=plan.operation)
    if not accepted:
        raise ToolError(f"the person declined '{plan.operation}'; nothing was done")
    return str(exc.token)


async def _work(ctx: Context, tool: str, fn: Callable[..., Any], trail: Any, client: str,
                on_cancel: Callable[[], None]) -> Any:
    try:
        try:
            return await Worker(fn, tool).run(on_cancel)
        except ConfirmationRequired as exc:
            token = await _confirmed(ctx, tool, exc, trail, client)  # spent here, never returned
            return await Worker(lambda: fn(token), tool).run(on_cancel)
    except ConfirmationRequired as exc:
        raise ToolError(f"'{exc.plan.operation}' needs confirmation") from None
    except FleetError as exc:
        raise ToolError(one_line(exc)) from None


async def call(ctx: Context, fl: Fleet, tool: str, fn: Callable[..., Any], live: Live | None = None) -> Any:
    """One tool call: the settings and inventory read again, the call journaled with the
    client's name, ``fn`` run on a worker thread (interrupted if the client cancels), progress
    and heartbeats while it runs, fleet's errors as one-line tool errors, a gated plan asked of
    the person."""
    client = client_name(ctx)
    try:
        fl.refresh()
        trail = fl.trail()
        trail.record("mcp_call", "", "called", tool=tool, client=client)
    except FleetError as exc:
        raise ToolError(one_line(exc)) from None
    live = live or Live(ctx, tool)
    failure: Exception | None = None
    result: Any = None
    cancelled: list[bool] = []

    def on_cancel() -> None:  # journaled when the cancel comes, not when the work has stopped
        if not cancelled:
            cancelled.append(True)
            try:
                trail.record("mcp_cancelled", "", "cancelled", tool=tool, client=client)
            except Exception as exc:  # noqa: BLE001 - the cancel goes on; the server says why on stderr
                logging.getLogger("fleet.mcp").warning("%s: the cancel could not be journaled: %s", tool, exc)
    try:
        async with anyio.create_task_group() as tg:
            if live.enabled:
                tg.start_soon(live.pump)
            try:
                result = await _work(ctx, tool, fn, trail, client, on_cancel)
            except Exception as exc:  # noqa: BLE001 - raised after the progress ends
                failure = exc
            finally:
                live.close()
    except anyio.get_cancelled_exc_class():
        on_cancel()  # cancelled while no work ran (asking the person, say)
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(trail.close)
    if failure is not None:
        raise failure
    return result


# ------------------------------------------------------------------------ the server

def build_server(inventory: str | None = None) -> FleetMCP:
    """The MCP server with fleet's tools (``inventory``: path, else $FLEET_INVENTORY or the setting)."""
    logging.getLogger("paramiko").setLevel(logging.WARNING)  # stderr is the client's log: keep it quiet
    # the one application context: the person's settings (the same loader as the CLI's), warm
    # connections across calls of this session; an MCP client cannot change the mode
    fl = McpFleet(inventory)
    server = FleetMCP("fleet", __version__, instructions=(
        "Drive a fleet of machines that run OpenCode agents: preflight, fanout (a shell command on many hosts), "
        "dispatch (a task to the agents), wait, sessions, abort, approve/deny/answer, teardown. Name the hosts "
        "with a selector (\"lab01\", \"@group\", \"tag:x\", \"all\"). Gated operations are confirmed by the "
        "person, not by you. Results are structured (see each tool's outputSchema); long calls send progress."))

    def reads(fn: Callable[..., Any], result: type, title: str, open_world: bool = True) -> None:
        server.fleet_tool(fn, result=result, title=title, read_only=True, destructive=False, idempotent=True,
                          open_world=open_world)

    def acts(fn: Callable[..., Any], result: type, title: str, destructive: bool, idempotent: bool) -> None:
        server.fleet_tool(fn, result=result, title=title, read_only=False, destructive=destructive,
                          idempotent=idempotent, open_world=True)

    async def settings(ctx: Context) -> dict[str, Any]:
        """The person's effective settings (mode, gated, concurrency, timeouts, artifacts_dir, ...): what
        every call here runs under. A client cannot change them."""
        return await call(ctx, fl, "settings", lambda: {"settings": asdict(fl.settings)})
    reads(settings, S.SettingsResult, "Settings", open_world=False)

    async def hosts(ctx: Context, selector: ReadSelector = "all") -> dict[str, Any]:
        """The inventory's hosts (name, user, address, auth, tags, OpenCode URL, repos). No host is contacted."""
        from fleet.cli.render import host_dict
        return await call(ctx, fl, "hosts", lambda: {"hosts": [host_dict(h) for h in fl.select(selector)]})
    reads(hosts, S.HostsResult, "Inventory hosts", open_world=False)

    async def preflight(ctx: Context, selector: ReadSelector = "all", deep: Deep = None) -> dict[str, Any]:
        """Is each host usable? DNS, TCP, SSH handshake and login checks per host, and what to do when one
        fails (deep: a real login and the OpenCode server's health)."""
        def go() -> dict[str, Any]:
            res = fl.preflight(selector, deep=deep)
            return {"results": [r.to_dict() for r in res], "ok": all(r.ok for r in res)}
        return await call(ctx, fl, "preflight", go)
    reads(preflight, S.PreflightResultSet, "Preflight hosts")

    async def fanout(ctx: Context, command: Command, selector: Selector, mode: Mode = None, canary: Canary = None,
                     no_canary: NoCanary = False, timeout: CommandTimeout = None) -> dict[str, Any]:
        """Run one shell command on the selected hosts (in canary mode the canary first, the rest only if it
        succeeds); every host's outcome, exit code and output, and the run's artifacts folder. Progress: one
        step per host. Cancelling the call stops the run as Ctrl-C does (remote commands are killed)."""
        live = Live(ctx, "fanout")

        def go(confirm: str | None = None) -> dict[str, Any]:
            live.set_total(len(fl.select(selector)))
            opts = fl.fanout_options(timeout=timeout)
            return fl.fanout(selector, command, mode=mode, canary=canary, no_canary=no_canary, options=opts,
                             on_result=lambda r: live.step(f"{r.host}: {r.outcome.value}"),
                             confirm=confirm).to_dict()
        return await call(ctx, fl, "fanout", go, live)
    acts(fanout, S.FanoutRunResult, "Run a command on hosts", destructive=True, idempotent=False)

    async def dispatch(ctx: Context, repo: Repo, task: Task, selector: DispatchSelector = None,
                       no_wait: NoWait = False, worktree: Worktree = False, issue: Issue = None,
                       on_permission: OnPermission = "ask", timeout: AgentTimeout = None) -> dict[str, Any]:
        """Hand a task to the OpenCode agent on a host (or a selector of hosts) and follow it to the end of
        its turn: the answer, the files it changed, tokens and cost. Progress: the session, its states and
        usage. Cancelling the call stops waiting, as Ctrl-C does: the agent goes on (abort stops it)."""
        live = Live(ctx, "dispatch")

        def on_event(host: str, kind: str, text: str) -> None:
            if kind in ("session", "status", "usage", "end"):  # the same live view as the CLI's
                live.step(f"{host}: {kind} {text}" if kind == "session" else f"{host}: {text}")

        def go(confirm: str | None = None) -> dict[str, Any]:
            sel = selector or fl.inventory.default_host
            if not sel:
                raise BadInput("dispatch: say which host: selector (the inventory has no default_host)")
            return fl.dispatch(sel, repo, task, issue=issue, wait=not no_wait, timeout=timeout, on_event=on_event,
                               worktree=worktree or None, on_permission=on_permission, confirm=confirm).to_dict()
        return await call(ctx, fl, "dispatch", go, live)
    acts(dispatch, S.DispatchRunResult, "Dispatch a task to agents", destructive=True, idempotent=False)

    async def wait(ctx: Context, session: WaitSession = None, dispatch_id: DispatchId = None, host: Host = None,
                   timeout: AgentTimeout = None, on_permission: OnPermission = "ask") -> dict[str, Any]:
        """Follow agents already at work (a no_wait dispatch: one session, or every session of a dispatch_id)
        to the end of their turn; the same result as dispatch (answer, files, usage)."""
        if bool(session) == bool(dispatch_id):
            raise ToolError("wait: say what to wait for: session, or dispatch_id (one of them). Nothing was done")
        live = Live(ctx, "wait")

        def on_event(h: str, kind: str, text: str) -> None:
            if kind in ("status", "usage", "end"):
                live.step(f"{h}: {text}")

        def go() -> dict[str, Any]:
            return fl.wait(session=session, dispatch_id=dispatch_id, host=host, timeout=timeout,
                           on_permission=on_permission, on_event=on_event).to_dict()
        return await call(ctx, fl, "wait", go, live)
    # on_permission allow/deny answers the agent's permissions: not read-only
    acts(wait, S.DispatchRunResult, "Wait for agents", destructive=True, idempotent=False)

    async def sessions(ctx: Context, selector: ReadSelector = "all") -> dict[str, Any]:
        """What each host's agent is doing: busy / idle / needs-input (and what it asks), by whom, tokens
        and cost so far."""
        def go() -> dict[str, Any]:
            from fleet.serve.board import sessions_via_service

            served = sessions_via_service(fl, fl.select(selector))  # a running fleet serve's live board
            rows, errors = served if served is not None else fl.sessions(selector)
            return {"sessions": [r.to_dict() for r in rows], "errors": errors}
        return await call(ctx, fl, "sessions", go)
    reads(sessions, S.SessionsResult, "Agent sessions")

    async def status(ctx: Context, selector: ReadSelector = "all") -> dict[str, Any]:
        """Health and version of each OpenCode server (a wedged one is DOWN after 3 s, not a hang)."""
        return await call(ctx, fl, "status", lambda: {"servers": fl.status(selector)})
    reads(status, S.StatusResult, "OpenCode servers")

    async def abort(ctx: Context, session: Session, host: Host = None,
                    reason: Reason = "aborted from MCP") -> dict[str, Any]:
        """Stop an agent session and check it stopped."""
        def go() -> dict[str, Any]:
            h, done = fl.abort(session, host=host, reason=reason)
            return {"host": h.name, "aborted": list(done), "notes": list(getattr(done, "notes", []))}
        return await call(ctx, fl, "abort", go)
    acts(abort, S.AbortResult, "Abort a session", destructive=True, idempotent=True)

    async def approve(ctx: Context, session: Session, host: Host = None, always: Always = False) -> dict[str, Any]:
        """Approve the permission an agent waits on (it then does what it asked to)."""
        def go() -> dict[str, Any]:
            h, done = fl.answer_permission(session, "always" if always else "once", host=host)
            return {"host": h.name, "answered": done}
        return await call(ctx, fl, "approve", go)
    acts(approve, S.AnsweredResult, "Approve a permission", destructive=True, idempotent=False)

    async def deny(ctx: Context, session: Session, host: Host = None, message: DenyMessage = None) -> dict[str, Any]:
        """Reject the permission an agent waits on."""
        def go() -> dict[str, Any]:
            h, done = fl.answer_permission(session, "reject", host=host, message=message)
            return {"host": h.name, "answered": done}
        return await call(ctx, fl, "deny", go)
    acts(deny, S.AnsweredResult, "Deny a permission", destructive=False, idempotent=False)

    async def answer(ctx: Context, session: Session, text: AnswerText, host: Host = None) -> dict[str, Any]:
        """Answer the question an agent asks (its question tool): an option's label, or free text."""
        def go() -> dict[str, Any]:
            h, done = fl.answer_question(session, text, host=host)
            return {"host": h.name, "answered": done}
        return await call(ctx, fl, "answer", go)
    acts(answer, S.AnsweredResult, "Answer an agent's question", destructive=False, idempotent=False)

    async def teardown(ctx: Context, selector: Selector) -> dict[str, Any]:
        """Abort running sessions and delete the ones fleet created on the selected hosts (gated: the person
        confirms the plan; their git worktrees are left, listed)."""
        def go(confirm: str | None = None) -> dict[str, Any]:
            return {"teardown": [r.to_dict() for r in fl.teardown(selector, confirm=confirm)]}
        return await call(ctx, fl, "teardown", go)
    acts(teardown, S.TeardownResult, "Tear down agent sessions", destructive=True, idempotent=True)

    async def audit_tail(ctx: Context, lines: Lines = 20) -> dict[str, Any]:
        """The last audit events (the journal) and how many still wait for Slack."""
        from fleet.audit.journal import Journal

        def go() -> dict[str, Any]:
            j = Journal(fl.settings.path("journal")).load()
            return {"events": j.events[-lines:], "pending": len(j.pending())}
        return await call(ctx, fl, "audit_tail", go)
    reads(audit_tail, S.AuditTailResult, "Audit journal", open_world=False)

    server.fleet = fl  # type: ignore[attr-defined]
    server.fleet_pool = fl.pool  # type: ignore[attr-defined]
    return server


def serve(inventory: str | None = None) -> None:
    """Run the server over stdio until the client goes away."""
    build_server(inventory).run("stdio")


__all__ = ["build_server", "elicitation_message", "off_the_project", "serve"]

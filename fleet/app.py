"""The one application context every face shares: :class:`Fleet`.

``fleet`` and ``inv`` tasks, ``dx-dispatch``, ``fleet mcp`` and Python callers each build one
``Fleet`` and call its operations; none of them reads settings, opens an audit trail or finds
the session records on its own. So the person's settings (one loader, one precedence), the
secrets to redact, the records and the warm connections are the same whoever calls.

What a face may change is its kind's to decide (:attr:`Fleet.face`): a person at the CLI may
type ``--mode``; an MCP client or a Python caller gets the person's configured mode, and asking
for another one is refused (exit 3), never silently obeyed.
"""
from __future__ import annotations

import os
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable

from fleet.errors import BadInput, Refused
from fleet.settings import Settings, flag_or, load_settings

if TYPE_CHECKING:  # pragma: no cover
    from fleet.audit.records import SessionRecords
    from fleet.audit.trail import AuditTrail
    from fleet.inventory import Host, Inventory
    from fleet.results import FanoutRun, PreflightResult, TeardownResult, WorktreeRemoval
    from fleet.ssh.runner import FanoutOptions
    from fleet.ssh.warm import ConnectionPool

FACES = ("cli", "mcp", "api", "service")

# Set by `fleet serve` in its own process: every context made there shares its warm connections
# (and never calls the service it runs in).
SERVICE_POOL: ConnectionPool | None = None
PERSON_FACES = ("cli",)  # a person typed the flags: they may choose the mode for this run
CANARY_SKIP_FACES = ("cli", "api")  # who may skip the canary (a client over MCP may not)


def audit_trail(inv: Inventory, settings: Settings, post: bool = True) -> AuditTrail:
    """The audit trail for ``inv`` with every secret it names redacted."""
    from fleet.audit.trail import AuditTrail
    from fleet.safety.secrets import inventory_secrets

    token = os.environ.get(inv.slack.token_env) if inv.slack else None
    return AuditTrail(settings.path("journal"), inv.slack, token, secrets_=inventory_secrets(inv), post=post)


class Fleet:
    """fleet as one object: settings, inventory, audit trail, records, Beads, warm connections.

    ::

        with Fleet("inventory.yaml") as f:
            f.fanout("@gpu", "nvidia-smi")
            f.fanout("@gpu", "uptime")      # same connections, no handshake

    ``settings``: a :class:`~fleet.settings.Settings` to use as they are, else the one loader's
    (:func:`~fleet.settings.load_settings`: user file, project ``invoke.yaml`` found upward,
    ``INVOKE_FLEET_*``, then ``overrides``, the flags a person typed). ``face``: who calls
    (``cli``, ``mcp``, ``api``); only a person's face may ask for another mode than the
    configured one. ``warm``: keep SSH connections between calls (long-lived faces).
    """

    def __init__(self, inventory: str | Inventory | None = None, settings: Settings | None = None, *,
                 face: str = "api", cwd: str | None = None, runtime_file: str | None = None,
                 overrides: dict[str, Any] | None = None, warm: bool | None = None,
                 idle: float | None = None, pool: ConnectionPool | None = None,
                 use_service: bool | None = None) -> None:
        if face not in FACES:
            raise BadInput(f"unknown face '{face}': one of {', '.join(FACES)}")
        self.face = face
        self.settings = settings if settings is not None else load_settings(
            cwd, runtime_file=runtime_file, overrides=overrides)
        self._given_settings = settings is not None
        self._load: dict[str, Any] = {"cwd": cwd, "runtime_file": runtime_file, "overrides": overrides}
        self._inventory_arg = inventory
        self._warm = face != "cli" if warm is None else warm
        self._idle = idle
        if pool is None and SERVICE_POOL is not None:
            pool, use_service = SERVICE_POOL, False  # inside `fleet serve`: its warm connections
        self._pool: ConnectionPool | None = pool
        self._shared_pool = pool is not None  # the service's: not ours to close
        # a one-shot face runs its SSH work through a running `fleet serve` (warm connections)
        self._use_service = face == "cli" if use_service is None else use_service

    # ------------------------------------------------------------------ the context
    def refresh(self) -> None:
        """Read the settings and the inventory again (a long-lived face does before each call,
        so what the person changes in their files holds at once); warm connections stay."""
        if not self._given_settings:
            self.settings = load_settings(self._load["cwd"], runtime_file=self._load["runtime_file"],
                                          overrides=self._load["overrides"])
        for k in ("inventory", "records"):
            self.__dict__.pop(k, None)

    @cached_property
    def inventory(self) -> Inventory:
        """The inventory: the one given, else ``$FLEET_INVENTORY``, else the setting."""
        from fleet.inventory import Inventory, load_inventory

        if isinstance(self._inventory_arg, Inventory):
            return self._inventory_arg
        from fleet.inventory import default_inventory_path

        return load_inventory(self._inventory_arg or default_inventory_path(self.settings))

    def trail(self, slack: bool = True) -> AuditTrail:
        """A new audit trail for this inventory (close it when done; every secret redacted).
        Opened on first use: a call the service runs never opens one here."""
        from fleet.audit.lazy import LazyTrail

        return LazyTrail(lambda: audit_trail(self.inventory, self.settings, post=slack))  # type: ignore[return-value]

    @cached_property
    def records(self) -> SessionRecords:
        """The records of the sessions fleet created (beside the journal)."""
        from fleet.audit.records import SessionRecords

        return SessionRecords(self.settings.sessions_path())

    def beads(self) -> Any:
        """The Beads client (``bd``), for claims and blocked issues."""
        from fleet.ops.beads import Beads

        return Beads()

    @property
    def pool(self) -> ConnectionPool | None:
        """Warm SSH connections kept between calls (None for a one-shot face)."""
        if self._shared_pool:
            return self._pool
        if not self._warm:
            return None
        if self._pool is None:
            from fleet.ssh.warm import ConnectionPool

            self._pool = ConnectionPool(idle=self._idle if self._idle is not None else self.settings.warm_idle)
        return self._pool

    def select(self, selector: str) -> list[Host]:
        """The hosts a selector names (or a one-line error with a suggestion)."""
        from fleet.inventory.select import select

        return select(self.inventory, selector)

    def agent_hosts(self) -> tuple[str, list[str]]:
        """``--all`` for agent work: every host with an OpenCode server, as a selector, and the
        names of the hosts left out (they have none)."""
        hosts = self.select("all")
        with_agent = [h.name for h in hosts if h.opencode is not None]
        if not with_agent:
            raise BadInput(f"no host in {self.inventory.path} has an OpenCode server: add opencode: {{url: ...}} "
                           f"to the hosts whose agents should get tasks")
        return ",".join(with_agent), [h.name for h in hosts if h.opencode is None]

    def mode(self, requested: str | None) -> str | None:
        """The mode to run in: the person's setting, or one a person typed. A client or program
        asking for another mode than the configured one is refused: it cannot loosen (or change)
        what the person configured."""
        if requested is None or str(requested).strip() == "":
            return None
        from fleet.safety.gate import resolve_mode

        m = resolve_mode(requested, self.settings)
        if self.face not in PERSON_FACES and m != resolve_mode(None, self.settings):
            raise Refused(f"mode '{m}' was asked for, but the person's setting is mode "
                          f"'{self.settings.mode}' and a {self.face} client cannot change it: nothing was "
                          f"done. The person can change 'mode' under fleet: in invoke.yaml, or run the "
                          f"fleet command with --mode")
        return m

    def no_canary(self, requested: bool) -> bool:
        """Skipping the canary loosens canary mode: a person or a program may ask for it, an
        MCP client may not."""
        if requested and self.face not in CANARY_SKIP_FACES:
            raise Refused(f"no_canary was asked for, but in canary mode the canary runs first and a "
                          f"{self.face} client cannot skip it: nothing was done; drop no_canary")
        return bool(requested)

    def fanout_options(self, **flags: Any) -> FanoutOptions:
        """The SSH engine's options: the settings, then the flags given (None = the setting)."""
        from fleet.ssh.options import FanoutOptions

        return FanoutOptions.from_settings(self.settings, **flags)

    def ssh_options(self, **flags: Any) -> FanoutOptions:
        """One-attempt SSH options, for SSH work that is not a fanout (worktrees, deep preflight)."""
        return self.fanout_options(**{"attempts": 1, "retry_delay": 0, **flags})

    # ------------------------------------------------------------------ operations
    def fanout(self, selector: str, command: str, *, mode: str | None = None, confirm: str | None = None,
               canary: str | None = None, no_canary: bool = False, options: FanoutOptions | None = None,
               trail: Any = None, **kw: Any) -> FanoutRun:
        """Run ``command`` on the selected hosts under the mode and the gate (see
        :func:`fleet.ops.fanout.fanout`); over this object's warm connections."""
        if not command or not str(command).strip():
            raise BadInput('give the command to run, e.g. fanout --all "make test"')
        mode, no_canary = self.mode(mode), self.no_canary(no_canary)  # this face's rules, wherever it runs
        if self._use_service:
            from fleet.serve.use import fanout_via_service

            run = fanout_via_service(self, selector, command, mode=mode, confirm=confirm, canary=canary,
                                     no_canary=no_canary, options=options or self.fanout_options(), **kw)
            if run is not None:
                return run
        from fleet.ops.fanout import fanout

        return self._with_trail(trail, lambda tr: fanout(
            self.inventory, selector, args={"command": command}, mode=mode, confirm=confirm,
            canary=canary, no_canary=no_canary, settings=self.settings,
            options=options or self.fanout_options(), trail=tr, pool=self.pool, **kw))

    def blow_away(self, selector: str, repo: str, *, mode: str | None = None, confirm: str | None = None,
                  options: FanoutOptions | None = None, trail: Any = None, **kw: Any) -> FanoutRun:
        """Remove ``repo``'s working copy on the selected hosts (gated)."""
        from fleet.ops.blow_away import blow_away

        return self._with_trail(trail, lambda tr: blow_away(
            self.inventory, selector, args={"repo": repo}, mode=self.mode(mode), confirm=confirm,
            settings=self.settings, options=options or self.ssh_options(), trail=tr, **kw))

    def preflight(self, selector: str = "all", *, deep: bool | None = None, timeout: float | None = None,
                  concurrency: int | None = None, options: FanoutOptions | None = None) -> list[PreflightResult]:
        """Is each selected host usable? (``deep``: a real login and the OpenCode server's health)."""
        st = self.settings
        hosts = self.select(selector)
        t = flag_or("--timeout", timeout, st.preflight_timeout, positive=True)
        n = flag_or("--concurrency", concurrency, st.concurrency, int, 1, True)
        if deep or (deep is None and st.preflight_deep):
            from fleet.ops.preflight import deep_preflight

            return deep_preflight(self.inventory, hosts, t, n, options or self.ssh_options(concurrency=n))
        from fleet.ssh.preflight import preflight_many

        return preflight_many(hosts, t, n, inventory=self.inventory, ssh_config=st.ssh_config)

    def dispatch(self, selector: str, repo: str, task: str, *, mode: str | None = None,
                 confirm: str | None = None, canary: str | None = None, no_canary: bool = False,
                 session: str | None = None, model: str | None = None, issue: str | None = None,
                 wait: bool = True, timeout: float | None = None, worktree: bool | None = None,
                 base: str | None = None, on_permission: str = "ask", slack: bool = True,
                 on_event: Callable[[str, str, str], None] | None = None, trail: Any = None, **kw: Any) -> Any:
        """Hand ``task`` to the agent on the selected hosts, in ``repo`` (see :func:`fleet.ops.dispatch.dispatch`)."""
        from fleet.ops.dispatch import dispatch
        st = self.settings
        if model and "/" not in model:
            raise BadInput(f"--model {model}: write provider/model, e.g. --model anthropic/claude-sonnet-4-5")
        t = flag_or("--timeout", timeout, st.dispatch_timeout, positive=True)
        return self._with_trail(trail, lambda tr: dispatch(
            self.inventory, selector, args={"task": task, "repo": repo, "session": session, "model": model,
                                            "issue": issue},
            mode=self.mode(mode), confirm=confirm, canary=canary, no_canary=self.no_canary(no_canary),
            settings=st, trail=tr, wait=wait, timeout=t, concurrency=st.concurrency, records=self.records,
            on_event=on_event, beads=self.beads() if issue else None, on_permission=on_permission,
            worktree=st.worktree if worktree is None else bool(worktree) or st.worktree, base=base,
            ssh_options=self.ssh_options(), **kw), slack)

    def wait(self, *, session: str | None = None, dispatch_id: str | None = None, host: str | None = None,
             hosts: str | None = None, timeout: float | None = None, on_permission: str = "ask",
             on_event: Callable[[str, str, str], None] | None = None, slack: bool = True,
             trail: Any = None) -> Any:
        """Follow agents already at work (one session, or every session of a dispatch) to the end."""
        from fleet.ops.wait import wait_dispatch, wait_sessions
        if bool(session) == bool(dispatch_id):
            raise BadInput("say what to wait for: --session ID (one agent) or --dispatch ID (every agent of "
                           "a dispatch)")
        st = self.settings
        kw: dict[str, Any] = {
            "timeout": flag_or("--timeout", timeout, st.dispatch_timeout, positive=True),
            "on_permission": on_permission, "stall_timeout": st.stall_timeout, "concurrency": st.concurrency,
            "records": self.records, "on_event": on_event}
        if session:
            pair = (self.session_host(session, host), session)
            return self._with_trail(trail, lambda tr: wait_sessions([pair], strict=True, audit=tr, **kw), slack)
        if timeout is None and on_permission == "ask" and not hosts:  # as the service follows it: its view
            from fleet.serve.use import wait_via_service
            run = wait_via_service(self, str(dispatch_id), on_event)
            if run is not None:
                return run
        return self._with_trail(trail, lambda tr: wait_dispatch(
            self.inventory, str(dispatch_id), hosts=self.select(hosts) if hosts else None, audit=tr, **kw), slack)

    def teardown(self, selector: str, *, mode: str | None = None, confirm: str | None = None,
                 canary: str | None = None, trail: Any = None) -> list[TeardownResult]:
        """Abort running sessions and delete fleet's sessions on the selected hosts (gated)."""
        from fleet.ops.sessions import teardown

        return self._with_trail(trail, lambda tr: teardown(
            self.inventory, selector, args={}, mode=self.mode(mode), confirm=confirm, canary=canary,
            settings=self.settings, trail=tr, records=self.records))

    def remove_worktree(self, selector: str, repo: str, name: str, *, force: bool = False,
                        delete_branch: bool = False, mode: str | None = None, confirm: str | None = None,
                        trail: Any = None) -> list[WorktreeRemoval]:
        """Remove a fleet-made worktree on the selected hosts (gated)."""
        from fleet.ops.worktrees import remove_worktree

        return self._with_trail(trail, lambda tr: remove_worktree(
            self.inventory, selector, args={"repo": repo, "name": name, "force": bool(force),
                                            "delete_branch": bool(delete_branch)},
            mode=self.mode(mode), confirm=confirm, settings=self.settings, trail=tr, options=self.ssh_options()))

    def worktrees(self, selector: str = "all") -> Any:
        """The git worktrees fleet made on the selected hosts: (rows, errors)."""
        from fleet.ops.worktrees import list_worktrees

        return list_worktrees(self.inventory, self.select(selector), self.ssh_options(), self.records)

    def sessions(self, selector: str = "all") -> Any:
        """What each host's agent is doing: (rows, errors)."""
        from fleet.ops.sessions import sessions_many

        return sessions_many(self.select(selector), self.records)

    def status(self, selector: str = "all") -> list[dict[str, Any]]:
        """Health and version of each selected host's OpenCode server."""
        from fleet.ops.sessions import server_statuses

        return server_statuses(self.select(selector))

    def session_host(self, session: str | None, host: str | None = None) -> Host:
        """The host of a session: ``host`` if given, else the one fleet's records or the servers know."""
        from fleet.ops.sessions import find_session_host

        if host:
            return self.inventory.host(host)
        h = find_session_host(list(self.inventory.hosts), self.records, session) if session else None
        if h is None:
            raise BadInput("say which host: --host NAME (fleet's records do not know this session)")
        return h

    def abort(self, session: str | None, *, host: str | None = None, all_sessions: bool = False,
              reason: str = "aborted by operator", slack: bool = True,
              stop_tools: bool = True) -> tuple[Host, list[str]]:
        """Stop a session (or every busy one on the host) and check it stopped; with ``stop_tools``,
        a tool process that outlived the abort is stopped over SSH (the result's ``notes`` say so)."""
        from fleet.ops.sessions import abort_sessions

        h = self.session_host(session, host)
        return h, self._with_trail(None, lambda tr: abort_sessions(
            h, session, all_sessions, self.records, tr, self.beads(), reason,
            inventory=self.inventory if stop_tools else None,
            ssh_options=self.ssh_options() if stop_tools else None), slack)

    def answer_permission(self, session: str, reply: str, *, host: str | None = None,
                          message: str | None = None) -> tuple[Host, list[str]]:
        """Approve (``once``/``always``) or reject the permission a session waits on."""
        from fleet.ops.sessions import answer_permission

        h = self.session_host(session, host)
        return h, self._with_trail(None, lambda tr: answer_permission(h, session, reply, message, tr, self.records))

    def answer_question(self, session: str, text: str, *, host: str | None = None) -> tuple[Host, list[str]]:
        """Answer the question a session asks."""
        from fleet.ops.sessions import answer_question

        h = self.session_host(session, host)
        return h, self._with_trail(None, lambda tr: answer_question(h, session, text, tr, self.records))

    # ------------------------------------------------------------------ plumbing
    def _with_trail(self, trail: Any, fn: Callable[[Any], Any], slack: bool = True) -> Any:
        """Run ``fn(trail)`` with the caller's trail, or one of this context's, closed after."""
        if trail is not None:
            return fn(trail)
        own = self.trail(slack)
        try:
            return fn(own)
        finally:
            own.close()

    def close(self) -> None:
        """Close every kept connection."""
        if self._pool is not None and not self._shared_pool:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Fleet", "audit_trail"]

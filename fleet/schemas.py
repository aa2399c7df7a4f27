"""JSON schemas of fleet's results: the shapes the result types' ``to_dict`` give, as pydantic
models and TypedDicts, for faces that declare their output (``fleet mcp``'s ``outputSchema``).

Every object here is closed (``additionalProperties: false``): a client knows each key it can
get. Validation ignores a key it does not know (a newer result type's) instead of failing the
call; the suite checks that no key is dropped (the structured result equals the text one).
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model, with_config
from typing_extensions import Annotated, NotRequired, TypedDict

from fleet.results import FanoutOutcome, PreflightStatus
from fleet.settings import Settings

_CLOSED = ConfigDict(json_schema_extra={"additionalProperties": False})
closed = with_config(_CLOSED)


class Result(BaseModel):
    """A tool's whole result: a closed object."""

    model_config = _CLOSED


# ---------------------------------------------------------------- inventory and settings

@closed
class OpenCodeInfo(TypedDict):
    """Where the host's OpenCode server listens (the password is never shown: only where it comes from)."""

    url: str
    username: str
    password_env: str | None
    password_file: str | None


@closed
class HostInfo(TypedDict):
    """One inventory host."""

    name: str
    user: str | None
    address: str
    port: int
    auth: str
    aliases: list[str]
    tags: list[str]
    identity_file: str | None
    opencode: OpenCodeInfo | None
    repos_root: str | None
    repos: dict[str, str]


class HostsResult(Result):
    """The inventory's selected hosts."""

    hosts: list[HostInfo]


def _settings_model() -> type[BaseModel]:
    """The settings as a closed object, made from :class:`fleet.settings.Settings` itself (a new
    setting is in the schema at once)."""
    kinds: dict[str, Any] = {}
    for f in fields(Settings):
        d = f.default
        kind: Any = list[str] if isinstance(d, tuple) else type(d)
        kinds[f.name] = (kind, ...)
    return create_model("SettingsInfo", __config__=_CLOSED, **kinds)


SettingsInfo = _settings_model()


class SettingsResult(Result):
    """The person's effective settings: what every call runs under."""

    settings: SettingsInfo  # type: ignore[valid-type]


# ---------------------------------------------------------------- preflight and fanout

@closed
class CheckInfo(TypedDict):
    """One preflight check on one host."""

    name: str
    ok: bool
    duration_ms: int
    detail: str


@closed
class PreflightInfo(TypedDict):
    """All preflight checks of one host; ``error_detail`` says what failed and what to do."""

    host: str
    user: str | None
    auth_mode: str
    status: PreflightStatus
    checks: list[CheckInfo]
    error_detail: str
    failed_check: str
    duration_ms: int
    opencode: Annotated[str, Field(description='The OpenCode server (deep): "", "ok <version>" or "DOWN: why"')]


class PreflightResultSet(Result):
    """Whether each selected host is usable."""

    results: list[PreflightInfo]
    ok: Annotated[bool, Field(description="Every host passed")]


@closed
class FanoutHostResult(TypedDict):
    """What happened on one host: exactly one outcome."""

    host: str
    outcome: FanoutOutcome
    command: str
    user: str | None
    exit_code: int | None
    attempts: int
    duration_ms: int
    error: str
    error_kind: str
    stdout: str
    stderr: str
    preflight: PreflightInfo | None
    collected: list[str]


@closed
class OutcomeCounts(TypedDict):
    """How many hosts ended in each outcome."""

    SUCCESS: int
    FAILURE: int
    TIMEOUT: int
    ABORTED: int
    PREFLIGHT_FAILED: int


class FanoutRunResult(Result):
    """A whole fanout: every host's outcome, exit code and output (successes included)."""

    run_id: str
    command: str
    mode: str
    interrupted: bool
    exit_code: Annotated[int, Field(description="0 all SUCCESS, 1 any other end, 130 interrupted")]
    duration_ms: int
    artifacts_dir: Annotated[str | None, Field(description="Absolute folder of this run's summary.json and "
                                                           "per-host output")]
    counts: OutcomeCounts
    notes: list[str]
    results: list[FanoutHostResult]


# ---------------------------------------------------------------- the agent plane

@closed
class CacheTokens(TypedDict, total=False):
    """Cache tokens read and written."""

    read: int
    write: int


@closed
class TokenUsage(TypedDict, total=False):
    """Tokens the turn used (empty when the server said nothing)."""

    input: int
    output: int
    reasoning: int
    cache: CacheTokens
    total: int


@closed
class FileChange(TypedDict):
    """One file the agent changed."""

    file: str
    additions: int
    deletions: int
    status: str


@closed
class TodoItem(TypedDict):
    """One entry of the session's todo list."""

    content: str
    status: str


@closed
class DispatchHostResult(TypedDict):
    """What the agent on one host did with the task."""

    host: str
    outcome: FanoutOutcome
    session_id: str
    url: str
    directory: str
    answer: Annotated[str, Field(description="The agent's final text")]
    tokens: TokenUsage
    cost: float
    duration_ms: int
    error: str
    error_kind: str
    created: bool
    waited: Annotated[bool, Field(description="False: handed over without waiting (no_wait); follow it with wait")]
    issue: str | None
    files: list[FileChange]
    todo: list[TodoItem]
    pending: Annotated[str, Field(description="The permission the agent waits on, when it ended waiting")]
    worktree: str
    branch: str


class DispatchRunResult(Result):
    """A dispatch (or a wait on one) over one or many hosts."""

    dispatch_id: str
    task: str
    repo: str
    mode: str
    interrupted: bool
    exit_code: Annotated[int, Field(description="0 all SUCCESS, 1 any other end, 130 interrupted")]
    duration_ms: int
    notes: list[str]
    results: list[DispatchHostResult]


@closed
class SessionInfo(TypedDict):
    """One session on one host."""

    host: str
    session_id: str
    title: str
    state: Annotated[str, Field(description="busy, idle, retry or needs-input")]
    age_s: int
    directory: str
    fleet: Annotated[bool, Field(description="Created by fleet")]
    waiting: str
    worktree: str
    branch: str
    machine: str
    dispatch_id: str
    repo: str
    tokens: int | None
    cost: float | None
    parent: NotRequired[Annotated[str, Field(description="The session whose subagent this is")]]


class SessionsResult(Result):
    """Every session on the selected hosts, and the hosts that could not be asked."""

    sessions: list[SessionInfo]
    errors: list[str]


@closed
class ServerStatus(TypedDict):
    """Health and version of one OpenCode server."""

    host: str
    url: str
    healthy: bool
    version: str
    ms: int
    error: str


class StatusResult(Result):
    """The selected hosts' OpenCode servers."""

    servers: list[ServerStatus]


class AbortResult(Result):
    """The sessions that are idle after the abort."""

    host: str
    aborted: list[str]
    notes: Annotated[list[str], Field(description="What was done beyond the abort (tool processes stopped)")]


class AnsweredResult(Result):
    """What was answered."""

    host: str
    answered: list[str]


@closed
class WorktreeLeft(TypedDict):
    """A git worktree of a deleted session, left in place (it may hold work)."""

    path: str
    branch: str
    repo: str
    name: str


@closed
class TeardownHost(TypedDict):
    """What teardown did on one host."""

    host: str
    aborted: list[str]
    deleted: list[str]
    worktrees: list[WorktreeLeft]
    notes: NotRequired[list[str]]
    error: NotRequired[str]
    not_run: NotRequired[bool]
    kept: NotRequired[list[str]]


class TeardownResult(Result):
    """Teardown on every planned host, in the plan's order."""

    teardown: list[TeardownHost]


# ---------------------------------------------------------------- audit

@with_config(ConfigDict(extra="allow"))
class AuditEvent(TypedDict, total=False):
    """One journal event (older journals may hold more keys)."""

    type: str
    id: str
    time: str
    epoch: float
    actor: str
    host: str
    operation: str
    outcome: str
    dispatch_id: str
    channel: str
    detail: dict[str, Any]


class AuditTailResult(Result):
    """The last journal events and how many wait for Slack."""

    events: list[AuditEvent]
    pending: int


__all__ = ["AbortResult", "AnsweredResult", "AuditTailResult", "DispatchRunResult", "FanoutRunResult",
           "HostsResult", "PreflightResultSet", "SessionsResult", "SettingsResult", "StatusResult",
           "TeardownResult"]

"""Value objects that flow through a run: selection -> preflight -> fanout -> render.

Renderers read these; they never decide anything.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any


class FanoutOutcome(str, Enum):
    """Exactly one terminal state per host."""

    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    TIMEOUT = "TIMEOUT"
    ABORTED = "ABORTED"
    PREFLIGHT_FAILED = "PREFLIGHT_FAILED"


class PreflightStatus(str, Enum):
    """Whether a host passed every preflight check."""

    OK = "OK"
    FAILED = "FAILED"


@dataclass(frozen=True)
class CheckResult:
    """One preflight check on one host."""

    name: str
    ok: bool
    duration_ms: int
    detail: str = ""


@dataclass(frozen=True)
class PreflightResult:
    """All preflight checks of one host. ``error_detail`` says what failed and what to do."""

    host: str
    user: str | None
    auth_mode: str
    status: PreflightStatus
    checks: tuple[CheckResult, ...] = ()
    error_detail: str = ""
    failed_check: str = ""
    duration_ms: int = 0
    address: str | None = None  # resolved IP, reused by the connection
    opencode: str = ""  # the host's OpenCode server: "", "ok <version>" or "DOWN: why" (preflight --deep)

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return self.status == PreflightStatus.OK

    def to_dict(self) -> dict[str, Any]:
        """Plain data with stable keys, for JSON."""
        d = asdict(self)
        d["status"] = self.status.value
        d.pop("address", None)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreflightResult:
        """The result back from :meth:`to_dict` (what the service sends a face)."""
        return cls(host=d["host"], user=d.get("user"), auth_mode=d.get("auth_mode", ""),
                   status=PreflightStatus(d["status"]),
                   checks=tuple(CheckResult(**c) for c in d.get("checks") or ()),
                   error_detail=d.get("error_detail", ""), failed_check=d.get("failed_check", ""),
                   duration_ms=d.get("duration_ms", 0), opencode=d.get("opencode", ""))


@dataclass(frozen=True)
class FanoutResult:
    """What happened on one host."""

    host: str
    outcome: FanoutOutcome
    command: str = ""
    user: str | None = None
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    attempts: int = 0
    duration_ms: int = 0
    error: str = ""
    error_kind: str = ""
    preflight: PreflightResult | None = None
    collected: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True on SUCCESS."""
        return self.outcome == FanoutOutcome.SUCCESS

    def to_dict(self) -> dict[str, Any]:
        """Plain data with stable keys, for JSON."""
        return {
            "host": self.host, "outcome": self.outcome.value, "command": self.command,
            "user": self.user, "exit_code": self.exit_code, "attempts": self.attempts,
            "duration_ms": self.duration_ms, "error": self.error, "error_kind": self.error_kind,
            "stdout": self.stdout, "stderr": self.stderr,
            "preflight": self.preflight.to_dict() if self.preflight else None,
            "collected": list(self.collected),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FanoutResult:
        """The result back from :meth:`to_dict` (what the service sends a face)."""
        return cls(host=d["host"], outcome=FanoutOutcome(d["outcome"]), command=d.get("command", ""),
                   user=d.get("user"), exit_code=d.get("exit_code"), stdout=d.get("stdout", ""),
                   stderr=d.get("stderr", ""), attempts=d.get("attempts", 0), duration_ms=d.get("duration_ms", 0),
                   error=d.get("error", ""), error_kind=d.get("error_kind", ""),
                   preflight=PreflightResult.from_dict(d["preflight"]) if d.get("preflight") else None,
                   collected=tuple(d.get("collected") or ()))


class RunSummary:
    """What every run over hosts (fanout, dispatch) says about itself, from ``results``."""

    results: list[Any]
    interrupted: bool

    @property
    def succeeded(self) -> list[Any]:
        """Results that ended SUCCESS."""
        return [r for r in self.results if r.ok]

    @property
    def failed(self) -> list[Any]:
        """Results that ended in any other state."""
        return [r for r in self.results if not r.ok]

    @property
    def exit_code(self) -> int:
        """0 all SUCCESS, 1 any other end, 130 if interrupted."""
        if self.interrupted:
            return 130
        return 0 if not self.failed else 1


@dataclass
class FanoutRun(RunSummary):
    """A whole run over many hosts. Keeps every result, successes included."""

    run_id: str
    command: str
    results: list[FanoutResult] = field(default_factory=list)
    interrupted: bool = False
    artifacts_dir: str | None = None
    mode: str = ""
    notes: list[str] = field(default_factory=list)
    duration_ms: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain data with stable keys, for JSON."""
        counts: dict[str, int] = {o.value: 0 for o in FanoutOutcome}
        for r in self.results:
            counts[r.outcome.value] += 1
        return {"run_id": self.run_id, "command": self.command, "mode": self.mode,
                "interrupted": self.interrupted, "exit_code": self.exit_code,
                "duration_ms": self.duration_ms, "artifacts_dir": self.artifacts_dir,
                "counts": counts, "notes": list(self.notes),
                "results": [r.to_dict() for r in self.results]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FanoutRun:
        """The run back from :meth:`to_dict` (what the service sends a face)."""
        return cls(run_id=d["run_id"], command=d.get("command", ""),
                   results=[FanoutResult.from_dict(r) for r in d.get("results") or ()],
                   interrupted=bool(d.get("interrupted")), artifacts_dir=d.get("artifacts_dir"),
                   mode=d.get("mode", ""), notes=list(d.get("notes") or ()), duration_ms=d.get("duration_ms", 0))


# ------------------------------------------------------------------ the agent plane's results

@dataclass(frozen=True)
class DispatchResult:
    """What happened on one host."""

    host: str
    outcome: FanoutOutcome
    session_id: str = ""
    url: str = ""
    directory: str = ""
    answer: str = ""
    tokens: dict[str, Any] = field(default_factory=dict)
    cost: float = 0.0
    duration_ms: int = 0
    error: str = ""
    error_kind: str = ""
    created: bool = False
    waited: bool = True
    issue: str | None = None
    files: tuple[dict[str, Any], ...] = ()   # what the agent changed: file, additions, deletions, status
    todo: tuple[dict[str, Any], ...] = ()
    pending: str = ""  # a permission request the agent waits on, when it ended waiting
    worktree: str = ""  # the git worktree the session works in (--worktree), and its branch
    branch: str = ""

    @property
    def ok(self) -> bool:
        """True on SUCCESS."""
        return self.outcome == FanoutOutcome.SUCCESS

    def to_dict(self) -> dict[str, Any]:
        """Plain data with stable keys."""
        return {"host": self.host, "outcome": self.outcome.value, "session_id": self.session_id, "url": self.url,
                "directory": self.directory, "answer": self.answer, "tokens": dict(self.tokens), "cost": self.cost,
                "duration_ms": self.duration_ms, "error": self.error, "error_kind": self.error_kind,
                "created": self.created, "waited": self.waited, "issue": self.issue,
                "files": [dict(f) for f in self.files], "todo": [dict(t) for t in self.todo], "pending": self.pending,
                "worktree": self.worktree, "branch": self.branch}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DispatchResult:
        """The result back from :meth:`to_dict` (what the service sends a face)."""
        return cls(host=d["host"], outcome=FanoutOutcome(d["outcome"]), session_id=d.get("session_id", ""),
                   url=d.get("url", ""), directory=d.get("directory", ""), answer=d.get("answer", ""),
                   tokens=dict(d.get("tokens") or {}), cost=d.get("cost", 0.0), duration_ms=d.get("duration_ms", 0),
                   error=d.get("error", ""), error_kind=d.get("error_kind", ""), created=bool(d.get("created")),
                   waited=bool(d.get("waited", True)), issue=d.get("issue"),
                   files=tuple(d.get("files") or ()), todo=tuple(d.get("todo") or ()), pending=d.get("pending", ""),
                   worktree=d.get("worktree", ""), branch=d.get("branch", ""))

@dataclass
class DispatchRun(RunSummary):
    """A dispatch over one or many hosts."""

    dispatch_id: str
    task: str
    repo: str
    mode: str = ""
    results: list[DispatchResult] = field(default_factory=list)
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)
    duration_ms: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain data with stable keys."""
        return {"dispatch_id": self.dispatch_id, "task": self.task, "repo": self.repo, "mode": self.mode,
                "interrupted": self.interrupted, "exit_code": self.exit_code, "duration_ms": self.duration_ms,
                "notes": list(self.notes), "results": [r.to_dict() for r in self.results]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DispatchRun:
        """The run back from :meth:`to_dict` (what the service sends a face)."""
        return cls(dispatch_id=d["dispatch_id"], task=d.get("task", ""), repo=d.get("repo", ""),
                   mode=d.get("mode", ""), results=[DispatchResult.from_dict(r) for r in d.get("results") or ()],
                   interrupted=bool(d.get("interrupted")), notes=list(d.get("notes") or ()),
                   duration_ms=d.get("duration_ms", 0))

@dataclass(frozen=True)
class SessionRow:
    """One session on one host, for ``inv sessions``."""

    host: str
    session_id: str
    title: str
    state: str
    age_s: int
    directory: str
    fleet: bool
    waiting: str = ""  # the permission it waits on (state needs-input)
    worktree: str = ""  # the git worktree fleet made for it (--worktree), and its branch
    branch: str = ""
    machine: str = ""  # the orchestrating machine that dispatched it (fleet's marks on the server)
    dispatch_id: str = ""
    repo: str = ""  # the repo fleet dispatched it for, else the directory's last part
    tokens: int | None = None  # the session's tokens and cost so far (its subagents' too), when the server keeps them
    cost: float | None = None
    parent: str = ""  # the session whose subagent this is (its task tool made it)

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return dict(self.__dict__)

@dataclass(frozen=True)
class Worktree:
    """A worktree fleet made on a host."""

    host: str
    repo: str
    name: str
    path: str
    branch: str
    dirty: bool = False
    ahead: str = ""
    age_s: int = 0
    session: str = ""
    state: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class TeardownResult:
    """One host's teardown: sessions aborted and deleted, the worktrees they leave (they may hold
    work: each is named with its removal command), or why it could not be done."""

    host: str
    aborted: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()
    worktrees: tuple[dict[str, str], ...] = ()
    error: str = ""
    not_run: bool = False  # the canary's teardown failed: this host was not touched
    kept: tuple[str, ...] = ()  # sessions that would not stop, so were not deleted
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when nothing went wrong on this host."""
        return not self.error

    def to_dict(self) -> dict[str, Any]:
        """Plain data with stable keys."""
        d: dict[str, Any] = {"host": self.host, "aborted": list(self.aborted), "deleted": list(self.deleted),
                             "worktrees": [dict(w) for w in self.worktrees]}
        for k in ("error", "not_run", "kept", "notes"):
            v = getattr(self, k)
            if v:
                d[k] = list(v) if isinstance(v, tuple) else v
        return d


@dataclass(frozen=True)
class WorktreeRemoval:
    """One host's part of ``worktrees.remove``: ``removed``, ``refused`` or ``not run``."""

    host: str
    outcome: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        """True when the worktree is gone (or was never there)."""
        return self.outcome == "removed"

    def to_dict(self) -> dict[str, Any]:
        """Plain data with stable keys."""
        return {"host": self.host, "outcome": self.outcome, "detail": self.detail}

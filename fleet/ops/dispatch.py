"""OpenCode dispatch: hand a task to the agent on one or many hosts and follow it to the end.

Order of work, so nothing is half-done: plan and gate (modes, tokens) -> Beads claim
(checked before any session exists) -> create or resume the session -> record it (local
record, Beads metadata, audit) -> send the prompt once -> wait for the run to end.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from fleet.agent.client import OpenCodeClient, OpenCodeError, ResponseTimeout, describe_request
from fleet.audit.records import SessionRecords, new_dispatch_id
from fleet.cli.render import files_summary
from fleet.errors import BadInput, FleetError
from fleet.inventory import Host
from fleet.results import FanoutOutcome, RunSummary
from fleet.safety.gate import Plan, guarded
from fleet.workers import run_bounded

# (host, kind, text): kind is session (its id), status (queued, busy: STEP, needs-input: WHAT...),
# usage (tokens and cost so far), answer (the final text) or end (the outcome, and the error if any)
EventHook = Callable[[str, str, str], None]


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


def repo_directory(host: Host, repo: str) -> str:
    """The absolute repo path on ``host`` that every OpenCode call is scoped to."""
    d = host.repo_path(repo)
    if d is None:
        raise BadInput(f"no path for repo '{repo}' on {host.name}: add repos: {{root: /abs/path}} (or "
                       f"repos: {{paths: {{{repo}: /abs/path}}}}) under it in the inventory")
    if not d.startswith("/"):
        raise BadInput(f"repo '{repo}' on {host.name} is '{d}': OpenCode needs an absolute directory; write "
                       f"the full path (e.g. /home/{host.user or 'user'}/repos) in the inventory")
    return d


class _Audit:
    """Adapter so dispatch works with or without an audit trail."""

    def __init__(self, trail: Any, dispatch_id: str) -> None:
        self.trail = trail
        self.dispatch_id = dispatch_id

    def __call__(self, operation: str, host: str, outcome: str, **detail: Any) -> None:
        if self.trail is not None:
            self.trail.record(operation=operation, host=host, outcome=outcome, dispatch_id=self.dispatch_id,
                              **detail)


def dispatch_host(host: Host, repo: str, task: str, *, session: str | None = None, wait: bool = True,
                  model: str | None = None, timeout: float = 1800.0, records: SessionRecords | None = None,
                  on_event: EventHook | None = None, audit: Any = None, beads: Any = None,
                  issue: str | None = None, dispatch_id: str | None = None,
                  stop: Callable[[], bool] | None = None, client_factory: Callable[..., OpenCodeClient] = OpenCodeClient,
                  poll: float = 0.5, on_permission: str = "ask", events: bool = True, worktree: bool = False,
                  base: str | None = None, inventory: Any = None, ssh_options: Any = None,
                  stall_timeout: float | None = None) -> DispatchResult:
    """Dispatch ``task`` to one host's agent. Never raises for the host's own failures.

    ``on_permission``: what to do when the agent asks for a permission: ``ask`` (report
    needs-input, journal it, and keep waiting for ``fleet approve``/``deny``), ``allow`` (answer
    once) or ``deny`` (reject it).
    """
    t0 = time.monotonic()
    did = dispatch_id or new_dispatch_id()
    au = _Audit(audit, did)
    url = host.opencode.url if host.opencode else ""
    ev = (lambda kind, text: on_event(host.name, kind, text)) if on_event else (lambda kind, text: None)
    directory = ""
    sid = session or ""
    created = False
    claimed = False
    wt: dict[str, str] = {}

    def result(outcome: FanoutOutcome, **kw: Any) -> DispatchResult:
        ev("end", outcome.value + (f": {kw['error']}" if kw.get("error") else ""))
        return DispatchResult(host=host.name, outcome=outcome, session_id=sid, url=url, directory=directory,
                              duration_ms=int((time.monotonic() - t0) * 1000), created=created, issue=issue,
                              waited=wait, worktree=wt.get("path", ""), branch=wt.get("branch", ""), **kw)

    try:
        directory = repo_directory(host, repo)
        au("dispatch_requested", host.name, "requested", repo=repo, task=task, issue=issue,
           worktree=worktree or None)
        if worktree:
            # the agent's own checkout, made before anything else: if it cannot be made, nothing
            # is claimed and no session exists
            from fleet.ops.worktrees import create_worktree, worktree_name
            wt = create_worktree(inventory, host, repo, directory, worktree_name(issue, did), base, ssh_options)
            directory = wt["path"]
            au("worktree_created", host.name, "ok", worktree=wt["path"], branch=wt["branch"], base=wt["base"])
        # everything that can fail before the session exists (password, client) comes before
        # the claim, so a claim never outlives a dispatch that could not start
        with client_factory(host, directory) as oc:
            if wait and hasattr(oc, "deadline"):
                oc.deadline = t0 + timeout + 5.0  # the whole dispatch, not only each read, is bounded
            _check_server(oc, host)
            _check_repo_dir(oc, host, directory)
            if issue and beads is not None:
                beads.claim(issue, host.name)
                claimed = True
            try:
                if session:
                    oc.get_session(session)
                else:
                    from fleet.audit.trail import actor
                    # fleet's marks on the server itself: any orchestrator can find, abort and
                    # tear down this session, and continue its Slack thread (local records are a cache)
                    s = oc.create_session(f"fleet {did}: {task[:60]}", {"fleet": {
                        "dispatch_id": did, "machine": actor(), "repo": repo, "issue": issue or "",
                        "worktree": wt.get("path", ""), "branch": wt.get("branch", ""), "directory": directory}})
                    sid = s["id"]
                    created = True
            except BaseException:
                if claimed and not created and not session:
                    beads.release(issue, host.name)
                raise
            ev("session", sid)
            if created and records is not None:
                records.add({"host": host.name, "url": url, "session_id": sid, "directory": directory,
                             "dispatch_id": did, "issue": issue, "created": time.time(),
                             "worktree": wt.get("path", ""), "branch": wt.get("branch", "")})
            if issue and beads is not None:
                beads.record_session(issue, host.name, sid, wt.get("path"))
            au("session_created" if created else "session_resumed", host.name, "ok", session_id=sid)
            before = len(oc.messages(sid))
            # follow the server's events first, then send: completion is seen as it happens
            waker = _subscribe(host, sid, directory, ev) if wait and events else None
            try:
                oc.prompt_async(sid, task, model)
            except BaseException:
                _unsubscribe(waker)
                raise
            au("task_sent", host.name, "ok", session_id=sid)
            if not wait:
                ev("status", "sent (not waiting)")
                return result(FanoutOutcome.SUCCESS)
            return _follow(oc, host, sid, before, result, au, ev, timeout=timeout, poll=poll, stop=stop,
                           on_permission=on_permission, waker=waker, stall_timeout=stall_timeout)
    except FleetError as exc:
        return _failed(exc, host, sid, au, result)


def redacted_hook(on_event: EventHook | None, red: Any) -> EventHook | None:
    """``on_event`` with every text redacted: an agent may echo a secret back, and the live
    lines (terminal, MCP progress) are output like any other."""
    if on_event is None or red is None:
        return on_event

    def shown(host: str, kind: str, text: str) -> None:
        on_event(host, kind, red.text(text))
    return shown


def _failed(exc: FleetError, host: Host, sid: str, au: Any, result: Callable[..., DispatchResult]) -> DispatchResult:
    """A host's own failure as its result (journaled): a server that stopped answering is
    TIMEOUT, any other server or fleet error FAILURE."""
    if isinstance(exc, ResponseTimeout):
        au("failed", host.name, "timeout", session_id=sid, error=str(exc))
        return result(FanoutOutcome.TIMEOUT, error=str(exc), error_kind=exc.kind)
    if isinstance(exc, OpenCodeError):
        au("failed", host.name, "failure", session_id=sid, error=str(exc))
        return result(FanoutOutcome.FAILURE, error=str(exc), error_kind=exc.kind)
    au("failed", host.name, "failure", session_id=sid, error=str(exc))
    return result(FanoutOutcome.FAILURE, error=f"{host.name}: {exc}", error_kind=type(exc).__name__)


def _subscribe(host: Host, sid: str, directory: str | None, ev: Callable[[str, str], None]) -> Any:
    """A :class:`~fleet.events.SessionWaker` on the server's event stream for ``sid`` (connected,
    or given 2 s to), or None when the server has no stream fleet can follow."""
    from fleet.agent.events import EventStream, SessionWaker, usage_text
    waker = SessionWaker(sid, on_step=lambda step: ev("status", f"busy: {step}"),
                         on_usage=lambda tok, cost: ev("usage", usage_text(tok, cost)))
    try:
        waker.stream = EventStream(host, waker, directory=directory, on_connect=waker.reconnected).start()
        waker.stream.connected.wait(2.0)
    except (ValueError, FleetError):
        return None
    return waker


def _unsubscribe(waker: Any) -> None:
    if waker is not None and getattr(waker, "stream", None) is not None:
        waker.stream.close()


def _follow(oc: Any, host: Host, sid: str, before: int, result: Callable[..., DispatchResult], au: Any,
            ev: Callable[[str, str], None], *, timeout: float, poll: float, stop: Callable[[], bool] | None,
            on_permission: str, waker: Any, stall_timeout: float | None) -> DispatchResult:
    """Wait for the turn that starts at message ``before`` to end (needs-input reported and
    answered by the policy, stuck said once), then review it: the result of a dispatch."""
    seen: set[str] = set()

    def on_input(req: dict[str, Any]) -> str | None:
        rid, what = str(req.get("id")), describe_request(req)
        if rid not in seen:
            seen.add(rid)
            au("needs_input", host.name, "waiting", session_id=sid, request=what, request_id=rid,
               policy=on_permission)
        reply = {"allow": "once", "deny": "reject"}.get(on_permission)
        if reply:
            au("permission_answered", host.name, reply, session_id=sid, request=what, by="policy")
        return reply
    try:
        stuck_said: list[bool] = []

        def on_status(state: str) -> None:
            ev("status", state)
            if state.startswith("stuck") and not stuck_said:
                stuck_said.append(True)
                au("stuck", host.name, "stuck", session_id=sid, state=state)
        ans = oc.wait_idle(sid, before, timeout, poll=poll, on_status=on_status, stop=stop,
                           on_input=on_input, waker=waker, stall=stall_timeout)
    finally:
        _unsubscribe(waker)
    if ans is None and oc.pending_input is not None:
        what = describe_request(oc.pending_input)
        au("failed", host.name, "timeout", session_id=sid, error=f"waiting for input: {what}")
        return result(FanoutOutcome.TIMEOUT, pending=what, error_kind="needs_input",
                      error=f"the agent is waiting for a permission ({what}) and nobody answered in "
                      f"{timeout:g}s: fleet approve --host {host.name} --session {sid} (or deny); "
                      f"or dispatch with --on-permission allow|deny")
    if ans is None:
        if stop is not None and stop():
            au("wait_stopped", host.name, "aborted", session_id=sid)
            return result(FanoutOutcome.ABORTED, error=f"stopped waiting (Ctrl-C); the agent may still "
                          f"run: fleet abort --host {host.name} --session {sid}", error_kind="aborted")
        au("failed", host.name, "timeout", session_id=sid)
        return result(FanoutOutcome.TIMEOUT, error=f"agent still busy after {timeout:g}s; it keeps "
                      f"running: follow with 'fleet wait --session {sid}', stop with "
                      f"'fleet abort --host {host.name} --session {sid}'", error_kind="timeout")
    ev("answer", ans.text)
    files, todo = _review(oc, sid, before)
    if ans.error and ans.error_name == "MessageAbortedError":
        au("failed", host.name, "aborted", session_id=sid, error=ans.error)
        return result(FanoutOutcome.ABORTED, answer=ans.text, tokens=ans.tokens, cost=ans.cost, files=files,
                      todo=todo, error=f"the session was aborted: {ans.error}", error_kind="aborted")
    if ans.error:
        au("failed", host.name, "failure", session_id=sid, error=ans.error)
        return result(FanoutOutcome.FAILURE, answer=ans.text, tokens=ans.tokens, cost=ans.cost, files=files,
                      todo=todo, error=f"agent error {ans.error_name}: {ans.error}", error_kind="agent_error")
    au("completed", host.name, "success", session_id=sid, answer=ans.text[:300],
       changed=files_summary(files), tokens=(ans.tokens or {}).get("total"), cost=ans.cost)
    return result(FanoutOutcome.SUCCESS, answer=ans.text, tokens=ans.tokens, cost=ans.cost, files=files,
                  todo=todo)


KNOWN_API_MAJOR = "1"  # the classic OpenCode HTTP API fleet speaks (contracts: 1.18 to 1.19)


def _check_server(oc: Any, host: Host) -> None:
    """Healthy, and an API fleet knows: refuse a server of another major version up front."""
    if not hasattr(oc, "health"):
        return
    h = oc.health()
    ver = str(h.get("version", ""))
    if not h.get("healthy", False):
        raise BadInput(f"{host.name}: the OpenCode server says it is not healthy ({h}); see its log")
    if ver and ver.split(".")[0] != KNOWN_API_MAJOR:
        raise BadInput(f"{host.name}: OpenCode {ver} speaks an API fleet does not know (fleet speaks "
                       f"{KNOWN_API_MAJOR}.x, tested with 1.18.33): pin the server to 1.x or update fleet")


def _check_repo_dir(oc: Any, host: Host, directory: str) -> None:
    """Refuse a repo directory that is not on the host (else the agent idles with no reply),
    naming the repos the host has."""
    if not hasattr(oc, "list_dir"):
        return
    try:
        oc.list_dir(directory)
        return
    except OpenCodeError:
        pass
    parent = directory.rstrip("/").rsplit("/", 1)[0] or "/"
    try:
        have = sorted(e.get("name", "") for e in oc.list_dir(parent) if e.get("type") == "directory"
                      and not str(e.get("name", "")).startswith("."))
        where = f"; {parent} there holds: {', '.join(have) or 'no repos'}"
    except OpenCodeError:
        where = f"; {parent} is not there either"
    raise BadInput(f"{host.name}: repo directory {directory} does not exist on the host{where}. "
                   f"Check --repo and the inventory's repos for {host.name}")


def _review(oc: Any, sid: str, before: int) -> tuple[tuple[dict[str, Any], ...], tuple[dict[str, Any], ...]]:
    """What this turn changed (files with +/-) and the session's todo list; empty if the server says nothing."""
    files: list[dict[str, Any]] = []
    todo: list[dict[str, Any]] = []
    try:
        msgs = oc.messages(sid)
        mid = (msgs[before].get("info") or {}).get("id") if len(msgs) > before else None
        files = [{"file": d.get("file", ""), "additions": int(d.get("additions") or 0),
                  "deletions": int(d.get("deletions") or 0), "status": d.get("status", "")}
                 for d in (oc.diff(sid, mid) if hasattr(oc, "diff") else [])]
        todo = [{"content": t.get("content", ""), "status": t.get("status", "")}
                for t in (oc.todo(sid) if hasattr(oc, "todo") else [])]
    except (OpenCodeError, ValueError, TypeError):
        pass
    return tuple(files), tuple(todo)


def _check_dispatch(plan: Plan) -> None:
    repo = plan.args["repo"]
    for h in plan.hosts:
        if h.opencode is None:
            raise BadInput(f"{h.name} has no OpenCode server in the inventory: add opencode: {{url: ...}} "
                           f"or leave it out of the selection")
        repo_directory(h, repo)
    if plan.call_options.get("worktree") and plan.args.get("session"):
        raise BadInput("--worktree makes a new checkout for a new session: drop --session (a resumed "
                       "session keeps its directory)")
    if len(plan.hosts) > 1 and plan.args.get("session"):
        raise BadInput("--session resumes one session on one host: use --host NAME with it")
    if len(plan.hosts) > 1 and plan.args.get("issue"):
        raise BadInput("--issue claims one Beads issue for one host; each host needs its own issue, so "
                       "dispatch one host at a time with --issue")


def _validate_dispatch(kw: dict[str, Any]) -> None:
    pol = kw.get("on_permission", "ask")
    if pol not in ("ask", "allow", "deny"):
        raise BadInput(f"--on-permission {pol}: write ask (report and wait for fleet approve/deny), "
                       f"allow (approve once) or deny")


@guarded("dispatch", local_ok=False, check=_check_dispatch, validate=_validate_dispatch)
def dispatch(plan: Plan, *, wait: bool = True, timeout: float = 1800.0, concurrency: int = 32,
             records: SessionRecords | None = None, on_event: EventHook | None = None, audit_trail: Any = None,
             beads: Any = None, dispatch_id: str | None = None, poll: float = 0.5,
             client_factory: Callable[..., OpenCodeClient] = OpenCodeClient, on_permission: str = "ask",
             events: bool = True, worktree: bool = False, base: str | None = None,
             ssh_options: Any = None, stall_timeout: float | None = None) -> DispatchRun:
    """Dispatch ``args['task']`` for ``args['repo']`` to the planned hosts (canary first)."""
    a = plan.args
    did = dispatch_id or new_dispatch_id()
    if records is None and plan.settings is not None:
        records = SessionRecords(plan.settings.sessions_path())
    run = DispatchRun(did, a["task"], a["repo"], plan.mode, notes=list(plan.notes))
    t0 = time.monotonic()
    stop = threading.Event()
    red = getattr(audit_trail, "redactor", None)
    on_event = redacted_hook(on_event, red)

    def one(h: Host, must_wait: bool) -> DispatchResult:
        return dispatch_host(h, a["repo"], a["task"], session=a.get("session"), wait=must_wait,
                             model=a.get("model"), timeout=timeout, records=records, on_event=on_event,
                             audit=audit_trail, beads=beads, issue=a.get("issue"), dispatch_id=did,
                             stop=stop.is_set, client_factory=client_factory, poll=poll,
                             on_permission=on_permission, events=events, worktree=worktree, base=base,
                             inventory=plan.inventory, ssh_options=ssh_options,
                             stall_timeout=stall_timeout if stall_timeout is not None else
                             getattr(plan.settings, "stall_timeout", None))

    hosts = list(plan.hosts)
    results: dict[str, DispatchResult] = {}
    try:
        if plan.canary is not None:
            c = plan.canary
            first = one(c, True)
            results[c.name] = first
            hosts = [h for h in hosts if h.name != c.name]
            if not first.ok:
                for h in hosts:
                    results[h.name] = DispatchResult(h.name, FanoutOutcome.ABORTED, url=h.opencode.url if h.opencode else "",
                                                     error=f"not sent: canary {c.name} ended {first.outcome.value}"
                                                     f"{': ' + first.error if first.error else ''}",
                                                     error_kind="canary_failed", waited=False)
                hosts = []
        if hosts:
            done, interrupted = run_bounded(
                hosts, lambda h: one(h, wait), concurrency, "fleet-dispatch", on_interrupt=stop.set,
                not_started=lambda h: DispatchResult(h.name, FanoutOutcome.ABORTED, error="not sent: interrupted",
                                                     error_kind="aborted", waited=False))
            results.update(done)
            if interrupted:
                run.interrupted = True
    except KeyboardInterrupt:
        stop.set()
        run.interrupted = True
    for h in plan.hosts:
        if h.name not in results:
            results[h.name] = DispatchResult(h.name, FanoutOutcome.ABORTED, error="interrupted", error_kind="aborted")
    if red is not None:
        # an agent may echo a secret back (its answer, an error body): every face prints these
        results = {k: replace(r, answer=red.text(r.answer), error=red.text(r.error)) for k, r in results.items()}
    run.results = [results[h.name] for h in plan.hosts]
    run.duration_ms = int((time.monotonic() - t0) * 1000)
    if plan.settings is not None:
        task = red.text(a["task"]) if red is not None else a["task"]
        save_last(plan.settings, run, {"task": task, "repo": a["repo"], "model": a.get("model"),
                                       "issue": a.get("issue"), "worktree": worktree, "base": base,
                                       "on_permission": on_permission, "timeout": timeout,
                                       "task_redacted": task != a["task"]})
    return run


# ------------------------------------------------------------------- the last dispatch, to retry
LAST = "last-dispatch.json"


def last_path(settings: Any) -> str:
    """Where the last dispatch's summary lives: beside the journal (0600: it holds the task, with
    the inventory's secrets redacted, as the journal does)."""
    import os
    return os.path.join(os.path.dirname(settings.path("journal")), LAST)


def save_last(settings: Any, run: DispatchRun, request: dict[str, Any]) -> None:
    """What ``dispatch --retry-failed`` needs: the request, and each host's end. Best effort."""
    import json
    import os
    p = last_path(settings)
    doc = {"dispatch_id": run.dispatch_id, "request": request,
           "results": [{"host": r.host, "outcome": r.outcome.value, "session_id": r.session_id,
                        "error_kind": r.error_kind} for r in run.results]}
    try:
        os.makedirs(os.path.dirname(p), exist_ok=True)
        tmp = f"{p}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, sort_keys=True)
        os.replace(tmp, p)
    except OSError:
        pass


def retry_targets(settings: Any) -> tuple[dict[str, Any], list[str], list[str]]:
    """(the last dispatch's request, hosts to send it to again, why others are not).

    Again: hosts that never got a session (unreachable, refused before sending, not sent after
    a failed canary or Ctrl-C), and those whose agent ended its turn with an error. Never a
    host whose agent may still be at work (TIMEOUT, a wait cut short) or was stopped by a person
    (ABORTED): two agents would work the same task; those are named with what to do instead.
    """
    import json
    p = last_path(settings)
    try:
        with open(p, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise BadInput(f"no last dispatch to retry: {p} does not exist (dispatch first)") from None
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot read the last dispatch's summary {p}: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list) or not isinstance(doc.get("request"), dict):
        raise BadInput(f"{p} is not a fleet dispatch summary: dispatch again with --repo and --task")
    if doc["request"].get("task_redacted"):
        raise BadInput(f"the last dispatch's task held a secret, which fleet never writes to disk, so it cannot "
                       f"be sent again from {p}: dispatch it again with --repo and --task")
    again, skipped = [], []
    for r in doc["results"]:
        if not isinstance(r, dict) or r.get("outcome") == "SUCCESS":
            continue
        sid = r.get("session_id") or ""
        if not sid or r.get("error_kind") == "agent_error":
            again.append(str(r.get("host")))
        else:
            why = ("was stopped, or fleet stopped waiting for it" if r.get("outcome") == "ABORTED"
                   else "may still be at work")
            skipped.append(f"{r.get('host')} ({r.get('outcome')}: its agent {why}; see fleet wait --session {sid})")
    return doc, again, skipped

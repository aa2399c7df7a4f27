"""OpenCode dispatch: hand a task to the agent on one or many hosts and follow it to the end.

Order of work, so nothing is half-done: plan and gate (modes, tokens; the repo a plain name) ->
the server and the repo directory checked -> Beads claim (before any worktree or session
exists: a refused claim leaves nothing behind) -> the worktree (its failure gives the claim
back) -> create or resume the session, with the dispatch's own permission rules -> record it
(local record, Beads metadata, audit) -> send the prompt once -> wait for the run to end (or
stop it past its token or cost budget).
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import replace
from typing import Any, Callable

from fleet.agent.asks import check_budget, check_policy, permission_rules
from fleet.agent.checks import check_repo_dir, check_server
from fleet.agent.client import OpenCodeClient
from fleet.agent.outcome import Audit, EventHook, failed, redacted_hook, turn_result
from fleet.agent.turn import subscribe, unsubscribe
from fleet.audit.records import SessionRecords, new_dispatch_id
from fleet.errors import BadInput, FleetError
from fleet.inventory import Host, Inventory
from fleet.results import DispatchResult, DispatchRun, FanoutOutcome
from fleet.safety import gate
from fleet.safety.gate import DISPATCH, Plan
from fleet.workers import run_bounded


def repo_directory(host: Host, repo: str) -> str:
    """The absolute repo path on ``host`` that every OpenCode call is scoped to."""
    from fleet.ops.blow_away import check_repo_name
    check_repo_name(repo)  # a name, never a path: '../../victim' must not reach any host
    d = host.repo_path(repo)
    if d is None:
        raise BadInput(f"no path for repo '{repo}' on {host.name}: add repos: {{root: /abs/path}} (or "
                       f"repos: {{paths: {{{repo}: /abs/path}}}}) under it in the inventory")
    if not d.startswith("/"):
        raise BadInput(f"repo '{repo}' on {host.name} is '{d}': OpenCode needs an absolute directory; write "
                       f"the full path (e.g. /home/{host.user or 'user'}/repos) in the inventory")
    return d


def dispatch_host(host: Host, repo: str, task: str, *, session: str | None = None, wait: bool = True,
                  model: str | None = None, timeout: float = 1800.0, records: SessionRecords | None = None,
                  on_event: EventHook | None = None, audit: Any = None, beads: Any = None,
                  issue: str | None = None, dispatch_id: str | None = None,
                  stop: Callable[[], bool] | None = None, client_factory: Callable[..., OpenCodeClient] = OpenCodeClient,
                  poll: float = 0.5, on_permission: str = "ask", events: bool = True, worktree: bool = False,
                  base: str | None = None, inventory: Any = None, ssh_options: Any = None,
                  stall_timeout: float | None = None, permission: list[dict[str, str]] | None = None,
                  max_tokens: int | None = None, max_cost: float | None = None) -> DispatchResult:
    """Dispatch ``task`` to one host's agent. Never raises for the host's own failures.

    ``on_permission``: what to do when the agent asks for a permission: ``ask`` (report
    needs-input, journal it, and keep waiting for ``fleet approve``/``deny``), ``allow`` (answer
    once) or ``deny`` (reject it). ``permission``: the new session's own ruleset (see
    :func:`permission_rules`). ``max_tokens`` / ``max_cost``: stop the agent past them.
    """
    t0 = time.monotonic()
    did = dispatch_id or new_dispatch_id()
    au = Audit(audit, did)
    url = host.opencode.url if host.opencode else ""
    ev = (lambda kind, text: on_event(host.name, kind, text)) if on_event else (lambda kind, text: None)
    directory = ""
    sid = session or ""
    created = False
    claimed = False
    wt: dict[str, str] = {}

    def result(outcome: FanoutOutcome, **kw: Any) -> DispatchResult:
        # handed over, not followed: the live line says sent, never SUCCESS before the work is done
        ev("end", "sent" if outcome == FanoutOutcome.SUCCESS and not wait else
           outcome.value + (f": {kw['error']}" if kw.get("error") else ""))
        return DispatchResult(host=host.name, outcome=outcome, session_id=sid, url=url, directory=directory,
                              duration_ms=int((time.monotonic() - t0) * 1000), created=created, issue=issue,
                              waited=wait, worktree=wt.get("path", ""), branch=wt.get("branch", ""), **kw)

    try:
        directory = repo_directory(host, repo)
        au("dispatch_requested", host.name, "requested", repo=repo, task=task, issue=issue,
           worktree=worktree or None)
        # everything that can fail before the session exists (password, client, server, repo)
        # comes before the claim, so a claim never outlives a dispatch that could not start; the
        # claim comes before the worktree, so a refused claim leaves no worktree or branch
        with client_factory(host, directory) as oc:
            if wait and hasattr(oc, "deadline"):
                oc.deadline = t0 + timeout + 5.0  # the whole dispatch, not only each read, is bounded
            check_server(oc, host)
            check_repo_dir(oc, host, directory)
            if issue and beads is not None:
                beads.claim(issue, host.name)
                claimed = True
            try:
                if worktree:
                    from fleet.ops.worktrees import create_worktree, worktree_name
                    wt = create_worktree(inventory, host, repo, directory, worktree_name(issue, did), base,
                                         ssh_options)
                    directory = oc.directory = wt["path"]
                    au("worktree_created", host.name, "ok", worktree=wt["path"], branch=wt["branch"], base=wt["base"])
                if session:
                    oc.get_session(session)
                else:
                    from fleet.audit.trail import actor
                    # fleet's marks on the server itself: any orchestrator can find, abort and
                    # tear down this session, and continue its Slack thread (local records are a cache)
                    s = oc.create_session(f"fleet {did}: {task[:60]}", {"fleet": {
                        "dispatch_id": did, "machine": actor(), "repo": repo, "issue": issue or "",
                        "worktree": wt.get("path", ""), "branch": wt.get("branch", ""), "directory": directory}},
                        permission=permission)
                    sid = s["id"]
                    created = True
                    if permission:
                        au("permission_rules", host.name, "set", session_id=sid, rules=permission)
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
            waker = subscribe(host, sid, directory, ev) if wait and events else None
            try:
                oc.prompt_async(sid, task, model)
            except BaseException:
                unsubscribe(waker)
                raise
            au("task_sent", host.name, "ok", session_id=sid)
            if not wait:
                ev("status", "sent (not waiting)")
                return result(FanoutOutcome.SUCCESS)
            return turn_result(oc, host, sid, before, result, au, ev, timeout=timeout, poll=poll, stop=stop,
                               on_permission=on_permission, waker=waker, stall_timeout=stall_timeout,
                               max_tokens=max_tokens, max_cost=max_cost)
    except FleetError as exc:
        return failed(exc, host, sid, au, result)


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


def dispatch(inv: Inventory, selector: str, *, args: dict[str, Any], mode: str | None = None,
             confirm: str | None = None, canary: str | None = None, no_canary: bool = False,
             settings: Any = None, store: Any = None, audit: Any = None, trail: Any = None,
             wait: bool = True, timeout: float = 1800.0, concurrency: int = 32,
             records: SessionRecords | None = None, on_event: EventHook | None = None, audit_trail: Any = None,
             beads: Any = None, dispatch_id: str | None = None, poll: float = 0.5,
             client_factory: Callable[..., OpenCodeClient] = OpenCodeClient, on_permission: str = "ask",
             events: bool = True, worktree: bool = False, base: str | None = None,
             ssh_options: Any = None, stall_timeout: float | None = None, allow: Any = (), deny: Any = (),
             ask: Any = (), max_tokens: int | None = None, max_cost: float | None = None,
             follower: Callable[[str], str | None] | None = None) -> DispatchRun:
    """Dispatch ``args['task']`` for ``args['repo']`` to the selected hosts through the gate
    (the canary's agent first; the rest only if it succeeded). ``allow`` / ``deny`` / ``ask``:
    permission patterns that become each new session's ruleset (:func:`permission_rules`);
    ``max_tokens`` / ``max_cost``: each agent is stopped past them (its subagents count).

    Not waiting (``wait=False``) in canary mode: the canary gets the task, the plan the rest wait
    for is journaled, and this returns at once (:mod:`fleet.ops.canary_rest`); ``follower(id)``
    says who follows the dispatch and sends the rest (e.g. the running service), or None: then a
    detached follower process is started for it."""
    check_policy(on_permission)  # bad flags fail before any plan, token or host
    rules = permission_rules(allow, deny, ask)
    max_tokens, max_cost = check_budget(max_tokens, max_cost, wait)
    if rules and args.get("session"):
        raise BadInput("--allow/--deny/--ask set a new session's rules: drop --session (a resumed session "
                       "keeps its own)")
    trail = trail if trail is not None else audit_trail
    limits = {"permission": rules or None, "max_tokens": max_tokens, "max_cost": max_cost}

    def check(plan: Plan) -> None:
        _check_dispatch(plan)
        if not wait and plan.canary is not None:
            from fleet.ops.canary_rest import unchanged_by_redaction
            if trail is None and audit is not None:
                raise BadInput("a --no-wait canary dispatch keeps the plan the rest wait for in the journal: "
                               "give it a trail (or neither a trail nor an audit callback)")
            from fleet.safety.redact import Redactor
            from fleet.safety.secrets import inventory_secrets
            red = getattr(trail, "redactor", None) if trail is not None else None
            unchanged_by_redaction(red or Redactor(inventory_secrets(inv)), plan.args, plan.call_options)
            plan.notes.append(f"--no-wait: {plan.canary.name} gets the task now; the rest when its agent "
                              f"succeeds (sent by whoever follows the dispatch)")
    with gate.enter(DISPATCH, inv, selector, args=args, mode=mode, confirm=confirm, canary=canary,
                    no_canary=no_canary, settings=settings, store=store, audit=audit, trail=trail,
                    call_options={"worktree": worktree, "base": base, "on_permission": on_permission,
                                  "wait": wait, **limits}, check=check) as g:
        run = _dispatch_plan(g.plan, wait=wait, timeout=timeout, concurrency=concurrency, records=records,
                             on_event=on_event, audit_trail=g.trail, beads=beads, dispatch_id=dispatch_id,
                             poll=poll, client_factory=client_factory, on_permission=on_permission,
                             events=events, worktree=worktree, base=base, ssh_options=ssh_options,
                             stall_timeout=stall_timeout, limits=limits, gated=g.gated, follower=follower)
        # a host that waits for the canary has not run yet: its gated run is journaled when it is sent
        g.ran([r for r in run.results if r.error_kind != "canary_waiting"], run.dispatch_id)
        return run


def _dispatch_plan(plan: Plan, *, wait: bool, timeout: float, concurrency: int, records: SessionRecords | None,
                   on_event: EventHook | None, audit_trail: Any, beads: Any, dispatch_id: str | None,
                   poll: float, client_factory: Callable[..., OpenCodeClient], on_permission: str,
                   events: bool, worktree: bool, base: str | None, ssh_options: Any,
                   stall_timeout: float | None, limits: dict[str, Any], gated: bool = False,
                   follower: Callable[[str], str | None] | None = None) -> DispatchRun:
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
                             getattr(plan.settings, "stall_timeout", None), **limits)

    results: dict[str, DispatchResult] = {}
    try:
        def rest(hs: list[Host]) -> dict[str, DispatchResult]:
            done, interrupted = run_bounded(
                hs, lambda h: one(h, wait), concurrency, "fleet-dispatch", on_interrupt=stop.set,
                not_started=lambda h: DispatchResult(h.name, FanoutOutcome.ABORTED, error="not sent: interrupted",
                                                     error_kind="aborted", waited=False))
            if interrupted:
                run.interrupted = True
            return done

        def not_sent(h: Host, first: DispatchResult) -> DispatchResult:
            return DispatchResult(h.name, FanoutOutcome.ABORTED, url=h.opencode.url if h.opencode else "",
                                  error=f"not sent: canary {first.host} ended {first.outcome.value}"
                                  f"{': ' + first.error if first.error else ''}",
                                  error_kind="canary_failed", waited=False)
        if not wait and plan.canary is not None:
            # not waiting: the canary gets the task, the rest wait for it in the journal
            results.update(_hold_rest(plan, did, one(plan.canary, False), not_sent, audit_trail, run, on_event,
                                      timeout=timeout, stall_timeout=stall_timeout, events=events, gated=gated,
                                      ssh_options=ssh_options if worktree else None, follower=follower))
        else:
            # the canary's agent must finish its turn (wait) before the rest get the task
            for r in gate.canary_first(plan, lambda h: one(h, plan.canary is not None and
                                                          h.name == plan.canary.name or wait),
                                       lambda r: r.ok, not_sent, rest):
                results[r.host] = r
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


def _hold_rest(plan: Plan, did: str, first: DispatchResult, not_sent: Callable[[Host, DispatchResult], DispatchResult],
               trail: Any, run: DispatchRun, on_event: EventHook | None, *, timeout: float, stall_timeout: float | None, events: bool,
               gated: bool, ssh_options: Any, follower: Callable[[str], str | None] | None) -> dict[str, DispatchResult]:
    """The canary sent (not waited for): journal the plan the rest wait for and make sure someone
    follows the dispatch to send it (the service, else a detached follower). The rows."""
    from fleet.ops import canary_rest as cr
    assert plan.canary is not None
    others = [h for h in plan.hosts if h.name != plan.canary.name]
    if not first.ok:
        return {first.host: first, **{h.name: not_sent(h, first) for h in others}}
    slack = getattr(trail, "poster", None) is not None
    cr.hold(plan, did, first, trail, timeout=timeout, events=events, gated=gated, ssh_options=ssh_options,
            slack=slack, stall_timeout=stall_timeout if stall_timeout is not None else
            getattr(plan.settings, "stall_timeout", None))
    who = follower(did) if follower is not None else None
    if who is None:
        try:
            who = cr.start_follower(plan.settings, os.path.abspath(str(plan.inventory.path)), did, slack)
        except OSError as exc:
            who = f"nobody ({exc}): run 'fleet wait --dispatch {did}' to send them"
    run.notes.append(f"{', '.join(h.name for h in others)}: waiting for the canary {first.host}; {who} sends "
                     f"the task when its agent succeeds")
    for h in others:
        if on_event is not None:
            on_event(h.name, "end", f"waiting for the canary {first.host}")
    return {first.host: first, **{h.name: cr.waiting_row(h, first.host) for h in others}}


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

"""A followed turn as one host's outcome: journaled, reviewed and classified.

A dispatch and a ``wait`` end the same way once the turn is followed: needs-input journaled
and answered by the ``--on-permission`` policy, stuck journaled once, then SUCCESS, FAILURE,
ABORTED or TIMEOUT with the answer, the files the turn changed, the todo list, and what to do
next when the agent is still at work. Keeping this beside :mod:`fleet.agent.turn` means the
two operations cannot drift apart; each builds its own result row through a ``result``
callback, so this plane does not depend on the operations that use it.
"""
from __future__ import annotations

from typing import Any, Callable, TypeVar

from fleet.agent.asks import POLICY_REPLY, describe_request
from fleet.agent.client import OpenCodeClient
from fleet.agent.events import SessionWaker
from fleet.agent.review import files_summary, review
from fleet.agent.turn import follow_turn, stop_turn, tree_usage, turn_start_ms, unsubscribe
from fleet.errors import FleetError, OpenCodeError, ResponseTimeout
from fleet.inventory import Host
from fleet.results import FanoutOutcome

R = TypeVar("R")

# (host, kind, text): kind is session (its id), status (queued, busy: STEP, needs-input: WHAT...),
# usage (tokens and cost so far), answer (the final text) or end (the outcome, and the error if any)
EventHook = Callable[[str, str, str], None]


class Audit:
    """The audit trail of one dispatch, or nothing: every step journals through it, so the
    operations need not check whether the caller keeps a trail."""

    def __init__(self, trail: Any, dispatch_id: str) -> None:
        self.trail = trail
        self.dispatch_id = dispatch_id

    def __call__(self, operation: str, host: str, outcome: str, **detail: Any) -> None:
        """Journal one step under this dispatch's id (a no-op without a trail)."""
        if self.trail is not None:
            self.trail.record(operation=operation, host=host, outcome=outcome, dispatch_id=self.dispatch_id,
                              **detail)


def redacted_hook(on_event: EventHook | None, red: Any) -> EventHook | None:
    """``on_event`` with every text redacted: an agent may echo a secret back, and the live
    lines (terminal, MCP progress) are output like any other."""
    if on_event is None or red is None:
        return on_event

    def shown(host: str, kind: str, text: str) -> None:
        on_event(host, kind, red.text(text))
    return shown


def failed(exc: FleetError, host: Host, sid: str, au: Any, result: Callable[..., R]) -> R:
    """A host's own failure as its result (journaled), so one host never sinks the run: a server
    that stopped answering is TIMEOUT, any other server or fleet error FAILURE."""
    if isinstance(exc, ResponseTimeout):
        au("failed", host.name, "timeout", session_id=sid, error=str(exc))
        return result(FanoutOutcome.TIMEOUT, error=str(exc), error_kind=exc.kind)
    if isinstance(exc, OpenCodeError):
        au("failed", host.name, "failure", session_id=sid, error=str(exc))
        return result(FanoutOutcome.FAILURE, error=str(exc), error_kind=exc.kind)
    au("failed", host.name, "failure", session_id=sid, error=str(exc))
    said = str(exc) if str(exc).startswith(f"{host.name}:") else f"{host.name}: {exc}"
    return result(FanoutOutcome.FAILURE, error=said, error_kind=type(exc).__name__)


def turn_result(oc: OpenCodeClient, host: Host, sid: str, before: int, result: Callable[..., R], au: Any,
                ev: Callable[[str, str], None], *, timeout: float, poll: float, stop: Callable[[], bool] | None,
                on_permission: str, waker: SessionWaker | None, stall_timeout: float | None,
                max_tokens: int | None = None, max_cost: float | None = None) -> R:
    """Follow the turn that starts at message ``before`` to its end (needs-input journaled and
    answered by the ``on_permission`` policy, stuck journaled once), close ``waker``'s stream,
    then review and classify it: the host's result. Failures of the server itself are raised
    (:func:`failed` turns them into a result). ``max_tokens`` / ``max_cost``: the turn's budget
    (its subagents' calls included); past it the agent is stopped (journaled) and the turn ends
    ABORTED saying which."""
    seen: set[str] = set()

    def budget(tokens: int, cost: float) -> str:
        if max_tokens is not None and tokens > max_tokens:
            return f"{tokens} tokens used, over --max-tokens {max_tokens}"
        if max_cost is not None and cost > max_cost:
            return f"${cost:.4f} spent, over --max-cost {max_cost:g}"
        return ""

    def on_input(req: dict[str, Any]) -> str | None:
        rid, what = str(req.get("id")), describe_request(req)
        if rid not in seen:
            seen.add(rid)
            au("needs_input", host.name, "waiting", session_id=sid, request=what, request_id=rid,
               policy=on_permission)
        reply = POLICY_REPLY.get(on_permission)
        if reply:
            au("permission_answered", host.name, reply, session_id=sid, request=what, by="policy")
        return reply
    stuck_said: list[bool] = []

    def on_status(state: str) -> None:
        ev("status", state)
        if state.startswith("stuck") and not stuck_said:
            stuck_said.append(True)
            au("stuck", host.name, "stuck", session_id=sid, state=state)
    try:
        end = follow_turn(oc, sid, before, timeout, poll=poll, on_status=on_status, stop=stop,
                          on_input=on_input, waker=waker, stall=stall_timeout,
                          budget=budget if max_tokens is not None or max_cost is not None else None)
    finally:
        unsubscribe(waker)
    if end.over:
        stopped = stop_turn(oc, sid)
        au("over_budget", host.name, "aborted" if stopped else "still_busy", session_id=sid, reason=end.over,
           max_tokens=max_tokens, max_cost=max_cost)
        ev("status", f"over budget: {end.over}")
        files, todo = review(oc, sid, before)
        msgs = oc.messages(sid)
        tokens, cost = tree_usage(oc, sid, [m for m in msgs[before:] if m["info"].get("role") == "assistant"],
                                  turn_start_ms(msgs, before))
        return result(FanoutOutcome.ABORTED, files=files, todo=todo, error_kind="over_budget", tokens=tokens, cost=cost,
                      error=f"stopped the agent: {end.over}" + ("" if stopped else
                                                                  f"; it is still busy: fleet abort --host "
                                                                  f"{host.name} --session {sid}"))
    ans = end.answer
    if ans is None and end.pending is not None:
        what = describe_request(end.pending)
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
    files, todo = review(oc, sid, before)
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


__all__ = ["Audit", "EventHook", "failed", "redacted_hook", "turn_result"]

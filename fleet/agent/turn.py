"""Following one agent turn to its end: the one place that knows when a turn is over.

A turn begins when a task is sent (``prompt_async`` returns at once) and ends when the session
is idle again with a finished assistant message after the task. Between the two the agent may
be busy on a tool step, retrying the model, waiting on a person (needs-input), or silent for
too long (stuck). :func:`follow_turn` re-reads the session's state over REST whenever the
server's event stream says something about it (see :mod:`fleet.agent.events`; polling while the
stream is down), reports each state change, lets a callback answer needs-input, and returns a
:class:`TurnEnd`. Dispatch and ``wait`` both follow turns through it.

A turn is a tree of sessions: the session's own, and its subagents' (the ``task`` tool runs each
in a child session). A request of any of them is the turn's needs-input; a ``session.error`` of
any of them ends the turn at once with the server's words (a bad model fails before any reply:
the event is the only place that says so); the turn's tokens and cost are the whole tree's.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from fleet.agent.asks import describe_request, is_question
from fleet.agent.client import OpenCodeClient
from fleet.agent.events import EventStream, SessionWaker
from fleet.agent.tree import where
from fleet.agent.usage import add_usage, message_bill, turn_usage, usage_text
from fleet.errors import FleetError, ServerError
from fleet.inventory import Host

SAFETY_WAKE = 15.0  # with the event stream up: re-read a waiting session's state at least this often
LOST_GRACE = 5.0  # a turn that started, then sat idle this long with no finished reply, was lost
ABORTED = "MessageAbortedError"

# (kind, text) for one host's live lines: status (queued, busy: STEP, needs-input: WHAT...), usage, ...
StatusHook = Callable[[str, str], None]


@dataclass
class Answer:
    """The end of an agent run: its final text, usage and error (what a dispatch reports)."""

    text: str = ""
    error: str = ""
    error_name: str = ""
    tokens: dict[str, Any] = field(default_factory=dict)
    cost: float = 0.0
    message_id: str = ""
    completed: bool = False


def extract_answer(message: dict[str, Any]) -> Answer:
    """From one ``{info, parts}`` assistant message: text parts joined, error, tokens, cost.
    Synthetic and ignored parts are OpenCode's own, not the agent's words, and are left out."""
    info = message.get("info") or {}
    parts = message.get("parts") or []
    text = "".join(str(p.get("text", "")) for p in parts
                   if isinstance(p, dict) and p.get("type") == "text" and not p.get("synthetic") and not p.get("ignored"))
    err = info.get("error") or {}
    emsg = ""
    if isinstance(err, dict) and err:
        data = err.get("data") or {}
        emsg = str((data.get("message") if isinstance(data, dict) else "") or err.get("name", "error"))
    tokens, cost = message_bill(dict(info, role="assistant")) or ({}, 0.0)
    times = info.get("time")
    return Answer(text=text, error=emsg, error_name=(str(err.get("name", "")) if isinstance(err, dict) else ""),
                  tokens=tokens, cost=cost, message_id=str(info.get("id", "")),
                  completed=bool(isinstance(times, dict) and times.get("completed")) or bool(err))


@dataclass(frozen=True)
class TurnEnd:
    """How following a turn ended. ``answer`` is the finished turn, or None when the wait ran out
    or was stopped first; then ``pending`` is the request the agent was waiting on at that moment
    (if any), because "nobody answered" calls for a different remedy than "still working"."""

    answer: Answer | None = None
    pending: dict[str, Any] | None = None
    over: str = ""  # the budget the turn went past (its tokens or cost), when that ended the wait


def subscribe(host: Host, sid: str, directory: str | None, ev: StatusHook) -> SessionWaker | None:
    """A :class:`~fleet.agent.events.SessionWaker` on the server's event stream for ``sid``
    (connected, or given 2 s to), whose steps and usage go to ``ev``; None when the server has no
    stream fleet can follow. Subscribe before sending the task, so its end cannot be missed."""
    waker = SessionWaker(sid, on_step=lambda step: ev("status", f"busy: {step}"),
                         on_usage=lambda tok, cost: ev("usage", usage_text(tok, cost)))
    try:
        waker.stream = EventStream(host, waker, directory=directory, on_connect=waker.reconnected).start()
        waker.stream.connected.wait(2.0)
    except (ValueError, FleetError):
        return None
    return waker


def unsubscribe(waker: SessionWaker | None) -> None:
    """Close the waker's event stream (a no-op for None): each stream holds a connection."""
    if waker is not None and waker.stream is not None:
        waker.stream.close()


def _state(oc: OpenCodeClient, sid: str, waker: SessionWaker | None, stall: float | None,
           states: dict[str, Any]) -> tuple[str, float]:
    """The session's state as shown (idle, busy: STEP, retry (...), stuck (...)) and how long the
    stream has said nothing about it."""
    st = states.get(sid) or {"type": "idle"}
    state = st.get("type", "idle") if isinstance(st.get("type", "idle"), str) else "busy"
    if state == "retry":
        state = f"retry (attempt {st.get('attempt')}: {str(st.get('message', ''))[:200]})"
    if state != "idle" and waker is not None and waker.step:
        state = f"busy: {waker.step}" if state == "busy" else state
    quiet = time.monotonic() - waker.last_event if waker is not None else 0.0
    stream = waker.stream if waker is not None else None
    if stall and state.startswith("busy") and quiet > stall and stream is not None and stream.connected.is_set():
        # busy, the stream is up, and the server has said nothing about it for a while
        state = f"stuck (no event for {quiet:.0f}s{'; ' + waker.step if waker and waker.step else ''})"
    return state, quiet


def turn_start_ms(msgs: list[dict[str, Any]], after: int) -> float:
    """When the turn's task was stored (epoch ms), to tell this turn's subagents from older ones."""
    if len(msgs) > after:
        created = ((msgs[after].get("info") or {}).get("time") or {}).get("created")
        if isinstance(created, (int, float)) and not isinstance(created, bool):
            return float(created)
    return 0.0


def tree_usage(oc: OpenCodeClient, sid: str, newer: list[dict[str, Any]], since_ms: float) -> tuple[dict[str, Any], float]:
    """Tokens and cost of the turn: every assistant message of the session after the task, and
    of every subagent session made since the task was sent (each bills its own model calls)."""
    tokens, cost = turn_usage(newer)
    try:
        kids = oc.tree(sid)
    except FleetError:
        return tokens, cost  # best effort: the session's own figures stand
    for c in kids:
        created = (c.get("time") or {}).get("created")
        if isinstance(created, (int, float)) and created + 1000 < since_ms:
            continue  # a subagent of an earlier turn
        try:
            t, c_cost = turn_usage(oc.messages(c["id"]))
        except FleetError:
            continue
        add_usage(tokens, t)
        cost += c_cost
    return tokens, cost


def _error_end(oc: OpenCodeClient, sid: str, after: int, err: tuple[str, str, str]) -> TurnEnd:
    """The turn ended by the server's ``session.error`` (of the session or a subagent): its words,
    with what the turn did and billed until then."""
    who, name, message = err
    try:
        msgs = oc.messages(sid)
    except FleetError:
        msgs = []
    newer = [m for m in msgs[after:] if (m.get("info") or {}).get("role") == "assistant"]
    text = extract_answer(newer[-1]).text if newer else ""
    tokens, cost = tree_usage(oc, sid, newer, turn_start_ms(msgs, after)) if msgs else ({}, 0.0)
    if who != sid:
        message = f"in subagent {who}: {message}"
    return TurnEnd(Answer(text=text, error=message, error_name=name, tokens=tokens, cost=cost, completed=True,
                          message_id=str((newer[-1].get("info") or {}).get("id", "")) if newer else ""))


def _tree_error(waker: SessionWaker | None, sid: str) -> tuple[str, str, str] | None:
    """The error that ends the turn: the session's own, or a subagent's (a subagent's abort is
    the session's abort going down the tree, not an error of its own)."""
    if waker is None:
        return None
    for who, name, message in list(waker.errors):
        if who == sid or name != ABORTED:
            return who, name, message
    return None


def follow_turn(oc: OpenCodeClient, sid: str, after: int, timeout: float, *, poll: float = 0.5,
                on_status: Callable[[str], None] | None = None, stop: Callable[[], bool] | None = None,
                start_grace: float = 60.0, on_input: Callable[[dict[str, Any]], str | None] | None = None,
                waker: SessionWaker | None = None, stall: float | None = None,
                budget: Callable[[int, float], str] | None = None) -> TurnEnd:
    """Wait until the run that started after message index ``after`` ends, or ``timeout`` runs out,
    or ``stop()`` says so.

    The status map drops idle sessions, and a run may not be marked busy yet right after
    ``prompt_async`` returns, so the end is: not busy AND a finished assistant message beyond
    ``after`` (a session idle for ``start_grace`` seconds without one never started: ServerError;
    one that started, then sat idle for LOST_GRACE seconds with none, lost its run: ServerError),
    or a ``session.error`` of the session or of a subagent (the turn's answer carries the error).
    With a ``waker`` (see :func:`subscribe`), the state is re-read when an event about the tree
    arrives, not on a timer; while the stream is down it falls back to polling every ``poll`` s.
    ``on_status`` hears each new state; ``on_input(request)`` may answer a pending permission of
    any session of the tree (return ``once``/``always``/``reject``, or None to leave it to a
    person); a question is only reported. ``stall``: a busy session the stream has been silent
    about this long is ``stuck``. ``budget(tokens, cost)``: a non-empty reason ends the wait
    (``TurnEnd.over``), so the caller can stop the agent.
    """
    deadline = time.monotonic() + timeout
    last_state = ""
    idle_since = time.monotonic()
    started = False
    answered: set[str] = set()
    pending: dict[str, Any] | None = None
    tree: set[str] = {sid}
    tree_read = 0.0
    since_ms = 0.0
    while True:
        err = _tree_error(waker, sid)
        if err is not None:
            if on_status and last_state != "idle":
                on_status("idle")
            return _error_end(oc, sid, after, err)
        now = time.monotonic()
        if waker is None or waker.resync or now - tree_read > SAFETY_WAKE:
            if waker is not None:
                waker.resync = False
            tree = {sid} | {c["id"] for c in oc.tree(sid)}
            tree_read = now
            if waker is not None:
                waker.add(tree)
        if waker is not None:
            tree = set(waker.tree)
        states = oc.status()
        state, quiet = _state(oc, sid, waker, stall, states)
        if state != "idle":
            started = True
            idle_since = time.monotonic()
            # a pending request of any busy session of the tree is "needs-input": say so at once,
            # let the policy answer it (a request of an idle session is stale: its run is gone)
            live = {t for t in tree if (states.get(t) or {}).get("type", "idle") != "idle"} | {sid}
            pend = [p for p in oc.permissions(sessions=live) if p.get("id") not in answered]
            if not pend:
                pend = oc.questions(sessions=live)  # a question waits for a person whatever the policy
            pending = pend[0] if pend else None
            if pending is not None:
                state = "needs-input: " + describe_request(pending) + where(pending, sid)
                if on_input is not None and not is_question(pending):
                    reply = on_input(pending)
                    if reply:
                        oc.reply_permission(str(pending["id"]), reply)
                        answered.add(str(pending["id"]))
        if state == "idle":
            msgs = oc.messages(sid)
            since_ms = since_ms or turn_start_ms(msgs, after)
            newer = [m for m in msgs[after:] if (m.get("info") or {}).get("role") == "assistant"]
            if newer:
                ans = extract_answer(newer[-1])
                if ans.completed:
                    ans.tokens, ans.cost = tree_usage(oc, sid, newer, since_ms)  # every model call of the turn
                    if on_status and last_state and last_state != "idle":
                        on_status("idle")
                    return TurnEnd(ans)
            if not started and time.monotonic() - idle_since > start_grace:
                raise ServerError(oc.host.name, f"{oc.base}/session/{sid}",
                                  f"the server accepted the task but never started it (session idle "
                                  f"for {start_grace:g}s with no reply); check the server's log")
            if started and time.monotonic() - idle_since > LOST_GRACE:
                raise ServerError(oc.host.name, f"{oc.base}/session/{sid}",
                                  f"the agent's run ended without a reply (idle for {LOST_GRACE:g}s with no "
                                  f"answer): the server lost it (was it restarted?) or reported a failure "
                                  f"only on its event stream; check the server's log")
        if budget is not None and state != "idle":  # a turn that ended is reported, whatever it cost
            tok, cost = _usage_so_far(oc, sid, after, waker, since_ms)
            over = budget(tok, cost)
            if over:
                return TurnEnd(None, pending, over)
        shown = state if started or state != "idle" else "queued"
        if on_status and shown != last_state:
            on_status(shown)
        last_state = shown
        if time.monotonic() >= deadline or (stop is not None and stop()):
            return TurnEnd(None, pending)
        stream = waker.stream if waker is not None else None
        if waker is not None and stream is not None and stream.connected.is_set():
            # an event wakes it; else a safety re-read every SAFETY_WAKE s (the stream is up and
            # a reconnect wakes it too), or when a quiet busy session crosses the stall bound
            nap = min(SAFETY_WAKE, deadline - time.monotonic())
            if stall and state.startswith("busy"):
                nap = min(nap, stall - quiet + 0.05)
            waker.wake.wait(max(0.05, nap))
            waker.wake.clear()
        else:
            time.sleep(poll)


PENDING_GRACE = 3.0  # seconds a task sent a moment ago is given to start, so that it can be stopped


def stop_turn(oc: OpenCodeClient, sid: str, settle: float = 5.0) -> bool:
    """Abort ``sid``'s whole tree (its subagents first, deepest first, then the session: a
    subagent left running would go on working, and one stopped alone hands its parent an error
    to carry on from), until every session of it is idle with no task left to start; False if
    still busy after ``settle`` s. ``oc`` must be scoped to the session's directory (status is
    per directory).

    A task sent a moment ago (``prompt_async`` returns before the run starts) is not stopped by
    an abort that comes first: the run starts after it. So the abort is repeated while the tree
    is busy, and an idle session whose last message is a task with no reply yet is watched for
    PENDING_GRACE s and stopped when it starts."""
    t0 = time.monotonic()
    end = t0 + settle

    def abort_tree() -> list[str]:
        ids = [c["id"] for c in reversed(oc.tree(sid))] + [sid]  # breadth first, reversed: deepest first
        for x in ids:
            oc.abort(x)
        return ids
    ids = abort_tree()
    aborted_at = time.monotonic()
    while True:
        states = oc.status()
        busy = any((states.get(x) or {}).get("type", "idle") != "idle" for x in ids)
        now = time.monotonic()
        if not busy:
            msgs = oc.messages(sid)
            waiting = bool(msgs) and (msgs[-1].get("info") or {}).get("role") == "user"
            if not waiting or now - t0 > PENDING_GRACE:
                return True
        elif now - aborted_at > 1.0:
            ids = abort_tree()  # the run started after the last abort, a subagent since, or it ignored it
            aborted_at = now
        if now >= end:
            return not busy
        time.sleep(0.1)


def _usage_so_far(oc: OpenCodeClient, sid: str, after: int, waker: SessionWaker | None,
                  since_ms: float) -> tuple[int, float]:
    """(tokens, cost) of the turn so far: from the events (every model call of the tree, as it is
    billed), else read over REST."""
    if waker is not None and waker.stream is not None and waker.stream.connected.is_set():
        return waker.usage.totals()
    msgs = oc.messages(sid)
    newer = [m for m in msgs[after:] if (m.get("info") or {}).get("role") == "assistant"]
    tokens, cost = tree_usage(oc, sid, newer, since_ms or turn_start_ms(msgs, after))
    return int(tokens.get("total") or 0), cost


__all__ = ["ABORTED", "LOST_GRACE", "PENDING_GRACE", "SAFETY_WAKE", "Answer", "StatusHook", "TurnEnd", "extract_answer",
           "follow_turn", "stop_turn", "subscribe", "tree_usage", "turn_start_ms",
           "unsubscribe"]

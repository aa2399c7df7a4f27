"""A session and its subagents: the tree a turn is, as every face shows it.

The agent's ``task`` tool runs each subagent in a child session (``parentID``); a subagent asks
for permissions, answers questions and bills model calls like the session that started it. So
what a subagent waits on is what its ancestors wait on, and their tokens and cost include it:
:func:`rollup` says so for a listing, :func:`tree_requests` for one session (what ``approve``,
``deny`` and ``answer`` reply to). A request counts only while its session is at work: the
server keeps the request of a stopped or deleted session (OpenCode answers nobody for it).
"""
from __future__ import annotations

from typing import Any

from fleet.agent.asks import describe_request
from fleet.agent.usage import session_usage


def where(req: dict[str, Any], sid: str) -> str:
    """`` (subagent ses_...)`` for a request of a descendant session of ``sid``, else nothing."""
    other = req.get("sessionID")
    return f" (subagent {other})" if isinstance(other, str) and other != sid else ""


def ancestry(parent: dict[str, str], sid: str) -> list[str]:
    """``sid`` and its ancestors, nearest first (a loop in bad data ends it)."""
    out, seen = [sid], {sid}
    while parent.get(out[-1]) and parent[out[-1]] not in seen:
        out.append(parent[out[-1]])
        seen.add(out[-1])
    return out


def busy(states: dict[str, Any], sid: str) -> bool:
    """True while ``sid`` is at work (busy or retry): absent from the status map is idle."""
    st = states.get(sid)
    return isinstance(st, dict) and st.get("type", "idle") != "idle"


def rollup(sessions: list[dict[str, Any]], states: dict[str, Any],
           pending: list[dict[str, Any]]) -> tuple[dict[str, str], dict[str, tuple[int, float]]]:
    """(what each session waits on, its tokens and cost) with every descendant's counted on its
    ancestors: a subagent's request shows on the session a dispatch follows, naming the subagent."""
    parent = {s["id"]: str(s.get("parentID") or "") for s in sessions}
    waiting: dict[str, str] = {}
    for p in pending:
        sid = str(p.get("sessionID"))
        if busy(states, sid):
            for up in ancestry(parent, sid):
                waiting.setdefault(up, describe_request(p) + where(p, up))
    usage: dict[str, tuple[int, float]] = {}
    for s in sessions:
        su = session_usage(s)
        if su is not None:
            for up in ancestry(parent, s["id"]):
                tok, cost = usage.get(up, (0, 0.0))
                usage[up] = (tok + su[0], cost + su[1])
    return waiting, usage


def tree_requests(oc: Any, sid: str, questions: bool = False) -> list[dict[str, Any]]:
    """Pending permission requests (or ``questions``) of ``sid`` and of its subagents at work,
    its own first. ``oc`` is scoped to the session's directory."""
    kids = {c["id"] for c in oc.tree(sid)}
    states = oc.status() if kids else {}
    live = {k for k in kids if busy(states, k)} | {sid}
    got = oc.questions(sessions=live) if questions else oc.permissions(sessions=live)
    return sorted(got, key=lambda p: p.get("sessionID") != sid)


__all__ = ["ancestry", "busy", "rollup", "tree_requests", "where"]

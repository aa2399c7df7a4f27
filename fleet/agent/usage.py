"""Tokens and cost of agent work, read from what OpenCode bills.

OpenCode bills each model call on its own assistant message (a turn with tool calls is several
messages), may keep a running total on the session (1.18 does), and re-sends a message in
``message.updated`` events as it grows. Every place that shows or sums usage (a dispatch's
result, the live line, ``watch``'s board, ``sessions``) reads it here, so they agree on what a
total is and none trusts a cost that is not a number.
"""
from __future__ import annotations

from typing import Any


def _int(v: Any) -> int:
    """A count the server sent, or 0 for anything that is not a number (a server that sends
    ``"12"``, ``true`` or ``{}`` is not to be trusted with a total)."""
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) < 1e15 else 0


def _cost(v: Any) -> float:
    """A cost the server sent, or 0.0 for anything that is not a finite number."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) < 1e12 else 0.0


def add_usage(total: dict[str, Any], tokens: Any) -> dict[str, Any]:
    """``total`` plus one message's ``tokens`` (input, output, reasoning, cache read/write, total),
    in place: sums are built message by message from figures any of which may be missing."""
    if not isinstance(tokens, dict):
        return total
    for k in ("input", "output", "reasoning"):
        total[k] = _int(total.get(k)) + _int(tokens.get(k))
    got = tokens.get("cache")
    cache: dict[str, Any] = got if isinstance(got, dict) else {}
    tc = total.setdefault("cache", {"read": 0, "write": 0})
    for k in ("read", "write"):
        tc[k] = _int(tc.get(k)) + _int(cache.get(k))
    # older servers send no total: it is the sum OpenCode itself would show
    own = tokens.get("total")
    total["total"] = _int(total.get("total")) + (_int(own) if own is not None else (
        sum(_int(tokens.get(k)) for k in ("input", "output", "reasoning")) + _int(cache.get("read"))
        + _int(cache.get("write"))))
    return total


def session_usage(session: dict[str, Any]) -> tuple[int, float] | None:
    """(total tokens, cost) a server keeps on the session itself (``tokens``, ``cost``: 1.18 has
    them, updated after each model call), or None when it keeps none and the messages must be summed."""
    tok = session.get("tokens") if isinstance(session, dict) else None
    if not isinstance(tok, dict):
        return None
    return int(add_usage({}, tok).get("total") or 0), _cost(session.get("cost"))


def message_bill(info: Any) -> tuple[dict[str, Any], float] | None:
    """(tokens, cost) OpenCode billed on one assistant message's info (each model call is one),
    or None for any other message; a cost that is not a number counts as 0."""
    if not isinstance(info, dict) or info.get("role") != "assistant":
        return None
    tok = info.get("tokens")
    return (dict(tok) if isinstance(tok, dict) else {}), _cost(info.get("cost"))


def turn_usage(messages: list[dict[str, Any]]) -> tuple[dict[str, Any], float]:
    """Tokens and cost of every assistant message in ``messages`` ({info, parts} or bare infos):
    a turn with tool calls is one assistant message per model call, each billed on its own, so
    the last message alone would undercount."""
    tokens: dict[str, Any] = {}
    cost = 0.0
    for m in messages:
        bill = message_bill(m.get("info", m) if isinstance(m, dict) else None)
        if bill is not None:
            add_usage(tokens, bill[0])
            cost += bill[1]
    return tokens, cost


def message_usage(ev: dict[str, Any]) -> tuple[str, dict[str, Any], float] | None:
    """``(message id, tokens, cost)`` from a ``message.updated`` event of an assistant message:
    OpenCode bills each model call (step) on its message as the step finishes, so live usage
    comes from events, without reading the messages."""
    if ev.get("type") != "message.updated":
        return None
    props = ev.get("properties")
    info = props.get("info") if isinstance(props, dict) else None
    bill = message_bill(info)
    if bill is None or not isinstance(info, dict) or not isinstance(info.get("id"), str):
        return None
    return str(info["id"]), bill[0], bill[1]


class Usage:
    """Tokens and cost so far, message by message: a message is re-sent as it grows, so its
    latest figures replace the earlier ones instead of adding to them."""

    def __init__(self) -> None:
        self.by_message: dict[str, tuple[dict[str, Any], float]] = {}

    def update(self, mid: str, tokens: dict[str, Any], cost: float) -> bool:
        """Record one message's latest figures; True if the totals changed (worth saying again)."""
        old = self.by_message.get(mid)
        self.by_message[mid] = (tokens, cost)
        return old != (tokens, cost)

    def totals(self) -> tuple[int, float]:
        """(total tokens, cost) over every message seen."""
        t: dict[str, Any] = {}
        for tok, _ in self.by_message.values():
            add_usage(t, tok)
        return int(t.get("total") or 0), sum(c for _, c in self.by_message.values())


def usage_text(tokens: int, cost: float) -> str:
    """``1.2k tok $0.0123``: short enough for a live status line."""
    tk = f"{tokens / 1000:.1f}k" if tokens >= 1000 else str(tokens)
    return f"{tk} tok ${cost:.4f}"


__all__ = ["Usage", "add_usage", "message_bill", "message_usage", "session_usage", "turn_usage", "usage_text"]

"""What an agent waits on a person for: permission requests and questions.

An agent that asks stops working until someone answers, so every face of fleet (a dispatch's
live line and result, ``sessions``, ``watch``, ``approve``, the journal) names the request the
same way, and a dispatch answers permissions by one policy. A question (the agent's question
tool) is never answered by the policy: only a person knows what to say.
"""
from __future__ import annotations

from typing import Any

from fleet.errors import BadInput

# --on-permission: what a dispatch replies to a permission request (None: report it and wait
# for ``fleet approve`` / ``deny``)
POLICY_REPLY: dict[str, str | None] = {"ask": None, "allow": "once", "deny": "reject"}


def describe_request(req: dict[str, Any]) -> str:
    """A pending request for a person: ``bash: echo ask-me``, or ``question: deploy now? (yes/no)``."""
    if isinstance(req.get("questions"), list):
        qs = [q for q in req["questions"] if isinstance(q, dict)]
        return "question: " + "; ".join(
            f"{q.get('question', '')}" + (f" ({'/'.join(str(o.get('label')) for o in q.get('options') or [])})"
                                          if q.get("options") else "") for q in qs)
    pats = req.get("patterns") or []
    what = ", ".join(str(p) for p in pats) if isinstance(pats, list) else str(pats)
    return f"{req.get('permission', 'permission')}: {what}".strip().rstrip(":")


def is_question(req: dict[str, Any]) -> bool:
    """True for a question (it has ``questions``), which no policy may answer."""
    return "questions" in req


def check_policy(policy: str) -> None:
    """Refuse an unknown ``--on-permission`` before anything is sent or followed: a typo must not
    silently become ``ask`` and leave an agent waiting."""
    if policy not in POLICY_REPLY:
        raise BadInput(f"--on-permission {policy}: write ask (report and wait for fleet approve/deny), "
                       f"allow (approve once) or deny")


__all__ = ["POLICY_REPLY", "check_policy", "describe_request", "is_question"]

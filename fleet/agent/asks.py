"""What an agent waits on a person for: permission requests and questions.

An agent that asks stops working until someone answers, so every face of fleet (a dispatch's
live line and result, ``sessions``, ``watch``, ``approve``, the journal) names the request the
same way, and a dispatch answers permissions by one policy. A question (the agent's question
tool) is never answered by the policy: only a person knows what to say.
"""
from __future__ import annotations

import re
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


_PERMISSION = re.compile(r"[a-z_*][a-z0-9_*-]*")


def permission_rules(allow: Any = (), deny: Any = (), ask: Any = ()) -> list[dict[str, str]]:
    """A dispatch's ``--allow/--deny/--ask PERMISSION[:PATTERN]`` as the session's OpenCode
    ruleset (``[{permission, pattern, action}]``, given at ``POST /session``): ``bash:git *``
    is the bash commands matching ``git *``, a bare ``edit`` every edit. OpenCode applies the
    last rule that matches, after the configured ones: so these win over the server's config,
    and among them a deny wins over an allow or ask of the same request (asks first, denies last).
    Each flag takes one rule, or a comma list of bare permissions (``edit,webfetch``); a
    malformed one is :class:`BadInput`."""
    rules: list[dict[str, str]] = []
    for action, given in (("ask", ask), ("allow", allow), ("deny", deny)):
        items = [given] if isinstance(given, str) else list(given or ())
        for item in items:
            for one in (str(item).split(",") if ":" not in str(item) else [str(item)]):
                perm, sep, pattern = one.strip().partition(":")
                perm, pattern = perm.strip(), pattern.strip() if sep else "*"
                if not _PERMISSION.fullmatch(perm) or not pattern:
                    raise BadInput(f"--{action} {one.strip()!r}: write PERMISSION or PERMISSION:PATTERN, e.g. "
                                   f"--{action} 'bash:git *' or --{action} edit")
                rules.append({"permission": perm, "pattern": pattern, "action": action})
    return rules


def check_budget(max_tokens: Any, max_cost: Any, wait: bool) -> tuple[int | None, float | None]:
    """``--max-tokens N`` / ``--max-cost USD`` checked: positive numbers, and only for a dispatch
    that follows its agent (nobody is there to stop a ``--no-wait`` one)."""
    tok = cost = None
    try:
        tok = None if max_tokens in (None, "") else int(max_tokens)
        cost = None if max_cost in (None, "") else float(max_cost)
    except (TypeError, ValueError):
        raise BadInput(f"--max-tokens {max_tokens} / --max-cost {max_cost}: write numbers, e.g. --max-tokens "
                       f"200000 --max-cost 2.50") from None
    if (tok is not None and tok <= 0) or (cost is not None and not cost > 0):
        raise BadInput("--max-tokens and --max-cost must be more than 0")
    if (tok is not None or cost is not None) and not wait:
        raise BadInput("--max-tokens / --max-cost stop the agent when it goes past them, which needs fleet to "
                       "follow it: drop --no-wait")
    return tok, cost


__all__ = ["POLICY_REPLY", "check_budget", "check_policy", "describe_request", "is_question", "permission_rules"]

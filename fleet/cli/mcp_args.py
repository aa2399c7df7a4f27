"""``fleet mcp``'s arguments: each tool parameter's type, description, enum and bounds (what
the input schemas show a client), and fleet's rule for argument errors: one line naming the
argument, what it got and what to write; an unknown argument is an error, with the argument
fleet calls it when a model reached for another name ("hosts" for "selector")."""
from __future__ import annotations

import json
from typing import Any, Literal

from mcp.server.fastmcp.exceptions import ToolError
from mcp.server.fastmcp.tools.base import Tool
from pydantic import Field, ValidationError
from typing_extensions import Annotated

from fleet.names import did_you_mean
from fleet.safety.gate import shown

# ------------------------------------------------------------------------ the parameters
# (the tools' annotations name these; FastMCP makes the input schemas from them)

_SEL = ('Which hosts: a host name or alias ("lab01"), "@group", "tag:NAME", "all", a comma list of these, '
        'and "!x" to leave one out (e.g. "@gpu,!gpu3")')
Selector = Annotated[str, Field(description=_SEL + ". Required: fleet never picks the hosts for you.",
                                min_length=1)]
ReadSelector = Annotated[str, Field(description=_SEL + '. Default "all" (this tool only reads).', min_length=1)]
DispatchSelector = Annotated[str | None, Field(description=_SEL + ". Default: the inventory's default_host "
                                                                  "(an error when it has none).", min_length=1)]
Command = Annotated[str, Field(description='The shell command to run on each host, taken whole (e.g. "uptime", '
                                           '"make test")', min_length=1)]
Mode = Annotated[Literal["off", "canary", "enforced"] | None, Field(
    description="Only the person's configured mode (see the settings tool) is accepted: another one is refused, "
                "nothing is run. Leave it out.")]
Canary = Annotated[str | None, Field(description="The host to run first in canary mode (default: the inventory's "
                                                 "canary, else the first host)", min_length=1)]
NoCanary = Annotated[bool, Field(description="Skip the canary: refused over MCP (the person's canary always runs "
                                             "first). Leave it out.")]
CommandTimeout = Annotated[float | None, Field(description="Seconds the command may run on each host before it is "
                                                           "killed (default: the command_timeout setting; 0: no "
                                                           "limit)", ge=0)]
Deep = Annotated[bool | None, Field(description="Also log in for real and check each host's OpenCode server "
                                                "(slower; default: the preflight_deep setting)")]
Repo = Annotated[str, Field(description="The repo to work in, as the inventory names it (its path on each host "
                                        "comes from repos: in the inventory)", min_length=1)]
Task = Annotated[str, Field(description="What the agent is asked to do, as a prompt", min_length=1)]
NoWait = Annotated[bool, Field(description="Hand the task over and return at once (waited: false); follow it "
                                           "later with the wait tool and the dispatch_id")]
Worktree = Annotated[bool, Field(description="Work in a new git worktree of the repo (a branch of its own) "
                                             "instead of the checkout itself")]
Issue = Annotated[str | None, Field(description="A Beads issue id to claim for this task (refused if someone "
                                                "else holds it)", min_length=1)]
OnPermission = Annotated[Literal["ask", "allow", "deny"], Field(
    description="When the agent asks for a permission: ask (report needs-input and keep waiting for approve or "
                "deny), allow (approve once) or deny (reject it)")]
AgentTimeout = Annotated[float | None, Field(description="Seconds to wait for the agent to end its turn (default: "
                                                         "the dispatch_timeout setting)", gt=0)]
Session = Annotated[str, Field(description='An agent session id ("ses_...", from dispatch or sessions)',
                               min_length=1)]
WaitSession = Annotated[str | None, Field(description='One agent session to follow ("ses_..."); give this or '
                                                      'dispatch_id', min_length=1)]
DispatchId = Annotated[str | None, Field(description="Follow every session of this dispatch (its dispatch_id); "
                                                     "give this or session", min_length=1)]
Host = Annotated[str | None, Field(description="The session's host (default: the one fleet's records or the "
                                               "servers know)", min_length=1)]
Reason = Annotated[str, Field(description="Why, for the journal")]
Always = Annotated[bool, Field(description="Approve this kind of request for the rest of the session, not once")]
DenyMessage = Annotated[str | None, Field(description="What to tell the agent with the rejection")]
AnswerText = Annotated[str, Field(description="An option's label, or free text", min_length=1)]
Lines = Annotated[int, Field(description="How many of the last events", ge=1, le=1000)]


# ------------------------------------------------------------------------ argument errors

# the names a model reaches for, and the argument fleet calls it
SYNONYMS = {"hosts": "selector", "host": "selector", "targets": "selector", "target": "selector",
            "select": "selector", "machines": "selector", "cmd": "command", "script": "command",
            "session_id": "session", "sid": "session", "prompt": "task", "message": "text",
            "repository": "repo", "wait": "no_wait", "count": "lines", "n": "lines"}


def _what_to_write(schema: dict[str, Any]) -> str:
    """What a parameter's schema asks for, in words."""
    alts = [s for s in schema.get("anyOf", []) if s.get("type") != "null"]
    s = alts[0] if len(alts) == 1 else schema
    nullable = len(alts) < len(schema.get("anyOf", []))
    if "enum" in s:
        what = "write one of " + ", ".join(str(v) for v in s["enum"])
    else:
        t = s.get("type")
        what = {"string": "write text", "integer": "write a whole number", "number": "write a number",
                "boolean": "write true or false", "array": "write a list", "object": "write an object"}.get(
            str(t), "write a value")
        if "exclusiveMinimum" in s:
            what += f" greater than {s['exclusiveMinimum']:g}"
        elif "minimum" in s:
            what += f" of at least {s['minimum']:g}"
        if "maximum" in s:
            what += f", at most {s['maximum']:g}"
    if nullable:
        what += ", or leave it out"
    return what


def _about(schema: dict[str, Any]) -> str:
    d = str(schema.get("description") or "").split(". ")[0].rstrip(".")
    return f" ({d[:1].lower()}{d[1:]})" if d else ""


def _got(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return shown(text if len(text) <= 60 else text[:57] + "...")


def check_arguments(tool: Tool, arguments: dict[str, Any]) -> None:
    """Unknown and missing arguments, as one line naming the argument and what to write."""
    props: dict[str, Any] = tool.parameters.get("properties", {})
    takes = ", ".join(props) or "no arguments"
    for key in arguments:
        if key in props:
            continue
        syn = SYNONYMS.get(key)
        hint = f"; write {syn} instead" if syn in props else (
            "; " + did_you_mean(key, props) if did_you_mean(key, props) else "")
        raise ToolError(f"{tool.name}: unknown argument '{shown(key)}'{hint}; {tool.name} takes: {takes}. "
                        f"Nothing was done")
    for key in tool.parameters.get("required", []):
        if key not in arguments:
            schema = props.get(key, {})
            raise ToolError(f"{tool.name}: argument '{key}' is required: {_what_to_write(schema)}"
                            f"{_about(schema)}. Nothing was done")


def argument_error(tool: Tool, exc: ValidationError) -> str:
    """pydantic's errors as one line per fleet's rule: the argument, what it got, what to write."""
    props: dict[str, Any] = tool.parameters.get("properties", {})
    parts = []
    for err in exc.errors():
        loc = err.get("loc") or ("?",)
        name = str(loc[0])
        schema = props.get(name, {})
        if err.get("type") == "missing":
            parts.append(f"argument '{name}' is required: {_what_to_write(schema)}{_about(schema)}")
        else:
            parts.append(f"argument {name}={_got(err.get('input'))}: {_what_to_write(schema)}{_about(schema)}")
    return f"{tool.name}: " + "; ".join(dict.fromkeys(parts)) + ". Nothing was done"


__all__ = ["AgentTimeout", "Always", "AnswerText", "Canary", "Command", "CommandTimeout", "Deep", "DenyMessage",
           "DispatchId", "DispatchSelector", "Host", "Issue", "Lines", "Mode", "NoCanary", "NoWait",
           "OnPermission", "ReadSelector", "Reason", "Repo", "SYNONYMS", "Selector", "Session", "Task",
           "WaitSession", "Worktree", "argument_error", "check_arguments"]

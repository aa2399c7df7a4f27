"""The processes an agent's tools leave running after an abort, found and stopped on the host.

OpenCode's abort answers ``true`` and its bash tool kills the command's process group, yet a
command that left that group (``setsid``, a daemonizing server, a Playwright browser: OpenCode
#40829, #29894) keeps running on the host with nobody to stop it. So an abort notes the
commands of the tool steps that were running (:func:`running_commands`), and afterwards looks
on the host, over SSH with fanout's engine (the host's route from the inventory: ssh_config,
host keys, jump hosts; one attempt), for a process that is still one of them, and stops its
process group (TERM, then KILL after 2 s) (:func:`stop_leftovers`).

"One of them" is strict, so nothing else on the host is touched: the process carries OpenCode's
mark in its environment (``OPENCODE=1``, which the bash tool sets), works in the session's
directory, and its command line holds a tool command (``bash -c CMD``) or is part of one with
its arguments (``sleep 300`` of ``setsid -w sleep 300``; a bare ``sh`` is part of too much). Never the OpenCode
server's own group, never group 0 or 1. Paths and commands reach the host as positional
parameters, never as shell text. Linux hosts (``/proc``); on others it says it could not look.
"""
from __future__ import annotations

import shlex
from dataclasses import replace
from typing import Any

from fleet.errors import OpenCodeError
from fleet.inventory import Host, Inventory
from fleet.results import FanoutOutcome

# $1 the session's directory, $2... the tool commands. One line per process found: "found PID PGID ARGS",
# then per group "stopped PGID TERM|KILL" or "survived PGID".
_FIND_AND_STOP = r'''
[ -d /proc/self ] || { echo "noproc"; exit 0; }
dir=$(cd -- "$1" 2>/dev/null && pwd -P) || { echo "nodir"; exit 0; }; shift
me=$$; mypg=$(awk '{sub(/.*\) /, ""); print $3}' /proc/$me/stat)
groups=""
for p in /proc/[0-9]*; do
  pid=${p#/proc/}
  [ "$pid" = "$me" ] && continue
  cwd=$(readlink "$p/cwd" 2>/dev/null) || continue
  [ "$cwd" = "$dir" ] || continue
  tr '\0' '\n' < "$p/environ" 2>/dev/null | grep -qx 'OPENCODE=1' || continue
  args=$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null); args=${args% }
  [ -n "$args" ] || continue
  hit=""
  for c in "$@"; do
    case "$args" in *"$c"*) hit=1 ;; esac
    case "$args" in *" "*) case "$c" in *"$args"*) hit=1 ;; esac ;; esac
  done
  [ -n "$hit" ] || continue
  pg=$(awk '{sub(/.*\) /, ""); print $3}' "$p/stat" 2>/dev/null)
  srv=$(tr '\0' '\n' < "$p/environ" 2>/dev/null | sed -n 's/^OPENCODE_PID=//p' | head -n 1)
  srvpg=""
  [ -n "$srv" ] && srvpg=$(awk '{sub(/.*\) /, ""); print $3}' "/proc/$srv/stat" 2>/dev/null)
  [ -n "$pg" ] && [ "$pg" -gt 1 ] && [ "$pg" != "$mypg" ] && [ "$pg" != "$srvpg" ] && [ "$pg" != "$srv" ] || continue
  printf 'found %s %s %s\n' "$pid" "$pg" "$args"
  case " $groups " in *" $pg "*) ;; *) groups="$groups $pg" ;; esac
done
for pg in $groups; do kill -s TERM -- "-$pg" 2>/dev/null; done
i=0
while [ $i -lt 20 ]; do
  left=""; for pg in $groups; do kill -s 0 -- "-$pg" 2>/dev/null && left="$left $pg"; done
  [ -n "$left" ] || break
  sleep 0.1; i=$((i + 1))
done
for pg in $groups; do
  if kill -s 0 -- "-$pg" 2>/dev/null; then
    kill -s KILL -- "-$pg" 2>/dev/null; sleep 0.2
    if kill -s 0 -- "-$pg" 2>/dev/null; then echo "survived $pg"; else echo "stopped $pg KILL"; fi
  else echo "stopped $pg TERM"; fi
done
'''


class StillBusy(OpenCodeError):
    """A session that stays busy after abort (OpenCode #16721): a host that did not succeed (exit 1)."""

    kind = "still_busy"


class Stopped(list[str]):
    """The ids stopped (a list, as before), with ``notes``: what was done beyond the abort
    (tool processes that outlived it, stopped on the host)."""

    notes: list[str]


def stop_session(oc: Any, host: Host, sid: str, directory: str, settle: float, inventory: Inventory | None = None,
                 ssh_options: Any = None) -> tuple[bool, list[str]]:
    """Stop ``sid``'s tree (subagents first) until idle; then, given the ``inventory`` (the
    host's SSH route), stop what its running tool steps left on the host. (stopped, notes)."""
    from fleet.agent.turn import stop_turn

    oc.directory = directory or None
    ids = [c["id"] for c in oc.tree(sid)] + [sid]
    commands = running_commands(oc, ids) if inventory is not None else []
    ok = stop_turn(oc, sid, settle)
    if ok:
        # the stopped runs' requests linger on the server: turn them down, so no face shows them
        for p in oc.permissions(sessions=set(ids)):
            try:
                oc.reply_permission(str(p["id"]), "reject")
            except OpenCodeError:
                pass
    notes = stop_leftovers(inventory, host, directory, commands, ssh_options) if inventory and commands else []
    return ok, notes


def running_commands(oc: Any, sids: list[str]) -> list[str]:
    """The commands of the bash tool steps still running (or about to) in ``sids``: what may
    outlive an abort. Read from each session's last messages (a step is a ``tool`` part)."""
    out: list[str] = []
    for sid in sids:
        for m in oc.messages(sid)[-3:]:
            for p in m.get("parts") or []:
                got = p.get("state")
                state: dict[str, Any] = got if isinstance(got, dict) else {}
                given = state.get("input")
                cmd = given.get("command") if isinstance(given, dict) else None
                if (p.get("type") == "tool" and p.get("tool") == "bash" and state.get("status") in ("pending", "running")
                        and isinstance(cmd, str) and cmd.strip() and cmd not in out):
                    out.append(cmd)
    return out


def stop_leftovers(inv: Inventory, host: Host, directory: str, commands: list[str],
                   options: Any = None) -> list[str]:
    """Over SSH on ``host``: stop what is left of ``commands`` (processes of OpenCode's tools in
    ``directory``). Returns what was found and done, one note per process group, for the report
    and the journal; empty when nothing was left. Never raises for the host's own trouble (the
    abort itself is done): a host that cannot be reached is a note saying so."""
    if not commands or not directory:
        return []
    from fleet.ssh.options import FanoutOptions
    from fleet.ssh.runner import FanoutRunner

    base = options if isinstance(options, FanoutOptions) else FanoutOptions()
    opts = replace(base, artifacts_dir=None, attempts=1, collect=(), command_timeout=30.0)
    cmd = "sh -c " + shlex.quote(_FIND_AND_STOP) + " sh " + " ".join(shlex.quote(x) for x in (directory, *commands))
    runner = FanoutRunner(inv, "check tool processes", opts)
    try:
        r = runner.run_host(host, cmd)
    finally:
        runner.finish()
    if r.outcome != FanoutOutcome.SUCCESS:
        return [f"could not check for tool processes left running on {host.name} over SSH: "
                f"{(r.error or r.stderr or 'failed').strip().splitlines()[-1][:200]}"]
    found: dict[str, list[str]] = {}
    notes: list[str] = []
    for line in r.stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word == "noproc":
            return [f"cannot check for tool processes left running on {host.name}: it has no /proc"]
        if word == "found":
            pid, pg, args = (rest.split(" ", 2) + ["", ""])[:3]
            found.setdefault(pg, []).append(f"{pid} ({args[:80]})")
        elif word == "stopped":
            pg, _, how = rest.partition(" ")
            notes.append(f"tool process {', '.join(found.get(pg, [pg]))} outlived the abort: stopped its "
                         f"process group {pg} on {host.name} (SIG{how})")
        elif word == "survived":
            notes.append(f"tool process {', '.join(found.get(rest, [rest]))} outlived the abort and SIGKILL "
                         f"of its process group {rest} on {host.name}: stop it by hand")
    return notes


__all__ = ["StillBusy", "Stopped", "running_commands", "stop_leftovers", "stop_session"]

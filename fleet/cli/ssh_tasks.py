"""Tasks of the SSH plane: preflight, fanout (and retry), blow-away, worktrees."""
from __future__ import annotations

import sys
from typing import Any

from invoke import Exit

from fleet.cli.common import HOSTS_HELP, app, emit, fleet_task, prog, rows_out, selector


@fleet_task(help={"hosts": HOSTS_HELP + " Default: all.", "all": "Same as --hosts all.",
                  "inventory": "Inventory file.", "json": "Print one JSON document.",
                  "timeout": "Seconds per check (default: the 'preflight_timeout' setting, 5).",
                  "concurrency": "Hosts checked at once (default: the 'concurrency' setting).",
                  "deep": "Also log in (run 'true' over SSH, as fanout would) and check each OpenCode "
                          "server's health (default: the 'preflight_deep' setting)."})
def preflight(c, hosts=None, all_=False, inventory=None, json_=False, timeout=None, concurrency=None, deep=False):
    """Check every selected host is usable: mapping, DNS, TCP to SSH, auth (--deep: login, OpenCode)."""
    from fleet.cli.render import preflight_table

    results = app(c, inventory).preflight(selector(hosts, all_), deep=bool(deep) or None, timeout=timeout,
                                          concurrency=concurrency)
    if json_:
        emit({"results": [r.to_dict() for r in results], "ok": all(r.ok for r in results)})
    else:
        print(preflight_table(results))
    if not all(r.ok for r in results):
        raise Exit(code=1)


FANOUT_HELP = {
    "command": "The shell command to run on each host (positional; everything after the flags).",
    "hosts": HOSTS_HELP, "all": "Run on every host (same as --hosts all).",
    "inventory": "Inventory file.", "json": "Print one JSON document with every field.",
    "mode": "off | canary | enforced (default: the 'mode' setting).",
    "canary": "Host that runs first in canary mode (default: the inventory's canary).",
    "batch": "Rolling batches: N hosts or N% of hosts at a time.",
    "max_fail": "With --batch: stop when more than PCT% of hosts so far failed.",
    "confirm": "Confirmation token printed by a refused gated run.",
    "concurrency": "Hosts at once (default: the 'concurrency' setting, 32).",
    "connect_timeout": "Seconds to connect and finish the SSH handshake (default 10).",
    "timeout": "Seconds the command may run (default: 'command_timeout', 3600; 0 = none).",
    "attempts": "Attempts per host (default 2). Never repeats auth or host-key failures.",
    "retry_delay": "Seconds between attempts (default 2).",
    "retry_on_exit": "Also retry a command that ran and exited non-zero.",
    "no_preflight": "Skip the preflight checks.",
    "accept_new_host_key": "Accept (and record) an unknown host key for this host; repeatable.",
    "accept_new_host_keys": "Accept unknown host keys for every host of this run.",
    "stream": "Print output lines live, prefixed 'host | ' (then the table).",
    "gather": "Print identical outputs once, under their folded host list (the default).",
    "quiet": "Print only the table.",
    "diff": "Show the outputs as unified diffs against the most common one (clush --diff).",
    "no_canary": "Canary mode without a canary: one call, every host at once.",
    "log": "Also write the key=value log lines to stderr.",
    "collect": "Fetch this remote file from each host into the run's artifacts; repeatable.",
    "retry_failed": "Rerun the last fanout's command on its hosts that did not succeed (no command, no hosts).",
}


def _render_run(run: Any, json_: bool, stream: bool, quiet: bool = False, diff: bool = False) -> None:
    from fleet.cli.render import Colors, cell, diffed, fanout_table, gathered, stderr_tails

    if json_:
        emit(run.to_dict())
        return
    color = Colors()
    for n in run.notes:
        print(cell(f"note: {n}"), file=sys.stderr)
    if diff:
        text = diffed(run, color)
    elif not (quiet or stream):
        text = gathered(run, color)  # like clush -b: every host's output, identical ones once
    else:
        text = ""
    if text:
        print(text)
    print(fanout_table(run, color))
    tails = "" if quiet else stderr_tails(run)
    if tails:
        print(tails)


def _run_gated(fl: Any, op: str, sel: str, call: Any, mode: str | None, canary: str | None, json_: bool,
               stream: bool, log: bool, quiet: bool = False, diff: bool = False, no_canary: bool = False) -> None:
    """A fanout-shaped operation with the live progress line (or streamed lines), then its report."""
    from fleet.cli.live import LineStreamer, Progress
    from fleet.errors import BadInput
    from fleet.safety.gate import OPERATIONS, make_plan, resolve_mode

    if json_ and stream:
        raise BadInput("--json and --stream do not mix (live lines would break the JSON document): keep one")
    inv = fl.inventory
    m = resolve_mode(fl.mode(mode), fl.settings)
    spec = OPERATIONS[op]
    preview = make_plan(inv, op, sel, m, {}, canary if spec.canary else None, spec.local_ok,
                        no_canary or not spec.canary) if m == "canary" else None
    progress = Progress(len(fl.select(sel)), enabled=None if not json_ and not stream else False,
                        canary=preview.canary.name if preview is not None and preview.canary else None)
    streamer = LineStreamer([h.name for h in inv.hosts] + ["local"]) if stream else None
    trail = fl.trail()
    try:
        run = call(trail, streamer, progress, sys.stderr if log else None)
    finally:
        trail.close()
    progress.clear()
    _render_run(run, json_, stream, quiet, diff)
    if run.exit_code:
        raise Exit(code=run.exit_code)


@fleet_task(positional=["command"], iterable=["accept_new_host_key", "collect"], help=FANOUT_HELP)
def fanout(c, command="", hosts=None, all_=False, inventory=None, json_=False, mode=None, canary=None,
           batch=None, max_fail=None, confirm=None, concurrency=None, connect_timeout=None, timeout=None,
           attempts=None, retry_delay=None, retry_on_exit=False, no_preflight=False,
           accept_new_host_key=None, accept_new_host_keys=False, stream=False, gather=False, log=False,
           collect=None, quiet=False, diff=False, no_canary=False, retry_failed=False):
    """Run one shell command on many hosts; each host's output, then per-host results (exit 1 if any failed)."""
    from fleet.errors import BadInput

    if retry_failed:
        if command or hosts or all_:
            raise BadInput("--retry-failed reruns the last fanout's command on its failed hosts: drop the "
                           "command and --hosts/--all")
        from fleet.ssh.artifacts import last_failed

        fl = app(c, inventory)
        last = last_failed(fl.settings.artifacts_dir)
        command = last.command
        if last.note:
            print(f"retry: {last.note}", file=sys.stderr)
        print(f"retry: {command!r} on {len(last.hosts)} host(s): {', '.join(last.hosts)}", file=sys.stderr)
        hosts = ",".join(last.hosts)
    else:
        fl = app(c, inventory)
    if not command or not command.strip():
        raise BadInput(f'give the command to run, e.g. {prog()} fanout --all "make test"')
    sel = selector(hosts, all_, default=None)
    opts = fl.fanout_options(concurrency=concurrency, connect_timeout=connect_timeout, timeout=timeout,
                             attempts=attempts, retry_delay=retry_delay, retry_on_exit=retry_on_exit,
                             no_preflight=no_preflight, accept_new_host_key=accept_new_host_key,
                             accept_new_host_keys=accept_new_host_keys, collect=collect)
    _run_gated(fl, "fanout", sel, lambda trail, out, res, log_stream: fl.fanout(
        sel, command, mode=mode, confirm=confirm, canary=canary, no_canary=no_canary, options=opts, trail=trail,
        on_output=out, on_result=res, log_stream=log_stream, batch=batch, max_fail=max_fail),
        mode, canary, json_, stream, log, quiet, diff, no_canary)


@fleet_task(iterable=["accept_new_host_key"], help={k: v for k, v in FANOUT_HELP.items()
                                                    if k not in ("command", "hosts", "all", "collect", "retry_failed")})
def retry(c, inventory=None, json_=False, mode=None, canary=None, batch=None, max_fail=None, confirm=None,
          concurrency=None, connect_timeout=None, timeout=None, attempts=None, retry_delay=None,
          retry_on_exit=False, no_preflight=False, accept_new_host_key=None, accept_new_host_keys=False,
          stream=False, gather=False, log=False, quiet=False, diff=False, no_canary=False):
    """Rerun the last fanout's command on the hosts that did not succeed (same as fanout --retry-failed)."""
    fanout(c, inventory=inventory, json_=json_, mode=mode, canary=canary, batch=batch, max_fail=max_fail,
           confirm=confirm, concurrency=concurrency, connect_timeout=connect_timeout, timeout=timeout,
           attempts=attempts, retry_delay=retry_delay, retry_on_exit=retry_on_exit, no_preflight=no_preflight,
           accept_new_host_key=accept_new_host_key, accept_new_host_keys=accept_new_host_keys, stream=stream,
           gather=gather, log=log, quiet=quiet, diff=diff, no_canary=no_canary, retry_failed=True)


@fleet_task(name="blow-away", iterable=["accept_new_host_key"], help={
    "repo": "Repo whose working copy is removed (its path comes from the inventory's repos).",
    "hosts": HOSTS_HELP, "all": "Every host.", "inventory": "Inventory file.", "json": "One JSON document.",
    "mode": "off | canary | enforced.", "confirm": "The token printed by the refused run.",
    "concurrency": FANOUT_HELP["concurrency"], "connect_timeout": FANOUT_HELP["connect_timeout"],
    "timeout": FANOUT_HELP["timeout"], "log": FANOUT_HELP["log"],
    "accept_new_host_key": FANOUT_HELP["accept_new_host_key"],
    "accept_new_host_keys": FANOUT_HELP["accept_new_host_keys"]})
def blow_away(c, repo, hosts=None, all_=False, inventory=None, json_=False, mode=None, confirm=None,
              concurrency=None, connect_timeout=None, timeout=None, log=False, accept_new_host_key=None,
              accept_new_host_keys=False):
    """Remove a repo's working copy on hosts (gated: needs --confirm TOKEN)."""
    from fleet.ops.blow_away import check_repo_name

    check_repo_name(repo)
    fl = app(c, inventory)
    sel = selector(hosts, all_, default=None)
    opts = fl.ssh_options(concurrency=concurrency, connect_timeout=connect_timeout, timeout=timeout,
                          accept_new_host_key=accept_new_host_key, accept_new_host_keys=accept_new_host_keys)
    _run_gated(fl, "blow-away", sel, lambda trail, out, res, log_stream: fl.blow_away(
        sel, repo, mode=mode, confirm=confirm, options=opts, trail=trail, on_output=out, on_result=res,
        log_stream=log_stream), mode, None, json_, False, log)


@fleet_task(help={"hosts": HOSTS_HELP + " Default: all.", "all": "Every host.", "inventory": "Inventory file.",
                  "json": "One JSON document."})
def worktrees_list(c, hosts=None, all_=False, inventory=None, json_=False):
    """The git worktrees fleet made, per host: repo, branch, path, age, dirty or clean, ahead, session."""
    from fleet.cli.render import worktrees_table

    rows, errors = app(c, inventory).worktrees(selector(hosts, all_))
    rows_out(json_, "worktrees", rows, worktrees_table(rows), errors)


@fleet_task(help={"hosts": HOSTS_HELP, "all": "Every host.", "repo": "The repo the worktree belongs to.",
                  "name": "The worktree's name (the issue or dispatch id; see 'fleet worktrees').",
                  "force": "Remove it even with uncommitted changes.", "delete_branch": "Also delete its branch.",
                  "confirm": "The token printed by the refused run.", "mode": "off | canary | enforced.",
                  "inventory": "Inventory file.", "json": "One JSON document."})
def worktrees_remove(c, repo, name, hosts=None, all_=False, force=False, delete_branch=False, confirm=None,
                     mode=None, inventory=None, json_=False):
    """Remove a fleet-made worktree (gated: --confirm; refuses uncommitted changes unless --force)."""
    fl = app(c, inventory)
    trail = fl.trail()
    try:
        out = fl.remove_worktree(selector(hosts, all_, default=None), repo, name, force=bool(force),
                                 delete_branch=bool(delete_branch), mode=mode, confirm=confirm, trail=trail)
    finally:
        trail.close()
    if json_:
        emit({"worktrees": [r.to_dict() for r in out]})
    else:
        from fleet.cli.render import cell

        for r in out:
            print(cell(f"{r.host}: {r.detail}"))
    if not all(r.ok for r in out):
        raise Exit(code=1)


__all__ = ["blow_away", "fanout", "preflight", "retry", "worktrees_list", "worktrees_remove"]

"""fleet's task collection and the ``fleet`` command: parse flags, call the library, render.

The same collection serves ``inv`` in the checkout (``tasks.py`` imports it) and the installed
``fleet`` command (:func:`main`, an Invoke ``Program`` over it), from any directory. Heavy
imports (fabric, paramiko, httpx, slack-sdk) happen inside the tasks, so ``--list`` stays fast.
"""
from __future__ import annotations

import functools
import os
import sys
from dataclasses import asdict

from invoke import Collection, Exit, task

from fleet.errors import EXIT_INTERRUPTED, FleetError
from fleet.settings import Settings

HOSTS_HELP = "Hosts: name, alias, @group, tag:NAME, all, comma list, !x to exclude."


def fleet_task(*args, **kwargs):
    """``@task`` with fleet's error handling: one clear message and a distinct exit status."""
    kwargs.setdefault("auto_shortflags", False)

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(c, *a, **kw):
            try:
                return fn(c, *a, **kw)
            except FleetError as exc:
                print(f"fleet: {exc}", file=sys.stderr)
                raise Exit(code=exc.exit_code) from None
            except KeyboardInterrupt:
                # A Ctrl-C that gets here is a second one (the first ends the run with its
                # summary): stop now, without waiting for worker threads.
                print("fleet: interrupted", file=sys.stderr)
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(EXIT_INTERRUPTED)
            except Exit:
                raise
            except Exception as exc:  # noqa: BLE001 - a bug must still read as one line
                if os.environ.get("FLEET_DEBUG"):
                    raise
                print(f"fleet: unexpected error {type(exc).__name__}: {exc} (a bug: rerun with FLEET_DEBUG=1 "
                      f"for the traceback and report it)", file=sys.stderr)
                raise Exit(code=1) from None
        return task(*args, **kwargs)(wrapper)
    return deco


def _num(flag: str, value, default, kind: type = float, minimum: float = 0, positive: bool = False):
    """A number flag, or the setting's value when the flag is not given; bad values exit 2."""
    from fleet.settings import number
    return default if value is None else number(flag, value, kind, minimum, positive)


def _settings(c) -> Settings:
    st = Settings.from_mapping(c.config.get("fleet") or {})
    if getattr(c.config, "_project_path", None) is None:
        # outside a project (no invoke.yaml found): relative paths go to the user's state dir,
        # not wherever the command happens to run
        st = st.outside_project()
    return st


def _inventory(c, path: str | None):
    from fleet.inventory import load_inventory

    path = path or os.environ.get("FLEET_INVENTORY") or None

    st = _settings(c)
    return load_inventory(path or st.inventory or "inventory.yaml")


def _selector(hosts: str | None, all_: bool, default: str | None = "all") -> str:
    from fleet.errors import BadInput

    if hosts and all_:
        raise BadInput("give either --hosts SELECTOR or --all, not both")
    if all_:
        return "all"
    if hosts:
        return hosts
    if default is None:
        raise BadInput("choose hosts with --hosts SELECTOR (e.g. --hosts epyc6 or --hosts '@gpu') or --all")
    return default


def _emit(doc) -> None:
    from fleet.cli.render import to_json

    print(to_json(doc))


# ------------------------------------------------------------------------ inventory

@fleet_task(help={"inventory": "Inventory file (default: the 'inventory' setting, then ./inventory.yaml)."})
def inventory_check(c, inventory=None):
    """Validate the inventory and print a one-line summary (exit 2 on any error)."""
    from fleet.cli.render import inventory_summary

    print(inventory_summary(_inventory(c, inventory)))


@fleet_task(help={"hosts": HOSTS_HELP, "all": "Same as --hosts all (the default).",
                  "inventory": "Inventory file.", "json": "Print one JSON document."})
def inventory_show(c, hosts=None, all_=False, inventory=None, json_=False):
    """Print the resolved hosts (defaults merged) as a table or JSON."""
    from fleet.cli.render import host_dict, hosts_table
    from fleet.inventory.select import select

    inv = _inventory(c, inventory)
    chosen = select(inv, _selector(hosts, all_))
    if json_:
        _emit({"inventory": inv.path, "hosts": [host_dict(h) for h in chosen]})
    else:
        print(hosts_table(chosen))


@fleet_task(name="import", positional=["file"], help={"file": "Path of a vm-endpoints.json file."})
def inventory_import(c, file):
    """Convert the seed's vm-endpoints.json to inventory YAML on stdout (notes on stderr)."""
    import json

    from fleet.errors import BadInput
    from fleet.inventory.importer import vm_endpoints_to_yaml

    try:
        with open(file, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise BadInput(f"{file}: file not found") from None
    except json.JSONDecodeError as exc:
        raise BadInput(f"{file}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None
    text, dropped = vm_endpoints_to_yaml(data, file)
    sys.stdout.write(text)
    for d in dropped:
        print(f"fleet: dropped {d}", file=sys.stderr)
    if not dropped:
        print("fleet: nothing dropped", file=sys.stderr)


# ------------------------------------------------------------------------ preflight / fanout

@fleet_task(help={"hosts": HOSTS_HELP + " Default: all.", "all": "Same as --hosts all.",
                  "inventory": "Inventory file.", "json": "Print one JSON document.",
                  "timeout": "Seconds per check (default: the 'preflight_timeout' setting, 5).",
                  "concurrency": "Hosts checked at once (default: the 'concurrency' setting).",
                  "deep": "Also log in (run 'true' over SSH, as fanout would) and check each OpenCode "
                          "server's health (default: the 'preflight_deep' setting)."})
def preflight(c, hosts=None, all_=False, inventory=None, json_=False, timeout=None, concurrency=None, deep=False):
    """Check every selected host is usable: mapping, DNS, TCP to SSH, auth (--deep: login, OpenCode)."""
    from fleet.cli.render import preflight_table
    from fleet.inventory.select import select
    from fleet.ssh.preflight import preflight_many

    st = _settings(c)
    inv = _inventory(c, inventory)
    chosen = select(inv, _selector(hosts, all_))
    t = _num("--timeout", timeout, st.preflight_timeout, positive=True)
    n = _num("--concurrency", concurrency, st.concurrency, int, 1)
    if deep or st.preflight_deep:
        from fleet.ops.preflight import deep_preflight
        opts = _fanout_options(c, n, None, None, 1, 0, False, False, None, False, None)
        results = deep_preflight(inv, chosen, t, n, opts)
    else:
        results = preflight_many(chosen, t, n, inventory=inv, ssh_config=st.ssh_config)
    if json_:
        _emit({"results": [r.to_dict() for r in results], "ok": all(r.ok for r in results)})
    else:
        print(preflight_table(results))
    if not all(r.ok for r in results):
        raise Exit(code=1)


FANOUT_HELP = {
    "command": "The shell command to run on each host (positional).",
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
}


def _fanout_options(c, concurrency, connect_timeout, timeout, attempts, retry_delay, retry_on_exit,
                    no_preflight, accept_new_host_key, accept_new_host_keys, collect):
    from fleet.ssh.runner import FanoutOptions

    st = _settings(c)
    ct = _num("--timeout", timeout, st.command_timeout)
    return FanoutOptions(
        concurrency=_num("--concurrency", concurrency, st.concurrency, int, 1),
        connect_timeout=_num("--connect-timeout", connect_timeout, st.connect_timeout, positive=True),
        command_timeout=ct if ct > 0 else None,
        attempts=_num("--attempts", attempts, st.attempts, int, 1),
        retry_delay=_num("--retry-delay", retry_delay, st.retry_delay),
        retry_on_exit=bool(retry_on_exit), preflight=not no_preflight,
        preflight_timeout=st.preflight_timeout,
        accept_new_host_keys=bool(accept_new_host_keys),
        accept_host_keys_for=frozenset(accept_new_host_key or ()),
        collect=tuple(collect or ()), artifacts_dir=st.artifacts_dir, ssh_config=st.ssh_config,
        artifacts_keep=st.artifacts_keep).validate()


def _ssh_options(c):
    """The SSH engine's options from the settings, one attempt: for SSH work that is not a fanout
    (worktrees, preflight --deep, dispatch's worktree)."""
    return _fanout_options(c, None, None, None, 1, 0, False, False, None, False, None)


def _rows_out(json_: bool, key: str, rows, text: str, errors: list[str]) -> None:
    """A list result: one JSON document, or the table and the errors on stderr; exit 1 on errors."""
    if json_:
        _emit({key: [r.to_dict() for r in rows], "errors": errors})
    else:
        print(text)
        for e in errors:
            print(f"error: {e}", file=sys.stderr)
    if errors:
        raise Exit(code=1)


def _render_run(run, json_: bool, gather: bool, stream: bool, quiet: bool = False, diff: bool = False) -> None:
    from fleet.cli.render import Colors, diffed, fanout_table, gathered, stderr_tails

    if json_:
        _emit(run.to_dict())
        return
    color = Colors()
    for n in run.notes:
        print(f"note: {n}", file=sys.stderr)
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


def _run_gated(c, op, inventory, hosts, all_, args, mode, confirm, canary, json_, gather, stream, log,
               options, quiet=False, diff=False, no_canary=False, **extra):
    from fleet.cli.render import LineStreamer, Progress
    from fleet.safety.gate import resolve_mode

    st = _settings(c)
    inv = _inventory(c, inventory)
    sel = _selector(hosts, all_, default=None)
    from fleet.inventory.select import select
    from fleet.safety.gate import make_plan

    if json_ and stream:
        from fleet.errors import BadInput
        raise BadInput("--json and --stream do not mix (live lines would break the JSON document): keep one")
    m = resolve_mode(mode, st)
    preview = make_plan(inv, op.operation, sel, m, args, canary, no_canary=no_canary) if m == "canary" else None
    progress = Progress(len(select(inv, sel)), enabled=None if not json_ and not stream else False,
                        canary=preview.canary.name if preview is not None and preview.canary else None)
    streamer = LineStreamer([h.name for h in inv.hosts] + ["local"]) if stream else None
    trail = _trail(c, inv)
    try:
        run = op(inv, sel, args=args, mode=mode, confirm=confirm, canary=canary, settings=st, no_canary=no_canary,
                 options=options, on_output=streamer, on_result=progress,
                 log_stream=sys.stderr if log else None, trail=trail, **extra)
    finally:
        trail.close()
    progress.clear()
    _render_run(run, json_, gather, stream, quiet, diff)
    if run.exit_code:
        raise Exit(code=run.exit_code)


@fleet_task(positional=["command"], iterable=["accept_new_host_key", "collect"],
            help=FANOUT_HELP)
def fanout(c, command, hosts=None, all_=False, inventory=None, json_=False, mode=None, canary=None,
           batch=None, max_fail=None, confirm=None, concurrency=None, connect_timeout=None, timeout=None,
           attempts=None, retry_delay=None, retry_on_exit=False, no_preflight=False,
           accept_new_host_key=None, accept_new_host_keys=False, stream=False, gather=False, log=False,
           collect=None, quiet=False, diff=False, no_canary=False):
    """Run one shell command on many hosts; each host's output, then per-host results (exit 1 if any failed)."""
    from fleet.errors import BadInput
    from fleet.ops import fanout as ops

    if not command or not command.strip():
        raise BadInput('give the command to run, e.g. inv fanout --all "make test"')
    opts = _fanout_options(c, concurrency, connect_timeout, timeout, attempts, retry_delay, retry_on_exit,
                           no_preflight, accept_new_host_key, accept_new_host_keys, collect)
    _run_gated(c, ops.fanout, inventory, hosts, all_, {"command": command}, mode, confirm, canary, json_,
               gather, stream, log, opts, quiet=quiet, diff=diff, no_canary=no_canary,
               batch=batch, max_fail=max_fail)


@fleet_task(iterable=["accept_new_host_key"], help={k: v for k, v in FANOUT_HELP.items()
                                                    if k not in ("command", "hosts", "all", "collect")})
def retry(c, inventory=None, json_=False, mode=None, canary=None, batch=None, max_fail=None, confirm=None,
          concurrency=None, connect_timeout=None, timeout=None, attempts=None, retry_delay=None,
          retry_on_exit=False, no_preflight=False, accept_new_host_key=None, accept_new_host_keys=False,
          stream=False, gather=False, log=False, quiet=False, diff=False, no_canary=False):
    """Rerun the last fanout's command on the hosts that did not succeed (Ansible's retry list)."""
    from fleet.ssh.artifacts import last_failed

    command, failed = last_failed(_settings(c).artifacts_dir)
    print(f"retry: {command!r} on {len(failed)} host(s): {', '.join(failed)}", file=sys.stderr)
    fanout(c, command, inventory=inventory, json_=json_, mode=mode, canary=canary, batch=batch, max_fail=max_fail,
           confirm=confirm, concurrency=concurrency, connect_timeout=connect_timeout, timeout=timeout,
           attempts=attempts, retry_delay=retry_delay, retry_on_exit=retry_on_exit, no_preflight=no_preflight,
           accept_new_host_key=accept_new_host_key, accept_new_host_keys=accept_new_host_keys, stream=stream,
           gather=gather, log=log, quiet=quiet, diff=diff, no_canary=no_canary, hosts=",".join(failed))


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
    from fleet.ops import fanout as ops

    ops.check_repo_name(repo)
    opts = _fanout_options(c, concurrency, connect_timeout, timeout, 1, 0, False, False, accept_new_host_key,
                           accept_new_host_keys, None)
    _run_gated(c, ops.blow_away, inventory, hosts, all_, {"repo": repo}, mode, confirm, None, json_,
               False, False, log, opts)


# ------------------------------------------------------------------------ tokens

@fleet_task(help={"json": "One JSON document."})
def token_list(c, json_=False):
    """List confirmation tokens issued here and their state (valid/used/expired/revoked)."""
    from fleet.cli.render import table
    from fleet.safety.tokens import TokenStore

    st = _settings(c)
    recs = TokenStore(st.token_dir, st.token_ttl).list()
    if json_:
        _emit({"tokens": recs})
        return
    print(table([[r["id"], r["state"], r["operation"], ",".join(r["hosts"]), r.get("args", "")]
                 for r in recs], ["ID", "STATE", "OPERATION", "HOSTS", "ARGS"]))


@fleet_task(positional=["token"], help={"token": "The token to revoke."})
def token_revoke(c, token):
    """Revoke a confirmation token so it can never be used."""
    from fleet.safety.tokens import TokenStore

    st = _settings(c)
    rec = TokenStore(st.token_dir, st.token_ttl).revoke(token)
    print(f"revoked token {rec['id']} for '{rec['operation']}' on {','.join(rec['hosts'])}")


# ------------------------------------------------------------------------ lab

@fleet_task(help={"count": "Number of SSH hosts (default 3).", "dir": "Lab directory (default ./lab).",
                  "agents": "Also start a real 'opencode serve' for the first M hosts (default 0).",
                  "jump": "Add a jump host and reach every even host through it (ProxyJump)."})
def lab_up(c, count=None, dir="lab", agents=None, jump=False):
    """Start a local lab of real sshd hosts (and OpenCode agents) on loopback."""
    import time

    from fleet.lab import lab_up as up

    t0 = time.monotonic()
    lab = up(_num("--count", count, 3, int, 1), dir, _num("--agents", agents, 0, int, 0), jump=bool(jump))
    n_agents = sum(1 for a in lab.agents if a.get("role") == "agent")
    print(f"lab up: {len(lab.hosts)} hosts, {n_agents} agents in {time.monotonic() - t0:.2f}s")
    rel = os.path.relpath(lab.inventory)
    shown = rel if not rel.startswith("..") else str(lab.inventory)
    print(f"inventory: {shown}")
    rel_cfg = os.path.relpath(lab.ssh_config) if lab.ssh_config else ""
    print(f"ssh_config: {rel_cfg if not rel_cfg.startswith('..') else lab.ssh_config} "
          f"(plain OpenSSH: ssh -F {rel_cfg if not rel_cfg.startswith('..') else lab.ssh_config} lab01 true)")
    print(f"try: inv fanout --inventory {shown} --all true")


@fleet_task(help={"dir": "Lab directory (default ./lab)."})
def lab_down(c, dir="lab"):
    """Stop every process the lab started (by pid file)."""
    from fleet.lab import lab_down as down

    pids = down(dir)
    print(f"lab down: stopped {len(pids)} process(es)")


# ------------------------------------------------------------------------ worktrees

@fleet_task(help={"hosts": HOSTS_HELP + " Default: all.", "all": "Every host.", "inventory": "Inventory file.",
                  "json": "One JSON document."})
def worktrees_list(c, hosts=None, all_=False, inventory=None, json_=False):
    """The git worktrees fleet made, per host: repo, branch, path, age, dirty or clean, ahead, session."""
    from fleet.cli.render import worktrees_table
    from fleet.inventory.select import select
    from fleet.ops.worktrees import list_worktrees

    inv = _inventory(c, inventory)
    opts = _ssh_options(c)
    rows, errors = list_worktrees(inv, select(inv, _selector(hosts, all_)), opts, _records(c))
    _rows_out(json_, "worktrees", rows, worktrees_table(rows), errors)


@fleet_task(help={"hosts": HOSTS_HELP, "all": "Every host.", "repo": "The repo the worktree belongs to.",
                  "name": "The worktree's name (the issue or dispatch id; see 'fleet worktrees').",
                  "force": "Remove it even with uncommitted changes.", "delete_branch": "Also delete its branch.",
                  "confirm": "The token printed by the refused run.", "mode": "off | canary | enforced.",
                  "inventory": "Inventory file.", "json": "One JSON document."})
def worktrees_remove(c, repo, name, hosts=None, all_=False, force=False, delete_branch=False, confirm=None,
                     mode=None, inventory=None, json_=False):
    """Remove a fleet-made worktree (gated: --confirm; refuses uncommitted changes unless --force)."""
    from fleet.ops.worktrees import remove_worktree

    st = _settings(c)
    inv = _inventory(c, inventory)
    trail = _trail(c, inv)
    try:
        out = remove_worktree(inv, _selector(hosts, all_, default=None),
                              args={"repo": repo, "name": name, "force": bool(force),
                                    "delete_branch": bool(delete_branch)},
                              mode=mode, confirm=confirm, settings=st, trail=trail,
                              options=_ssh_options(c))
    finally:
        trail.close()
    if json_:
        _emit({"worktrees": out})
    else:
        for r in out:
            print(f"{r['host']}: {r['detail']}")
    if any(r["outcome"] != "removed" for r in out):
        raise Exit(code=1)


# ------------------------------------------------------------------------ mcp

@fleet_task(help={"inventory": "Inventory file (default: $FLEET_INVENTORY or the 'inventory' setting)."})
def mcp(c, inventory=None):
    """Serve fleet to an orchestrator agent over MCP (stdio); gated plans are confirmed by the person."""
    from fleet.cli.mcp import serve

    serve(inventory)


# ------------------------------------------------------------------------ audit helpers

def _say_audit(trail) -> None:
    """One line on stderr when audit events did not all reach Slack by the end of the command."""
    done = trail.close()
    if trail.status:
        print(f"audit: {trail.status}", file=sys.stderr)
    elif not done or trail.last_error:
        why = f" ({trail.last_error})" if trail.last_error else " (Slack is slow)"
        print(f"audit: some events are not yet delivered to Slack{why}; they stay pending in the "
              f"journal: fleet audit.replay", file=sys.stderr)


def _trail(c, inv, slack=True):
    from fleet.app import audit_trail

    return audit_trail(inv, _settings(c), post=slack)


def _records(c):
    from fleet.audit.records import SessionRecords

    return SessionRecords(_settings(c).sessions_path())


# ------------------------------------------------------------------------ dispatch

DISPATCH_HELP = {
    "host": "The host whose agent gets the task (default: the inventory's default_host).",
    "hosts": HOSTS_HELP + " Dispatches to each in parallel.", "all": "Every host (same as --hosts all).",
    "repo": "Repo name: the task runs in that repo's directory on the host (inventory repos).",
    "task": "The task text sent to the agent.",
    "session": "Resume this session instead of creating one (one host only).",
    "no_wait": "Send the task and return; do not wait for the answer.",
    "issue": "Beads issue to claim for the host first (one host only).",
    "model": "provider/model for this task (default: the server's).",
    "timeout": "Seconds to wait for the agent (default: the 'dispatch_timeout' setting).",
    "mode": "off | canary | enforced.", "canary": "Host whose agent must succeed before the rest get the task.",
    "confirm": "Confirmation token, when the mode or config gates dispatch.",
    "json": "Print one JSON document.", "inventory": "Inventory file.",
    "no_slack": "Journal only; do not post this dispatch to Slack.",
    "worktree": "Work in a new git worktree on the host (branch fleet/<issue or dispatch id>); "
                "default: the 'worktree' setting.",
    "base": "With --worktree: the commit or branch to start from (default: the repo's HEAD).",
    "on_permission": "When the agent asks a permission: ask (say needs-input, wait for 'fleet approve'/'deny'), "
                     "allow (approve once) or deny. Default: ask.",
    "retry_failed": "Send the last dispatch's task again to its hosts that never got it or whose agent "
                    "failed (never to one that may still be at work).",
}


@fleet_task(help=DISPATCH_HELP)
def dispatch(c, repo=None, task=None, host=None, hosts=None, all_=False, session=None, no_wait=False, issue=None,
             model=None, timeout=None, mode=None, canary=None, confirm=None, json_=False, inventory=None,
             no_slack=False, on_permission=None, worktree=False, base=None, retry_failed=False):
    """Hand a task to the OpenCode agent on a host (or many) and follow it to the end."""
    from fleet.cli.render import DispatchLive
    from fleet.errors import BadInput
    from fleet.ops import dispatch as dx
    from fleet.ops.beads import Beads

    st = _settings(c)
    inv = _inventory(c, inventory)
    if retry_failed:
        if repo or task or host or hosts or all_ or session:
            raise BadInput("--retry-failed sends the last dispatch's task to its hosts that did not get it "
                           "done: drop --repo, --task, --host/--hosts/--all and --session")
        last, again, skipped = dx.retry_targets(st)
        req = last["request"]
        if skipped:
            print(f"retry: not sent again: {'; '.join(skipped)}", file=sys.stderr)
        if not again:
            raise BadInput(f"the last dispatch ({last.get('dispatch_id')}) left no host to send again"
                           + (": the others may still be at work (fleet wait)" if skipped else ""))
        repo, task, hosts = req.get("repo"), req.get("task"), ",".join(again)
        model, issue = model or req.get("model"), issue or req.get("issue")
        on_permission, timeout = on_permission or req.get("on_permission"), timeout or req.get("timeout")
        worktree, base = worktree or bool(req.get("worktree")), base or req.get("base")
        print(f"retry: {task!r} for {repo} to {len(again)} host(s): {', '.join(again)}", file=sys.stderr)
    on_permission = on_permission or "ask"
    if sum(bool(x) for x in (host, hosts, all_)) > 1:
        raise BadInput("give one of --host NAME, --hosts SELECTOR or --all")
    if not repo:
        raise BadInput("give the repo: --repo NAME (its path on each host comes from the inventory's repos)")
    if not task or not task.strip():
        raise BadInput('give the task text, e.g. --task "Run make test"')
    if model and "/" not in model:
        raise BadInput(f"--model {model}: write provider/model, e.g. --model anthropic/claude-sonnet-4-5")
    sel = host or hosts or ("all" if all_ else inv.default_host)
    if not sel:
        raise BadInput("choose the host with --host NAME (the inventory has no default_host)")
    trail = _trail(c, inv, slack=not no_slack)
    beads = Beads() if issue else None
    many = sel != host
    live = DispatchLive(json_, many)
    try:
        run = dx.dispatch(inv, sel, args={"task": task, "repo": repo, "session": session, "model": model,
                                          "issue": issue},
                          mode=mode, confirm=confirm, canary=canary, settings=st, store=None,
                          audit=trail.gate_event, wait=not no_wait,
                          timeout=_num("--timeout", timeout, st.dispatch_timeout, positive=True), concurrency=st.concurrency,
                          records=_records(c), on_event=live, beads=beads, audit_trail=trail,
                          on_permission=on_permission, worktree=bool(worktree or st.worktree), base=base,
                          ssh_options=_ssh_options(c))
    finally:
        live.close()
        trail.close()
    _dispatch_out(run, json_, trail)


def _dispatch_out(run, json_: bool, trail) -> None:
    """A dispatch run (dispatch, wait): JSON or the report and the audit line; its exit status."""
    from fleet.cli.render import dispatch_report

    if json_:
        _emit(run.to_dict())
    else:
        print(dispatch_report(run))
        _say_audit(trail)
    if run.exit_code:
        raise Exit(code=run.exit_code)


def _session_host(c, inv, host, session):
    """The host to act on: --host, else the one fleet's records know the session from."""
    from fleet.errors import BadInput
    from fleet.ops.sessions import find_session_host

    if host:
        return inv.host(host)
    h = find_session_host(list(inv.hosts), _records(c), session) if session else None
    if h is None:
        raise BadInput("say which host: --host NAME (fleet's records do not know this session)")
    return h


@fleet_task(help={"host": "Host whose agent to stop (default: the host fleet's records know the session from).",
                  "session": "Session id to abort.",
                  "all_sessions": "Abort every busy session on the host.", "reason": "Why (journal, Slack, Beads).",
                  "inventory": "Inventory file.", "json": "One JSON document.", "no_slack": "Journal only."})
def abort(c, host=None, session=None, all_sessions=False, reason="aborted by operator", inventory=None, json_=False,
          no_slack=False):
    """Stop a running agent session and check it stopped (marks its Beads issue blocked)."""
    from fleet.cli.render import abort_line
    from fleet.ops.beads import Beads
    from fleet.ops.sessions import abort_sessions

    h, done = _on_session(c, inventory, host, session, lambda h, trail, recs: abort_sessions(
        h, session, all_sessions, recs, trail, Beads(), reason), slack=not no_slack)
    if json_:
        _emit({"host": h.name, "aborted": done})
    else:
        print(abort_line(h.name, done))


@fleet_task(help={"session": "The session to follow (one host).", "dispatch": "Every session of this dispatch id.",
                  "host": "The session's host (default: the one fleet's records or the servers know it from).",
                  "hosts": HOSTS_HELP + " With --dispatch: where to look when this machine has no record of it.",
                  "timeout": "Seconds to wait (default: the 'dispatch_timeout' setting).",
                  "on_permission": "When the agent asks a permission: ask (say needs-input, keep waiting), allow or deny.",
                  "inventory": "Inventory file.", "json": "One JSON document.", "no_slack": "Journal only."})
def wait(c, session=None, dispatch=None, host=None, hosts=None, timeout=None, on_permission="ask", inventory=None,
         json_=False, no_slack=False):
    """Follow agents already at work (a --no-wait dispatch) to the end of their turn, and review it."""
    from fleet.cli.render import DispatchLive
    from fleet.errors import BadInput
    from fleet.inventory.select import select
    from fleet.ops.wait import wait_dispatch, wait_sessions

    if bool(session) == bool(dispatch):
        raise BadInput("say what to wait for: --session ID (one agent) or --dispatch ID (every agent of a dispatch)")
    st = _settings(c)
    inv = _inventory(c, inventory)
    kw = {"timeout": _num("--timeout", timeout, st.dispatch_timeout, positive=True), "on_permission": on_permission,
          "stall_timeout": st.stall_timeout, "concurrency": st.concurrency, "records": _records(c)}
    pairs = [(_session_host(c, inv, host, session), session)] if session else None
    trail = _trail(c, inv, slack=not no_slack)
    live = DispatchLive(json_, not session)
    try:
        if pairs:
            run = wait_sessions(pairs, strict=True, audit=trail, on_event=live, **kw)
        else:
            run = wait_dispatch(inv, dispatch, hosts=select(inv, hosts) if hosts else None, audit=trail,
                                on_event=live, **kw)
    finally:
        live.close()
        trail.close()
    _dispatch_out(run, json_, trail)


def _on_session(c, inventory, host, session, op, slack=True):
    """Run ``op(host, trail, records)`` on the session's host (found from the records or the
    servers when --host is not given) with the audit trail open; returns (host, op's result)."""
    inv = _inventory(c, inventory)
    h = _session_host(c, inv, host, session)
    trail = _trail(c, inv, slack=slack)
    try:
        return h, op(h, trail, _records(c))
    finally:
        trail.close()


def _answer(c, host, session, reply, message, inventory, json_):
    from fleet.ops.sessions import answer_permission

    h, done = _on_session(c, inventory, host, session,
                          lambda h, trail, recs: answer_permission(h, session, reply, message, trail, recs))
    if json_:
        _emit({"host": h.name, "session": session, "reply": reply, "answered": done})
    else:
        print(f"{h.name}: {reply} for session {session}: {'; '.join(done)}")


ANSWER_HELP = {"host": "Host of the session (default: from fleet's records).", "session": "The waiting session.",
               "inventory": "Inventory file.", "json": "One JSON document."}


@fleet_task(help=dict(ANSWER_HELP, always="Approve this and matching requests from now on."))
def approve(c, session, host=None, always=False, inventory=None, json_=False):
    """Approve the permission an agent waits on (needs-input in sessions and dispatch)."""
    _answer(c, host, session, "always" if always else "once", None, inventory, json_)


@fleet_task(help=dict(ANSWER_HELP, text="The answer: an option's label, or free text."))
def answer(c, session, text, host=None, inventory=None, json_=False):
    """Answer the question an agent asks (its question tool; needs-input in sessions)."""
    from fleet.ops.sessions import answer_question

    h, done = _on_session(c, inventory, host, session,
                          lambda h, trail, recs: answer_question(h, session, text, trail, recs))
    if json_:
        _emit({"host": h.name, "session": session, "answer": text, "answered": done})
    else:
        print(f"{h.name}: answered {'; '.join(done)} with {text!r}")


@fleet_task(help=dict(ANSWER_HELP, message="Tell the agent why (it reads this)."))
def deny(c, session, host=None, message=None, inventory=None, json_=False):
    """Reject the permission an agent waits on."""
    _answer(c, host, session, "reject", message, inventory, json_)


@fleet_task(help={"hosts": HOSTS_HELP + " Default: hosts with an OpenCode server.", "all": "Every host.",
                  "inventory": "Inventory file.", "json": "One JSON document."})
def sessions(c, hosts=None, all_=False, inventory=None, json_=False):
    """What each host's agent is doing: sessions, busy/idle/retry, titles, age."""
    from fleet.cli.render import sessions_table
    from fleet.inventory.select import select
    from fleet.ops.sessions import sessions_many

    inv = _inventory(c, inventory)
    rows, errors = sessions_many(select(inv, _selector(hosts, all_)), _records(c))
    _rows_out(json_, "sessions", rows, sessions_table(rows), errors)


@fleet_task(help={"hosts": HOSTS_HELP + " Default: hosts with an OpenCode server.", "all": "Every host.",
                  "inventory": "Inventory file.", "json": "One JSON object per change, one per line (for scripts).",
                  "duration": "Stop after this many seconds (default: until Ctrl-C)."})
def watch(c, hosts=None, all_=False, inventory=None, json_=False, duration=None):
    """A live board of every agent: state, current step, what it asks for. Ctrl-C ends it."""
    import json as _json
    import threading
    import time

    from fleet.cli.render import Colors, watch_board, watch_line
    from fleet.inventory.select import select
    from fleet.ops.watch import Watcher

    inv = _inventory(c, inventory)
    stall = _settings(c).stall_timeout
    limit = _num("--duration", duration, 0.0)
    tty = sys.stdout.isatty() and not json_
    lock = threading.Lock()
    holder: dict = {}

    def draw() -> None:
        if "w" in holder:
            import shutil
            size = shutil.get_terminal_size((120, 40))
            board = watch_board(holder["w"].rows(stall), Colors(), size=(size.columns, size.lines))
            # home, each line over the old one (cleared to its end), then clear below: no flicker
            sys.stdout.write("\x1b[H" + "".join(line + "\x1b[K\n" for line in board.splitlines()) + "\x1b[J")
            sys.stdout.flush()

    def on_change(row) -> None:
        with lock:
            if json_:
                print(_json.dumps(row, sort_keys=True), flush=True)
            elif not tty:
                print(watch_line(row), flush=True)
            else:
                draw()
    w = Watcher(select(inv, _selector(hosts, all_)), on_change, _records(c))
    holder["w"] = w
    t0 = time.monotonic()
    try:
        w.start()
        while not limit or time.monotonic() - t0 < limit:
            time.sleep(1.0 if not limit else max(0.05, min(1.0, limit - (time.monotonic() - t0))))
            if tty:
                with lock:
                    draw()  # the ages move, and a quiet busy session turns stuck
    except KeyboardInterrupt:
        pass
    finally:
        w.close()


@fleet_task(help={"inventory": "Inventory file (its slack: channel and allowed_users).",
                  "interval": "Seconds between reads of the threads (default 5).",
                  "duration": "Stop after this many seconds (default: until Ctrl-C).",
                  "json": "One JSON object per action, one per line."})
def listen(c, inventory=None, interval=None, duration=None, json_=False):
    """Act on replies in each open dispatch's Slack thread: stop, approve, deny, status (allowed users only)."""
    import json as _json
    import time

    from fleet.errors import BadInput
    from fleet.ops.beads import Beads
    from fleet.ops.listen import Listener

    inv = _inventory(c, inventory)
    token = os.environ.get(inv.slack.token_env) if inv.slack else None
    if inv.slack is not None and not token:
        raise BadInput(f"${inv.slack.token_env} is not set: export the Slack bot token to listen")
    trail = _trail(c, inv)
    limit = _num("--duration", duration, 0.0)
    t0 = time.monotonic()
    try:
        lst = Listener(inv, trail, token or "", _records(c), Beads())
        if not inv.slack.allowed_users:
            print("listen: slack.allowed_users is empty: every reply will be refused", file=sys.stderr)
        lst.run(_num("--interval", interval, 5.0, positive=True),
                until=(lambda: time.monotonic() - t0 >= limit) if limit else None,
                on_action=lambda a: print(_json.dumps(a, sort_keys=True) if json_ else
                                          f"{a['dispatch_id']}: {a['command'] or '-'} by {a['by']}: {a['outcome']}",
                                          flush=True))
    except KeyboardInterrupt:
        pass
    finally:
        trail.close()


@fleet_task(help={"hosts": HOSTS_HELP, "all": "Every host.", "inventory": "Inventory file.",
                  "json": "One JSON document."})
def status(c, hosts=None, all_=False, inventory=None, json_=False):
    """Health and version of each host's OpenCode server."""
    from fleet.cli.render import status_table
    from fleet.inventory.select import select
    from fleet.ops.sessions import server_statuses

    inv = _inventory(c, inventory)
    res = server_statuses(select(inv, _selector(hosts, all_)))
    if json_:
        _emit({"servers": res})
    else:
        print(status_table(res))
    if not all(r["healthy"] for r in res):
        raise Exit(code=1)


@fleet_task(help={"hosts": HOSTS_HELP, "all": "Every host.", "confirm": "The token printed by the refused run.",
                  "mode": "off | canary | enforced.", "inventory": "Inventory file.", "json": "One JSON document."})
def teardown(c, hosts=None, all_=False, confirm=None, mode=None, inventory=None, json_=False):
    """Abort running agent sessions and delete the ones fleet created (gated: --confirm)."""
    from fleet.cli.render import teardown_lines
    from fleet.ops.sessions import teardown as do_teardown

    st = _settings(c)
    inv = _inventory(c, inventory)
    trail = _trail(c, inv)
    try:
        out = do_teardown(inv, _selector(hosts, all_, default=None), args={}, mode=mode, confirm=confirm,
                          settings=st, audit=trail.gate_event, records=_records(c), audit_trail=trail)
    finally:
        trail.close()
    if json_:
        _emit({"teardown": out})
    else:
        print(teardown_lines(out))
    if any(r.get("error") for r in out):
        raise Exit(code=1)


# ------------------------------------------------------------------------ audit

@fleet_task(help={"inventory": "Inventory file (for the Slack channel).", "max_wait":
                  "Most seconds to spend waiting out Slack rate limits (default 300).",
                  "retry_failed": "Also try again the events Slack refused for good (e.g. msg_too_long)."})
def audit_replay(c, inventory=None, max_wait=None, retry_failed=False):
    """Deliver pending journal events to their Slack channel, in order, exactly once."""
    from fleet.audit.trail import replay

    st = _settings(c)
    inv = _inventory(c, inventory)
    token = os.environ.get(inv.slack.token_env) if inv.slack else None
    rep = replay(st.path("journal"), inv.slack, token, _num("--max-wait", max_wait, 300.0),
                 retry_failed=retry_failed)
    for t in rep.torn:
        print(f"journal: set aside a torn line: {t[:80]!r}", file=sys.stderr)
    print(f"delivered {rep.delivered}, pending {rep.pending}" + (f" ({rep.stopped})" if rep.stopped else ""))
    if rep.pending:
        raise Exit(code=1)


@fleet_task(help={"lines": "How many events (default 20).", "json": "One JSON document."})
def audit_tail(c, lines=None, json_=False):
    """Print the last journal events."""
    from fleet.audit.journal import Journal
    from fleet.cli.render import format_events

    j = Journal(_settings(c).path("journal")).load()
    ev = j.events[-_num("--lines", lines, 20, int, 1):]
    if json_:
        _emit({"events": ev, "pending": len(j.pending()), "failed": j.failed, "torn": j.torn,
               "skipped": j.skipped})
    else:
        print(format_events(ev, j.delivered, j.failed))
        if j.skipped:
            print(f"journal: skipped {j.skipped} line(s) of an unknown shape", file=sys.stderr)


@fleet_task(name="show", positional=["dispatch_id"], help={"dispatch_id": "The dispatch id (dx-...).",
                                                             "json": "One JSON document."})
def audit_show(c, dispatch_id, json_=False):
    """Print every journal event of one dispatch."""
    from fleet.audit.journal import Journal
    from fleet.cli.render import format_events
    from fleet.errors import BadInput

    j = Journal(_settings(c).path("journal")).load()
    ev = [e for e in j.events if e.get("dispatch_id") == dispatch_id]
    if not ev:
        raise BadInput(f"no events for dispatch '{dispatch_id}' in the journal: see 'inv audit.tail'")
    if json_:
        _emit({"events": ev})
    else:
        print(format_events(ev, j.delivered, j.failed))


# ------------------------------------------------------------------------ collection

ns = Collection()
for _t in (preflight, fanout, retry, blow_away, dispatch, wait, abort, approve, deny, answer, sessions, watch, listen,
           status, teardown, mcp):
    ns.add_task(_t)
for _name, _tasks in (("inventory", {"check": inventory_check, "show": inventory_show, "import": inventory_import}),
                      ("lab", {"up": lab_up, "down": lab_down}),
                      ("audit", {"replay": audit_replay, "tail": audit_tail, "show": audit_show}),
                      ("worktrees", {"list": worktrees_list, "remove": worktrees_remove}),
                      ("token", {"list": token_list, "revoke": token_revoke})):
    _sub = Collection(_name)
    for _n, _t in _tasks.items():
        _sub.add_task(_t, name=_n, default=(_name, _n) == ("worktrees", "list"))
    ns.add_collection(_sub)

# Every key is None here: Invoke then passes INVOKE_FLEET_* values through as text (it cannot
# cast text to a list, and would raise a traceback on a bad number), and Settings checks them.
ns.configure({"fleet": {k: None for k in asdict(Settings())}})

"""Tasks of the agent plane: dispatch, wait, sessions, watch, approve/deny/answer, abort,
status, teardown, and the Slack listener."""
from __future__ import annotations

import sys
from typing import Any

from invoke import Exit

from fleet.cli.common import HOSTS_HELP, app, emit, fleet_task, rows_out, say_audit, selector
from fleet.settings import flag_or as num

DISPATCH_HELP = {
    "host": "The host whose agent gets the task (default: the inventory's default_host).",
    "hosts": HOSTS_HELP + " Dispatches to each in parallel.", "all": "Every host with an OpenCode server.",
    "repo": "Repo name: the task runs in that repo's directory on the host (inventory repos).",
    "task": "The task text sent to the agent.",
    "session": "Resume this session instead of creating one (one host only).",
    "no_wait": "Send the task and return; do not wait for the answer.",
    "issue": "Beads issue to claim for the host first (one host only).",
    "model": "provider/model for this task (default: the server's).",
    "timeout": "Seconds to wait for the agent (default: the 'dispatch_timeout' setting).",
    "mode": "off | canary | enforced.", "canary": "Host whose agent must succeed before the rest get the task.",
    "no_canary": "Canary mode without a canary: every host gets the task at once.",
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
    "allow": "PERMISSION[:PATTERN] the new session may use without asking, e.g. 'bash:make *' (repeatable); "
             "the session's own rules win over the server's config.",
    "deny": "PERMISSION[:PATTERN] the new session may never use, e.g. 'bash:git push*' or webfetch (repeatable; "
            "a deny wins over an allow).",
    "ask": "PERMISSION[:PATTERN] the new session must ask a person for (needs-input), e.g. edit (repeatable).",
    "max_cost": "Stop the agent (journaled) when its turn, subagents included, has cost more than this many USD.",
    "max_tokens": "Stop the agent (journaled) when its turn, subagents included, has used more than this many tokens.",
}


@fleet_task(help=DISPATCH_HELP, iterable=["allow", "deny", "ask"])
def dispatch(c, repo=None, task=None, host=None, hosts=None, all_=False, session=None, no_wait=False, issue=None,
             model=None, timeout=None, mode=None, canary=None, confirm=None, json_=False, inventory=None,
             no_slack=False, on_permission=None, worktree=False, base=None, retry_failed=False, no_canary=False,
             allow=None, deny=None, ask=None, max_cost=None, max_tokens=None):
    """Hand a task to the OpenCode agent on a host (or many) and follow it to the end."""
    from fleet.cli.live import DispatchLive
    from fleet.errors import BadInput
    from fleet.ops import dispatch as dx

    fl = app(c, inventory)
    if retry_failed:
        if repo or task or host or hosts or all_ or session:
            raise BadInput("--retry-failed sends the last dispatch's task to its hosts that did not get it "
                           "done: drop --repo, --task, --host/--hosts/--all and --session")
        last, again, skipped = dx.retry_targets(fl.settings)
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
    if sum(bool(x) for x in (host, hosts, all_)) > 1:
        raise BadInput("give one of --host NAME, --hosts SELECTOR or --all")
    if not repo:
        raise BadInput("give the repo: --repo NAME (its path on each host comes from the inventory's repos)")
    if not task or not task.strip():
        raise BadInput('give the task text, e.g. --task "Run make test"')
    sel: str | None
    if all_:
        sel, left_out = fl.agent_hosts()
        if left_out:
            print(f"note: --all: {len(left_out)} host(s) without an OpenCode server left out: "
                  f"{', '.join(left_out)}", file=sys.stderr)
    else:
        sel = host or hosts or fl.inventory.default_host
    if not sel:
        raise BadInput("choose the host with --host NAME (the inventory has no default_host)")
    trail = fl.trail(slack=not no_slack)
    live = DispatchLive(json_, sel != host)
    journal = fl.settings.path("journal")

    def follower(did: str) -> str | None:
        from fleet.serve.follow import service_follows
        return service_follows(journal)  # else dispatch starts a follower of its own
    try:
        run = fl.dispatch(sel, repo, task, mode=mode, confirm=confirm, canary=canary, no_canary=no_canary,
                          session=session, model=model, issue=issue, wait=not no_wait, timeout=timeout,
                          worktree=bool(worktree) or None, base=base, on_permission=on_permission or "ask",
                          on_event=live, trail=trail, allow=allow or (), deny=deny or (), ask=ask or (),
                          max_cost=max_cost, max_tokens=max_tokens, follower=follower)
    finally:
        live.close()
        trail.close()
    _dispatch_out(run, json_, trail)


def _dispatch_out(run: Any, json_: bool, trail: Any) -> None:
    """A dispatch run (dispatch, wait): JSON or the report and the audit line; its exit status."""
    from fleet.cli.agent_render import dispatch_json, dispatch_report

    if json_:
        emit(dispatch_json(run))
    else:
        print(dispatch_report(run))
        say_audit(trail)
    if run.exit_code:
        raise Exit(code=run.exit_code)


@fleet_task(help={"host": "Host whose agent to stop (default: the host fleet's records know the session from).",
                  "session": "Session id to abort.",
                  "all_sessions": "Abort every busy session on the host.", "reason": "Why (journal, Slack, Beads).",
                  "inventory": "Inventory file.", "json": "One JSON document.", "no_slack": "Journal only."})
def abort(c, host=None, session=None, all_sessions=False, reason="aborted by operator", inventory=None, json_=False,
          no_slack=False):
    """Stop a running agent session and check it stopped (marks its Beads issue blocked)."""
    from fleet.cli.agent_render import abort_line
    from fleet.cli.render import cell

    h, done = app(c, inventory).abort(session, host=host, all_sessions=all_sessions, reason=reason,
                                      slack=not no_slack)
    if json_:
        emit({"host": h.name, "aborted": list(done), "notes": list(getattr(done, "notes", []))})
    else:
        print(abort_line(h.name, done))
        for n in getattr(done, "notes", []):
            print(f"note: {cell(n)}", file=sys.stderr)


@fleet_task(help={"session": "The session to follow (one host).", "dispatch": "Every session of this dispatch id.",
                  "host": "The session's host (default: the one fleet's records or the servers know it from).",
                  "hosts": HOSTS_HELP + " With --dispatch: where to look when this machine has no record of it.",
                  "timeout": "Seconds to wait (default: the 'dispatch_timeout' setting).",
                  "on_permission": "When the agent asks a permission: ask (say needs-input, keep waiting), allow or deny.",
                  "inventory": "Inventory file.", "json": "One JSON document.", "no_slack": "Journal only."})
def wait(c, session=None, dispatch=None, host=None, hosts=None, timeout=None, on_permission="ask", inventory=None,
         json_=False, no_slack=False):
    """Follow agents already at work (a --no-wait dispatch) to the end of their turn, and review it."""
    from fleet.cli.live import DispatchLive
    from fleet.errors import BadInput

    if bool(session) == bool(dispatch):
        raise BadInput("say what to wait for: --session ID (one agent) or --dispatch ID (every agent of a dispatch)")
    fl = app(c, inventory)
    trail = fl.trail(slack=not no_slack)
    live = DispatchLive(json_, not session)
    try:
        run = fl.wait(session=session, dispatch_id=dispatch, host=host, hosts=hosts, timeout=timeout,
                      on_permission=on_permission, on_event=live, trail=trail)
    finally:
        live.close()
        trail.close()
    _dispatch_out(run, json_, trail)


ANSWER_HELP = {"host": "Host of the session (default: from fleet's records).", "session": "The waiting session.",
               "inventory": "Inventory file.", "json": "One JSON document."}


def _answered(h: Any, session: str, reply: str, done: list[str], json_: bool) -> None:
    if json_:
        emit({"host": h.name, "session": session, "reply": reply, "answered": done})
    else:
        print(f"{h.name}: {reply} for session {session}: {'; '.join(done)}")


@fleet_task(help=dict(ANSWER_HELP, always="Approve this and matching requests from now on."))
def approve(c, session, host=None, always=False, inventory=None, json_=False):
    """Approve the permission an agent waits on (needs-input in sessions and dispatch)."""
    reply = "always" if always else "once"
    h, done = app(c, inventory).answer_permission(session, reply, host=host)
    _answered(h, session, reply, done, json_)


@fleet_task(help=dict(ANSWER_HELP, message="Tell the agent why (it reads this)."))
def deny(c, session, host=None, message=None, inventory=None, json_=False):
    """Reject the permission an agent waits on."""
    h, done = app(c, inventory).answer_permission(session, "reject", host=host, message=message)
    _answered(h, session, "reject", done, json_)


@fleet_task(help=dict(ANSWER_HELP, text="The answer: an option's label, or free text."))
def answer(c, session, text, host=None, inventory=None, json_=False):
    """Answer the question an agent asks (its question tool; needs-input in sessions)."""
    h, done = app(c, inventory).answer_question(session, text, host=host)
    if json_:
        emit({"host": h.name, "session": session, "answer": text, "answered": done})
    else:
        print(f"{h.name}: answered {'; '.join(done)} with {text!r}")


@fleet_task(help={"hosts": HOSTS_HELP + " Default: hosts with an OpenCode server.", "all": "Every host.",
                  "inventory": "Inventory file.", "json": "One JSON document."})
def sessions(c, hosts=None, all_=False, inventory=None, json_=False):
    """What each host's agent is doing: sessions, busy/idle/retry, titles, age."""
    from fleet.cli.agent_render import sessions_table
    from fleet.ops.canary_rest import held_rows
    from fleet.serve.board import sessions_via_service

    fl = app(c, inventory)
    sel = selector(hosts, all_)
    chosen = fl.select(sel)
    served = sessions_via_service(fl, chosen)  # a running fleet serve's live board, if it is this world's
    rows, errors = served if served is not None else fl.sessions(sel)
    # hosts of a --no-wait canary dispatch that wait for the canary, or were not sent: no session yet
    rows = list(rows) + held_rows(fl.settings.path("journal"), [h.name for h in chosen])
    if json_:
        emit({"sessions": [r.to_dict() for r in rows], "errors": errors,
              "source": "service" if served is not None else "servers"})
        if errors:
            raise Exit(code=1)
        return
    none = not any(h.opencode for h in chosen)
    rows_out(False, "sessions", rows, sessions_table(rows), errors,
             "no selected host has an OpenCode server (opencode: in the inventory)" if none else
             "no sessions on the selected hosts")


@fleet_task(help={"hosts": HOSTS_HELP, "all": "Every host.", "inventory": "Inventory file.",
                  "json": "One JSON document."})
def status(c, hosts=None, all_=False, inventory=None, json_=False):
    """Health and version of each host's OpenCode server."""
    from fleet.cli.agent_render import status_table

    res = app(c, inventory).status(selector(hosts, all_))
    if json_:
        emit({"servers": res})
    else:
        print(status_table(res))
        if not res:
            print("note: no selected host has an OpenCode server (opencode: in the inventory)", file=sys.stderr)
    if not all(r["healthy"] for r in res):
        raise Exit(code=1)


@fleet_task(help={"hosts": HOSTS_HELP, "all": "Every host.", "confirm": "The token printed by the refused run.",
                  "mode": "off | canary | enforced.", "canary": "Host torn down first in canary mode.",
                  "inventory": "Inventory file.", "json": "One JSON document."})
def teardown(c, hosts=None, all_=False, confirm=None, mode=None, canary=None, inventory=None, json_=False):
    """Abort running agent sessions and delete the ones fleet created (gated: --confirm)."""
    from fleet.cli.agent_render import teardown_lines

    fl = app(c, inventory)
    trail = fl.trail()
    try:
        out = fl.teardown(selector(hosts, all_, default=None), mode=mode, confirm=confirm, canary=canary,
                          trail=trail)
    finally:
        trail.close()
    if json_:
        emit({"teardown": [r.to_dict() for r in out]})
    else:
        print(teardown_lines(out))
    if not all(r.ok for r in out):
        raise Exit(code=1)


@fleet_task(help={"hosts": HOSTS_HELP + " Default: hosts with an OpenCode server.", "all": "Every host.",
                  "inventory": "Inventory file.", "json": "One JSON object per change, one per line (for scripts).",
                  "duration": "Stop after this many seconds (default: until Ctrl-C)."})
def watch(c, hosts=None, all_=False, inventory=None, json_=False, duration=None):
    """A live board of every agent: state, current step, what it asks for. Ctrl-C ends it."""
    import json as _json
    import threading
    import time

    from fleet.cli.live import watch_board, watch_line
    from fleet.cli.render import Colors
    from fleet.ops.watch import Watcher

    fl = app(c, inventory)
    stall = fl.settings.stall_timeout
    limit = num("--duration", duration, 0.0)
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

    def on_change(row: Any) -> None:
        with lock:
            if json_:
                print(_json.dumps(row, sort_keys=True), flush=True)
            elif not tty:
                print(watch_line(row), flush=True)
            else:
                draw()
    from fleet.serve.board import watch_via_service

    chosen = fl.select(selector(hosts, all_))
    w: Any = (watch_via_service(fl, chosen, on_change, lambda: Watcher(chosen, on_change, fl.records))
              or Watcher(chosen, on_change, fl.records))  # a running fleet serve's board, else the servers
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
                  "interval": "Seconds between reads of the threads when polling (default 5).",
                  "duration": "Stop after this many seconds (default: until Ctrl-C).",
                  "json": "One JSON object per action, one per line."})
def listen(c, inventory=None, interval=None, duration=None, json_=False):
    """Act on replies and button clicks in each open dispatch's Slack thread (allowed users only):
    stop, continue/retry, approve, deny, answer, status. Socket Mode with $SLACK_APP_TOKEN, else polling."""
    import json as _json
    import os
    import time

    from fleet.errors import BadInput
    from fleet.ops.listen import Listener

    fl = app(c, inventory)
    inv = fl.inventory
    if inv.slack is None:
        raise BadInput(f"the inventory {inv.path} has no slack: section (channel, token_env, allowed_users): "
                       f"add one to listen")
    token = os.environ.get(inv.slack.token_env)
    if not token:
        raise BadInput(f"${inv.slack.token_env} is not set: export the Slack bot token (xoxb-...) to listen")
    app_env = getattr(inv.slack, "app_token_env", None) or "SLACK_APP_TOKEN"
    limit = num("--duration", duration, 0.0)
    every = num("--interval", interval, 5.0, positive=True)
    deadline = time.monotonic() + limit if limit else None
    trail = fl.trail()
    try:
        lst = Listener(inv, trail, token, fl.records, fl.beads(), app_token=os.environ.get(app_env) or None,
                       app_token_env=app_env)
        if not inv.slack.allowed_users:
            print("listen: slack.allowed_users is empty: every reply and click will be refused", file=sys.stderr)
        lst.run(every, deadline=deadline,
                on_action=lambda a: print(_json.dumps(a, sort_keys=True) if json_ else
                                          f"{a['dispatch_id']}: {a['command'] or '-'} by {a['by']}: {a['outcome']}",
                                          flush=True))
    except KeyboardInterrupt:
        pass
    finally:
        trail.close()

"""``dx-dispatch VM REPO TASK [--session ID] [--slack|--no-slack] [--all]``: the seed's command.

Same semantics as the seed's script, on fleet's application context (the same settings, gate,
audit and records as ``fleet dispatch``): Slack audit on by default (``--no-slack`` or
``SLACK_AUDIT=false`` to skip), ``--all`` dispatches to every host with an OpenCode server in
parallel (then the arguments are REPO TASK).
"""
from __future__ import annotations

import argparse
import os
import sys

from fleet.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, FleetError


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dx-dispatch`` console script."""
    ap = argparse.ArgumentParser(prog="dx-dispatch", description="Dispatch a task to a remote OpenCode agent.")
    ap.add_argument("args", nargs="+", help="VM REPO TASK (or REPO TASK with --all)")
    ap.add_argument("--session", help="resume this session")
    ap.add_argument("--slack", action="store_true", help="post to the Slack audit channel (the default)")
    ap.add_argument("--no-slack", action="store_true", help="journal only, no Slack")
    ap.add_argument("--all", action="store_true", help="every host with an OpenCode server, in parallel")
    ap.add_argument("--inventory", help="inventory file (default: $FLEET_INVENTORY, else the 'inventory' setting)")
    ap.add_argument("--no-wait", action="store_true", help="send and return")
    ap.add_argument("--mode", help="off | canary | enforced (default: the 'mode' setting)")
    ap.add_argument("--no-canary", action="store_true", help="canary mode without a canary: every host at once")
    ap.add_argument("--worktree", action="store_true", help="work in a new git worktree on the host")
    ap.add_argument("--confirm", help="confirmation token printed by a refused gated run")
    a = ap.parse_args(argv)
    want = 2 if a.all else 3
    if len(a.args) != want:
        ap.print_usage(sys.stderr)
        print(f"dx-dispatch: expected {'REPO TASK' if a.all else 'VM REPO TASK'}, got {len(a.args)} argument(s)",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    vm, repo, task = (None, *a.args) if a.all else a.args
    slack = not a.no_slack and os.environ.get("SLACK_AUDIT", "true").lower() != "false"
    try:
        from fleet.app import Fleet

        fl = Fleet(a.inventory, face="cli")
        sel = fl.agent_hosts()[0] if a.all else vm

        def ev(host: str, kind: str, text: str) -> None:
            if kind == "session":
                print(f"{host}: session {text}", file=sys.stderr, flush=True)
        from fleet.cli.common import say_audit

        trail = fl.trail(slack)
        try:
            run = fl.dispatch(sel, repo, task, mode=a.mode, confirm=a.confirm, no_canary=a.no_canary,
                              session=a.session, wait=not a.no_wait, worktree=a.worktree or None, on_event=ev,
                              slack=slack, trail=trail)
        finally:
            say_audit(trail)  # closes it; says when a requested Slack audit cannot happen
        for r in run.results:
            line = f"[{r.host}] {r.outcome.value} session={r.session_id or '-'} {r.duration_ms / 1000:.1f}s"
            print(line + (f": {r.error}" if r.error else ""))
            if r.answer:
                print(r.answer)
        return run.exit_code
    except FleetError as exc:
        print(f"dx-dispatch: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())

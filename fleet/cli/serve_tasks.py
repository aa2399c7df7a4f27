"""Tasks of the service: ``fleet serve`` (run, status, stop) and ``fleet service.install``."""
from __future__ import annotations

import sys
import time

from invoke import Exit

from fleet.cli.common import app, emit, fleet_task, prog
from fleet.settings import flag_or as num


@fleet_task(positional=["action"], help={
    "action": "Nothing to run the service in the foreground; 'status' or 'stop' for the running one.",
    "inventory": "The inventory whose dispatches it follows (default: $FLEET_INVENTORY, then the setting).",
    "idle_exit": "Exit after this many seconds without a call and with no dispatch open (default: never).",
    "json": "status: one JSON document."})
def serve(c, action="", inventory=None, idle_exit=None, json_=False):
    """fleet's long-lived service: warm SSH connections for every face, every open dispatch followed."""
    from fleet.errors import BadInput
    from fleet.serve import client, server

    fl = app(c, inventory)
    journal = fl.settings.path("journal")
    if action in ("", "run"):
        from fleet.cli.served import run_call
        from fleet.workers import keep_threads

        keep_threads()  # a long-lived process: its runs reuse worker threads
        server.run(fl.settings, fl._inventory_arg if isinstance(fl._inventory_arg, str) else None,
                   idle_exit=num("--idle-exit", idle_exit, 0.0), served=run_call)
        return
    if action == "status":
        st = client.status(journal)
        if st is None:
            if json_:
                emit({"running": False})
            else:
                print(f"fleet serve: not running for this state directory ({journal})")
            raise Exit(code=1)
        s = st.get("status", {})
        if json_:
            emit({"running": True, **s})
            return
        print(f"fleet serve: running, pid {s['pid']}, version {s['version']}, since "
              f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(s['since']))}, {s['calls']} call(s), "
              f"{s['warm']} warm connection(s), following {len(s['following'])} dispatch(es)"
              + (f": {', '.join(s['following'])}" if s["following"] else ""))
        lease = s.get("lease")
        if lease:
            exp = lease.get("expires") or 0
            print(f"  orchestrator lease {lease['path']}: " + ("held by this service" if lease.get("mine") else
                  f"held by {lease.get('holder')}") + (f" since {time.strftime('%H:%M:%S', time.localtime(lease['since']))}"
                                                      if lease.get("since") else "")
                  + f", expires {time.strftime('%H:%M:%S', time.localtime(exp))}")
        else:
            print("  no shared lease: another machine's service would not be seen (setting 'lease')")
        for e in s.get("errors") or ():
            print(f"  recent trouble: {e}")
        return
    if action == "stop":
        done = client.call(journal, {"op": "stop"})
        if done is None:
            print("fleet serve: not running", file=sys.stderr)
            raise Exit(code=1)
        print("fleet serve: stopped")
        return
    raise BadInput(f"'{action}' is not something {prog()} serve does: write '{prog()} serve' (run), "
                   f"'{prog()} serve status' or '{prog()} serve stop'")


@fleet_task(name="install", help={"dry_run": "Print the unit file instead of writing it.",
                                  "inventory": "The inventory the service follows (written into the unit)."})
def service_install(c, dry_run=False, inventory=None):
    """Write a systemd user unit (launchd plist on macOS) that runs 'fleet serve', and say how to enable it."""
    from fleet.serve.unit import install

    path, text, how = install(inventory, dry_run=bool(dry_run))
    if dry_run:
        sys.stdout.write(text)
        return
    print(f"wrote {path}")
    print(how)

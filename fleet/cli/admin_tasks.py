"""Tasks around the work: the inventory, settings, confirmation tokens, the audit journal, the
local lab, and the MCP face."""
from __future__ import annotations

import os
import sys

from invoke import Exit

from fleet.cli.common import HOSTS_HELP, app, emit, fleet_task, prog, selector
from fleet.settings import flag_or as num

# ------------------------------------------------------------------------ inventory


@fleet_task(help={"inventory": "Inventory file (default: $FLEET_INVENTORY, then the 'inventory' setting: "
                               "./inventory.yaml in a project, else ~/.config/fleet/inventory.yaml)."})
def inventory_check(c, inventory=None):
    """Validate the inventory and print a one-line summary (exit 2 on any error)."""
    from fleet.cli.render import inventory_summary

    print(inventory_summary(app(c, inventory).inventory))


@fleet_task(help={"hosts": HOSTS_HELP, "all": "Same as --hosts all (the default).",
                  "inventory": "Inventory file.", "json": "Print one JSON document.",
                  "resolved": "Where ssh goes for each host, as 'ssh -G NAME' says: hostname, port, user, "
                              "identity files, jump chain or ProxyCommand, the known_hosts files consulted, "
                              "ConnectTimeout, HostKeyAlias, StrictHostKeyChecking."})
def inventory_show(c, hosts=None, all_=False, inventory=None, json_=False, resolved=False):
    """Print the resolved hosts (defaults merged) as a table or JSON (--resolved: ssh_config applied)."""
    from fleet.cli.render import host_dict, hosts_table

    fl = app(c, inventory)
    chosen = fl.select(selector(hosts, all_))
    if resolved:
        from typing import Any

        from fleet.cli.render import table
        from fleet.errors import BadInput
        from fleet.ssh.config import resolved_view
        from fleet.ssh.preflight import config_for

        opts = fl.fanout_options()
        cfg = config_for(fl.inventory, opts.ssh_config)
        files = [os.path.expanduser(f) for f in (opts.user_known_hosts, fl.inventory.known_hosts) if f]
        docs: list[dict[str, Any]] = []
        for h in chosen:
            try:
                docs.append({"name": h.name, "local": True} if h.auth == "local" else
                            resolved_view(h, cfg, files, opts.connect_timeout))
            except BadInput as exc:
                docs.append({"name": h.name, "error": str(exc)})
        if json_:
            emit({"inventory": fl.inventory.path, "hosts": docs})
            return
        rows = []
        for d in docs:
            if "hostname" not in d:
                rows.append([d["name"], "-", "(runs here)" if d.get("local") else d["error"]] + ["-"] * 6)
                continue
            via = " -> ".join(j["name"] for j in d["jumps"]) or (f"proxy: {d['proxycommand']}"
                                                                 if d["proxycommand"] else "-")
            rows.append([d["name"], d["user"], f"{d['hostname']}:{d['port']}", via,
                         "default keys" if d["identityfile_default"] else ", ".join(d["identityfile"]),
                         f"{d['connect_timeout_used']:g}s" + (" (ssh_config)" if d["connecttimeout"] != "none" else ""),
                         d["hostkeyalias"] or "-", d["stricthostkeychecking"], ", ".join(d["known_hosts_consulted"])])
        print(table(rows, ["HOST", "USER", "HOSTNAME:PORT", "VIA", "IDENTITY", "CONNECT TIMEOUT", "HOSTKEYALIAS",
                           "STRICT", "KNOWN_HOSTS CONSULTED"]))
        return
    if json_:
        emit({"inventory": fl.inventory.path, "hosts": [host_dict(h) for h in chosen]})
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
        print(f"{prog()}: dropped {d}", file=sys.stderr)
    if not dropped:
        print(f"{prog()}: nothing dropped", file=sys.stderr)


@fleet_task(help={"format": "ansible (an Ansible YAML inventory) or clustershell (groups for nodeset and clush).",
                  "hosts": HOSTS_HELP + " Default: all.", "all": "Same as --hosts all (the default).",
                  "inventory": "Inventory file.",
                  "output": "ansible: write the inventory to this file; clustershell: write groups.conf, "
                            "groups.d/fleet.yaml, clush.conf (and an ssh_config) into this directory. "
                            "Default: print it."})
def inventory_export(c, format_=None, hosts=None, all_=False, inventory=None, output=None):
    """Export the inventory for Ansible or ClusterShell: the same hosts, groups, tags and aliases."""
    from fleet.errors import BadInput
    from fleet.inventory.export import FORMATS, export_inventory

    if not format_:
        raise BadInput(f"choose --format {' or --format '.join(FORMATS)}")
    fl = app(c, inventory)
    ex = export_inventory(fl.inventory, format_, selector(hosts, all_), ssh_config=fl.settings.ssh_config,
                          output=output)
    if output is None:
        sys.stdout.write(ex.text)
        return
    for path in ex.written:
        print(f"{prog()}: wrote {path}", file=sys.stderr)
    for note in ex.notes:
        print(f"{prog()}: note: {note}", file=sys.stderr)
    if ex.format == "clustershell":
        print(f"{prog()}: use it with CLUSTERSHELL_CFGDIR={output} nodeset -e @all / clush -w @GROUP CMD",
              file=sys.stderr)
    else:
        print(f"{prog()}: use it with ansible -i {output} PATTERN ...", file=sys.stderr)


# ------------------------------------------------------------------------ settings

@fleet_task(name="settings", help={"json": "One JSON document: the settings and where each came from."})
def settings_show(c, json_=False):
    """The effective settings every face uses here, and where each value came from."""
    from dataclasses import asdict

    from fleet.cli.render import table
    from fleet.settings import load_settings

    st, src = load_settings(runtime_file=getattr(c.config, "_runtime_path", None), with_sources=True)
    origin = dict(src.origin)
    values = asdict(st)
    if json_:
        emit({"settings": values, "origin": origin, "files": list(src.files), "project": src.project,
              "env": list(src.env)})
        return
    rows = [[k, ",".join(v) if isinstance(v, (list, tuple)) else str(v), origin.get(k, "default")]
            for k, v in values.items()]
    print(table(rows, ["SETTING", "VALUE", "FROM"]))


# ------------------------------------------------------------------------ tokens

@fleet_task(help={"json": "One JSON document."})
def token_list(c, json_=False):
    """List confirmation tokens issued here and their state (valid/used/expired/revoked)."""
    from fleet.cli.render import table
    from fleet.safety.tokens import TokenStore

    st = app(c).settings
    recs = TokenStore(st.token_dir, st.token_ttl).list()
    if json_:
        emit({"tokens": recs})
        return
    print(table([[r["id"], r["state"], r["operation"], ",".join(r["hosts"]), r.get("args", "")]
                 for r in recs], ["ID", "STATE", "OPERATION", "HOSTS", "ARGS"]))


@fleet_task(positional=["token"], help={"token": "The token to revoke."})
def token_revoke(c, token):
    """Revoke a confirmation token so it can never be used."""
    from fleet.safety.tokens import TokenStore

    st = app(c).settings
    rec = TokenStore(st.token_dir, st.token_ttl).revoke(token)
    print(f"revoked token {rec['id']} for '{rec['operation']}' on {','.join(rec['hosts'])}")


# ------------------------------------------------------------------------ lab

@fleet_task(help={"count": "Number of SSH hosts (default 3).", "dir": "Lab directory (default ./lab).",
                  "agents": "Also start a real 'opencode serve' for the first M hosts (default 0).",
                  "jump": "Add a jump host and reach every even host through it (ProxyJump).",
                  "rtt": "Milliseconds of round trip to add: a relay (MS/2 each way) in front of every host and "
                         "agent (default 0: none). On a running lab of the same shape, changes only that."})
def lab_up(c, count=None, dir="lab", agents=None, jump=False, rtt=None):
    """Start a local lab of real sshd hosts (and OpenCode agents) on loopback."""
    import time

    from fleet.lab import lab_up as up
    from fleet.settings import number

    t0 = time.monotonic()
    lab = up(num("--count", count, 3, int, 1), dir, num("--agents", agents, 0, int, 0), jump=bool(jump),
             rtt=0.0 if rtt is None else number("--rtt", rtt, float, 0, maximum=20000))
    n_agents = sum(1 for a in lab.agents if a.get("role") == "agent")
    via = f", through a {lab.rtt:g} ms RTT relay (pid {lab.relay_pid})" if lab.rtt else ""
    print(f"lab up: {len(lab.hosts)} hosts, {n_agents} agents{via} in {time.monotonic() - t0:.2f}s")
    rel = os.path.relpath(lab.inventory)
    shown = rel if not rel.startswith("..") else str(lab.inventory)
    print(f"inventory: {shown}")
    rel_cfg = os.path.relpath(lab.ssh_config) if lab.ssh_config else ""
    print(f"ssh_config: {rel_cfg if not rel_cfg.startswith('..') else lab.ssh_config} "
          f"(plain OpenSSH: ssh -F {rel_cfg if not rel_cfg.startswith('..') else lab.ssh_config} lab01 true)")
    print(f"try: {prog()} fanout --inventory {shown} --all true")


@fleet_task(help={"dir": "Lab directory (default ./lab)."})
def lab_down(c, dir="lab"):
    """Stop every process the lab started (by pid file)."""
    from fleet.lab import lab_down as down

    pids = down(dir)
    print(f"lab down: stopped {len(pids)} process(es)")


# ------------------------------------------------------------------------ mcp

@fleet_task(help={"inventory": "Inventory file (default: $FLEET_INVENTORY or the 'inventory' setting)."})
def mcp(c, inventory=None):
    """Serve fleet to an orchestrator agent over MCP (stdio); gated plans are confirmed by the person."""
    from fleet.cli.mcp import serve

    serve(inventory)


# ------------------------------------------------------------------------ audit

@fleet_task(help={"inventory": "Inventory file (for the Slack channel).", "max_wait":
                  "Most seconds to spend waiting out Slack rate limits (default 300).",
                  "retry_failed": "Also try again the events Slack refused for good (e.g. msg_too_long)."})
def audit_replay(c, inventory=None, max_wait=None, retry_failed=False):
    """Deliver pending journal events to their Slack channel, in order, exactly once."""
    from fleet.audit.trail import replay

    fl = app(c, inventory)
    inv = fl.inventory
    token = os.environ.get(inv.slack.token_env) if inv.slack else None
    rep = replay(fl.settings.path("journal"), inv.slack, token, num("--max-wait", max_wait, 300.0),
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

    j = Journal(app(c).settings.path("journal")).load()
    ev = j.events[-num("--lines", lines, 20, int, 1):]
    if json_:
        emit({"events": ev, "pending": len(j.pending()), "failed": j.failed, "torn": j.torn,
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

    j = Journal(app(c).settings.path("journal")).load()
    ev = [e for e in j.events if e.get("dispatch_id") == dispatch_id]
    if not ev:
        raise BadInput(f"no events for dispatch '{dispatch_id}' in the journal: see '{prog()} audit.tail'")
    if json_:
        emit({"events": ev})
    else:
        print(format_events(ev, j.delivered, j.failed))

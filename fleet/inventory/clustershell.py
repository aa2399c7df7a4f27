"""The ClusterShell half of :mod:`fleet.inventory.export`: groups for nodeset and clush.

``groups.d/fleet.yaml`` holds three group sources: ``fleet`` (the inventory's groups and
``all``), ``tag`` and ``alias``, so ``@gpu``, ``@tag:linux`` and ``@alias:mac`` select what
``@gpu``, ``tag:linux`` and ``mac`` select in fleet. clush has no per-host settings, so when
hosts state address, port, user or identity_file, a directory export also writes an
``ssh_config`` that says them per host and then includes the ssh_config fleet reads; clush.conf's
``ssh_options`` points ssh at it (or at the inventory's own ssh_config when nothing is stated).
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path

from fleet.inventory.export import (
    Export,
    _config_file,
    _dump,
    _explicit,
    _groups,
    _header,
    _known_hosts_option,
    _ssh_word,
    _tags,
)
from fleet.inventory.model import Host, Inventory
from fleet.inventory.select import select


def _ssh_config_text(inv: Inventory, hosts: list[Host], cfg: str | None) -> str | None:
    """Per-host settings the inventory states, then the ssh_config fleet reads (first value wins)."""
    lines: list[str] = []
    for h in hosts:
        ex = _explicit(h) if h.auth != "local" else {}
        if not ex:
            continue
        lines.append(f"Host {h.name}")
        if "address" in ex:
            lines.append(f"  HostName {_ssh_word(ex['address'], 'address')}")
        if "port" in ex:
            lines.append(f"  Port {ex['port']}")
        if "user" in ex:
            lines.append(f"  User {_ssh_word(ex['user'], 'user')}")
        if "identity_file" in ex:
            lines += [f"  IdentityFile {_ssh_word(ex['identity_file'], 'identity_file')}", "  IdentitiesOnly yes"]
    kh = _known_hosts_option(inv)
    if not lines and not kh:
        return None
    head = ["# ssh_config exported by 'fleet inventory.export --format clustershell' for clush (ssh -F this file).",
            "# What the inventory states for a host comes first (ssh keeps the first value it gets), then the",
            "# ssh_config fleet reads, as fleet applies them."]
    tail = ["", "Match all"]
    if cfg == "/dev/null":
        pass
    elif cfg:
        tail.append(f"Include {_ssh_word(cfg, 'ssh_config')}")
    else:
        tail += ["Include ~/.ssh/config", "Include /etc/ssh/ssh_config"]
    if kh:
        tail += ["", "Host *", "  " + kh.replace("=", " ", 1)]
    return "\n".join(head + [""] + lines + tail) + "\n"


def clustershell_groups(inv: Inventory, selector: str = "all", ssh_config: str | None = None,
                        directory: str | os.PathLike[str] | None = None) -> Export:
    """ClusterShell groups (``groups.d/fleet.yaml``) and the clush ``ssh_options`` for the hosts
    ``selector`` picks. With ``directory`` (where it will be written), also ``groups.conf``,
    ``clush.conf`` and, when hosts state connection settings, an ``ssh_config`` there."""
    hosts = select(inv, selector)
    chosen = {h.name for h in hosts}
    groups, empty = _groups(inv, chosen)
    tags = _tags(hosts)
    names: dict[str, str] = {"all": "@all"}
    names.update({f"@{g}": f"@{g}" for g in groups})
    names.update({f"tag:{t}": f"@tag:{t}" for t in tags})
    names.update({a: f"@alias:{a}" for h in hosts for a in h.aliases})
    notes: list[str] = []
    if empty:
        notes.append("left out, no exported host in them: " + ", ".join("@" + g for g in empty))
    local = [h.name for h in hosts if h.auth == "local"]
    if local:
        notes.append("auth: local hosts are reached over ssh by clush (fleet runs their commands here): "
                     + ", ".join(local))
    cfg = _config_file(inv, ssh_config)
    d = Path(directory).resolve() if directory is not None else None
    own = _ssh_config_text(inv, hosts, cfg) if d is not None else None
    if own is not None and d is not None:
        ssh_options: str | None = shlex.join(["-F", str(d / "ssh_config")])
    else:
        ssh_options = shlex.join(["-F", cfg]) if cfg else None
        stated = [h.name for h in hosts if h.auth != "local" and _explicit(h)]
        if stated:
            notes.append("clush has no per-host settings, and these hosts state address, port, user or identity_file "
                         f"in the inventory: {', '.join(stated)}; export with --output DIR for an ssh_config that "
                         "gives them")
        if inv.known_hosts:
            notes.append(f"known_hosts {inv.known_hosts}: add -o '{_known_hosts_option(inv)}' to ssh_options "
                         "(or export with --output DIR)")
    doc = {"fleet": {"all": ",".join(h.name for h in hosts), **{g: ",".join(m) for g, m in groups.items()}},
           "tag": {t: ",".join(m) for t, m in tags.items()},
           "alias": {a: h.name for h in hosts for a in h.aliases}}
    opt_line = f"ssh_options: {ssh_options}" if ssh_options else "no ssh_options needed (ssh reads ~/.ssh/config)"
    head = _header(inv, "ClusterShell groups", selector) + [
        "# Sources: fleet (its groups and all), tag, alias: @gpu, @tag:linux and @alias:mac select in nodeset and",
        "# clush what @gpu, tag:linux and mac select in fleet (with groups.conf 'default: fleet'; else @fleet:gpu).",
        "# A nodeset is read left to right and '!x' alone is an error: write fleet's '!x,@gpu' as '@gpu!x', '!x' as '@all!x'.",
        f"# clush.conf [Main]: {opt_line}",
    ] + [f"# note: {n}" for n in notes]
    groups_text = "\n".join(head) + "\n" + _dump(doc)
    files = {"groups.d/fleet.yaml": groups_text}
    if d is not None:
        files["groups.conf"] = ("# Written by 'fleet inventory.export --format clustershell'. Use this directory with\n"
                                "# CLUSTERSHELL_CFGDIR=DIR (or nodeset/clush --groupsconf DIR/groups.conf).\n"
                                "[Main]\ndefault: fleet\nautodir: $CFGDIR/groups.d\n")
        files["clush.conf"] = ("# Written by 'fleet inventory.export --format clustershell' (CLUSTERSHELL_CFGDIR=DIR).\n[Main]\n"
                               + (f"ssh_options: {ssh_options}\n" if ssh_options else "# no ssh_options needed\n"))
        if own is not None:
            files["ssh_config"] = own
    return Export("clustershell", groups_text, files, names, tuple(notes), ssh_options, tuple(h.name for h in hosts))

"""Export the inventory for other tools: an Ansible YAML inventory, or ClusterShell groups.

The same hosts, groups, tags and aliases, so the selector a person writes for fleet has an
equivalent pattern there (:meth:`Export.pattern` writes it). Connection settings are only what
the inventory itself states (address, port, user, identity_file); everything else comes from
ssh_config, which ssh applies on top as it does for ``ssh NAME`` and as fleet does: the
inventory's ``ssh_config`` file is passed on as ``-F FILE``. No I/O but :func:`write_export`.

- **ansible**: fleet groups become groups (``@gpu`` -> ``gpu``), tags become ``tag_<tag>``
  groups, aliases one-host groups; ``auth: local`` hosts get ``ansible_connection: local``.
  Names Ansible rejects (anything but letters, digits and ``_``, or a leading digit) and names
  that would clash are renamed, and the file says how in a comment.
- **clustershell**: a YAML group file (``groups.d/fleet.yaml``) with three group sources:
  ``fleet`` (the groups and ``all``), ``tag`` and ``alias``, so ``@gpu``, ``@tag:linux`` and
  ``@alias:mac`` select what ``@gpu``, ``tag:linux`` and ``mac`` select in fleet. Written to a
  directory it also gets a ``groups.conf`` (default source ``fleet``), a ``clush.conf`` with the
  ``ssh_options`` line, and, when hosts state connection settings, an ``ssh_config`` that gives
  them per host (clush has no per-host settings) and then includes the ssh_config fleet reads.
  That half is :mod:`fleet.inventory.clustershell`.
"""
from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from fleet.errors import BadInput
from fleet.files import write_atomic
from fleet.inventory.model import Host, Inventory
from fleet.inventory.select import select

FORMATS = ("ansible", "clustershell")
DEFAULT_SSH_CONFIG = "~/.ssh/config"
ANSIBLE_RESERVED = ("all", "ungrouped")  # groups every Ansible inventory has
_ANSIBLE_BAD = re.compile(r"[^A-Za-z0-9_]")


@dataclass(frozen=True)
class Export:
    """One export: its files, what it prints, how fleet names map, and what it could not say."""

    format: str
    text: str                               # what is printed without --output
    files: Mapping[str, str]                # file name (relative to --output) -> content
    names: Mapping[str, str]                # fleet term (@gpu, tag:linux, mac) -> pattern word
    notes: tuple[str, ...] = ()
    ssh_options: str | None = None          # clustershell: the clush.conf ssh_options value
    hosts: tuple[str, ...] = ()             # the exported hosts, in inventory order
    written: tuple[str, ...] = field(default=())

    def pattern(self, selector: str, inv: Inventory) -> str:
        """The Ansible pattern or nodeset expression that selects what ``selector`` selects in fleet.

        Ansible applies exclusions after inclusions itself; a nodeset is read left to right, so
        every inclusion comes first. Only exclusions: ``all:!x`` / ``@all!x``.
        """
        select(inv, selector)  # fleet's own errors for a bad selector
        index = inv.names_index()
        inc: list[str] = []
        exc: list[str] = []
        for raw in selector.split(","):
            term = raw.strip()
            neg = term.startswith("!")
            if neg:
                term = term[1:].strip()
            key = "all" if term in ("all", "*") else term
            if key in self.names:
                word = self.names[key]
            elif term in index and index[term] == term and term in self.hosts:
                word = term  # a host's own name is the same word in both
            else:
                raise BadInput(f"'{term}' in selector '{selector}' names no exported host: export those hosts too")
            (exc if neg else inc).append(word)
        if not inc:
            inc = [self.names["all"]]
        if self.format == "ansible":
            return ":".join(inc + ["!" + w for w in exc])
        return ",".join(inc) + "".join("!" + w for w in exc)


# --------------------------------------------------------------------------- shared

def _tags(hosts: list[Host]) -> dict[str, list[str]]:
    tags: dict[str, list[str]] = {}
    for h in hosts:
        for t in h.tags:
            tags.setdefault(t, []).append(h.name)
    return tags


def _groups(inv: Inventory, chosen: set[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Groups restricted to the exported hosts (inventory order), and the groups left empty."""
    order = {h.name: i for i, h in enumerate(inv.hosts)}
    out: dict[str, list[str]] = {}
    empty: list[str] = []
    for g, members in inv.groups.items():
        kept = sorted((m for m in members if m in chosen), key=order.__getitem__)
        if kept:
            out[g] = kept
        else:
            empty.append(g)
    return out, empty


def _ssh_word(s: str, what: str) -> str:
    """``s`` as one word of an ssh_config line (or ``-o`` value)."""
    if '"' in s or any(ord(c) < 0x20 for c in s):
        raise BadInput(f"{what} '{s}' holds a quote or control character ssh cannot take: rename it")
    return f'"{s}"' if re.search(r"[\s#=]", s) or not s else s


def _known_hosts_option(inv: Inventory) -> str | None:
    """``UserKnownHostsFile=...``: fleet reads ~/.ssh/known_hosts and the inventory's file."""
    if not inv.known_hosts:
        return None
    return "UserKnownHostsFile=~/.ssh/known_hosts " + _ssh_word(inv.known_hosts, "known_hosts")


def _config_file(inv: Inventory, ssh_config: str | None) -> str | None:
    """The file fleet reads alone (``ssh -F``), or None for ~/.ssh/config and the system file."""
    path = inv.ssh_config or ssh_config
    if path is None:
        return None
    if path.strip() in ("", "none"):
        return "/dev/null"  # fleet then applies no ssh_config at all
    if os.path.abspath(os.path.expanduser(path)) == os.path.abspath(os.path.expanduser(DEFAULT_SSH_CONFIG)):
        return None
    return os.path.abspath(os.path.expanduser(path))


def _explicit(h: Host) -> dict[str, Any]:
    """What the inventory states for ``h`` among address, port, user and identity_file."""
    out: dict[str, Any] = {}
    if h.is_explicit("address"):
        out["address"] = h.address
    if h.is_explicit("port"):
        out["port"] = h.port
    if h.is_explicit("user") and h.user:
        out["user"] = h.user
    if h.is_explicit("identity_file") and h.identity_file:
        out["identity_file"] = h.identity_file
    return out


def _header(inv: Inventory, what: str, selector: str) -> list[str]:
    sel = "" if selector.strip() == "all" else f" --hosts '{selector}'"
    return [f"# {what} exported by 'fleet inventory.export{sel}' from {inv.path}"
            + (f" (digest {inv.digest})" if inv.digest else "") + ".",
            "# Export it again after editing the inventory; edits made here are not read back."]


class _Dumper(yaml.SafeDumper):
    """Block style, keys in the order given, an empty value for None (``host:``)."""


_Dumper.add_representer(type(None), lambda d, _v: d.represent_scalar("tag:yaml.org,2002:null", ""))


def _dump(doc: Any) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True, width=1000)


# --------------------------------------------------------------------------- ansible

def _ansible_names(inv: Inventory, hosts: list[Host], groups: Mapping[str, list[str]],
                   tags: Mapping[str, list[str]]) -> dict[str, str]:
    """fleet term -> Ansible group, each a valid group name, none equal to a host or another group."""
    taken = {h.name for h in inv.hosts} | set(ANSIBLE_RESERVED)
    names: dict[str, str] = {"all": "all"}
    wanted = ([(f"@{g}", g) for g in groups] + [(f"tag:{t}", f"tag_{t}") for t in tags]
              + [(a, a) for h in hosts for a in h.aliases])
    for term, base in wanted:
        base = _ANSIBLE_BAD.sub("_", base)
        if base[0].isdigit():
            base = "_" + base
        name, n = base, 2
        while name in taken:
            name, n = f"{base}_{n}", n + 1
        taken.add(name)
        names[term] = name
    return names


def ansible_inventory(inv: Inventory, selector: str = "all", ssh_config: str | None = None) -> Export:
    """An Ansible YAML inventory of the hosts ``selector`` picks (``ansible-inventory -i`` reads it).

    ``ssh_config``: the file fleet reads when the inventory names none (the 'ssh_config' setting).
    """
    hosts = select(inv, selector)
    chosen = {h.name for h in hosts}
    groups, empty = _groups(inv, chosen)
    tags = _tags(hosts)
    names = _ansible_names(inv, hosts, groups, tags)
    notes: list[str] = []
    renamed = [f"{t} -> {n}" for t, n in names.items()
               if n != (t[1:] if t[0] == "@" else "tag_" + t[4:] if t.startswith("tag:") else t)]
    if renamed:
        notes.append("renamed for Ansible (letters, digits and '_' only; no clash with a host or group): "
                     + ", ".join(renamed))
    if empty:
        notes.append("left out, no exported host in them: " + ", ".join("@" + g for g in empty))
    common: list[str] = []
    cfg = _config_file(inv, ssh_config)
    if cfg:
        common += ["-F", cfg]
    kh = _known_hosts_option(inv)
    if kh:
        common += ["-o", kh]
        notes.append(f"known_hosts {inv.known_hosts} is passed as -o {kh}: unlike fleet, it also wins over a "
                     "UserKnownHostsFile that ssh_config sets for a host")
    local = [h.name for h in hosts if h.auth == "local"]
    if local:
        notes.append("auth: local -> ansible_connection: local: " + ", ".join(local))
    doc_hosts: dict[str, Any] = {}
    for h in hosts:
        hv: dict[str, Any] = {}
        if h.auth == "local":
            hv["ansible_connection"] = "local"
        else:
            ex = _explicit(h)
            if "address" in ex:
                hv["ansible_host"] = ex["address"]
            if "port" in ex:
                hv["ansible_port"] = ex["port"]
            if "user" in ex:
                hv["ansible_user"] = ex["user"]
            if "identity_file" in ex:
                hv["ansible_ssh_private_key_file"] = ex["identity_file"]
                # fleet uses the inventory's identity_file alone, as IdentitiesOnly does
                hv["ansible_ssh_extra_args"] = "-o IdentitiesOnly=yes"
        doc_hosts[h.name] = hv or None
    children: dict[str, Any] = {}
    for g, members in groups.items():
        children[names[f"@{g}"]] = {"hosts": {m: None for m in members}}
    for t, members in tags.items():
        children[names[f"tag:{t}"]] = {"hosts": {m: None for m in members}}
    for h in hosts:
        for a in h.aliases:
            children[names[a]] = {"hosts": {h.name: None}}
    top: dict[str, Any] = {}
    if common:
        top["vars"] = {"ansible_ssh_common_args": shlex.join(common)}
    top["hosts"] = doc_hosts
    if children:
        top["children"] = children
    head = _header(inv, "Ansible inventory", selector) + [
        "# fleet groups are groups (@gpu -> gpu), tags are tag_<tag> groups (tag:linux -> tag_linux), aliases are",
        "# one-host groups (mac). Connection settings: only what the inventory states; ssh applies",
        "# " + (f"-F {cfg}" if cfg else "~/.ssh/config") + " on top, as for 'ssh NAME' and for fleet.",
    ] + [f"# note: {n}" for n in notes]
    text = "\n".join(head) + "\n" + _dump({"all": top})
    return Export("ansible", text, {"inventory.yaml": text}, names, tuple(notes), None, tuple(h.name for h in hosts))


# --------------------------------------------------------------------------- both

def export_inventory(inv: Inventory, fmt: str, selector: str = "all", ssh_config: str | None = None,
                     output: str | os.PathLike[str] | None = None) -> Export:
    """Export ``inv`` as ``fmt`` (ansible or clustershell); with ``output``, write it there
    (ansible: that file; clustershell: that directory) and list the paths in ``written``."""
    if fmt not in FORMATS:
        from fleet.names import did_you_mean
        hint = did_you_mean(fmt, FORMATS)
        raise BadInput(f"--format '{fmt}' is not an export format" + (f"; {hint}" if hint else "")
                       + f": write one of {', '.join(FORMATS)}")
    if fmt == "ansible":
        ex = ansible_inventory(inv, selector, ssh_config)
    else:
        from fleet.inventory.clustershell import clustershell_groups
        ex = clustershell_groups(inv, selector, ssh_config, output)
    if output is None:
        return ex
    return Export(ex.format, ex.text, ex.files, ex.names, ex.notes, ex.ssh_options, ex.hosts,
                  tuple(write_export(ex, output)))


def write_export(ex: Export, output: str | os.PathLike[str]) -> list[str]:
    """Write ``ex``: the Ansible inventory to the file ``output``, ClusterShell's files under the
    directory ``output``. Each file is replaced whole (written beside it, then renamed)."""
    out = Path(output)
    if ex.format == "ansible":
        if out.is_dir():
            raise BadInput(f"--output {output} is a directory: name the inventory file, e.g. {out / 'fleet.yaml'}")
        targets = {out: ex.files["inventory.yaml"]}
    else:
        if out.exists() and not out.is_dir():
            raise BadInput(f"--output {output} is a file: ClusterShell's export is a directory (groups.conf, "
                           "groups.d/, clush.conf); name a new or existing directory")
        targets = {out / name: text for name, text in ex.files.items()}
    written = []
    for path, text in targets.items():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, text, 0o644)
        except OSError as exc:
            raise BadInput(f"cannot write {path}: {exc.strerror or exc}; check the path and its permissions") from None
        written.append(str(path))
    return written

"""The inventory loader: YAML text -> :class:`~fleet.inventory.model.Inventory`, strictly.

Loaded strictly from YAML. Every rejection names the file, line and column, what is wrong
and what to write instead. Plain ``yaml.safe_load`` keeps the last of two duplicate keys
without a word; we walk the composed node tree instead, so duplicates (and every other
mistake) are caught with their position.

This module reads the document as a whole (sections, defaults merged into hosts, references
between hosts, groups and routes); the checks on single nodes are in :mod:`fleet.inventory.nodes`.
"""
from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

import yaml

from fleet.errors import InventoryError
from fleet.inventory.model import (
    DEFAULTS_KEYS,
    HOST_KEYS,
    SLACK_KEYS,
    SSH_FIELDS,
    TOP_KEYS,
    Host,
    Inventory,
    OpenCodeEndpoint,
    SlackSettings,
)
from fleet.inventory.nodes import _Loader, _suggest


def _merge(defaults: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    merged = dict(defaults)
    for k, v in own.items():
        if k in ("opencode", "repos") and isinstance(v, dict) and isinstance(merged.get(k), dict):
            inner = dict(merged[k])
            if k == "opencode" and ("password_env" in v or "password_file" in v):
                inner.pop("password_env", None)
                inner.pop("password_file", None)
            inner.update(v)
            merged[k] = inner
        elif k == "tags" and "tags" in merged:
            have = {d[0] for d in merged[k]}  # once: a per-tag rebuild made big alias lists quadratic
            merged[k] = tuple(merged[k]) + tuple(t for t in v if t[0] not in have)
        else:
            merged[k] = v
    return merged


MAX_INVENTORY_BYTES = 4 << 20
MAX_NESTING = 64


def max_nesting(text: str) -> int:
    """A cheap upper bound of flow nesting ('[' and '{' depth), checked before YAML recurses."""
    depth = best = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            best = max(best, depth)
        elif ch in "]}" and depth:
            depth -= 1
    return best


def _compose(text: str) -> Any:
    """The YAML node tree, by libyaml when present (about 10x faster); a text it refuses is read
    again by the pure-Python parser, whose messages are the ones fleet words its errors from."""
    fast = getattr(yaml, "CSafeLoader", None)
    if fast is not None:
        try:
            return yaml.compose(text, Loader=fast)
        except yaml.YAMLError:
            pass
    return yaml.compose(text, Loader=yaml.SafeLoader)


def load_inventory_text(text: str, path: str = "<inventory>", base_dir: Path | None = None) -> Inventory:
    """Validate inventory YAML ``text``; ``path`` is used in messages and for relative paths."""
    base = base_dir if base_dir is not None else (Path(path).resolve().parent if path != "<inventory>" else Path.cwd())
    ld = _Loader(path, base)
    if len(text) > MAX_INVENTORY_BYTES:
        raise InventoryError(f"the inventory is {len(text)} bytes, more than {MAX_INVENTORY_BYTES}", path,
                             hint="split it, or check that this is the right file")
    depth = max_nesting(text)
    if depth > MAX_NESTING:
        raise InventoryError(f"the inventory nests {depth} levels deep (at most {MAX_NESTING})", path,
                             hint="an inventory needs only a few levels: hosts -> name -> key: value")
    try:
        root = _compose(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "YAML syntax error"
        hint = "check the indentation and quoting on this line"
        if "\t" in problem or "\\t" in problem or "tab" in problem:
            hint = "indent with spaces, not tabs"
        raise InventoryError(f"invalid YAML: {problem}", path,
                             mark.line + 1 if mark else None, mark.column + 1 if mark else None,
                             hint) from None
    except yaml.YAMLError as exc:
        raise InventoryError(f"invalid YAML: {exc}", path, hint="fix the YAML syntax") from None
    except (UnicodeError, ValueError) as exc:
        raise InventoryError(f"unreadable text: {exc}", path, hint="save the file as UTF-8") from None
    if root is None:
        raise InventoryError("the inventory is empty", path, 1, 1,
                             "write a 'hosts:' mapping, e.g. hosts: {epyc6: {user: feng}}")
    top = ld.mapping(root, "the inventory")
    ld.check_keys(top, TOP_KEYS, "the inventory")
    sections = {k: (kn, v) for k, kn, v in top}
    if "hosts" not in sections:
        raise ld.fail(root, "the inventory has no 'hosts:' section",
                      "add e.g. hosts: {epyc6: {user: feng, address: epyc6.example.net}}")

    defaults: dict[str, Any] = {}
    if "defaults" in sections:
        defaults = ld.host_fields(sections["defaults"][1], "defaults", DEFAULTS_KEYS)

    hosts_node = sections["hosts"][1]
    host_pairs = ld.mapping(hosts_node, "hosts")
    if not host_pairs:
        raise ld.fail(hosts_node, "'hosts' is empty", "add at least one host, e.g. epyc6: {user: feng}")

    raw_hosts: list[tuple[str, yaml.Node, dict[str, Any]]] = []
    owner: dict[str, tuple[str, yaml.Node]] = {}
    for hname, hknode, hv in host_pairs:
        ld.name(hknode, "host name")
        if isinstance(hv, yaml.ScalarNode) and hv.tag == "tag:yaml.org,2002:null":
            own: dict[str, Any] = {}
        else:
            own = ld.host_fields(hv, f"host '{hname}'", HOST_KEYS)
        if hname in owner:
            raise ld.fail(hknode, f"host name '{hname}' is already an alias of host '{owner[hname][0]}'",
                          "rename the host or drop that alias")
        owner[hname] = (hname, hknode)
        raw_hosts.append((hname, hknode, own))
    for hname, _hknode, own in raw_hosts:
        for alias, anode in own.get("aliases", ()):
            if alias in owner:
                other = owner[alias][0]
                what = "the name" if alias == other else "an alias"
                if other == hname and alias == hname:
                    raise ld.fail(anode, f"alias '{alias}' repeats the host's own name", "drop it")
                raise ld.fail(anode, f"alias '{alias}' of host '{hname}' is already {what} of host '{other}'",
                              "give each host its own aliases")
            owner[alias] = (hname, anode)

    hosts: list[Host] = []
    for hname, hknode, own in raw_hosts:
        m = _merge(defaults, own)
        oc = None
        if "opencode" in m:
            ocd = m["opencode"]
            if "url" not in ocd:
                raise ld.fail(hknode, f"host '{hname}' has opencode settings but no url",
                              "write opencode: {url: http://HOST:4105} under the host or defaults")
            oc = OpenCodeEndpoint(url=ocd["url"], username=ocd.get("username", "opencode"),
                                  password_env=ocd.get("password_env"), password_file=ocd.get("password_file"))
        repos = m.get("repos", {})
        hosts.append(Host(
            name=hname,
            address=m.get("address", hname),
            port=m.get("port", 22),
            user=m.get("user"),
            auth=m.get("auth", "ssh-key"),
            aliases=tuple(a for a, _ in m.get("aliases", ())),
            tags=tuple(t for t, _ in m.get("tags", ())),
            identity_file=m.get("identity_file"),
            opencode=oc,
            repos_root=repos.get("root"),
            repos=dict(repos.get("paths", {})),
            explicit=frozenset(k for k in SSH_FIELDS if k in m),
        ))
    index = {k: v[0] for k, v in owner.items()}

    def ref(node: yaml.Node, what: str) -> str:
        s = str(node.value) if isinstance(node, yaml.ScalarNode) else None
        if s is None:
            raise ld.fail(node, f"{what} must be a host name")
        if s not in index:
            hint = _suggest(s, index) or f"known hosts: {', '.join(h.name for h in hosts)}"
            raise ld.fail(node, f"{what} '{s}' is not a host in this inventory", hint)
        return index[s]

    groups: dict[str, tuple[str, ...]] = {}
    if "groups" in sections:
        for gname, gk, gv in ld.mapping(sections["groups"][1], "groups"):
            ld.name(gk, "group name")
            members: list[str] = []
            if not isinstance(gv, yaml.SequenceNode):
                raise ld.fail(gv, f"group '{gname}' must be a list of hosts", f"write {gname}: [epyc6, macmini]")
            for item in gv.value:
                canon = ref(item, f"member of group '{gname}'")
                if canon not in members:
                    members.append(canon)
            groups[gname] = tuple(members)

    inv = Inventory(path=path, hosts=tuple(hosts), groups=groups)
    extra: dict[str, Any] = {}
    for key in ("default_host", "canary"):
        if key in sections:
            extra[key] = ref(sections[key][1], key)
    if "known_hosts" in sections:
        extra["known_hosts"] = ld.local_path(sections["known_hosts"][1], "known_hosts")
    if "ssh_config" in sections:
        extra["ssh_config"] = ld.local_path(sections["ssh_config"][1], "ssh_config")
    if "slack" in sections:
        sn = sections["slack"][1]
        if isinstance(sn, yaml.ScalarNode):
            extra["slack"] = SlackSettings(channel=ld.string(sn, "slack", "C09MQGMFKDE"))
        else:
            sp = ld.mapping(sn, "slack")
            ld.check_keys(sp, SLACK_KEYS, "slack", {
                "token": "never write the Slack token in a file: name its env var with token_env"})
            sd: dict[str, Any] = {}
            for key, _, v in sp:
                if key == "channel":
                    sd["channel"] = ld.string(v, "slack channel", "C09MQGMFKDE")
                elif key == "base_url":
                    sd["base_url"] = ld.string(v, "slack base_url", "https://slack.com/api/")
                    if not re.match(r"^https?://[^\s/]+", sd["base_url"]):
                        raise ld.fail(v, "slack base_url is not a URL", "write e.g. https://slack.com/api/")
                elif key == "allowed_users":
                    users = ld.str_list(v, "slack allowed_users", as_name=False)
                    for u, unode in users:
                        if not re.fullmatch(r"[UW][A-Z0-9]{2,20}", u):
                            raise ld.fail(unode, f"slack allowed_users entry '{u}' is not a Slack user id",
                                          "write the member id from the user's Slack profile, e.g. U04ABCDEF")
                    sd["allowed_users"] = tuple(u for u, _ in users)
                elif key == "app_token_env":
                    sd["app_token_env"] = ld.env_name(v, "slack app_token_env", "SLACK_APP_TOKEN")
                else:
                    sd["token_env"] = ld.env_name(v, "slack token_env", "SLACK_BOT_TOKEN")
            if "channel" not in sd:
                raise ld.fail(sn, "slack has no channel", "write slack: {channel: C09MQGMFKDE}")
            extra["slack"] = SlackSettings(**sd)
    import hashlib
    extra["digest"] = hashlib.sha256(text.encode("utf-8", errors="replace")).hexdigest()[:16]
    inv = Inventory(path=path, hosts=inv.hosts, groups=groups, **extra)
    if "routes" in sections:
        from fleet.errors import SelectorError
        from fleet.inventory.select import select
        routes: dict[str, str] = {}
        for op, _ok, rv in ld.mapping(sections["routes"][1], "routes"):
            sel = ld.string(rv, f"route for '{op}'", "'@gpu'")
            try:
                select(inv, sel)
            except SelectorError as exc:
                raise ld.fail(rv, f"route for '{op}': {exc}") from None
            routes[op] = sel
        inv = Inventory(path=path, hosts=inv.hosts, groups=groups, routes=routes, **extra)
    return inv


def load_inventory(path: str | os.PathLike[str]) -> Inventory:
    """Load and validate the inventory file at ``path``. Raises :class:`InventoryError`."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InventoryError("file not found", str(p),
                             hint=f"create {p}, or pass --inventory PATH, set FLEET_INVENTORY, or set 'inventory' under fleet: in invoke.yaml") from None
    except IsADirectoryError:
        raise InventoryError("is a directory, not a file", str(p), hint="pass the path of the YAML file") from None
    except UnicodeDecodeError:
        raise InventoryError("not UTF-8 text", str(p), hint="save the file as UTF-8") from None
    except OSError as exc:
        raise InventoryError(f"cannot read: {exc.strerror}", str(p), hint="check the path and its permissions") from None
    base = p.resolve().parent
    key = (str(p), str(base), text, os.environ.get("HOME", ""))
    got = _LOADED.get(key)
    if got is None:
        got = load_inventory_text(text, str(p), base)
        with _LOADED_LOCK:
            _LOADED[key] = got
            while len(_LOADED) > 8:
                _LOADED.pop(next(iter(_LOADED)))
    return got


# The inventories loaded in this process, by what they were made from (the file's path, its
# folder, its text and $HOME for ~): a long-lived caller (the service, a Fleet object) reads the
# file on every call and parses it again only when it changed.
_LOADED: dict[tuple[str, str, str, str], Inventory] = {}
_LOADED_LOCK = threading.Lock()


def default_inventory_path(settings: Any = None) -> str:
    """The inventory every face loads when given none: ``$FLEET_INVENTORY``, else the
    ``inventory`` setting (``inventory.yaml`` in the project, else ``~/.config/fleet/``)."""
    if os.environ.get("FLEET_INVENTORY"):
        return os.environ["FLEET_INVENTORY"]
    if settings is None:
        from fleet.settings import load_settings
        settings = load_settings()
    return str(settings.inventory)


def default_inventory() -> Inventory:
    """Load the inventory the Python API uses when none is given."""
    return load_inventory(default_inventory_path())

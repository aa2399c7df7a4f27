"""Checks on single YAML nodes: each turns one node into a typed value or a positioned error.

:class:`_Loader` knows nothing of the inventory as a whole (which sections exist, how defaults
merge, which names refer to which hosts: that is :mod:`fleet.inventory.loader`). It checks one
node at a time, a mapping without duplicate keys, a port, a plain name, a URL, a path, a host's
fields, and names the file, line and column in every rejection, with what to write instead.
"""
from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

import yaml

from fleet.errors import InventoryError
from fleet.inventory.model import _RESERVED, AUTH_MODES, OPENCODE_KEYS, REPOS_KEYS
from fleet.names import did_you_mean, is_plain_name

# A plain hostname label sequence: it can never start with '-' (an option) and never
# hold a space or a shell metacharacter.
_SHELL_SPECIAL = re.compile(r"""[$`"'\\;&|<>()*?\[\]{}!#=%^]""")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# --------------------------------------------------------------------------- helpers

_suggest = did_you_mean


class _Loader:
    def __init__(self, path: str, base_dir: Path) -> None:
        self.path = path
        self.base_dir = base_dir

    # -- errors
    def fail(self, node: yaml.Node | None, message: str, hint: str = "") -> InventoryError:
        if node is None:
            return InventoryError(message, self.path, hint=hint)
        mark = node.start_mark
        return InventoryError(message, self.path, mark.line + 1, mark.column + 1, hint)

    # -- node shapes
    def mapping(self, node: yaml.Node, what: str) -> list[tuple[str, yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping (key: value lines)",
                            f"write it as '{what.split()[-1]}:' followed by indented 'key: value' lines")
        seen: dict[str, yaml.Node] = {}
        out: list[tuple[str, yaml.Node, yaml.Node]] = []
        for knode, vnode in node.value:
            if not isinstance(knode, yaml.ScalarNode) or knode.tag == "tag:yaml.org,2002:merge":
                raise self.fail(knode, f"unsupported key in {what}",
                                "write plain keys; YAML merge keys ('<<') are not supported")
            key = str(knode.value)
            if key in seen:
                first = seen[key].start_mark
                raise self.fail(knode, f"duplicate key '{key}' in {what} (first at line {first.line + 1})",
                                "keep one of them: YAML would silently drop the first")
            seen[key] = knode
            out.append((key, knode, vnode))
        return out

    def check_keys(self, pairs: list[tuple[str, yaml.Node, yaml.Node]], allowed: tuple[str, ...],
                   what: str, extra_hint: Mapping[str, str] | None = None) -> None:
        for key, knode, _ in pairs:
            if key in allowed:
                continue
            if extra_hint and key in extra_hint:
                raise self.fail(knode, f"'{key}' is not allowed in {what}", extra_hint[key])
            hint = _suggest(key, allowed) or f"known keys: {', '.join(allowed)}"
            raise self.fail(knode, f"unknown key '{key}' in {what}", hint)

    def value(self, node: yaml.Node, what: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, f"{what} must be a single value, not a list or mapping")
        loader = yaml.constructor.SafeConstructor()  # a constructor alone: no reader or parser to set up
        try:
            return loader.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            raise self.fail(node, f"{what}: {exc}") from None
        except (ValueError, TypeError, OverflowError):
            # PyYAML's constructors raise these for a tag that does not fit its text (!!int http)
            raise self.fail(node, f"{what}: '{node.value}' does not fit its tag {node.tag}",
                            "drop the !!tag, or write a value of that type") from None

    def string(self, node: yaml.Node, what: str, example: str) -> str:
        v = self.value(node, what)
        if v is None or isinstance(v, bool):
            raise self.fail(node, f"{what} must be a string, not '{node.value}'", f"write e.g. {example}")
        s = str(node.value)
        if not s:
            raise self.fail(node, f"{what} is empty", f"write e.g. {example}")
        return s

    def name(self, node: yaml.Node, what: str) -> str:
        s = str(node.value) if isinstance(node, yaml.ScalarNode) else None
        if s is None:
            raise self.fail(node, f"{what} must be a plain name, not a list or mapping")
        if s in _RESERVED:
            raise self.fail(node, f"{what} '{s}' is reserved (it selects every host)",
                            "pick another name")
        if not is_plain_name(s):
            raise self.fail(node, f"{what} '{s}' is not a plain hostname",
                            "use letters, digits, '.', '_' and '-' only, not starting with '-' "
                            "(no spaces or shell characters), e.g. epyc6 or mac-mini")
        return s

    def str_list(self, node: yaml.Node, what: str, as_name: bool) -> tuple[tuple[str, yaml.Node], ...]:
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            return ()
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, f"{what} must be a list", f"write e.g. {what.split()[-1]}: [a, b]")
        out = []
        for item in node.value:
            if as_name:
                out.append((self.name(item, f"entry of {what}"), item))
            else:
                out.append((self.string(item, f"entry of {what}", "a-name"), item))
        return tuple(out)

    def port(self, node: yaml.Node, what: str) -> int:
        v = self.value(node, what)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65535:
            raise self.fail(node, f"{what} '{node.value}' is not a TCP port",
                            "write a whole number from 1 to 65535, e.g. port: 22")
        return v

    def url(self, node: yaml.Node, what: str) -> str:
        s = self.string(node, what, "http://epyc6.tail76761.ts.net:4105")
        try:
            p = urlparse(s)
            p.port  # noqa: B018 - raises on a bad port
        except ValueError:
            p = None
        if p is None or p.scheme not in ("http", "https") or not p.hostname or (
                p.path not in ("", "/")) or p.query or p.fragment:
            raise self.fail(node, f"{what} '{s}' is not a server URL",
                            "write scheme, host and port only, e.g. http://epyc6.tail76761.ts.net:4105")
        if p.username or p.password:
            raise self.fail(node, f"{what} must not carry credentials",
                            "put the password in an env var (password_env) or a 0600 file (password_file)")
        return s.rstrip("/")

    def local_path(self, node: yaml.Node, what: str) -> str:
        s = self.string(node, what, "~/.ssh/id_ed25519")
        p = Path(os.path.expanduser(s))
        if not p.is_absolute():
            p = self.base_dir / p
        return str(p)

    def remote_path(self, node: yaml.Node, what: str, allow_relative: bool) -> str:
        s = self.string(node, what, "/home/feng/repos")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in s):
            raise self.fail(node, f"{what} holds a control character", "write a plain path")
        bad = sorted(set(_SHELL_SPECIAL.findall(s)))
        if bad:
            raise self.fail(node, f"{what} '{s}' holds shell-special character(s) {' '.join(bad)}",
                            "use letters, digits, '/', '.', '_', '-', '~', '+', '@', ',', ':' and spaces only; "
                            "rename the directory or point at a symlink with a plain name")
        if not allow_relative and not (s.startswith("/") or s == "~" or s.startswith("~/")):
            raise self.fail(node, f"{what} '{s}' must be absolute", "write e.g. /home/feng/repos or ~/repos")
        return s

    def env_name(self, node: yaml.Node, what: str, example: str) -> str:
        s = self.string(node, what, example)
        if not _ENV_RE.fullmatch(s):
            raise self.fail(node, f"{what} '{s}' is not an environment variable name", f"write e.g. {example}")
        return s

    # -- sections
    def host_fields(self, node: yaml.Node, what: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        pairs = self.mapping(node, what)
        self.check_keys(pairs, allowed, what, {
            "password": "never write a password inline: use opencode.password_env or opencode.password_file",
            "aliases": "aliases belong to one host, not to defaults",
            "address": "an address belongs to one host, not to defaults",
            "hostname": "write 'address:' for the host's DNS name or IP",
        })
        out: dict[str, Any] = {}
        for key, _knode, v in pairs:
            w = f"{key} of {what}"
            if key == "user":
                out["user"] = self.name(v, w)
            elif key == "address":
                out["address"] = self.address(v, w)
            elif key == "port":
                out["port"] = self.port(v, w)
            elif key == "auth":
                a = self.string(v, w, "ssh-key")
                if a not in AUTH_MODES:
                    hint = _suggest(a, AUTH_MODES) or ""
                    raise self.fail(v, f"{w} '{a}' is not an auth mode",
                                    (hint + " " if hint else "") + f"write one of: {', '.join(AUTH_MODES)}")
                out["auth"] = a
            elif key == "aliases":
                out["aliases"] = self.str_list(v, w, as_name=True)
            elif key == "tags":
                out["tags"] = self.str_list(v, w, as_name=True)
            elif key == "identity_file":
                out["identity_file"] = self.local_path(v, w)
            elif key == "opencode":
                out["opencode"] = self.opencode(v, w)
            elif key == "repos":
                out["repos"] = self.repos(v, w)
        return out

    def address(self, node: yaml.Node, what: str) -> str:
        s = str(node.value) if isinstance(node, yaml.ScalarNode) else ""
        try:
            ipaddress.ip_address(s)
            return s
        except ValueError:
            pass
        return self.name(node, what)

    def opencode(self, node: yaml.Node, what: str) -> dict[str, Any]:
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:str":
            return {"url": self.url(node, what)}
        pairs = self.mapping(node, what)
        self.check_keys(pairs, OPENCODE_KEYS, what, {
            "password": "never write a password inline: use password_env (an env var name) or "
                        "password_file (a 0600 file)"})
        out: dict[str, Any] = {}
        for key, _, v in pairs:
            w = f"{key} of {what}"
            if key == "url":
                out["url"] = self.url(v, w)
            elif key == "username":
                out["username"] = self.name(v, w)
            elif key == "password_env":
                out["password_env"] = self.env_name(v, w, "OPENCODE_PASSWORD")
            elif key == "password_file":
                out["password_file"] = self.local_path(v, w)
        if "password_env" in out and "password_file" in out:
            raise self.fail(node, f"{what} has both password_env and password_file", "keep one")
        return out

    def repos(self, node: yaml.Node, what: str) -> dict[str, Any]:
        pairs = self.mapping(node, what)
        self.check_keys(pairs, REPOS_KEYS, what)
        out: dict[str, Any] = {}
        for key, _, v in pairs:
            w = f"{key} of {what}"
            if key == "root":
                out["root"] = self.remote_path(v, w, allow_relative=False)
            else:
                paths = {}
                for rkey, rknode, rv in self.mapping(v, w):
                    self.name(rknode, f"repo name in {w}")
                    # '..' is allowed here on purpose: blow-away resolves paths on the host and
                    # refuses anything outside the repos root, which is where it must be caught.
                    paths[rkey] = self.remote_path(rv, f"path of repo '{rkey}' in {w}", allow_relative=True)
                out["paths"] = paths
        return out

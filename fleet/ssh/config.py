"""Where ``ssh NAME`` would go: an inventory host resolved through ssh_config as OpenSSH 9 does.

The files (``~/.ssh/config`` then ``/etc/ssh/ssh_config``, or the one file the ``ssh_config``
setting or the inventory names, as ``ssh -F`` would) are read by :mod:`fleet.ssh.sshread` with
OpenSSH's own rules: comments, quotes, ``Include`` (scoped to its block, 16 levels at most),
``Host`` and ``Match`` (``final``, ``exec``, ``user``... with the values known at that line), the
first value obtained wins. Then, as ``ssh``'s ``main()``: HostName's ``%h``, host names lowercased
and addresses normalised, ``CanonicalizeHostname`` (and the final re-parse), defaults, TOKENS
(:mod:`fleet.ssh.tokens`) in IdentityFile, UserKnownHostsFile and ProxyCommand, ProxyJump vs
ProxyCommand (the first one set wins). What the inventory states explicitly acts as ``ssh -o``
(it wins, and ``Match`` sees it). Each jump hop is resolved like ``ssh -l USER -p PORT -J REST
HOP`` and becomes a :class:`Hop` of its own, so it gets fleet's host-key policy and timeouts.
Any config ssh refuses is a :class:`BadInput` naming file:line, never a traceback.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fleet.errors import BadInput
from fleet.ssh import algs, hostscmd, sshmemo
from fleet.ssh import sshlex as lx
from fleet.ssh.knownhosts import key_name
from fleet.ssh.sshmatch import match_pattern_list
from fleet.ssh.sshread import CHECKPERM, USERCONF, Config, Options, bad, load_text, read_files
from fleet.ssh.tokens import (
    Local,
    default_tokens,
    expand,
    is_addr,
    is_addr_fast,
    local,
    lookup,
    numeric_addr,
    proxy_tokens,
    tilde,
)

if TYPE_CHECKING:  # pragma: no cover
    import paramiko
    from paramiko import SSHConfig as _ConfigBase

    from fleet.inventory import Host
else:
    _ConfigBase = object

SYSTEM_CONFIG = "/etc/ssh/ssh_config"
DEFAULT_IDENTITIES = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")
USER_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
MAX_HOPS = 8


@dataclass(frozen=True)
class Hop:
    """One SSH endpoint, resolved: where TCP goes, who logs in, which key, how the key is filed."""

    name: str                      # what the user wrote (inventory name or jump host)
    hostname: str                  # where the connection goes (lowercased / canonical, as ssh)
    port: int
    user: str
    key_name: str                  # known_hosts name: HostKeyAlias, host or [host]:port
    identities: tuple[str, ...]    # IdentityFile list (expanded), may be empty (= default keys)
    identities_only: bool = False
    connect_timeout: float | None = None
    known_hosts: tuple[str, ...] = ()   # UserKnownHostsFile as set in ssh_config (expanded); () = not set
    accept_new: bool = False       # StrictHostKeyChecking accept-new / no in ssh_config
    proxy_command: str | None = None    # ProxyCommand, tokens expanded (run it with proxy_argv)
    via: "Hop | None" = None       # the previous hop (ProxyJump), None = direct
    user_known_hosts: tuple[str, ...] = ()    # every UserKnownHostsFile ssh reads (default ~/.ssh/known_hosts{,2})
    global_known_hosts: tuple[str, ...] = ()  # every GlobalKnownHostsFile ssh reads
    hash_known_hosts: bool = False  # HashKnownHosts: keys ssh writes get hashed names
    strict: str = "ask"            # StrictHostKeyChecking: yes, ask, accept-new or off
    host_key_alias: str | None = None  # HostKeyAlias, when set
    proxy_jump: str | None = None  # ProxyJump as ssh -G prints it, when set
    revoked_host_keys: str | None = None  # RevokedHostKeys (expanded), when set: keys ssh refuses
    host_key_algorithms: tuple[str, ...] = algs.DEFAULT_HOST_KEY  # HostKeyAlgorithms, assembled (fleet.ssh.algs)
    prefer_known: bool = True      # known_hosts' types asked for first (HostKeyAlgorithms unset, + or -)
    ca_signature_algorithms: tuple[str, ...] = algs.DEFAULT_CA_SIGNATURE  # CASignatureAlgorithms, assembled
    known_hosts_command: Any = None  # KnownHostsCommand: (words, tokens), see fleet.ssh.hostscmd

    def chain(self) -> list["Hop"]:
        """Every hop from the first to this one."""
        out: list[Hop] = []
        h: Hop | None = self
        while h is not None:
            out.append(h)
            h = h.via
        return out[::-1]

    @property
    def first(self) -> "Hop":
        """The hop the TCP connection from this machine goes to."""
        return self.chain()[0]

    @property
    def proxy_argv(self) -> tuple[str, ...]:
        """How ssh spawns the ProxyCommand: ``$SHELL -c 'exec COMMAND'`` (``/bin/sh`` without
        SHELL), so ``$(...)``, ``${VAR}`` and pipes work; () without a ProxyCommand."""
        if not self.proxy_command:
            return ()
        return (os.environ.get("SHELL") or "/bin/sh", "-c", "exec " + self.proxy_command)

    def ssh_G(self) -> dict[str, Any]:
        """This hop as ``ssh -G`` prints it (its words), for the options fleet uses; an empty
        identity list is the default keys (``identityfile_default``)."""
        ct = self.connect_timeout
        d: dict[str, Any] = {
            "name": self.name, "hostname": self.hostname, "port": self.port, "user": self.user,
            "identityfile": list(self.identities) or [os.path.expanduser(p) for p in DEFAULT_IDENTITIES],
            "identityfile_default": not self.identities, "identitiesonly": "yes" if self.identities_only else "no",
            "proxyjump": self.proxy_jump, "proxycommand": self.proxy_command,
            "userknownhostsfile": list(self.user_known_hosts), "globalknownhostsfile": list(self.global_known_hosts),
            "connecttimeout": "none" if ct is None else f"{ct:g}", "hostkeyalias": self.host_key_alias,
            "stricthostkeychecking": {"yes": "true", "off": "false"}.get(self.strict, self.strict),
            "hashknownhosts": "yes" if self.hash_known_hosts else "no", "known_hosts_name": self.key_name,
            "revokedhostkeys": self.revoked_host_keys}
        return d

    def describe(self) -> str:
        """``user@host:port`` plus the jump chain, for messages."""
        s = f"{self.user}@{self.hostname}:{self.port}"
        if self.via is not None:
            s += " via " + " -> ".join(h.name for h in self.chain()[:-1])
        return s


class SSHConfigFiles(_ConfigBase):
    """The ssh_config files of a run, read once; :func:`resolve_host` applies them per host.
    ``lookup(name)`` gives what ``ssh -G NAME`` would print for the options fleet uses."""

    def __init__(self, cfg: Config, source: str) -> None:
        super().__init__()
        self.cfg = cfg
        self.source = source

    def lookup(self, hostname: str) -> "paramiko.SSHConfigDict":
        from paramiko import SSHConfigDict

        hop, o = _resolve(self.cfg, hostname, {}, local())
        ct = o.get("connecttimeout")
        d: Any = SSHConfigDict()
        d.update(hostname=hop.hostname, port=str(hop.port), user=hop.user,
                          identityfile=list(hop.identities), identitiesonly="yes" if hop.identities_only else "no",
                          connecttimeout="none" if ct is None or ct < 0 else str(ct),
                          userknownhostsfile=" ".join(hop.user_known_hosts) or "none",
                          globalknownhostsfile=" ".join(hop.global_known_hosts) or "none",
                          stricthostkeychecking=hop.strict, hashknownhosts="yes" if hop.hash_known_hosts else "no",
                          sendenv=list(o.sendenv), setenv=list(o.setenv),
                          canonicalizehostname=o.get("canonicalizehostname") or "no",
                          hostkeyalgorithms=",".join(hop.host_key_algorithms),
                          casignaturealgorithms=",".join(hop.ca_signature_algorithms))
        if o.get("hostkeyalias"):
            d["hostkeyalias"] = lx.lower(o.get("hostkeyalias"))
        jump = o.get("jump")
        if jump is not None and not jump.none:
            d["proxyjump"] = jump.spec()
        elif hop.proxy_command:
            d["proxycommand"] = hop.proxy_command
        return d

    def get_hostnames(self) -> set[str]:
        return {p for cf, _ in self.cfg.roots for ln in cf.lines if ln.kw == "host" for p in ln.argv}


def load_ssh_config(path: str | None) -> SSHConfigFiles:
    """The ssh_config to apply. ``None`` or ``~/.ssh/config``: the user's file, then the system's.

    Any other path is read alone, like ``ssh -F PATH`` (it must exist); ``none`` (or ``""``)
    is no config. Raises :class:`BadInput` (file:line) for anything ssh would refuse.
    """
    if path is not None and lx.lower(path.strip()) in ("", "none"):
        return SSHConfigFiles(read_files([])[0], "none")
    default_user = os.path.expanduser("~/.ssh/config")
    p = os.path.expanduser(path) if path else default_user
    if os.path.abspath(p) == os.path.abspath(default_user):
        return SSHConfigFiles(sshmemo.load([(p, USERCONF | CHECKPERM, False), (SYSTEM_CONFIG, 0, False)]), p)
    return SSHConfigFiles(sshmemo.load([(p, USERCONF, True)]), p)


def _as_config(cfg: Any) -> Config:
    if isinstance(cfg, SSHConfigFiles):
        return cfg.cfg
    # A paramiko.SSHConfig built by hand: its entries, read again with ssh's rules.
    lines: list[str] = []
    for entry in getattr(cfg, "_config", None) or []:
        lines.append("Host " + " ".join(entry.get("host", ["*"])))
        for k, v in entry.get("config", {}).items():
            lines += [f"  {k} {item}" for item in (v if isinstance(v, list) else [v])]
    return load_text("\n".join(lines), "<paramiko SSHConfig>")


def _default_port() -> int:
    p = lx.a2port("ssh")
    return p if p > 0 else 22


def _follow_cname(o: Options, canon: str, direct: bool, name: str, cname: str) -> str:
    rules = o.get("canonicalizepermittedcnames") or []
    if not cname or not rules or name == cname or canon == "no" or (not direct and canon != "always"):
        return name
    for src, dst in rules:
        if match_pattern_list(name, src, True) == 1 and match_pattern_list(cname, dst, True) == 1:
            return cname
    return name


def _canonicalize(o: Options, host: str, canon: str, direct: bool) -> tuple[str, bool]:
    """ssh's ``resolve_canonicalize``: (host name, found)."""
    addr = numeric_addr(host)
    if addr is not None:
        return (addr if lx.lower(addr) != lx.lower(host) else host), True
    if is_addr_fast(host) or canon == "no" or (not direct and canon != "always"):
        return host, False
    if host.endswith("."):
        candidates = [host]
    elif host.count(".") > o.v.get("canonicalizemaxdots", 1):
        return host, False
    else:
        candidates = []
        for d in o.get("canonicaldomains") or []:
            if lx.lower(d) == "none":
                break
            candidates.append(f"{host}.{d}.")
    for full in candidates:
        ok, cname = lookup(full)
        if ok:
            return _follow_cname(o, canon, direct, full[:-1], cname), True
    if o.get("canonicalizefallbacklocal") is False:
        raise BadInput(f"ssh_config: Could not resolve host \"{host}\" (CanonicalizeHostname is on and "
                       f"CanonicalizeFallbackLocal no, at {o.at['canonicalizefallbacklocal']})")
    return host, False


def _settle(cfg: Config, name: str, pre: dict[str, Any], me: Local, origin: str) -> tuple[Options, str]:
    """Both passes of ssh's config reading for ``name``: (options, final host name). ``pre``:
    the values given as ``ssh -o`` would (``origin`` says where from, for messages)."""
    o = Options()
    for k, v in pre.items():
        o.first(k, v, origin)
    cfg.read(name, name, o, False, me)
    canon = o.get("canonicalizehostname") or "no"
    host = name
    if "hostname" in o.v:
        try:
            host = expand(o.v["hostname"], {"h": name})
        except lx.LexError as exc:
            raise bad(o.at["hostname"], f"HostName: {exc}") from None
        o.v["hostname"] = host
    was_addr = is_addr(host)
    if not was_addr:
        host = lx.lower(host)
    pc = o.get("proxycommand")
    direct = (pc is None or lx.lower(pc) == "none") and o.get("jump") is None
    found = False
    if canon != "no" or was_addr:
        host, found = _canonicalize(o, host, canon, direct)
    if not found and o.get("canonicalizepermittedcnames") and (direct or canon == "always"):
        ok, cname = lookup(host)
        if not ok and direct:
            raise BadInput(f"ssh_config: Could not resolve hostname {host} (CanonicalizePermittedCNAMEs "
                           f"at {o.at['canonicalizepermittedcnames']} makes ssh look it up)")
        host = _follow_cname(o, canon, direct, host, cname) if ok else host
    if canon != "no":
        o.want_final = True
    if o.want_final:
        o.v["hostname"] = host
        o.at.setdefault("hostname", "the final pass")
        cfg.read(host, name, o, True, me)
    return o, host


def _resolve(cfg: Config, name: str, pre: dict[str, Any], me: Local, *, identities: tuple[str, ...] | None = None,
             identities_only: bool | None = None, depth: int = 0, why: str = "") -> tuple[Hop, Options]:
    if depth > MAX_HOPS:
        raise BadInput(f"ssh_config {why}: the ProxyJump chain reaching {name} is longer than {MAX_HOPS} hops "
                       f"(a loop?)")
    o, host = _settle(cfg, name, pre, me, why or "the inventory")
    port = o.get("port") or _default_port()
    user = o.get("user") or me.user
    alias = lx.lower(o.get("hostkeyalias")) if o.get("hostkeyalias") else None
    toks = default_tokens(me, host, name, port, user, alias)

    def path(p: str, where: str) -> str:
        try:
            return expand(tilde(p, me), toks, dollar=True)
        except lx.LexError as exc:
            raise bad(where, f"{p}: {exc}") from None
    if identities is None:
        identities = tuple(path(p, w) for p, w in o.ids if lx.lower(p) != "none")
    explicit = o.get("userknownhostsfile")
    ukh = [] if explicit and lx.lower(explicit[0]) == "none" else list(explicit or USER_KNOWN_HOSTS)
    user_kh = tuple(path(p, o.at.get("userknownhostsfile", "UserKnownHostsFile")) for p in ukh)
    gkh = o.get("globalknownhostsfile") or list(GLOBAL_KNOWN_HOSTS)
    global_kh = () if lx.lower(gkh[0]) == "none" else tuple(gkh)
    strict = o.get("stricthostkeychecking") or "ask"
    jump, pc = o.get("jump"), o.get("proxycommand")
    via, proxy = None, None
    if jump is not None and not jump.none:
        where = o.at["jump"]
        if lx.lower(jump.host) == "none":
            raise bad(where, "'ProxyJump none' followed by a comment is read by OpenSSH as a jump via a host "
                      "named 'none': put the comment on a line of its own")
        ptok = proxy_tokens(host, name, port, user, alias)
        try:
            jhost, jextra = expand(jump.host, ptok), expand(jump.extra, ptok) if jump.extra else None
            juser = expand(jump.user, ptok) if jump.user else None
        except lx.LexError as exc:
            raise bad(where, f"ProxyJump: {exc}") from None
        if jhost == host and port == (jump.port if jump.port > 0 else _default_port()) and (juser or user) == user:
            raise bad(where, f"jumphost loop via {jhost}")
        hop_pre: dict[str, Any] = {}
        if juser:
            hop_pre["user"] = juser
        if jump.port > 0:
            hop_pre["port"] = jump.port
        if jextra:
            try:
                hop_pre["jump"] = lx.parse_jump(jextra)
            except lx.LexError as exc:
                raise bad(where, str(exc)) from None
            hop_pre["proxycommand"] = "none"
        via = _resolve(cfg, jhost, hop_pre, me, depth=depth + 1, why=where)[0]
    elif pc is not None and lx.lower(pc) != "none":
        if pc == "-":
            raise bad(o.at["proxycommand"], "ProxyCommand - (use stdin/stdout) cannot be used by fleet")
        try:
            proxy = expand(pc, proxy_tokens(host, name, port, user, alias))
        except lx.LexError as exc:
            raise bad(o.at["proxycommand"], f"ProxyCommand: {exc}") from None
    ct = o.get("connecttimeout")
    hka, khc = o.get("hostkeyalgorithms"), o.get("knownhostscommand")
    try:
        khcmd = hostscmd.template(khc, toks) if khc and lx.lower(khc) != "none" else None
    except lx.LexError as exc:
        raise bad(o.at["knownhostscommand"], str(exc)) from None
    lists: dict[str, tuple[str, ...]] = {}
    for field, kw, word, default, known in (
            ("host_key_algorithms", "hostkeyalgorithms", "HostKeyAlgorithms", algs.DEFAULT_HOST_KEY, algs.ALL_HOST_KEY),
            ("ca_signature_algorithms", "casignaturealgorithms", "CASignatureAlgorithms", algs.DEFAULT_CA_SIGNATURE,
             algs.ALL_SIGNATURE)):
        try:
            lists[field] = algs.assemble(o.get(kw), default, known)
        except ValueError as exc:
            raise bad(o.at[kw], f"{word}: {exc}") from None
    hop = Hop(name=name, hostname=host, port=port, user=user, key_name=key_name(host, port, alias),
              identities=tuple(identities),
              identities_only=identities_only if identities_only is not None else bool(o.get("identitiesonly")),
              connect_timeout=float(ct) if ct and ct > 0 else None,
              known_hosts=user_kh if explicit else (), accept_new=strict in ("accept-new", "off"),
              proxy_command=proxy, via=via, user_known_hosts=user_kh, global_known_hosts=global_kh,
              hash_known_hosts=bool(o.get("hashknownhosts")), strict=strict, host_key_alias=alias,
              proxy_jump=jump.spec() if via is not None and jump is not None else None,
              revoked_host_keys=path(rk, o.at.get("revokedhostkeys", "RevokedHostKeys"))
              if (rk := o.get("revokedhostkeys")) and lx.lower(rk) != "none" else None,
              prefer_known=algs.prefers_known(hka), known_hosts_command=khcmd, **lists)
    return hop, o


def resolve_host(host: "Host", cfg: "paramiko.SSHConfig") -> Hop:
    """Where ``ssh host.name`` would go, with what the inventory states explicitly on top (as ``-o``)."""
    ex = host.is_explicit
    pre: dict[str, Any] = {}
    if ex("address"):
        pre["hostname"] = host.address
    if ex("port"):
        pre["port"] = host.port
    if ex("user") and host.user:
        pre["user"] = host.user
    # an identity_file in the inventory is the one key to use (as with -i and IdentitiesOnly)
    ids = (host.identity_file,) if ex("identity_file") and host.identity_file else None
    conf, me = _as_config(cfg), local()
    # the same question of the same files (a long-lived process's next call): the same answer
    return sshmemo.remembered(conf, (host.name, tuple(sorted(pre.items())), ids, me), lambda: _resolve(
        conf, host.name, pre, me, identities=ids, identities_only=True if ids else None)[0])


def resolved_view(host: "Host", cfg: "paramiko.SSHConfig", fleet_known_hosts: list[str],
                  connect_timeout: float) -> dict[str, Any]:
    """What ``ssh -G NAME`` says of an inventory host (the inventory's own values as ``-o``) and
    of each jump hop (``jumps``), with the known_hosts files fleet consults for each (ssh's, then
    ``fleet_known_hosts``) and the connect timeout fleet uses when no flag is typed."""
    from fleet.ssh.hostkeys import HostKeyStore

    store = HostKeyStore(fleet_known_hosts)
    target = resolve_host(host, cfg)

    def one(hop: Hop) -> dict[str, Any]:
        d = hop.ssh_G()
        d.update(known_hosts_consulted=list(store.files_for(hop)),
                 connect_timeout_used=hop.connect_timeout or connect_timeout)
        return d
    return {**one(target), "name": host.name, "jumps": [one(h) for h in target.chain()[:-1]]}


__all__ = ["DEFAULT_IDENTITIES", "GLOBAL_KNOWN_HOSTS", "Hop", "SSHConfigFiles", "USER_KNOWN_HOSTS",
           "load_ssh_config", "resolve_host", "resolved_view"]

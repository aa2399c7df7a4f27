"""Preflight: is each host usable? Canonical mapping, DNS, TCP to the SSH port, auth available.

Hosts are resolved through ssh_config first, as ``ssh NAME`` would; behind a ProxyJump the
network checks go to the first hop, which is where this machine's TCP connection goes.

Each check has its own timeout. A failure names the check and says what a person can do.
``local`` hosts skip the network checks.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from typing import TYPE_CHECKING, Callable

from fleet.errors import BadInput
from fleet.files import loose_mode
from fleet.inventory import Host, Inventory
from fleet.results import CheckResult, PreflightResult, PreflightStatus
from fleet.ssh import predial
from fleet.ssh.config import DEFAULT_IDENTITIES, Hop, load_ssh_config, resolve_host
from fleet.workers import call_with_timeout, run_bounded

if TYPE_CHECKING:  # pragma: no cover
    import paramiko

DEFAULT_KEYS = DEFAULT_IDENTITIES

def _ms(t0: float) -> int:
    return int((time.monotonic() - t0) * 1000)


def _check_mapping(host: Host) -> tuple[bool, str]:
    if host.auth == "local":
        return True, ""
    if host.user is not None and not host.user:
        return False, (f"host {host.name} has an empty user: write 'user: NAME' under it (or under defaults) "
                       f"in the inventory, or a User line for it in ssh_config")
    return True, ""


def _host_bytes(name: str) -> bytes | str:
    """ASCII names as bytes: a str host makes the socket module import the idna codec (~25 ms)."""
    return name.encode("ascii") if name.isascii() else name


def _check_dns(hop: Hop, timeout: float, hint_tailscale: bool) -> tuple[bool, str, list[str]]:
    try:
        infos = call_with_timeout(socket.getaddrinfo, _host_bytes(hop.hostname), hop.port, type=socket.SOCK_STREAM,
                                  timeout=timeout)
    except TimeoutError:
        return False, (f"DNS lookup of {hop.hostname} took longer than {timeout:g}s: check your "
                       f"resolver (and 'tailscale status' if it is a tailnet name)"), []
    except socket.gaierror as exc:
        hint = "is the name spelled right, and is Tailscale (MagicDNS) up?" if hint_tailscale \
            else "is the name spelled right? set 'address:' (or HostName in ssh_config) to its DNS name or IP"
        return False, f"cannot resolve {hop.hostname}: {exc.strerror}; {hint}", []
    addrs: list[str] = []
    for info in infos:
        ip = str(info[4][0])  # an IP address: sockaddr's first item for AF_INET and AF_INET6
        if ip not in addrs:
            addrs.append(ip)
    if not addrs:
        return False, f"{hop.hostname} resolves to no address", []
    return True, "", addrs


def _check_tcp(hop: Hop, addrs: list[str], timeout: float, label: str,
               keep: list[socket.socket] | None = None) -> tuple[bool, str, str | None]:
    """TCP to the first hop, trying every address the name has (as ssh does). Returns the one
    that answered; with ``keep``, the open socket is handed over there (the SSH connection then
    uses it: no second connect, and no second sshd fork for a probe)."""
    deadline = time.monotonic() + timeout
    last = ""
    for ip in addrs:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            # bytes, as _host_bytes says: the socket module takes them (typeshed allows only str)
            sock = predial.connect(_host_bytes(ip), hop.port, left, note=keep is not None)
            if keep is not None:
                keep.append(sock)
            else:
                sock.close()
            return True, "", ip
        except (socket.timeout, TimeoutError):
            last = (f"TCP connect to {label} {hop.hostname}:{hop.port} timed out after {timeout:g}s: "
                    f"is the machine on, and is the port right?")
        except ConnectionRefusedError:
            last = (f"{label} {hop.hostname}:{hop.port} refused the connection: is sshd running there, "
                    f"and is the port right?")
        except OSError as exc:
            last = f"cannot reach {label} {hop.hostname}:{hop.port}: {exc.strerror or exc}"
    return False, last or f"TCP connect to {hop.hostname}:{hop.port} timed out after {timeout:g}s", None


def _check_auth(host: Host, target: Hop | None, timeout: float) -> tuple[bool, str]:
    if host.auth == "ssh-key":
        if target is not None and target.identities:
            paths = list(target.identities) + ([] if target.identities_only else
                                               [os.path.expanduser(p) for p in DEFAULT_KEYS])
        else:
            paths = [host.identity_file] if host.identity_file else [os.path.expanduser(p) for p in DEFAULT_KEYS]
        if target is not None and not target.identities_only and os.environ.get("SSH_AUTH_SOCK") \
                and not any(os.path.isfile(p) for p in paths):
            return True, ""  # no key file, but ssh would still offer the agent's keys
        for p in paths:
            if p and os.path.isfile(p) and os.access(p, os.R_OK):
                try:
                    loose = loose_mode(p)
                except OSError:
                    continue
                if loose is not None:
                    return False, (f"key file {p} is readable by others: run 'chmod 600 {p}' "
                                   f"(ssh refuses such keys)")
                return True, ""
        if target is not None and target.identities:
            return False, (f"key file {target.identities[0]} does not exist or is not readable: fix "
                           f"'identity_file' for {host.name} (or IdentityFile in ssh_config) or create the "
                           f"key with ssh-keygen")
        if host.identity_file:
            return False, (f"key file {host.identity_file} does not exist or is not readable: fix "
                           f"'identity_file' for {host.name} or create the key with ssh-keygen")
        return False, "no SSH key found (~/.ssh/id_ed25519, id_ecdsa, id_rsa): set 'identity_file' or create one"
    if host.auth == "agent":
        sock = os.environ.get("SSH_AUTH_SOCK")
        if not sock:
            return False, "SSH_AUTH_SOCK is not set: start ssh-agent and 'ssh-add' your key"
        try:
            import paramiko
            keys = paramiko.Agent().get_keys()
        except Exception as exc:  # noqa: BLE001 - any agent trouble is the same advice
            return False, f"cannot talk to the SSH agent at {sock}: {exc}; restart ssh-agent"
        if not keys:
            return False, "the SSH agent holds no identities: run 'ssh-add' with your key"
        return True, ""
    if host.auth == "tailscale":
        exe = shutil.which("tailscale")
        if not exe:
            return False, "the tailscale CLI is not installed: install Tailscale or change 'auth:' for this host"
        try:
            proc = subprocess.run([exe, "status"], capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return False, f"'tailscale status' did not answer within {timeout:g}s: is tailscaled running?"
        if proc.returncode != 0:
            first = (proc.stdout + proc.stderr).strip().splitlines()[:1]
            return False, f"Tailscale is not up ({first[0] if first else 'exit ' + str(proc.returncode)}): run 'tailscale up'"
        return True, ""
    return True, ""


def run_preflight_checks(host: Host | str, timeout: float = 5.0, inventory: Inventory | None = None,
                         target: Hop | None = None, ssh_config: "paramiko.SSHConfig | str | None" = None,
                         keep: list[socket.socket] | None = None) -> PreflightResult:
    """Run every preflight check on one host (a :class:`Host` or a name in ``inventory``).

    The host is resolved through ssh_config as ``ssh NAME`` would (``target``, or resolved
    here from ``ssh_config``: a loaded config or a path, default the inventory's or
    ``~/.ssh/config``). DNS and TCP go to the first hop: the jump host when there is one.
    ``keep``: a list that receives the TCP connection to the first hop, left open for reuse.
    """
    if isinstance(host, str):
        if inventory is None:
            from fleet.inventory import default_inventory
            inventory = default_inventory()
        host = inventory.host(host)
    t_all = time.monotonic()
    checks: list[CheckResult] = []
    address = None
    if target is None and host.auth != "local":
        try:
            target = resolve_host(host, config_for(inventory, ssh_config))
        except BadInput as exc:
            checks.append(CheckResult("mapping", False, _ms(t_all), str(exc)))
            return PreflightResult(host=host.name, user=host.user, auth_mode=host.auth, status=PreflightStatus.FAILED,
                                   checks=tuple(checks), error_detail=str(exc), failed_check="mapping",
                                   duration_ms=_ms(t_all))
    user = target.user if target is not None else host.user

    def done(status: PreflightStatus, name: str = "", detail: str = "") -> PreflightResult:
        return PreflightResult(host=host.name, user=user, auth_mode=host.auth, status=status,
                               checks=tuple(checks), error_detail=detail, failed_check=name,
                               duration_ms=_ms(t_all), address=address)

    t = time.monotonic()
    ok, why = _check_mapping(host)
    checks.append(CheckResult("mapping", ok, _ms(t), why))
    if not ok:
        return done(PreflightStatus.FAILED, "mapping", why)
    if target is not None and not target.first.proxy_command:
        first = target.first
        label = f"jump host {first.name}" if first is not target else host.name
        t = time.monotonic()
        ok, why, addrs = _check_dns(first, timeout, host.auth == "tailscale")
        checks.append(CheckResult("dns", ok, _ms(t), why if first is target or ok else f"{label}: {why}"))
        if not ok:
            return done(PreflightStatus.FAILED, "dns", why if first is target else f"{label}: {why}")
        t = time.monotonic()
        ok, why, ip = _check_tcp(first, addrs, timeout, label, keep)
        checks.append(CheckResult("tcp", ok, _ms(t), why))
        if not ok:
            return done(PreflightStatus.FAILED, "tcp", why)
        address = ip
    t = time.monotonic()
    ok, why = _check_auth(host, target, timeout)
    checks.append(CheckResult("auth", ok, _ms(t), why))
    if not ok:
        return done(PreflightStatus.FAILED, "auth", why)
    return done(PreflightStatus.OK)


def config_for(inventory: Inventory | None, ssh_config: "paramiko.SSHConfig | str | None") -> "paramiko.SSHConfig":
    """The ssh_config to apply: a loaded one as is; else the inventory's file, the given path,
    or ``~/.ssh/config`` (with the system file)."""
    if ssh_config is not None and not isinstance(ssh_config, str):
        return ssh_config
    path = (inventory.ssh_config if inventory is not None and inventory.ssh_config else None) or ssh_config
    if inventory is not None:
        predial.depends(inventory.path)  # the hosts a repeat of this call dials ahead come from it
    return load_ssh_config(path)


def preflight_many(hosts: list[Host], timeout: float = 5.0, concurrency: int = 64,
                   on_result: Callable[[PreflightResult], None] | None = None,
                   inventory: Inventory | None = None,
                   ssh_config: "paramiko.SSHConfig | str | None" = None) -> list[PreflightResult]:
    """Preflight ``hosts`` concurrently; results in the order of ``hosts``."""
    cfg = config_for(inventory, ssh_config)

    def one(h: Host) -> PreflightResult:
        r = run_preflight_checks(h, timeout, inventory, None, cfg)
        if on_result:
            on_result(r)
        return r
    results, _ = run_bounded(hosts, one, concurrency, "fleet-preflight", on_interrupt=lambda: None,
                             not_started=lambda h: PreflightResult(host=h.name, user=h.user, auth_mode=h.auth,
                                                                   status=PreflightStatus.FAILED,
                                                                   error_detail="not checked: interrupted",
                                                                   failed_check="interrupted"))
    return [results[h.name] for h in hosts]

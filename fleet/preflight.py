"""Preflight: is each host usable? Canonical mapping, DNS, TCP to the SSH port, auth available.

Each check has its own timeout. A failure names the check and says what a person can do.
``local`` hosts skip the network checks.
"""
from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Callable

from .inventory import Host, Inventory
from .results import CheckResult, PreflightResult, PreflightStatus

DEFAULT_KEYS = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")

# getaddrinfo cannot be given a timeout, so lookups run on a small shared pool.
_dns_pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="fleet-dns")


def _ms(t0: float) -> int:
    return int((time.monotonic() - t0) * 1000)


def _check_mapping(host: Host) -> tuple[bool, str]:
    if host.auth == "local":
        return True, ""
    if not host.user:
        return False, (f"host {host.name} has no user: add 'user: NAME' under it (or under defaults) "
                       f"in the inventory")
    return True, ""


def _check_dns(host: Host, timeout: float) -> tuple[bool, str, str | None]:
    fut = _dns_pool.submit(socket.getaddrinfo, host.address, host.port, type=socket.SOCK_STREAM)
    try:
        infos = fut.result(timeout=timeout)
    except FutureTimeout:
        return False, (f"DNS lookup of {host.address} took longer than {timeout:g}s: check your "
                       f"resolver (and 'tailscale status' if it is a tailnet name)"), None
    except socket.gaierror as exc:
        hint = "is the name spelled right, and is Tailscale (MagicDNS) up?" if host.auth == "tailscale" \
            else "is the name spelled right? set 'address:' to its DNS name or IP"
        return False, f"cannot resolve {host.address}: {exc.strerror}; {hint}", None
    if not infos:
        return False, f"{host.address} resolves to no address", None
    return True, "", infos[0][4][0]


def _check_tcp(host: Host, ip: str, timeout: float) -> tuple[bool, str]:
    try:
        with socket.create_connection((ip, host.port), timeout=timeout):
            return True, ""
    except (socket.timeout, TimeoutError):
        return False, (f"TCP connect to {host.address}:{host.port} timed out after {timeout:g}s: "
                       f"is the machine on, and is the port right?")
    except ConnectionRefusedError:
        return False, (f"{host.address}:{host.port} refused the connection: is sshd running there, "
                       f"and is 'port:' right?")
    except OSError as exc:
        return False, f"cannot reach {host.address}:{host.port}: {exc.strerror or exc}"


def _check_auth(host: Host, timeout: float) -> tuple[bool, str]:
    if host.auth == "ssh-key":
        paths = [host.identity_file] if host.identity_file else [os.path.expanduser(p) for p in DEFAULT_KEYS]
        for p in paths:
            if p and os.path.isfile(p) and os.access(p, os.R_OK):
                try:
                    mode = os.stat(p).st_mode
                except OSError:
                    continue
                if mode & (stat.S_IRWXG | stat.S_IRWXO):
                    return False, (f"key file {p} is readable by others: run 'chmod 600 {p}' "
                                   f"(ssh refuses such keys)")
                return True, ""
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
            p = subprocess.run([exe, "status"], capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return False, f"'tailscale status' did not answer within {timeout:g}s: is tailscaled running?"
        if p.returncode != 0:
            first = (p.stdout + p.stderr).strip().splitlines()[:1]
            return False, f"Tailscale is not up ({first[0] if first else 'exit ' + str(p.returncode)}): run 'tailscale up'"
        return True, ""
    return True, ""


def run_preflight_checks(host: Host | str, timeout: float = 5.0, inventory: Inventory | None = None) -> PreflightResult:
    """Run every preflight check on one host (a :class:`Host` or a name in ``inventory``)."""
    if isinstance(host, str):
        if inventory is None:
            from .api import default_inventory
            inventory = default_inventory()
        host = inventory.host(host)
    t_all = time.monotonic()
    checks: list[CheckResult] = []
    address = None

    def done(status: PreflightStatus, name: str = "", detail: str = "") -> PreflightResult:
        return PreflightResult(host=host.name, user=host.user, auth_mode=host.auth, status=status,
                               checks=tuple(checks), error_detail=detail, failed_check=name,
                               duration_ms=_ms(t_all), address=address)

    t = time.monotonic()
    ok, why = _check_mapping(host)
    checks.append(CheckResult("mapping", ok, _ms(t), why))
    if not ok:
        return done(PreflightStatus.FAILED, "mapping", why)
    if host.auth != "local":
        t = time.monotonic()
        ok, why, address = _check_dns(host, timeout)
        checks.append(CheckResult("dns", ok, _ms(t), why))
        if not ok:
            return done(PreflightStatus.FAILED, "dns", why)
        t = time.monotonic()
        ok, why = _check_tcp(host, address or host.address, timeout)
        checks.append(CheckResult("tcp", ok, _ms(t), why))
        if not ok:
            return done(PreflightStatus.FAILED, "tcp", why)
    t = time.monotonic()
    ok, why = _check_auth(host, timeout)
    checks.append(CheckResult("auth", ok, _ms(t), why))
    if not ok:
        return done(PreflightStatus.FAILED, "auth", why)
    return done(PreflightStatus.OK)


def preflight_many(hosts: list[Host], timeout: float = 5.0, concurrency: int = 64,
                   on_result: Callable[[PreflightResult], None] | None = None) -> list[PreflightResult]:
    """Preflight ``hosts`` concurrently; results in the order of ``hosts``."""
    results: dict[str, PreflightResult] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(hosts)))) as pool:
        futs = {pool.submit(run_preflight_checks, h, timeout): h for h in hosts}
        for f in futs:
            r = f.result()
            results[r.host] = r
            if on_result:
                on_result(r)
    return [results[h.name] for h in hosts]

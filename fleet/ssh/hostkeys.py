"""Host keys for every SSH hop: checked as ``ssh -o StrictHostKeyChecking=yes`` would, under the
name OpenSSH uses, against known_hosts parsed once per run (:mod:`fleet.knownhosts`): every file
ssh reads for that hop (its UserKnownHostsFile and GlobalKnownHostsFile lists, or their defaults)
plus fleet's own (the inventory's). Unknown keys are accepted only when asked (per host or hop,
per run, or ``StrictHostKeyChecking accept-new`` in ssh_config); a changed or revoked key never.
An accepted key is written where ssh would write it (the first UserKnownHostsFile) when
ssh_config names one, else to the inventory's known_hosts; with HashKnownHosts yes in force its
name is hashed either way, as ssh hashes what it writes. The advice for an unknown key is a
command that accepts it (:meth:`HostKeyStore.accept_command`), which works from preflight too."""
from __future__ import annotations

import base64
import hashlib
import os
import shlex
import threading
from pathlib import Path

import paramiko

from fleet.errors import HostKeyChanged, HostKeyRevoked, UnknownHostKey
from fleet.inventory import Host
from fleet.ssh.config import Hop
from fleet.ssh.knownhosts import Entry, KnownHosts, Verdict, hash_name


def fingerprint_blob(blob: bytes) -> str:
    """OpenSSH-style SHA256 fingerprint of a public key blob."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style SHA256 fingerprint."""
    return fingerprint_blob(key.asbytes())


class HostKeyStore:
    """known_hosts for a run: parsed once, shared by every connection and hop (thread-safe).

    ``files`` are read for every hop whose ssh_config sets no UserKnownHostsFile. Unknown keys
    are accepted only for ``accept_all``, for a name in ``accept_hosts`` (host or hop name), or
    for a hop whose ssh_config says ``StrictHostKeyChecking accept-new``; accepted keys are
    appended to ``write_to`` (or the hop's own known_hosts file). A changed or revoked key is
    always refused.
    """

    def __init__(self, files: list[str], write_to: str | None = None, accept_all: bool = False,
                 accept_hosts: set[str] | None = None, inventory: str | None = None) -> None:
        self.files = tuple(os.path.expanduser(f) for f in files if f)
        self.inventory = inventory  # the inventory file, named in the advice's command when known
        self.kh = KnownHosts()
        self.write_to = write_to
        self.accept_all = accept_all
        self.accept_hosts = set(accept_hosts or ())
        self.lock = threading.Lock()
        self.accepted: list[tuple[str, str]] = []

    def files_for(self, hop: Hop) -> tuple[str, ...]:
        """The known_hosts files that decide ``hop``'s key: ssh's (user, then global) and fleet's."""
        out: list[str] = []
        for f in (*(hop.user_known_hosts or hop.known_hosts), *hop.global_known_hosts, *self.files):
            if f and f not in out:
                out.append(f)
        return tuple(out)

    def known_types(self, hop: Hop) -> list[str]:
        """Key types known for ``hop`` (asked for first in the handshake, as OpenSSH does)."""
        return self.kh.known_types(self.files_for(hop), hop.key_name)

    def check(self, hop: Hop, host: Host, key: paramiko.PKey, is_target: bool) -> None:
        """Accept ``key`` for ``hop`` or raise the typed failure, naming the hop."""
        blob = key.asbytes()
        bare = hop.hostname if hop.key_name == f"[{hop.hostname}]:{hop.port}" else None
        verdict, entries = self.kh.verdict(self.files_for(hop), hop.key_name, key.get_name(), blob, bare)
        fp = fingerprint_blob(blob)
        who = host.name if is_target else f"jump host {hop.name} (on the way to {host.name})"
        where = f"{who} [{hop.key_name}]"
        if verdict == Verdict.KNOWN:
            return
        if verdict == Verdict.REVOKED:
            e = entries[0]
            raise HostKeyRevoked(host.name, f"REVOKED host key for {where}: {key.get_name()} {fp} is marked "
                                 f"@revoked in {e.path}:{e.line}; nothing was run")
        if verdict == Verdict.CHANGED:
            e = entries[0]
            raise HostKeyChanged(
                host.name, f"HOST KEY CHANGED for {where}: it now offers {key.get_name()} {fp}, "
                f"{e.path}:{e.line} has {fingerprint_blob(e.blob)}. This may be an attack; nothing was "
                f"run. If the host was really reinstalled, remove that line")
        names = {host.name, hop.name, *host.aliases} if is_target else {hop.name}
        if not (self.accept_all or hop.accept_new or names & self.accept_hosts):
            other = f" (known_hosts has only {', '.join(sorted({e.keytype for e in entries}))} keys for it)" \
                if entries else ""
            raise UnknownHostKey(
                host.name, f"unknown host key for {where}: {key.get_name()} {fp}{other}; nothing was run. "
                f"If this fingerprint is right, accept and record it: '{self.accept_command(host, hop, is_target)}' "
                f"(or --accept-new-host-keys for every host and hop of a fanout)")
        target = hop.known_hosts[0] if hop.known_hosts else (self.write_to or (self.files[0] if self.files else None))
        # HashKnownHosts yes: ssh hashes every name it writes, so fleet does too, wherever it writes
        hashed = hop.hash_known_hosts and target is not None
        filed = hash_name(hop.key_name) if hashed else hop.key_name
        entry = Entry("", filed, key.get_name(), blob, target or "<memory>", 0)
        with self.lock:
            self.accepted.append((hop.name, fp))
            self.kh.add(target or "<memory>", entry)
            if target:
                path = Path(target)
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "a", encoding="utf-8") as f:
                    f.write(f"{filed} {key.get_name()} {key.get_base64()}\n")


    def accept_command(self, host: Host, hop: Hop, is_target: bool) -> str:
        """A command that accepts ``hop``'s key on the way to ``host`` (from preflight too)."""
        inv = f" --inventory {shlex.quote(self.inventory)}" if self.inventory else ""
        flag = host.name if is_target else hop.name
        return f"fleet fanout{inv} --hosts {shlex.quote(host.name)} --accept-new-host-key {shlex.quote(flag)} true"


class _Policy(paramiko.MissingHostKeyPolicy):
    """paramiko asks this for every key (its own store is left empty): fleet decides."""

    def __init__(self, store: HostKeyStore, hop: Hop, host: Host, is_target: bool) -> None:
        self.store, self.hop, self.host, self.is_target = store, hop, host, is_target

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        self.store.check(self.hop, self.host, key, self.is_target)


class _NoKeys(dict):
    """An always-empty host key table for paramiko, so every key goes to :class:`_Policy`."""

    def get(self, *_a, **_k):
        return None

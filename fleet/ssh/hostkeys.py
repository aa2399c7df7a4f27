"""Host keys for every SSH hop: checked as ``ssh -o StrictHostKeyChecking=yes`` would, under the
name OpenSSH uses, against known_hosts parsed once per run (:mod:`fleet.knownhosts`): every file
ssh reads for that hop (its UserKnownHostsFile and GlobalKnownHostsFile lists, or their defaults)
plus fleet's own (the inventory's). Unknown keys are accepted only when asked (per host or hop,
per run, or ``StrictHostKeyChecking accept-new`` in ssh_config); a changed or revoked key never.
An accepted key is written where ssh would write it (the first UserKnownHostsFile) when
ssh_config names one, else to the inventory's known_hosts; with HashKnownHosts yes in force its
name is hashed either way, as ssh hashes what it writes. The advice for an unknown key is a
command that accepts it (:meth:`HostKeyStore.accept_command`), which works from preflight too.

A host certificate is accepted as ssh accepts it (:mod:`fleet.ssh.hostcert`): signed by a CA of
an ``@cert-authority`` line for the hop's name, valid now, for the name connected to; neither
it nor its CA ``@revoked``. An unusable one falls back, as in ssh, to its plain key (known, or
refused naming why the certificate was not enough). Certificate algorithms are asked for first
only when a ``@cert-authority`` line could match the hop (:meth:`HostKeyStore.host_key_algorithms`)."""
from __future__ import annotations

import base64
import hashlib
import os
import shlex
import threading
from pathlib import Path
from typing import Any

import paramiko

from fleet.errors import HostKeyChanged, HostKeyRevoked, UnknownHostKey
from fleet.inventory import Host
from fleet.ssh.config import Hop
from fleet.ssh.hostcert import CERT_SUFFIX, CertError, cert_problem, parse_cert
from fleet.ssh.knownhosts import Entry, KnownHosts, Verdict, hash_name


def fingerprint_blob(blob: bytes) -> str:
    """OpenSSH-style SHA256 fingerprint of a public key blob."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style SHA256 fingerprint."""
    return fingerprint_blob(key.asbytes())


def _bare(hop: Hop) -> str | None:
    """For a ``[host]:port`` name, the host alone (ssh retries a key under it); else None."""
    return hop.hostname if hop.key_name == f"[{hop.hostname}]:{hop.port}" else None


def _cert_blob(key: paramiko.PKey) -> bytes | None:
    """The certificate the host showed, if it showed one (paramiko keeps it as ``public_blob``)."""
    pb = getattr(key, "public_blob", None)
    return pb.key_blob if pb is not None and str(pb.key_type).endswith(CERT_SUFFIX) else None


KRL_MAGIC = b"SSHKRL\n\0"


def revoked_by_file(path: str, blobs: list[bytes], shown: bytes = b"") -> str | None:
    """Why ssh's ``RevokedHostKeys`` file refuses a host key (``blobs``: the key, and a
    certificate's CA key; ``shown``: what the host showed, key or certificate), or None. As ssh: a
    file it cannot read refuses every key; a file of public keys (one per line) refuses those; a
    key revocation list (``ssh-keygen -k``, :mod:`fleet.ssh.krl`) those it revokes."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        return f"its RevokedHostKeys file {path} cannot be read ({exc.strerror or exc}), and ssh refuses every key then"
    if data.startswith(KRL_MAGIC):
        from fleet.ssh import krl
        try:
            how = krl.revoked(krl.parse(data), shown or blobs[0])
        except krl.KRLError as exc:
            return f"its RevokedHostKeys file {path} is a key revocation list that cannot be read ({exc}), and ssh " \
                   f"refuses every key then"
        return f"{how} is revoked by the key revocation list {path}" if how else None
    for n, raw in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        words = raw.split()
        if len(words) < 2 or words[0].startswith("#"):
            continue
        try:
            blob = base64.b64decode(words[1], validate=True)
        except (ValueError, TypeError):
            continue
        if blob in blobs:
            return f"it is listed in its RevokedHostKeys file {path}:{n}"
    return None


def _patterns(e: Entry) -> str:
    """A known_hosts line's host patterns, for a message (a hashed name is not worth printing)."""
    return "a hashed name" if e.patterns.startswith("|1|") else e.patterns


class HostKeyTransport(paramiko.Transport):
    """paramiko's Transport, asking for the host-key algorithms in ``key_types`` and no other:
    the list is HostKeyAlgorithms as ssh assembles and orders it, certificate algorithms included
    (paramiko's own appends a certificate variant to every name, beyond what ssh would ask for)."""

    @property
    def preferred_keys(self) -> tuple[str, ...]:
        return tuple(self._filter_algorithm("keys"))  # type: ignore[attr-defined]

    def auth_publickey(self, username: str, key: Any, event: Any = None) -> list[str]:
        """One round trip for the service request and the signed request (:mod:`fleet.ssh.fastauth`)."""
        from fleet.ssh.fastauth import auth_publickey

        return auth_publickey(self, username, key, event)


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
        self.commands = 0  # KnownHostsCommand runs

    def files_for(self, hop: Hop) -> tuple[str, ...]:
        """The known_hosts files that decide ``hop``'s key: ssh's (user, then global) and fleet's."""
        out: list[str] = []
        for f in (*(hop.user_known_hosts or hop.known_hosts), *hop.global_known_hosts, *self.files):
            if f and f not in out:
                out.append(f)
        return tuple(out)

    def _commanded(self, hop: Hop, host: Host | None, files: tuple[str, ...], invocation: str,
                   key: paramiko.PKey | None = None) -> tuple[str, ...]:
        """``files`` and, with a KnownHostsCommand, what it prints for this invocation (as ssh)."""
        if hop.known_hosts_command is None:
            return files
        from fleet.ssh import hostscmd
        try:
            # as OpenSSH 9.2: ORDER is asked about the host name itself, HOSTNAME about its known_hosts name
            out = hostscmd.run(hop.known_hosts_command, hop.hostname if invocation == "ORDER" else hop.key_name,
                               invocation,
                               *((key.get_name(), fingerprint(key), key.get_base64()) if key is not None else ()))
        except hostscmd.CommandFailed as exc:
            raise UnknownHostKey(host.name if host else hop.name, f"{exc}: ssh ends the connection then; nothing "
                                 f"was run") from None
        with self.lock:
            self.commands += 1
            label = f"KnownHostsCommand output #{self.commands}"
        self.kh.inject(label, out)
        return (*files, label)

    def host_key_algorithms(self, hop: Hop) -> list[str]:
        """The host-key algorithms to ask for, in order: ``hop``'s HostKeyAlgorithms (assembled as
        ssh does, :mod:`fleet.ssh.algs`), and unless it was given as an explicit list, first those
        known_hosts can check, as OpenSSH's order_hostkeyalgs: every certificate algorithm when a
        ``@cert-authority`` line could match ``hop``, the plain types known for it (an RSA key as
        its SHA-2 signature algorithms)."""
        allowed = list(hop.host_key_algorithms)
        if not hop.prefer_known:
            return allowed
        files = self._commanded(hop, None, self.files_for(hop), "ORDER")
        ca = bool(self.kh.authorities(files, hop.key_name, _bare(hop)))
        types = set(self.kh.known_types(files, hop.key_name))

        def known(alg: str) -> bool:  # a certificate algorithm counts for its plain key's type too
            plain = alg.replace("-cert-v01@openssh.com", "")
            return (ca and plain != alg) or ("ssh-rsa" if plain in ("rsa-sha2-512", "rsa-sha2-256") else plain) in types
        return [a for a in allowed if known(a)] + [a for a in allowed if not known(a)]

    def _cert_problem(self, hop: Hop, host: Host, blob: bytes, files: tuple[str, ...], where: str) -> str | None:
        """None if the host certificate ``blob`` is accepted as ssh accepts it, else why not
        (raises :class:`HostKeyRevoked` for a revoked CA, which nothing overrides)."""
        try:
            cert = parse_cert(blob)
        except CertError as exc:
            return f"host certificate for {where} cannot be read ({exc})"
        cafp = f"{cert.ca_type} {fingerprint_blob(cert.ca_blob)}"
        rev = self.kh.revoked(files, cert.ca_blob)
        if rev is not None:
            raise HostKeyRevoked(host.name, f"REVOKED CA for {where}: its host certificate is signed by CA {cafp}, "
                                 f"which is marked @revoked in {rev.path}:{rev.line}; nothing was run")
        if not any(e.blob == cert.ca_blob for e in self.kh.authorities(files, hop.key_name, _bare(hop))):
            other = next((e for e in self.kh.entries(files) if e.marker == "@cert-authority"
                          and e.blob == cert.ca_blob), None)
            why = (f"the @cert-authority line for it, {other.path}:{other.line}, is for {_patterns(other)}, not "
                   f"{hop.key_name}" if other is not None else f"no @cert-authority line for {hop.key_name} lists it")
            return f"host certificate for {where} is not signed by a trusted CA (its CA is {cafp}; {why})"
        bad = cert_problem(cert, hop.host_key_alias or hop.hostname, allowed=hop.ca_signature_algorithms)
        return None if bad is None else f"host certificate for {where} {bad}"

    def _ca_hint(self, hop: Hop, files: tuple[str, ...]) -> str:
        """For a plain key refused as unknown: what the ``@cert-authority`` lines there say ("" if none)."""
        cas = [e for e in self.kh.entries(files) if e.marker == "@cert-authority"]
        if not cas:
            return ""
        mine = self.kh.authorities(files, hop.key_name, _bare(hop))
        if mine:
            return (f" (it showed no host certificate, though {mine[0].path}:{mine[0].line} trusts a CA for it: "
                    f"is HostCertificate set in its sshd_config?)")
        e = cas[0]
        return f" (no @cert-authority line is for {hop.key_name}: {e.path}:{e.line} is for {_patterns(e)})"

    def check(self, hop: Hop, host: Host, key: paramiko.PKey, is_target: bool) -> None:
        """Accept ``key`` for ``hop`` or raise the typed failure, naming the hop."""
        blob = key.asbytes()  # a certificate's plain key
        files = self._commanded(hop, host, self.files_for(hop), "HOSTNAME", key)
        verdict, entries = self.kh.verdict(files, hop.key_name, key.get_name(), blob, _bare(hop))
        fp = fingerprint_blob(blob)
        who = host.name if is_target else f"jump host {hop.name} (on the way to {host.name})"
        where = f"{who} [{hop.key_name}]"
        if verdict == Verdict.REVOKED:
            e = entries[0]
            raise HostKeyRevoked(host.name, f"REVOKED host key for {where}: {key.get_name()} {fp} is marked "
                                 f"@revoked in {e.path}:{e.line}; nothing was run")
        cert = _cert_blob(key)
        if hop.revoked_host_keys:
            blobs = [blob]
            if cert is not None:
                try:
                    blobs.append(parse_cert(cert).ca_blob)
                except CertError:
                    pass
            why = revoked_by_file(hop.revoked_host_keys, blobs, cert or blob)
            if why:
                raise HostKeyRevoked(host.name, f"REVOKED host key for {where}: {key.get_name()} {fp}: {why}; "
                                     f"nothing was run")
        problem = self._cert_problem(hop, host, cert, files, where) if cert is not None else None
        if (cert is not None and problem is None) or verdict == Verdict.KNOWN:
            return  # a usable certificate, or (ssh falls back to it) the plain key is known
        if verdict == Verdict.CHANGED:
            e = entries[0]
            raise HostKeyChanged(
                host.name, f"HOST KEY CHANGED for {where}: it now offers {key.get_name()} {fp}, "
                f"{e.path}:{e.line} has {fingerprint_blob(e.blob)}. This may be an attack; nothing was "
                f"run. If the host was really reinstalled, remove that line"
                + (f" (the {problem})" if problem else ""))
        names = {host.name, hop.name, *host.aliases} if is_target else {hop.name}
        if not (self.accept_all or hop.accept_new or names & self.accept_hosts):
            if problem:
                raise UnknownHostKey(
                    host.name, f"{problem}; nothing was run. Re-sign the host key (ssh-keygen -s CA -h -n "
                    f"{hop.host_key_alias or hop.hostname}) or fix the @cert-authority line; or, if its plain key "
                    f"{key.get_name()} {fp} is right, accept and record that: "
                    f"'{self.accept_command(host, hop, is_target)}'")
            other = f" (known_hosts has only {', '.join(sorted({e.keytype for e in entries}))} keys for it)" \
                if entries else ""
            raise UnknownHostKey(
                host.name, f"unknown host key for {where}: {key.get_name()} {fp}{other}{self._ca_hint(hop, files)}; "
                f"nothing was run. "
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

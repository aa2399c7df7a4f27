"""The SSH transport: Fabric ``Connection``s with fleet's host-key policy, timeouts and exec loop.

Costly things happen once per run, not per host (the classic cause of slow fanout):
known_hosts files are parsed once into a shared :class:`HostKeyStore`, private keys are
loaded once, and one Fabric ``Config`` (which reads ``~/.ssh/config``) is shared.
"""
from __future__ import annotations

import base64
import errno
import hashlib
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import logging

import paramiko
from paramiko.message import Message
from paramiko.common import cMSG_CHANNEL_REQUEST

from .inventory import Host

# paramiko logs handshake failures with tracebacks; fleet reports them itself, once.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False


# ----------------------------------------------------------------------------- errors

class SSHFailure(Exception):
    """A typed transport failure. ``kind`` is stable (for JSON); ``retryable`` drives tenacity."""

    kind = "ssh"
    retryable = True
    timeout = False

    def __init__(self, host: str, message: str) -> None:
        self.host = host
        super().__init__(message)


class ConnectTimeout(SSHFailure):
    """TCP or the SSH handshake did not finish within the connect timeout."""

    kind = "connect_timeout"
    timeout = True


class ConnectFailed(SSHFailure):
    """Refused, unreachable, reset before the handshake finished."""

    kind = "connect_failed"


class DNSFailure(SSHFailure):
    """The name does not resolve."""

    kind = "dns"
    retryable = False


class AuthFailed(SSHFailure):
    """The server refused every credential. Never retried."""

    kind = "auth"
    retryable = False


class UnknownHostKey(SSHFailure):
    """The host's key is in no known_hosts file and was not accepted. Never retried."""

    kind = "unknown_host_key"
    retryable = False


class HostKeyChanged(SSHFailure):
    """The host presented a key different from the known one. Never retried, never accepted."""

    kind = "host_key_changed"
    retryable = False


class CommandTimeout(SSHFailure):
    """The command ran longer than the command timeout; it was signalled and the channel closed."""

    kind = "command_timeout"
    retryable = False
    timeout = True


class ConnectionLost(SSHFailure):
    """The connection dropped while the command ran. Not retried: the command may have acted."""

    kind = "connection_lost"
    retryable = False


class Aborted(SSHFailure):
    """The run was interrupted (Ctrl-C) while this host was in flight."""

    kind = "aborted"
    retryable = False


class NonZeroExit(SSHFailure):
    """The command ran and exited non-zero (retried only with retry_on_exit)."""

    kind = "exit"
    retryable = False

    def __init__(self, host: str, code: int, stdout: str, stderr: str) -> None:
        super().__init__(host, f"Exit code {code}")
        self.code = code
        self.stdout = stdout
        self.stderr = stderr


# -------------------------------------------------------------------------- host keys

def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style SHA256 fingerprint."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_name(address: str, port: int) -> str:
    """The name a host is filed under in known_hosts."""
    return address if port == 22 else f"[{address}]:{port}"


class HostKeyStore:
    """known_hosts files parsed once per run, shared by every connection (thread-safe).

    ``accept_all`` / ``accept_hosts`` say which unknown keys may be accepted; accepted
    keys are appended to ``write_to``. A changed key is always refused.
    """

    def __init__(self, files: list[str], write_to: str | None = None, accept_all: bool = False,
                 accept_hosts: set[str] | None = None) -> None:
        self.keys = paramiko.HostKeys()
        self.files = [f for f in files if f]
        for f in self.files:
            if os.path.isfile(f):
                try:
                    self.keys.load(f)
                except (OSError, paramiko.SSHException):
                    pass  # an unreadable known_hosts file just knows nothing
        self.write_to = write_to
        self.accept_all = accept_all
        self.accept_hosts = set(accept_hosts or ())
        self.lock = threading.Lock()
        self.accepted: list[tuple[str, str]] = []

    def policy(self, host: Host) -> "_Policy":
        """A paramiko missing-host-key policy for ``host``."""
        return _Policy(self, host)


class _Policy(paramiko.MissingHostKeyPolicy):
    def __init__(self, store: HostKeyStore, host: Host) -> None:
        self.store = store
        self.host = host

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        fp = fingerprint(key)
        h = self.host
        if not (self.store.accept_all or h.name in self.store.accept_hosts
                or any(a in self.store.accept_hosts for a in h.aliases)):
            raise UnknownHostKey(
                h.name,
                f"unknown host key for {h.name} ({hostname}): {key.get_name()} {fp}; nothing was run. "
                f"If this fingerprint is right, rerun with --accept-new-host-key {h.name} "
                f"(or --accept-new-host-keys for every host of this run)")
        with self.store.lock:
            self.store.keys.add(hostname, key.get_name(), key)
            self.store.accepted.append((h.name, fp))
            if self.store.write_to:
                path = Path(self.store.write_to)
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "a", encoding="utf-8") as f:
                    f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


# ----------------------------------------------------------------------------- session

@dataclass
class ExecResult:
    """A finished remote command."""

    exit_code: int
    stdout: str
    stderr: str


class KeyCache:
    """Private keys loaded once per run (parsing a key costs more than a handshake's share)."""

    def __init__(self) -> None:
        self._keys: dict[str, paramiko.PKey] = {}
        self._lock = threading.Lock()

    def get(self, path: str) -> paramiko.PKey:
        """The key at ``path``; raises AuthFailed-friendly errors for unreadable keys."""
        with self._lock:
            k = self._keys.get(path)
            if k is None:
                k = paramiko.PKey.from_path(path)
                self._keys[path] = k
            return k


def _send_signal(chan: paramiko.Channel, sig: str) -> None:
    # RFC 4254 6.9 "signal" request; OpenSSH >= 7.9 delivers it to the session's command.
    try:
        m = Message()
        m.add_byte(cMSG_CHANNEL_REQUEST)
        m.add_int(chan.remote_chanid)
        m.add_string("signal")
        m.add_boolean(False)
        m.add_string(sig)
        chan.transport._send_user_message(m)  # noqa: SLF001 - paramiko has no public API for it
    except Exception:  # noqa: BLE001 - best effort on a channel we are closing anyway
        pass


class SSHSession:
    """One host's connection for one attempt: connect, exec, collect, close."""

    def __init__(self, host: Host, store: HostKeyStore, keys: KeyCache, fabric_config: object,
                 connect_timeout: float, address: str | None = None) -> None:
        self.host = host
        self.store = store
        self.keys = keys
        self.fabric_config = fabric_config
        self.connect_timeout = connect_timeout
        self.address = address or host.address
        self.conn = None
        self._closed = threading.Event()

    def connect(self) -> None:
        """Open the connection, verifying the host key. Raises an :class:`SSHFailure`."""
        from fabric import Connection

        h = self.host
        kwargs: dict = {"timeout": self.connect_timeout, "banner_timeout": self.connect_timeout,
                        "auth_timeout": self.connect_timeout}
        if h.auth == "ssh-key" and h.identity_file:
            try:
                kwargs["pkey"] = self.keys.get(h.identity_file)
            except (OSError, paramiko.SSHException, ValueError) as exc:
                raise AuthFailed(h.name, f"cannot load identity_file {h.identity_file} for {h.name}: {exc}") from None
            kwargs.update(look_for_keys=False, allow_agent=False)
        elif h.auth == "agent":
            kwargs.update(look_for_keys=False, allow_agent=True)
        # A Fabric/Invoke Config is not thread-safe (any write re-merges it from scratch), so
        # each connection gets a cheap lazy Config over the run's one parsed ~/.ssh/config.
        from fabric import Config

        config = Config(ssh_config=self.fabric_config.base_ssh_config, lazy=True)
        conn = Connection(host=self.address, user=h.user, port=h.port, config=config,
                          connect_kwargs=kwargs)
        conn.client._system_host_keys = self.store.keys  # noqa: SLF001 - share one parse per run
        conn.client.set_missing_host_key_policy(self.store.policy(h))
        self.conn = conn
        where = f"{h.name} ({self.address}:{h.port})"
        try:
            conn.open()
        except SSHFailure:
            raise
        except paramiko.BadHostKeyException as exc:
            raise HostKeyChanged(
                h.name, f"HOST KEY CHANGED for {where}: it now offers {exc.key.get_name()} "
                f"{fingerprint(exc.key)}, known_hosts has {fingerprint(exc.expected_key)}. "
                f"This may be an attack; nothing was run. If the host was really reinstalled, "
                f"remove its old line from known_hosts ({', '.join(self.store.files) or '~/.ssh/known_hosts'})") from None
        except paramiko.AuthenticationException as exc:
            raise AuthFailed(h.name, f"authentication failed for {h.user or '(default user)'}@{where}: {exc}; "
                             f"check user and key ({h.identity_file or 'agent/default keys'})") from None
        except socket.gaierror as exc:
            raise DNSFailure(h.name, f"cannot resolve {self.address} for {h.name}: {exc.strerror}") from None
        except (socket.timeout, TimeoutError):
            raise ConnectTimeout(h.name, f"connect to {where} timed out after {self.connect_timeout:g}s") from None
        except paramiko.ssh_exception.NoValidConnectionsError:
            raise ConnectFailed(h.name, f"cannot connect to {where}: connection refused") from None
        except paramiko.SSHException as exc:
            msg = str(exc)
            # paramiko's start_client stops waiting at the timeout without raising; the next
            # step then fails with "No existing session": that too is a silent peer.
            if any(w in msg.lower() for w in ("banner", "timeout", "timed out", "no existing session")):
                raise ConnectTimeout(h.name, f"{where} accepted TCP but sent no SSH greeting within "
                                     f"{self.connect_timeout:g}s (is sshd running on that port?)") from None
            raise ConnectFailed(h.name, f"SSH handshake with {where} failed: {msg}") from None
        except OSError as exc:
            if exc.errno in (errno.ETIMEDOUT,):
                raise ConnectTimeout(h.name, f"connect to {where} timed out") from None
            raise ConnectFailed(h.name, f"cannot connect to {where}: {exc.strerror or exc}") from None
        finally:
            if self._closed.is_set():
                self.close()

    def run(self, command: str, timeout: float | None, abort: threading.Event,
            on_output: Callable[[str, str], None] | None = None) -> ExecResult:
        """Run ``command``; on timeout or abort, signal it, close the channel and raise."""
        h = self.host
        transport = self.conn.client.get_transport() if self.conn else None
        if transport is None or not transport.is_active():
            raise ConnectionLost(h.name, f"connection to {h.name} closed before the command started")
        try:
            chan = transport.open_session(timeout=self.connect_timeout)
            chan.exec_command(command)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if abort.is_set():
                raise Aborted(h.name, "interrupted before the command started") from None
            raise ConnectionLost(h.name, f"could not start the command on {h.name}: {exc}") from None
        out: list[bytes] = []
        err: list[bytes] = []
        pending = {"stdout": b"", "stderr": b""}

        def emit(stream: str, data: bytes, final: bool = False) -> None:
            if on_output is None:
                return
            buf = pending[stream] + data
            *lines, rest = buf.split(b"\n")
            for ln in lines:
                on_output(stream, ln.decode(errors="replace"))
            if final and rest:
                on_output(stream, rest.decode(errors="replace"))
                rest = b""
            pending[stream] = rest

        deadline = time.monotonic() + timeout if timeout else None
        try:
            while True:
                if abort.is_set():
                    _send_signal(chan, "TERM")
                    raise Aborted(h.name, "interrupted while the command ran (Ctrl-C)")
                if deadline is not None and time.monotonic() >= deadline:
                    _send_signal(chan, "TERM")
                    _send_signal(chan, "KILL")
                    raise CommandTimeout(h.name, f"command timed out after {timeout:g}s on {h.name}; "
                                         f"it was signalled and the connection closed")
                wait = 0.2 if deadline is None else max(0.001, min(0.2, deadline - time.monotonic()))
                chan.settimeout(wait)
                try:
                    data = chan.recv(65536)
                except socket.timeout:
                    data = None
                while chan.recv_stderr_ready():
                    e = chan.recv_stderr(65536)
                    err.append(e)
                    emit("stderr", e)
                if data:
                    out.append(data)
                    emit("stdout", data)
                elif data == b"":
                    break
            # stdout closed: the exit status follows at once unless the link died.
            remaining = 5.0 if deadline is None else max(0.1, deadline - time.monotonic())
            if not chan.status_event.wait(remaining) and not chan.exit_status_ready():
                if not transport.is_active():
                    raise ConnectionLost(h.name, f"connection to {h.name} was lost while the command ran")
                raise CommandTimeout(h.name, f"command on {h.name} closed its output but sent no exit status")
            while chan.recv_stderr_ready():
                e = chan.recv_stderr(65536)
                err.append(e)
                emit("stderr", e)
            emit("stdout", b"", final=True)
            emit("stderr", b"", final=True)
            code = chan.recv_exit_status()
            if code == -1:
                if abort.is_set():
                    raise Aborted(h.name, "interrupted while the command ran (Ctrl-C)")
                raise ConnectionLost(h.name, f"connection to {h.name} was lost while the command ran "
                                     f"(no exit status; the remote sshd or host may have died)")
            return ExecResult(code, b"".join(out).decode(errors="replace"),
                              b"".join(err).decode(errors="replace"))
        except (EOFError, OSError, paramiko.SSHException) as exc:
            if abort.is_set():
                raise Aborted(h.name, "interrupted while the command ran (Ctrl-C)") from None
            raise ConnectionLost(h.name, f"connection to {h.name} was lost while the command ran: {exc}") from None
        finally:
            try:
                chan.close()
            except Exception:  # noqa: BLE001
                pass

    def get(self, remote: str, local: str) -> None:
        """Fetch one file with SFTP."""
        sftp = self.conn.client.open_sftp()
        try:
            sftp.get(remote, local)
        finally:
            sftp.close()

    def close(self) -> None:
        """Close the connection (safe from another thread, safe twice)."""
        self._closed.set()
        conn = self.conn
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass

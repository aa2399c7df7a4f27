"""The SSH transport: Fabric ``Connection``s that behave as ``ssh NAME`` does.

- Where to go comes from :mod:`fleet.sshconfig` (ssh_config applied to the inventory name,
  ProxyJump hops included); every hop is its own Fabric ``Connection`` over a socket fleet
  opened (TCP, a ``direct-tcpip`` channel through the previous hop, or a ProxyCommand), so each
  gets fleet's host-key policy, timeouts and accept flags, and all are closed with the session.
- Host keys are checked under the name OpenSSH uses (HostKeyAlias, ``host`` or ``[host]:port``)
  by :mod:`fleet.knownhosts`, never under a resolved IP; known_hosts files are parsed once per run.
- Commands: stdin is closed at once (``cat`` returns, as with ``ssh host cat </dev/null``);
  ``exit-signal`` is reported; on timeout or Ctrl-C the remote command's process group is
  killed over a second channel of the same connection (see :data:`KILL_SCRIPT`), for root and
  non-root logins alike; output streams to the artifact files byte-exact while only a bounded
  tail is kept in memory.
"""
from __future__ import annotations

import errno
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import paramiko
from paramiko.channel import Channel
from paramiko.common import MSG_CHANNEL_REQUEST, cMSG_CHANNEL_REQUEST
from paramiko.message import Message

from fleet.errors import (  # noqa: F401
    Aborted,
    AuthFailed,
    CommandTimeout,
    ConnectFailed,
    ConnectionLost,
    ConnectTimeout,
    DNSFailure,
    HostKeyChanged,
    HostKeyRevoked,
    NonZeroExit,
    SSHFailure,
    UnknownHostKey,
)
from fleet.inventory import Host
from fleet.ssh.config import Hop
from fleet.ssh.hostkeys import HostKeyStore, _NoKeys, _Policy, fingerprint, fingerprint_blob  # noqa: F401
from fleet.ssh.streams import KEEP_BYTES, StreamSink  # noqa: F401

# ----------------------------------------------------------------------------- errors


# -------------------------------------------------------------------------- host keys


def _handle_request(chan: Channel, m: Message) -> None:
    # paramiko ignores "exit-signal" (RFC 4254 6.10); OpenSSH sends it for a killed command.
    start = m.packet.tell()
    if m.get_text() == "exit-signal":
        m.get_boolean()
        chan.fleet_exit_signal = m.get_text() or "UNKNOWN"  # type: ignore[attr-defined]
        chan.status_event.set()
        return
    m.packet.seek(start)
    Channel._handle_request(chan, m)  # noqa: SLF001


_HANDLERS = dict(paramiko.Transport._channel_handler_table)  # noqa: SLF001
_HANDLERS[MSG_CHANNEL_REQUEST] = _handle_request


def _transport_factory(preferred: list[str]) -> Callable[..., paramiko.Transport]:
    def make(sock, disabled_algorithms=None):
        t = paramiko.Transport(sock, disabled_algorithms=disabled_algorithms)
        t._channel_handler_table = _HANDLERS  # noqa: SLF001
        if preferred:
            opts = t.get_security_options()
            want: list[str] = []
            for kt in preferred:
                want += ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"] if kt == "ssh-rsa" else [kt]
            have = list(opts.key_types)
            first = [k for k in want if k in have]
            opts.key_types = first + [k for k in have if k not in first]
        return t
    return make


# ----------------------------------------------------------------------------- output


@dataclass
class ExecResult:
    """A finished remote command. ``exit_code`` is None when it was killed by ``signal``."""

    exit_code: int | None
    stdout: str
    stderr: str
    signal: str | None = None


class KeyCache:
    """Private keys loaded once per run (parsing a key costs more than a handshake's share)."""

    def __init__(self) -> None:
        self._keys: dict[str, paramiko.PKey] = {}
        self._lock = threading.Lock()

    def get(self, path: str) -> paramiko.PKey:
        """The key at ``path``."""
        with self._lock:
            k = self._keys.get(path)
            if k is None:
                k = paramiko.PKey.from_path(path)
                self._keys[path] = k
            return k


# Kills the timed-out command and everything in its process group, over a second channel of
# the same connection. sshd makes each session's shell a session (and group) leader, and every
# channel of one connection is a child of the same sshd process: so the script finds its own
# sshd parent and kills the process groups of that parent's other children. No user data is
# in it; it works for root (whose "signal" requests OpenSSH refuses) and for any other user.
KILL_SCRIPT = (
    "sh -c 'me=$$; p=$PPID; "
    "case \"$(ps -o comm= -p \"$p\" 2>/dev/null)\" in *sshd*) s=$p;; "
    "*) s=$(ps -o ppid= -p \"$p\" | tr -d \" \");; esac; "
    "kids=$(ps -A -o pid= -o ppid= | while read -r pid ppid; do "
    "[ \"$ppid\" = \"$s\" ] && [ \"$pid\" != \"$me\" ] && [ \"$pid\" != \"$p\" ] && echo \"$pid\"; done); "
    "for k in $kids; do kill -TERM -\"$k\" 2>/dev/null || kill -TERM \"$k\" 2>/dev/null; done; "
    "[ -n \"$kids\" ] && sleep 0.3; "
    "for k in $kids; do kill -KILL -\"$k\" 2>/dev/null || kill -KILL \"$k\" 2>/dev/null; done; "
    "echo $kids'"
)


def _send_signal(chan: paramiko.Channel, sig: str) -> None:
    # RFC 4254 6.9 "signal"; OpenSSH delivers it (to the process group) for non-root logins.
    try:
        m = Message()
        m.add_byte(cMSG_CHANNEL_REQUEST)
        m.add_int(chan.remote_chanid)
        m.add_string("signal")
        m.add_boolean(False)
        m.add_string(sig)
        chan.transport._send_user_message(m)  # noqa: SLF001 - paramiko has no public API for it
    except Exception:  # noqa: BLE001 - best effort; the kill channel does the real work
        pass


# ----------------------------------------------------------------------------- session

class SSHSession:
    """One host's connection (and its jump hops) for one attempt: connect, exec, collect, close."""

    def __init__(self, host: Host, target: Hop, store: HostKeyStore, keys: KeyCache,
                 connect_timeout: float, address: str | None = None, sock: socket.socket | None = None) -> None:
        self.host = host
        self.target = target
        self.store = store
        self.keys = keys
        self.connect_timeout = connect_timeout
        self.address = address  # the first hop's address as preflight resolved it (saves a lookup)
        self.sock = sock        # an open TCP connection to the first hop (preflight's), used once
        self.conns: list = []
        self.conn = None
        self.running = False
        self._closed = threading.Event()

    # ------------------------------------------------------------------ connect
    def _timeout(self, hop: Hop) -> float:
        return hop.connect_timeout or self.connect_timeout

    def _label(self, hop: Hop) -> str:
        if hop is self.target:
            return f"{self.host.name} ({hop.hostname}:{hop.port}" + (
                f" via {' -> '.join(h.name for h in self.target.chain()[:-1])})" if hop.via else ")")
        return f"jump host {hop.name} ({hop.hostname}:{hop.port}) on the way to {self.host.name}"

    def _tcp(self, hop: Hop) -> object:
        h, where, ct = self.host, self._label(hop), self._timeout(hop)
        if self.sock is not None and not hop.proxy_command:
            sock, self.sock = self.sock, None
            sock.settimeout(ct)
            return sock
        if hop.proxy_command:
            try:
                return paramiko.ProxyCommand(hop.proxy_command)
            except Exception as exc:  # noqa: BLE001
                raise ConnectFailed(h.name, f"ProxyCommand for {where} failed to start: {exc}") from None
        addr = self.address if (self.address and hop.via is None) else hop.hostname
        try:
            return socket.create_connection((addr.encode("ascii") if addr.isascii() else addr, hop.port),
                                            timeout=ct)
        except socket.gaierror as exc:
            raise DNSFailure(h.name, f"cannot resolve {hop.hostname} for {where}: {exc.strerror}") from None
        except (socket.timeout, TimeoutError):
            raise ConnectTimeout(h.name, f"connect to {where} timed out after {ct:g}s") from None
        except ConnectionRefusedError:
            raise ConnectFailed(h.name, f"cannot connect to {where}: connection refused") from None
        except OSError as exc:
            if exc.errno == errno.ETIMEDOUT:
                raise ConnectTimeout(h.name, f"connect to {where} timed out") from None
            raise ConnectFailed(h.name, f"cannot connect to {where}: {exc.strerror or exc}") from None

    def _forward(self, prev: Hop, transport: paramiko.Transport, hop: Hop) -> object:
        h, ct = self.host, self._timeout(hop)
        try:
            return transport.open_channel("direct-tcpip", (hop.hostname, hop.port), ("127.0.0.1", 0),
                                          timeout=ct)
        except paramiko.ChannelException as exc:
            raise ConnectFailed(h.name, f"jump host {prev.name} refused to forward to {hop.hostname}:{hop.port} "
                                f"for {self.host.name}: {exc.text} (is AllowTcpForwarding on there, and "
                                f"is {hop.hostname}:{hop.port} reachable from it?)") from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if "timeout" in str(exc).lower():
                raise ConnectTimeout(h.name, f"jump host {prev.name} did not open a connection to "
                                     f"{hop.hostname}:{hop.port} within {ct:g}s") from None
            raise ConnectFailed(h.name, f"jump host {prev.name} could not forward to "
                                f"{hop.hostname}:{hop.port}: {exc}") from None

    def _auth_kwargs(self, hop: Hop) -> dict:
        h = self.host
        kw: dict = {}
        ids = hop.identities
        if hop is self.target and h.auth == "agent":
            kw.update(look_for_keys=False, allow_agent=True)
        elif ids:
            try:
                existing = [p for p in ids if os.path.exists(p)]
                if not existing and hop.identities_only:
                    raise FileNotFoundError(ids[0])
                if existing:
                    kw["pkey"] = self.keys.get(existing[0])
                    if len(existing) > 1:
                        kw["key_filename"] = existing[1:]
            except (OSError, paramiko.SSHException, ValueError) as exc:
                raise AuthFailed(h.name, f"cannot load identity file {ids[0]} for {self._label(hop)}: "
                                 f"{exc}") from None
            kw.update(look_for_keys=not hop.identities_only, allow_agent=not hop.identities_only)
        return kw

    def _open(self, hop: Hop, sock: object, is_target: bool):
        from fabric import Config, Connection

        h, ct, where = self.host, self._timeout(hop), self._label(hop)
        kwargs = dict(sock=sock, timeout=ct, banner_timeout=ct, auth_timeout=ct,
                      transport_factory=_transport_factory(self.store.known_types(hop)))
        kwargs.update(self._auth_kwargs(hop))
        # ssh_config was applied by fleet already: give Fabric an empty one (no second lookup,
        # no "Refusing to be ambiguous" over ConnectTimeout). Config is per connection: a
        # Fabric/Invoke Config is not thread-safe.
        config = Config(ssh_config=paramiko.SSHConfig(), lazy=True)
        conn = Connection(host=hop.hostname, user=hop.user, port=hop.port, config=config, connect_kwargs=kwargs)
        conn.client._system_host_keys = _NoKeys()  # noqa: SLF001 - fleet's store decides every key
        conn.client.set_missing_host_key_policy(_Policy(self.store, hop, h, is_target))
        self.conns.append(conn)
        try:
            conn.open()
        except SSHFailure:
            raise
        except paramiko.AuthenticationException as exc:
            raise AuthFailed(h.name, f"authentication failed for {hop.user}@{where}: {exc}; check user and "
                             f"key ({', '.join(hop.identities) or 'agent/default keys'})") from None
        except (socket.timeout, TimeoutError):
            raise ConnectTimeout(h.name, f"SSH handshake with {where} timed out after {ct:g}s") from None
        except paramiko.SSHException as exc:
            msg = str(exc)
            low = msg.lower()
            if "no authentication methods" in low or "authentication" in low:
                raise AuthFailed(h.name, f"authentication failed for {hop.user}@{where}: {msg}; no key was "
                                 f"offered or accepted (check IdentityFile / identity_file and the agent)") from None
            # paramiko's start_client stops waiting at the timeout without raising; the next
            # step then fails with "No existing session": that too is a silent peer.
            if any(w in low for w in ("banner", "timeout", "timed out", "no existing session")):
                raise ConnectTimeout(h.name, f"{where} accepted the connection but sent no SSH greeting "
                                     f"within {ct:g}s (is sshd running on that port?)") from None
            raise ConnectFailed(h.name, f"SSH handshake with {where} failed: {msg}") from None
        except (EOFError, OSError) as exc:
            raise ConnectFailed(h.name, f"connection to {where} was closed during the handshake: "
                                f"{getattr(exc, 'strerror', None) or exc or type(exc).__name__}") from None
        return conn

    def connect(self) -> None:
        """Open every hop and the target, verifying each host key. Raises an :class:`SSHFailure`."""
        chain = self.target.chain()
        try:
            prev: tuple[Hop, paramiko.Transport] | None = None
            for hop in chain:
                if self._closed.is_set():
                    raise Aborted(self.host.name, "interrupted before the connection was made")
                sock = self._tcp(hop) if prev is None else self._forward(prev[0], prev[1], hop)
                conn = self._open(hop, sock, hop is self.target)
                prev = (hop, conn.client.get_transport())
            self.conn = self.conns[-1]
        except SSHFailure as exc:
            if self._closed.is_set() and not isinstance(exc, Aborted):
                raise Aborted(self.host.name, f"interrupted while connecting ({exc})") from None
            raise
        finally:
            if self._closed.is_set():
                self.close()

    # ------------------------------------------------------------------ run
    def kill_remote(self, budget: float = 3.0) -> bool:
        """Kill the running command's process groups over a second channel. True if it ran."""
        transport = self.conn.client.get_transport() if self.conn else None
        if transport is None or not transport.is_active():
            return False
        try:
            ch = transport.open_session(timeout=budget)
            ch.exec_command(KILL_SCRIPT)
            ch.shutdown_write()
            ok = ch.status_event.wait(budget)
            ch.close()
            return bool(ok)
        except Exception:  # noqa: BLE001 - best effort; the caller reports the timeout either way
            return False

    def run(self, command: str, timeout: float | None, abort: threading.Event,
            on_output: Callable[[str, str], None] | None = None,
            artifacts: Path | None = None) -> ExecResult:
        """Run ``command`` with stdin closed. On timeout or abort, kill it, close, and raise.

        ``artifacts``: a path prefix; the streams go to ``<prefix>.stdout`` / ``.stderr``.
        """
        h = self.host
        transport = self.conn.client.get_transport() if self.conn else None
        if transport is None or not transport.is_active():
            raise ConnectFailed(h.name, f"connection to {h.name} closed before the command started")
        try:
            chan = transport.open_session(timeout=self.connect_timeout)
            chan.exec_command(command)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if abort.is_set():
                raise Aborted(h.name, "interrupted before the command started") from None
            # not started: retryable like any transport error before exec
            raise ConnectFailed(h.name, f"could not start the command on {h.name}: {exc}") from None
        self.running = True
        out = StreamSink(Path(f"{artifacts}.stdout") if artifacts else None,
                         (lambda ln: on_output("stdout", ln)) if on_output else None)
        err = StreamSink(Path(f"{artifacts}.stderr") if artifacts else None,
                         (lambda ln: on_output("stderr", ln)) if on_output else None)

        def drain_stderr() -> None:
            while chan.recv_stderr_ready():
                err.write(chan.recv_stderr(65536))

        def stop(exc_type: type[SSHFailure], why: str) -> SSHFailure:
            _send_signal(chan, "TERM")
            killed = self.kill_remote(2.0 if exc_type is Aborted else 3.0)
            try:
                drain_stderr()
            except Exception:  # noqa: BLE001
                pass
            out.close()
            err.close()
            tail = ("; its processes were killed" if killed else
                    "; the remote processes could not be confirmed killed")
            return exc_type(h.name, why + tail, out.text(), err.text())

        deadline = time.monotonic() + timeout if timeout else None
        try:
            try:
                chan.shutdown_write()  # stdin: EOF at once, as ssh does with no input
            except (EOFError, OSError, paramiko.SSHException):
                pass
            while True:
                if abort.is_set():
                    raise stop(Aborted, "interrupted while the command ran (Ctrl-C)")
                if deadline is not None and time.monotonic() >= deadline:
                    raise stop(CommandTimeout, f"command timed out after {timeout:g}s on {h.name}")
                wait = 0.2 if deadline is None else max(0.001, min(0.2, deadline - time.monotonic()))
                chan.settimeout(wait)
                try:
                    data = chan.recv(65536)
                except socket.timeout:
                    data = None
                drain_stderr()
                if data:
                    out.write(data)
                elif data == b"":
                    break
            # stdout closed: the exit status follows at once unless the link died.
            remaining = 5.0 if deadline is None else max(0.1, deadline - time.monotonic())
            if not chan.status_event.wait(remaining) and not chan.exit_status_ready():
                if not transport.is_active():
                    raise ConnectionLost(h.name, f"connection to {h.name} was lost while the command ran",
                                         out.text(), err.text())
                raise stop(CommandTimeout, f"command on {h.name} closed its output but sent no exit status")
            drain_stderr()
            out.close()
            err.close()
            sig = getattr(chan, "fleet_exit_signal", None)
            if sig:
                return ExecResult(None, out.text(), err.text(), sig)
            code = chan.recv_exit_status()
            if code == -1:
                if abort.is_set():
                    raise Aborted(h.name, "interrupted while the command ran (Ctrl-C)", out.text(), err.text())
                raise ConnectionLost(h.name, f"connection to {h.name} was lost while the command ran "
                                     f"(no exit status; the remote sshd or host may have died)",
                                     out.text(), err.text())
            return ExecResult(code, out.text(), err.text())
        except SSHFailure:
            raise
        except (EOFError, OSError, paramiko.SSHException) as exc:
            if abort.is_set():
                raise Aborted(h.name, "interrupted while the command ran (Ctrl-C)", out.text(), err.text()) from None
            raise ConnectionLost(h.name, f"connection to {h.name} was lost while the command ran: {exc}",
                                 out.text(), err.text()) from None
        finally:
            out.close()
            err.close()
            self.running = False
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
        """Close the target and every hop, last first (safe from another thread, safe twice)."""
        self._closed.set()
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        for conn in reversed(list(self.conns)):
            try:
                # Fabric's close() does nothing until open() has returned; closing the paramiko
                # client also ends a handshake in progress (Ctrl-C on a silent peer).
                conn.client.close()
                conn.close()
            except Exception:  # noqa: BLE001
                pass


__all__ = ["Aborted", "AuthFailed", "CommandTimeout", "ConnectFailed", "ConnectTimeout", "ConnectionLost",
           "DNSFailure", "ExecResult", "HostKeyChanged", "HostKeyRevoked", "HostKeyStore", "KeyCache",
           "NonZeroExit", "SSHFailure", "SSHSession", "StreamSink", "UnknownHostKey", "fingerprint"]

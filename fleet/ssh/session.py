"""The SSH transport: Fabric ``Connection``s that behave as ``ssh NAME`` does.

- Where to go comes from :mod:`fleet.ssh.config` (ssh_config applied to the inventory name,
  ProxyJump hops included); every hop is its own Fabric ``Connection`` over a socket fleet
  opened (TCP, a ``direct-tcpip`` channel through the previous hop, or a ProxyCommand), so each
  gets fleet's host-key policy, timeouts and accept flags, and all are closed with the session.
- Host keys are checked under the name OpenSSH uses (HostKeyAlias, ``host`` or ``[host]:port``)
  by :mod:`fleet.ssh.hostkeys`, never under a resolved IP; known_hosts files are parsed once per run.
- Commands run as :mod:`fleet.ssh.remote` says: stdin closed at once, ``exit-signal`` reported,
  everything the command started killed over a second channel on timeout or Ctrl-C (a
  ``setsid`` child left alone and named), output streamed byte-exact to the artifact files
  with a bounded tail in memory.

:class:`SSHSession` is one attempt's connection (a :class:`~fleet.ssh.transport.Transport`);
:class:`SSHLink` is how the runner reaches one host over SSH for a whole run.
"""
from __future__ import annotations

import errno
import os
import shlex
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import paramiko

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
from fleet.results import PreflightResult
from fleet.ssh import predial
from fleet.ssh.algs import NoHostKeyAlgorithm, explain
from fleet.ssh.config import Hop
from fleet.ssh.fastauth import take_early
from fleet.ssh.hostkeys import (  # noqa: F401
    HostKeyStore,
    HostKeyTransport,
    _NoKeys,
    _Policy,
    fingerprint,
    fingerprint_blob,
)
from fleet.ssh.remote import CHANNEL_HANDLERS, KILL_SCRIPT, Reaped, kill_remote, run_command  # noqa: F401
from fleet.ssh.streams import KEEP_BYTES, StreamSink  # noqa: F401
from fleet.ssh.transport import ExecResult, LineHook

if TYPE_CHECKING:  # pragma: no cover
    from fabric import Connection

    from fleet.ssh.transport import Transport
    from fleet.ssh.warm import ConnectionPool


def _transport_factory(wanted: list[str]) -> Callable[..., paramiko.Transport]:
    """Transports asking for the ``wanted`` host-key algorithms, in that order, and no other (as
    ssh's HostKeyAlgorithms, see :meth:`HostKeyStore.host_key_algorithms`): those paramiko verifies."""
    ask = [k for k in wanted if k in paramiko.Transport._key_info]  # type: ignore[attr-defined]  # noqa: SLF001

    def make(sock, disabled_algorithms=None):
        if not ask:  # as ssh's "no matching host key type", before a word is sent
            raise paramiko.SSHException("no acceptable host key: fleet can verify none of HostKeyAlgorithms")
        t = HostKeyTransport(sock, disabled_algorithms=disabled_algorithms)
        if isinstance(sock, predial.PreDialled):
            predial.said_already(t, sock.banner)
        predial.sent(t.local_version)
        t._channel_handler_table = CHANNEL_HANDLERS  # type: ignore[attr-defined]  # noqa: SLF001
        t.get_security_options().key_types = ask
        return t
    return make


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


# ----------------------------------------------------------------------------- session

class SSHSession:
    """One host's connection (and its jump hops) for one attempt: connect, exec, collect, close."""

    def __init__(self, host: Host, target: Hop, store: HostKeyStore, keys: KeyCache,
                 connect_timeout: float, address: str | None = None, sock: socket.socket | None = None,
                 connect_timeout_given: bool = False) -> None:
        self.host = host
        self.target = target
        self.store = store
        self.keys = keys
        self.connect_timeout = connect_timeout
        self.connect_timeout_given = connect_timeout_given  # typed: it beats ssh_config (ssh -o)
        self.address = address  # the first hop's address as preflight resolved it (saves a lookup)
        self.sock = sock        # an open TCP connection to the first hop (preflight's), used once
        self.conns: list[Connection] = []  # every hop's, the target's last
        self.conn: Connection | None = None  # the target's, once connected
        self.running = False
        self.commands = 0  # commands started on this connection (a warm one runs several)
        self.spare: Any = None  # a session channel opened ahead for the next command (warm pool)
        self._preparing = threading.Lock()
        self.due = threading.Event()  # cleared: a spare is on its way (fleet.ssh.warm.open_spare_soon)
        self.due.set()
        self._closed = threading.Event()

    # ------------------------------------------------------------------ connect
    def _timeout(self, hop: Hop) -> float:
        """A typed --connect-timeout, else the hop's ssh_config ConnectTimeout, else the setting."""
        if self.connect_timeout_given:
            return self.connect_timeout
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
            return sock  # predial.connect's: no Nagle already
        if hop.proxy_command:
            try:
                return paramiko.ProxyCommand(shlex.join(hop.proxy_argv))
            except Exception as exc:  # noqa: BLE001
                raise ConnectFailed(h.name, f"ProxyCommand for {where} failed to start: {exc}") from None
        addr = self.address if (self.address and hop.via is None) else hop.hostname
        try:
            # an ASCII name as bytes: no idna codec import (~25 ms); the socket module takes bytes
            return predial.connect(addr.encode("ascii") if addr.isascii() else addr, hop.port, ct)
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
                      transport_factory=_transport_factory(self.store.host_key_algorithms(hop)))
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
            raise (NoHostKeyAlgorithm if "no acceptable host key" in low else ConnectFailed)(
                h.name, f"SSH handshake with {where} failed: {explain(msg, hop)}") from None
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
                # the session channel asked for with the authentication (fleet.ssh.fastauth): the
                # target's first command runs on it; a jump host's is not needed
                early = take_early(prev[1], self._timeout(hop))
                if hop is self.target:
                    self.spare = early
                elif early is not None:
                    early.close()
            self.conn = self.conns[-1]
        except SSHFailure as exc:
            if self._closed.is_set() and not isinstance(exc, Aborted):
                raise Aborted(self.host.name, f"interrupted while connecting ({exc})") from None
            raise
        finally:
            if self._closed.is_set():
                self.close()

    # ------------------------------------------------------------------ run
    def kill_remote(self, budget: float = 3.0, elapsed: float = 0.0) -> Reaped:
        """End the running command over a second channel; what it did (true if it ran)."""
        return kill_remote(self, budget, elapsed)

    def run(self, command: str, timeout: float | None, abort: threading.Event,
            on_output: LineHook | None = None, artifacts: Path | None = None) -> ExecResult:
        """Run ``command`` with stdin closed. On timeout or abort, kill it, close, and raise.

        ``artifacts``: a path prefix; the streams go to ``<prefix>.stdout`` / ``.stderr``.
        See :func:`fleet.ssh.remote.run_command`.
        """
        return run_command(self, command, timeout, abort, on_output, artifacts)

    def get(self, remote: str, local: str) -> None:
        """Fetch one file with SFTP."""
        if self.conn is None:
            raise ConnectFailed(self.host.name, f"not connected to {self.host.name}: cannot fetch {remote}")
        sftp = self.conn.client.open_sftp()
        try:
            sftp.get(remote, local)
        finally:
            sftp.close()

    def prepare(self) -> None:
        """Open the next command's session channel now (while it waits for the canary), so the
        command sends only its exec request; nothing if it cannot (the command then opens it)."""
        try:
            t = self.conn.client.get_transport() if self.conn else None
            if self.spare is not None or t is None or not t.is_active() or not self._preparing.acquire(False):
                return  # one at hand, no connection, or being opened by another thread
            try:
                self.spare = t.open_session(timeout=self.connect_timeout)
            except Exception:  # noqa: BLE001 - the command opens its channel itself and says why it cannot
                pass
            finally:
                self._preparing.release()
        finally:
            self.due.set()

    def take_spare(self) -> Any:
        """The channel opened ahead for this command, if it is still open; else None. One on its
        way is waited for: it comes sooner than a channel the command would open now."""
        self.due.wait(self.connect_timeout)
        ch, self.spare = self.spare, None
        if ch is not None and ch.active and not ch.closed:
            return ch
        return None

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


class SSHLink:
    """How the runner reaches one host over SSH for a whole run (a :class:`~fleet.ssh.transport.Link`).

    Each attempt's :class:`SSHSession` gets the run's host keys, private keys and connect
    timeout (``connect_timeout_given``: typed, so it beats ssh_config's ConnectTimeout as ``ssh
    -o`` would; else ssh_config's wins over it), the address preflight found answering, and (once) preflight's open TCP
    connection; a long-lived caller's :class:`~fleet.ssh.warm.ConnectionPool` lends warm
    sessions and takes sound ones back. Retries follow the options (only failures before the
    command started, see :mod:`fleet.ssh.attempts`).
    """

    max_attempts: int | None = None

    def __init__(self, host: Host, target: Hop, store: HostKeyStore, keys: KeyCache, connect_timeout: float,
                 pool: ConnectionPool | None = None, connect_timeout_given: bool = False) -> None:
        self.host = host
        self.target = target
        self.user = target.user
        self.store = store
        self.keys = keys
        self.connect_timeout = connect_timeout
        self.connect_timeout_given = connect_timeout_given
        self.pool = pool
        self.keep: list[socket.socket] = []  # preflight's TCP connection, used by the first attempt
        self.address: str | None = None

    def warm(self) -> SSHSession | None:
        """A connection kept from an earlier command for this host and target (it shows the
        host is reachable, so the runner skips preflight), or None."""
        return self.pool.take(self.host, self.target) if self.pool is not None else None

    def preflighted(self, pf: PreflightResult) -> None:
        """Dial the address that answered preflight; on a failed preflight close its socket."""
        if pf.ok:
            self.address = pf.address or None
            return
        for sock in self.keep:
            sock.close()
        self.keep.clear()

    def open(self) -> SSHSession:
        """A new session (unconnected) for one attempt."""
        return SSHSession(self.host, self.target, self.store, self.keys, self.connect_timeout, self.address,
                          sock=self.keep.pop() if self.keep else None,
                          connect_timeout_given=self.connect_timeout_given)

    def dial(self, sess: Transport) -> None:
        """Connect every hop of ``sess`` (counted by the pool, when there is one)."""
        sess.connect()
        if self.pool is not None:
            self.pool.dials += 1

    def release(self, sess: Transport, reusable: bool) -> None:
        """Give a sound ``sess`` back to the pool, when there is one; close it otherwise."""
        if reusable and self.pool is not None and isinstance(sess, SSHSession):
            self.pool.give(sess)
        else:
            sess.close()

__all__ = ["Aborted", "AuthFailed", "CommandTimeout", "ConnectFailed", "ConnectTimeout", "ConnectionLost",
           "DNSFailure", "ExecResult", "HostKeyChanged", "HostKeyRevoked", "HostKeyStore", "KeyCache",
           "NonZeroExit", "SSHFailure", "SSHLink", "SSHSession", "StreamSink", "UnknownHostKey", "fingerprint"]

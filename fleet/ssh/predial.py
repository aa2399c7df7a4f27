"""The pre-dial: a repeated cold ``fleet fanout`` opens its hosts' TCP connections and says its SSH
version while the program still loads.

A cold CLI run spends its first ~200 ms importing paramiko, Invoke and the rest of fleet, with the
network idle. Before it can exchange keys with a host it then waits for TCP's handshake and the
two version lines (two round trips: 80 ms of a Tailscale link at 40 ms), which the kernel and the
host could have done meanwhile. So when a CLI fanout has dialled its hosts, :func:`finish` gives
the console script (:mod:`fleet.cli.entry`) their addresses (the ``address:port`` each TCP
connection went to, no name, no proxy), the SSH version line it sent and the stamps of the files
its plan came from (inventory, ssh_config), which it keeps in the user's cache under the command
line and everything its settings depend on (its keyed cache, as for ``--list`` and the journal's
path). The next identical call (:func:`begin`, from the console script's first lines, before any
other import) finds them and, on one thread that only waits on sockets, connects to each address
and sends the version line as soon as the connection is up. Nothing else is sent and nothing is read: the
host's own version line and key exchange wait in the socket for the run.

The run takes a socket where it would connect (:func:`connect`: the same address and port, while
the pre-dial is young), so preflight, the host-key checks, authentication and the command are the
run's own as ever; paramiko is told that its version line went already (:func:`said_already`). What the
run does not take (another selection, a changed ssh_config, a refused plan) is closed unused at
exit (:func:`finish`). A file of the plan changed since: nothing is dialled. Other calls (other
tasks, ``inv``, the service, tests of the library) never pre-dial; ``FLEET_NO_PREDIAL=1`` turns it
off.

Imports here are the standard library's only.
"""
from __future__ import annotations

import errno
import os
import socket
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    import threading
    from typing import Any

FORMAT = "predial 2"
MAX_HOSTS = 256      # sockets opened ahead at most (a file descriptor each)
FRESH = 20.0         # seconds a pre-dialled socket is taken for (sshd's LoginGraceTime is 120)
MAX_SAME = 8         # sockets opened ahead to one address: sshd's MaxStartups (default 10:30:100)
                     # drops unauthenticated connections past 10 (many names of one sshd: a lab)

_armed = False       # this process is a CLI fanout: its dials are noted for the next call
_noted: list[tuple[str, int]] = []       # addresses this run's SSH connections went to, in order
_files: dict[str, str] = {}              # path -> stamp, of every file the run's plan was read from
_banner: str | None = None               # the SSH version line this run sent
_was: tuple[str, dict[str, str], list[tuple[str, int]]] | None = None  # what begin read from the cache
_ahead: "Ahead | None" = None


class PreDialled(socket.socket):
    """A socket connected ahead whose SSH version line (:attr:`banner`) went already."""

    banner = ""


def stamp(path: str) -> str:
    """What tells a changed file: size, modification time and inode ("-" when it is not there)."""
    try:
        st = os.stat(path)
    except OSError:
        return "-"
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


def depends(path: str | os.PathLike[str] | None) -> None:
    """The run's plan was read from ``path`` (an inventory, an ssh_config file)."""
    if _armed and path:
        p = os.path.abspath(os.fspath(path))
        _files.setdefault(p, stamp(p))


def sent(banner: str) -> None:
    """The version line this run's SSH connections send."""
    global _banner
    if _armed:
        _banner = banner


def _note(sock: socket.socket) -> None:
    if _armed and len(_noted) < MAX_HOSTS:
        try:
            peer = sock.getpeername()
        except OSError:
            return
        if isinstance(peer, tuple):
            _noted.append((str(peer[0]), int(peer[1])))


def nodelay(sock: socket.socket) -> socket.socket:
    """No Nagle, as OpenSSH's ``set_nodelay``: else a kept connection's next channel open waits
    for the peer's delayed ACK of the last close (~40 ms per command)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass  # not TCP (a socket pair in tests): nothing to turn off
    return sock


def connect(addr: bytes | str, port: int, timeout: float, note: bool = True) -> socket.socket:
    """A TCP connection to ``addr:port`` without Nagle: the one pre-dialled there when there is
    one, else a new one (as :func:`socket.create_connection`, whose errors it raises). ``note``:
    the SSH connection of this run goes over it (kept for the next call's pre-dial)."""
    host = addr.decode("ascii") if isinstance(addr, bytes) else addr
    ahead = _ahead.take(host, port, timeout) if _ahead is not None else None
    if ahead is not None:
        ahead.settimeout(timeout)
        sock: socket.socket = ahead
    else:
        sock = nodelay(socket.create_connection((addr, port), timeout=timeout))  # type: ignore[arg-type]
    if note:
        _note(sock)
    return sock


def said_already(transport: Any, banner: str) -> None:
    """``transport`` (paramiko's, not started) goes over a socket whose version line ``banner``
    went already: it hashes that line as its own and does not send it again."""
    transport.local_version = banner
    pk = transport.packetizer
    line = (banner + "\r\n").encode("ascii")

    def first(out: bytes) -> None:
        del pk.write_all  # the class's again, for every later packet
        if out != line:
            pk.write_all(out)
    pk.write_all = first


class Ahead:
    """The sockets opened ahead for one call, by address; one thread sends each its version line."""

    def __init__(self, addrs: list[tuple[str, int]], banner: str) -> None:
        import threading

        self.t0 = time.monotonic()
        self.banner = banner.encode("ascii") + b"\r\n"
        self.lock = threading.Lock()
        self.done: threading.Event = threading.Event()
        self.ready: dict[tuple[str, int], list[PreDialled]] = {}
        self.pending: dict[PreDialled, tuple[str, int]] = {}
        per: dict[tuple[str, int], int] = {}
        for a in addrs[:MAX_HOSTS]:
            per[a] = per.get(a, 0) + 1
            if per[a] > MAX_SAME:
                continue  # the run dials those itself, as many at once as its --concurrency says
            try:
                s = PreDialled(socket.AF_INET6 if ":" in a[0] else socket.AF_INET, socket.SOCK_STREAM)
            except OSError:
                continue
            s.banner = banner
            try:
                nodelay(s).setblocking(False)
                err = s.connect_ex(a)
            except OSError:
                s.close()
                continue
            if err not in (0, errno.EINPROGRESS, getattr(errno, "WSAEWOULDBLOCK", errno.EINPROGRESS)):
                s.close()
                continue
            self.pending[s] = a

    def run(self) -> None:
        """Send the version line on each socket once it is connected; drop those that fail."""
        import select

        try:
            while self.pending and time.monotonic() - self.t0 < FRESH:
                socks = list(self.pending)
                _, w, x = select.select([], socks, socks, 0.5)
                for s in set(w) | set(x):
                    a = self.pending.pop(s)
                    try:
                        if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or s.send(self.banner) != len(self.banner):
                            raise OSError
                    except OSError:
                        s.close()
                        continue
                    with self.lock:
                        self.ready.setdefault(a, []).append(s)
        except (OSError, ValueError):
            pass
        finally:
            with self.lock:
                left, self.pending = list(self.pending), {}
            for s in left:
                s.close()
            self.done.set()

    def take(self, host: str, port: int, timeout: float) -> PreDialled | None:
        """The socket connected ahead to ``host:port`` (waiting while it connects, within
        ``timeout``), or None: there is none, it failed, or it is too old to trust."""
        a, deadline = (host, port), time.monotonic() + timeout
        while True:
            with self.lock:
                if self.ready.get(a) or a not in self.pending.values():
                    break  # connected, or never (failed, not dialled, or the thread is done)
            if time.monotonic() >= deadline or self.done.wait(0.002):
                break
        if time.monotonic() - self.t0 > FRESH:
            return None
        with self.lock:
            got = self.ready.get(a)
            if not got:
                return None
            s = got.pop(0)
        s.setblocking(True)
        return s

    def close(self) -> None:
        """Close every socket nobody took."""
        with self.lock:
            left = [s for socks in self.ready.values() for s in socks] + list(self.pending)
            self.ready = {}
        for s in left:
            s.close()


def begin(kept: str | None) -> None:
    """Note this call's dials (:func:`finish` says what to keep), and dial ahead what ``kept`` (what
    the previous identical call's :func:`finish` gave, from the caller's cache) names."""
    global _armed, _ahead, _was
    _armed = True
    rec = _was = _parse(kept)
    if rec is None:
        return
    banner, files, addrs = rec
    if not addrs or any(stamp(p) != st for p, st in files.items()):
        return  # the plan may be another one now
    import threading

    _ahead = Ahead(addrs, banner)
    threading.Thread(target=_ahead.run, name="fleet-predial", daemon=True).start()


def _parse(text: str | None) -> tuple[str, dict[str, str], list[tuple[str, int]]] | None:
    lines = (text or "").split("\n")
    if len(lines) < 2 or lines[0] != FORMAT:
        return None
    banner, files, addrs = lines[1], {}, []
    if not banner.startswith("SSH-2.0-") or not banner.isprintable():
        return None
    for line in lines[2:]:
        kind, _, rest = line.partition(" ")
        if kind == "file":
            st, _, p = rest.partition(" ")
            files[p] = st
        elif kind == "addr":
            ip, _, port = rest.rpartition(" ")
            if ip and port.isdigit():
                addrs.append((ip, int(port)))
    return banner, files, addrs


def finish() -> str | None:
    """The call is over: close what it did not take. What to keep for the next identical call
    (its dials, its version line, its plan's files), or None: nothing new to keep."""
    if _ahead is not None:
        _ahead.close()
    if not (_armed and _noted and _banner and _files) or _was == (_banner, _files, _noted):
        return None  # nothing dialled, or the cache says so already
    body = [FORMAT, _banner]
    body += [f"file {st} {p}" for p, st in _files.items()]
    body += [f"addr {ip} {port}" for ip, port in _noted]
    return "\n".join(body)


__all__ = ["PreDialled", "begin", "connect", "depends", "finish", "said_already", "sent", "stamp"]

"""A command on an open SSH connection: exec, stream, and on timeout or Ctrl-C kill-and-drain.

The remote half of the SSH transport (Fabric's ``runners.Remote``; the local half is
:mod:`fleet.ssh.local`). :func:`run_command` opens a session channel on the target's
connection, closes stdin at once (``cat`` returns, as with ``ssh host cat </dev/null``),
streams both outputs to :class:`~fleet.ssh.streams.StreamSink` (artifact files byte-exact, a
bounded tail in memory, lines to the live hook) and reports ``exit-signal``, which paramiko
ignores (see :func:`_handle_request`). On timeout or Ctrl-C it sends ``signal TERM``, kills
the command's process groups over a second channel (:data:`KILL_SCRIPT`, for root and
non-root logins alike), drains what stderr is left and raises with what arrived.
"""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import paramiko
from paramiko.channel import Channel
from paramiko.common import MSG_CHANNEL_REQUEST, cMSG_CHANNEL_REQUEST
from paramiko.message import Message

from fleet.errors import Aborted, CommandTimeout, ConnectFailed, ConnectionLost, SSHFailure
from fleet.ssh.streams import StreamSink
from fleet.ssh.transport import ExecResult

if TYPE_CHECKING:  # pragma: no cover
    from fleet.ssh.session import SSHSession

# paramiko's own channel handlers; fleet's table differs in one entry (exit-signal)
_HANDLERS = dict(paramiko.Transport._channel_handler_table)  # type: ignore[attr-defined]  # noqa: SLF001
_PARAMIKO_REQUEST = _HANDLERS[MSG_CHANNEL_REQUEST]  # Channel._handle_request


def _handle_request(chan: Channel, m: Message) -> None:
    """paramiko ignores "exit-signal" (RFC 4254 6.10); OpenSSH sends it for a killed command."""
    start = m.packet.tell()
    if m.get_text() == "exit-signal":
        m.get_boolean()
        chan.fleet_exit_signal = m.get_text() or "UNKNOWN"  # type: ignore[attr-defined]
        chan.status_event.set()
        return
    m.packet.seek(start)
    _PARAMIKO_REQUEST(chan, m)


_HANDLERS[MSG_CHANNEL_REQUEST] = _handle_request
CHANNEL_HANDLERS = _HANDLERS  # installed on every fleet transport (see fleet.ssh.session)


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
        transport = chan.transport
        if transport is not None:  # paramiko has no public API for it
            transport._send_user_message(m)  # type: ignore[attr-defined]  # noqa: SLF001
    except Exception:  # noqa: BLE001 - best effort; the kill channel does the real work
        pass


def kill_remote(sess: SSHSession, budget: float = 3.0) -> bool:
    """Kill the command running on ``sess``: its process groups, over a second channel. True if it ran."""
    transport = sess.conn.client.get_transport() if sess.conn else None
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


def run_command(sess: SSHSession, command: str, timeout: float | None, abort: threading.Event,
                on_output: Callable[[str, str], None] | None = None,
                artifacts: Path | None = None) -> ExecResult:
    """Run ``command`` on ``sess`` with stdin closed. On timeout or abort, kill it, close, and raise.

    ``artifacts``: a path prefix; the streams go to ``<prefix>.stdout`` / ``.stderr``.
    """
    h = sess.host
    transport = sess.conn.client.get_transport() if sess.conn else None
    if transport is None or not transport.is_active():
        raise ConnectFailed(h.name, f"connection to {h.name} closed before the command started")
    try:
        chan = transport.open_session(timeout=sess.connect_timeout)
        chan.exec_command(command)
    except (paramiko.SSHException, EOFError, OSError) as exc:
        if abort.is_set():
            raise Aborted(h.name, "interrupted before the command started") from None
        # not started: retryable like any transport error before exec
        raise ConnectFailed(h.name, f"could not start the command on {h.name}: {exc}") from None
    sess.running = True
    out = StreamSink(Path(f"{artifacts}.stdout") if artifacts else None,
                     (lambda ln: on_output("stdout", ln)) if on_output else None)
    err = StreamSink(Path(f"{artifacts}.stderr") if artifacts else None,
                     (lambda ln: on_output("stderr", ln)) if on_output else None)

    def drain_stderr() -> None:
        while chan.recv_stderr_ready():
            err.write(chan.recv_stderr(65536))

    def stop(exc_type: type[SSHFailure], why: str) -> SSHFailure:
        _send_signal(chan, "TERM")
        killed = kill_remote(sess, 2.0 if exc_type is Aborted else 3.0)
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
        sess.running = False
        try:
            chan.close()
        except Exception:  # noqa: BLE001
            pass


__all__ = ["CHANNEL_HANDLERS", "KILL_SCRIPT", "kill_remote", "run_command"]

"""A command on an open SSH connection: exec, stream, and on timeout or Ctrl-C kill-and-drain.

The remote half of the SSH transport (Fabric's ``runners.Remote``; the local half is
:mod:`fleet.ssh.local`). :func:`run_command` opens a session channel on the target's
connection, closes stdin at once (``cat`` returns, as with ``ssh host cat </dev/null``),
streams both outputs to :class:`~fleet.ssh.streams.StreamSink` (artifact files byte-exact, a
bounded tail in memory, lines to the live hook) and reports ``exit-signal``, which paramiko
ignores (see :func:`_handle_request`). On timeout or Ctrl-C it ends everything the command
started over a second channel (:data:`KILL_SCRIPT`, for root and non-root logins alike:
children that outlived their shell or left its process group included, a ``setsid`` one left
alone but named), drains what stderr is left and raises with what arrived, saying "killed"
only when nothing of the command is left.
"""
from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import paramiko
from paramiko.channel import Channel
from paramiko.common import MSG_CHANNEL_REQUEST, cMSG_CHANNEL_REQUEST
from paramiko.message import Message

from fleet.errors import Aborted, CommandTimeout, ConnectFailed, ConnectionLost, SSHFailure
from fleet.ssh.sshread import printable
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


# What ends a timed-out or interrupted command, run over a second channel of the command's own
# connection as the same user (``sh -s ELAPSED REUSED``, the script on stdin: no login shell
# quotes it, whatever that shell is). On Linux it finds everything the command started: every
# process of this connection carries its SSH_CONNECTION (read from /proc/PID/environ, started
# after the connection's sshd; a session holding one started before that, or before the command
# when the connection ran commands before, is not the command's). The command's session is its
# shell's (sshd's other child) or, once that shell has exited, the earliest of the connection's
# sessions whose leader is gone (the shell was the first of them).
# Every process of that session, whatever its process group, gets TERM (each pid and each
# group), then KILL, until none is left; one in a session of its own (setsid) is left alone, as
# ssh leaves it, and named. It prints "left PID ARGS" for what could not be ended, "setsid PID
# ARGS" for what was left alone and "done N" (N signalled). Without /proc it falls back to the
# process groups of sshd's children and prints "unverified N". No user data is in it.
KILL_SCRIPT = r"""main() {
exec </dev/null
e=${1:-0} w=${2:-0} me=$$
[ -r /proc/$$/stat ] || { legacy; return; }
st "$me" || { echo "fail no /proc/$$/stat"; return; }
mysid=$sid base=$start
st "$mysid" && [ "$sid" = "$mysid" ] && base=$start
s= p=$PPID n=0
while [ "$n" -lt 6 ] && [ "${p:-0}" -gt 1 ]; do
  c=; read -r c 2>/dev/null <"/proc/$p/comm"
  case $c in *sshd*) s=$p; break;; esac
  st "$p" || break; p=$ppid n=$((n + 1))
done
tck=$(getconf CLK_TCK 2>/dev/null); case $tck in ''|*[!0-9]*) tck=100;; esac
cut=0
if [ -n "$s" ] && st "$s"; then cut=$start; fi
if [ "$w" = 1 ] || [ -z "$s" ]; then
  c=$((base - (e + 50) * tck / 100)); [ "$c" -gt "$cut" ] && cut=$c
fi
tagged=
if [ -n "$SSH_CONNECTION" ]; then
  tag="SSH_CONNECTION=$SSH_CONNECTION"
  if printf 'a\0' | grep -qzx a 2>/dev/null; then
    tagged=$(grep -lzxF -e "$tag" /proc/[0-9]*/environ 2>/dev/null)
  else
    tagged=$(for f in /proc/[0-9]*/environ; do
      tr '\0' '\n' 2>/dev/null <"$f" | grep -qxF -e "$tag" && echo "$f"; done)
  fi
fi
tp=" $(for f in $tagged; do f=${f#/proc/}; printf '%s ' "${f%/environ}"; done)"
scan
old=" $(echo "$tab" | while read -r p pp g si t z; do
  case $tp in *" $p "*) [ "$si" != "$mysid" ] && [ "$t" -lt "$cut" ] && printf '%s ' "$si";; esac; done)"
ours=$(echo "$tab" | while read -r p pp g si t z; do
  case $tp in *" $p "*) case $old in *" $si "*) ;; *)
    [ "$si" != "$mysid" ] && [ "$z" != Z ] && echo "$p $si";; esac;; esac
done)
C=
[ -n "$s" ] && C=$(echo "$tab" | while read -r p pp g si t z; do
  [ "$pp" = "$s" ] && [ "$si" != "$mysid" ] && [ "$z" != Z ] && printf '%s ' "$si"; done)
[ -n "$C" ] || C=$(echo "$ours" | while read -r p si; do
  [ -n "$si" ] && ! lead "$si" && echo "$si"; done | sort -n | head -n 1)
C=" $C "
hit=0 round=0
while [ "$C" != "  " ] && [ "$round" -lt 3 ]; do
  m=$(members)
  [ -n "$m" ] || break
  sig=KILL; [ "$round" = 0 ] && sig=TERM
  sent=0
  for p in $(echo "$m" | cut -d' ' -f1); do kill -$sig "$p" 2>/dev/null && sent=$((sent + 1)); done
  for g in $(echo "$m" | cut -d' ' -f2 | sort -u); do kill -$sig -"$g" 2>/dev/null; done
  [ "$round" = 0 ] && hit=$sent
  [ "$sent" = 0 ] && break
  i=0
  while [ "$i" -lt 5 ]; do
    sleep 0.1 2>/dev/null || sleep 1
    alive=0; for p in $(echo "$m" | cut -d' ' -f1); do gone "$p" || alive=1; done
    [ "$alive" = 0 ] && break
    i=$((i + 1))
  done
  scan; round=$((round + 1))
done
{ for p in $(members | cut -d' ' -f1); do echo "left $p $(args "$p")"; done
  echo "$ours" | while read -r p si; do
    case $C in *" $si "*) continue;; esac
    [ -n "$p" ] && ! gone "$p" && echo "setsid $p $(args "$p")"
  done; } | head -n 50
echo "done $hit"
}
st() {
  s1=; read -r s1 2>/dev/null <"/proc/$1/stat" || return 1
  s1=${s1##*) }; set -- $s1; state=$1 ppid=$2 pg=$3 sid=$4 start=${20}
}
gone() { ! st "$1" || [ "$state" = Z ]; }
lead() { st "$1" && [ "$state" != Z ] && [ "$sid" = "$1" ]; }
scan() {
  tab=$(cat /proc/[0-9]*/stat 2>/dev/null | awk '{ if ($0 !~ /^[0-9]+ \(.*\) [A-Za-z] /) { bad = 1; next }
    match($0, /.*\) /); split(substr($0, RLENGTH + 1), f, " "); print $1, f[2], f[3], f[4], f[20], f[1] }
    END { if (bad) print "bad" }')
  case $tab in *bad|'') tab=$(for f in /proc/[0-9]*/stat; do p=${f#/proc/}; p=${p%/stat}
    st "$p" && echo "$p $ppid $pg $sid $start $state"; done);; esac
}
members() { echo "$tab" | while read -r p pp g si t z; do
  case $C in *" $si "*) [ "$z" != Z ] && [ "$p" != "$me" ] && echo "$p $g";; esac; done; }
args() { tr '\0\n' '  ' 2>/dev/null <"/proc/$1/cmdline" | cut -c1-160; }
legacy() {
  p=$PPID
  case "$(ps -o comm= -p "$p" 2>/dev/null)" in *sshd*) s=$p;; *) s=$(ps -o ppid= -p "$p" | tr -d ' ');; esac
  kids=$(ps -A -o pid= -o ppid= | while read -r k pp; do
    [ "$pp" = "$s" ] && [ "$k" != "$me" ] && [ "$k" != "$p" ] && echo "$k"; done)
  for k in $kids; do kill -TERM -"$k" 2>/dev/null || kill -TERM "$k" 2>/dev/null; done
  [ -n "$kids" ] && sleep 1
  for k in $kids; do kill -KILL -"$k" 2>/dev/null || kill -KILL "$k" 2>/dev/null; done
  echo "unverified $(echo $kids | wc -w)"
}
main "$@"
"""


@dataclass(frozen=True)
class Reaped:
    """What the kill over a second channel did (:func:`kill_remote`)."""

    ran: bool = False       # the script ran to its end
    signalled: int = 0      # processes of the command sent TERM
    left: tuple[tuple[int, str], ...] = ()      # the command's processes still running (pid, command line)
    detached: tuple[tuple[int, str], ...] = ()  # in a session of their own (setsid): left alone, as ssh would
    unverified: bool = False  # no /proc there: process groups signalled, what left them not checked

    @property
    def clean(self) -> bool:
        """Nothing of the command is left on the host."""
        return self.ran and not (self.left or self.detached or self.unverified)

    def __bool__(self) -> bool:
        return self.ran

    def says(self, host: str) -> str:
        """The tail of the timeout's or interrupt's message: killed, or what is still there."""
        if self.clean:  # nothing found is nothing claimed: a process that cleared its environment is not seen
            return "; its processes were killed" if self.signalled else f"; no process of it was found running on {host}"
        if not self.ran:
            return (f"; whether anything of it still runs on {host} is unknown (the kill over a second "
                    f"channel did not finish)")
        if self.unverified:
            return (f"; its process groups on {host} were sent TERM, then KILL (the host has no /proc: what "
                    f"left them cannot be checked)")
        items = [(pid, cmd, "could not be stopped (another user's?)") for pid, cmd in self.left]
        items += [(pid, cmd, "setsid: a session of its own, left alone as ssh would") for pid, cmd in self.detached]
        shown = "; ".join(f"pid {pid} `{printable(cmd)[:80] or '?'}` ({why})" for pid, cmd, why in items[:5])
        more = f"; and {len(items) - 5} more" if len(items) > 5 else ""
        return f"; still running on {host}: {shown}{more}"


def _reaped(text: str) -> Reaped:
    left: list[tuple[int, str]] = []
    detached: list[tuple[int, str]] = []
    ran, unverified, signalled = False, False, 0
    for line in text.splitlines():
        word, _, rest = line.partition(" ")
        pid, _, cmd = rest.partition(" ")
        if word in ("left", "setsid") and pid.isdigit():
            (left if word == "left" else detached).append((int(pid), cmd.strip()))
        elif word in ("done", "unverified"):
            ran, unverified = True, word == "unverified"
            signalled = int(pid) if pid.isdigit() else 0
    return Reaped(ran, signalled, tuple(left), tuple(detached), unverified)


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
    except Exception:  # noqa: BLE001 - best effort, when the kill channel could not run
        pass


def kill_remote(sess: SSHSession, budget: float = 3.0, elapsed: float = 0.0) -> Reaped:
    """End the command running on ``sess`` (:data:`KILL_SCRIPT`, over a second channel) and say
    what is left. ``elapsed``: seconds since the command started."""
    transport = sess.conn.client.get_transport() if sess.conn else None
    if transport is None or not transport.is_active():
        return Reaped()
    deadline = time.monotonic() + budget
    try:
        ch = transport.open_session(timeout=budget)
    except Exception:  # noqa: BLE001 - best effort; the caller reports the timeout either way
        return Reaped()
    out = b""
    try:
        ch.exec_command(f"sh -s {max(0, int(elapsed * 100))} {1 if sess.commands > 1 else 0}")
        ch.sendall(KILL_SCRIPT.encode())
        ch.shutdown_write()
        while len(out) < 65536 and time.monotonic() < deadline:
            ch.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = ch.recv(4096)
            except socket.timeout:
                break
            if not data:
                break
            out += data
    except Exception:  # noqa: BLE001
        pass
    finally:
        try:
            ch.close()
        except Exception:  # noqa: BLE001
            pass
    return _reaped(out.decode("utf-8", "replace"))


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
        chan = sess.take_spare() or transport.open_session(timeout=sess.connect_timeout)
        started = time.monotonic()
        sess.commands += 1
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
        reaped = kill_remote(sess, 3.0, time.monotonic() - started)
        if not reaped:  # no second channel: at least the shell's process group (non-root logins)
            _send_signal(chan, "TERM")
        try:
            drain_stderr()
        except Exception:  # noqa: BLE001
            pass
        out.close()
        err.close()
        return exc_type(h.name, why + reaped.says(h.name), out.text(), err.text())

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


__all__ = ["CHANNEL_HANDLERS", "KILL_SCRIPT", "Reaped", "kill_remote", "run_command"]

"""A loopback relay that adds network latency, and the lab's use of it (``lab.up --rtt MS``).

Each byte arrives ``delay`` seconds after it was sent, in each direction (RTT = 2 x delay),
order kept, EOF too, bandwidth not limited. A new connection also pays TCP's handshake: the
kernel answers ``connect()`` at once on loopback, so the relay holds the first bytes instead
(the client's reach the server 3 x delay after the connect, the server's first answer reaches
the client at 4 x delay or later, as over a real link). Put in front of a lab sshd or OpenCode
server, plain ``ssh`` and fleet see the network a Tailscale user sees.

With ``--stats FILE`` each connection, when it ends, appends one JSON line: its route, bytes
each way, and its *turns*: how many times the client sent again after the server had answered
(the TCP handshake counts one), i.e. the round trips the client waited for, as a trace of it
would count them (a client that pipelines pays none for what it sends without waiting).

Run: ``python -m fleet.lab.relay --delay-ms 20 127.0.0.1:LISTEN=127.0.0.1:TARGET [...]``.
Listens on and connects to 127.0.0.0/8 only. ``--pidfile`` is written once every route listens.
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fleet.errors import LabError
from fleet.lab.base import Lab, _cmdline, _pid_alive, free_ports

Queue = asyncio.Queue  # of (when sent, bytes); b"" is EOF
QUEUED = 256  # chunks (of up to 64 KiB) held per direction before the sender is held back
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class Turns:
    """One connection's round trips as the client waited for them (see the module's text)."""

    def __init__(self) -> None:
        self.turns = 1  # TCP's handshake
        self.answered = False  # the server sent something since the client last sent
        self.up = self.down = 0

    def sent(self, up: bool, n: int) -> None:
        if up:
            self.up += n
            if self.answered and n:
                self.turns += 1
            self.answered = False
        else:
            self.down += n
            self.answered = self.answered or bool(n)


async def _read(reader: asyncio.StreamReader, q: Queue, floor: float, turns: Turns | None = None,
                up: bool = True) -> None:
    """Queue what ``reader`` sends, stamped when it was sent (never before ``floor``)."""
    try:
        while True:
            data = await reader.read(65536)
            if turns is not None:
                turns.sent(up, len(data))
            await q.put((max(time.monotonic(), floor), data))
            if not data:
                return
    except (ConnectionError, OSError):
        await q.put((time.monotonic(), b""))


async def _pump(q: Queue, writer: asyncio.StreamWriter, delay: float, turns: Turns | None = None) -> None:
    """Write each queued chunk ``delay`` after it was sent (never earlier), then the EOF.
    ``turns``: this is the client's side, its answers counted when they reach it."""
    while True:
        at, data = await q.get()
        wait = at + delay - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        if not data:
            break
        if turns is not None:
            turns.sent(False, len(data))
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()


async def _handle(r: asyncio.StreamReader, w: asyncio.StreamWriter, target: tuple[str, int], delay: float,
                  stats: str | None = None) -> None:
    t0 = time.monotonic()
    up: Queue = asyncio.Queue(QUEUED)
    down: Queue = asyncio.Queue(QUEUED)
    turns = Turns()
    # the client could send only once its SYN-ACK came back (t0 + RTT) ...
    reading = asyncio.ensure_future(_read(r, up, t0 + 2 * delay, turns, True))
    if delay:
        await asyncio.sleep(3 * delay)  # ... and the server accepts once the last ACK arrives
    try:
        tr, tw = await asyncio.open_connection(*target)
    except OSError:
        reading.cancel()
        w.close()
        return

    async def pump(q: Queue, writer: asyncio.StreamWriter) -> None:
        try:
            await _pump(q, writer, delay, turns if writer is w else None)
        except (ConnectionError, OSError, RuntimeError):
            for x in (w, tw):  # one side is gone: drop both, as a reset would
                x.transport.abort()
            while (await q.get())[1]:
                pass  # until the reader, now at EOF, has queued its last chunk
    await asyncio.gather(reading, _read(tr, down, 0.0), pump(up, tw), pump(down, w),
                         return_exceptions=True)
    for x in (w, tw):
        x.close()
    if stats:
        line = json.dumps({"target": f"{target[0]}:{target[1]}", "turns": turns.turns, "up": turns.up,
                           "down": turns.down, "seconds": round(time.monotonic() - t0, 4)})
        with open(stats, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    host = "127.0.0.1" if host == "localhost" else host
    try:
        ok = ipaddress.ip_address(host) in ipaddress.ip_network("127.0.0.0/8")
        number = int(port)
    except ValueError:
        ok, number = False, 0
    if not ok or not 0 < number < 65536:
        raise SystemExit(f"relay: {addr}: write IP:PORT with an IP in 127.0.0.0/8 (loopback only)")
    return host, number


async def serve(routes: list[tuple[tuple[str, int], tuple[str, int]]], delay: float,
                pidfile: str | None = None, stats: str | None = None) -> None:
    """Relay every (listen, target) pair until cancelled."""
    servers = []
    for listen, target in routes:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter, target: tuple[str, int] = target) -> None:
            await _handle(r, w, target, delay, stats)
        servers.append(await asyncio.start_server(handle, *listen))
    if pidfile:
        tmp = f"{pidfile}.tmp"
        Path(tmp).write_text(f"{os.getpid()}\n")
        os.replace(tmp, pidfile)
    await asyncio.gather(*(s.serve_forever() for s in servers))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="fleet.lab.relay", description=__doc__)
    ap.add_argument("--delay-ms", type=float, required=True, help="one-way delay (RTT is twice this)")
    ap.add_argument("--pidfile", help="write the relay's pid here once every route listens")
    ap.add_argument("--tag", help="any text (the lab marks its relay with its directory)")
    ap.add_argument("--stats", help="append one JSON line per ended connection (route, bytes, turns) here")
    ap.add_argument("routes", nargs="+", help="LISTEN=TARGET, e.g. 127.0.0.1:2201=127.0.0.1:2101")
    a = ap.parse_args(argv)
    if not 0 <= a.delay_ms <= 10000:
        raise SystemExit(f"relay: --delay-ms {a.delay_ms:g}: write a number from 0 to 10000")
    routes = []
    for r in a.routes:
        listen, _, target = r.partition("=")
        routes.append((_split(listen), _split(target)))
    try:
        asyncio.run(serve(routes, a.delay_ms / 1000.0, a.pidfile, a.stats))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        raise SystemExit(f"relay: {exc}") from None


# ------------------------------------------------------------------ the lab's relay (lab.up --rtt)

def relay_pidfile(lab: Lab) -> Path:
    """Where the lab's relay writes its pid (once it listens)."""
    return lab.dir / "relay.pid"


def relay_stats(lab: Lab) -> Path:
    """Where the lab's relay appends each ended connection's round trips (``--stats``)."""
    return lab.dir / "relay-stats.jsonl"


def stop_relay(lab: Lab, timeout: float = 5.0) -> None:
    """Stop the lab's relay, if one runs, and route everything directly again."""
    pids = {p for p in (lab.relay_pid, _read_pid(relay_pidfile(lab))) if p}
    for pid in pids:
        if _pid_alive(pid) and str(lab.dir) in _cmdline(pid) and "fleet.lab.relay" in _cmdline(pid):
            deadline = time.monotonic() + timeout
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break
                while _pid_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.01)
                if not _pid_alive(pid):
                    break
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
    relay_pidfile(lab).unlink(missing_ok=True)
    lab.relay_pid, lab.rtt = None, 0.0
    for h in lab.hosts + ([lab.jump] if lab.jump else []):
        h.relay_port = None
    for a in lab.agents:
        if a.get("direct_url"):
            a["url"] = a.pop("direct_url")


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def start_relay(lab: Lab, rtt: float, timeout: float = 20.0) -> None:
    """Put one relay with ``rtt``/2 ms each way in front of every host the client reaches
    directly (hosts behind the jump are reached through the jump's route) and every agent; set
    each host's ``relay_port`` and each agent's ``url`` (``direct_url`` keeps the server's own).
    The relay runs in the background, in a session of its own, until ``lab_down``."""
    stop_relay(lab)
    if not rtt:
        return
    front = [h for h in lab.hosts + ([lab.jump] if lab.jump else []) if not h.jump]
    agents = [a for a in lab.agents if a.get("role") == "agent"]
    ports = free_ports(len(front) + len(agents), [h.listen for h in front] + ["127.0.0.1"] * len(agents))
    routes = []
    for h, port in zip(front, ports[:len(front)], strict=True):
        routes.append(f"{h.listen}:{port}={h.listen}:{h.port}")
        h.relay_port = port
    for a, port in zip(agents, ports[len(front):], strict=True):
        direct = a["url"]
        routes.append(f"127.0.0.1:{port}={direct.rpartition('//')[2]}")
        a["direct_url"], a["url"] = direct, f"http://127.0.0.1:{port}"
    log = lab.dir / "relay.log"
    p = subprocess.Popen([sys.executable, "-m", "fleet.lab.relay", "--delay-ms", f"{rtt / 2:g}",
                          "--pidfile", str(relay_pidfile(lab)), "--tag", str(lab.dir),
                          "--stats", str(relay_stats(lab)), *routes],
                         stdin=subprocess.DEVNULL, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                         cwd=str(PROJECT_ROOT), start_new_session=True,
                         env=dict(os.environ, PYTHONPATH=str(PROJECT_ROOT)))
    lab.relay_pid, lab.rtt = p.pid, float(rtt)
    deadline = time.monotonic() + timeout
    while _read_pid(relay_pidfile(lab)) != p.pid:
        if p.poll() is not None or time.monotonic() > deadline:
            p.kill()
            raise LabError(f"the lab's latency relay did not start: {log.read_text().strip()[-300:] or 'see ' + str(log)}")
        time.sleep(0.01)


if __name__ == "__main__":
    main()

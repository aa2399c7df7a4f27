"""A loopback relay that adds network latency: each byte arrives ``delay`` seconds after it was
sent, in each direction (RTT = 2 x delay), order kept, bandwidth not limited. Put in front of a
lab sshd or OpenCode server, plain ``ssh`` and fleet see the same network a Tailscale user sees.

Run: ``python -m fleet.lab.relay --delay-ms 20 127.0.0.1:LISTEN=127.0.0.1:TARGET [...]``.
Loopback only.
"""
from __future__ import annotations

import argparse
import asyncio
import time

LOOPBACK = ("127.", "::1", "localhost")


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    q: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def pump() -> None:
        while True:
            at, data = await q.get()
            if not data:
                break
            wait = at + delay - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        try:
            writer.write_eof()
        except (OSError, RuntimeError):
            pass

    task = asyncio.ensure_future(pump())
    try:
        while True:
            data = await reader.read(65536)
            await q.put((time.monotonic(), data))
            if not data:
                break
    except (ConnectionError, OSError):
        await q.put((time.monotonic(), b""))
    try:
        await task
    except (ConnectionError, OSError):
        pass


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if not host.startswith(LOOPBACK):
        raise SystemExit(f"relay: {addr}: loopback addresses only")
    return host, int(port)


async def serve(routes: list[tuple[tuple[str, int], tuple[str, int]]], delay: float) -> None:
    """Relay every (listen, target) pair until cancelled."""
    servers = []
    for listen, target in routes:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter, target: tuple[str, int] = target) -> None:
            try:
                tr, tw = await asyncio.open_connection(*target)
            except OSError:
                w.close()
                return
            await asyncio.gather(_pipe(r, tw, delay), _pipe(tr, w, delay), return_exceptions=True)
            for x in (w, tw):
                x.close()
        servers.append(await asyncio.start_server(handle, *listen))
    await asyncio.gather(*(s.serve_forever() for s in servers))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="fleet.lab.relay", description=__doc__)
    ap.add_argument("--delay-ms", type=float, required=True, help="one-way delay (RTT is twice this)")
    ap.add_argument("routes", nargs="+", help="LISTEN=TARGET, e.g. 127.0.0.1:2201=127.0.0.1:2101")
    a = ap.parse_args(argv)
    routes = []
    for r in a.routes:
        listen, _, target = r.partition("=")
        routes.append((_split(listen), _split(target)))
    try:
        asyncio.run(serve(routes, a.delay_ms / 1000.0))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

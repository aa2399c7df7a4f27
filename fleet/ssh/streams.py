"""One stream of one remote command: byte-exact to its artifact file, whole lines to the live
hook, and only a bounded tail in memory (so 50 MB of output costs no more than 1 MiB)."""
from __future__ import annotations

from pathlib import Path
from typing import IO, Callable

KEEP_BYTES = 1 << 20  # per stream, per host: the tail kept in memory for the table and JSON


class StreamSink:
    """One stream of one command: to the artifact file byte-exact, a bounded tail in memory,
    and whole lines to the live hook."""

    def __init__(self, path: Path | None, on_line: Callable[[str], None] | None, keep: int = KEEP_BYTES) -> None:
        self.path = path
        self.file: IO[bytes] | None = None  # opened at the first byte: an empty stream's file is made at
        # the run's end (FanoutRunner.finish), off the path from a host's answer to its result
        self.on_line = on_line
        self.keep = keep
        self.tail = bytearray()
        self.total = 0
        self._pending = b""

    def write(self, data: bytes) -> None:
        """Take one chunk."""
        self.total += len(data)
        if self.path is not None and data:
            if self.file is None:
                self.file = open(self.path, "wb")  # noqa: SIM115 - closed in close()
            self.file.write(data)
        self.tail += data
        if len(self.tail) > self.keep:
            del self.tail[:len(self.tail) - self.keep]
        if self.on_line is not None:
            buf = self._pending + data
            *lines, self._pending = buf.split(b"\n")
            for ln in lines:
                self.on_line(ln.decode(errors="replace"))

    def close(self) -> None:
        """Flush the last partial line and close the file."""
        if self.on_line is not None and self._pending:
            self.on_line(self._pending.decode(errors="replace"))
            self._pending = b""
        if self.file is not None:
            self.file.close()
            self.file = None

    def text(self) -> str:
        """What is kept, decoded for display, with a note when the start was cut."""
        s = bytes(self.tail).decode(errors="replace")
        cut = self.total - len(self.tail)
        if cut > 0:
            where = f"; whole output in {self.path}" if self.path is not None else ""
            s = f"[fleet: first {cut} of {self.total} bytes not kept{where}]\n" + s
        return s

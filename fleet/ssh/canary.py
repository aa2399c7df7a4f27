"""The canary gate: the canary's command runs first while every other host gets ready."""
from __future__ import annotations

import threading

from fleet.errors import Aborted, NotRun
from fleet.results import FanoutOutcome, FanoutResult


class CanaryGate:
    """Runs the canary's command first while every other host connects in parallel.

    The other hosts preflight, connect and authenticate at once, then wait here before their
    command: so a canary costs one command's time, not a whole serial round. If the canary
    ends well, the rest run; if it fails, they end ABORTED, their command never sent. A canary
    that fails *preflight* tested nothing: the next selected host still in the race takes its
    place (``notes`` says which).
    """

    def __init__(self, order: list[str], abort: threading.Event) -> None:
        self.order = order
        self.idx = 0
        self.abort = abort
        self.verdict: bool | str | None = None  # None: pending; True: go; str: why not
        self.finished: set[str] = set()
        self.notes: list[str] = []
        self.cond = threading.Condition()

    @property
    def current(self) -> str | None:
        """The host whose command runs first now."""
        return self.order[self.idx] if self.idx < len(self.order) else None

    def may_run(self, name: str) -> bool:
        """Whether ``name`` may run its command now (else :meth:`wait_turn` waits)."""
        with self.cond:
            return self.verdict is True or self.current == name

    def wait_turn(self, name: str) -> None:
        """Return when ``name`` may run its command; raise :class:`NotRun` when it may not."""
        with self.cond:
            while True:
                if self.verdict is True or self.current == name:
                    return
                if isinstance(self.verdict, str):
                    raise NotRun(name, self.verdict)
                if self.abort.is_set():
                    raise Aborted(name, "interrupted while waiting for the canary (Ctrl-C)")
                self.cond.wait(0.2)

    def done(self, r: FanoutResult) -> None:
        """Every host's end comes here; the canary's decides for the rest."""
        with self.cond:
            self.finished.add(r.host)
            if self.verdict is None and r.host == self.current:
                if r.outcome == FanoutOutcome.PREFLIGHT_FAILED:
                    while self.current is not None and self.current in self.finished:
                        self.idx += 1
                    if self.current is not None:
                        self.notes.append(f"canary {r.host} failed preflight (it tested nothing); "
                                          f"{self.current} runs first instead")
                    else:
                        self.verdict = "not run: no selected host passed preflight to be the canary"
                elif r.ok:
                    self.verdict = True
                    self.notes.append(f"canary {r.host} ok: ran the other {len(self.order) - 1} host(s)")
                else:
                    self.verdict = (f"not run: canary {r.host} ended {r.outcome.value}"
                                    f"{': ' + r.error if r.error else ''}")
            self.cond.notify_all()

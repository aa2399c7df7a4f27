"""Typed errors. Each carries what a person needs to act on it, and an exit status.

Exit statuses (one per kind of failure, shared by every task):
0 all good, 1 some host did not succeed, 2 bad input, 3 refused by a safety gate,
130 interrupted.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_HOST_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_REFUSED = 3
EXIT_INTERRUPTED = 130


class FleetError(Exception):
    """Base of every error fleet raises on purpose. ``str(e)`` is the message for a person."""

    exit_code: int = EXIT_BAD_INPUT


class BadInput(FleetError):
    """Input from the user (flag, selector, setting, file) is wrong; nothing was done."""

    exit_code = EXIT_BAD_INPUT


class InventoryError(BadInput):
    """The inventory file is invalid. Carries file, line and column (1-based) when known."""

    def __init__(self, message: str, path: str = "", line: int | None = None,
                 column: int | None = None, hint: str = "") -> None:
        self.path = path
        self.line = line
        self.column = column
        self.problem = message
        self.hint = hint
        where = path or "<inventory>"
        if line is not None:
            where += f":{line}"
            if column is not None:
                where += f":{column}"
        text = f"{where}: {message}"
        if hint:
            text += f" ({hint})"
        super().__init__(text)


class SelectorError(BadInput):
    """A host selector names nothing, or something unknown."""


class Refused(FleetError):
    """A safety gate (mode or confirmation token) refused the operation; nothing was done."""

    exit_code = EXIT_REFUSED


class Interrupted(FleetError):
    """The user pressed Ctrl-C."""

    exit_code = EXIT_INTERRUPTED

"""Every error fleet raises, under one root, :class:`FleetError`: read this file to know them all.

Each carries what a person needs to act on it (what, where: ``host``; what to do: in the
message) and the exit status a face exits with. The groups:

- bad input (exit 2): :class:`BadInput`, :class:`InventoryError`, :class:`SelectorError`;
- refused by a safety gate (exit 3): :class:`Refused`, :class:`TokenRefused`,
  :class:`ConfirmationRequired` (carries the plan and a fresh token);
- one host's SSH connection or command (a fanout result, exit 1): :class:`SSHFailure` and its
  kinds (connect, DNS, auth, host keys, timeouts, lost connection, Ctrl-C, non-zero exit);
- one host's OpenCode server (a dispatch result, exit 1): :class:`OpenCodeError` and its kinds;
- Beads, the lab, the journal.

Exit statuses (shared by every face): 0 all good, 1 some host did not succeed, 2 bad input,
3 refused by a safety gate, 130 interrupted.
"""
from __future__ import annotations

from typing import Any

EXIT_OK = 0
EXIT_HOST_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_REFUSED = 3
EXIT_INTERRUPTED = 130


class FleetError(Exception):
    """Base of every error fleet raises on purpose. ``str(e)`` is the message for a person: what
    went wrong, where (the host, when there is one: ``host``), and what to do about it.
    ``exit_code`` is what a face exits with."""

    exit_code: int = EXIT_BAD_INPUT
    host: str | None = None


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


# ----------------------------------------------------------------------
# SSH: one host's connection or command (fanout, preflight --deep). ``kind`` is stable for JSON;
# ``retryable`` is true only for failures before the command started.


class SSHFailure(FleetError):
    """A typed transport failure. ``kind`` is stable (for JSON); ``retryable`` drives tenacity.

    Only failures before the command started are ever retryable. ``stdout``/``stderr`` hold
    what arrived before a failure that happened while the command ran.
    """

    kind = "ssh"
    retryable = True
    timeout = False
    exit_code = EXIT_HOST_FAILED

    def __init__(self, host: str, message: str, stdout: str = "", stderr: str = "") -> None:
        self.host = host
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(message)


class ConnectTimeout(SSHFailure):
    """TCP or the SSH handshake did not finish within the connect timeout."""

    kind = "connect_timeout"
    timeout = True


class ConnectFailed(SSHFailure):
    """Refused, unreachable, reset before the handshake finished, or a jump that would not forward."""

    kind = "connect_failed"


class DNSFailure(SSHFailure):
    """The name does not resolve."""

    kind = "dns"
    retryable = False


class AuthFailed(SSHFailure):
    """The server refused every credential, or none was available. Never retried."""

    kind = "auth"
    retryable = False


class UnknownHostKey(SSHFailure):
    """The host's key is in no known_hosts file and was not accepted. Never retried."""

    kind = "unknown_host_key"
    retryable = False


class HostKeyChanged(SSHFailure):
    """The host presented a key different from the known one. Never retried, never accepted."""

    kind = "host_key_changed"
    retryable = False


class HostKeyRevoked(SSHFailure):
    """The host presented a key marked ``@revoked`` in known_hosts. Never retried, never accepted."""

    kind = "host_key_revoked"
    retryable = False


class CommandTimeout(SSHFailure):
    """The command ran longer than the command timeout; its processes were killed."""

    kind = "command_timeout"
    retryable = False
    timeout = True


class ConnectionLost(SSHFailure):
    """The connection dropped while the command ran. Not retried: the command may have acted."""

    kind = "connection_lost"
    retryable = False


class Aborted(SSHFailure):
    """The run was interrupted (Ctrl-C) while this host was in flight."""

    kind = "aborted"
    retryable = False


class NonZeroExit(SSHFailure):
    """The command ran and exited non-zero or was killed by a signal (retried only with retry_on_exit)."""

    kind = "exit"
    retryable = False

    def __init__(self, host: str, code: int | None, stdout: str, stderr: str, signal: str | None = None) -> None:
        msg = f"killed by signal {signal}" if signal else f"Exit code {code}"
        super().__init__(host, msg, stdout, stderr)
        self.code = code
        self.signal = signal
        if signal:
            self.kind = "signal"


class NotRun(Aborted):
    """The host was ready but its command was not run: the canary failed."""

    kind = "canary_failed"


# ----------------------------------------------------------------------
# OpenCode servers (dispatch, sessions, abort, status): each names the host and the URL.


class OpenCodeError(FleetError):
    """A failure talking to a host's OpenCode server. Names the host and the URL."""

    exit_code = 1
    kind = "opencode"

    def __init__(self, host: str, url: str, message: str) -> None:
        self.host = host
        self.url = url
        super().__init__(f"{host}: {message} ({url})")


class Unreachable(OpenCodeError):
    """Could not connect (refused, timed out, DNS)."""

    kind = "unreachable"


class AuthRefused(OpenCodeError):
    """HTTP 401: the password (or its absence) was refused."""

    kind = "auth"


class SessionNotFound(OpenCodeError):
    """HTTP 404 for a session id."""

    kind = "not_found"


class ServerError(OpenCodeError):
    """HTTP 4xx/5xx other than 401/404, with the status and a body excerpt."""

    kind = "server_error"


class ProtocolError(OpenCodeError):
    """The server answered something the contract does not allow (non-JSON, wrong shape)."""

    kind = "protocol"


class ResponseTimeout(OpenCodeError):
    """Connected, but the server did not answer in time."""

    kind = "timeout"


# ----------------------------------------------------------------------
# Safety gates.


class TokenRefused(Refused):
    """The confirmation token does not confirm this operation. ``reason`` is a stable word."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


class ConfirmationRequired(Refused):
    """A gated operation was run without a token: carries the plan and a fresh token."""

    def __init__(self, plan: Any, token: str, ttl: int) -> None:
        self.plan = plan
        self.token = token
        msg = (f"'{plan.operation}' is gated and needs confirmation. Nothing was done. The plan:\n"
               f"{plan.describe()}\n"
               f"To run exactly this plan, rerun the same command with --confirm {token}\n"
               f"(the token works once, for this operation, these hosts and these arguments, "
               f"and expires in {ttl // 60} min)")
        super().__init__(msg)


# ----------------------------------------------------------------------
# Beads.


class BeadsError(FleetError):
    """bd refused, is missing, or answered something unexpected. Nothing else was done."""

    exit_code = 1


class AlreadyClaimed(BeadsError):
    """Another host holds the issue."""

    def __init__(self, issue: str, holder: str, host: str) -> None:
        self.holder = holder
        super().__init__(f"Beads issue {issue} is already claimed by {holder}; not dispatching to {host} "
                         f"(two machines must never work the same issue)")


# ----------------------------------------------------------------------
# The local lab.


class LabError(FleetError):
    """The lab could not be brought up or down."""

    exit_code = 1


class AgentError(FleetError):
    """An agent could not be started."""

    exit_code = 1


# ----------------------------------------------------------------------
# The audit journal.


class AuditError(FleetError):
    """The journal cannot be written."""

    exit_code = 1


class StorageError(FleetError):
    """A file fleet must keep (the journal, the session records, a run's artifacts, tokens) cannot
    be written: the disk is full, read-only, or a part of the path is not a directory. Names the
    path and what to do; what could not be recorded was not done."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, path: str = "") -> None:
        self.path = path
        super().__init__(message)

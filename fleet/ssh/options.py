"""How a fanout behaves: :class:`FanoutOptions` (settings give the defaults, flags override them)
and the run id every run's artifacts folder is named by."""
from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from fleet.errors import BadInput


@dataclass(frozen=True)
class FanoutOptions:
    """How a fanout behaves. Settings give the defaults; flags override them.

    ``connect_timeout`` gives way to a host's ssh_config ``ConnectTimeout`` unless
    ``connect_timeout_given`` (the person typed ``--connect-timeout``): a flag wins as ``ssh -o``
    does; then it also caps preflight's timeout."""

    concurrency: int = 32
    connect_timeout: float = 10.0
    connect_timeout_given: bool = False
    command_timeout: float | None = 3600.0
    attempts: int = 2
    retry_delay: float = 2.0
    retry_on_exit: bool = False
    preflight: bool = True
    preflight_timeout: float = 5.0
    accept_new_host_keys: bool = False
    accept_host_keys_for: frozenset[str] = frozenset()
    collect: tuple[str, ...] = ()
    artifacts_dir: str | None = "artifacts"
    user_known_hosts: str | None = "~/.ssh/known_hosts"
    ssh_config: str | None = "~/.ssh/config"
    artifacts_keep: int = 50  # run folders kept; older ones are pruned (0 keeps all)

    def validate(self) -> "FanoutOptions":
        """Bad values are bad input, with the flag to fix."""
        for flag, v in (("--connect-timeout", self.connect_timeout), ("--timeout", self.command_timeout),
                        ("--retry-delay", self.retry_delay), ("--preflight-timeout", self.preflight_timeout)):
            if v is not None and (not isinstance(v, (int, float)) or math.isnan(v) or math.isinf(v)):
                raise BadInput(f"{flag} {v}: write a number of seconds")
        if self.concurrency < 1:
            raise BadInput(f"--concurrency {self.concurrency}: write a number of at least 1")
        if self.attempts < 1 or self.attempts > 10:
            raise BadInput(f"--attempts {self.attempts}: write a number from 1 to 10")
        if self.connect_timeout <= 0:
            raise BadInput(f"--connect-timeout {self.connect_timeout}: write a positive number of seconds")
        if self.command_timeout is not None and self.command_timeout < 0:
            raise BadInput(f"--timeout {self.command_timeout}: write a positive number of seconds (0 for none)")
        if self.preflight_timeout <= 0:
            raise BadInput(f"preflight timeout {self.preflight_timeout}: write a positive number of seconds")
        if self.retry_delay < 0:
            raise BadInput(f"--retry-delay {self.retry_delay}: write 0 or more seconds")
        for p in self.collect:
            if not p or "\0" in p:
                raise BadInput("--collect needs a remote file path, e.g. --collect /var/log/syslog")
        return self

    @classmethod
    def from_settings(cls, st: Any, **flags: Any) -> FanoutOptions:
        """The options from fleet's settings, then the flags given (None = the setting), checked."""
        from fleet.settings import flag_or as num

        ct = num("--timeout", flags.get("timeout"), st.command_timeout)
        given = flags.get("connect_timeout") is not None
        connect = num("--connect-timeout", flags.get("connect_timeout"), st.connect_timeout, positive=True)
        return cls(
            concurrency=num("--concurrency", flags.get("concurrency"), st.concurrency, int, 1),
            connect_timeout=connect, connect_timeout_given=given,
            command_timeout=ct if ct > 0 else None,
            attempts=num("--attempts", flags.get("attempts"), st.attempts, int, 1),
            retry_delay=num("--retry-delay", flags.get("retry_delay"), st.retry_delay),
            retry_on_exit=bool(flags.get("retry_on_exit")), preflight=not flags.get("no_preflight"),
            preflight_timeout=min(st.preflight_timeout, connect) if given else st.preflight_timeout,
            accept_new_host_keys=bool(flags.get("accept_new_host_keys")),
            accept_host_keys_for=frozenset(flags.get("accept_new_host_key") or ()),
            collect=tuple(flags.get("collect") or ()), artifacts_dir=st.artifacts_dir, ssh_config=st.ssh_config,
            artifacts_keep=st.artifacts_keep).validate()


def new_run_id() -> str:
    """A sortable, unique run id: UTC time to the microsecond (runs of the same second sort in
    the order they started: pruning removes the oldest) plus a random suffix."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ") + "-" + secrets.token_hex(3)


__all__ = ["FanoutOptions", "new_run_id"]

"""Dispatch modes (off / canary / enforced) and the safety gate, called explicitly.

Every operation declares what its plan contains (:class:`Operation`: canary, batches, order)
and calls :func:`enter` before it touches a host: the gate turns (inventory, selector, mode,
confirm) into a :class:`Plan`, applies the mode (off keeps everything here; enforced keeps to
the operation's route), and asks for a scoped confirmation token when the operation is gated.
The operation then runs the plan in the order its text shows (:func:`canary_first`). Every face
calls the same operations, so Python callers get the same protection.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from fleet.errors import (
    BadInput,
    ConfirmationRequired,  # noqa: F401 - re-exported where they were defined
    Refused,
)
from fleet.inventory import Host, Inventory
from fleet.inventory.select import select
from fleet.safety.tokens import Scope, TokenStore
from fleet.settings import Settings

MODES = ("off", "canary", "enforced")
ALWAYS_GATED = ("teardown", "blow-away", "worktrees.remove")


def resolve_mode(value: str | None, settings: Settings | None = None) -> str:
    """The mode to use: ``value`` if given, else the setting. Unknown modes are bad input."""
    mode = (value or (settings.mode if settings else "canary") or "").strip().lower()
    if mode not in MODES:
        raise BadInput(f"unknown mode '{value or mode}': write one of {', '.join(MODES)} "
                       f"(--mode, or 'mode:' under fleet in invoke.yaml)")
    return mode


@dataclass
class Plan:
    """What an operation will do: resolved before anything runs, printed on refusal."""

    operation: str
    mode: str
    hosts: list[Host]
    args: dict[str, Any]
    inventory: Inventory
    local: bool = False
    canary: Host | None = None
    kept_local: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    call_options: dict[str, Any] = field(default_factory=dict)  # the operation's own flags (batch, options...)
    settings: Any = None  # the Settings the plan was made under
    op: Any = None  # the Operation: what the plan contains (canary, batches, order)
    redactor: Any = None  # the trail's: the plan text shows none of the inventory's secrets

    @property
    def host_names(self) -> list[str]:
        """Names of the hosts the operation will touch (``local`` in mode off)."""
        return ["local"] if self.local else [h.name for h in self.hosts]

    def scope(self) -> Scope:
        """The token scope of this plan: everything it shows and everything that changes what runs."""
        return Scope.of(self.operation, self.host_names, self.args, self.detail())

    def targets(self) -> dict[str, str]:
        """Per host, where it really goes (ssh_config applied) and its repos root."""
        if self.local:
            return {"local": "this machine"}
        from fleet.ssh.config import resolve_host
        from fleet.ssh.preflight import config_for

        opts = self.call_options.get("options")
        cfg = config_for(self.inventory, getattr(opts, "ssh_config", None))
        out = {}
        for h in self.hosts:
            where = "local" if h.auth == "local" else resolve_host(h, cfg).describe()
            out[h.name] = f"{where} auth={h.auth} repos={h.repos_root or ''}"
        return out

    def detail(self) -> dict[str, Any]:
        """The whole plan as plain data (what a confirmation token is bound to)."""
        d: dict[str, Any] = {"mode": self.mode, "local": self.local,
                             "canary": self.canary.name if self.canary else None,
                             "inventory": self.inventory.digest, "notes": list(self.notes),
                             "targets": self.targets()}
        for k, v in self.call_options.items():
            if not callable(v) and k not in ("log_stream",):
                d[k] = _plain(v)
        return d

    def describe(self) -> str:
        """The exact plan, for a person."""
        lines = [f"operation: {self.operation}", f"mode:      {self.mode}",
                 f"hosts:     {', '.join(self.host_names)} ({len(self.host_names)})"]
        lines += self.order_lines()
        for k, v in sorted(self.args.items()):
            lines.append(f"{k + ':':<10} {shown(v)}")
        lines += [f"note:      {shown(n)}" for n in self.notes]
        text = "\n".join(lines)
        return self.redactor.text(text) if self.redactor is not None else text

    def order_lines(self) -> list[str]:
        """How the hosts will run, as the operation runs them (see :func:`canary_first`)."""
        if self.local:
            return ["order:     once, on this machine"]
        serial = self.op is not None and self.op.serial
        names = [h.name for h in self.hosts]
        out = []
        if self.canary is not None:
            out.append(f"canary:    {self.canary.name} runs first; the rest only if it succeeds")
            names = [n for n in names if n != self.canary.name]
        batch = self.call_options.get("batch") if self.op is not None and self.op.batches else None
        if len(names) > 1 or (names and self.canary is not None):
            what = "then" if self.canary is not None else "order"
            if serial:
                out.append(f"{what + ':':<10} one host after another: {', '.join(names)}")
            elif batch:
                out.append(f"{what + ':':<10} rolling batches of {batch}")
                if self.call_options.get("max_fail") not in (None, ""):
                    out.append(f"max-fail:  stop when more than {self.call_options['max_fail']}% failed")
            else:
                out.append(f"{what + ':':<10} {'the rest' if self.canary is not None else 'every host'} at once")
        return out


def shown(v: Any) -> str:
    """A value as plan text for a person: control characters and newlines escaped, so no value
    can forge a line of the plan."""
    text = str(v)
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _plain(v: Any) -> Any:
    """JSON-able, deterministic (sets sorted) form of an option value."""
    import dataclasses

    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v)
                if f.name not in ("artifacts_dir",)}
    if isinstance(v, (set, frozenset)):
        return sorted(_plain(x) for x in v)
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    # a helper object (records, a Beads client, a trail): what kind it is, never its address
    return f"<{type(v).__name__}>"


def make_plan(inv: Inventory, operation: str, selector: str, mode: str, args: dict[str, Any],
              canary: str | None = None, local_ok: bool = True, no_canary: bool = False) -> Plan:
    """Resolve hosts and apply the mode. Raises Refused (route) or BadInput (selector)."""
    hosts = select(inv, selector)
    plan = Plan(operation, mode, hosts, dict(args), inv)
    if mode == "off":
        remote = [h.name for h in hosts if h.auth != "local"]
        if local_ok:
            plan.local = True
            if remote:
                plan.kept_local = remote
                plan.notes.append(f"mode off kept {len(remote)} remote host(s) local: {', '.join(remote)}; "
                                  f"the command runs once on this machine as host 'local'")
        else:
            if remote:
                raise Refused(f"mode off: nothing leaves this machine, but {operation} would reach "
                              f"{', '.join(remote)}; pick a host with 'auth: local' or use --mode canary")
    elif mode == "enforced":
        route = inv.routes.get(operation)
        if route is None:
            raise Refused(f"mode enforced: the inventory has no route for '{operation}', so it may go "
                          f"nowhere; add e.g. routes: {{{operation}: '@group'}} to {inv.path}")
        allowed = select(inv, route)
        allowed_names = {h.name for h in allowed}
        outside = [h.name for h in hosts if h.name not in allowed_names]
        if outside:
            raise Refused(f"mode enforced: {', '.join(outside)} {'is' if len(outside) == 1 else 'are'} "
                          f"outside the route for '{operation}' ({route} = "
                          f"{', '.join(h.name for h in allowed)}); select only those hosts")
    elif mode == "canary" and no_canary:
        if canary:
            raise BadInput("--canary and --no-canary contradict each other: keep one")
        if len(hosts) > 1:
            plan.notes.append("no canary (--no-canary): every host runs at once")
    elif mode == "canary":
        chosen: Host | None = None
        if canary:
            chosen = inv.host(canary)
            if chosen.name not in {h.name for h in hosts}:
                raise BadInput(f"--canary {canary} is not among the selected hosts "
                               f"({', '.join(h.name for h in hosts)}): pick one of them")
        elif inv.canary and inv.canary in {h.name for h in hosts}:
            chosen = inv.host(inv.canary)
        elif len(hosts) > 1:
            chosen = hosts[0]
            if inv.canary:
                plan.notes.append(f"inventory canary {inv.canary} is not selected; {chosen.name} goes first")
        plan.canary = chosen if len(hosts) > 1 else None
    return plan


def is_gated(operation: str, mode: str, settings: Settings, local: bool) -> bool:
    """teardown and blow-away always, and any operation under ``gated:``. (``enforced`` mode
    keeps operations to their routes; it asks no token for what is not gated.)"""
    return operation in ALWAYS_GATED or operation in settings.gated


def authorize(plan: Plan, confirm: str | None, settings: Settings, store: TokenStore | None = None,
              audit: Callable[..., None] | None = None) -> bool:
    """Let a plan run, or raise. Returns True when a token was spent."""
    if not is_gated(plan.operation, plan.mode, settings, plan.local):
        if confirm:
            raise BadInput(f"--confirm given, but '{plan.operation}' is not gated in mode {plan.mode}: "
                           f"nothing to confirm; drop --confirm")
        return False
    store = store or TokenStore(settings.token_dir, settings.token_ttl)
    scope = plan.scope()
    if not confirm:
        token = store.issue(scope)
        if audit:
            audit("token_issued", plan, "issued")
        raise ConfirmationRequired(plan, token, store.ttl)
    try:
        store.verify(confirm, scope)
    except Refused as exc:
        if audit:
            audit("token_refused", plan, getattr(exc, "reason", "refused"))
        raise
    if audit:
        audit("token_used", plan, "ok")
    return True


@dataclass(frozen=True)
class Operation:
    """What an operation's plan contains, declared once: the gate shows it and the operation
    runs it (tests compare the two)."""

    name: str
    local_ok: bool = True      # mode off runs it once on this machine (else mode off refuses it)
    canary: bool = True        # in canary mode: the canary first, the rest only if it succeeds
    batches: bool = False      # takes --batch / --max-fail
    serial: bool = False       # the hosts one after another, in the plan's order (else at once)
    journals_hosts: bool = False  # journals each host's part itself (else the gate does)


FANOUT = Operation("fanout", batches=True)
BLOW_AWAY = Operation("blow-away", local_ok=False, canary=False)  # each host's removal is checked on that host
DISPATCH = Operation("dispatch", local_ok=False)
TEARDOWN = Operation("teardown", local_ok=False, serial=True, journals_hosts=True)
WORKTREES_REMOVE = Operation("worktrees.remove", local_ok=False, serial=True, journals_hosts=True)
OPERATIONS = {op.name: op for op in (FANOUT, BLOW_AWAY, DISPATCH, TEARDOWN, WORKTREES_REMOVE)}


class Gated:
    """An operation let through the gate: its plan, its audit trail, and :meth:`ran` to journal
    what a gated plan did. A context manager: closes the trail it opened itself."""

    def __init__(self, op: Operation, plan: Plan, trail: Any, own: Any, spent: bool) -> None:
        self.op, self.plan, self.trail, self._own, self.spent = op, plan, trail, own, spent

    @property
    def gated(self) -> bool:
        """Whether this plan needed a confirmation."""
        return self.spent or is_gated(self.op.name, self.plan.mode, self.plan.settings, self.plan.local)

    def ran(self, results: Any, run_id: str = "") -> None:
        """Journal each host's end of a gated plan (operations that journal hosts themselves skip this)."""
        if self.trail is None or not self.gated or self.op.journals_hosts:
            return
        for r in results:
            self.trail.record("gated_action_run", r.host, r.outcome.value.lower(), action=self.op.name,
                              run_id=run_id, error=getattr(r, "error", ""),
                              **{k: str(v) for k, v in self.plan.args.items()})

    def close(self) -> None:
        """Close the trail if the gate opened it."""
        if self._own is not None:
            self._own.close()
            self._own = None

    def __enter__(self) -> "Gated":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def enter(op: Operation, inv: Inventory, selector: str, *, args: dict[str, Any], mode: str | None = None,
          confirm: str | None = None, canary: str | None = None, no_canary: bool = False,
          settings: Settings | None = None, store: TokenStore | None = None,
          audit: Callable[..., None] | None = None, trail: Any = None,
          call_options: dict[str, Any] | None = None, check: Callable[[Plan], None] | None = None) -> Gated:
    """The gate, called explicitly by every operation before it touches a host: plan (select the
    hosts, apply the mode: off keeps everything here, enforced keeps to the operation's route,
    canary picks who goes first when the operation honours a canary), run ``check`` (refusals no
    token can lift), then ask for a scoped confirmation token when the operation is gated.

    Audit happens here whoever calls: without a ``trail`` (or an ``audit`` callback) one is made
    for the inventory with every secret it names redacted; token events are journaled.
    """
    if settings is None:
        from fleet.settings import load_settings
        settings = load_settings()
    m = resolve_mode(mode, settings)
    plan = make_plan(inv, op.name, selector, m, args, canary if op.canary else None, op.local_ok,
                     no_canary and op.canary)
    if not op.canary:
        plan.canary = None  # the operation runs no canary: its plan shows none
    plan.op = op
    plan.call_options = dict(call_options or {})
    plan.settings = settings
    if check is not None:
        check(plan)
    own = None
    if trail is None and audit is None:
        from fleet.app import audit_trail
        own = trail = audit_trail(inv, settings)
    if audit is None and trail is not None:
        audit = trail.gate_event
    plan.redactor = getattr(trail, "redactor", None)  # the plan a person reads shows no secret
    try:
        spent = authorize(plan, confirm, settings, store, audit)
    except BaseException:
        if own is not None:
            own.close()
        raise
    return Gated(op, plan, trail, own, spent)


R = TypeVar("R")


def canary_first(plan: Plan, run_one: Callable[[Host], R], ok: Callable[[R], bool],
                 not_run: Callable[[Host, R], R],
                 run_rest: Callable[[list[Host]], dict[str, R]] | None = None) -> list[R]:
    """Run a plan's hosts in the order its text shows: the canary first (if any) and the rest only
    if it succeeds (``not_run(host, canary_result)`` stands for each of them otherwise); the rest
    at once through ``run_rest`` or, for a serial operation, one after another in plan order.
    Results come back in the plan's host order."""
    hosts = list(plan.hosts)
    done: dict[str, R] = {}
    if plan.canary is not None:
        first = run_one(plan.canary)
        done[plan.canary.name] = first
        hosts = [h for h in hosts if h.name != plan.canary.name]
        if not ok(first):
            for h in hosts:
                done[h.name] = not_run(h, first)
            hosts = []
    if hosts:
        if run_rest is not None and not (plan.op is not None and plan.op.serial):
            done.update(run_rest(hosts))
        else:
            for h in hosts:
                done[h.name] = run_one(h)
    return [done[h.name] for h in plan.hosts if h.name in done]


def parse_batch(batch: str | None, total: int) -> int | None:
    """``--batch N`` or ``N%`` -> hosts per batch (at least 1), or None for one batch."""
    if batch is None or str(batch).strip() == "":
        return None
    b = str(batch).strip()
    try:
        if b.endswith("%"):
            pct = float(b[:-1])
            if not 0 < pct <= 100:
                raise ValueError
            return max(1, int(total * pct / 100))
        n = int(b)
        if n < 1:
            raise ValueError
        return n
    except ValueError:
        raise BadInput(f"--batch {batch}: write a number of hosts (e.g. 5) or a percentage (e.g. 25%)") from None


def parse_max_fail(value: str | float | None) -> float | None:
    """``--max-fail PCT`` (0-100) or None."""
    if value is None or str(value).strip() == "":
        return None
    try:
        v = float(str(value).rstrip("%"))
    except ValueError:
        v = -1
    if not 0 <= v <= 100:
        raise BadInput(f"--max-fail {value}: write a percentage from 0 to 100, e.g. --max-fail 20")
    return v

"""Audit trail, dual-write: a local journal first (fsynced), then Slack, never in the way.

Journal: JSON Lines, mode 0600, append-only. Three kinds of line:
``{"type": "event", ...}`` (id, time, actor, host, operation, outcome, dispatch_id, detail),
``{"type": "attempt", "event_id"}`` written just before a Slack send, and
``{"type": "delivered", "event_id", "ts", "thread_ts"}`` after it. An event with no
``delivered`` line is pending. Sends and their records happen under one file lock, so two
replays (or a replay and a live run) never post an event twice; an event with an
``attempt`` but no ``delivered`` line has an unknown fate, and the channel is searched for
its id (message metadata) before it is posted again.

Slack posting runs on a background thread: slow, rate-limited, failing, down or
unconfigured Slack costs the operation at most ``flush_timeout`` (200 ms) at exit.
"""
from __future__ import annotations

import fcntl
import getpass
import json
import os
import queue
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import BadInput, FleetError
from .inventory import Inventory, SlackSettings
from .errors import AuditError  # noqa: F401 - re-exported where they were defined

EVENT_TYPE = "fleet_audit"
_TOKEN_RE = re.compile(r"\b[a-z2-7]{4}(?:-[a-z2-7]{4}){5}\b")  # fleet confirmation tokens
_SLACK_RE = re.compile(r"xox[abposr]-[A-Za-z0-9-]+")


def actor() -> str:
    """``user@hostname`` of whoever runs fleet here."""
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


# An Authorization header echoed back by a server (Basic or Bearer credentials).
_AUTH_RE = re.compile(r"(?i)\b(basic|bearer)\s+[A-Za-z0-9+/=._~-]{8,}")


class Redactor:
    """Removes secrets (known values, fleet tokens, Slack tokens) from anything journalled or posted."""

    def __init__(self, secrets_: Iterable[str] = ()) -> None:
        self.values = sorted({s for s in secrets_ if s and len(s) >= 4}, key=len, reverse=True)

    def text(self, s: str) -> str:
        """Redacted copy of ``s``."""
        for v in self.values:
            s = s.replace(v, "[redacted]")
        s = _TOKEN_RE.sub("[token]", s)
        s = _AUTH_RE.sub(lambda m: m.group(1) + " [redacted]", s)
        return _SLACK_RE.sub("[slack-token]", s)

    def value(self, v: Any) -> Any:
        """Redacted copy of any JSON-able value."""
        if isinstance(v, str):
            return self.text(v)
        if isinstance(v, dict):
            return {k: self.value(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [self.value(x) for x in v]
        return v


@dataclass
class JournalState:
    """A folded journal: events in order, deliveries, attempts, and torn lines set aside."""

    events: list[dict[str, Any]] = field(default_factory=list)
    delivered: dict[str, dict[str, Any]] = field(default_factory=dict)
    attempted: set[str] = field(default_factory=set)
    torn: list[str] = field(default_factory=list)
    failed: dict[str, dict[str, Any]] = field(default_factory=dict)  # refused by Slack for good
    skipped: int = 0  # well-formed JSON lines of a shape fleet does not know

    def pending(self, include_failed: bool = False) -> list[dict[str, Any]]:
        """Events not yet delivered (nor given up on, unless ``include_failed``), in journal order."""
        return [e for e in self.events if e["id"] not in self.delivered
                and (include_failed or e["id"] not in self.failed)]

    def thread_ts(self, dispatch_id: str) -> str | None:
        """Slack ts of the first delivered event of ``dispatch_id`` (the thread root)."""
        for e in self.events:
            if e.get("dispatch_id") == dispatch_id:
                d = self.delivered.get(e["id"])
                return d.get("thread_ts") or d.get("ts") if d else None
        return None


class Journal:
    """The append-only local journal. Safe across threads and processes (flock)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(os.path.expanduser(str(path)))
        self._tlock = threading.RLock()

    def _lockfile(self, suffix: str):
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        f = open(str(self.path) + suffix, "a")
        fcntl.flock(f, fcntl.LOCK_EX)
        return f

    def lock(self):
        """The delivery lock: held while sending an event and recording its fate."""
        return self._lockfile(".deliver.lock")

    def append(self, rec: dict[str, Any]) -> None:
        """Append one line and fsync before returning."""
        line = json.dumps(rec, sort_keys=True, separators=(",", ":")) + "\n"
        with self._tlock:
            lk = self._lockfile(".lock")
            try:
                self._heal_tail()
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, line.encode())
                    os.fsync(fd)
                finally:
                    os.close(fd)
            finally:
                lk.close()

    def _heal_tail(self) -> None:
        # A crash mid-write leaves a last line with no newline: set it aside, never glue to it.
        # Only the last byte is read in the usual case, so an append costs the same whatever
        # the journal's size.
        try:
            with open(self.path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                if size == 0:
                    return
                f.seek(size - 1)
                if f.read(1) == b"\n":
                    return
                pos, tail = size, b""
                while pos > 0 and b"\n" not in tail:
                    step = min(65536, pos)
                    pos -= step
                    f.seek(pos)
                    tail = f.read(step) + tail
                content = tail
                base = pos
        except FileNotFoundError:
            return
        cut_rel = content.rfind(b"\n") + 1
        cut = base + cut_rel
        content = content[cut_rel:]
        cut_rel = 0
        aside = Path(str(self.path) + ".torn")
        with open(aside, "ab") as f:
            f.write(content + b"\n")
        os.chmod(aside, 0o600)
        with open(self.path, "r+b") as f:
            f.truncate(cut)
            f.flush()
            os.fsync(f.fileno())

    def load(self) -> JournalState:
        """Fold the journal. A torn last line is reported in ``torn`` and moved aside."""
        st = JournalState()
        with self._tlock:
            lk = self._lockfile(".lock")
            try:
                try:
                    raw = self.path.read_bytes()
                except FileNotFoundError:
                    return st
                if raw and not raw.endswith(b"\n"):
                    st.torn.append(raw[raw.rfind(b"\n") + 1:].decode(errors="replace"))
                    self._heal_tail()
                    raw = raw[: raw.rfind(b"\n") + 1]
            finally:
                lk.close()
        for ln in raw.decode(errors="replace").splitlines():
            if not ln.strip():
                continue
            try:
                rec = json.loads(ln)
            except ValueError:
                st.torn.append(ln)
                continue
            t = rec.get("type") if isinstance(rec, dict) else None
            if t == "event" and _is_event(rec):
                st.events.append(rec)
            elif t in ("delivered", "attempt", "failed", "retry") and isinstance(rec.get("event_id"), str):
                if t == "delivered":
                    st.delivered[rec["event_id"]] = rec
                elif t == "attempt":
                    st.attempted.add(rec["event_id"])
                elif t == "failed":
                    st.failed[rec["event_id"]] = rec
                else:
                    st.failed.pop(rec["event_id"], None)
            else:
                st.skipped += 1  # another shape (or a newer fleet's): never a crash
        return st


def _is_event(rec: dict[str, Any]) -> bool:
    return (isinstance(rec.get("id"), str) and isinstance(rec.get("operation"), str)
            and isinstance(rec.get("detail", {}), dict) and all(
                isinstance(rec.get(k, ""), str) for k in ("time", "host", "outcome", "dispatch_id", "channel")))


def message_text(e: dict[str, Any]) -> str:
    """The Slack text of one event: short, readable, no secrets (redacted before journalling)."""
    d = e.get("detail") or {}
    bits = [f"[{e.get('actor')}] {e['operation']} on {e.get('host') or '-'}: {e.get('outcome')}"]
    for k in ("session_id", "repo", "task", "issue", "answer", "error", "reason", "hosts", "plan"):
        if d.get(k):
            bits.append(f"{k}: {d[k]}")
    return " | ".join(bits)


class SlackPoster:
    """Sends events to Slack with slack-sdk's WebClient (no retries of its own)."""

    def __init__(self, settings: SlackSettings, token: str, timeout: float = 10.0) -> None:
        from slack_sdk import WebClient

        kwargs: dict[str, Any] = {"token": token, "timeout": int(max(1, timeout)), "retry_handlers": []}
        if settings.base_url:
            kwargs["base_url"] = settings.base_url if settings.base_url.endswith("/") else settings.base_url + "/"
        self.client = WebClient(**kwargs)
        self.channel = settings.channel

    def post(self, e: dict[str, Any], thread_ts: str | None) -> str:
        """Post one event; returns its ts."""
        resp = self.client.chat_postMessage(
            channel=self.channel, text=message_text(e), thread_ts=thread_ts,
            metadata={"event_type": EVENT_TYPE, "event_payload": {"event_id": e["id"],
                                                                  "dispatch_id": e.get("dispatch_id", "")}})
        return str(resp["ts"])

    def find(self, e: dict[str, Any], thread_ts: str | None) -> str | None:
        """The ts of an already-posted message for ``e`` (by metadata event_id), if any."""
        oldest = str(max(0.0, float(e.get("epoch", 0) or 0) - 300))
        cursor = None
        for _ in range(MAX_FIND_PAGES):  # every page back to the event's time, not only the first
            kw: dict[str, Any] = {"channel": self.channel, "include_all_metadata": True, "limit": 200}
            if cursor:
                kw["cursor"] = cursor
            if thread_ts:
                resp = self.client.conversations_replies(ts=thread_ts, **kw)
            else:
                resp = self.client.conversations_history(oldest=oldest, **kw)
            for m in resp.get("messages") or []:
                md = (m.get("metadata") or {}).get("event_payload") or {}
                if md.get("event_id") == e["id"]:
                    return str(m.get("ts"))
            cursor = ((resp.get("response_metadata") or {}).get("next_cursor") or "") if resp.get("has_more", True) else ""
            if not cursor:
                return None
        return None


MAX_FIND_PAGES = 50
# Slack errors that will not change on a retry of the same event: mark it failed and go on.
PERMANENT_ERRORS = {"msg_too_long", "channel_not_found", "not_in_channel", "is_archived", "invalid_blocks",
                    "invalid_metadata_format", "invalid_metadata_schema", "no_text", "too_many_attachments",
                    "restricted_action", "invalid_arguments", "metadata_too_large"}


class RateLimited(Exception):
    """Slack said 429; ``retry_after`` seconds."""

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(f"rate limited, retry after {retry_after:g}s")


def deliver(journal: Journal, poster: SlackPoster, event_ids: set[str] | None = None,
            on_rate_limit: Callable[[float], bool] | None = None, deadline: float | None = None,
            retry_failed: bool = False) -> tuple[int, str]:
    """Deliver pending events in order (all, or those in ``event_ids``). Returns (sent, stop reason).

    Holds the delivery lock throughout, so concurrent deliverers serialise and none repeats
    another's work. On 429, ``on_rate_limit(retry_after)`` says whether to wait and go on.
    """
    from slack_sdk.errors import SlackApiError

    sent = 0
    gave_up: list[str] = []
    lk = journal.lock()
    try:
        st = journal.load()
        for e in st.pending(include_failed=retry_failed):
            if event_ids is not None and e["id"] not in event_ids:
                continue
            if e.get("channel", "") != poster.channel:
                continue  # an event is only ever sent to the channel it was recorded for
            if deadline is not None and time.monotonic() > deadline:
                return sent, "out of time"
            thread = st.thread_ts(e["dispatch_id"]) if e.get("dispatch_id") else None
            while True:
                try:
                    ts = None
                    if e["id"] in st.attempted:
                        ts = poster.find(e, thread)
                    if ts is None:
                        journal.append({"type": "attempt", "event_id": e["id"], "time": _now()})
                        st.attempted.add(e["id"])
                        ts = poster.post(e, thread)
                    rec = {"type": "delivered", "event_id": e["id"], "ts": ts, "thread_ts": thread or ts,
                           "time": _now()}
                    journal.append(rec)
                    st.delivered[e["id"]] = rec
                    sent += 1
                    break
                except SlackApiError as exc:
                    resp = exc.response
                    if getattr(resp, "status_code", 0) == 429:
                        ra = float((resp.headers or {}).get("Retry-After", resp.headers.get("retry-after", 1)) or 1)
                        if on_rate_limit is not None and on_rate_limit(ra):
                            continue
                        return sent, f"rate limited (retry after {ra:g}s)"
                    err = (resp.get("error") if hasattr(resp, "get") else None) or f"HTTP {resp.status_code}"
                    if err in PERMANENT_ERRORS:
                        rec = {"type": "failed", "event_id": e["id"], "error": err, "time": _now()}
                        journal.append(rec)
                        st.failed[e["id"]] = rec
                        gave_up.append(err)
                        break  # this event is given up on (audit.replay --retry-failed); the rest go on
                    return sent, f"Slack refused the post: {err}"
                except Exception as exc:  # noqa: BLE001 - any transport failure leaves it pending
                    return sent, f"Slack unreachable: {type(exc).__name__}"
        if gave_up:
            return sent, (f"Slack refused {len(gave_up)} event(s) for good ({', '.join(sorted(set(gave_up)))}): "
                          f"marked failed; see audit.tail, retry with audit.replay --retry-failed")
        return sent, ""
    finally:
        lk.close()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class AuditTrail:
    """Journal-first audit with a background Slack poster. ``record`` returns once fsynced."""

    def __init__(self, journal: str | os.PathLike[str], slack: SlackSettings | None = None,
                 token: str | None = None, secrets_: Iterable[str] = (), post: bool = True,
                 flush_timeout: float = 0.2, who: str | None = None) -> None:
        self.journal = Journal(journal)
        self.slack = slack
        self.redactor = Redactor(list(secrets_) + ([token] if token else []))
        self.actor = who or actor()
        self.flush_timeout = flush_timeout
        self.poster: SlackPoster | None = None
        self.status = "slack not configured: events stay pending (inv audit.replay)"
        if post and slack is not None and token:
            self.poster = SlackPoster(slack, token)
            self.status = ""
        elif post and slack is not None:
            self.status = f"${slack.token_env} is not set: events stay pending (inv audit.replay)"
        self._q: "queue.Queue[str | None]" = queue.Queue()
        self._thread: threading.Thread | None = None
        self._idle = threading.Event()
        self._idle.set()
        self.last_error = ""

    def record(self, operation: str, host: str | None, outcome: str, dispatch_id: str = "",
               **detail: Any) -> dict[str, Any]:
        """Append one event (fsynced), then hand it to the poster. Never raises for Slack."""
        now = time.time()
        e = {"type": "event", "id": "ev_" + secrets.token_hex(8), "time": _now(), "epoch": now,
             "actor": self.actor, "host": host or "", "operation": operation, "outcome": outcome,
             "dispatch_id": dispatch_id or "", "channel": self.slack.channel if self.slack else "",
             "detail": self.redactor.value({k: v for k, v in detail.items() if v not in (None, "")})}
        self.journal.append(e)
        if self.poster is not None:
            self._idle.clear()
            self._q.put(e["id"])
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fleet-audit", daemon=True)
                self._thread.start()
        return e

    def _run(self) -> None:
        while True:
            eid = self._q.get()
            if eid is None:
                return
            batch = {eid}
            while True:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._q.put(None)
                    break
                batch.add(nxt)
            try:
                _, why = deliver(self.journal, self.poster, batch)  # type: ignore[arg-type]
                if why:
                    self.last_error = why
            except Exception as exc:  # noqa: BLE001 - the journal keeps it pending
                self.last_error = str(exc)
            if self._q.empty():
                self._idle.set()

    def gate_event(self, event: str, plan: Any, outcome: str) -> None:
        """Callback for :func:`fleet.modes.authorize` (token issued / used / refused)."""
        self.record(event, ",".join(plan.host_names), outcome, operation_gated=plan.operation,
                    hosts=",".join(plan.host_names), mode=plan.mode)

    def close(self, timeout: float | None = None) -> bool:
        """Wait at most ``timeout`` (default flush_timeout) for posts in flight. True if all went."""
        if self._thread is None:
            return True
        if getattr(self, "_closed", None) is not None:
            return self._closed
        done = self._idle.wait(self.flush_timeout if timeout is None else timeout)
        self._q.put(None)
        self._closed = done
        return done


def for_inventory(inv: Inventory, journal: str, post: bool = True, secrets_: Iterable[str] = ()) -> AuditTrail:
    """An AuditTrail for the inventory's Slack channel, token from its env var."""
    token = os.environ.get(inv.slack.token_env) if inv.slack else None
    return AuditTrail(journal, inv.slack, token, secrets_=secrets_, post=post)


@dataclass
class ReplayReport:
    """What a replay did."""

    delivered: int
    pending: int
    torn: list[str]
    stopped: str


def replay(journal: str, slack: SlackSettings | None, token: str | None, max_wait: float = 300.0,
           sleep: Callable[[float], None] = time.sleep, retry_failed: bool = False) -> ReplayReport:
    """Deliver every pending event in order, waiting out rate limits (up to ``max_wait`` s in all)."""
    j = Journal(journal)
    st = j.load()
    if slack is None:
        raise BadInput("the inventory has no 'slack:' section: add slack: {channel: C...} to replay to Slack")
    if not token:
        raise BadInput(f"${slack.token_env} is not set: export the Slack bot token to replay")
    poster = SlackPoster(slack, token)
    waited = [0.0]

    def on_rl(ra: float) -> bool:
        if waited[0] + ra > max_wait:
            return False
        waited[0] += ra
        sleep(ra)
        return True
    sent, why = deliver(j, poster, None, on_rl, retry_failed=retry_failed)
    after = j.load()
    return ReplayReport(sent, len([e for e in after.pending() if e.get("channel", "") == slack.channel]),
                        st.torn, why)


def format_events(events: list[dict[str, Any]], delivered: dict[str, Any],
                  failed: dict[str, Any] | None = None) -> str:
    """Journal events for a person, one per line."""
    out = []
    failed = failed or {}
    for e in events:
        state = "sent" if e["id"] in delivered else (
            f"failed: {failed[e['id']].get('error', '')}" if e["id"] in failed else "pending")
        d = e.get("detail") or {}
        extra = " ".join(f"{k}={json.dumps(v) if not isinstance(v, str) or ' ' in v else v}"
                         for k, v in d.items())
        out.append(f"{e['time']}  {e.get('dispatch_id') or '-':<28} {e.get('host') or '-':<10} "
                   f"{e['operation']:<18} {e['outcome']:<9} [{state}] {extra}".rstrip())
    return "\n".join(out)



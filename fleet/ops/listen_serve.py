"""``fleet listen`` inside ``fleet serve``: the same listener on a thread of its own, while the
inventory has a ``slack:`` section and the bot token is set (Socket Mode too when the app-level
token is). It stops with the service; if Slack will not take a token it says why and stops,
and the service goes on."""
from __future__ import annotations

import os
import threading
from typing import Any, Callable

from fleet.errors import FleetError


class Background:
    """A listener running on a thread; :meth:`close` stops it."""

    def __init__(self, listener: Any, thread: threading.Thread, stop: threading.Event) -> None:
        self.listener = listener
        self.thread = thread
        self._stop = stop

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.thread.join(timeout)


def start_background(fl: Any, out: Callable[[str], None], interval: float = 5.0) -> Background | None:
    """Start the listener for ``fl`` (a :class:`fleet.app.Fleet`) on a thread, or None (said on
    ``out``) when Slack is not configured here."""
    from fleet.ops.listen import Listener
    from fleet.ops.listen_slack import ListenStopped

    try:
        inv = fl.inventory
    except FleetError as exc:
        out(f"fleet serve: no Slack listener: {exc}")
        return None
    if inv.slack is None:
        return None
    token = os.environ.get(inv.slack.token_env)
    if not token:
        out(f"fleet serve: no Slack listener: ${inv.slack.token_env} is not set")
        return None
    app_env = getattr(inv.slack, "app_token_env", None) or "SLACK_APP_TOKEN"
    stop = threading.Event()
    trail = fl.trail()
    def pause(seconds: float) -> None:
        stop.wait(seconds)  # a wait (a pass's interval, a 429) ends when the service stops
    lst = Listener(inv, trail, token, fl.records, fl.beads(), sleep=pause,
                   app_token=os.environ.get(app_env) or None, out=out, app_token_env=app_env)

    def run() -> None:
        try:
            lst.run(interval, until=stop.is_set)
        except ListenStopped as exc:
            out(f"fleet serve: the Slack listener stopped: {exc}")
        except Exception as exc:  # noqa: BLE001 - the service goes on without it
            out(f"fleet serve: the Slack listener failed: {type(exc).__name__}: {exc}")
        finally:
            trail.close()
    t = threading.Thread(target=run, name="fleet-listen", daemon=True)
    t.start()
    out("fleet serve: listening to Slack " + ("(Socket Mode)" if lst.app_token else "(polling)"))
    return Background(lst, t, stop)


__all__ = ["Background", "start_background"]

"""The early dial: a cold ``fleet fanout`` starts its hosts' SSH handshakes while it is still loading.

A cold CLI run spends its first ~250 ms importing Invoke, paramiko and the rest of fleet and
parsing its command line, with the network idle; ssh would be talking to the hosts by then. The
same command line, run in the same directory with the same settings files and environment on an
unchanged inventory, selects the same hosts. So once a CLI fanout has started its hosts,
:func:`note` keeps their names and the run's SSH options in the user's cache under all of that;
the next identical call finds them (:func:`begin`, from the console script's first lines) and a
background thread runs preflight and the SSH handshake of each one at once, as the run would:
the same inventory read again, the same ssh_config, host keys checked against the same
known_hosts files (an unknown key is never accepted here; the run decides as always).

The run takes each host's connection when it gets to it (:func:`take`, waiting for one still
being made: it was started earlier than the run could), with its preflight result, so what it
logs and reports is what it would have. What the run does not take (another selection, a changed
ssh_config, a refusal by the mode's gate) is closed unused (:func:`close`). Only connections are
made ahead, never a command: the gate, the plan and the canary decide as before. A host whose
early dial failed after preflight passed is dialled again by the run, as a retry would.
``FLEET_NO_EARLY_DIAL=1`` turns it off.

Imports at module level are the standard library's only: the console script loads this first.
"""
from __future__ import annotations

import json
import os
import threading

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

FORMAT = 1
_current: "Early | None" = None
_note_to: str | None = None  # where this process's first run notes its hosts (the CLI's cache entry)


def inventory_stamp(path: str) -> list[Any]:
    """What tells a changed inventory file: its real path, inode, size and modification time."""
    real = os.path.realpath(path)
    st = os.stat(real)
    return [real, st.st_ino, st.st_size, st.st_mtime_ns]


def arm(cache_file: str) -> None:
    """This process is a CLI call whose first fanout notes its hosts at ``cache_file``."""
    global _note_to
    _note_to = cache_file


def note(inventory: Any, hosts: list[str], options: Any) -> None:
    """Keep the run's hosts and SSH options for the next identical call (best effort; once)."""
    global _note_to
    path, _note_to = _note_to, None
    if path is None or not inventory.path:
        return
    from dataclasses import asdict

    from fleet.files import write_atomic

    opts = {k: sorted(v) if isinstance(v, frozenset) else v for k, v in asdict(options).items()}
    try:
        rec = {"format": FORMAT, "inventory": inventory_stamp(str(inventory.path)), "hosts": hosts, "options": opts}
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        write_atomic(path, json.dumps(rec), sync=False)
    except (OSError, TypeError, ValueError):
        pass


def begin(cache_file: str) -> None:
    """Arm :func:`note`, and start dialling what the cache holds for this call, if anything."""
    global _current
    arm(cache_file)
    try:
        with open(cache_file, encoding="utf-8") as fh:
            rec = json.load(fh)
        if rec.get("format") != FORMAT or inventory_stamp(rec["inventory"][0]) != rec["inventory"]:
            return  # the inventory changed: this call may select other hosts
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return
    # what the dial runs is imported here, before the program's own imports: two threads importing
    # at once could meet in an import cycle, where Python hands one of them a half-made module
    import fleet.inventory  # noqa: F401
    import fleet.ssh.config  # noqa: F401
    import fleet.ssh.fastauth  # noqa: F401
    import fleet.ssh.hostcert  # noqa: F401
    import fleet.ssh.hostkeys  # noqa: F401
    import fleet.ssh.preflight  # noqa: F401
    import fleet.ssh.session  # noqa: F401
    import fleet.workers  # noqa: F401

    _current = Early(rec)
    threading.Thread(target=_current.run, name="fleet-early-dial", daemon=True).start()


def key_store(inventory: Any, options: Any, accept: bool = True) -> Any:
    """The run's known_hosts (:class:`~fleet.ssh.hostkeys.HostKeyStore`) as ``options`` say;
    ``accept=False``: no unknown key is accepted for the flags' sake (the early dial's)."""
    from fleet.ssh.hostkeys import HostKeyStore

    user_kh = os.path.expanduser(options.user_known_hosts) if options.user_known_hosts else None
    return HostKeyStore([f for f in (user_kh, inventory.known_hosts) if f], write_to=inventory.known_hosts or user_kh,
                        accept_all=accept and options.accept_new_host_keys,
                        accept_hosts=set(options.accept_host_keys_for) if accept else set(),
                        inventory=inventory.path)


class Early:
    """The early dials of one call: per host and target, preflight's result and the connection."""

    def __init__(self, rec: dict[str, Any]) -> None:
        self.rec = rec
        self.listed = threading.Event()  # every host's dial is submitted (or the thread gave up)
        self.closed = False
        self._lock = threading.Lock()
        self._dials: dict[tuple[str, str], Any] = {}  # (host, repr(target)) -> Future of (pf, session)
        self.made = 0  # connections made (for tests)

    def run(self) -> None:
        try:
            self._start()
        except Exception:  # noqa: BLE001 - the run dials as it would have; nothing is lost
            pass
        finally:
            self.listed.set()

    def _start(self) -> None:
        import logging
        from concurrent.futures import ThreadPoolExecutor

        from fleet.inventory import load_inventory
        from fleet.ssh.config import resolve_host
        from fleet.ssh.options import FanoutOptions
        from fleet.ssh.preflight import config_for
        from fleet.ssh.session import KeyCache, SSHLink

        # paramiko logs handshake trouble with tracebacks; the run reports each failure itself, once
        logging.getLogger("paramiko").addHandler(logging.NullHandler())
        o = dict(self.rec["options"])
        o["accept_host_keys_for"] = frozenset(o.get("accept_host_keys_for") or ())
        o["collect"] = tuple(o.get("collect") or ())
        opts = FanoutOptions(**o)
        inv = load_inventory(self.rec["inventory"][0])
        store, keys, cfg = key_store(inv, opts, accept=False), KeyCache(), config_for(inv, opts.ssh_config)
        pool = ThreadPoolExecutor(max(1, min(opts.concurrency, 64)), thread_name_prefix="fleet-early")
        for name in self.rec["hosts"]:
            if self.closed:
                break
            try:
                host = inv.host(name)
                if host.auth == "local":
                    continue
                target = resolve_host(host, cfg)
            except Exception:  # noqa: BLE001 - the run says what is wrong with it
                continue
            link = SSHLink(host, target, store, keys, opts.connect_timeout,
                           connect_timeout_given=opts.connect_timeout_given)
            with self._lock:
                self._dials[(name, repr(target))] = pool.submit(self._dial, inv, host, link, opts, cfg)
        pool.shutdown(wait=False)

    def _dial(self, inv: Any, host: Any, link: Any, opts: Any, cfg: Any) -> tuple[Any, Any, Any]:
        from fleet.ssh.preflight import run_preflight_checks

        pf = None
        if opts.preflight:
            pf = run_preflight_checks(host, timeout=opts.preflight_timeout, inventory=inv, target=link.target,
                                      ssh_config=cfg, keep=link.keep)
            link.preflighted(pf)
            if not pf.ok:
                return pf, None, None
        if self.closed:
            for s in link.keep:  # preflight's open TCP connection
                s.close()
            return pf, None, None
        from fleet.errors import SSHFailure, UnknownHostKey

        sess = link.open()
        try:
            sess.connect()
        except SSHFailure as exc:
            sess.close()
            # a retryable failure (timeout, refused, lost) was the run's first attempt; anything
            # else (a key the flags may accept, a refused login) the run tries again itself
            return pf, None, exc if exc.retryable and not isinstance(exc, UnknownHostKey) else None
        except Exception:  # noqa: BLE001 - the run dials again and says why it cannot
            sess.close()
            return pf, None, None
        with self._lock:
            self.made += 1
            if self.closed:
                sess.close()
                return pf, None, None
        return pf, sess, None

    def take(self, host: str, target: Any, abort: threading.Event) -> tuple[Any, Any, Any] | None:
        """``(preflight result, connected session, failure)`` made early for ``host`` reaching
        ``target`` (each may be None; the failure is a retryable one, the run's first attempt),
        waiting for it while it is being made; None when there is none."""
        while not self.listed.wait(0.005):
            if abort.is_set():
                return None
        with self._lock:
            fut = self._dials.pop((host, repr(target)), None)
        if fut is None:
            return None
        while not fut.done():
            if abort.wait(0.005):
                fut.add_done_callback(_close_result)
                return None
        try:
            return fut.result()
        except Exception:  # noqa: BLE001
            return None

    def close(self) -> None:
        """Close every connection nobody took (and those still being made, once made)."""
        with self._lock:
            self.closed = True
            left, self._dials = list(self._dials.values()), {}
        for fut in left:
            fut.add_done_callback(_close_result)


def _close_result(fut: Any) -> None:
    try:
        _, sess, _ = fut.result()
    except Exception:  # noqa: BLE001
        return
    if sess is not None:
        sess.close()


def take(host: str, target: Any, abort: threading.Event) -> tuple[Any, Any, Any] | None:
    """This process's early dial of ``host`` (see :meth:`Early.take`), or None."""
    return _current.take(host, target, abort) if _current is not None else None


def close() -> None:
    """Close what this process dialled early and nobody took."""
    global _current
    if _current is not None:
        _current.close()
        _current = None


__all__ = ["arm", "begin", "close", "key_store", "note", "take"]

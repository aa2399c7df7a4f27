"""The ``fleet`` console script's first step, before Invoke and the rest of fleet load:

- ``fleet --version`` answers at once;
- an SSH-plane command (fanout, retry, preflight, ...) goes whole to a running ``fleet serve``
  for this state directory (argv, working directory, environment, terminal), which runs it
  over its warm connections; its output and exit status come back here
  (:mod:`fleet.cli.served`). Ctrl-C is passed on as the run's Ctrl-C;
- everything else (no service, a busy or other-version one, any other command) goes on to the
  full program (:mod:`fleet.cli.program`), which behaves the same and is the reference.

Imports here are the standard library's, :mod:`fleet.serve.client`, :mod:`fleet.ssh.predial`
(a fanout's hosts dialled while the rest loads) and, once per settings change,
:mod:`fleet.settings` (to find the state directory).
"""
from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Tasks a running service may run for this client: the SSH plane's, where warm connections are
# the point. The rest (dispatch follows agents for minutes, mcp, serve, lab) runs here.
SERVABLE = frozenset({"fanout", "retry", "preflight", "blow-away", "worktrees", "worktrees.remove"})
# Tasks whose hosts' TCP connections and SSH version line go out while the program loads, when
# the same call ran before (fleet.ssh.predial)
PREDIAL = frozenset({"fanout"})


def main() -> None:
    """Entry point of the ``fleet`` console script."""
    argv = sys.argv[1:]
    if argv in (["--version"], ["-V"]):
        from fleet import __version__

        print(f"fleet {__version__}")
        return
    if argv in (["--list"], ["-l"]):
        _listed()
        return
    key = None
    if argv and argv[0] in SERVABLE and not os.environ.get("FLEET_NO_SERVICE"):
        key = _settings_key()
        code = _served(argv, key)
        if code is not None:
            _leave(code)
    kept: tuple[str, list[str]] | None = None  # where this call's pre-dial plan is kept, and its key
    if argv and argv[0] in PREDIAL and not os.environ.get("FLEET_NO_PREDIAL"):
        from fleet.ssh import predial

        k = ["predial", *argv, *(key or _settings_key())]
        kept = (os.path.join(_cache_dir("predial"), _digest(k)), k)
        predial.begin(_cached(*kept))
    light_invoke()
    if argv and argv[0] in SERVABLE:
        light_paramiko()
    from fleet.cli.program import main as full

    try:
        full()
    finally:
        done = sys.modules.get("fleet.ssh.predial")
        if done is not None and kept is not None:
            plan = done.finish()  # what was dialled ahead and not taken is closed
            if plan is not None:
                _keep(*kept, plan)  # this run's dials, for the next identical call
        _quick_exit()


def _leave(code: int) -> None:
    """End a served call's client with the service's exit status: its output flushed, then out
    at once. The interpreter's teardown (module and object finalization, ~2 ms of a 10 ms
    client) would do nothing else here: the thin client holds no file, thread or atexit hook."""
    for out in (sys.stdout, sys.stderr):
        try:
            out.flush()
        except BrokenPipeError:  # `fleet fanout ... | head`: the reader has gone
            pass
        except OSError:
            code = code or 1  # the output could not be written (a full disk): not a success
    os._exit(code & 0xFF)  # what the shell sees of any status, as for SystemExit


def _quick_exit() -> None:
    """The program is done: no garbage collection while the interpreter tears down (it walked
    every object of paramiko, Invoke and the run again: ~60 ms of each run's end). Objects are
    still finalized, files flushed and closed, threads joined, as at any exit."""
    import gc

    gc.disable()
    gc.freeze()


def _listed() -> None:
    """``fleet --list``: Invoke's listing of the tasks, kept in the user's cache keyed by this
    fleet's version, the task modules' sizes and times, and the width it was drawn for (the
    listing depends on nothing else), so a repeat costs no Invoke start."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        width = os.get_terminal_size(1).columns if os.isatty(1) else 80  # what Invoke's pty_size says
    except OSError:
        width = 80
    from fleet import __version__

    key = [__version__, str(width)]
    for d in (here, os.path.dirname(here)):
        for name in sorted(os.listdir(d)):
            if name.endswith(".py"):
                st = os.stat(os.path.join(d, name))
                key.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
    cache = _cache_dir()
    path = os.path.join(cache, "list-" + _digest(key) + ".txt")
    text = _cached(path, key)
    if text is not None:
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except BrokenPipeError:  # `fleet --list | head`: the reader has gone; end quietly
            quiet_stdout()
        return
    import io

    class Tee(io.StringIO):
        broken = False

        def write(self, s: str) -> int:
            if not self.broken:
                try:
                    real.write(s)
                except BrokenPipeError:
                    self.broken = True
            return super().write(s)
    real, tee = sys.stdout, Tee()
    sys.stdout = tee
    try:
        light_invoke()
        from fleet.cli.program import main as full

        full()
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    finally:
        sys.stdout = real
        if tee.broken:
            quiet_stdout()
    _keep(path, key, tee.getvalue())  # the listing printed in full and nothing else went wrong


def _cache_dir(*parts: str) -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fleet", *parts)


def _digest(key: list[str]) -> str:
    """A file name for ``key`` (zlib's CRC: hashlib costs ~3 ms of the thin client's start; the
    file holds the key too, :func:`_cached`, so two keys of one name never read each other's)."""
    import zlib

    data = "\0".join(key).encode()
    return f"{zlib.crc32(data):08x}{zlib.adler32(data):08x}"


def _cached(path: str, key: list[str]) -> str | None:
    """What :func:`_keep` kept at ``path`` for exactly ``key``, or None."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as fh:
            text = fh.read()
    except OSError:
        return None
    k = "\0".join(key)
    size, _, rest = text.partition("\n")
    if not size.isdigit() or rest[:int(size)] != k:
        return None
    return rest[int(size):]


def _keep(path: str, key: list[str], value: str) -> None:
    """Keep ``value`` for ``key`` at ``path`` (best effort: a cache)."""
    from fleet.files import write_atomic

    k = "\0".join(key)
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        write_atomic(path, f"{len(k)}\n{k}{value}", sync=False)
    except (OSError, UnicodeError):
        pass


def quiet_stdout() -> None:
    """`fleet ... | head`: the reader has gone; what is left goes nowhere, quietly."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def light_invoke() -> None:
    """Import Invoke without what fleet never uses from it: ``invoke.context`` imports
    ``unittest.mock`` (and so ``asyncio``, about 45 ms) only for its ``MockContext`` testing
    aid, and Invoke's vendored copy of PyYAML is the library fleet already loads (Invoke
    itself falls back to it when the vendored copy is absent). ``Mock`` still works: it loads
    the real one on first use. Nothing is left in ``sys.modules`` for anyone else."""
    if "invoke" in sys.modules or "unittest.mock" in sys.modules:
        return
    import types

    import yaml

    stub = types.ModuleType("unittest.mock")

    class Mock:  # noqa: D401 - invoke.context's name for unittest.mock.Mock, loaded when used
        def __new__(cls, *args: Any, **kwargs: Any) -> Any:
            from unittest import mock

            return mock.Mock(*args, **kwargs)

    stub.Mock = Mock  # type: ignore[attr-defined]
    sys.modules["unittest.mock"] = stub
    sys.modules.setdefault("invoke.vendor.yaml", yaml)
    try:
        import invoke  # noqa: F401
    finally:
        if sys.modules.get("unittest.mock") is stub:
            del sys.modules["unittest.mock"]


def _settings_key() -> list[str]:
    """Everything the settings of a call here depend on: the working directory, HOME and the XDG
    dirs, the INVOKE_FLEET_* variables, the size and time of every settings file that could be read."""
    env = os.environ
    cwd = os.getcwd()
    conf = os.path.join(env.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"), "fleet")
    key = [cwd, env.get("HOME", ""), env.get("XDG_CONFIG_HOME", ""), env.get("XDG_STATE_HOME", "")]
    key += sorted(f"{k}={v}" for k, v in env.items() if k.startswith("INVOKE_FLEET_"))
    files = [os.path.join(conf, "config.yaml"), os.path.join(conf, "invoke.yaml")]
    d = cwd
    while True:
        files.append(os.path.join(d, "invoke.yaml"))
        up = os.path.dirname(d)
        if up == d:
            break
        d = up
    for f in files:
        try:
            st = os.stat(f)
            key.append(f"{f}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            key.append(f"{f}:-")
    return key


def _journal(key: list[str]) -> str | None:
    """Where this command's journal is (it names the state directory, so the service), as the
    settings say for this directory and environment; remembered in the user's cache under
    ``key`` (:func:`_settings_key`), so a repeat does not load the settings code. The service
    checks the answer again (served.py)."""
    cache = _cache_dir("where")
    path = os.path.join(cache, _digest(key))
    got = _cached(path, key)
    if got is not None:
        return got or None
    try:
        from fleet.settings import load_settings

        journal = os.path.abspath(load_settings().path("journal"))
    except Exception:  # noqa: BLE001 - a settings error is said by the full program, the reference
        return None
    _keep(path, key, journal)
    return journal


def _served(argv: list[str], key: list[str]) -> int | None:
    """The exit status of the call a running service ran for us, or None: run it here."""
    journal = _journal(key)
    if journal is None:
        return None
    from fleet.serve import client

    s = client.connect(journal)
    if s is None:
        return None

    def size(fd: int) -> tuple[int, int] | None:
        try:
            return os.get_terminal_size(fd) if os.isatty(fd) else None
        except OSError:
            return None
    term = size(1) or size(2)
    req = {"op": "cli", "argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "prog": "fleet",
           "tty": {"stdout": os.isatty(1), "stderr": os.isatty(2),
                   "columns": term[0] if term else None, "lines": term[1] if term else None}}
    outs = {1: sys.stdout, 2: sys.stderr}
    try:
        for ev in client.answers(s, req, last=("exit", "fallback", "error")):
            kind = ev.get("event")
            if kind == "out":
                out = outs[2 if ev.get("fd") == 2 else 1]
                out.write(ev.get("data", ""))
                out.flush()
            elif kind == "exit":
                return int(ev.get("code") or 0)
            elif kind == "fallback" or (kind == "error" and ev.get("kind") == "version"):
                return None  # busy, or another version: the full program runs it (and says so)
            elif kind == "error":
                print(f"fleet: {ev.get('message')}", file=sys.stderr)
                return int(ev.get("exit_code") or 1)
        return None
    except KeyboardInterrupt:  # a second Ctrl-C: stop now (the service ends the run)
        print("fleet: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0  # `fleet fanout ... | head`: the reader has gone
    except (OSError, client.ServiceGone):
        print("fleet: fleet serve went away during the run: see 'fleet serve status'; the run's "
              "artifacts say how far it got", file=sys.stderr)
        return 1
    finally:
        s.close()


def light_paramiko() -> None:
    """Import paramiko without :mod:`importlib.metadata` (~25 ms; paramiko's only use of it is
    reading its own version: it is read from its dist-info folder's name instead). Nothing is
    left in ``sys.modules``: :mod:`importlib.metadata` loads as ever when used."""
    if "paramiko" in sys.modules or "importlib.metadata" in sys.modules:
        return
    import importlib
    import importlib.util
    import types

    try:
        spec = importlib.util.find_spec("paramiko")
        site = os.path.dirname(os.path.dirname(spec.origin or "")) if spec else ""
        names = [n for n in os.listdir(site) if n.startswith("paramiko-") and n.endswith(".dist-info")]
    except (OSError, ImportError, ValueError):
        return
    if len(names) != 1:
        return  # not one installed copy: let paramiko ask importlib.metadata
    version = names[0][len("paramiko-"):-len(".dist-info")]
    stub = types.ModuleType("importlib.metadata")
    stub.version = lambda name: version  # type: ignore[attr-defined]
    sys.modules["importlib.metadata"] = stub
    importlib.metadata = stub
    try:
        import paramiko  # noqa: F401
    finally:
        if sys.modules.get("importlib.metadata") is stub:
            del sys.modules["importlib.metadata"]
        if getattr(importlib, "metadata", None) is stub:
            del importlib.metadata

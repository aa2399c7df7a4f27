"""The installed ``fleet`` command: an Invoke ``Program`` over the package's task collection
(:mod:`fleet.cli`), usable from any directory. Settings: the user's ``~/.config/fleet/invoke.yaml``,
the nearest project ``invoke.yaml`` with a ``fleet:`` section, ``INVOKE_FLEET_*``, ``-f``.
Invoke's parse errors are said the fleet way (exit 2, with "did you mean")."""
from __future__ import annotations

import os
import sys

from invoke import Exit

from fleet.cli.tasks import ns


def _find_project(start: str) -> str | None:
    """The nearest directory from ``start`` up that holds an ``invoke.yaml`` with a ``fleet:`` section."""
    d = os.path.abspath(start)
    while True:
        p = os.path.join(d, "invoke.yaml")
        try:
            with open(p, encoding="utf-8") as f:
                if any(line.startswith("fleet:") for line in f):
                    return d
        except OSError:
            pass
        parent = os.path.dirname(d)
        if parent == d:
            return None
        d = parent


def _program():
    from invoke import Config, Program
    from invoke.exceptions import ParseError

    from fleet import __version__

    class FleetConfig(Config):
        """Invoke's config with the user's file at ``~/.config/fleet/invoke.yaml``."""

        prefix = "invoke"  # INVOKE_FLEET_* env vars and invoke.yaml project files, as with inv

        def __init__(self, *a, **kw):
            kw.setdefault("user_prefix", os.path.join(os.environ.get("XDG_CONFIG_HOME")
                                                      or os.path.expanduser("~/.config"), "fleet", ""))
            super().__init__(*a, **kw)

    class FleetProgram(Program):
        def update_config(self, merge: bool = True) -> None:
            project = _find_project(os.getcwd())
            if project is not None:
                self.config.set_project_location(project)
                self.config.load_project(merge=False)
            # YAML 1.1 reads a bare `mode: off` as False; Invoke would then cast INVOKE_FLEET_MODE
            # to a bool. Keep the word.
            for level in ("_system", "_user", "_project"):
                data = getattr(self.config, level, None) or {}
                fl = data.get("fleet") if isinstance(data, dict) else None
                if isinstance(fl, dict) and isinstance(fl.get("mode"), bool):
                    fl["mode"] = "on" if fl["mode"] else "off"
            super().update_config(merge)

        def parse_tasks(self) -> None:
            _check_flags(list(self.core.unparsed))
            try:
                super().parse_tasks()
            except ParseError as exc:
                raise Exit(_parse_error_message(exc, self), code=2) from None

        def parse_core(self, argv) -> None:
            argv = _retry_alias(list(argv or sys.argv))
            try:
                super().parse_core(argv)
            except ParseError as exc:
                raise Exit(_parse_error_message(exc, self), code=2) from None

    return FleetProgram(namespace=ns, name="fleet", binary="fleet", version=__version__,
                        config_class=FleetConfig)


def _retry_alias(argv: list[str]) -> list[str]:
    """``fleet fanout --retry-failed [flags]`` is ``fleet retry [flags]`` (Invoke would demand the
    fanout's command positional first)."""
    if "fanout" in argv and "--retry-failed" in argv:
        i = argv.index("fanout")
        rest = [a for a in argv[i + 1:] if a != "--retry-failed"]
        return argv[:i] + ["retry"] + rest
    return argv


def _task_flags(name: str) -> list[str]:
    t = ns[name]
    out = ["--help", "-h"]
    for a in t.get_arguments():
        for n in a.names:
            out.append(("--" + n.replace("_", "-")) if len(n) > 1 else "-" + n)
            if a.kind is bool and len(n) > 1:
                out.append("--no-" + n.replace("_", "-"))
    return out


def _check_flags(argv: list[str]) -> None:
    """Invoke takes an unknown ``--flag`` for a positional value; say it the fleet way instead."""
    from fleet.names import did_you_mean

    current = None
    for tok in argv:
        if tok == "--":
            return
        if not tok.startswith("-") and tok in ns.task_names:
            current = tok
            continue
        if current is not None and tok.startswith("--"):
            flag = tok.split("=", 1)[0]
            known = _task_flags(current)
            if flag not in known:
                hint = did_you_mean(flag, known) or f"see 'fleet -h {current}'"
                raise Exit(f"fleet: unknown flag {flag} for '{current}': {hint}", code=2)


def _parse_error_message(exc, program) -> str:
    """Invoke's parse errors said the fleet way, with a 'did you mean' for flags."""
    import re

    from fleet.names import did_you_mean

    msg = str(exc)
    m = re.search(r"Flag <Argument: ([\w-]+)[^>]*> needed value", msg)
    if m:
        return f"fleet: --{m.group(1).replace('_', '-')} needs a value"
    m = re.search(r"No idea what '([^']*)' is", msg)
    hint = ""
    if m and m.group(1).startswith("-"):
        flags: list[str] = []
        for t in ns.tasks.values():
            for a in t.get_arguments():
                flags += ["--" + n.replace("_", "-") for n in a.names if len(n) > 1]
        hint = did_you_mean(m.group(1), sorted(set(flags)))
        hint = f"; {hint}" if hint else "; see 'fleet -h TASK' for its flags"
    elif m:
        hint = did_you_mean(m.group(1), sorted(ns.task_names))
        hint = f"; {hint}" if hint else "; see 'fleet --list'"
    return f"fleet: {msg.rstrip('!')}{hint}"


def main() -> None:
    """Entry point of the ``fleet`` console script."""
    try:
        _program().run()
    except BrokenPipeError:  # e.g. `fleet --list | head`
        try:
            sys.stdout.close()
        except OSError:
            pass

"""The installed ``fleet`` command: an Invoke ``Program`` over the package's task collection
(:mod:`fleet.cli.tasks`), usable from any directory, and the same reading of arguments for
Invoke's own ``inv`` in a checkout (:func:`adopt_invoke`). Settings come from
:func:`fleet.settings.load_settings` for both. Unknown flags and Invoke's parse errors are said
the fleet way (one line, exit 2, with "did you mean")."""
from __future__ import annotations

import functools
from typing import Any

from invoke import Exit

from fleet.cli.tasks import ns


def _program():
    from invoke import Program

    from fleet import __version__

    class FleetProgram(Program):
        """Invoke's Program over fleet's tasks; settings come from fleet's one loader, not Invoke's."""

        def parse_tasks(self) -> None:
            self.core.unparsed[:] = prepare_argv(list(self.core.unparsed))
            parse_tasks_fleet_way(self, super().parse_tasks)

        def _make_parser(self):
            # Invoke deep-copies every task's parser context on each parse (20 ms for fleet's 40
            # tasks, on every call): build them once per process and hand the parser only the
            # tasks the command line names (a word that names no task reads the same either way).
            from invoke.parser import Parser

            words = set(self.core.unparsed)
            return Parser(initial=self.initial_context,
                          contexts=[c for c in _contexts(self) if c.name in words or words & set(c.aliases)])

        @property
        def initial_context(self):
            return quick_copies(super().initial_context)

        def parse_core(self, argv) -> None:
            from invoke.exceptions import ParseError
            try:
                super().parse_core(argv)
            except ParseError as exc:
                raise Exit(_parse_error_message(exc, self), code=2) from None

    return FleetProgram(namespace=ns, name="fleet", binary="fleet", version=__version__)


_CONTEXTS: list[Any] = []


def _contexts(program: Any) -> list[Any]:
    """The tasks' parser contexts, made once per process (the collection does not change)."""
    if not _CONTEXTS:
        _CONTEXTS.extend(quick_copies(c) for c in program.collection.to_contexts(
            ignore_unknown_help=program.config.tasks.ignore_unknown_help))
    return _CONTEXTS


def quick_copies(ctx: Any) -> Any:
    """``ctx`` (an Invoke ``ParserContext``), whose deep copy is a rebuild from copies of its
    arguments. Invoke's parser deep-copies its contexts on every parse, with ``copy.deepcopy``
    walking every argument's help text and the flag tables: ~1 ms of each run, every call of a
    long-lived service. An argument holds no mutable value but its list (``iterable`` flags:
    copied) and the tables are made from the arguments, so the rebuild is the same copy."""
    from invoke.parser import ParserContext

    global _Quick
    if _Quick is None:
        class _QuickContext(ParserContext):
            def __deepcopy__(self, memo: dict[int, Any]) -> Any:
                new = _QuickContext.__new__(_QuickContext)
                ParserContext.__init__(new, name=self.name, aliases=tuple(self.aliases),
                                       args=[_arg_copy(a) for a in self.args.values()])
                memo[id(self)] = new
                return new
        _Quick = _QuickContext
    if type(ctx) is ParserContext:
        ctx.__class__ = _Quick
    return ctx


_Quick: Any = None


def _arg_copy(arg: Any) -> Any:
    import copy

    new = copy.copy(arg)
    if isinstance(arg._value, list):
        new._value = list(arg._value)
    if arg.raw_value is arg._value:
        new.raw_value = new._value
    elif isinstance(arg.raw_value, list):
        new.raw_value = list(arg.raw_value)
    return new


def parse_tasks_fleet_way(program, parse) -> None:
    """Run Invoke's task parsing, its parse errors said the fleet way (one line, exit 2)."""
    from invoke.exceptions import ParseError
    try:
        parse()
    except ParseError as exc:
        raise Exit(_parse_error_message(exc, program), code=2) from None


def prepare_argv(argv: list[str]) -> list[str]:
    """The task arguments as fleet reads them, before Invoke parses them: unknown flags are one
    line with a 'did you mean' (Invoke would take them for positional values), and fanout's
    command is everything after its flags, taken whole as ``ssh host cmd args...`` takes it
    (``fanout --hosts mac git status`` runs ``git status``, never a second task ``status``)."""
    argv = _whole_command(argv)
    argv = _optional_word(argv, "serve", "action")
    _check_flags(argv)
    return argv


def _optional_word(argv: list[str], task: str, arg: str) -> list[str]:
    """``serve status``: the word after a task whose positional is optional is that positional,
    never another task of the same name (``status``), so it goes in as ``--action status``."""
    if task not in argv:
        return argv
    j = _after_flags(argv, task)
    if j < len(argv) and (argv[j] not in ns.task_names or argv[j] in ("status", "stop")):
        return argv[:j] + [f"--{arg}", argv[j]] + argv[j + 1:]
    return argv


def _after_flags(argv: list[str], task: str) -> int:
    """The index of the first word after ``task``'s own flags and their values (a ``--`` or a
    lone ``-`` is a word), or ``len(argv)``."""
    takes_value = _value_flags(task)
    j = argv.index(task) + 1
    while j < len(argv) and argv[j].startswith("-") and argv[j] not in ("-", "--"):
        j += 2 if argv[j] in takes_value and "=" not in argv[j] else 1
    return j


@functools.lru_cache(maxsize=None)
def _value_flags(name: str) -> frozenset[str]:
    out: set[str] = set()
    for a in ns[name].get_arguments():
        if a.kind is not bool:
            out |= {("--" + n.replace("_", "-")) if len(n) > 1 else "-" + n for n in a.names}
    return frozenset(out)


def _whole_command(argv: list[str]) -> list[str]:
    if "fanout" not in argv:
        return argv
    j = _after_flags(argv, "fanout")
    if j < len(argv) and argv[j] == "--":
        rest = argv[j + 1:]
        return argv[:j] + (["--command", " ".join(rest)] if rest else [])
    rest = argv[j:]
    # as a flag value: a command that happens to be a task's name ('status') stays the command
    return argv[:j] + (["--command", " ".join(rest)] if rest else [])


def adopt_invoke() -> None:
    """Make Invoke's own ``inv`` read fleet's tasks as ``fleet`` does (flags checked, fanout's
    command whole, parse errors one line with exit 2, hints naming ``inv``).

    Called by the checkout's ``tasks.py`` while Invoke loads it: Invoke's Program is on the
    stack then, between parsing its own flags and parsing the tasks'. Outside that (an import
    from elsewhere) it does nothing."""
    import sys as _sys

    from invoke import Program

    from fleet.cli.common import PROG

    f: Any = _sys._getframe(1)
    while f is not None:
        prog = f.f_locals.get("self")
        if isinstance(prog, Program) and type(prog).__name__ != "FleetProgram":
            break
        f = f.f_back
    else:
        return
    PROG["name"] = "inv"
    parse = prog.parse_tasks

    def parse_tasks() -> None:
        prog.core.unparsed[:] = prepare_argv(list(prog.core.unparsed))
        parse_tasks_fleet_way(prog, parse)
    prog.parse_tasks = parse_tasks  # type: ignore[method-assign]


@functools.lru_cache(maxsize=None)
def _task_flags(name: str) -> tuple[str, ...]:
    t = ns[name]
    out = ["--help", "-h"]
    for a in t.get_arguments():
        for n in a.names:
            out.append(("--" + n.replace("_", "-")) if len(n) > 1 else "-" + n)
            if a.kind is bool and len(n) > 1:
                out.append("--no-" + n.replace("_", "-"))
    return tuple(out)


def _check_flags(argv: list[str]) -> None:
    """Invoke takes an unknown ``--flag`` for a positional value; say it the fleet way instead."""
    from fleet.cli.common import prog
    from fleet.names import did_you_mean

    current = None
    skip = False
    for tok in argv:
        if skip:
            skip = False
            continue
        if tok == "--":
            return
        if not tok.startswith("-") and tok in ns.task_names:
            current = tok
            continue
        if current is not None and tok.startswith("--"):
            flag = tok.split("=", 1)[0]
            known = _task_flags(current)
            if flag not in known:
                hint = did_you_mean(flag, known) or f"see '{prog()} -h {current}'"
                raise Exit(f"{prog()}: unknown flag {flag} for '{current}': {hint}", code=2)
            skip = "=" not in tok and flag in _value_flags(current)


def _parse_error_message(exc, program) -> str:
    """Invoke's parse errors said the fleet way, with a 'did you mean' for flags."""
    import re

    from fleet.names import did_you_mean

    msg = str(exc)
    m = re.search(r"Flag <Argument: ([\w-]+)[^>]*> needed value", msg)
    if m:
        from fleet.cli.common import prog
        return f"{prog()}: --{m.group(1).replace('_', '-')} needs a value"
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
    from fleet.cli.common import prog
    return f"{prog()}: {msg.rstrip('!')}{hint}"


def run_program(argv: list[str]) -> None:
    """Run one ``fleet`` command line (the arguments after the program name) here; ends with
    ``SystemExit`` as the console script does."""
    _program().run(["fleet", *argv])


def main() -> None:
    """The full ``fleet`` program (:mod:`fleet.cli.entry` comes first and may hand the call to
    a running service)."""
    try:
        _program().run()
    except BrokenPipeError:  # e.g. `fleet --list | head`: the reader has gone; end quietly
        from fleet.cli.entry import quiet_stdout

        quiet_stdout()


if __name__ == "__main__":
    main()

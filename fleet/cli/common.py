"""What every task of the ``fleet``/``inv`` face shares: the task decorator (one error line,
one exit status), the application context for a task, host selection flags, JSON output.

A task parses its flags, builds the one :class:`~fleet.app.Fleet` context (:func:`app`),
calls it, and renders the result; it never reads settings or opens a trail itself.
"""
from __future__ import annotations

import functools
import os
import sys
from typing import TYPE_CHECKING, Any, Callable

from invoke import Exit, task

from fleet.errors import EXIT_INTERRUPTED, FleetError

if TYPE_CHECKING:  # pragma: no cover
    from fleet.app import Fleet

HOSTS_HELP = "Hosts: name, alias, @group, tag:NAME, all, comma list, !x to exclude."

# The name the person typed to run fleet ('fleet' or 'inv'): hints name the same command.
# "served": the call runs inside `fleet serve` for a thin client (fleet.cli.served).
PROG: dict[str, Any] = {"name": "fleet", "served": False}


def prog() -> str:
    """The command that runs these tasks here: ``fleet`` or ``inv``."""
    return str(PROG["name"])


def fleet_task(*args: Any, **kwargs: Any) -> Callable[..., Any]:
    """``@task`` with fleet's error handling: one clear message and a distinct exit status."""
    kwargs.setdefault("auto_shortflags", False)

    def deco(fn: Callable[..., Any]) -> Any:
        @functools.wraps(fn)
        def wrapper(c: Any, *a: Any, **kw: Any) -> Any:
            try:
                return fn(c, *a, **kw)
            except FleetError as exc:
                print(f"{prog()}: {exc}", file=sys.stderr)
                raise Exit(code=exc.exit_code) from None
            except KeyboardInterrupt:
                # A Ctrl-C that gets here is a second one (the first ends the run with its
                # summary): stop now, without waiting for worker threads.
                print(f"{prog()}: interrupted", file=sys.stderr)
                if PROG["served"]:
                    raise Exit(code=EXIT_INTERRUPTED) from None  # the service goes on; its client ends
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(EXIT_INTERRUPTED)
            except Exit:
                raise
            except BrokenPipeError:
                # `fleet fanout ... | head`: the reader has gone; end quietly, as other CLIs do
                try:
                    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the interpreter closes it at exit
                except OSError:
                    pass
                raise Exit(code=0) from None
            except Exception as exc:  # noqa: BLE001 - a bug must still read as one line
                said = disk_error(exc) if isinstance(exc, OSError) else None
                if said is not None:
                    print(f"{prog()}: {said}", file=sys.stderr)
                    raise Exit(code=2) from None
                if os.environ.get("FLEET_DEBUG"):
                    raise
                print(f"{prog()}: unexpected error {type(exc).__name__}: {exc} (a bug: rerun with FLEET_DEBUG=1 "
                      f"for the traceback and report it)", file=sys.stderr)
                raise Exit(code=1) from None
        return task(*args, **kwargs)(wrapper)
    return deco


def disk_error(exc: OSError) -> str | None:
    """A full disk or an unwritable state path, said as one line with what to do (None: not one)."""
    import errno

    where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device{where}: free some space, then run it again"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR):
        return f"{exc.strerror or exc}{where}: fix that path (or the setting that names it), then run it again"
    return None




def app(c: Any, inventory: str | None = None) -> Fleet:
    """The application context for one task run: the one settings loader (with Invoke's
    ``-f FILE`` if given) and the inventory (``--inventory``, ``$FLEET_INVENTORY``, the setting)."""
    from fleet.app import Fleet

    runtime = getattr(getattr(c, "config", None), "_runtime_path", None)
    return Fleet(inventory or None, face="cli", runtime_file=runtime)


def selector(hosts: str | None, all_: bool, default: str | None = "all") -> str:
    """The selector from --hosts/--all (``default`` when neither; None: one is required)."""
    from fleet.errors import BadInput

    if hosts and all_:
        raise BadInput("give either --hosts SELECTOR or --all, not both")
    if all_:
        return "all"
    if hosts:
        return hosts
    if default is None:
        raise BadInput("choose hosts with --hosts SELECTOR (e.g. --hosts epyc6 or --hosts '@gpu') or --all")
    return default


def emit(doc: Any) -> None:
    """One JSON document on stdout."""
    from fleet.cli.render import to_json

    print(to_json(doc))


def rows_out(json_: bool, key: str, rows: Any, text: str, errors: list[str], empty_note: str = "") -> None:
    """A list result: one JSON document, or the table and the errors on stderr; exit 1 on errors."""
    if json_:
        emit({key: [r.to_dict() for r in rows], "errors": errors})
    else:
        print(text)
        if not rows and not errors and empty_note:
            print(f"note: {empty_note}", file=sys.stderr)
        for e in errors:
            print(f"error: {e}", file=sys.stderr)
    if errors:
        raise Exit(code=1)


def say_audit(trail: Any) -> None:
    """One line on stderr when audit events did not all reach Slack by the end of the command."""
    done = trail.close()
    if trail.status:
        print(f"audit: {trail.status}", file=sys.stderr)
    elif not done or trail.last_error:
        why = f" ({trail.last_error})" if trail.last_error else " (Slack is slow)"
        print(f"audit: some events are not yet delivered to Slack{why}; they stay pending in the "
              f"journal: {prog()} audit.replay", file=sys.stderr)

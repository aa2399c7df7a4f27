"""Operations over SSH under modes and gates: fanout (plain, canary, rolling batches), blow-away."""
from __future__ import annotations

import os
import posixpath
import shlex
from typing import Any

from fleet.errors import BadInput, Refused
from fleet.inventory import Host
from fleet.results import FanoutOutcome, FanoutRun
from fleet.safety.gate import Plan, guarded, parse_batch, parse_max_fail
from fleet.ssh.runner import CanaryGate, FanoutOptions, FanoutRunner, OutputHook, ResultHook


def _run_plan(plan: Plan, command: Any, label: str, options: FanoutOptions | None,
              on_output: OutputHook | None, on_result: ResultHook | None, log_stream: Any,
              batch: str | None, max_fail: str | float | None, pool: Any = None) -> FanoutRun:
    runner = FanoutRunner(plan.inventory, label, options, on_output, on_result, log_stream, mode=plan.mode,
                          pool=pool)
    runner.run.notes.extend(plan.notes)
    try:
        if plan.local:
            runner.add_local("local")
            return runner.run
        hosts = list(plan.hosts)
        if plan.canary is not None and batch is None:
            # canary first, everyone else connecting meanwhile (see CanaryGate)
            c = plan.canary
            rest = [h for h in hosts if h.name != c.name]
            runner.gate = CanaryGate([c.name] + [h.name for h in rest], runner.abort)
            runner.run_hosts([c] + rest, command)
            runner.run.notes.extend(runner.gate.notes)
            if isinstance(runner.gate.verdict, str) and not runner.run.interrupted:
                untouched = sum(1 for r in runner.run.results if r.error_kind == "canary_failed")
                runner.run.notes.append(f"{runner.gate.verdict.removeprefix('not run: ')}; "
                                        f"{untouched} other host(s) were not touched")
            return runner.run
        if plan.canary is not None:
            c = plan.canary
            first = runner.run_hosts([c], command)[0]
            rest = [h for h in hosts if h.name != c.name]
            if not first.ok:
                if not runner.run.interrupted:
                    runner.skip(rest, FanoutOutcome.ABORTED,
                                f"not run: canary {c.name} ended {first.outcome.value}"
                                f"{': ' + first.error if first.error else ''}", "canary_failed")
                    runner.run.notes.append(f"canary {c.name} ended {first.outcome.value}; "
                                            f"{len(rest)} other host(s) were not touched")
                else:
                    runner.skip(rest, FanoutOutcome.ABORTED, "not started: the run was interrupted (Ctrl-C)",
                                "aborted")
                return runner.run
            hosts = rest
        size = parse_batch(batch, len(hosts))
        limit = parse_max_fail(max_fail)
        if size is None:
            runner.run_hosts(hosts, command)
            return runner.run
        done: list = []
        for i in range(0, len(hosts), size):
            chunk = hosts[i:i + size]
            done += runner.run_hosts(chunk, command)
            if runner.run.interrupted:
                runner.skip(hosts[i + size:], FanoutOutcome.ABORTED, "not started: the run was interrupted", "aborted")
                break
            failed = sum(1 for r in runner.run.results if not r.ok)
            total = len(runner.run.results)
            pct = 100.0 * failed / total if total else 0.0
            if limit is not None and pct > limit and i + size < len(hosts):
                left = hosts[i + size:]
                runner.skip(left, FanoutOutcome.ABORTED,
                            f"not run: {failed} of {total} hosts failed ({pct:.0f}%) > --max-fail {limit:g}%",
                            "max_fail")
                runner.run.notes.append(f"stopped after batch {i // size + 1}: {failed}/{total} failed "
                                        f"({pct:.0f}% > {limit:g}%); {len(left)} host(s) not touched")
                break
        return runner.run
    finally:
        runner.finish()


def _validate_fanout_flags(kw: dict[str, Any]) -> None:
    parse_batch(kw.get("batch"), 1)
    parse_max_fail(kw.get("max_fail"))


@guarded("fanout", validate=_validate_fanout_flags)
def fanout(plan: Plan, *, options: FanoutOptions | None = None, on_output: OutputHook | None = None,
           on_result: ResultHook | None = None, log_stream: Any = None, batch: str | None = None,
           max_fail: str | float | None = None, pool: Any = None) -> FanoutRun:
    """Run ``args['command']`` on the selected hosts under the mode (canary first, batches).
    ``pool``: a :class:`~fleet.connpool.ConnectionPool` of warm connections to use and refill."""
    cmd = plan.args["command"]
    return _run_plan(plan, cmd, cmd, options, on_output, on_result, log_stream, batch, max_fail, pool)


# Top-level system directories: never a repos root, and nothing under them is one either.
SYSTEM_DIRS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/sbin",
               "/sys", "/usr", "/var", "/run", "/opt", "/srv", "/home", "/root", "/tmp", "/mnt", "/media",
               "/snap", "/Users", "/System", "/Library", "/Applications", "/private", "/Volumes", "/cores")
# Inside these, nothing is ever a repos root (system trees, not user data).
SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/sbin", "/sys",
                "/usr", "/System", "/Library")

# The host-side check, POSIX sh (bash and dash alike). Paths arrive only as positional
# parameters ($1 root, $2 path) and are printed only through printf '%s': no path is ever
# shell text. Both are resolved on the host (symlinks, '..', '//' collapsed) and the removal
# happens only if the root is sane and the target strictly inside it.
_BLOW_AWAY_SH = (
    'x() { case "$1" in "~") printf "%s" "$HOME";; "~/"*) printf "%s/%s" "$HOME" "${1#??}";; '
    '*) printf "%s" "$1";; esac; }; '
    'n() { r=$1; while :; do case "$r" in //*) r=${r#/};; *) break;; esac; done; printf "%s" "$r"; }; '
    'no() { printf "refused: %s\n" "$*" >&2; exit "$code"; }; '
    'code=91; rawroot=$(x "$1"); rawpath=$(x "$2"); '
    'root=$(cd -- "$rawroot" 2>/dev/null && pwd -P) || no "repos root $1 does not exist on this host"; '
    'root=$(n "$root"); '
    'home=$(cd -- "$HOME" 2>/dev/null && pwd -P) && home=$(n "$home"); '
    'code=96; [ "$root" = / ] && no "repos root $1 resolves to /"; '
    '[ -n "$home" ] && [ "$root" = "$home" ] && no "repos root $1 resolves to the home directory $home"; '
    '[ -n "$home" ] && case "$home/" in "$root"/*) no "repos root $1 resolves to $root, which holds the home directory";; esac; '
    'case "$root" in ' + "|".join(SYSTEM_DIRS) + ') no "repos root $1 resolves to the system directory $root";; '
    + "|".join(t + "/*" for t in SYSTEM_TREES) + ') no "repos root $1 resolves to $root, inside a system directory";; esac; '
    'code=92; [ -L "$rawpath" ] && no "$2 is a symlink"; '
    'if [ ! -e "$rawpath" ]; then printf "nothing to remove: %s does not exist\n" "$2"; exit 0; fi; '
    'code=93; target=$(cd -- "$rawpath" 2>/dev/null && pwd -P) || no "$2 is not a directory"; '
    'target=$(n "$target"); '
    'code=94; case "$target" in "$root"/?*) ;; *) no "$2 resolves to $target, not strictly inside $root";; esac; '
    'code=95; [ "$target" = "$home" ] && no "will not remove the home directory $target"; '
    'rm -rf -- "$target" && printf "removed %s\n" "$target"'
)


def blow_away_command(path: str, root: str) -> str:
    """The command that removes ``path`` on a host only if, resolved there, the repos root is
    sane (not ``/``, ``$HOME``, an ancestor of it or a system directory) and ``path`` lies
    strictly inside it. Paths are passed as positional parameters, never as shell text."""
    return f"sh -c {shlex.quote(_BLOW_AWAY_SH)} sh {shlex.quote(root)} {shlex.quote(path)}"


def _insane_root(root: str) -> str | None:
    """Why ``root`` (normalized, lexically) can never be a repos root, or None."""
    if root in ("/", "~", "") or root.startswith("~/..") or root == "~/.":
        return "it is / or the home directory"
    if root in SYSTEM_DIRS:
        return "it is a top-level system directory"
    if any(root.startswith(t + "/") for t in SYSTEM_TREES):
        return "it is inside a system directory"
    home = posixpath.normpath(os.path.expanduser("~")) if root.startswith("/") else None
    if home and (home == root or home.startswith(root.rstrip("/") + "/")):
        return "it is this machine's home directory or holds it"
    return None


def blow_away_paths(hosts: list[Host], repo: str) -> dict[str, tuple[str, str]]:
    """(path, root) per host, checked lexically before anything runs (and again on the host)."""
    out: dict[str, tuple[str, str]] = {}
    missing = []
    for h in hosts:
        path = h.repo_path(repo)
        if path is None or h.repos_root is None:
            missing.append(h.name)
            continue
        root = h.repos_root.rstrip("/") or "/"
        norm = posixpath.normpath(path)
        nroot = posixpath.normpath(root)
        if nroot.startswith("//"):
            nroot = "/" + nroot.lstrip("/")
        if norm.startswith("//"):
            norm = "/" + norm.lstrip("/")
        why = _insane_root(nroot)
        if why:
            raise Refused(f"blow-away refused on {h.name}: repos root {root} is not a place to remove "
                          f"repos from ({why}); nothing was removed on any host. Point 'repos: root' at a "
                          f"directory of its own, e.g. ~/repos or /srv/repos")
        if norm in ("/", "~", nroot) or not norm.startswith(nroot.rstrip("/") + "/"):
            raise Refused(f"blow-away refused on {h.name}: {path} is not strictly inside the repos root "
                          f"{root} (after resolving '..'); nothing was removed on any host")
        out[h.name] = (path, root)
    if missing:
        raise BadInput(f"no path for repo '{repo}' on {', '.join(missing)}: add repos: {{root: /path}} "
                       f"(or repos: {{paths: {{{repo}: /path}}}}) for them in the inventory")
    return out


def _check_blow_away(plan: Plan) -> None:
    paths = blow_away_paths(plan.hosts, plan.args["repo"])
    plan.canary = None
    plan.notes.extend(f"{h}: removes {p} (root {r})" for h, (p, r) in paths.items())


@guarded("blow-away", local_ok=False, check=_check_blow_away)
def blow_away(plan: Plan, *, options: FanoutOptions | None = None, on_output: OutputHook | None = None,
              on_result: ResultHook | None = None, log_stream: Any = None) -> FanoutRun:
    """Remove ``args['repo']``'s working copy on the selected hosts (gated, strictly inside root)."""
    repo = plan.args["repo"]
    paths = blow_away_paths(plan.hosts, repo)
    plan.canary = None
    return _run_plan(plan, lambda h: blow_away_command(*paths[h.name]), f"blow-away {repo}", options,
                     on_output, on_result, log_stream, None, None)


def check_repo_name(repo: str) -> str:
    """Repo names are plain names (they become path components)."""
    from fleet.names import is_plain_name
    if not repo or not is_plain_name(repo):
        raise BadInput(f"--repo '{repo}' is not a plain repo name: write e.g. --repo affordabot")
    return repo


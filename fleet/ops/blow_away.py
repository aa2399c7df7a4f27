"""The blow-away operation: remove a repo's working copy on hosts, gated, and only strictly
inside the host's repos root (checked here, lexically, and again on the host)."""
from __future__ import annotations

import os
import posixpath
from typing import Any

from fleet.errors import BadInput, Refused
from fleet.inventory import Host, Inventory
from fleet.ops.fanout import check_artifacts, run_plan
from fleet.results import FanoutRun
from fleet.safety import gate
from fleet.safety.gate import BLOW_AWAY, Plan
from fleet.settings import Settings
from fleet.ssh.runner import FanoutOptions, OutputHook, ResultHook
from fleet.ssh.shell import EXPAND_HOME, script

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
_BLOW_AWAY_SH = EXPAND_HOME + (
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
    return script(_BLOW_AWAY_SH, root, path)


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
    plan.notes.extend(f"{h}: removes {p} (root {r})" for h, (p, r) in paths.items())


def blow_away(inv: Inventory, selector: str, *, args: dict[str, Any], mode: str | None = None,
              confirm: str | None = None, settings: Settings | None = None, store: Any = None,
              audit: Any = None, trail: Any = None, options: FanoutOptions | None = None,
              on_output: OutputHook | None = None, on_result: ResultHook | None = None,
              log_stream: Any = None, canary: str | None = None, no_canary: bool = False) -> FanoutRun:
    """Remove ``args['repo']``'s working copy on the selected hosts (gated, strictly inside root;
    no canary: each host's removal is checked on that host)."""
    repo = check_repo_name(str(args.get("repo") or ""))
    check_artifacts(options)
    with gate.enter(BLOW_AWAY, inv, selector, args=args, mode=mode, confirm=confirm, settings=settings,
                    store=store, audit=audit, trail=trail, call_options={"options": options},
                    check=_check_blow_away) as g:
        paths = blow_away_paths(g.plan.hosts, repo)
        run = run_plan(g.plan, lambda h: blow_away_command(*paths[h.name]), f"blow-away {repo}", options,
                       on_output, on_result, log_stream, None, None, redactor=getattr(g.trail, "redactor", None))
        g.ran(run.results, run.run_id)
        return run


def check_repo_name(repo: str) -> str:
    """Repo names are plain names (they become path components)."""
    from fleet.names import is_plain_name
    if not repo or not is_plain_name(repo):
        raise BadInput(f"--repo '{repo}' is not a plain repo name: write e.g. --repo affordabot")
    return repo


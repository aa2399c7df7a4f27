"""One git worktree per dispatch, made and removed on the host over SSH with fanout's engine
(ssh_config, host keys, timeouts, jump hosts), so agents on one repo never trample each other.

Layout on the host: ``<repos root>/.worktrees/<repo>/<name>`` on a new branch ``fleet/<name>``
(``<name>``: the Beads issue id, else the dispatch id), from ``--base`` (default the repo's
HEAD). The repo itself is where the inventory says (``Host.repo_path``: ``repos.paths`` first).
Every path reaches the host as a positional parameter, never as shell text; removal happens
only strictly inside ``<repos root>/.worktrees`` (resolved on the host).

Removal is checked on each host before any token is asked for (read only, the same script in
``probe`` mode): the plan's notes say what will be removed, kept or discarded, and what would be
refused (uncommitted changes, commits on no branch, with ``--delete-branch`` commits found on no
other branch; a symlink or a path outside ``.worktrees``) refuses the plan there, so no token is
issued or spent for it. ``--force`` lifts those refusals, and the plan says what it discards. Only
``fleet/<name>`` is ever deleted, never the branch someone checked out in the worktree.
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from fleet.errors import BadInput, FleetError, Refused
from fleet.inventory import Host, Inventory
from fleet.names import is_plain_name
from fleet.results import FanoutOutcome, Worktree, WorktreeRemoval
from fleet.safety import gate
from fleet.safety.gate import WORKTREES_REMOVE, Plan
from fleet.safety.redact import Redactor
from fleet.ssh.runner import FanoutOptions, FanoutRunner
from fleet.ssh.shell import EXPAND_HOME, script

WT_DIR = ".worktrees"

# Shared helpers for the host-side scripts: ~ expansion of a path given as a parameter.
_SH_X = EXPAND_HOME

# $1 repo, $2 worktree, $3 branch, $4 base ref. Prints the worktree's resolved path and base commit.
_CREATE = _SH_X + (
    'repo=$(x "$1"); wt=$(x "$2"); '
    'cd -- "$repo" 2>/dev/null || { printf "repo directory %s does not exist\\n" "$1" >&2; exit 81; }; '
    'git rev-parse --is-inside-work-tree >/dev/null 2>&1 || { printf "%s is not a git repository\\n" "$1" >&2; exit 82; }; '
    'base=$(git rev-parse --verify -q "$4^{commit}") || { printf "base %s is not a commit in %s\\n" "$4" "$1" >&2; exit 86; }; '
    'if git show-ref --verify --quiet "refs/heads/$3"; then printf "branch %s already exists in %s\\n" "$3" "$1" >&2; exit 83; fi; '
    '[ -e "$wt" ] && { printf "%s already exists\\n" "$2" >&2; exit 84; }; '
    'mkdir -p -- "$(dirname -- "$wt")" && git worktree add -q -b "$3" -- "$wt" "$base" >&2 || exit 85; '
    'cd -- "$wt" && pwd -P && printf "%s\\n" "$base"'
)

# $1 repos root, then pairs (repo, its directory) for the repos the inventory places elsewhere
# (repos.paths); any other repo is <root>/<repo>. One line per fleet worktree:
# repo TAB name TAB path TAB branch TAB dirty TAB ahead TAB mtime
_LIST = _SH_X + (
    'root=$(x "$1"); shift; [ -d "$root/' + WT_DIR + '" ] || exit 0; '
    'dir() { want=$1; shift; while [ $# -ge 2 ]; do [ "$1" = "$want" ] && { x "$2"; return; }; shift 2; done; '
    'printf "%s/%s" "$root" "$want"; }; '
    'for wt in "$root"/' + WT_DIR + '/*/*; do [ -d "$wt" ] || continue; '
    'repo=$(basename -- "$(dirname -- "$wt")"); name=$(basename -- "$wt"); '
    'br=$(git -C "$wt" rev-parse --abbrev-ref HEAD 2>/dev/null || echo "?"); '
    'if [ -n "$(git -C "$wt" status --porcelain 2>/dev/null | head -n 1)" ]; then d=dirty; else d=clean; fi; '
    'main=$(git -C "$(dir "$repo" "$@")" rev-parse HEAD 2>/dev/null); '
    'if [ -n "$main" ]; then ahead=$(git -C "$wt" rev-list --count "$main..HEAD" 2>/dev/null || echo "?"); '
    'else ahead="?"; fi; '
    'm=$(stat -c %Y "$wt" 2>/dev/null || stat -f %m "$wt" 2>/dev/null || echo 0); '
    'printf "%s\\t%s\\t%s\\t%s\\t%s\\t%s\\t%s\\n" "$repo" "$name" "$wt" "$br" "$d" "$ahead" "$m"; done'
)

# $1 repos root, $2 the repo's directory (the inventory's), $3 repo, $4 name, $5 force (0/1),
# $6 delete branch (0/1), $7 "probe" (say what is there, change nothing) or "remove".
# The same facts decide the plan (probe, before any token) and the removal (checked again there).
# Only fleet's own branch fleet/<name> is ever deleted, whatever the worktree has checked out.
_REMOVE = _SH_X + (
    'no() { printf "refused: %s\\n" "$*" >&2; exit "$code"; }; '
    'code=91; root=$(cd -- "$(x "$1")" 2>/dev/null && pwd -P) || no "repos root $1 does not exist"; '
    'repo=$(x "$2"); wt="$root/' + WT_DIR + '/$3/$4"; br="fleet/$4"; '
    'code=92; [ -L "$wt" ] && no "$wt is a symlink"; '
    'if [ ! -d "$wt" ]; then [ "$7" = probe ] && { echo "state=absent"; echo "path=$wt"; exit 0; }; '
    'printf "nothing to remove: %s does not exist\\n" "$wt"; exit 0; fi; '
    'code=94; real=$(cd -- "$wt" && pwd -P); case "$real" in "$root/' + WT_DIR + '"/?*/?*) ;; '
    '*) no "$wt resolves to $real, outside $root/' + WT_DIR + '";; esac; '
    'code=82; git -C "$repo" rev-parse --git-dir >/dev/null 2>&1 || no "$2 is not a git repository"; '
    'code=95; git -C "$repo" worktree list --porcelain | grep -qxF "worktree $real" '
    '|| no "$real is not a worktree of $2"; '
    'head=$(git -C "$real" symbolic-ref -q --short HEAD 2>/dev/null) || head=""; '
    'if [ -n "$(git -C "$real" status --porcelain 2>/dev/null | head -n 1)" ]; then dirty=1; else dirty=0; fi; '
    'lost=0; [ -z "$head" ] && lost=$(git -C "$real" rev-list --count HEAD --not --branches --tags --remotes '
    '2>/dev/null || echo "?"); '
    'if git -C "$repo" show-ref --verify --quiet "refs/heads/$br"; then '
    'only=$(git -C "$repo" rev-list --count "refs/heads/$br" --not --exclude="refs/heads/$br" --single-worktree '
    '--all 2>/dev/null) || only="?"; else only=-; fi; '
    'if [ "$7" = probe ]; then printf "state=present\\npath=%s\\nhead=%s\\ndirty=%s\\nlost=%s\\nonly=%s\\n" '
    '"$real" "$head" "$dirty" "$lost" "$only"; exit 0; fi; '
    'code=97; if [ "$5" != 1 ]; then '
    '[ "$dirty" = 0 ] || no "$real has uncommitted changes: commit them there, or add --force to discard them"; '
    '[ "$lost" = 0 ] || no "$real has $lost commit(s) on no branch (detached HEAD): put a branch on them, '
    'or add --force to drop them"; '
    'if [ "$6" = 1 ] && [ "$only" != - ] && [ "$only" != 0 ]; then no "branch $br has $only commit(s) on no '
    'other branch: merge or push them, drop --delete-branch, or add --force to delete them"; fi; fi; '
    'code=96; if [ "$5" = 1 ]; then git -C "$repo" worktree remove --force -- "$real" >&2 || no "git could not '
    'remove $real"; else git -C "$repo" worktree remove -- "$real" >&2 || no "git could not remove $real"; fi; '
    'if [ "$6" != 1 ]; then b="branch $br kept"; elif [ "$only" = - ]; then b="no branch $br to delete"; '
    'elif git -C "$repo" branch -D -- "$br" >/dev/null 2>&1; then b="branch $br deleted"; '
    'else b="branch $br could not be deleted, kept"; fi; '
    '[ -n "$head" ] && [ "$head" != "$br" ] && b="$b; $head (checked out there) kept"; '
    'printf "removed %s (%s)\\n" "$real" "$b"'
)


def worktree_name(issue: str | None, dispatch_id: str) -> str:
    """The worktree's (and branch's) name: the Beads issue id, else the dispatch id."""
    name = issue or dispatch_id
    if not is_plain_name(name):
        raise BadInput(f"cannot name a worktree '{name}': use an issue id like bd-a1b2")
    return name


def worktree_path(host: Host, repo: str, name: str) -> str:
    """``<repos root>/.worktrees/<repo>/<name>`` (as the inventory writes the root)."""
    if host.repos_root is None:
        raise BadInput(f"{host.name} has no repos root: add repos: {{root: /path}} to use --worktree")
    return f"{host.repos_root.rstrip('/')}/{WT_DIR}/{repo}/{name}"


def worktree_parts(path: str) -> tuple[str, str]:
    """(repo, name) of a worktree path made by :func:`worktree_path` (its last two parts)."""
    parts = path.rstrip("/").split("/")
    return (parts[-2] if len(parts) > 1 else ""), parts[-1]


def _one(inv: Inventory, host: Host, command: str, label: str, options: FanoutOptions | None) -> Any:
    opts = replace(options or FanoutOptions(), artifacts_dir=None, attempts=1, collect=(),
                   command_timeout=min((options.command_timeout if options else None) or 120.0, 120.0))
    # what comes back is parsed (paths, facts) and worded here, never a secret: read it as it came
    runner = FanoutRunner(inv, label, opts, redactor=Redactor.none())
    try:
        return runner.run_host(host, command)
    finally:
        runner.finish()


def create_worktree(inv: Inventory, host: Host, repo: str, repo_dir: str, name: str, base: str | None = None,
                    options: FanoutOptions | None = None) -> dict[str, str]:
    """Make ``fleet/<name>`` at ``<root>/.worktrees/<repo>/<name>`` from ``base`` (default HEAD).
    Returns path (resolved on the host), branch and base commit; raises with the host's reason."""
    path = worktree_path(host, repo, name)
    branch = f"fleet/{name}"
    r = _one(inv, host, script(_CREATE, repo_dir, path, branch, base or "HEAD"), f"worktree add {name}", options)
    if r.outcome != FanoutOutcome.SUCCESS:
        why = (r.stderr.strip().splitlines() or [r.error])[-1]
        raise FleetError(f"{host.name}: could not make the worktree {path}: {why}; nothing was dispatched")
    lines = r.stdout.strip().splitlines()
    return {"path": lines[0] if lines else path, "branch": branch, "base": lines[1] if len(lines) > 1 else ""}


def list_worktrees(inv: Inventory, hosts: list[Host], options: FanoutOptions | None = None,
                   records: Any = None) -> tuple[list[Worktree], list[str]]:
    """The worktrees fleet made on ``hosts`` (and the sessions using them); and per-host errors."""
    out: list[Worktree] = []
    errors: list[str] = []
    now = time.time()
    by_path = {}
    if records is not None:
        for rec in records.all():
            if rec.get("directory"):
                by_path[(rec.get("host"), rec["directory"])] = rec.get("session_id", "")
    for h in hosts:
        if h.repos_root is None:
            continue
        r = _one(inv, h, script(_LIST, h.repos_root, *_repo_dirs(h)), "worktrees", options)
        if r.outcome != FanoutOutcome.SUCCESS:
            errors.append(f"{h.name}: {r.error}")
            continue
        for line in r.stdout.splitlines():
            f = line.split("\t")
            if len(f) != 7:
                continue
            repo, name, path, branch, dirty, ahead, mtime = f
            out.append(Worktree(h.name, repo, name, path, branch, dirty == "dirty", ahead,
                                int(now - float(mtime or 0)) if mtime.isdigit() else 0,
                                by_path.get((h.name, path), "")))
    return out, errors


def _repo_dirs(h: Host) -> list[str]:
    """(repo, directory) pairs, flat, for the repos the inventory places elsewhere (repos.paths)."""
    out: list[str] = []
    for repo in sorted(h.repos):
        path = h.repo_path(repo)
        if path is not None:
            out += [repo, path]
    return out


def _removescript(h: Host, a: dict[str, Any], what: str) -> str:
    return script(_REMOVE, h.repos_root or "", h.repo_path(str(a["repo"])) or "", str(a["repo"]), str(a["name"]),
                   "1" if a.get("force") else "0", "1" if a.get("delete_branch") else "0", what)


# Host-side refusals that are about what is there (a symlink, a path outside .worktrees, not a
# worktree of the repo): found before any token, they refuse the plan. A missing repos root or
# repository is the host not being as the inventory says: noted, and that host fails when it runs.
_REFUSE_CODES = (92, 94, 95)


def _plain_count(v: str) -> int | None:
    return int(v) if v.isdigit() else None


def _judge(h: Host, a: dict[str, Any], facts: dict[str, str]) -> tuple[str, str]:
    """(the plan's note for ``h``, why it is refused or ''), from what the probe found there."""
    force, delete = bool(a.get("force")), bool(a.get("delete_branch"))
    br = f"fleet/{a['name']}"
    path = facts.get("path", worktree_path(h, a["repo"], a["name"]))
    if facts.get("state") == "absent":
        return f"{h.name}: nothing to remove: {path} does not exist", ""
    why: list[str] = []
    note = f"{h.name}: removes {path}"
    if facts.get("dirty") == "1":
        if force:
            note += " with its uncommitted changes (--force discards them)"
        else:
            why.append(f"{path} has uncommitted changes: commit them there, or add --force to discard them")
    else:
        note += " (clean)"
    head, lost = facts.get("head", ""), facts.get("lost", "0")
    if lost != "0":
        n = _plain_count(lost)
        what = f"{n} commit(s)" if n is not None else "commits"
        if force:
            note += f"; drops {what} on no branch (detached HEAD; --force)"
        else:
            why.append(f"{path} has {what} on no branch (detached HEAD): put a branch on them there, or add "
                       f"--force to drop them")
    if head and head != br:
        note += f"; {head} is checked out there and is kept (only {br} is ever deleted)"
    elif not head:
        note += "; its HEAD is detached"
    only = facts.get("only", "-")
    if not delete:
        note += f"; keeps branch {br}"
    elif only == "-":
        note += f"; no branch {br} to delete"
    elif only == "0":
        note += f"; deletes branch {br} (each of its commits is on another branch too)"
    else:
        n = _plain_count(only)
        what = f"{n} commit(s)" if n is not None else "commits (how many could not be told)"
        if force:
            note += f"; deletes branch {br} and its {what} on no other branch (--force)"
        else:
            why.append(f"branch {br} has {what} on no other branch: merge or push them, drop --delete-branch, "
                       f"or add --force to delete them")
    return note, "; ".join(why)


def _check_remove(plan: Plan) -> None:
    """Names, then each host as it is now (read only, before any token): the plan's notes say what
    will be removed, kept or discarded; what would be refused refuses the plan here, so no token
    is issued (or spent) for a removal that cannot happen."""
    a = plan.args
    for k in ("repo", "name"):
        if not a.get(k) or not is_plain_name(str(a[k])):
            raise BadInput(f"worktrees.remove needs --{k} as a plain name (see fleet worktrees)")
    for h in plan.hosts:
        if h.repos_root is None:
            raise Refused(f"{h.name} has no repos root: nothing fleet made can be there")
    options = plan.call_options.get("options")
    refusals: list[str] = []
    for h in plan.hosts:
        r = _one(plan.inventory, h, _removescript(h, a, "probe"), f"worktree check {a['name']}", options)
        if r.outcome == FanoutOutcome.SUCCESS:
            facts = dict(ln.split("=", 1) for ln in r.stdout.splitlines() if "=" in ln)
            note, why = _judge(h, a, facts)
            plan.notes.append(note)
            if why:
                refusals.append(f"{h.name}: {why}")
            continue
        said = (r.stderr.strip().splitlines() or [r.error])[-1].removeprefix("refused: ")
        if r.exit_code in _REFUSE_CODES:
            refusals.append(f"{h.name}: {said}")
        else:
            plan.notes.append(f"{h.name}: could not be checked ({said}); it is checked again when it runs")
    if refusals:
        raise Refused("worktrees.remove refused before anything was done (no token was issued): "
                      + "; ".join(refusals))


def remove_worktree(inv: Inventory, selector: str, *, args: dict[str, Any], mode: str | None = None,
                    confirm: str | None = None, canary: str | None = None, settings: Any = None,
                    store: Any = None, audit: Any = None, trail: Any = None, audit_trail: Any = None,
                    options: FanoutOptions | None = None) -> list[WorktreeRemoval]:
    """Remove a fleet-made worktree on the planned hosts (gated like blow-away), one host after
    another in the plan's order, the canary first. Each host is checked before the token (see the
    module): uncommitted changes, or with ``delete_branch`` commits only on ``fleet/<name>``, are
    refused unless ``force``; the branch is kept unless ``delete_branch``."""
    trail = trail if trail is not None else audit_trail
    with gate.enter(WORKTREES_REMOVE, inv, selector, args=args, mode=mode, confirm=confirm, canary=canary,
                    settings=settings, store=store, audit=audit, trail=trail,
                    call_options={"options": options}, check=_check_remove) as g:
        a, tr = g.plan.args, g.trail

        def one(h: Host) -> WorktreeRemoval:
            r = _one(g.plan.inventory, h, _removescript(h, a, "remove"), f"worktree remove {a['name']}", options)
            ok = r.outcome == FanoutOutcome.SUCCESS
            out = WorktreeRemoval(h.name, "removed" if ok else "refused",
                                  r.stdout.strip() if ok else (r.stderr.strip().splitlines() or [r.error])[-1])
            if tr is not None:
                tr.record("gated_action_run", h.name, "success" if ok else "failure", action="worktrees.remove",
                          repo=a["repo"], name=a["name"], detail=out.detail)
            return out

        def not_run(h: Host, first: WorktreeRemoval) -> WorktreeRemoval:
            return WorktreeRemoval(h.name, "not run", f"not run: canary {first.host} was {first.outcome}: {first.detail}")
        return gate.canary_first(g.plan, one, lambda r: r.ok, not_run)


__all__ = ["Worktree", "create_worktree", "list_worktrees", "remove_worktree", "worktree_name", "worktree_path"]

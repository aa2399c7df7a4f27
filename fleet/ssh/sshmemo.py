"""What a long-lived process (``fleet serve``, ``fleet mcp``, a ``Fleet`` object) keeps of the
person's ssh_config between calls, so that a call pays neither for reading it nor for applying
it to each host again, while what the person writes there holds on the next call, as with ssh
(which reads it on every run):

- the files read (:func:`load`), by what was asked (the files and ``$HOME``, which Includes are
  relative to), read again when any file it looked for changed (:func:`fleet.ssh.sshread.stamp`:
  size, times, inode, mode, owner; one written in the last 2 s is never kept) or any Include
  glob matches other files;
- each host's resolution on the loaded config (:func:`remembered`), by the question: the host's
  name and the inventory's values, this user and machine, and the environment variables the
  config's lines name (``${VAR}``). A config whose lines run commands (``Match exec``) or ask DNS
  (``Canonicalize*``) is applied afresh every time.
"""
from __future__ import annotations

import glob
import os
import threading
from typing import Any, Callable

from fleet.ssh import predial
from fleet.ssh.sshread import ConfFile, Config, read_files, stamp

_LOADED: dict[tuple[Any, ...], tuple[Config, list[tuple[str, str]], list[tuple[str, tuple[str, ...]]]]] = {}
_LOADED_MAX = 16
_LOCK = threading.Lock()
MAX_REMEMBERED = 4096  # resolutions one config keeps (hosts x inventory values x environments)
_WORLDLY = ("canonicalizehostname", "canonicalizepermittedcnames")


def _stamp_of(path: str) -> str:
    try:
        return stamp(os.stat(path))
    except OSError:
        return "-"


def _unchanged(read: list[tuple[str, str]], globs: list[tuple[str, tuple[str, ...]]]) -> bool:
    return all(was != "racy" and _stamp_of(p) == was for p, was in read) and \
        all(tuple(sorted(glob.glob(pat))) == was for pat, was in globs)


def load(files: list[tuple[str, int, bool]]) -> Config:
    """:func:`fleet.ssh.sshread.read_files` of ``files``, or what it gave before if nothing it
    was read from has changed since."""
    key = (tuple(files), os.path.expanduser("~"))
    with _LOCK:
        kept = _LOADED.get(key)
    if kept is not None and _unchanged(kept[1], kept[2]):
        for path, _ in kept[1]:
            predial.depends(path)
        return kept[0]
    cfg, ld = read_files(files)
    with _LOCK:
        _LOADED.pop(key, None)
        if len(_LOADED) >= _LOADED_MAX:
            _LOADED.pop(next(iter(_LOADED)))  # the oldest
        _LOADED[key] = (cfg, ld.read, ld.globs)
    return cfg


def remembered(cfg: Config, question: tuple[Any, ...], resolve: Callable[[], Any]) -> Any:
    """``resolve()``'s answer to ``question`` (host, inventory values, Local) on ``cfg``: the one
    given before to the same question in the same environment, when ``cfg`` may remember."""
    if cfg.memo is None:
        cfg.memo = ({}, _env_names(cfg.roots))
    answers, env = cfg.memo
    if env is None:
        return resolve()
    key = (*question, tuple(os.environ.get(v) for v in env))
    got = answers.get(key)
    if got is None:
        got = resolve()
        if len(answers) >= MAX_REMEMBERED:
            answers.clear()
        answers[key] = got
    return got


def _env_names(roots: list[tuple[ConfFile, int]]) -> tuple[str, ...] | None:
    """The environment variables the files' lines name, or None: a line runs a command or asks DNS."""
    names: set[str] = set()
    seen: set[int] = set()
    todo = [cf for cf, _ in roots]
    while todo:
        cf = todo.pop()
        if id(cf) in seen:
            continue
        seen.add(id(cf))
        for ln in cf.lines:
            if ln.kw in _WORLDLY or (ln.kw == "match" and any(c.attr == "exec" for c in ln.crits)):
                return None
            i = ln.rest.find("${")
            while i >= 0:
                j = ln.rest.find("}", i + 2)
                if j < 0:
                    break
                names.add(ln.rest[i + 2:j])
                i = ln.rest.find("${", j)
            todo.extend(ln.includes)
    return tuple(sorted(names))

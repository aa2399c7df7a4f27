"""ssh_config files read as OpenSSH's ``readconf.c`` reads them.

:func:`load` reads the files once (``~/.ssh/config`` then ``/etc/ssh/ssh_config``, or the one
``-F`` file) with every ``Include`` (globs, relative to ``~/.ssh`` or ``/etc/ssh``, permissions
checked, at most 16 levels: a file including itself is refused at once, as by ssh), and checks
every line, active or not, as ssh does: a bad line is a :class:`BadInput` naming file:line.
:meth:`Config.read` then applies them for one host name: ``Host``/``Match`` blocks, an
``Include`` scoped to the block it is in, the first value obtained wins (identity files add up).
"""
from __future__ import annotations

import glob
import os
import stat
import time
from dataclasses import dataclass, field
from typing import Any

from fleet.errors import BadInput
from fleet.ssh import predial
from fleet.ssh import sshlex as lx
from fleet.ssh.sshcheck import check_line, secure
from fleet.ssh.sshmatch import Criterion, MatchState, eval_match, match_pattern, match_pattern_list
from fleet.ssh.tokens import Local

NEVER, CHECKPERM, USERCONF = 1, 2, 4
MAX_DEPTH = 16           # READCONF_MAX_DEPTH
MAX_FILE = 4 << 20       # a bigger "config" (or /dev/zero) is refused, not read forever
MAX_LINES = 500_000      # lines one lookup may walk (includes can multiply them)
MAX_IDENTITIES = 100


def printable(s: str) -> str:
    """``s`` with control characters escaped (a message stays one line)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


def bad(where: str, why: str) -> BadInput:
    """fleet's one-line error for a config line."""
    return BadInput(printable(f"ssh_config {where}: {why}"))


@dataclass
class Line:
    """One meaningful line: keyword (canonical), raw rest, arguments and the parsed value."""

    path: str
    no: int
    kw: str
    rest: str
    argv: list[str]
    value: Any = None
    unknown: bool = False
    includes: list["ConfFile"] = field(default_factory=list)
    crits: list[Criterion] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.path}:{self.no}"


@dataclass
class ConfFile:
    path: str
    lines: list[Line] = field(default_factory=list)


class Options:
    """ssh's ``Options`` while files are read: the first value obtained wins."""

    def __init__(self) -> None:
        self.v: dict[str, Any] = {}
        self.at: dict[str, str] = {}
        self.ids: list[tuple[str, str]] = []  # (IdentityFile as written, where)
        self.sendenv: list[str] = []
        self.setenv: list[str] = []
        self.want_final = False

    def first(self, key: str, value: Any, where: str) -> None:
        if key not in self.v:
            self.v[key] = value
            self.at[key] = where

    def get(self, key: str, default: Any = None) -> Any:
        return self.v.get(key, default)


# -------------------------------------------------------------------------------- loading

class _Loader:
    def __init__(self) -> None:
        self.files: dict[tuple[str, bool], ConfFile] = {}
        self.errors: list[BadInput] = []
        self.ignore: list[str] = []  # every IgnoreUnknown value anywhere
        self.unknown: list[Line] = []
        self.read: list[tuple[str, str]] = []  # (path, stamp) of every file it looked for: what it depends on
        self.globs: list[tuple[str, tuple[str, ...]]] = []  # (Include pattern, what it matched)

    def load(self, path: str, flags: int, depth: int, must_exist: bool = False) -> ConfFile | None:
        key = (path, bool(flags & USERCONF))
        if key in self.files:
            return self.files[key]
        if depth > MAX_DEPTH:
            raise BadInput(f"ssh_config {path}: Too many recursive configuration includes (more than "
                           f"{MAX_DEPTH} levels: does a file include itself?)")
        predial.depends(path)
        try:
            self.read.append((path, "-"))
            pre = os.stat(path)
            if not (stat.S_ISREG(pre.st_mode) or stat.S_ISDIR(pre.st_mode)) and os.path.realpath(path) != "/dev/null":
                raise BadInput(f"ssh_config {path}: not a regular file (a pipe, socket or device would be read "
                               f"for ever)")
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                self.read[-1] = (path, stamp(st))  # taken before the read: a write during it is a change
                data = b"" if stat.S_ISDIR(st.st_mode) else f.read(MAX_FILE + 1)
        except FileNotFoundError:
            if must_exist:
                raise BadInput(f"cannot open ssh_config {path}: no such file (fix the 'ssh_config' setting, "
                               f"or write 'none' for no ssh_config)") from None
            return None
        except IsADirectoryError:
            data, st = b"", os.stat(path)
            self.read[-1] = (path, stamp(st))
        except OSError as exc:
            raise BadInput(f"Can't open user config file {path}: {exc.strerror or exc}") from None
        if flags & CHECKPERM and not secure(st):
            raise BadInput(f"ssh_config {path}: Bad owner or permissions (ssh refuses it too): run "
                           f"'chmod go-w {path}'")
        if len(data) > MAX_FILE:
            raise BadInput(f"ssh_config {path}: larger than {MAX_FILE >> 20} MiB: not a config file")
        return self.parse(path, data.decode("utf-8", "surrogateescape"), flags, depth, key)

    def parse(self, path: str, text: str, flags: int, depth: int, key: tuple[str, bool]) -> ConfFile:
        cf = self.files[key] = ConfFile(path)
        for no, raw in enumerate(text.split("\n"), start=1):
            ln = self.line(path, no, raw, flags, depth)
            if ln is not None:
                cf.lines.append(ln)
        return cf

    def line(self, path: str, no: int, raw: str, flags: int, depth: int) -> Line | None:
        where = f"{path}:{no}"
        try:
            split = lx.split_line(raw)
            if split is None:
                return None
            kw, rest = split
            argv = lx.argv_split(rest)
            kind = lx.KEYWORDS.get(kw)
            ln = Line(path, no, lx.ALIASES.get(kw, kw), rest, argv)
            if kind is None:
                ln.unknown = True
                self.unknown.append(ln)
                return ln
            ln.value = check_line(ln, kind)
            if kw == "ignoreunknown":
                self.ignore.append(ln.value)
            if kw == "include":
                self.include(ln, flags, depth)
            return ln
        except lx.LexError as exc:
            self.errors.append(bad(where, str(exc)))
            return None

    def include(self, ln: Line, flags: int, depth: int) -> None:
        for arg in ln.argv:
            if arg == "":
                raise lx.LexError("keyword include empty argument")
            if arg.startswith("~") and not flags & USERCONF:
                raise lx.LexError(f"bad include path {arg}.")
            if not os.path.isabs(arg) and not arg.startswith("~"):
                arg = ("~/.ssh/" if flags & USERCONF else "/etc/ssh/") + arg
            found = sorted(glob.glob(os.path.expanduser(arg)))
            self.globs.append((os.path.expanduser(arg), tuple(found)))
            for p in found:
                child = self.load(p, flags | CHECKPERM, depth + 1)
                if child is not None:
                    ln.includes.append(child)


def _height(cf: ConfFile, memo: dict[int, int], visiting: set[int]) -> int:
    if id(cf) in memo:
        return memo[id(cf)]
    if id(cf) in visiting:
        return MAX_DEPTH + 1
    visiting.add(id(cf))
    h = 0
    for ln in cf.lines:
        for child in ln.includes:
            h = max(h, 1 + _height(child, memo, visiting))
            if h > MAX_DEPTH:
                visiting.discard(id(cf))
                raise BadInput(f"ssh_config {ln.where}: Too many recursive configuration includes (more than "
                               f"{MAX_DEPTH} levels: does a file include itself?)")
    visiting.discard(id(cf))
    memo[id(cf)] = h
    return h


RACY_NS = 2_000_000_000  # a file changed this recently may change again within its time's granularity


def stamp(st: os.stat_result) -> str:
    """What tells a changed file or directory: its identity, size, times, mode and owner (the
    permission check depends on the last three). A file changed in the last two seconds gets
    no stamp ("racy", as git says): file times tick in jiffies (~4 ms), so a second write of
    the same size could keep all of them; it is read again until it has stood still."""
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < RACY_NS:
        return "racy"
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_mode}:{st.st_uid}:{st.st_gid}"


def read_files(files: list[tuple[str, int, bool]], text: str | None = None) -> tuple["Config", "_Loader"]:
    """Read ``files`` ((path, flags, must_exist), in order) and every Include; BadInput if ssh
    would refuse them. With ``text``, the one file is that text (named by the path). Also the
    loader, whose ``read`` and ``globs`` say what the result depends on (fleet.ssh.sshmemo)."""
    ld = _Loader()
    roots: list[tuple[ConfFile, int]] = []
    for path, flags, must in files:
        cf = ld.load(path, flags, 0, must) if text is None else ld.parse(path, text, flags, 0, (path, True))
        if cf is not None:
            roots.append((cf, flags))
    for cf, _ in roots:
        _height(cf, {}, set())
    for ln in ld.unknown:
        if not any(match_pattern_list(ln.kw, pat, True) == 1 for pat in ld.ignore):
            ld.errors.append(bad(ln.where, f"Bad configuration option: {ln.kw}"))
    if ld.errors:
        more = f" (and {len(ld.errors) - 1} more bad line{'s' if len(ld.errors) > 2 else ''})" \
            if len(ld.errors) > 1 else ""
        raise BadInput(f"{ld.errors[0]}{more}; ssh refuses this config too: fix or remove the line")
    return Config(roots), ld


def load_text(text: str, name: str) -> "Config":
    """A config given as text (read as a ``-F`` file named ``name``)."""
    return read_files([(name, USERCONF, False)], text)[0]


# ------------------------------------------------------------------------------- applying

class Config:
    """Loaded ssh_config files, applied per host name with :meth:`read`."""

    def __init__(self, roots: list[tuple[ConfFile, int]]) -> None:
        self.roots = roots
        self.memo: Any = None  # what a long-lived process remembers of its resolutions (fleet.ssh.sshmemo)

    def read(self, host: str, original: str, opts: Options, final: bool, me: Local) -> None:
        """One pass over every file for ``host`` (the name given, or in the final pass the
        canonical name), updating ``opts``."""
        _Pass(self, host, original, opts, final, me).run()


class _Pass:
    def __init__(self, cfg: Config, host: str, original: str, opts: Options, final: bool, me: Local) -> None:
        self.cfg, self.host, self.original, self.o, self.final, self.me = cfg, host, original, opts, final, me
        self.budget = MAX_LINES

    def run(self) -> None:
        for cf, flags in self.cfg.roots:
            self.file(cf, flags, [True])

    def file(self, cf: ConfFile, flags: int, active: list[bool]) -> None:
        for ln in cf.lines:
            self.budget -= 1
            if self.budget < 0:
                raise bad(ln.where, f"the Includes expand to more than {MAX_LINES} lines")
            kw = ln.kw
            if kw == "host":
                active[0] = not flags & NEVER and self.host_matches(ln.argv)
            elif kw == "match":
                r = self.match(ln)
                active[0] = r and not flags & NEVER
            elif kw == "include":
                was = active[0]
                for child in ln.includes:
                    self.file(child, flags | CHECKPERM | (0 if was else NEVER), active)
                    active[0] = was
            elif ln.unknown:
                ign = self.o.get("ignoreunknown")
                if ign is None or match_pattern_list(kw, ign, True) != 1:
                    raise bad(ln.where, f"Bad configuration option: {kw}")
            elif active[0]:
                self.apply(ln)

    def host_matches(self, patterns: list[str]) -> bool:
        on = False
        for arg in patterns:
            neg = arg.startswith("!")
            if match_pattern(self.host, arg[1:] if neg else arg):
                if neg:
                    return False
                on = True
        return on

    def match(self, ln: Line) -> bool:
        from fleet.ssh.tokens import default_tokens, expand

        o, me = self.o, self.me
        port = o.get("port") or 22
        user = o.get("user") or me.user
        if self.final:
            host = o.get("hostname") or self.host
        elif "hostname" in o.v:
            try:
                host = expand(o.v["hostname"], {"h": self.host})
            except lx.LexError as exc:
                raise bad(o.at["hostname"], f"HostName: {exc}") from None
        else:
            host = self.host
        alias = o.get("hostkeyalias")

        def want() -> None:
            o.want_final = True
        st = MatchState(host=host, original=self.original, user=user, local_user=me.user, final=self.final,
                        exec_tokens=lambda: default_tokens(me, host, self.original, port, user, alias or host),
                        want_final=want)
        try:
            return eval_match(ln.crits, st)
        except lx.LexError as exc:
            raise bad(ln.where, f"Match: {exc}") from None

    def apply(self, ln: Line) -> None:
        o, kw, v, where = self.o, ln.kw, ln.value, ln.where
        if kw == "identityfile":
            if not any(p == v for p, _ in o.ids):
                if len(o.ids) >= MAX_IDENTITIES:
                    raise bad(where, f"Too many identity files specified (max {MAX_IDENTITIES}).")
                o.ids.append((v, where))
        elif kw == "sendenv":
            for a in ln.argv:
                if a.startswith("-"):
                    o.sendenv = [e for e in o.sendenv if not match_pattern(e, a[1:])]
                else:
                    o.sendenv.append(a)
        elif kw == "setenv":
            if not o.setenv:
                for a in ln.argv:
                    if not any(e.split("=", 1)[0] == a.split("=", 1)[0] for e in o.setenv):
                        o.setenv.append(a)
        elif kw == "proxyjump":
            if v.none:
                o.first("jump", v, where)
            elif "proxycommand" not in o.v and "jump" not in o.v:
                o.first("jump", v, where)
                o.first("proxycommand", "none", where)
        elif v is not None or kw in lx.KEYWORDS and lx.KEYWORDS[kw] != lx.ANY:
            o.first(kw, v, where)


__all__ = ["CHECKPERM", "Config", "ConfFile", "Line", "NEVER", "Options", "USERCONF", "bad", "load_text", "read_files", "stamp",
           "printable"]

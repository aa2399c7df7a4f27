"""Fixtures: a session-wide lab of real sshd hosts on loopback, and fault-making helpers."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fleet.inventory import load_inventory  # noqa: E402
from fleet.lab import lab_down, lab_up  # noqa: E402


@pytest.fixture(autouse=True)
def own_home(tmp_path_factory, monkeypatch):
    """Every test gets its own HOME and settings: the suite never writes to the real journal,
    token dir, known_hosts, ~/.ssh or ~/.config."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    for var in ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME", "SSH_AUTH_SOCK", "FLEET_INVENTORY",
                "SLACK_BOT_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    for var in [v for v in os.environ if v.startswith("INVOKE_FLEET_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("INVOKE_FLEET_JOURNAL", str(home / "state" / "journal.jsonl"))
    monkeypatch.setenv("INVOKE_FLEET_TOKEN_DIR", str(home / "config" / "tokens"))
    monkeypatch.setenv("INVOKE_FLEET_ARTIFACTS_DIR", str(home / "artifacts"))
    monkeypatch.setenv("PYTEST_SCRATCH", str(home))
    return home


@contextmanager
def running_lab(d: Path, count: int, **kw):
    """A lab of its own for a test module (``agents=M``, ``jump=True``...), always taken down."""
    lb = lab_up(count, d, **kw)
    try:
        yield lb
    finally:
        lab_down(d)


@contextmanager
def running_slow_lab(d: Path, count: int, delay: float, **kw):
    """:func:`running_lab` whose stand-in model takes ``delay`` seconds on a ``[slow]`` turn
    (``FAKE_SLOW_DELAY``, set while the module runs: its servers read it at start)."""
    old = os.environ.get("FAKE_SLOW_DELAY")
    os.environ["FAKE_SLOW_DELAY"] = f"{delay:g}"
    try:
        with running_lab(d, count, **kw) as lab:
            yield lab
    finally:
        if old is None:
            os.environ.pop("FAKE_SLOW_DELAY", None)
        else:
            os.environ["FAKE_SLOW_DELAY"] = old


@contextmanager
def serve_process(sock: Path, *args: str, env: dict | None = None):
    """``fleet serve ARGS`` started as a user starts it, yielded once its socket ``sock`` is there,
    stopped (SIGTERM, then kill) however the test ends."""
    import signal
    proc = subprocess.Popen([str(Path(sys.executable).parent / "fleet"), "serve", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        assert wait_for(lambda: sock.exists() or proc.poll() is not None, 20, 0.05) and sock.exists(), \
            proc.stderr.read() if proc.poll() is not None else "no socket"
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def agent_settings(home: Path):
    """Settings whose journal and tokens live under ``home`` (one orchestrator's state)."""
    from fleet.settings import Settings
    return Settings(token_dir=str(home / "tok"), journal=str(home / "journal.jsonl"))


@pytest.fixture
def st(tmp_path):
    """This test's own settings (journal and tokens in its temp dir)."""
    return agent_settings(tmp_path)


def records(tmp_path: Path):
    """The session records beside ``st``'s journal."""
    from fleet.audit.records import SessionRecords
    return SessionRecords(tmp_path / "sessions.jsonl")


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    """20 real sshd hosts on 127.0.0.1 for the whole session."""
    d = tmp_path_factory.mktemp("lab")
    lb = lab_up(20, d)
    yield lb
    lab_down(d)


@pytest.fixture(scope="session")
def lab_inv(lab):
    return load_inventory(lab.inventory)


# ---------------------------------------------------------------- the shared agent lab
#
# Starting `opencode serve` costs ~6 s of CPU per server, and a server's first call in a repo
# ~3 s more: the modules that need real agents share one lab of 2 hosts with 2 agents instead
# of starting one each. Each module still gets it as a new one looks: fresh_agent_lab() ends
# whatever a module before left at work or waiting, deletes every session, and puts the repos
# back as seeded. Those modules run one after another (pytest_collection_modifyitems) and the
# lab is taken down after the last test that uses it, so idle servers cost the rest nothing.

AGENT_LAB_FIXTURE = "agent_lab"


class SharedAgentLab:
    """One lab (``lab_up(2, agents=2)``), started at first use and taken down by :meth:`close`
    (after the last test that asks for it, or at the end of the session)."""

    def __init__(self) -> None:
        self.factory = None
        self.dir: Path | None = None
        self.lab = None
        self.heads: dict[Path, str] = {}
        self.last_user: pytest.Item | None = None  # the last test to run that uses it

    def get(self):
        if self.lab is None:
            from fleet.lab.base import LAB_REPOS
            d = self.factory.mktemp("agentlab")
            try:
                lb = lab_up(2, d, agents=2)
            except BaseException:
                lab_down(d)
                raise
            self.dir, self.lab = d, lb
            self.heads = {Path(h.repos_root) / r: _git(Path(h.repos_root) / r, "rev-parse", "HEAD").strip()
                          for h in lb.hosts for r in LAB_REPOS}
        return self.lab

    def close(self) -> None:
        if self.lab is not None:
            self.lab = None
            lab_down(self.dir)


SHARED_AGENTS = SharedAgentLab()


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True,
                          stdin=subprocess.DEVNULL).stdout


@pytest.fixture(scope="session")
def agent_lab(tmp_path_factory):
    """The shared agent lab (see above); a module takes it through :func:`fresh_agent_lab`."""
    SHARED_AGENTS.factory = tmp_path_factory
    yield SHARED_AGENTS
    SHARED_AGENTS.close()


def fresh_agent_lab(shared: SharedAgentLab, hosts: int = 2, agents: int = 2):
    """The shared lab as ``lab_up(hosts, agents=agents)`` would give it to a module: nothing at
    work or waiting on its servers, no session, the repos as seeded (no worktree, fleet branch
    or stray file), and an inventory of ``hosts`` hosts whose first ``agents`` have an agent."""
    from dataclasses import replace

    from fleet.lab.base import write_inventory as write_lab_inventory

    lb = shared.get()
    _idle_agents(lb)
    _reseed_repos(lb, shared.heads)
    if (hosts, agents) == (len(lb.hosts), len([a for a in lb.agents if a.get("role") == "agent"])):
        return lb
    names = {h.name for h in lb.hosts[:agents]}
    view = replace(lb, hosts=lb.hosts[:hosts], inventory=lb.dir / f"inventory-{hosts}-hosts-{agents}-agents.yaml",
                   agents=[a for a in lb.agents if a.get("role") != "agent" or a.get("host") in names])
    write_lab_inventory(view)
    return view


def _idle_agents(lb) -> None:
    """Stop every session at work (its subagents first), turn down what waits, delete every session."""
    from fleet.agent.client import OpenCodeClient
    from fleet.agent.tools import stop_session
    from fleet.errors import OpenCodeError
    from fleet.ops.sessions import host_sessions

    inv = load_inventory(lb.inventory)
    for h in inv.hosts:
        if h.opencode is None:
            continue
        rows = host_sessions(h, limit=10_000)
        with OpenCodeClient(h, None) as oc:
            busy = {r.session_id for r in rows if r.state in ("busy", "retry", "needs-input")}
            for r in rows:
                if r.session_id in busy and r.parent not in busy:
                    assert stop_session(oc, h, r.session_id, r.directory, 10.0)[0], f"{h.name}: {r.session_id} stays busy"
            for d in sorted({r.directory for r in rows if r.directory}):
                oc.directory = d
                for q in oc.questions():
                    oc.reject_question(str(q["id"]))
                for p in oc.permissions():
                    oc.reply_permission(str(p["id"]), "reject")
            for r in rows:
                if not r.parent:
                    oc.directory = r.directory or None
                    try:
                        oc.delete_session(r.session_id)  # its subagents' sessions go with it
                    except OpenCodeError as exc:
                        if exc.kind != "not_found":
                            raise


def _reseed_repos(lb, heads: dict[Path, str]) -> None:
    """Each host's repos root as lab_up seeded it: its repos at their first commit, clean, with
    no other worktree or branch, and nothing else beside them."""
    import shutil

    from fleet.lab.base import LAB_REPOS

    for h in lb.hosts:
        root = Path(h.repos_root)
        for name in LAB_REPOS:
            repo = root / name
            _git(repo, "worktree", "prune")
            for line in _git(repo, "worktree", "list", "--porcelain").splitlines():
                path = line.removeprefix("worktree ")
                if line.startswith("worktree ") and Path(path) != repo:
                    _git(repo, "worktree", "remove", "--force", "--force", path)
            _git(repo, "worktree", "prune")
            _git(repo, "checkout", "-q", "-f", "main")
            _git(repo, "reset", "-q", "--hard", heads[repo])
            _git(repo, "clean", "-q", "-f", "-f", "-d", "-x")
            for branch in _git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/").split():
                if branch != "main":
                    _git(repo, "branch", "-q", "-D", branch)
        for p in root.iterdir():
            if p.name in LAB_REPOS:
                continue
            if p.is_symlink() or not p.is_dir():
                p.unlink()
            else:
                shutil.rmtree(p)


AGENT_LAB_GROUP = "agent_lab"  # the xdist_group of the modules that use the shared agent lab
_SHARED_SCOPES = ("package", "module", "class")


def _module_of(item) -> str:
    return item.nodeid.split("::")[0]


def _shares_fixture(item) -> bool:
    """Whether ``item`` uses a fixture wider than a test and narrower than the session (set up
    once per worker that runs any of its users)."""
    info = getattr(item, "_fixtureinfo", None)
    defs = getattr(info, "name2fixturedefs", None) or {}
    return any(getattr(d, "scope", None) in _SHARED_SCOPES for ds in defs.values() for d in ds)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the xdist_group marks
def pytest_collection_modifyitems(session, config, items):
    """Run the modules that use the shared agent lab one after another, where the first of them
    was (the lab goes down after the last test that uses it: pytest_collection_finish).

    Under ``pytest-xdist --dist loadgroup``, each worker has session fixtures of its own: those
    modules are one ``xdist_group`` (one worker, in this order, so one agent lab), and a test
    that uses a module- or class-scoped fixture is grouped with its module (that fixture is set up
    once, not on every worker). Other tests go wherever a worker is free."""
    users = {_module_of(it) for it in items if AGENT_LAB_FIXTURE in getattr(it, "fixturenames", ())}
    if users:
        first = next(i for i, it in enumerate(items) if _module_of(it) in users)
        group = [it for it in items if _module_of(it) in users]
        rest = [it for it in items if _module_of(it) not in users]
        items[:] = rest[:first] + group + rest[first:]
    for it in items:
        if _module_of(it) in users:
            it.add_marker(pytest.mark.xdist_group(AGENT_LAB_GROUP))
        elif _shares_fixture(it):
            it.add_marker(pytest.mark.xdist_group(_module_of(it)))


@pytest.hookimpl(tryfirst=True)  # before xdist's worker reports its collection to the controller
def pytest_collection_finish(session):
    """Note the last test to run that uses the shared agent lab, once every plugin has ordered and
    deselected (an xdist worker runs that whole group, in this order); on an xdist worker, hand
    the controller the tests' groups (see _xdist_groups_dir)."""
    users = [it for it in session.items if AGENT_LAB_FIXTURE in getattr(it, "fixturenames", ())]
    SHARED_AGENTS.last_user = users[-1] if users else None
    winput = getattr(session.config, "workerinput", None)
    if winput and XDIST_GROUPS in winput:
        groups = {it.nodeid: g for it in session.items if (g := _xdist_group_of(it))}
        out = Path(winput[XDIST_GROUPS]) / f"{winput['workerid']}.json"
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups))
        tmp.replace(out)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield
    if item is SHARED_AGENTS.last_user:
        SHARED_AGENTS.close()


# ---------------------------------------------------------------- pytest-xdist: the groups hold
#
# pytest-xdist 3.8's --dist loadgroup tells the controller a test's xdist_group by appending
# "@group" to its node id on the worker; pytest 9.2 node ids no longer take that change, and the
# groups are silently ignored (pytest-dev/pytest-xdist#1386). So each worker writes the groups of
# the tests it collected to a file (before it reports its collection) and the controller's
# scheduler, loadgroup's own, reads a test's group from there.

XDIST_GROUPS = "fleet_xdist_groups"  # the workerinput key: the directory of the groups files
_GROUPS_DIR = pytest.StashKey[Path]()


def _xdist_group_of(item) -> str:
    """The group xdist's loadgroup gives ``item`` ("" when it has no xdist_group mark)."""
    names = {str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")}
    return "_".join(sorted(names))


def _xdist_groups_dir(config) -> Path:
    if _GROUPS_DIR not in config.stash:
        import tempfile
        config.stash[_GROUPS_DIR] = Path(tempfile.mkdtemp(prefix="fleet-xdist-groups-"))
    return config.stash[_GROUPS_DIR]


def pytest_unconfigure(config):
    if _GROUPS_DIR in config.stash:
        import shutil
        shutil.rmtree(config.stash[_GROUPS_DIR], ignore_errors=True)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    node.workerinput[XDIST_GROUPS] = str(_xdist_groups_dir(node.config))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    groups_dir = _xdist_groups_dir(config)

    class MarkedGroupScheduling(LoadGroupScheduling):
        """loadgroup, with each test's group as its worker wrote it (all collected the same)."""

        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:
                self.groups = {}
                for f in sorted(groups_dir.glob("*.json")):
                    self.groups.update(json.loads(f.read_text()))
            return self.groups.get(nodeid) or super()._split_scope(nodeid)

    return MarkedGroupScheduling(config, log)


@pytest.fixture
def fresh_lab(tmp_path):
    """A small lab of its own, for tests that break hosts."""
    lb = lab_up(4, tmp_path / "lab")
    yield lb
    lab_down(tmp_path / "lab")


class SilentServer:
    """Accepts TCP and never says a word (a port that is not SSH)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.stop = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                c, _ = self.sock.accept()
                self.conns.append(c)
            except OSError:
                continue

    def close(self) -> None:
        self.stop.set()
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.fixture
def silent_port():
    s = SilentServer()
    yield s.port
    s.close()


@pytest.fixture
def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def write_inventory(path: Path, lab, extra_hosts: str = "", names=None, extra_top: str = "",
                    host_extra: dict | None = None) -> Path:
    """An inventory over (some of) the lab's hosts plus extra host YAML."""
    lines = [f"known_hosts: {lab.known_hosts}", "defaults:", f"  user: {lab.user}", "  auth: ssh-key",
             f"  identity_file: {lab.key}", "hosts:"]
    for h in lab.hosts:
        if names is not None and h.name not in names:
            continue
        lines.append(f"  {h.name}: {{address: {h.address}, port: {h.port}, repos: {{root: {h.repos_root}}}"
                     + (", " + host_extra[h.name] if host_extra and h.name in host_extra else "") + "}")
    text = "\n".join(lines) + "\n" + extra_hosts + extra_top
    path.write_text(text)
    return path


def inv_cmd(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 120,
            input: str | None = None) -> subprocess.CompletedProcess:
    """Run the real 'inv' CLI of this project as a subprocess."""
    e = dict(os.environ)
    # never touch the real ~/.local/state or ~/.config from tests
    scratch = Path(os.environ.get("PYTEST_SCRATCH", "/tmp")) / f"fleet-cli-{os.getpid()}"
    e.setdefault("INVOKE_FLEET_JOURNAL", str(scratch / "journal.jsonl"))
    e.setdefault("INVOKE_FLEET_TOKEN_DIR", str(scratch / "tokens"))
    e.setdefault("INVOKE_FLEET_ARTIFACTS_DIR", str(scratch / "artifacts"))
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(ROOT), *args],
                          cwd=str(cwd or ROOT), env=e, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


# ---------------------------------------------------------------- shared helpers (one copy each)

def opts(tmp_path: Path, **kw):
    """SSH engine options for a test: artifacts in its temp dir, no ~/.ssh/known_hosts, quick retries."""
    from fleet.ssh.options import FanoutOptions
    base = dict(artifacts_dir=str(tmp_path / "art"), retry_delay=0.1, user_known_hosts=None)
    base.update(kw)
    return FanoutOptions(**base)


def test_settings(tmp_path: Path, **kw):
    """Settings for a test: tokens, artifacts and journal in its temp dir."""
    from fleet.settings import Settings
    return Settings(token_dir=str(tmp_path / "tok"), artifacts_dir=str(tmp_path / "art"),
                    journal=str(tmp_path / "journal.jsonl"), **kw)


test_settings.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def logins(lab) -> int:
    """SSH logins the lab's sshd accepted so far (a new connection shows as one more)."""
    return sum(p.read_text().count("Accepted publickey") for p in Path(lab.dir).glob("sshd/*/sshd.log"))


def wait_for(cond, timeout: float = 30.0, every: float = 0.2):
    """``cond()``'s first truthy value, asked every ``every`` seconds; None after ``timeout``."""
    import time
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() >= deadline:
            return None
        time.sleep(every)


def run_async(fn):
    """Run ``fn()`` on a daemon thread: (the thread, a dict whose ``out`` is its result once done)."""
    box: dict = {}
    t = threading.Thread(target=lambda: box.update(out=fn()), daemon=True)
    t.start()
    return t, box


def journal(path: str | Path | None = None) -> list[dict]:
    """The journal's events (this test's $INVOKE_FLEET_JOURNAL unless given)."""
    import json
    p = Path(path or os.environ["INVOKE_FLEET_JOURNAL"])
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.exists() else []


def running(pattern: str) -> bool:
    """Whether a process matching ``pattern`` (pgrep -f) runs now."""
    return subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 0


def ctrl_c_once_running(proc: subprocess.Popen, pattern: str, timeout: float = 20.0) -> tuple[bytes, bytes]:
    """Wait until a process matching ``pattern`` runs (the remote command started), send ``proc``
    one SIGINT (Ctrl-C), and return its (stdout, stderr); it is killed if it does not end."""
    import signal
    try:
        assert wait_for(lambda: running(pattern), timeout, 0.1), f"never started: {pattern}"
        proc.send_signal(signal.SIGINT)
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()

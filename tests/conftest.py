"""Fixtures: a session-wide lab of real sshd hosts on loopback, and fault-making helpers."""
from __future__ import annotations

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

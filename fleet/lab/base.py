"""What a lab is (hosts, processes, files) and the small helpers both halves of the lab use."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class LabHost:
    """One lab host: its name, where its sshd listens, and how the inventory addresses it."""

    name: str
    port: int
    repos_root: str
    address: str = "127.0.0.1"   # what the inventory / ssh_config call it (a name or an IP)
    listen: str = "127.0.0.1"    # the loopback IP sshd binds
    jump: str | None = None      # the ProxyJump host in ssh_config, if any


@dataclass
class Lab:
    """What ``lab_up`` built. ``inventory`` is ready for every fleet task."""

    dir: Path
    user: str
    hosts: list[LabHost]
    key: Path
    known_hosts: Path
    inventory: Path
    sshd_pids: list[int] = field(default_factory=list)
    agents: list[dict] = field(default_factory=list)
    ssh_config: Path | None = None
    jump: LabHost | None = None
    other_user: str | None = None  # a non-root login the lab accepts (None when not run as root)


def host_address(i: int) -> str:
    """The loopback address of the i-th lab host (1-based): one address per host."""
    return f"127.77.{i // 200}.{i % 200 + 10}"


def free_ports(n: int, addresses: list[str] | None = None) -> list[int]:
    """``n`` distinct free TCP ports (on ``addresses[i]``, default 127.0.0.1), held at once so none repeats."""
    socks = []
    try:
        for i in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((addresses[i] if addresses else "127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Blackholes:
    """Loopback ports that accept no connection and refuse none: SYNs are dropped, as with a
    machine that is off or asleep (listen(0) with the accept queue filled). A context manager."""

    def __init__(self, n: int = 1) -> None:
        self.socks: list[socket.socket] = []
        self.ports: list[int] = []
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen(0)
            port = s.getsockname()[1]
            self.socks.append(s)
            for _ in range(2):
                f = socket.socket()
                f.setblocking(False)
                try:
                    f.connect(("127.0.0.1", port))
                except BlockingIOError:
                    pass
                self.socks.append(f)
            self.ports.append(port)

    def __enter__(self) -> "Blackholes":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Free the ports."""
        for s in self.socks:
            s.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().split(") ", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            out.append(int(entry))
    return out


def state_file(lab_dir: Path) -> Path:
    """Where the lab records what it started."""
    return lab_dir / "lab.json"


LAB_REPOS = ("demo", "site")  # every lab host has these real git repos under ~/repos, as a user's machine does


def seed_repos(lab_dir: Path, roots: list[str]) -> None:
    """Give each repos root the lab's repos (:data:`LAB_REPOS`), real git repositories with one
    commit, so worktrees, branches, diffs and sessions in several projects are real. One template
    is made with git and copied, so a 100-host lab costs no more than a few git calls."""
    tmpl = lab_dir / "template"
    git_id = ["-c", "user.name=fleet lab", "-c", "user.email=lab@fleet.invalid"]
    for name in LAB_REPOS:
        t = tmpl / name
        if not (t / ".git").exists():
            t.mkdir(parents=True, exist_ok=True)
            (t / "README.md").write_text(f"# {name}\nThe lab's {name} repository.\n")
            subprocess.run(["git", "init", "-q", "-b", "main", str(t)], check=False, capture_output=True)
            subprocess.run(["git", "-C", str(t), *git_id, "add", "README.md"], check=False, capture_output=True)
            subprocess.run(["git", "-C", str(t), *git_id, "commit", "-q", "-m", "lab: initial commit"], check=False,
                           capture_output=True)
    for root in roots:
        Path(root).mkdir(parents=True, exist_ok=True)
        for name in LAB_REPOS:
            if not (Path(root) / name).exists():
                shutil.copytree(tmpl / name, Path(root) / name, symlinks=True)

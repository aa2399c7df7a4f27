"""What a lab is (hosts, processes, files) and the small helpers both halves of the lab use."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from dataclasses import asdict, dataclass, field
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
    relay_port: int | None = None  # with lab.up --rtt: the latency relay's port in front of it


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
    rtt: float = 0.0               # ms of round trip the latency relay adds (0: none)
    relay_pid: int | None = None   # the latency relay (fleet.lab.relay), when rtt is set


def write_state(lab: Lab) -> None:
    """Record what the lab started and how it is laid out (``lab.json``), for lab.down and lab.up."""
    pids = (list(lab.sshd_pids) + [a["pid"] for a in lab.agents if a.get("pid")]
            + ([lab.relay_pid] if lab.relay_pid else []))
    state = {"pids": pids, "sshd_pids": lab.sshd_pids, "agents": lab.agents, "relay_pid": lab.relay_pid,
             "rtt": lab.rtt, "hosts": [asdict(h) for h in lab.hosts], "jump": asdict(lab.jump) if lab.jump else None,
             "user": lab.user, "other_user": lab.other_user}
    tmp = state_file(lab.dir).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, state_file(lab.dir))


def load_lab(lab_dir: Path) -> Lab | None:
    """The lab recorded in ``lab_dir`` (as :func:`write_state` wrote it), or None."""
    try:
        st = json.loads(state_file(lab_dir).read_text())
        hosts = [LabHost(**h) for h in st["hosts"]]
        jump = LabHost(**st["jump"]) if st.get("jump") else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Lab(dir=lab_dir, user=st.get("user", ""), hosts=hosts, key=lab_dir / "client_ed25519",
               known_hosts=lab_dir / "known_hosts", inventory=lab_dir / "inventory.yaml",
               sshd_pids=list(st.get("sshd_pids", [])), agents=list(st.get("agents", [])),
               ssh_config=lab_dir / "ssh_config", jump=jump, other_user=st.get("other_user"),
               rtt=float(st.get("rtt") or 0), relay_pid=st.get("relay_pid"))


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


def write_inventory(lab: Lab) -> Path:
    """Write ``<dir>/inventory.yaml``: names, tags, groups and repos; the rest comes from ssh_config."""
    n = len(lab.hosts)
    lines = [
        "# Generated by 'inv lab.up': real sshd processes on loopback. Where each host is and who",
        "# logs in comes from ssh_config (as for 'ssh lab01'); known_hosts is the lab's own.",
        "# Try: inv fanout --inventory lab/inventory.yaml --all true",
        "#      inv fanout --inventory lab/inventory.yaml --hosts '@odd,!lab01' hostname",
        "known_hosts: known_hosts",
        "ssh_config: ssh_config",
        "default_host: lab01",
        "canary: lab01",
        "defaults:",
        "  auth: ssh-key",
        "  tags: [lab]",
        "groups:",
        "  odd: [" + ", ".join(h.name for i, h in enumerate(lab.hosts) if i % 2 == 0) + "]",
    ]
    if lab.rtt:
        lines.insert(4, f"# lab.up --rtt {lab.rtt:g}: ssh_config and the OpenCode urls go through a latency relay.")
    evens = [h.name for i, h in enumerate(lab.hosts) if i % 2 == 1]
    if evens:
        lines.append("  even: [" + ", ".join(evens) + "]")
    agent_hosts = [a for a in lab.agents if a.get("role") == "agent"]
    if agent_hosts:
        lines.append("  agents: [" + ", ".join(a["host"] for a in agent_hosts) + "]")
    lines.append("hosts:")
    agents = {a["host"]: a for a in agent_hosts}
    for i, h in enumerate(lab.hosts):
        rack = "rack-a" if i < (n + 1) // 2 else "rack-b"
        lines.append(f"  {h.name}:")
        lines.append(f"    aliases: [l{i + 1}]")
        lines.append(f"    tags: [{rack}" + (", behind-jump" if h.jump else "") + "]")
        lines.append(f"    repos: {{root: {h.repos_root}}}")
        if h.name in agents:
            a = agents[h.name]
            lines.append(f"    opencode: {{url: '{a['url']}', password_file: {a['password_file']}}}")
    if lab.jump:
        lines.append("  jump:")
        lines.append("    tags: [jump]")
    if agent_hosts:
        lines.append("routes:")
        lines.append("  dispatch: '@agents'")
    lab.inventory.write_text("\n".join(lines) + "\n")
    return lab.inventory

"""Served calls: with `fleet serve` running, the `fleet` script hands an SSH-plane command line
whole to the service (fleet/cli/entry.py -> fleet/cli/served.py), which runs the same Program
over its warm connections. What the person sees must be what the full program in their own
process shows (FLEET_NO_SERVICE=1 is that reference): output, exit status, errors, gates, the
settings of their directory and environment; a busy service or one of another state directory
leaves the run to the client."""
from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from pathlib import Path

from conftest import wait_for, write_inventory
from test_serve import FLEET, fleet, service


def served_calls() -> int:
    return int(json.loads(fleet("serve", "status", "--json").stdout)["served_calls"])


def here(*args: str, cwd: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([FLEET, *args], env={**os.environ, **(env or {}), "FLEET_NO_SERVICE": "1"}, cwd=cwd,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def there(*args: str, cwd: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([FLEET, *args], env={**os.environ, **(env or {})}, cwd=cwd, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def plain(text: str) -> str:
    """Output with what differs between any two runs (times, artifact dirs) blanked."""
    text = re.sub(r"\d+\.\d\ds", "T", text)
    return re.sub(r"artifacts/\S+?\)", "A)", re.sub(r'"(duration_ms|started|ended|artifacts_dir|epoch)": [^,\n]+',
                                                    r'"\1": X', text))


def test_a_served_fanout_shows_and_exits_as_the_full_program(lab, tmp_path):
    write_inventory(tmp_path / "inv.yaml", lab, names=["lab01", "lab02", "lab03"])
    cmd = "echo out-$((6*7)); echo err >&2; [ $(hostname) ] && exit 3"
    cases = [("fanout", "--inventory", "inv.yaml", "--all", cmd),  # relative to the client's directory
             ("fanout", "--inventory", "inv.yaml", "--all", "--json", "--no-canary", cmd),
             ("fanout", "--inventory", "inv.yaml", "--all", "--jsn", "true"),  # bad input: one line, exit 2
             ("fanout", "--inventory", "inv.yaml", "--all"),  # no command
             ("preflight", "--inventory", "inv.yaml")]
    with service():
        for args in cases:
            ref = here(*args, cwd=str(tmp_path))
            before = served_calls()
            got = there(*args, cwd=str(tmp_path))
            assert served_calls() == before + 1, args  # it ran in the service
            assert got.returncode == ref.returncode, (args, got.stderr)
            if "--json" in args:  # a warm connection needs no preflight: that field says so
                keep = ("host", "outcome", "exit_code", "stdout", "stderr", "attempts", "error_kind")
                a, b = json.loads(ref.stdout), json.loads(got.stdout)
                assert [{k: r[k] for k in keep} for r in a["results"]] == \
                    [{k: r[k] for k in keep} for r in b["results"]]
                assert (a["counts"], a["mode"], a["command"]) == (b["counts"], b["mode"], b["command"])
            else:
                assert plain(got.stdout) == plain(ref.stdout), args
            assert plain(got.stderr) == plain(ref.stderr), args
    assert ref.returncode == 0 and "lab03" in ref.stdout


def test_what_the_person_configured_in_their_environment_and_directory_holds(lab, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", lab, names=["lab01", "lab02"])
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "invoke.yaml").write_text(f"fleet:\n  mode: enforced\n  inventory: {inv}\n")
    with service():
        # the project's mode (enforced) holds: refused with a token, exit 3, nothing run
        ref, got = here("fanout", "--all", "echo hi", cwd=str(proj)), there("fanout", "--all", "echo hi", cwd=str(proj))
        assert ref.returncode == got.returncode == 3, got.stderr
        assert re.sub(r"--confirm \S+", "", ref.stderr) == re.sub(r"--confirm \S+", "", got.stderr)
        # an environment variable of the client's (not the service's) holds too
        env = {"INVOKE_FLEET_MODE": "canary"}
        ref = here("fanout", "--all", "--json", "echo hi", cwd=str(proj), env=env)
        got = there("fanout", "--all", "--json", "echo hi", cwd=str(proj), env=env)
        assert ref.returncode == got.returncode == 0, got.stderr
        assert json.loads(got.stdout)["mode"] == "canary" and json.loads(got.stdout)["counts"]["SUCCESS"] == 2
        assert "INVOKE_FLEET_MODE" not in os.environ  # and the service's own environment is untouched
        st = json.loads(fleet("serve", "status", "--json").stdout)
        assert st["running"]


def test_a_busy_service_or_one_of_another_state_directory_leaves_the_run_to_the_client(lab, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", lab, names=["lab04"])
    with service():
        flag = tmp_path / "started"  # the lab's hosts are this machine
        slow = subprocess.Popen([FLEET, "fanout", "--inventory", str(inv), "--all", f"touch {flag}; sleep 2; echo slow"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        out: dict = {}
        t = threading.Thread(target=lambda: out.update(r=slow.communicate(timeout=60)))
        t.start()
        assert wait_for(flag.exists)
        quick = there("fanout", "--inventory", str(inv), "--all", "--json", "echo quick")
        assert quick.returncode == 0 and json.loads(quick.stdout)["results"][0]["stdout"] == "quick\n"
        assert served_calls() == 0  # the second ran in its own process (over the pool), not after the first
        t.join()
        assert slow.returncode == 0 and "slow" in out["r"][0] and served_calls() == 1
        calls = served_calls()
        # another state directory (the client's journal elsewhere): not this service's call
        other = tmp_path / "other" / "journal.jsonl"
        got = there("fanout", "--inventory", str(inv), "--all", "--json", "echo mine",
                    env={"INVOKE_FLEET_JOURNAL": str(other)})
        assert got.returncode == 0 and served_calls() == calls
        assert json.loads(got.stdout)["results"][0]["stdout"] == "mine\n"


def test_version_and_list_answer_without_the_full_program_and_say_the_same(tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    ref = subprocess.run([FLEET.replace("/fleet", "/python"), "-m", "fleet.cli.program", "--list"],
                         capture_output=True, text=True, env={**os.environ, **env})
    first, second = there("--list", env=env), there("--list", env=env)
    assert first.stdout == second.stdout == ref.stdout and "fanout" in ref.stdout
    assert list(Path(tmp_path / "cache" / "fleet").glob("list-*.txt"))  # the second came from the cache
    v = there("--version")
    assert v.returncode == 0 and re.fullmatch(r"fleet \d+\.\d+\.\d+\n", v.stdout)


def test_a_served_call_into_a_pipe_arrives_whole_and_into_a_closed_one_ends_quietly(lab, tmp_path):
    """The thin client leaves at once after the service's exit status (no interpreter teardown):
    what it was sent is all written first, and a reader that went away (`| head`) ends it quietly
    with the in-process program's status, never a traceback or 'Exception ignored'."""
    write_inventory(tmp_path / "inv.yaml", lab, names=["lab05", "lab06"])
    big = "seq 1 40000"  # more than a pipe holds: the client is still writing when the service is done
    with service():
        whole = there("fanout", "--inventory", "inv.yaml", "--all", "--no-canary", big, cwd=str(tmp_path))
        ref = here("fanout", "--inventory", "inv.yaml", "--all", "--no-canary", big, cwd=str(tmp_path))
        assert served_calls() == 1 and whole.returncode == ref.returncode == 0, whole.stderr
        assert plain(whole.stdout) == plain(ref.stdout) and whole.stdout.count("\n40000\n") == 1  # gathered: both hosts said it
        calls = served_calls()
        for run_here in (False, True):
            env = {**os.environ, **({"FLEET_NO_SERVICE": "1"} if run_here else {})}
            p = subprocess.run(f"{FLEET} fanout --inventory inv.yaml --all --no-canary '{big}' | head -1; "
                               "echo status=${PIPESTATUS[0]}", shell=True, executable="/bin/bash", env=env,
                               cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
            said = [ln for ln in p.stderr.splitlines() if not ln.startswith("note: no canary")]
            assert p.stdout.splitlines()[-1] == "status=0" and said == [], (run_here, p.stdout[-300:], p.stderr)
        assert served_calls() == calls + 1  # the first of the two was the service's


def test_the_parser_contexts_kept_between_calls_parse_each_call_as_fresh_ones_would():
    """The service parses many command lines with the task contexts it made once (their deep copy
    is a rebuild, fleet.cli.program.quick_copies): each parse reads as Invoke's own deep copy of
    fresh contexts reads it, and nothing one call set (a list flag, a value) reaches the next."""
    from invoke.parser import Parser

    from fleet.cli import program as P

    prog = P._program()
    prog.create_config()
    prog.collection = P.ns  # what a run sets before it parses the tasks
    kept = P._contexts(prog)
    lines = [["fanout", "--collect", "a", "--collect", "b", "--hosts", "x", "--command", "c"],
             ["fanout", "--all", "--json", "--command", "c"],
             ["worktrees.remove", "--repo", "r", "--name", "n", "--hosts", "h"],
             ["fanout", "--collect", "z", "--all", "--command", "c"], ["preflight"]]

    def values(parser: Parser, argv: list[str]) -> list[tuple[str, dict]]:
        return [(c.name, {k: a.value for k, a in c.args.items()}) for c in parser.parse_argv(argv)]
    for argv in lines:
        fresh = prog.collection.to_contexts(ignore_unknown_help=True)
        assert all(type(c).__name__ == "ParserContext" for c in fresh)
        want = values(Parser(initial=prog.initial_context, contexts=fresh), argv)
        got = values(Parser(initial=prog.initial_context, contexts=kept), argv)
        assert got == want, argv
    fan = next(c for c in kept if c.name == "fanout")
    assert fan.args["collect"].value == [] and fan.args["hosts"].value is None  # the kept ones untouched

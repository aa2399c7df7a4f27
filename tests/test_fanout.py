"""Fanout against the lab's real sshd: every fault is made for real."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import ROOT, inv_cmd, write_inventory
from conftest import opts as shared_opts

from fleet import (
    FanoutOptions,
    FanoutOutcome,
    PreflightStatus,
    fanout_hosts,
    fanout_ssh,
    load_inventory,
    run_preflight_checks,
)
from fleet.ssh.kvlog import parse_line
from fleet.ssh.local import LocalLink
from fleet.ssh.runner import FanoutRunner
from fleet.ssh.transport import ExecResult
from fleet.ssh.warm import ConnectionPool


def opts(tmp_path, **kw):
    return shared_opts(tmp_path, **{"retry_delay": 0.2, "connect_timeout": 3, **kw})


def test_success_on_20_hosts_with_artifacts(lab_inv, tmp_path):
    run = fanout_hosts(lab_inv, list(lab_inv.hosts), "echo out-$((6*7)); echo err >&2", opts(tmp_path))
    assert run.exit_code == 0 and len(run.succeeded) == 20 and not run.failed
    for r in run.results:
        assert r.stdout == "out-42\n" and r.stderr == "err\n" and r.exit_code == 0 and r.attempts == 1
    d = Path(run.artifacts_dir)
    assert oct(d.stat().st_mode & 0o777) == "0o700"
    summary = json.loads((d / "summary.json").read_text())
    assert summary["counts"]["SUCCESS"] == 20
    assert (d / "lab07.stdout").read_text() == "out-42\n"
    events = [parse_line(ln) for ln in (d / "fanout.log").read_text().splitlines()]
    succ = [f for e, f in events if e == "success"]
    assert len(succ) == 20 and {f["command"] for f in succ} == {"echo out-$((6*7)); echo err >&2"}
    assert len([e for e, _ in events if e == "preflight_ok"]) == 20


def test_nonzero_exit_is_failure_retried_only_on_request(lab_inv, tmp_path):
    h = [lab_inv.host("lab01")]
    run = fanout_hosts(lab_inv, h, "echo no >&2; exit 3", opts(tmp_path))
    r = run.results[0]
    assert (r.outcome, r.exit_code, r.attempts, r.error) == (FanoutOutcome.FAILURE, 3, 1, "Exit code 3")
    assert r.stderr == "no\n" and run.exit_code == 1
    run = fanout_hosts(lab_inv, h, "exit 3", opts(tmp_path, retry_on_exit=True))
    assert run.results[0].attempts == 2 and run.results[0].outcome == FanoutOutcome.FAILURE
    log = (Path(run.artifacts_dir) / "fanout.log").read_text().splitlines()
    ev, f = parse_line([ln for ln in log if ln.startswith("failure")][0])
    assert f["final_error"] == "Exit code 3" and f["attempts"] == "2"


def test_command_timeout_kills_remote_process(lab_inv, tmp_path):
    marker = f"fleet-timeout-{os.getpid()}-{time.time_ns()}"
    run = fanout_hosts(lab_inv, [lab_inv.host("lab02")], f"sleep 300 # {marker}",
                       opts(tmp_path, command_timeout=1))
    r = run.results[0]
    assert r.outcome == FanoutOutcome.TIMEOUT and r.attempts == 1 and "timed out after 1s" in r.error
    assert r.duration_ms < 10_000
    deadline = time.time() + 5
    while time.time() < deadline:
        p = subprocess.run(["pgrep", "-f", marker], capture_output=True)
        if p.returncode != 0:
            break
        time.sleep(0.1)
    assert subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode != 0, "remote sleep survived"


def test_connection_refused_is_failure_after_two_attempts(lab, tmp_path, closed_port):
    p = write_inventory(tmp_path / "inv.yaml", lab, names=[],
                        extra_hosts=f"  dead: {{address: 127.0.0.1, port: {closed_port}}}\n")
    inv = load_inventory(p)
    run = fanout_hosts(inv, list(inv.hosts), "true", opts(tmp_path, preflight=False))
    r = run.results[0]
    assert r.outcome == FanoutOutcome.FAILURE and r.attempts == 2 and "refused" in r.error
    pf = run_preflight_checks(inv.host("dead"), timeout=2)
    assert pf.status == PreflightStatus.FAILED and pf.failed_check == "tcp" and "refused" in pf.error_detail


def test_silent_port_times_out_within_connect_timeout(lab, tmp_path, silent_port):
    p = write_inventory(tmp_path / "inv.yaml", lab, names=["lab01"],
                        extra_hosts=f"  mute: {{address: 127.0.0.1, port: {silent_port}}}\n")
    inv = load_inventory(p)
    t0 = time.monotonic()
    run = fanout_hosts(inv, list(inv.hosts), "true", opts(tmp_path, connect_timeout=1, attempts=1,
                                                        command_timeout=60))
    took = time.monotonic() - t0
    by = {r.host: r for r in run.results}
    assert by["mute"].outcome == FanoutOutcome.TIMEOUT and "no SSH greeting" in by["mute"].error, by["mute"].error
    assert by["lab01"].outcome == FanoutOutcome.SUCCESS
    assert took < 10


def test_wrong_key_is_auth_failure_with_exactly_one_attempt(lab, tmp_path):
    other = tmp_path / "otherkey"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    p = write_inventory(tmp_path / "inv.yaml", lab, names=["lab03"], host_extra={"lab03": f"identity_file: {other}"})
    inv = load_inventory(p)
    run = fanout_hosts(inv, list(inv.hosts), "true", opts(tmp_path, attempts=3))
    r = run.results[0]
    assert r.outcome == FanoutOutcome.FAILURE and r.attempts == 1 and r.error_kind == "auth"
    assert "authentication failed" in r.error


def test_unknown_host_key_refused_then_accepted_with_flag(lab, tmp_path):
    kh = tmp_path / "kh"
    kh.write_text("")
    p = write_inventory(tmp_path / "inv.yaml", lab, names=["lab04"])
    p.write_text(p.read_text().replace(f"known_hosts: {lab.known_hosts}", f"known_hosts: {kh}"))
    inv = load_inventory(p)
    marker = tmp_path / "ran"
    run = fanout_hosts(inv, list(inv.hosts), f"touch {marker}", opts(tmp_path))
    r = run.results[0]
    assert r.outcome == FanoutOutcome.FAILURE and r.error_kind == "unknown_host_key" and r.attempts == 1
    assert "SHA256:" in r.error and "--accept-new-host-key lab04" in r.error
    assert not marker.exists()
    run = fanout_hosts(inv, list(inv.hosts), f"touch {marker}",
                       opts(tmp_path, accept_host_keys_for=frozenset({"lab04"})))
    assert run.results[0].outcome == FanoutOutcome.SUCCESS and marker.exists()
    # filed under [host]:port, hashed when HashKnownHosts yes is in force (Debian's /etc/ssh/ssh_config), as ssh
    assert subprocess.run(["ssh-keygen", "-F", f"[{lab.hosts[3].address}]:{lab.hosts[3].port}", "-f", str(kh)],
                          capture_output=True).returncode == 0
    marker.unlink()
    run = fanout_hosts(inv, list(inv.hosts), f"touch {marker}", opts(tmp_path))  # now known
    assert run.results[0].outcome == FanoutOutcome.SUCCESS


def test_changed_host_key_is_refused_loudly_even_with_accept_flag(lab, tmp_path):
    fake = tmp_path / "fakehost"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(fake)], check=True)
    pub = fake.with_suffix(".pub").read_text().split()
    kh = tmp_path / "kh"
    port = lab.hosts[4].port
    kh.write_text(f"[{lab.hosts[4].address}]:{port} {pub[0]} {pub[1]}\n")
    p = write_inventory(tmp_path / "inv.yaml", lab, names=["lab05"])
    p.write_text(p.read_text().replace(f"known_hosts: {lab.known_hosts}", f"known_hosts: {kh}"))
    inv = load_inventory(p)
    marker = tmp_path / "ran"
    run = fanout_hosts(inv, list(inv.hosts), f"touch {marker}", opts(tmp_path, accept_new_host_keys=True))
    r = run.results[0]
    assert r.outcome == FanoutOutcome.FAILURE and r.error_kind == "host_key_changed" and r.attempts == 1
    assert "HOST KEY CHANGED" in r.error and not marker.exists()


def test_sshd_killed_mid_command_fails_that_host_only(fresh_lab, tmp_path):
    inv = load_inventory(fresh_lab.inventory)
    pidfile = tmp_path / "ppid"
    # The remote shell records its parent (the per-connection sshd) then sleeps.
    cmd = f'if [ "${{SSH_CONNECTION##* }}" = {fresh_lab.hosts[0].port} ]; then echo $PPID > {pidfile}; sleep 30; else sleep 2; fi'

    def killer():
        for _ in range(200):
            if pidfile.exists() and pidfile.read_text().strip():
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
                return
            time.sleep(0.05)
    t = threading.Thread(target=killer)
    t.start()
    run = fanout_hosts(inv, list(inv.hosts), cmd, opts(tmp_path, command_timeout=20,
                                                       user_known_hosts=None))
    t.join()
    by = {r.host: r for r in run.results}
    assert by["lab01"].outcome in (FanoutOutcome.FAILURE, FanoutOutcome.TIMEOUT)
    assert "lost" in by["lab01"].error and by["lab01"].attempts == 1
    assert all(by[h].outcome == FanoutOutcome.SUCCESS for h in ("lab02", "lab03", "lab04"))


def test_dns_failure_is_preflight_failed(lab, tmp_path):
    p = write_inventory(tmp_path / "inv.yaml", lab, names=[],
                        extra_hosts="  ghost: {address: no-such-host.invalid}\n")
    inv = load_inventory(p)
    run = fanout_hosts(inv, list(inv.hosts), "true", opts(tmp_path))
    r = run.results[0]
    assert r.outcome == FanoutOutcome.PREFLIGHT_FAILED and r.attempts == 0
    assert r.preflight.failed_check == "dns" and "cannot resolve no-such-host.invalid" in r.error


def test_preflight_checks_have_durations_and_advice(lab, tmp_path):
    p = write_inventory(tmp_path / "inv.yaml", lab, names=["lab01"],
                        extra_hosts="  nokey: {address: 127.0.0.1, identity_file: /nonexistent/key}\n"
                                    "  nouser: {address: 127.0.0.1, user: ''}\n".replace("user: ''", "auth: agent"))
    inv = load_inventory(p)
    ok = run_preflight_checks(inv.host("lab01"))
    assert ok.status == PreflightStatus.OK and [c.name for c in ok.checks] == ["mapping", "dns", "tcp", "auth"]
    bad = run_preflight_checks(inv.host("nokey"))
    assert bad.failed_check in ("auth", "tcp") and bad.error_detail


def test_concurrency_bound_respected(lab_inv, tmp_path):
    counter = tmp_path / "count"
    counter.mkdir()
    # each session registers itself, records how many are live, and leaves
    cmd = (f'f={counter}/$$; touch $f; ls {counter} | grep -v max | wc -l >> {counter}/max; sleep 0.3; rm -f $f')
    run = fanout_hosts(lab_inv, list(lab_inv.hosts), cmd, opts(tmp_path, concurrency=4))
    assert run.exit_code == 0
    peaks = [int(x) for x in (counter / "max").read_text().split()]
    assert len(peaks) == 20 and max(peaks) <= 4


def test_single_host_api_matches_seed(lab_inv):
    r = fanout_ssh(host="lab01", command="echo hi", timeout_sec=30, max_retries=1, preflight=True,
                   inventory=lab_inv, options=FanoutOptions(artifacts_dir=None, user_known_hosts=None))
    assert r.outcome == FanoutOutcome.SUCCESS and r.stdout == "hi\n" and r.attempts == 1 and r.duration_ms >= 0


def test_json_schema_and_exit_codes_via_cli(lab, tmp_path):
    art = tmp_path / "art"
    env = {"INVOKE_FLEET_ARTIFACTS_DIR": str(art), "INVOKE_FLEET_MODE": "canary"}
    p = inv_cmd("fanout", "--inventory", str(lab.inventory), "--hosts", "@odd,!lab01", "--json",
                "echo $((1+1))", env=env)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert set(doc) >= {"run_id", "command", "mode", "interrupted", "exit_code", "counts", "results",
                        "artifacts_dir", "duration_ms"}
    assert [r["host"] for r in doc["results"]] == [f"lab{i:02d}" for i in range(3, 21, 2)]
    for r in doc["results"]:
        assert set(r) == {"host", "outcome", "command", "user", "exit_code", "attempts", "duration_ms",
                          "error", "error_kind", "stdout", "stderr", "preflight", "collected"}
        assert r["stdout"] == "2\n" and r["outcome"] == "SUCCESS"
    p = inv_cmd("fanout", "--inventory", str(lab.inventory), "--hosts", "lab01,lab02", "exit 1", env=env)
    assert p.returncode == 1 and "FAILURE" in p.stdout and "Traceback" not in p.stderr
    p = inv_cmd("fanout", "--inventory", str(lab.inventory), "--hosts", "lab99", "true", env=env)
    assert p.returncode == 2 and "unknown host 'lab99'" in p.stderr and "Traceback" not in p.stderr


def test_stream_gather_and_collect_via_cli(lab, tmp_path):
    art = tmp_path / "art"
    env = {"INVOKE_FLEET_ARTIFACTS_DIR": str(art)}
    p = inv_cmd("fanout", "--inventory", str(lab.inventory), "--hosts", "lab01,lab02,lab03", "--stream",
                "echo same", env=env)
    assert p.returncode == 0
    assert sorted(ln for ln in p.stdout.splitlines() if "| same" in ln) == [
        "lab01 | same", "lab02 | same", "lab03 | same"]
    p = inv_cmd("fanout", "--inventory", str(lab.inventory), "--hosts", "lab01,lab02,lab03,lab05", "--gather",
                "echo same", env=env)
    assert "lab[01-03,05] (4)" in p.stdout and p.stdout.count("same") == 1
    src = tmp_path / "remote-file.txt"
    src.write_text("collected!")
    p = inv_cmd("fanout", "--inventory", str(lab.inventory), "--hosts", "lab01", "--collect", str(src),
                "--json", "true", env=env)
    doc = json.loads(p.stdout)
    got = doc["results"][0]["collected"]
    assert len(got) == 1 and Path(got[0]).read_text() == "collected!"


def test_sigint_aborts_in_flight_hosts_prints_summary_exits_130(lab, tmp_path):
    art = tmp_path / "art"
    env = dict(os.environ, INVOKE_FLEET_ARTIFACTS_DIR=str(art), INVOKE_FLEET_MODE="off")
    env["INVOKE_FLEET_MODE"] = "canary"
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "--search-root", str(ROOT), "fanout",
                             "--inventory", str(lab.inventory), "--all", "--concurrency", "5",
                             "--canary", "lab01", "sleep 2; sleep 20"],
                            cwd=str(ROOT), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(4.5)  # canary done at ~2s? no: canary sleeps 22s; interrupt while it runs
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "ABORTED" in out and "[interrupted]" in out and "Traceback" not in err


def test_secrets_never_in_logs_or_artifacts(lab, tmp_path, monkeypatch):
    secret = "s3cr3t-token-value-XYZ"
    monkeypatch.setenv("SLACK_BOT_TOKEN", secret)
    monkeypatch.setenv("OPENCODE_PASSWORD", secret)
    inv = load_inventory(lab.inventory)
    run = fanout_hosts(inv, list(inv.hosts)[:3], "echo fine", opts(tmp_path))
    for f in Path(run.artifacts_dir).rglob("*"):
        if f.is_file():
            assert secret not in f.read_text()


def test_local_and_ssh_transports_give_the_same_result_shape(lab, tmp_path):
    """The same command through the SSH transport (lab01) and the local one (auth: local)."""
    p = write_inventory(tmp_path / "inv.yaml", lab, names=["lab01"], extra_hosts="  here: {auth: local}\n")
    inv = load_inventory(p)
    cmd = "printf x; exit 3"
    # the transports themselves: one attempt's session, connected, run, released
    runner = FanoutRunner(inv, cmd, opts(tmp_path))
    got = {}
    for name in ("lab01", "here"):
        link = runner.link(inv.host(name))
        sess = link.open()
        link.dial(sess)
        try:
            got[name] = sess.run(cmd, 10, threading.Event())
        finally:
            link.release(sess, False)
    runner.finish()
    assert isinstance(runner.link(inv.host("here")), LocalLink)
    assert got["lab01"] == got["here"] == ExecResult(3, "x", "")

    # and through the whole runner: preflight, attempts, result, artifacts
    def shape(r):
        return (r.outcome, r.exit_code, r.stdout, r.stderr, r.attempts, r.error, r.error_kind, r.preflight.ok,
                r.user)
    lines = []
    run = fanout_hosts(inv, [inv.host("lab01"), inv.host("here")], cmd, opts(tmp_path),
                       on_output=lambda h, s, ln: lines.append((h, s, ln)))
    by = {r.host: r for r in run.results}
    assert shape(by["lab01"]) == shape(by["here"]) == (FanoutOutcome.FAILURE, 3, "x", "", 1, "Exit code 3", "exit",
                                                       True, lab.user)
    assert sorted(lines) == [("here", "stdout", "x"), ("lab01", "stdout", "x")]
    d = Path(run.artifacts_dir)
    assert (d / "lab01.stdout").read_text() == (d / "here.stdout").read_text() == "x"

    # a timeout ends both the same way
    run = fanout_hosts(inv, [inv.host("lab01"), inv.host("here")], "sleep 5", opts(tmp_path, command_timeout=1))
    assert [(r.outcome, r.exit_code, r.error_kind, r.attempts) for r in run.results] == \
        [(FanoutOutcome.TIMEOUT, None, "command_timeout", 1)] * 2
    # the one difference kept: a local command is never repeated, even with retry_on_exit
    run = fanout_hosts(inv, [inv.host("lab01"), inv.host("here")], cmd, opts(tmp_path, retry_on_exit=True))
    assert [r.attempts for r in run.results] == [2, 1]


def test_mode_off_runs_here_once_and_collects_here(lab_inv, tmp_path):
    src = tmp_path / "here.txt"
    src.write_text("from here")
    runner = FanoutRunner(lab_inv, "echo local-$((6*7))", opts(tmp_path, collect=(str(src),)))
    r = runner.add_local("local")
    run = runner.finish()
    assert (r.host, r.outcome, r.stdout, r.attempts, r.user, r.preflight) == (
        "local", FanoutOutcome.SUCCESS, "local-42\n", 1, None, None)
    assert run.results == [r] and Path(r.collected[0]).read_text() == "from here"
    assert (Path(run.artifacts_dir) / "local.stdout").read_text() == "local-42\n"


def test_warm_pool_lends_the_connection_to_the_next_run(lab_inv, tmp_path):
    pool = ConnectionPool(idle=60)
    try:
        for i in range(2):
            runner = FanoutRunner(lab_inv, "echo hi", opts(tmp_path), pool=pool)
            try:
                r = runner.run_hosts([lab_inv.host("lab01")])[0]
            finally:
                runner.finish()
            assert (r.outcome, r.stdout, r.attempts) == (FanoutOutcome.SUCCESS, "hi\n", 1)
            assert (r.preflight is None) == (i == 1)  # a warm connection skips preflight
        assert (pool.dials, pool.reused, len(pool)) == (1, 1, 1)
    finally:
        pool.close()


def test_every_host_has_its_output_files_empty_ones_too_made_once_the_hosts_are_done(lab_inv, tmp_path):
    """A stream's file is opened at its first byte; the files of what was not streamed (an empty
    output) are made when the run ends: every ended host has both, byte-exact."""
    from fleet.ssh.runner import fanout_hosts

    hosts = [lab_inv.host("lab01"), lab_inv.host("lab02")]
    cmd = 'if [ "$FLEET_X" ]; then :; fi; printf "a\\nb"; echo err >&2'
    run = fanout_hosts(lab_inv, hosts, cmd, shared_opts(tmp_path))
    quiet = fanout_hosts(lab_inv, hosts[:1], "true", shared_opts(tmp_path))
    d, q = Path(run.artifacts_dir), Path(quiet.artifacts_dir)
    assert [(d / f"{h}.stdout").read_bytes() for h in ("lab01", "lab02")] == [b"a\nb", b"a\nb"]
    assert (d / "lab02.stderr").read_bytes() == b"err\n"
    assert (q / "lab01.stdout").read_bytes() == b"" and (q / "lab01.stderr").read_bytes() == b""

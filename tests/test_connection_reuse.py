"""One SSH connection shared across invocations (OpenSSH ControlMaster), and the commands that wait
riding out a dropped connection: each against its own real sshd on loopback, so its log and its
per-connection processes belong to the test alone."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    Pod,
    SSHServer,
    cleanup_pod,
    free_port,
    make_pod,
    one_line_error,
    start_sshd,
    wait_until,
    with_signal,
)


@pytest.fixture
def own_sshd(tmp_path: Path) -> Iterator[SSHServer]:
    server = start_sshd(tmp_path / "sshd", free_port())
    yield server
    kill_connections(server)
    with_signal(server.pid, signal.SIGTERM)


@pytest.fixture(params=["openssh", "paramiko"])
def client(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def pod_over(tmp_path: Path, source_repo: Path, own_sshd: SSHServer, client: str) -> Iterator[Pod]:
    made = make_pod("ssh", tmp_path, source_repo, own_sshd)
    made.set(SSH_CLIENT=client)
    short = Path(tempfile.mkdtemp(prefix="wfc-", dir="/tmp"))  # a socket path must stay short
    made.extra_env["WORKFLOW_SSH_CONTROL_DIR"] = str(short / "ctl")
    yield made
    cleanup_pod(made)
    shutil.rmtree(short, ignore_errors=True)


def logins(server: SSHServer) -> int:
    """TCP connections the sshd accepted (each logs one "Accepted publickey")."""
    log = server.directory / f"sshd.{server.port}.log"
    return log.read_text().count("Accepted publickey") if log.exists() else 0


def connection_pids(server: SSHServer) -> list[int]:
    """sshd's per-connection processes: the listener's children."""
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children")
    return [int(pid) for pid in children.read_text().split()] if children.exists() else []


def kill_connections(server: SSHServer) -> int:
    pids = connection_pids(server)
    for pid in pids:
        with_signal(pid, signal.SIGKILL)
    return len(pids)


def agent_waiting(pod: Pod, before: frozenset[str] = frozenset(), op: bytes = b"task-wait") -> set[str]:
    """pids of the pod agent's ``op`` calls for this pod (a call in flight over SSH), less ``before``."""
    marker = str(pod.outputs / "_control").encode()
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in cmdline and b"\0" + op + b"\0" in cmdline + b"\0" and entry.name not in before:
            found.add(entry.name)
    return found


def master_pid(pod: Pod) -> int:
    control = Path(pod.extra_env["WORKFLOW_SSH_CONTROL_DIR"])
    sockets = [p for p in control.iterdir() if p.is_socket()]
    assert len(sockets) == 1, sockets
    shown = subprocess.run(["ssh", "-o", f"ControlPath={sockets[0]}", "-O", "check", "x"], text=True,
                           capture_output=True, timeout=30)
    assert "Master running (pid=" in shown.stderr, shown.stderr
    return int(shown.stderr.split("pid=")[1].split(")")[0])


@pytest.mark.parametrize("client", ["openssh"])
def test_three_commands_one_tcp_connection_in_a_private_socket_dir(pod_over: Pod, own_sshd: SSHServer):
    control = Path(pod_over.extra_env["WORKFLOW_SSH_CONTROL_DIR"])
    control.mkdir(mode=0o755)
    os.chmod(control, 0o755)
    for args in (("fsm-status",), ("pod-status",), ("task-list",)):
        assert pod_over.wf(*args).returncode == 0, args
    assert logins(own_sshd) == 1
    assert stat.S_IMODE(control.stat().st_mode) == 0o700  # made private before any socket is put there
    sockets = [p for p in control.iterdir() if p.is_socket()]
    assert len(sockets) == 1 and stat.S_IMODE(sockets[0].stat().st_mode) & 0o077 == 0
    # disconnect closes it; the next command opens one fresh connection
    closed = pod_over.wf("disconnect")
    assert closed.returncode == 0 and "closed the shared SSH connection" in closed.stdout
    wait_until(lambda: not any(p.is_socket() for p in control.iterdir()), 10, what="socket removed")
    assert "no shared SSH connection" in pod_over.wf("disconnect").stdout
    assert pod_over.wf("fsm-status").returncode == 0
    assert logins(own_sshd) == 2


@pytest.mark.parametrize("client", ["openssh"])
def test_killed_or_frozen_master_is_replaced_transparently(pod_over: Pod, own_sshd: SSHServer):
    assert pod_over.wf("fsm-status").returncode == 0
    with_signal(master_pid(pod_over), signal.SIGKILL)  # a stale socket is left behind
    again = pod_over.wf("fsm-status", "--debug")
    assert again.returncode == 0, again.stderr
    assert "1 connection(s)" in again.stderr and "Traceback" not in again.stderr
    frozen = master_pid(pod_over)
    os.kill(frozen, signal.SIGSTOP)  # a master that stops answering: replaced within a short bound
    try:
        started = time.monotonic()
        third = pod_over.wf("fsm-status", "--debug")
        assert third.returncode == 0, third.stderr
        assert time.monotonic() - started < 15
    finally:
        os.kill(frozen, signal.SIGKILL)
    assert logins(own_sshd) == 3


@pytest.mark.parametrize("client", ["openssh"])
def test_host_key_change_refused_with_a_master_in_place(pod_over: Pod, own_sshd: SSHServer, tmp_path: Path):
    assert pod_over.wf("fsm-status").returncode == 0  # a master now exists and the key is pinned
    known_hosts = pod_over.env_file.parent / "known_hosts"
    pinned = known_hosts.read_text()
    # the pod is re-created at the same address: a different machine (host key) answers there
    kill_connections(own_sshd)
    with_signal(own_sshd.pid, signal.SIGTERM)
    wait_until(lambda: not Path(f"/proc/{own_sshd.pid}").exists(), 10, what="old sshd gone")
    impostor = start_sshd(tmp_path / "impostor", own_sshd.port)
    try:
        (impostor.directory / "authorized_keys").write_text((own_sshd.directory / "id_ed25519.pub").read_text())
        refused = pod_over.wf("fsm-status")
        assert refused.returncode == 3, refused.stderr
        assert "does not match the one pinned in" in one_line_error(refused)
        assert known_hosts.read_text() == pinned
    finally:
        kill_connections(impostor)
        with_signal(impostor.pid, signal.SIGTERM)


def test_task_wait_rides_out_killed_ssh_connections(pod_over: Pod, own_sshd: SSHServer):
    assert pod_over.wf("task-run", "--id", "t1", "--cmd", "sleep 6; echo done; exit 7").returncode == 0
    waiter = subprocess.Popen([*wait_argv(pod_over), "task-wait", "--id", "t1"], env=wait_env(pod_over), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: agent_waiting(pod_over), 60, what="task-wait's call running on the pod")
        assert kill_connections(own_sshd) > 0
        out, err = waiter.communicate(timeout=120)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.communicate()
    assert waiter.returncode == 7, err  # the task's true result, not a transport failure
    assert "reconnecting" in err and "reconnected" in err and "Traceback" not in err
    assert "task t1: failed" in out


def test_task_logs_follow_goes_on_where_it_stopped(pod_over: Pod, own_sshd: SSHServer):
    script = "for i in $(seq 1 40); do echo line-$i; sleep 0.2; done"
    assert pod_over.wf("task-run", "--id", "t3", "--cmd", script).returncode == 0
    follower = subprocess.Popen([*wait_argv(pod_over), "task-logs", "--id", "t3", "--follow"], env=wait_env(pod_over),
                                text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: agent_waiting(pod_over, op=b"task-logs"), 60, what="the task-logs call on the pod")
        time.sleep(1.5)  # some lines shown
        assert kill_connections(own_sshd) > 0
        out, err = follower.communicate(timeout=120)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()
    assert follower.returncode == 0, err
    assert out.split() == [f"line-{i}" for i in range(1, 41)]  # every line once: none lost, none repeated
    assert "reconnecting" in err and "reconnected" in err and "Traceback" not in err


def test_lost_connection_is_exit_3_with_one_line(pod_over: Pod, own_sshd: SSHServer):
    assert pod_over.wf("task-run", "--id", "t2", "--cmd", "sleep 60").returncode == 0
    for reconnect, lines in (("0", 1), ("2", 2)):
        before = frozenset(agent_waiting(pod_over))  # an orphaned op of the round before may linger
        waiter = subprocess.Popen([*wait_argv(pod_over), "--set", f"RECONNECT_SECS={reconnect}", "task-wait",
                                   "--id", "t2"], env=wait_env(pod_over), text=True, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        try:
            wait_until(lambda seen=before: agent_waiting(pod_over, seen), 60, what="the task-wait call on the pod")
            if reconnect == "2":  # nothing answers any more
                os.kill(own_sshd.pid, signal.SIGSTOP)
            kill_connections(own_sshd)
            _, err = waiter.communicate(timeout=120)
        finally:
            os.kill(own_sshd.pid, signal.SIGCONT)
            if waiter.poll() is None:
                waiter.kill()
                waiter.communicate()
        assert waiter.returncode == 3, err
        shown = [line for line in err.splitlines() if line.strip()]
        assert len(shown) == lines, shown
        assert shown[-1].startswith("workflow.sh task-wait: lost the connection to "), shown
        if reconnect == "2":
            assert "reconnecting (for up to 2s)" in shown[0] and "no reconnect within RECONNECT_SECS=2s" in shown[-1]
        assert "Traceback" not in err


def wait_argv(pod: Pod) -> list[str]:
    from conftest import WORKFLOW

    return [str(WORKFLOW), "--env", str(pod.env_file)]


def wait_env(pod: Pod) -> dict[str, str]:
    import sys

    return {**os.environ, "WORKFLOW_VENV": sys.prefix, **pod.extra_env}


def ssh_masters_for(control: Path) -> list[str]:
    """Running ssh processes whose command line names a socket in ``control`` (masters included)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"ssh") and any(str(control).encode() in word for word in cmdline):
            found.append(entry.name)
    return found


@pytest.mark.parametrize("client", ["openssh"])
def test_persist_0_one_connection_per_command_closed_at_exit(pod_over: Pod, own_sshd: SSHServer):
    pod_over.set(CONNECTION_PERSIST_SECS="0")
    control = Path(pod_over.extra_env["WORKFLOW_SSH_CONTROL_DIR"])
    # a fresh pod: the agent is missing, uploaded, and the call repeated (three remote commands), and
    # task-run's own calls after it: all over the command's one connection
    ran = pod_over.wf("task-run", "--id", "p0", "--cmd", "echo zero", "--debug")
    assert ran.returncode == 0, ran.stderr
    assert "1 connection(s)" in ran.stderr and "1 agent upload(s)" in ran.stderr, ran.stderr
    assert int(ran.stderr.split("connection(s), ")[1].split()[0]) >= 3, ran.stderr
    assert logins(own_sshd) == 1
    # closed at exit: no socket left, no master process
    assert not [p for p in control.iterdir() if p.is_socket()]
    wait_until(lambda: not ssh_masters_for(control), 10, what="the command's master gone")
    # a short read-only call too, and nothing shared across invocations
    for number, args in enumerate((("task-wait", "--id", "p0"), ("fsm-status",)), start=2):
        shown = pod_over.wf(*args, "--debug")
        assert shown.returncode == 0, shown.stderr
        assert "1 connection(s)" in shown.stderr, shown.stderr
        assert logins(own_sshd) == number
        assert not [p for p in control.iterdir() if p.is_socket()]
    assert "no shared SSH connection" in pod_over.wf("disconnect").stdout
    wait_until(lambda: not ssh_masters_for(control), 10, what="no master left")


@pytest.mark.parametrize("client", ["openssh"])
def test_cold_short_call_starts_its_login_before_the_imports(pod_over: Pod, own_sshd: SSHServer):
    started = "login started during the imports"
    first = pod_over.wf("fsm-status", "--debug")  # a cold start with no record yet: the usual path
    assert first.returncode == 0 and started not in first.stderr, first.stderr
    for round_number in (1, 2):
        assert pod_over.wf("disconnect").returncode == 0
        cold = pod_over.wf("fsm-status", "--debug")
        assert cold.returncode == 0, cold.stderr
        assert started in cold.stderr and "1 connection(s), 1 remote command(s)" in cold.stderr, cold.stderr
        assert "state:" in cold.stdout or cold.stdout.strip(), cold.stdout
        warm = pod_over.wf("fsm-status", "--debug")  # rides the master that call opened
        assert warm.returncode == 0 and "0 connection(s)" in warm.stderr and started not in warm.stderr
        assert logins(own_sshd) == 1 + round_number
    # the config changed: the record is not trusted (the usual path), then made again
    pod_over.set(SSH_KEEPALIVE_SECS="20")
    for expected in (False, True):
        assert pod_over.wf("disconnect").returncode == 0
        cold = pod_over.wf("fsm-status", "--debug")
        assert cold.returncode == 0, cold.stderr
        assert (started in cold.stderr) is expected, cold.stderr
    assert pod_over.wf("disconnect").returncode == 0
    off = pod_over.wf("fsm-status", "--debug", env={"WORKFLOW_PRELAUNCH": "0"})
    assert off.returncode == 0 and started not in off.stderr


@pytest.mark.parametrize("client", ["openssh"])
def test_a_prelaunched_call_that_does_not_match_is_killed_and_the_command_goes_on(pod_over: Pod,
                                                                                    own_sshd: SSHServer):
    import marshal

    from conftest import REPO_ROOT

    assert pod_over.wf("fsm-status").returncode == 0  # writes the record
    control = pod_over.extra_env["WORKFLOW_SSH_CONTROL_DIR"]
    records = [p for p in (REPO_ROOT / ".workflow" / "cache").glob("prelaunch-*.marshal")
               if marshal.loads(p.read_bytes())["socket"].startswith(control)]
    assert len(records) == 1, records
    record = marshal.loads(records[0].read_bytes())
    marker = f"wf-mismatch-{os.getpid()}"
    record["argv"] = [*record["argv"][:-1], f"sleep 20 # {marker}"]  # say, an agent of another version
    records[0].write_bytes(marshal.dumps(record))
    assert pod_over.wf("disconnect").returncode == 0
    started = time.monotonic()
    shown = pod_over.wf("fsm-status", "--debug")
    assert shown.returncode == 0, shown.stderr
    assert time.monotonic() - started < 60 and "login started during the imports" not in shown.stderr
    assert "Traceback" not in shown.stderr

    def sleeping() -> list[str]:
        found = []
        for entry in Path("/proc").iterdir():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(entry.name)
            except OSError:
                continue
        return found

    wait_until(lambda: not sleeping(), 20, what="the mismatched ssh killed")
    # the record is made again from what the command really ran: the next cold start uses it
    assert pod_over.wf("disconnect").returncode == 0
    again = pod_over.wf("fsm-status", "--debug")
    assert again.returncode == 0 and "login started during the imports" in again.stderr, again.stderr

"""Tracked tasks (task-run, task-status, task-wait, task-list, task-logs, task-kill) with real tmux
supervisors, on the `local` target and over the loopback sshd.

Behaviours that are the same on both targets use the parametrized ``pod`` fixture; purely pod-side
ones use ``local_pod`` (a fatal line mid-run, a config echo and tmux kill-server -> lost run on both);
more supervisor cases are in test_tasks_supervisor.py; the dropped-connection
test needs ``ssh_pod``. Every process a test starts is stopped: the pod fixtures kill their tmux
server, and ``_reap_task_processes`` below SIGKILLs anything still carrying a task's marker.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import WORKFLOW, Pod, one_line_error, wait_until

ID_RULE = "use 1-128 characters from A-Z a-z 0-9 . _ -"
DDP_TINY = Path(__file__).resolve().parent / "data" / "ddp_tiny.py"
TERMINAL = {"success", "failed", "timed_out", "stalled", "cancelled", "lost"}


# ----------------------------------------------------------------------------- helpers


def task_dir(pod: Pod, task_id: str) -> Path:
    return pod.outputs / "_tasks" / task_id


def status(pod: Pod, task_id: str) -> dict[str, Any]:
    """status.json as the pod wrote it (atomic replace: never half-written)."""
    return json.loads((task_dir(pod, task_id) / "status.json").read_text())


def spec(pod: Pod, task_id: str) -> dict[str, Any]:
    return json.loads((task_dir(pod, task_id) / "spec.json").read_text())


def unique_sleep(pod: Pod, whole: int) -> str:
    """A `sleep` command line no other test (or other test run) uses, to find its process."""
    return f"sleep {whole}.{int(pod.socket[-8:], 16)}"


def log_text(pod: Pod, task_id: str) -> str:
    try:
        return (task_dir(pod, task_id) / "stdout.log").read_text(errors="replace")
    except FileNotFoundError:
        return ""


def state_of(pod: Pod, task_id: str) -> str | None:
    try:
        return status(pod, task_id)["state"]
    except (OSError, ValueError, KeyError):
        return None


def run_task(pod: Pod, task_id: str, cmd: str, *extra: str) -> subprocess.CompletedProcess[str]:
    result = pod.wf("task-run", "--id", task_id, "--cmd", cmd, *extra)
    assert result.returncode == 0, result.stderr
    return result


def wait_state(pod: Pod, task_id: str, *states: str, timeout: float = 60) -> dict[str, Any]:
    wait_until(lambda: state_of(pod, task_id) in states, timeout, what=f"task {task_id} to be {states}")
    return status(pod, task_id)


def wait_task(pod: Pod, task_id: str, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return pod.wf("task-wait", "--id", task_id, *extra, timeout=timeout)


def task_status_json(pod: Pod, task_id: str) -> dict[str, Any]:
    result = pod.wf("task-status", task_id, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["task"]


def _proc_read(pid: int, name: str) -> bytes:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    stat = _proc_read(pid, "stat").decode(errors="replace")
    return bool(stat) and stat[stat.rfind(")") + 2:][:1] not in ("Z", "X", "")


def pids_with_marker(marker: str) -> set[int]:
    """Live processes whose environment holds WF_TASK_MARKER=<marker>."""
    needle = b"\0WF_TASK_MARKER=" + marker.encode() + b"\0"
    found = set()
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            pid = int(name)
            if needle in b"\0" + _proc_read(pid, "environ") + b"\0" and _alive(pid):
                found.add(pid)
    return found


def pids_with_cmdline(fragment: str) -> set[int]:
    """Live processes whose command line contains ``fragment``."""
    needle = fragment.encode()
    found = set()
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            pid = int(name)
            if needle in _proc_read(pid, "cmdline").replace(b"\0", b" ") and _alive(pid):
                found.add(pid)
    return found


def _parent(pid: int) -> int:
    stat = _proc_read(pid, "stat").decode(errors="replace")
    return int(stat[stat.rfind(")") + 2:].split()[1]) if stat else 0


def pod_side_followers(pod: Pod) -> set[int]:
    """This pod's agent task-logs processes: python3 -I -S <outputs>/_control/agent-*.pyz task-logs."""
    return {pid for pid in pids_with_cmdline(f"{pod.outputs}/_control/agent-")
            if _proc_read(pid, "cmdline").split(b"\0")[4:5] == [b"task-logs"]}


def _markers(pod: Pod) -> list[str]:
    found = []
    for path in pod.outputs.glob("_tasks/**/spec.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            found.append(json.loads(path.read_text())["marker"])
    return found


@pytest.fixture(autouse=True)
def _reap_task_processes(request: pytest.FixtureRequest):
    """After the pod fixtures' teardown (their tmux server is killed), SIGKILL any process that still
    carries one of the test's task markers, so a failing test leaves nothing running, and remove the
    pod's tmux socket file (tmux 3.3 leaves it behind after kill-server)."""
    yield
    for value in list(request.node.funcargs.values()):
        if isinstance(value, Pod):
            for marker in _markers(value):
                for pid in pids_with_marker(marker):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            if value.tmux("has-session").returncode != 0 and "no server running" in value.tmux("ls").stderr:
                tmux_dir = Path(os.environ.get("TMUX_TMPDIR") or "/tmp") / f"tmux-{os.getuid()}"
                (tmux_dir / value.socket).unlink(missing_ok=True)


# ----------------------------------------------------------------------------- the basics


def test_success_and_failure_with_its_code(pod: Pod, tmp_path: Path):
    gate = tmp_path / "gate"
    ok_cmd = f"echo hello from ok1; while [ ! -e {gate} ]; do sleep 0.05; done; sleep 1; echo bye"
    started = run_task(pod, "ok1", ok_cmd)
    assert "task ok1 started" in started.stdout
    assert "task-logs --id ok1 --follow" in started.stdout and "task-wait --id ok1" in started.stdout
    assert f"tmux -L {pod.socket} attach" in started.stdout
    # task-run returned at once: the task waits for the gate, which is not there yet
    assert state_of(pod, "ok1") in ("pending", "running")
    run_task(pod, "bad1", "echo about to fail; exit 3")
    assert (task_dir(pod, "ok1") / "command.sh").read_text() == ok_cmd
    wait_state(pod, "ok1", "running")
    gate.touch()
    waited = wait_task(pod, "ok1")
    assert waited.returncode == 0, waited.stderr
    assert "task ok1: success (exit 0)" in waited.stdout
    waited = wait_task(pod, "bad1")
    assert waited.returncode == 3, (waited.stdout, waited.stderr)
    assert "failed [nonzero_exit]" in waited.stdout

    record = status(pod, "ok1")
    assert record["schema_version"] == 1 and record["id"] == "ok1" and record["state"] == "success"
    assert record["command"] == ok_cmd
    for key in ("created_utc", "started_utc", "ended_utc", "heartbeat_utc"):
        assert record[key].endswith("Z"), key
    assert record["created_utc"] <= record["started_utc"] <= record["ended_utc"]
    assert isinstance(record["pid"], int) and isinstance(record["pid_start_time"], int)
    assert record["exit_code"] == 0 and record["signal"] is None and record["failure_class"] is None
    assert record["timeouts"]["kill_grace_secs"] == 2
    assert {"timeout_secs", "stall_secs"} <= set(record["timeouts"])
    assert (task_dir(pod, "ok1") / "stdout.log").read_text() == "hello from ok1\nbye\n"

    bad = status(pod, "bad1")
    assert (bad["state"], bad["exit_code"], bad["failure_class"]) == ("failed", 3, "nonzero_exit")

    text = pod.wf("task-status", "bad1")
    assert text.returncode == 0, text.stderr
    assert "state:     failed  [nonzero_exit]" in text.stdout
    assert "exit:      3" in text.stdout and "duration:" in text.stdout and "| about to fail" in text.stdout
    data = task_status_json(pod, "ok1")
    assert (data["state"], data["exit_code"], data["last_lines"]) == ("success", 0, ["hello from ok1", "bye"])
    assert data["duration_s"] >= 0.9


def test_running_task_status_list_and_logs(pod: Pod, tmp_path: Path):
    run_task(pod, "first", "echo one; echo two; echo three")
    assert wait_task(pod, "first").returncode == 0
    gate = tmp_path / "gate"
    run_task(pod, "second", f"for i in 1 2 3; do echo line $i; done; "
                            f"while [ ! -e {gate} ]; do sleep 0.1; done; echo after gate")
    wait_until(lambda: "line 3" in log_text(pod, "second"), 60, what="second's first lines")
    wait_until(lambda: status(pod, "second").get("heartbeat_utc"), 30, what="a heartbeat")

    text = pod.wf("task-status", "--id", "second")
    assert "state:     running" in text.stdout and "heartbeat: " in text.stdout and "s ago" in text.stdout
    running = task_status_json(pod, "second")
    assert running["state"] == "running" and running["heartbeat_age_s"] is not None
    assert running["exit_code"] is None and running["ended_utc"] is None

    listed = pod.wf("task-list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [t["id"] for t in json.loads(listed.stdout)["tasks"]] == ["second", "first"]  # newest first
    table = pod.wf("task-list").stdout.splitlines()
    assert table[0].split()[:3] == ["ID", "STATE", "EXIT"]
    assert table[1].split()[:2] == ["second", "running"] and table[2].split()[:3] == ["first", "success", "0"]

    tail = pod.wf("task-logs", "--id", "first", "--lines", "2")
    assert (tail.returncode, tail.stdout) == (0, "two\nthree\n")
    everything = pod.wf("task-logs", "--id", "first", "--lines", "0")
    assert everything.stdout == "one\ntwo\nthree\n"

    follow = subprocess.Popen(
        [str(WORKFLOW), "--env", str(pod.env_file), "task-logs", "--id", "second", "--follow"],
        env={**os.environ, "WORKFLOW_VENV": sys.prefix},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        start_new_session=True)
    try:
        time.sleep(1.5)
        assert follow.poll() is None, "task-logs --follow must stream until the task ends"
        gate.touch()
        out, err = follow.communicate(timeout=60)
    finally:
        if follow.poll() is None:
            os.killpg(follow.pid, signal.SIGKILL)
            follow.wait()
    assert follow.returncode == 0, err
    assert out == "line 1\nline 2\nline 3\nafter gate\n"
    assert state_of(pod, "second") == "success"


def test_timeout_and_stall(pod: Pod):
    run_task(pod, "slow", "echo start; sleep 60; echo never", "--timeout-secs", "2", "--stall-secs", "0")
    run_task(pod, "quiet", "echo once; sleep 60; echo never", "--stall-secs", "2", "--timeout-secs", "0")
    waited = wait_task(pod, "slow")
    assert waited.returncode == 124, (waited.stdout, waited.stderr)
    assert "timed_out [timeout]" in waited.stdout
    waited = wait_task(pod, "quiet")
    assert waited.returncode == 125, (waited.stdout, waited.stderr)
    assert "stalled [stalled]" in waited.stdout
    slow, quiet = status(pod, "slow"), status(pod, "quiet")
    assert (slow["state"], slow["failure_class"]) == ("timed_out", "timeout")
    assert "timeout after 2s" in slow["reason"] and slow["timeouts"]["timeout_secs"] == 2
    assert slow["exit_code"] is None and slow["signal"] in (signal.SIGTERM, signal.SIGKILL)  # stopped by us
    assert (quiet["state"], quiet["failure_class"]) == ("stalled", "stalled")
    assert "no output for 2s" in quiet["reason"] and quiet["timeouts"]["stall_secs"] == 2
    for task_id in ("slow", "quiet"):
        assert "never" not in (task_dir(pod, task_id) / "stdout.log").read_text()
        assert status(pod, task_id)["cleanup"] == "done"
        assert not pids_with_marker(spec(pod, task_id)["marker"])


# ----------------------------------------------------------------------------- fatal patterns


OOM_LINE = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"


def test_fatal_pattern_mid_run_stops_fast_and_keeps_context(pod: Pod, tmp_path: Path):
    gate, side = tmp_path / "go", tmp_path / "fatal_written_at"
    cmd = (f"for i in $(seq 1 150); do echo \"step $i loss 2.5\"; done; "
           f"while [ ! -e {gate} ]; do sleep 0.02; done; "
           f"date +%s.%N > {side}; echo \"{OOM_LINE}\"; sleep 60; echo never")
    run_task(pod, "oom", cmd)
    wait_state(pod, "oom", "running")
    wait_until(lambda: "step 150" in log_text(pod, "oom"), 60, what="the steps")
    gate.touch()
    seen_failed = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if state_of(pod, "oom") == "failed":
            seen_failed = time.time()
            break
        time.sleep(0.01)
    assert seen_failed is not None, "the fatal line did not fail the task"
    latency = seen_failed - float(side.read_text())
    assert latency < 3.0, f"fatal line to status failed took {latency:.2f}s"

    waited = wait_task(pod, "oom")
    assert waited.returncode == 1, (waited.stdout, waited.stderr)  # stopped on a fatal pattern: 1
    assert "failed [oom]" in waited.stdout
    record = status(pod, "oom")
    assert (record["state"], record["failure_class"]) == ("failed", "oom")
    assert record["fatal"]["pattern"] == "cuda_oom"
    assert record["fatal"]["lines"] == [OOM_LINE]
    context = record["fatal"]["context"]
    assert len(context) == 101 and context[-1] == OOM_LINE  # the matching line and the 100 before it
    assert context[0] == "step 51 loss 2.5" and context[-2] == "step 150 loss 2.5"
    assert "never" not in (task_dir(pod, "oom") / "stdout.log").read_text()
    started = time.mktime(time.strptime(record["started_utc"][:19], "%Y-%m-%dT%H:%M:%S"))
    ended = time.mktime(time.strptime(record["ended_utc"][:19], "%Y-%m-%dT%H:%M:%S"))
    assert ended - started < 40, "the task was not stopped long before its 60 s sleep ended"
    assert not pids_with_marker(spec(pod, "oom")["marker"])

    text = pod.wf("task-status", "oom")
    assert "state:     failed  [oom]" in text.stdout
    assert f"  > {OOM_LINE}" in text.stdout and "context (101 lines" in text.stdout
    assert "  | step 150 loss 2.5" in text.stdout
    assert task_status_json(pod, "oom")["fatal"]["context"] == context


def test_python_traceback_mid_run(local_pod: Pod):
    script = "print('working', flush=True)\ndef f():\n    raise ValueError('bad shape')\nf()\n"
    (local_pod.root / "tb.py").write_text(script)
    run_task(local_pod, "tb", f"{sys.executable} {local_pod.root / 'tb.py'}; sleep 60; echo never")
    waited = wait_task(local_pod, "tb")
    assert waited.returncode == 1, (waited.stdout, waited.stderr)
    record = status(local_pod, "tb")
    assert (record["state"], record["failure_class"]) == ("failed", "python_exception")
    assert record["fatal"]["pattern"] == "python_traceback"
    lines = record["fatal"]["lines"]
    assert lines[0] == "Traceback (most recent call last):" and lines[-1] == "ValueError: bad shape"
    assert record["fatal"]["context"][0] == "working"
    assert "never" not in log_text(local_pod, "tb")


def test_config_echo_does_not_match(pod: Pod):
    cmd = ('echo "MAX_TRAIN_SAMPLES: 500"; echo "config: nccl_timeout=600 oom_retry=1 error_rate=0.1"; '
           'echo "OutOfMemoryError handler installed"; echo "NCCL WARN retrying connection"; '
           'echo "cuda_oom_guard=on data_error_limit=3"; echo done')
    run_task(pod, "cfg", cmd)
    waited = wait_task(pod, "cfg")
    assert waited.returncode == 0, (waited.stdout, waited.stderr)
    record = status(pod, "cfg")
    assert (record["state"], record["failure_class"], record["fatal"]) == ("success", None, None)
    assert (task_dir(pod, "cfg") / "stdout.log").read_text().splitlines()[-1] == "done"


def test_user_patterns_file(local_pod: Pod, tmp_path: Path):
    patterns = tmp_path / "patterns.txt"
    patterns.write_text("# my project's fatal lines\n\nauth MY_CUSTOM_FATAL\n")
    local_pod.set(TASK_FATAL_PATTERNS_FILE=str(patterns))
    run_task(local_pod, "custom", "echo fine; echo 'boom: MY_CUSTOM_FATAL token expired'; sleep 60")
    waited = wait_task(local_pod, "custom")
    assert waited.returncode == 1, (waited.stdout, waited.stderr)
    record = status(local_pod, "custom")
    assert (record["state"], record["failure_class"]) == ("failed", "auth")
    assert record["fatal"]["lines"] == ["boom: MY_CUSTOM_FATAL token expired"]
    assert "MY_CUSTOM_FATAL" in record["fatal"]["description"]

    before = local_pod.snapshot()
    patterns.write_text("auth MY_CUSTOM_FATAL\nfrobnicate SOMETHING\n")
    refused = local_pod.wf("task-run", "--id", "never", "--cmd", "echo hi")
    assert refused.returncode == 2, (refused.stdout, refused.stderr)
    message = one_line_error(refused)
    assert "line 2" in message and "unknown failure class 'frobnicate'" in message
    patterns.write_text("oom (unclosed\n")
    refused = local_pod.wf("task-run", "--id", "never", "--cmd", "echo hi")
    assert refused.returncode == 2 and "invalid regex" in one_line_error(refused)
    assert not task_dir(local_pod, "never").exists()
    assert local_pod.snapshot() == before


def test_lots_of_output_fast(local_pod: Pod):
    script = ("import sys\nw = sys.stdout.write\n"
              "for i in range(200000):\n    w(f'Step {i}: Loss 1.2345 | LR 3e-4 | Tokens/s 123456\\n')\n")
    run_task(local_pod, "flood", f"{sys.executable} -c \"{script}\"; echo END")
    waited = wait_task(local_pod, "flood", timeout=180)
    assert waited.returncode == 0, (waited.stdout, waited.stderr)
    record = status(local_pod, "flood")
    assert (record["state"], record["fatal"]) == ("success", None)
    lines = (task_dir(local_pod, "flood") / "stdout.log").read_text().splitlines()
    assert len(lines) == 200001 and lines[-1] == "END"
    assert lines[0] == "Step 0: Loss 1.2345 | LR 3e-4 | Tokens/s 123456"
    assert lines[199999] == "Step 199999: Loss 1.2345 | LR 3e-4 | Tokens/s 123456"


# ----------------------------------------------------------------------------- process trees


def test_torchrun_killed_by_timeout_leaves_no_process(local_pod: Pod, tmp_path: Path):
    script = tmp_path / f"ddp_tiny_{os.getpid()}_{time.monotonic_ns()}.py"
    shutil.copy(DDP_TINY, script)
    cmd = (f"OMP_NUM_THREADS=1 {sys.executable} -m torch.distributed.run --standalone --nproc_per_node=2 "
           f"{script} --steps 1000 --sleep 0.5")
    run_task(local_pod, "ddp", cmd, "--timeout-secs", "15")
    marker = spec(local_pod, "ddp")["marker"]
    # torchrun and its two workers all run (the timeout then has a whole tree to stop)
    wait_until(lambda: len(pids_with_cmdline(str(script))) >= 3, 60, what="torchrun and its 2 workers")
    assert len(pids_with_marker(marker)) >= 3
    waited = wait_task(local_pod, "ddp")
    assert waited.returncode == 124, (waited.stdout, waited.stderr)
    record = status(local_pod, "ddp")
    assert (record["state"], record["failure_class"], record["cleanup"]) == ("timed_out", "timeout", "done")
    assert not pids_with_marker(marker)
    assert not pids_with_cmdline(str(script))


def test_task_kill_twice_and_wait_edges(pod: Pod):
    sleeper = unique_sleep(pod, 271)
    run_task(pod, "long", f"echo started; {sleeper}")
    wait_state(pod, "long", "running")
    marker = spec(pod, "long")["marker"]

    short_wait = wait_task(pod, "long", "--timeout-secs", "1")
    assert short_wait.returncode == 123, (short_wait.stdout, short_wait.stderr)
    assert "still running" in short_wait.stderr
    assert state_of(pod, "long") == "running" and pids_with_marker(marker)

    killed = pod.wf("task-kill", "--id", "long")
    assert killed.returncode == 0, killed.stderr
    assert "task long: cancelled" in killed.stdout
    record = status(pod, "long")
    assert (record["state"], record["failure_class"], record["cleanup"]) == ("cancelled", "killed", "done")
    assert not pids_with_marker(marker) and not pids_with_cmdline(sleeper)
    again = pod.wf("task-kill", "--id", "long")
    assert again.returncode == 0, again.stderr
    assert "had already ended: cancelled" in again.stdout
    waited = wait_task(pod, "long")
    assert waited.returncode == 130 and "cancelled [killed]" in waited.stdout

    before = pod.snapshot()
    for command in ("task-kill", "task-wait", "task-logs"):
        start = time.monotonic()
        missing = pod.wf(command, "--id", "nosuch")
        assert missing.returncode == 5, (command, missing.stdout, missing.stderr)
        assert "no task 'nosuch'" in one_line_error(missing) and "long" in missing.stderr
        assert time.monotonic() - start < 60  # at once, not after a wait
    missing = pod.wf("task-status", "nosuch")
    assert missing.returncode == 5 and "no task 'nosuch'" in one_line_error(missing)
    assert pod.snapshot() == before


def test_tmux_kill_server_makes_task_lost(pod: Pod):
    sleeper = unique_sleep(pod, 314)
    run_task(pod, "tk", f"echo up; {sleeper}")
    wait_state(pod, "tk", "running")
    wait_until(lambda: pids_with_cmdline(sleeper), 30, what="the task's sleep")
    pod.tmux("kill-server")
    data = wait_until(lambda: (d := task_status_json(pod, "tk"))["state"] == "lost" and d, 30, what="lost")
    assert data["failure_class"] == "lost" and data["reason"]
    wait_until(lambda: not pids_with_cmdline(sleeper), 30, what="the task's sleep to be stopped")
    assert not pids_with_marker(spec(pod, "tk")["marker"])
    waited = wait_task(pod, "tk")
    assert waited.returncode == 126 and "lost [lost]" in waited.stdout


def test_killed_supervisor_makes_task_lost_on_read(local_pod: Pod):
    pod = local_pod
    sleeper = unique_sleep(pod, 272)
    run_task(pod, "sk", f"echo up; {sleeper}")
    record = wait_state(pod, "sk", "running")
    wait_until(lambda: pids_with_cmdline(sleeper), 30, what="the task's sleep")
    os.kill(record["supervisor_pid"], signal.SIGKILL)
    wait_until(lambda: not _alive(record["supervisor_pid"]), 30, what="the supervisor to die")
    assert pids_with_cmdline(sleeper), "the child outlives its SIGKILLed supervisor until a read"
    listed = pod.wf("task-list", "--json")  # any read tells the truth, task-list's too
    assert listed.returncode == 0, listed.stderr
    assert [(t["id"], t["state"]) for t in json.loads(listed.stdout)["tasks"]] == [("sk", "lost")]
    data = task_status_json(pod, "sk")
    assert (data["state"], data["failure_class"]) == ("lost", "lost")
    assert "supervisor is gone" in data["reason"]
    assert not pids_with_cmdline(sleeper)
    assert not pids_with_marker(spec(pod, "sk")["marker"])
    after = status(pod, "sk")
    assert after["cleanup"] == "done" and after["leftovers_stopped"] >= 1 and after["ended_utc"]
    assert wait_task(pod, "sk").returncode == 126


def test_ssh_dropped_while_task_runs(ssh_pod: Pod, tmp_path: Path):
    pod = ssh_pod
    gate = tmp_path / "gate"
    run_task(pod, "drop", "for i in 1 2 3 4 5; do echo tick $i; sleep 0.2; done; "
                          f"while [ ! -e {gate} ]; do sleep 0.05; done; "
                          "for i in 6 7 8 9 10; do echo tick $i; sleep 0.2; done; echo finished")
    follow = subprocess.Popen(
        [str(WORKFLOW), "--env", str(pod.env_file), "task-logs", "--id", "drop", "--follow"],
        env={**os.environ, "WORKFLOW_VENV": sys.prefix},
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        assert follow.stdout is not None
        seen = [follow.stdout.readline() for _ in range(5)]
        assert seen == [f"tick {i}\n".encode() for i in range(1, 6)]
        assert state_of(pod, "drop") == "running"  # held at the gate
        followers = wait_until(lambda: pod_side_followers(pod), 30, what="the pod-side task-logs")
        connections = {_parent(pid) for pid in followers}  # sshd's session processes
        assert all(b"sshd" in _proc_read(pid, "cmdline") for pid in connections), connections
    finally:
        os.killpg(follow.pid, signal.SIGKILL)  # the CLI (paramiko in-process): the connection drops
        follow.wait()
    control = Path(os.environ.get("WORKFLOW_SSH_CONTROL_DIR", "/nonexistent"))
    if not any(p.is_socket() for p in control.glob("cm-*")):  # paramiko: the CLI's own connection drops with it
        wait_until(lambda: not any(_alive(pid) for pid in connections), 30, what="sshd to drop the connection")
    # (OpenSSH: the shared connection stays up; only the CLI's session on it closes)
    assert state_of(pod, "drop") == "running"
    gate.touch()
    waited = wait_task(pod, "drop")
    assert waited.returncode == 0, (waited.stdout, waited.stderr)
    data = task_status_json(pod, "drop")
    assert (data["state"], data["exit_code"]) == ("success", 0)
    log = (task_dir(pod, "drop") / "stdout.log").read_text()
    assert log == "".join(f"tick {i}\n" for i in range(1, 11)) + "finished\n"
    # the pod-side follower behind the dropped connection ended too (at the latest with the task)
    wait_until(lambda: not pod_side_followers(pod), 30, what="the pod-side task-logs to end")


# ----------------------------------------------------------------------------- the command and the id


EXACT_CMD = r'''echo "double \"quoted\" and 'single'"; echo '$HOME' stays literal; echo "sub=$(echo sub)"
printf '%s\n' 'back\slash' "two\\backslashes"; x=1; echo "x=$x;y"  # a comment; echo not-run
echo `echo tick` && echo 'a;b' || echo never
echo "last line without newline"'''


def test_command_runs_exactly_as_written(pod: Pod, tmp_path: Path):
    run_task(pod, "exact", EXACT_CMD)
    waited = wait_task(pod, "exact")
    assert waited.returncode == 0, (waited.stdout, waited.stderr)
    assert (task_dir(pod, "exact") / "command.sh").read_bytes() == EXACT_CMD.encode()
    script = tmp_path / "same.sh"
    script.write_text(EXACT_CMD)
    expected = subprocess.run(["bash", str(script)], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert "$HOME stays literal" in expected.stdout and "not-run" not in expected.stdout  # sanity
    assert (task_dir(pod, "exact") / "stdout.log").read_text() == expected.stdout
    assert status(pod, "exact")["command"] == EXACT_CMD


BAD_IDS = ["../x", "a/b", "-x", "a b", "a" * 129, "", "a..b", "é", ".hidden", "x;rm"]


@pytest.mark.parametrize("bad", BAD_IDS, ids=lambda v: repr(v)[:12])
def test_bad_task_ids_are_refused(local_pod: Pod, bad: str):
    before = local_pod.snapshot()
    refused = local_pod.wf("task-run", f"--id={bad}", "--cmd", "echo hi")
    assert refused.returncode == 2, (refused.stdout, refused.stderr)
    assert ID_RULE in one_line_error(refused)
    command = ("task-wait", "task-kill", "task-logs")[BAD_IDS.index(bad) % 3]  # each reader checks ids too
    other = local_pod.wf(command, f"--id={bad}")
    assert other.returncode == 2 and ID_RULE in one_line_error(other), (command, other.stderr)
    assert local_pod.snapshot() == before
    assert not (local_pod.outputs / "_tasks").exists() or not any((local_pod.outputs / "_tasks").iterdir())


def test_bad_id_over_ssh_changes_nothing(ssh_pod: Pod):
    before = ssh_pod.snapshot()
    for bad in ("../x", "a" * 129, ""):
        refused = ssh_pod.wf("task-run", f"--id={bad}", "--cmd", "echo hi")
        assert refused.returncode == 2 and ID_RULE in one_line_error(refused)
    assert ssh_pod.snapshot() == before


def test_existing_id_refused_unless_force(pod: Pod):
    run_task(pod, "again", "echo old run; sleep 300")
    wait_state(pod, "again", "running")
    refused = pod.wf("task-run", "--id", "again", "--cmd", "echo new")
    assert refused.returncode == 7, (refused.stdout, refused.stderr)
    assert "already exists" in one_line_error(refused) and "--force" in refused.stderr
    still = pod.wf("task-run", "--id", "again", "--cmd", "echo new", "--force")
    assert still.returncode == 7 and "still running" in one_line_error(still)
    assert (task_dir(pod, "again") / "command.sh").read_text() == "echo old run; sleep 300"

    assert pod.wf("task-kill", "--id", "again").returncode == 0
    old_marker = spec(pod, "again")["marker"]
    replaced = pod.wf("task-run", "--id", "again", "--cmd", "echo new run", "--force")
    assert replaced.returncode == 0, replaced.stderr
    assert "the previous again is kept in" in replaced.stdout
    kept = list((pod.outputs / "_tasks" / "_replaced").iterdir())
    assert len(kept) == 1 and kept[0].name.startswith("again.")
    assert str(kept[0]) in replaced.stdout
    assert (kept[0] / "stdout.log").read_text() == "old run\n"
    assert json.loads((kept[0] / "status.json").read_text())["state"] == "cancelled"
    assert json.loads((kept[0] / "spec.json").read_text())["marker"] == old_marker
    assert wait_task(pod, "again").returncode == 0
    assert (task_dir(pod, "again") / "stdout.log").read_text() == "new run\n"
    listed = json.loads(pod.wf("task-list", "--json").stdout)["tasks"]
    assert [t["id"] for t in listed] == ["again"]  # replaced directories are not tasks


def test_longest_id_and_unicode_command(local_pod: Pod):
    longest = "A1._-" + "z" * 123
    assert len(longest) == 128
    run_task(local_pod, longest, "echo 'café ✓ naïve'")
    assert wait_task(local_pod, longest).returncode == 0
    assert log_text(local_pod, longest) == "café ✓ naïve\n"
    assert (task_dir(local_pod, longest) / "command.sh").read_bytes() == "echo 'café ✓ naïve'".encode()


def test_corrupt_status_file_is_reported(local_pod: Pod):
    run_task(local_pod, "fine", "echo fine")
    run_task(local_pod, "broken", "echo broken")
    assert wait_task(local_pod, "fine").returncode == 0 and wait_task(local_pod, "broken").returncode == 0
    (task_dir(local_pod, "broken") / "status.json").write_text('{"state": "succ')
    result = local_pod.wf("task-status", "broken")
    assert result.returncode == 6, (result.stdout, result.stderr)
    assert "corrupt" in one_line_error(result) and "status.json" in result.stderr
    listed = local_pod.wf("task-list", "--json")
    assert listed.returncode == 0, listed.stderr
    states = {t["id"]: t["state"] for t in json.loads(listed.stdout)["tasks"]}
    assert states == {"fine": "success", "broken": "unreadable"}


# ----------------------------------------------------------------------------- long lines, raw bytes, timestamps


def test_last_lines_of_long_lines(local_pod: Pod):
    run_task(local_pod, "wide", 'for i in $(seq -w 1 20); do printf "line$i %01000d\\n" 0; done')
    assert wait_task(local_pod, "wide").returncode == 0
    expected = [f"line{i:02d} " + "0" * 1000 for i in range(11, 21)]
    assert log_text(local_pod, "wide").splitlines()[10:] == expected  # sanity: the log itself is right
    assert task_status_json(local_pod, "wide")["last_lines"] == expected
    tail = local_pod.wf("task-logs", "--id", "wide", "--lines", "10")
    assert tail.stdout.splitlines() == expected


def test_command_with_a_non_utf8_byte_runs_exactly(local_pod: Pod):
    cmd = "echo caf\udce9"  # argv bytes b"echo caf\xe9" (Latin-1), as a shell passes them
    result = local_pod.wf("task-run", "--id", "latin1", "--cmd", cmd)
    assert result.returncode == 0, result.stderr
    assert (task_dir(local_pod, "latin1") / "command.sh").read_bytes() == b"echo caf\xe9"
    assert wait_task(local_pod, "latin1").returncode == 0
    assert (task_dir(local_pod, "latin1") / "stdout.log").read_bytes() == b"caf\xe9\n"


def test_last_output_utc_is_a_timestamp(local_pod: Pod):
    run_task(local_pod, "quiet", "echo once; sleep 3")
    assert wait_task(local_pod, "quiet").returncode == 0
    value = status(local_pod, "quiet")["last_output_utc"]
    assert value is None or re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", value), value


def test_task_environment_run_variables_secrets_and_extra_env(pod: Pod):
    """A task sees --env K=V, workflow.env's run variables (RUNENV_X as X) and secrets, which stay out of
    every file the tool writes but the 0600 pod env file."""
    pod.set(NCCL_DEBUG="INFO", RUNENV_MY_FLAG="on", WANDB_API_KEY="wandb-secret-0123")
    out = pod.root / "seen-env"
    cmd = f'echo "$NCCL_DEBUG $MY_FLAG $EXTRA $WANDB_API_KEY $DATA_DIR" > {out}'
    run_task(pod, "envy", cmd, "--env", "EXTRA=from-cli")
    assert wait_task(pod, "envy").returncode == 0
    assert out.read_text().split() == ["INFO", "on", "from-cli", "wandb-secret-0123", str(pod.root / "data")]
    for path in task_dir(pod, "envy").iterdir():
        assert b"wandb-secret-0123" not in path.read_bytes(), path.name
    assert not (task_dir(pod, "envy") / ".env.json").exists()  # read by the supervisor, then removed

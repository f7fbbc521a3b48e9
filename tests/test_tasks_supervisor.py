"""The supervisor's harder cases: a stale heartbeat, a tree that ignores SIGTERM, a supervisor that
dies while it stops a tree, --force with a bad --workdir, a traceback amid continuous output, the
OOM-killer evidence and the heartbeat during a run's final sync.

Most run real tmux supervisors through workflow.sh on the `local` target (test_tasks.py covers
both targets). The OOM and final-sync cases run the supervisor itself in a subprocess, outside
tmux, with its evidence sources (the kernel log, the cgroup's oom_kill counter) or its rsync
replaced by files and scripts the test controls. Every process is stopped at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO_ROOT, Pod, one_line_error, wait_until
from test_tasks import (
    OOM_LINE,
    _alive,
    _reap_task_processes,  # noqa: F401 - the autouse fixture, for the tests here too
    log_text,
    pids_with_cmdline,
    pids_with_marker,
    run_task,
    spec,
    state_of,
    status,
    task_dir,
    task_status_json,
    unique_sleep,
    wait_task,
)

from helpers.pod.jsonio import parse_utc, write_json
from helpers.pod.tasks import refresh
from helpers.pod.taskstate import new_record, read_status


def _kill(pids: set[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


# ----------------------------------------------------------------------------- lost, forced kills


def _term_proof(pod: Pod, whole: int) -> tuple[str, str]:
    """A command whose tree ignores SIGTERM: a setsid'd child and the command's own shell."""
    inner, outer = unique_sleep(pod, whole), unique_sleep(pod, whole + 1)
    return (f"setsid bash -c 'trap \"\" TERM; {inner}' & trap '' TERM; echo ready; {outer}",
            f"{inner}|{outer}")


@pytest.mark.parametrize("how", ["timeout", "task-kill"])
def test_tree_ignoring_sigterm_is_killed_after_the_grace(local_pod: Pod, how: str):
    pod = local_pod
    cmd, sleeps = _term_proof(pod, 290 if how == "timeout" else 292)
    extra = ("--timeout-secs", "2") if how == "timeout" else ()
    run_task(pod, "stubborn", cmd, *extra)
    marker = spec(pod, "stubborn")["marker"]
    for sleeper in sleeps.split("|"):
        wait_until(lambda s=sleeper: pids_with_cmdline(s), 30, what=f"{sleeper} to run")
    if how == "task-kill":
        killed = pod.wf("task-kill", "--id", "stubborn")
        assert killed.returncode == 0 and "task stubborn: cancelled" in killed.stdout, killed.stderr
    waited = wait_task(pod, "stubborn")
    assert waited.returncode == (124 if how == "timeout" else 130), (waited.stdout, waited.stderr)
    record = status(pod, "stubborn")
    assert record["state"] == ("timed_out" if how == "timeout" else "cancelled")
    assert record["cleanup"] == "done" and record["signal"] == signal.SIGKILL  # TERM was ignored
    assert not pids_with_marker(marker)
    assert not any(pids_with_cmdline(s) for s in sleeps.split("|"))


def test_supervisor_killed_while_stopping_leaves_nothing_and_wait_ends(local_pod: Pod):
    pod = local_pod
    pod.set(TASK_KILL_GRACE_SECS="120")  # the supervisor is still in its grace period when it dies
    sleeper = unique_sleep(pod, 295)
    run_task(pod, "orphan", f"trap '' TERM; echo '{OOM_LINE}'; {sleeper}")
    wait_until(lambda: status(pod, "orphan").get("cleanup") == "stopping", 30, what="the stop to begin")
    record = status(pod, "orphan")
    assert (record["state"], record["failure_class"]) == ("failed", "oom")
    os.kill(record["supervisor_pid"], signal.SIGKILL)
    wait_until(lambda: not _alive(record["supervisor_pid"]), 10, what="the supervisor to die")
    assert pids_with_cmdline(sleeper)  # left behind, for now
    killed = pod.wf("task-kill", "--id", "orphan")
    assert killed.returncode == 0 and "had already ended: failed" in killed.stdout, killed.stderr
    assert not pids_with_cmdline(sleeper) and not pids_with_marker(spec(pod, "orphan")["marker"])
    after = status(pod, "orphan")
    assert after["cleanup"] == "done" and after["leftovers_stopped"] >= 1
    waited = wait_task(pod, "orphan", timeout=60)
    assert waited.returncode == 1 and "failed [oom]" in waited.stdout, (waited.stdout, waited.stderr)


def test_force_with_a_bad_workdir_changes_nothing(local_pod: Pod):
    pod = local_pod
    run_task(pod, "keep", "echo kept")
    assert wait_task(pod, "keep").returncode == 0
    before = pod.snapshot()
    refused = pod.wf("task-run", "--id", "keep", "--cmd", "echo new", "--force", "--workdir",
                     str(pod.root / "no-such-dir"))
    assert refused.returncode == 2, (refused.stdout, refused.stderr)
    assert "does not exist" in one_line_error(refused)
    assert pod.snapshot() == before
    assert not (pod.outputs / "_tasks" / "_replaced").exists()
    assert log_text(pod, "keep") == "kept\n" and state_of(pod, "keep") == "success"


# ----------------------------------------------------------------------------- a traceback amid other output


CHATTY = """import sys, time, traceback
try:
    raise ValueError("bad shape")
except ValueError:
    traceback.print_exc(file=sys.stdout)
    sys.stdout.flush()
with open(sys.argv[1], "w") as side:
    side.write(repr(time.time()))
for i in range(300):
    print(f"step {i}", flush=True)
    time.sleep(0.2)
"""


def test_traceback_amid_continuous_output_stops_within_a_second(local_pod: Pod, tmp_path: Path):
    pod = local_pod
    script, side = tmp_path / "chatty.py", tmp_path / "exception_printed_at"
    script.write_text(CHATTY)
    run_task(pod, "chatty", f"echo before; {sys.executable} {script} {side}")
    wait_until(lambda: state_of(pod, "chatty") == "failed", 60, interval=0.01, what="failed")
    seen = time.time()
    latency = seen - float(side.read_text())
    assert latency < 2.5, f"exception line to failed took {latency:.2f}s amid output every 0.2 s"
    assert wait_task(pod, "chatty").returncode == 1
    record = status(pod, "chatty")
    assert (record["failure_class"], record["fatal"]["pattern"]) == ("python_exception", "python_traceback")
    context = record["fatal"]["context"]
    assert context[0] == "before" and context[1] == "Traceback (most recent call last):"
    assert context[-1] == "ValueError: bad shape"  # the matching lines end the context: no later output
    assert not pids_with_cmdline(str(script))


# ----------------------------------------------------------------------------- the supervisor outside tmux


DRIVER = """import os, sys
sys.path.insert(0, {repo!r})
from helpers.pod import exitcause, supervisor

def _read(name):
    try:
        with open(os.path.join({evidence!r}, name)) as handle:
            return handle.read()
    except FileNotFoundError:
        return None

exitcause.oom_kill_count = lambda: None if _read("oom_kill") is None else int(_read("oom_kill"))
exitcause._kernel_log = lambda: _read("kmsg")
sys.exit(supervisor.supervise_main([{task!r}]))
"""


class Bare:
    """One task directory run by a supervisor in a subprocess (no tmux), evidence files in ``evidence``."""

    def __init__(self, base: Path, command: str, sync: dict[str, Any] | None = None,
                 path_prefix: Path | None = None, task_path: Path | None = None) -> None:
        self.dir = task_path or base / "task"
        self.evidence = base / "evidence"
        self.dir.mkdir(parents=True)
        self.evidence.mkdir()
        (self.dir / "command.sh").write_text(command)
        self.marker = f"bare-{os.getpid()}-{time.monotonic_ns()}"
        task_spec = {"id": self.dir.name, "argv": ["bash", str(self.dir / "command.sh")], "workdir": str(self.dir),
                     "timeout_secs": 120, "stall_secs": 0, "kill_grace_secs": 2, "lost_after_secs": 3,
                     "log": "stdout.log", "marker": self.marker, "sync": sync}
        write_json(str(self.dir / "spec.json"), task_spec)
        write_json(str(self.dir / "status.json"), new_record(self.dir.name, command, task_spec))
        driver = base / "driver.py"
        driver.write_text(DRIVER.format(repo=str(REPO_ROOT), evidence=str(self.evidence), task=str(self.dir)))
        env = dict(os.environ)
        if path_prefix is not None:
            env["PATH"] = f"{path_prefix}:{env['PATH']}"
        self.proc = subprocess.Popen([sys.executable, str(driver)], env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, start_new_session=True)

    def status(self) -> dict[str, Any]:
        return read_status(str(self.dir)) or {}

    def finish(self, timeout: float = 60) -> dict[str, Any]:
        assert self.proc.wait(timeout=timeout) == 0
        return self.status()

    def stop(self) -> None:
        _kill(pids_with_marker(self.marker))
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def bare(tmp_path: Path) -> Iterator[list[Bare]]:
    made: list[Bare] = []
    yield made
    for one in made:
        one.stop()


def _beats_after(task: Bare, count: int) -> None:
    """Wait until the supervisor has written ``count`` more heartbeats (it samples the task's
    processes just before each)."""
    seen: list[str] = []

    def newer() -> bool:
        beat = task.status().get("heartbeat_utc")
        if beat and beat not in seen:
            seen.append(beat)
        return len(seen) > count

    wait_until(newer, 30, what=f"{count} heartbeats")


def test_stale_heartbeat_makes_task_lost(local_pod: Pod, tmp_path: Path, bare: list[Bare]):
    """A hung supervisor (SIGSTOPped; lost after 3 s here, TASK_LOST_AFTER_SECS's job): task-status
    says lost with the reason, and no process of the task is left. (It runs outside tmux: tmux
    continues a pane process that SIGSTOP stopped.)"""
    pod = local_pod
    sleeper = f"sleep 281.{os.getpid()}"
    task = Bare(tmp_path, f"echo up; {sleeper}", task_path=task_dir(pod, "hung"))
    bare.append(task)
    wait_until(lambda: pids_with_cmdline(sleeper), 30, what="the task's sleep")
    record = wait_until(lambda: (r := task.status()).get("heartbeat_utc") and r, 30, what="a heartbeat")
    assert task_status_json(pod, "hung")["state"] == "running"
    os.kill(task.proc.pid, signal.SIGSTOP)
    try:
        data = wait_until(lambda: (d := task_status_json(pod, "hung"))["state"] == "lost" and d, 30,
                          interval=0.5, what="lost after 3 s without a heartbeat")
        assert data["failure_class"] == "lost" and "no heartbeat for" in data["reason"]
        assert data["cleanup"] == "done"
        assert not pids_with_cmdline(sleeper) and not pids_with_marker(task.marker)
        wait_until(lambda: task.proc.poll() is not None, 10, what="the hung supervisor to be stopped")
        assert record["supervisor_pid"] == task.proc.pid and task.proc.returncode == -signal.SIGKILL
        assert wait_task(pod, "hung").returncode == 126
    finally:
        _kill({task.proc.pid}, signal.SIGCONT)


@pytest.mark.parametrize(("tail", "exit_code", "expected"), [
    ("exit 1", 1, "nonzero_exit"),  # the shared cgroup's counter rose, but nothing of ours was SIGKILLed
    ("exit 137", 137, "oom"),  # the counter rose and the task was SIGKILLed (a shell's 128+9)
    ("kill -9 $$", None, "oom"),
])
def test_oom_counter_needs_a_sigkill_of_the_task(tmp_path: Path, bare: list[Bare], tail: str,
                                                 exit_code: int | None, expected: str):
    evidence = tmp_path / "evidence"
    task = Bare(tmp_path, f"echo 1 > {evidence}/oom_kill; echo training; {tail}")
    (evidence / "oom_kill").write_text("0")
    bare.append(task)
    record = task.finish()
    assert (record["state"], record["exit_code"], record["failure_class"]) == ("failed", exit_code, expected)
    assert record["cleanup"] == "done"


def test_oom_killed_child_of_the_shell_is_oom(tmp_path: Path, bare: list[Bare]):
    """`bash command.sh` exits 137 when the kernel OOM-kills its child: the kernel log names the
    child's pid (a descendant of the supervisor), not bash's."""
    sleeper = f"sleep 296.{os.getpid()}"
    task = Bare(tmp_path, f"echo loading; {sleeper}")  # the trainer is the script's last command
    bare.append(task)
    pid = next(iter(wait_until(lambda: pids_with_cmdline(sleeper), 30, what="the child")))
    assert task.marker and pid in pids_with_marker(task.marker)
    _beats_after(task, 2)
    (task.evidence / "kmsg").write_text(
        "6,1,2,-;python invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0\n"
        f"3,5,6,-;Out of memory: Killed process {pid} (sleep) total-vm:123kB, anon-rss:99kB\n")
    os.kill(pid, signal.SIGKILL)
    record = task.finish()
    assert (record["state"], record["exit_code"], record["signal"]) == ("failed", 137, None)
    assert record["failure_class"] == "oom" and "OOM killer" in record["reason"]
    assert (task.dir / "stdout.log").read_text().startswith("loading\n")  # then bash's "Killed" line


def test_sigkilled_child_without_oom_evidence_is_killed(tmp_path: Path, bare: list[Bare]):
    sleeper = f"sleep 297.{os.getpid()}"
    task = Bare(tmp_path, f"{sleeper}")
    bare.append(task)
    (task.evidence / "kmsg").write_text("3,5,6,-;Out of memory: Killed process 1 (init)\n")  # not ours
    pid = next(iter(wait_until(lambda: pids_with_cmdline(sleeper), 30, what="the child")))
    _beats_after(task, 1)
    os.kill(pid, signal.SIGKILL)
    record = task.finish()
    assert (record["state"], record["exit_code"], record["failure_class"]) == ("failed", 137, "killed")


def test_heartbeat_goes_on_during_the_final_sync(tmp_path: Path, bare: list[Bare]):
    """A run whose final local_sync copy takes longer than lost_after (3 s here) stays running
    with a fresh heartbeat, and ends success; status reads meanwhile never take it for lost."""
    real = shutil.which("rsync")
    assert real, "rsync is required"
    fakebin, flag = tmp_path / "bin", tmp_path / "final-sync-started"
    fakebin.mkdir()
    (fakebin / "rsync").write_text(f'#!/bin/sh\ncase " $* " in *" --checksum "*) touch {flag}; sleep 6;; esac\n'
                                   f'exec {real} "$@"\n')
    (fakebin / "rsync").chmod(0o755)
    src, dst = tmp_path / "fast", tmp_path / "durable"
    dst.mkdir()
    task = Bare(tmp_path, f"mkdir -p {src}; echo weights > {src}/model.txt; echo trained",
                sync={"from": str(src), "to": str(dst), "interval": 3600}, path_prefix=fakebin)
    bare.append(task)
    wait_until(flag.exists, 30, what="the final sync to start")
    assert task.status()["state"] == "running"
    states: list[str] = []

    def read() -> bool:  # what task-status does: refresh, which marks a stale task lost
        states.append(refresh(str(task.dir), task.status())["state"])
        return states[-1] != "running"

    wait_until(read, 30, interval=0.2, what="the run to end")
    assert set(states) <= {"running", "success"} and states[-1] == "success", states
    record = task.finish()
    assert (record["state"], record["cleanup"], record["sync_error"]) == ("success", "done", None)
    assert (dst / "model.txt").read_text() == "weights\n"
    beat, ended = parse_utc(record["heartbeat_utc"]), parse_utc(record["ended_utc"])
    assert beat is not None and ended is not None and abs(ended - beat) < 1.0
    assert json.loads((task.dir / "status.json").read_text())["state"] == "success"


WRAP_UP = ("exec python3 -c \"import subprocess, time; subprocess.run(['sh', '-c', 'sleep 1.5; echo trained']); "
           "open('workers-done', 'w').close(); time.sleep({linger})\"\n")


def test_tmux_closed_while_the_launcher_wraps_up_keeps_the_exit_code(tmp_path: Path, bare: list[Bare]):
    """torchrun outlives its workers by a moment: a SIGHUP (the tmux server killed) that comes after the
    workers ended 0 but before the launcher exited waits for its exit code: the run is a success, not lost
    (found by the randomized chaos campaign: the rerun trained a finished row a second time)."""
    task = Bare(tmp_path, WRAP_UP.format(linger=2))
    bare.append(task)
    wait_until((task.dir / "workers-done").exists, 30, interval=0.05, what="the workers to end")
    os.kill(task.proc.pid, signal.SIGHUP)
    record = task.finish()
    assert (record["state"], record["exit_code"], record.get("failure_class")) == ("success", 0, None), record


def test_tmux_closed_while_workers_run_stops_the_task(tmp_path: Path, bare: list[Bare]):
    task = Bare(tmp_path, "exec python3 -c \"import subprocess; subprocess.run(['sleep', '300'])\"\n")
    bare.append(task)
    wait_until(lambda: task.status().get("state") == "running", 30, what="the task to run")
    time.sleep(1.0)  # the supervisor samples its processes every 0.5 s
    began = time.monotonic()
    os.kill(task.proc.pid, signal.SIGHUP)
    record = task.finish()
    assert record["state"] == "lost" and "SIGHUP" in record["reason"], record
    assert time.monotonic() - began < 10


def test_a_launcher_that_hangs_after_its_workers_is_stopped_after_the_wrap_up_wait(tmp_path: Path,
                                                                                  bare: list[Bare]):
    task = Bare(tmp_path, WRAP_UP.format(linger=300))
    bare.append(task)
    wait_until((task.dir / "workers-done").exists, 30, interval=0.05, what="the workers to end")
    began = time.monotonic()
    os.kill(task.proc.pid, signal.SIGHUP)
    record = task.finish()
    assert record["state"] == "lost", record
    assert 4 < time.monotonic() - began < 20

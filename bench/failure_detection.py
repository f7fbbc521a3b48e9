#!/usr/bin/env python3
"""Benchmark: how fast workflow.sh's task supervisor notices a failure, against 5 s log polling.

What it measures (one run, `local` target, real tmux supervisors):

1. Fatal-line detection. A task prints ordinary lines for a random 0.5-5.5 s, writes a
   high-resolution timestamp (`date +%s.%N`) to a side file, prints
   ``torch.OutOfMemoryError: CUDA out of memory. ...`` and sleeps 60 s. Measured: from that
   timestamp to the moment status.json says ``failed`` (status.json polled every 10 ms).
   Baseline: the same command started with subprocess, watched the way the old tool did it
   (``while kill -0 $pid; do sleep 5; grep -E pattern log && kill $pid && break; done``, here
   in Python with time.sleep(5) and grep), measured from the same timestamp to the kill.
2. Stall detection. A task prints a line every 0.1 s for a random 0.5-5.5 s, writing the
   timestamp right after each line, then sleeps, run with ``--stall-secs 3``. Measured:
   (time status.json says ``stalled``) - (time of the last output + 3 s). Baseline: a 5 s
   poller that declares a stall when the log has not grown for 3 s, measured the same way.

3. End to end over SSH (a loopback sshd, the default OpenSSH shared connection): the same fatal
   task started with task-run, then `workflow.sh task-wait` run at once; measured from the
   timestamp written on the pod to task-wait returning on the client (what a user waits for).
   Baseline: a client polling the task's log over SSH every 5 s (`ssh host grep -qE PATTERN log`,
   what the replaced tool did), measured from the same timestamp to the poll that sees it.

N trials each (default 5; the same random delays for both sides). Baseline trials run
concurrently with each other (they sleep), never with workflow.sh's trials. Prints medians,
min/max and the baseline/workflow.sh ratio. Takes about 1-2 minutes. It uses its own
temporary pod directories and its own tmux socket, and removes both at the end.

Run it from the checkout (any python 3.9+; workflow.sh itself runs in WORKFLOW_VENV):

    WORKFLOW_VENV=/tmp/devvenv /tmp/devvenv/bin/python bench/failure_detection.py [--trials 5] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / "infra_scripts" / "workflow.sh"
OOM_LINE = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
# the cuda_oom pattern of helpers/pod/fatal.py, as an ERE for grep
OOM_ERE = r"(CUDA|HIP) out of memory\.|OutOfMemoryError: |CUDA error: out of memory"
STALL_SECS = 3.0
POLL_SECS = 5.0


class Pod:
    """A private `local` pod: temp directories, a config file and a tmux socket of its own."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="wf-bench-"))
        self.outputs = self.base / "outputs"
        self.socket = f"wfbench-{uuid.uuid4().hex[:10]}"
        self.env_file = self.base / "workflow.env"
        values = {
            "OPS_REMOTE_OUTPUTS_DIR": self.outputs, "OPS_REMOTE_REPO": self.base / "repo",
            "REMOTE_ENV_PATH": self.base / "project.env", "DATA_DIR": self.base / "data",
            "TMUX_SOCKET": self.socket, "REQUIRE_CUDA": "0", "CHECK_DATA": "0",
            "REMOTE_PYTHON_BIN": sys.executable, "TASK_KILL_GRACE_SECS": "2",
            "LOCAL_ARTIFACTS_DIR": self.base / "artifacts",
        }
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        self.env = {**os.environ, "WORKFLOW_VENV": os.environ.get("WORKFLOW_VENV", sys.prefix)}
        self.env.pop("WORKFLOW_PROFILE", None)

    def wf(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(WORKFLOW), "--env", str(self.env_file), *args], env=self.env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                              timeout=180)

    def state(self, task_id: str) -> Optional[str]:
        try:
            return json.loads((self.outputs / "_tasks" / task_id / "status.json").read_text())["state"]
        except (OSError, ValueError, KeyError):
            return None

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)  # supervisors get SIGHUP and stop their tasks
        time.sleep(0.5)
        tmux_dir = Path(os.environ.get("TMUX_TMPDIR") or "/tmp") / f"tmux-{os.getuid()}"
        (tmux_dir / self.socket).unlink(missing_ok=True)  # tmux 3.3 leaves the socket file behind
        shutil.rmtree(self.base, ignore_errors=True)


def fatal_cmd(delay: float, side: Path) -> str:
    steps = max(1, round(delay / 0.1))
    return (f'for i in $(seq 1 {steps}); do echo "step $i loss 2.5"; sleep 0.1; done; '
            f'date +%s.%N > {side}; echo "{OOM_LINE}"; sleep 60')


def stall_cmd(delay: float, side: Path) -> str:
    steps = max(1, round(delay / 0.1))  # the stamp is rewritten right after each line: the last is the last output
    return (f'for i in $(seq 1 {steps}); do echo "step $i loss 2.5"; date +%s.%N > {side}; sleep 0.1; done; '
            "sleep 60")


def read_stamp(side: Path) -> float:
    deadline = time.monotonic() + 5
    while True:
        try:
            return float(side.read_text())
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def run_workflow_trial(pod: Pod, task_id: str, cmd: str, side: Path, want: str, extra: List[str],
                       offset: float) -> float:
    started = pod.wf("task-run", "--id", task_id, "--cmd", cmd, *extra)
    if started.returncode != 0:
        raise SystemExit(f"task-run failed: {started.stderr.strip()}")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        state = pod.state(task_id)
        if state == want:
            seen = time.time()
            break
        if state not in (None, "pending", "running"):
            raise SystemExit(f"task {task_id} ended {state}, expected {want}")
        time.sleep(0.01)
    else:
        raise SystemExit(f"task {task_id} never became {want}")
    delay = seen - (read_stamp(side) + offset)
    pod.wf("task-wait", "--id", task_id, "--timeout-secs", "60")  # stopped and cleaned up before the next
    return delay


def run_baseline_trial(cmd: str, side: Path, log: Path, check: Callable[[Path], bool], offset: float) -> float:
    """The old tool: start the command, then every 5 s look at its log; kill it when check() fires."""
    with log.open("wb") as out:
        proc = subprocess.Popen(["bash", "-c", cmd], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        while proc.poll() is None:
            time.sleep(POLL_SECS)
            if check(log):
                os.killpg(proc.pid, signal.SIGTERM)
                detected = time.time()
                proc.wait()
                return detected - (read_stamp(side) + offset)
        raise SystemExit("baseline command ended by itself")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def grep_fatal(log: Path) -> bool:
    return subprocess.run(["grep", "-qE", OOM_ERE, str(log)]).returncode == 0


def quiet_for_stall(log: Path) -> bool:
    return log.stat().st_size > 0 and time.time() - log.stat().st_mtime >= STALL_SECS


def parallel(jobs: List[Callable[[], float]]) -> List[float]:
    results: List[Optional[float]] = [None] * len(jobs)
    errors: List[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = jobs[i]()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return [r for r in results if r is not None]


def row(name: str, values: List[float]) -> str:
    return (f"{name:<28} {statistics.median(values):8.3f} {min(values):8.3f} {max(values):8.3f}   "
            + " ".join(f"{v:.2f}" for v in values))


def ssh_end_to_end(delays: List[float]) -> Tuple[List[float], List[float]]:
    """Over a loopback sshd: from the fatal line printed on the pod to `task-wait` returning on the client,
    against polling the task's log over SSH every 5 s (`ssh host grep -qE PATTERN stdout.log`)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import benchpods

    e2e: List[float] = []
    polled: List[float] = []
    with benchpods.workspace("detect-ssh") as base, benchpods.sshd(base) as server:
        control = tempfile.mkdtemp(prefix="wfd-", dir="/tmp")
        pod = benchpods.make_pod("ssh", base, server)
        pod.extra_env["WORKFLOW_SSH_CONTROL_DIR"] = os.path.join(control, "ctl")
        known = server.pinned_known_hosts(base / "pinned_known_hosts")
        try:
            for i, delay in enumerate(delays):
                side = base / f"e2e{i}.t"
                benchpods.must(pod.wf("task-run", "--id", f"e2e{i}", "--cmd", fatal_cmd(delay, side)))
                waited = pod.wf("task-wait", "--id", f"e2e{i}", timeout=120)
                returned = time.time()
                if waited.returncode == 0:
                    raise SystemExit("task-wait: the fatal task did not fail")
                e2e.append(returned - read_stamp(side))
            for i, delay in enumerate(delays):
                side = base / f"poll{i}.t"
                benchpods.must(pod.wf("task-run", "--id", f"poll{i}", "--cmd", fatal_cmd(delay, side)))
                log = pod.outputs / "_tasks" / f"poll{i}" / "stdout.log"
                while True:
                    time.sleep(POLL_SECS)
                    probe = subprocess.run([*server.ssh_argv(known), "grep", "-qE", shlex_quote(OOM_ERE), str(log)],
                                           stdin=subprocess.DEVNULL, capture_output=True)
                    if probe.returncode == 0:
                        polled.append(time.time() - read_stamp(side))
                        break
                pod.wf("task-kill", "--id", f"poll{i}")
        finally:
            pod.wf("disconnect")
            pod.tmux("kill-server")
            shutil.rmtree(control, ignore_errors=True)
    return e2e, polled


def shlex_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    opts = parser.parse_args()
    for tool in ("tmux", "grep", "bash"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is required")
    rng = random.Random(opts.seed)
    fatal_delays = [rng.uniform(0.5, 5.5) for _ in range(opts.trials)]
    stall_delays = [rng.uniform(0.5, 5.5) for _ in range(opts.trials)]
    began = time.monotonic()
    pod = Pod()
    scratch = pod.base / "baseline"
    scratch.mkdir()
    try:
        print(f"workflow.sh trials (N={opts.trials}, local target, tmux socket {pod.socket}) ...", flush=True)
        wf_fatal = [run_workflow_trial(pod, f"fatal{i}", fatal_cmd(d, pod.base / f"fatal{i}.t"),
                                       pod.base / f"fatal{i}.t", "failed", [], 0.0)
                    for i, d in enumerate(fatal_delays)]
        wf_stall = [run_workflow_trial(pod, f"stall{i}", stall_cmd(d, pod.base / f"stall{i}.t"),
                                       pod.base / f"stall{i}.t", "stalled",
                                       ["--stall-secs", str(int(STALL_SECS))], STALL_SECS)
                    for i, d in enumerate(stall_delays)]
        print("5 s polling baseline trials (concurrent with each other) ...", flush=True)
        base_fatal = parallel([
            (lambda i=i, d=d: run_baseline_trial(fatal_cmd(d, scratch / f"fatal{i}.t"), scratch / f"fatal{i}.t",
                                                 scratch / f"fatal{i}.log", grep_fatal, 0.0))
            for i, d in enumerate(fatal_delays)])
        base_stall = parallel([
            (lambda i=i, d=d: run_baseline_trial(stall_cmd(d, scratch / f"stall{i}.t"), scratch / f"stall{i}.t",
                                                 scratch / f"stall{i}.log", quiet_for_stall, STALL_SECS))
            for i, d in enumerate(stall_delays)])
        print("end to end over SSH (loopback sshd): task-wait vs polling the log over ssh every 5 s ...", flush=True)
        ssh_wait, ssh_poll = ssh_end_to_end(fatal_delays)
    finally:
        pod.close()

    print()
    print(f"{'detection delay (s)':<28} {'median':>8} {'min':>8} {'max':>8}   trials")
    print(row("fatal line  workflow.sh", wf_fatal))
    print(row("fatal line  5 s polling", base_fatal))
    print(row("stall (>3s) workflow.sh", wf_stall))
    print(row("stall (>3s) 5 s polling", base_stall))
    print("end to end over SSH: fatal line printed on the pod -> the client knows")
    print(row("  task-wait returns", ssh_wait))
    print(row("  5 s poll over ssh", ssh_poll))
    print()
    for what, ours, theirs in (("fatal line", wf_fatal, base_fatal), ("stall", wf_stall, base_stall),
                               ("end to end over SSH", ssh_wait, ssh_poll)):
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import benchpods

        benchpods.record("failure_detection", f"{what}: workflow.sh / 5 s polling",
                         statistics.median(ours) / statistics.median(theirs))
        mine, old = statistics.median(ours), statistics.median(theirs)
        print(f"{what}: workflow.sh notices {old / mine:.0f}x sooner (median {mine:.3f} s vs {old:.3f} s)"
              if mine > 0 else f"{what}: median {mine:.3f} s vs {old:.3f} s")
    print(f"(total {time.monotonic() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

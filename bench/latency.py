#!/usr/bin/env python3
"""bench/latency: what a read-only workflow.sh command costs, cold and warm, against `ssh host true`.

Run (from the repo root; WORKFLOW_VENV = the venv workflow.sh uses, default: this python's prefix):

    WORKFLOW_VENV=.workflow/venv .workflow/venv/bin/python bench/latency.py [--rounds 9] [--runs 10000]

In one run against a loopback OpenSSH sshd it starts itself (tests/conftest.py start_sshd), with
two throwaway pods (one holding a finished task and a 4-row finished campaign, one a finished
campaign of --runs runs, built as bench/sweep_status_10k.py builds it), it warms up once (agent
upload, bytecode) and then interleaves ROUNDS rounds of whole processes, each timed with
time.perf_counter around subprocess.run:

    ssh host true (cold)         ssh -F /dev/null -p PORT -i KEY ... root@127.0.0.1 true
    ssh host true (ControlMaster) the same over an OpenSSH master opened once for this run
    the agent's fsm-status alone  over that master, and over a fresh login of its own (where a warm and
                                  a cold fsm-status go)
    for each of fsm-status, task-status, pod-status, sweep-status (4 rows), sweep-status (N runs):
      cold: `workflow.sh disconnect` first (not timed), so the command opens its own connection
      warm: right after, riding the shared connection (another command within CONNECTION_PERSIST_SECS)

It prints the medians and the ratios median(X) / median(cold ssh host true) against the issue's
targets (cold <= 1.2x, warm <= 0.6x; sweep-status of N runs warm <= 1.0x), and, once, the pod
side's `python3 -X importtime` of the agent's fsm-status (the ten slowest imports). Ratios also go
to $BENCH_SUMMARY for `make bench`'s closing table. Exit 0 when every ratio passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import benchpods
from sweep_status_10k import build_campaign

TARGET_COLD, TARGET_WARM, TARGET_WARM_10K = 1.2, 0.6, 1.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds (default 9)")
    parser.add_argument("--runs", type=int, default=10000, help="runs in the big campaign (default 10000)")
    options = parser.parse_args(argv)
    control = tempfile.mkdtemp(prefix="wfb-", dir="/tmp")  # socket paths must stay short
    env = {**benchpods.bench_env(), "WORKFLOW_SSH_CONTROL_DIR": os.path.join(control, "ctl")}
    with benchpods.workspace("latency") as base, benchpods.sshd(base) as server:
        small = benchpods.make_pod("ssh", base / "small", server)
        big = benchpods.make_pod("ssh", base / "big", server)
        for pod in (small, big):
            pod.extra_env.update(env)
        build_campaign(str(small.outputs), 4)
        build_campaign(str(big.outputs), options.runs)
        benchpods.must(small.wf("task-run", "--id", "t1", "--cmd", "echo hello"))
        benchpods.must(small.wf("task-wait", "--id", "t1"))
        known = server.pinned_known_hosts(base / "pinned_known_hosts")
        ssh = [*server.ssh_argv(known)]
        socket_path = os.path.join(control, "bench-master")
        master = [*ssh[:1], "-o", f"ControlPath={socket_path}", *ssh[1:]]
        subprocess.run([*master[:-1], "-o", "ControlMaster=yes", "-o", "ControlPersist=600", "-N", "-f",
                        master[-1]], check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        commands = {
            "fsm-status": (small, ["fsm-status"]),
            "task-status": (small, ["task-status", "t1"]),
            "pod-status": (small, ["pod-status"]),
            "sweep-status (4 rows)": (small, ["sweep-status"]),
            f"sweep-status ({options.runs} runs)": (big, ["sweep-status"]),
        }

        def wf(pod: benchpods.conftest.Pod, args: list[str]) -> list[str]:
            return [str(benchpods.WORKFLOW), "--env", str(pod.env_file), *args]

        for pod, args in commands.values():  # warm-up: agent upload, bytecode, page cache
            benchpods.timed(wf(pod, args), env, check=False)
        samples: dict[str, list[float]] = {"ssh cold": [], "ssh ControlMaster": [], "python -S -c pass": [],
                                           "agent fsm-status over the CM": [], "agent fsm-status, own login": []}
        agent_call = remote_agent_call(small)
        for name in commands:
            samples[f"{name} cold"], samples[f"{name} warm"] = [], []
        try:
            for _ in range(options.rounds):
                samples["ssh cold"].append(benchpods.timed([*ssh, "true"], env))
                samples["ssh ControlMaster"].append(benchpods.timed([*master, "true"], env))
                samples["python -S -c pass"].append(benchpods.timed([sys.executable, "-S", "-c", "pass"], env))
                samples["agent fsm-status over the CM"].append(benchpods.timed([*master, agent_call], env))
                samples["agent fsm-status, own login"].append(benchpods.timed([*ssh, agent_call], env))
                for name, (pod, args) in commands.items():
                    benchpods.timed(wf(pod, ["disconnect"]), env)
                    samples[f"{name} cold"].append(benchpods.timed(wf(pod, args), env, check=False))
                    samples[f"{name} warm"].append(benchpods.timed(wf(pod, args), env, check=False))
            importtime = pod_importtime(small, env)
            client_imports = client_importtime(small, env)
        finally:
            subprocess.run([*master[:-1], "-O", "exit", master[-1]], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            for pod in (small, big):
                pod.wf("disconnect", env=env)
                pod.tmux("kill-server")
            import shutil

            shutil.rmtree(control, ignore_errors=True)
    base_cold = statistics.median(samples["ssh cold"])
    print(f"bench/latency: loopback sshd, {os.cpu_count()} CPU(s), load {os.getloadavg()[0]:.2f}, "
          f"{options.rounds} interleaved rounds; medians")
    print(f"  {'ssh host true (cold)':<28} {base_cold * 1000:7.1f} ms")
    cm = statistics.median(samples["ssh ControlMaster"])
    print(f"  {'ssh host true (ControlMaster)':<28} {cm * 1000:7.1f} ms   {cm / base_cold:4.2f}x of cold ssh")
    print(f"\n  {'command':<28} {'cold ms':>8} {'x ssh':>6}   {'warm ms':>8} {'x ssh':>6} {'x CM ssh':>8}")
    over = False
    for name in commands:
        cold, warm = statistics.median(samples[f"{name} cold"]), statistics.median(samples[f"{name} warm"])
        warm_target = TARGET_WARM_10K if "runs)" in name else TARGET_WARM
        verdicts = []
        for ratio, target in ((cold / base_cold, TARGET_COLD), (warm / base_cold, warm_target)):
            verdicts.append("PASS" if ratio <= target else "OVER")
            over = over or ratio > target
        print(f"  {name:<28} {cold * 1000:8.1f} {cold / base_cold:5.2f}x   {warm * 1000:8.1f} "
              f"{warm / base_cold:5.2f}x {warm / cm:7.2f}x   cold {verdicts[0]} (<= {TARGET_COLD}x), "
              f"warm {verdicts[1]} (<= {warm_target}x)")
        benchpods.record("latency", f"{name} cold / cold ssh", cold / base_cold, TARGET_COLD)
        benchpods.record("latency", f"{name} warm / cold ssh", warm / base_cold, warm_target)
    start = statistics.median(samples["python -S -c pass"])
    remote = statistics.median(samples["agent fsm-status over the CM"])
    warm = statistics.median(samples["fsm-status warm"])
    print(f"\nwhere a warm fsm-status goes ({warm * 1000:.1f} ms): the agent call over the master alone (ssh mux "
          f"client + sshd session + pod python) {remote * 1000:.1f} ms; the client's interpreter start "
          f"(python -S -c pass) {start * 1000:.1f} ms; the rest (bash wrapper, client imports, config cache, "
          f"master check, output) {(warm - remote - start) * 1000:.1f} ms")
    cold_fsm = statistics.median(samples["fsm-status cold"])
    own = statistics.median(samples["agent fsm-status, own login"])
    print(f"where a cold fsm-status goes ({cold_fsm * 1000:.1f} ms): a fresh ssh login running the agent's call "
          f"{own * 1000:.1f} ms (cold ssh host true {base_cold * 1000:.1f} ms: the pod side's python adds "
          f"{(own - base_cold) * 1000:.1f} ms); the rest (bash wrapper, interpreter start and prelaunch before the "
          f"login, what the imports do not hide, output) {(cold_fsm - own) * 1000:.1f} ms")
    print("\nclient side, python -X importtime of a warm fsm-status (slowest 10 of "
          f"{client_imports[0] / 1000:.1f} ms of imports, cumulative us):")
    print(client_imports[1])
    print("\npod side, python3 -X importtime of the agent's fsm-status (slowest 10, cumulative us):")
    print(importtime)
    return 1 if over else 0


def remote_agent_call(pod: benchpods.conftest.Pod) -> str:
    """The shell line that runs the uploaded agent's fsm-status on the pod, as workflow.sh does."""
    import shlex

    sys.path.insert(0, str(benchpods.REPO_ROOT))
    from helpers.agent import bundle_hash

    agent = pod.outputs / "_control" / f"agent-{bundle_hash()}.d" / "entry.py"
    request = json.dumps({"config": {"OPS_REMOTE_OUTPUTS_DIR": str(pod.outputs)}, "args": {}})
    return f"echo {shlex.quote(request)} | python3 -I -S {shlex.quote(str(agent))} fsm-status"


def _slowest(stderr: str, count: int = 10) -> tuple[int, str]:
    """(the top-level imports' total, the ``count`` slowest) of -X importtime's output."""
    rows, total = [], 0
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            parts = line[len("import time:"):].split("|")
            name = parts[2].rstrip()
            if parts[1].strip().isdigit():
                rows.append((int(parts[1]), name.strip()))
                if not name.startswith("  "):
                    total += int(parts[1])
    rows.sort(reverse=True)
    return total, "\n".join(f"  {us:8d}  {name}" for us, name in rows[:count])


def client_importtime(pod: benchpods.conftest.Pod, env: dict[str, str]) -> tuple[int, str]:
    """A warm fsm-status started as workflow.sh starts it, under -X importtime."""
    root = str(benchpods.REPO_ROOT)
    result = subprocess.run([sys.executable, "-S", "-X", "importtime", "-c", "import helpers.launch", "--env",
                             str(pod.env_file), "fsm-status"], text=True, capture_output=True, timeout=60,
                            env={**env, "WORKFLOW_ROOT": root, "PYTHONPATH": root})
    return _slowest(result.stderr)


def pod_importtime(pod: benchpods.conftest.Pod, env: dict[str, str]) -> str:
    """The uploaded agent's fsm-status under -X importtime (the loopback pod is this machine)."""
    sys.path.insert(0, str(benchpods.REPO_ROOT))
    from helpers.agent import bundle_hash

    agent = pod.outputs / "_control" / f"agent-{bundle_hash()}.d" / "entry.py"
    request = json.dumps({"config": {"OPS_REMOTE_OUTPUTS_DIR": str(pod.outputs)}, "args": {}})
    result = subprocess.run(["python3", "-X", "importtime", "-I", "-S", str(agent), "fsm-status"], input=request,
                            text=True, capture_output=True, timeout=60, env=env)
    rows = []
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            parts = [p.strip() for p in line[len("import time:"):].split("|")]
            if parts[1].isdigit():
                rows.append((int(parts[1]), parts[2]))
    rows.sort(reverse=True)
    return "\n".join(f"  {us:8d}  {name}" for us, name in rows[:10])


if __name__ == "__main__":
    sys.exit(main())

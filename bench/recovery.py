#!/usr/bin/env python3
"""Benchmark: managed recovery of a lost pod (sweep-watch --manage) against the same recovery by hand.

The set-up of tests/test_manage.py: the project's fake Lium API driven by the real Lium SDK, each pod a
real sshd of its own on loopback, the pods sharing this machine's filesystem (the persistent volume),
the stand-in trainer (tests/sweep_fixture, config/slow.py: 0.5 s a step, a checkpoint every step).
A campaign of two rows runs; once both have checkpoints the pod dies (its sshd and every process of its
tmux server SIGKILLed at once) and the API stops listing it.

Measured, from the confirmed loss to the first resumed row training again (its checkpoint file
written by a step after the loss), minus the replacement's boot (renting + waiting until it has SSH,
which is the provider's, not ours):
- managed: `sweep-watch --manage --interval 1` running all along; the loss is confirmed when it prints
  `manage: LOST`; the boot is the `boot_secs` of its record;
- by hand (the baseline): the commands a user runs, each typed the instant the previous one ends:
  `pod-up --yes` (the boot), `fsm-reset POD_READY` (the state file on the volume says SWEEP_RUNNING),
  `bootstrap`, `checkout`, `sweep-resume`; the loss counts as confirmed when the script starts.
The ratio managed / by hand is printed (> 1: the watcher's own overhead: its poll and fencing).

    WORKFLOW_VENV=.workflow/venv .workflow/venv/bin/python bench/recovery.py [--trials 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import benchpods  # first: puts tests/ on sys.path
import conftest
from fake_lium_api import FakeLiumAPI

WORKFLOW, bench_env, make_pod, must = benchpods.WORKFLOW, benchpods.bench_env, benchpods.make_pod, benchpods.must
record, source_repo, workspace = benchpods.record, benchpods.source_repo, benchpods.workspace

API_KEY = "lium-bench-key-recovery-77"
FIXTURE = {"TRAIN_WORKDIR": "tests/sweep_fixture", "SWEEP_CPU_SLOTS": "2", "RUN_STALL_SECS": "60",
           "RUN_RETRY_BACKOFF_SECS": "1", "TASK_KILL_GRACE_SECS": "2", "CONNECTION_PERSIST_SECS": "0",
           "SSH_CONNECT_TIMEOUT_SECS": "2", "RECONNECT_SECS": "0", "LIUM_GPU_TYPE": "H100", "LIUM_GPU_COUNT": "1",
           "LIUM_READY_TIMEOUT_SECS": "120", "MANAGE_MAX_RECOVERIES": "100"}
STEPS = 60


def tree(pid: int) -> list[int]:
    found, stack = [], [pid]
    while stack:
        top = stack.pop()
        found.append(top)
        with contextlib.suppress(OSError):
            stack.extend(int(c) for c in Path(f"/proc/{top}/task/{top}/children").read_text().split())
    return found


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


class Bench:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.api = FakeLiumAPI(api_key=API_KEY).start()
        self.servers: list[conftest.SSHServer] = []
        first = self.new_sshd()
        self.key = first.key
        lium_pod = self.api.add_pod("bench", host="127.0.0.1", port=first.port)
        self.current = (lium_pod["id"], first)
        self.pod = make_pod("local", base, None, source_repo(base))
        home = base / "home"
        home.mkdir()
        self.pod.set(LIUM_BASE_URL=self.api.base_url, LIUM_SSH_KEY_PATH=str(self.key), LIUM_TARGET=lium_pod["id"],
                     **FIXTURE)
        self.pod.extra_env.update(HOME=str(home), LIUM_API_KEY=API_KEY, NO_PROXY="127.0.0.1,localhost")
        for command in ("bootstrap", "checkout"):
            must(self.wf(command))
        self.trial = 0

    def new_sshd(self) -> conftest.SSHServer:
        path = self.base / f"sshd-{len(self.servers)}"
        path.mkdir()
        if self.servers:
            for suffix in ("", ".pub"):
                shutil.copy(f"{self.key}{suffix}", path / f"id_ed25519{suffix}")
        server = conftest.start_sshd(path, conftest.free_port())
        self.servers.append(server)
        return server

    def wf(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.pod.wf("--set", f"LIUM_TARGET={self.current[0]}", *args, timeout=600)

    def start_campaign(self) -> tuple[str, list[str]]:
        self.trial += 1
        ids = [f"rec{self.trial}-{n}" for n in range(2)]
        csv = self.base / f"rec{self.trial}.csv"
        csv.write_text("run_id,config,seed,overrides,notes,gpus\n"
                       + "".join(f"{r},config/slow.py,{n},steps={STEPS},bench,1\n" for n, r in enumerate(ids)))
        result = must(self.wf("sweep-start", "--csv", str(csv), "--json"))
        return str(json.loads(result.stdout)["campaign_id"]), ids

    def ckpt(self, run_id: str) -> tuple[int, float]:
        path = self.pod.outputs / run_id / "ckpt.json"
        try:
            return int(json.loads(path.read_text())["iter"]), path.stat().st_mtime
        except (OSError, ValueError, KeyError):
            return -1, 0.0

    def wait_checkpoints(self, ids: list[str]) -> None:
        deadline = time.monotonic() + 120
        while min(self.ckpt(r)[0] for r in ids) < 2:
            if time.monotonic() > deadline:
                raise SystemExit("bench: the rows never checkpointed")
            time.sleep(0.1)

    def kill_pod(self) -> dict[str, int]:
        """The pod dies; the next pod's sshd is ready for the replacement; the checkpoint iters cut."""
        uuid, server = self.current
        victims = tree(server.pid)
        out = self.pod.tmux("display-message", "-p", "#{pid}").stdout.strip()
        if out.isdigit():
            victims += tree(int(out))
        signal_all(victims, signal.SIGSTOP)
        signal_all(victims, signal.SIGKILL)
        with self.api._lock:
            self.api.pods[:] = [p for p in self.api.pods if p["id"] != uuid]
        return {}

    def prepare_replacement(self) -> conftest.SSHServer:
        server = self.new_sshd()
        self.api.rent_ssh = ("127.0.0.1", server.port)
        self.api.add_executor(gpu_count=1, price_per_gpu=2.0)
        return server

    def first_step_after(self, ids: list[str], cut: float) -> float:
        """Wall time (time.time()) of the first checkpoint written after ``cut`` by a resumed row."""
        deadline = time.monotonic() + 300
        while True:
            times = [m for m in (self.ckpt(r)[1] for r in ids) if m > cut]
            if times:
                return min(times)
            if time.monotonic() > deadline:
                raise SystemExit("bench: no resumed row trained again")
            time.sleep(0.05)

    def managed(self) -> float:
        cid, ids = self.start_campaign()
        log = self.base / f"watch{self.trial}.log"
        with log.open("w") as handle:
            env = {**bench_env(), **self.pod.extra_env}
            proc = subprocess.Popen([str(WORKFLOW), "--env", str(self.pod.env_file), "--set",
                                     f"LIUM_TARGET={self.current[0]}", "sweep-watch", "--manage", "--interval", "1"],
                                    env=env, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            self.wait_checkpoints(ids)
            server = self.prepare_replacement()
            killed = time.time()
            self.kill_pod()
            lost = 0.0
            while not lost:
                if "manage: LOST" in log.read_text():
                    lost = time.time()
                elif proc.poll() is not None:
                    raise SystemExit(f"bench: the watcher ended: {log.read_text()[-2000:]}")
                time.sleep(0.02)
            trained = self.first_step_after(ids, killed)
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        rec = json.loads((self.base / ".workflow" / "manage" / cid / "record.json").read_text())
        self.current = (str(rec["pod_uuid"]), server)
        boot = float(rec["recoveries"][-1]["boot_secs"])
        print(f"  managed: loss confirmed {lost - killed:.1f} s after the kill; boot {boot:.1f} s; "
              f"training again {trained - lost - boot:.1f} s after the confirmation (boot excluded)")
        return trained - lost - boot

    def by_hand(self) -> float:
        cid, ids = self.start_campaign()
        self.wait_checkpoints(ids)
        server = self.prepare_replacement()
        killed = time.time()
        self.kill_pod()
        start = time.time()
        began = time.monotonic()
        up = must(self.pod.wf("--set", f"LIUM_POD_NAME=byhand-{self.trial}", "pod-up", "--yes", timeout=600))
        boot = time.monotonic() - began
        uuid = next(x.split("=", 1)[1] for x in up.stdout.splitlines() if x.startswith("LIUM_TARGET="))
        self.current = (uuid, server)
        state = json.loads(must(self.wf("fsm-status", "--json")).stdout)["state"]
        if state == "SWEEP_RUNNING":
            must(self.wf("fsm-reset", "POD_READY", "--reason", "replacement pod"))
        for command in (("bootstrap",), ("checkout",), ("sweep-resume", "--campaign", cid)):
            must(self.wf(*command))
        trained = self.first_step_after(ids, killed)
        deadline = time.monotonic() + 300
        while json.loads(self.wf("sweep-status", "--campaign", cid, "--json").stdout)["executor"]["state"] in (
                "running", "starting", "stopping") and time.monotonic() < deadline:
            time.sleep(1)
        print(f"  by hand: boot {boot:.1f} s; training again {trained - start - boot:.1f} s after the commands "
              "began (boot excluded)")
        return trained - start - boot

    def close(self) -> None:
        self.pod.tmux("kill-server")
        for server in self.servers:
            signal_all(tree(server.pid), signal.SIGCONT)
            signal_all(tree(server.pid), signal.SIGKILL)
        self.api.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1)
    options = parser.parse_args()
    for var in ("LIUM_API_KEY", "LIUM_BASE_URL", "LIUM_SSH_KEY_PATH", "HTTP_PROXY", "HTTPS_PROXY"):
        os.environ.pop(var, None)
    with workspace("recovery") as base:
        bench = Bench(base)
        try:
            managed: list[float] = []
            manual: list[float] = []
            for _ in range(options.trials):
                managed.append(bench.managed())
                manual.append(bench.by_hand())
        finally:
            bench.close()
    m, b = statistics.median(managed), statistics.median(manual)
    print(f"recovery, confirmed loss -> first resumed row training again, boot excluded: managed {m:.1f} s, "
          f"by hand {b:.1f} s; ratio managed/by-hand {m / b:.2f} (goal: managed within 60 s)")
    record("recovery", "managed/by-hand (loss -> training again, boot excluded)", m / b)
    return 0 if m <= 60 else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Trainer tokens/s with MLflow tracking on against off, in one run (goal: at most 1% slower).

Run: WORKFLOW_VENV=.workflow/venv .workflow/venv/bin/python bench/tracking_throughput.py [--iters 150] [--repeat 5]

The example trainer's tiny CPU config (examples/nanogpt, offline byte-level shards built here, one
metrics line every 5 iterations), alternately without tracking and with the real tracking sidecar
(helpers/pod/tracking/sidecar.py) tailing its metrics.jsonl into a real `mlflow server` (sqlite,
loopback, started here) through a one-row campaign written by hand, as tracking_lag.py does. The
trainer never talks to the server; the sidecar is a second process on the same cores, which is all
it can cost. As in a sweep, the trainer starts once the sidecar has created its child run (the
executor waits for it), so the sidecar's start-up (importing mlflow) is not in the window. Prints
tokens_per_sec (results.json, warm-up step excluded) of both, medians, ratio.

On a loaded machine (other jobs on the same cores) one pair says little: the runs are interleaved
pairs, off/on then on/off in turn (so a load that grows or shrinks over the run hits both sides
alike), each pair gives its own ratio on/off, and the figure is the median of the pair ratios with
their spread (min..max and the median absolute deviation). A spread wider than the 1% goal says
the machine was too noisy for the figure to decide; run more repeats. The figure a load cannot move
is the sidecar's CPU time over the trainer's in the same run (getrusage of each child): with every
core busy, tracking can take at most that share of the trainer's time. It is taken while the trainer
runs (the row's settling after its end, once per row, is printed apart), and the local mlflow server's
own CPU in the same window is printed beside it: here it shares the cores, on a pod it is elsewhere.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

import benchpods  # noqa: E402
from conftest import wait_until  # noqa: E402
from mlflow_server import free_port_for_bench, start_server  # noqa: E402
from nanogpt_helpers import NANOGPT, TINY, build_shards, env  # noqa: E402

from helpers.pod import proctree  # noqa: E402
from helpers.pod.jsonio import utc_now  # noqa: E402


def campaign(outputs: Path, name: str, uri: str) -> Path:
    path = outputs / "_campaigns" / name
    path.mkdir(parents=True)
    row = f"{name}-row"
    (outputs / row / "attempts" / "1").mkdir(parents=True)
    (outputs / row / "attempts" / "1" / "attempt.json").write_text(json.dumps({"attempt": 1, "started_utc": utc_now()}))
    (path / "manifest.json").write_text(json.dumps({"campaign_id": name, "rows": [
        {"run_id": row, "config": TINY, "seed": 1, "overrides": [], "spec_hash": "x"}], "config": {
        "MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT": "bench-throughput", "OPS_REMOTE_OUTPUTS_DIR": str(outputs),
        "OPS_REMOTE_REPO": str(ROOT)}}))
    pid = os.getpid()
    (path / "executor.json").write_text(json.dumps({"state": "running", "pid": pid, "start_time": proctree.start_time(
        pid), "boot_id": proctree.boot_id()}))
    return path


def children_cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def process_cpu(pid: int) -> float:
    """A live process's CPU seconds so far (user + system, /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def group_cpu(pgid: int) -> float:
    """CPU seconds so far of every live process of process group ``pgid`` (the mlflow server and its workers)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def train(shards: Path, out_dir: Path, iters: int) -> float:
    argv = [sys.executable, "train.py", TINY, f"data_dir={shards}", f"out_dir={out_dir}", f"max_iters={iters}",
            "eval_interval=5", "eval_iters=1", "log_interval=10", "checkpoint_interval=0"]
    subprocess.run(argv, cwd=NANOGPT, env=env(), check=True, stdout=subprocess.DEVNULL)
    return float(json.loads((out_dir / "results.json").read_text())["tokens_per_sec"])


SERVER_SHARES: list[float] = []  # the local mlflow server's CPU while a tracked trainer ran / the trainer's


def tracked_run(base: Path, outputs: Path, uri: str, server_pgid: int, sidecar_env: dict[str, str], round_no: int,
                shards: Path, iters: int) -> tuple[float, int, float]:
    """One training run of a one-row campaign with the real sidecar tailing it: (tokens/s, points sent,
    the sidecar's CPU time while the trainer ran over the trainer's: its start-up, once per campaign, not in it)."""
    path = campaign(outputs, f"tp-{round_no}", uri)
    with open(base / f"sidecar-{round_no}.log", "wb") as log:
        sidecar = subprocess.Popen([sys.executable, "-c", "import sys; from helpers.pod.tracking.sidecar "
                                    "import sidecar_main; sys.exit(sidecar_main(sys.argv[1:]))", str(path)],
                                   env=sidecar_env, cwd=str(ROOT), stdout=log, stderr=log)
        try:  # as the executor does, the row starts once its child run exists (mlflow imported)
            child = path / "tracking" / f"tp-{round_no}-row.json"
            wait_until(child.exists, 120, interval=0.1, what="the sidecar's child run")
            started_cpu = process_cpu(sidecar.pid)  # its start-up (mlflow's import, the child run) is behind it
            before, server_before = children_cpu(), group_cpu(server_pgid)
            speed = train(shards, outputs / f"tp-{round_no}-row", iters)
            trainer_cpu = children_cpu() - before  # the sidecar is not reaped yet: the trainer's alone
            sidecar_cpu = process_cpu(sidecar.pid) - started_cpu  # while the trainer ran: what it could take
            SERVER_SHARES.append((group_cpu(server_pgid) - server_before) / max(trainer_cpu, 1e-9))
            (path / "executor.json").write_text(json.dumps({"state": "finished", "ended_utc": utc_now()}))
            wait_until(lambda: sidecar.poll() is not None, 120, interval=0.1, what="the sidecar to exit")
            settle_cpu = children_cpu() - before - trainer_cpu - started_cpu - sidecar_cpu
        finally:
            if sidecar.poll() is None:
                sidecar.kill()
                sidecar.wait()
    record = json.loads((path / "tracking" / f"tp-{round_no}-row.json").read_text())
    return speed, int(record.get("points") or 0), sidecar_cpu / max(trainer_cpu, 1e-9), settle_cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=150)
    parser.add_argument("--repeat", type=int, default=5)
    options = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="wf-throughput-"))
    server = start_server(base / "mlflow", free_port_for_bench())
    speeds: dict[str, list[float]] = {"off": [], "on": []}
    points = 0
    shares: list[float] = []
    settles: list[float] = []
    try:
        shards = build_shards(base)
        outputs = base / "outputs"
        sidecar_env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "PYTHONPATH": str(ROOT)}
        for round_no in range(options.repeat):
            order = ("off", "on") if round_no % 2 == 0 else ("on", "off")  # interleaved: drift hits both sides
            for side in order:
                if side == "off":
                    speeds["off"].append(train(shards, base / f"off-{round_no}", options.iters))
                    continue
                assert server.proc is not None
                speed, sent, share, settle = tracked_run(base, outputs, server.uri, server.proc.pid, sidecar_env,
                                                         round_no, shards, options.iters)
                speeds["on"].append(speed)
                shares.append(share)
                settles.append(settle)
                points += sent
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    off, on = statistics.median(speeds["off"]), statistics.median(speeds["on"])
    ratios = [b / a for a, b in zip(speeds["off"], speeds["on"])]
    ratio = statistics.median(ratios)
    mad = statistics.median(abs(r - ratio) for r in ratios)
    load = os.getloadavg()[0]
    print(f"trainer throughput, tiny CPU config, {options.iters} iters, {options.repeat} interleaved on/off pairs, "
          f"{os.cpu_count()} CPU core(s), load average {load:.1f} at the end")
    print(f"  tracking off  {off:9.0f} tok/s median  ({', '.join(f'{s:.0f}' for s in speeds['off'])})")
    print(f"  tracking on   {on:9.0f} tok/s median  ({', '.join(f'{s:.0f}' for s in speeds['on'])}); the sidecar "
          f"sent {points} point(s)")
    print(f"  pair ratios on / off: {', '.join(f'{r:.3f}' for r in ratios)}")
    print(f"  ratio on / off {ratio:.3f}x median of pairs, spread {min(ratios):.3f}..{max(ratios):.3f}, "
          f"MAD {mad:.3f} (goal: >= 0.99){'; spread wider than the goal: too noisy to decide' if mad > 0.01 else ''}")
    print(f"  the sidecar's CPU time while the trainer ran / the trainer's: median {statistics.median(shares):.4f} "
          f"({', '.join(f'{x:.4f}' for x in shares)}); load-proof bound: on cores the trainer saturates, "
          f"tracking can take at most this share from it")
    print(f"  the mlflow server's CPU time (here on the same cores; on a pod it is elsewhere) / the trainer's: "
          f"median {statistics.median(SERVER_SHARES):.4f}: on this machine tracking takes the sum of both shares")
    print(f"  then the row's settling after the trainer's end (final status, artifacts, parent totals): median "
          f"{statistics.median(settles):.3f} CPU s, once per row")
    benchpods.record("tracking_throughput", "trainer tokens/s: tracking on / off (median of pairs)", ratio, 0.99)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

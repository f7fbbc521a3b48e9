#!/usr/bin/env python3
"""Benchmark: tracking lag, from a line appended to a row's metrics.jsonl to the same point being
visible through the MLflow client (MlflowClient.get_metric_history), with the real tracking sidecar
(helpers/pod/tracking/sidecar.py) and a real `mlflow server` (sqlite, loopback, started here).

One synthetic campaign: a manifest with one row, an executor record that says "running" (this
process), and the row's metrics.jsonl, to which N lines (default 60) are appended every 0.25 s. A
reader thread polls the point's history every 20 ms and notes when each step shows up. Baseline, in
the same run: the trainer logging each line itself, synchronously (`log_batch` right after writing
the line), measured the same way. Prints median and max lag of both. Needs mlflow (the test extras).

    WORKFLOW_VENV=.workflow/venv .workflow/venv/bin/python bench/tracking_lag.py [--lines 60]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

import benchpods  # noqa: E402
from mlflow_server import free_port_for_bench, start_server  # noqa: E402

from helpers.pod import proctree  # noqa: E402


def watch(client, run_id: str, key: str, total: int, seen: dict[int, float], stop: threading.Event) -> None:
    while not stop.is_set() and len(seen) < total:
        for point in client.get_metric_history(run_id, key):
            seen.setdefault(point.step, time.time())
        time.sleep(0.02)


def campaign(base: Path, uri: str) -> Path:
    outputs = base / "outputs"
    path = outputs / "_campaigns" / "bench-lag"
    (path).mkdir(parents=True)
    (outputs / "lag-row").mkdir()
    manifest = {"campaign_id": "bench-lag", "rows": [{"run_id": "lag-row", "config": "c.py", "seed": 1,
                                                     "overrides": [], "spec_hash": "x"}],
                "config": {"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT": "bench-lag",
                           "OPS_REMOTE_OUTPUTS_DIR": str(outputs), "OPS_REMOTE_REPO": str(ROOT)}}
    (path / "manifest.json").write_text(json.dumps(manifest))
    pid = os.getpid()
    (path / "executor.json").write_text(json.dumps({"state": "running", "pid": pid, "start_time": proctree.start_time(
        pid), "boot_id": proctree.boot_id()}))
    return path


def lags(written: dict[int, float], seen: dict[int, float]) -> list[float]:
    return [seen[s] - written[s] for s in written if s in seen]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=60)
    parser.add_argument("--interval", type=float, default=0.25)
    options = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="wf-lag-"))
    server = start_server(base / "mlflow", free_port_for_bench())
    sidecar = None
    try:
        client = server.client()
        path = campaign(base, server.uri)
        env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "PYTHONPATH": str(ROOT)}
        sidecar = subprocess.Popen([sys.executable, "-c", "import sys; from helpers.pod.tracking.sidecar import "
                                    "sidecar_main; sys.exit(sidecar_main(sys.argv[1:]))", str(path)], env=env,
                                   stderr=open(base / "sidecar.log", "wb"), cwd=str(ROOT))  # noqa: SIM115
        record = path / "tracking" / "lag-row.json"
        deadline = time.monotonic() + 120
        while not record.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        child = json.loads(record.read_text())["mlflow_run_id"]
        metrics = base / "outputs" / "lag-row" / "metrics.jsonl"
        results = {}
        for label, direct in (("sidecar (metrics.jsonl tailed)", False), ("baseline: trainer logs itself", True)):
            run_id = child if not direct else client.create_run(json.loads((path / "tracking.json").read_text())[
                "experiment_id"], run_name="direct").info.run_id
            written: dict[int, float] = {}
            seen: dict[int, float] = {}
            stop = threading.Event()
            key = "loss_direct" if direct else "loss"
            reader = threading.Thread(target=watch, args=(client, run_id, key, options.lines, seen, stop), daemon=True)
            reader.start()
            for step in range(options.lines):
                written[step] = time.time()
                if direct:
                    from mlflow.entities import Metric

                    client.log_batch(run_id, metrics=[Metric(key, 1.0 / (step + 1), int(time.time() * 1000), step)])
                else:
                    with metrics.open("a") as handle:
                        handle.write(json.dumps({"step": step, key: 1.0 / (step + 1)}) + "\n")
                time.sleep(options.interval)
            end = time.monotonic() + 30
            while len(seen) < options.lines and time.monotonic() < end:
                time.sleep(0.05)
            stop.set()
            reader.join(timeout=5)
            got = lags(written, seen)
            results[label] = got
            print(f"{label}: {len(got)}/{options.lines} points seen; lag median {statistics.median(got):.3f} s, "
                  f"max {max(got):.3f} s")
        ratio = statistics.median(results["sidecar (metrics.jsonl tailed)"]) / max(
            statistics.median(results["baseline: trainer logs itself"]), 1e-3)
        benchpods.record("tracking_lag", "median lag: sidecar / trainer logging itself", ratio)
        print(f"ratio sidecar/baseline (median lag): {ratio:.1f}x; the sidecar polls every second, the trainer "
              "never waits on the server")
    finally:
        if sidecar is not None:
            sidecar.terminate()
            sidecar.wait(timeout=30)
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

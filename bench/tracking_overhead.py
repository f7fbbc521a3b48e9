#!/usr/bin/env python3
"""Tracking overhead: a small sweep's makespan with MLflow tracking on against off, in one run.

Run: WORKFLOW_VENV=.workflow/venv python bench/tracking_overhead.py [--rows 6] [--slots 3] [--steps 10] [--repeat 2]

On the `local` target (this machine is the pod; CPU slots), with a real `mlflow server` (sqlite,
loopback, started here): bootstrap + checkout of a repo holding the sweep test trainer
(tests/sweep_fixture), then the same CSV (--rows one-slot rows of --steps steps) as campaigns
alternately with tracking off (MLFLOW_TRACKING_URI empty) and on (the campaign's tracking sidecar
creates the parent and one child per row before the rows start, tails every metrics.jsonl and sets
the final statuses), --repeat times each. Makespan = the executor's start to end (executor.json).
With tracking on it also reports when the last row's final status reached the server, measured from
the executor's end (the sidecar's flush). Prints the medians and the ratio on / off.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import uuid
from typing import Any

import benchpods
from conftest import wait_until
from mlflow_server import free_port_for_bench, start_server

from helpers.pod.jsonio import parse_utc


def first_start(pod: Any, campaign_id: str) -> float:
    """Seconds from the executor's start to its first row's first attempt (with tracking on: the wait
    for the row's child run, i.e. the sidecar's start-up)."""
    cdir = pod.outputs / "_campaigns" / campaign_id
    began = parse_utc(json.loads((cdir / "executor.json").read_text())["started_utc"]) or 0.0
    starts = []
    for row in json.loads((cdir / "manifest.json").read_text())["rows"]:
        for attempt in (pod.outputs / row["run_id"] / "attempts").glob("*/attempt.json"):
            starts.append(parse_utc(json.loads(attempt.read_text()).get("started_utc")) or began)
    return min(starts) - began if starts else 0.0


def run_campaign(pod: Any, csv: str, *settings: str) -> tuple[str, float, float]:
    """(campaign id, makespan, epoch of the executor's end)."""
    started = benchpods.must(pod.wf(*settings, "sweep-start", "--csv", csv, "--json"))
    campaign_id = json.loads(started.stdout)["campaign_id"]
    executor = pod.outputs / "_campaigns" / campaign_id / "executor.json"
    wait_until(lambda: json.loads(executor.read_text()).get("state") == "finished", timeout=900, interval=0.2,
               what=f"campaign {campaign_id}")
    record = json.loads(executor.read_text())
    end = parse_utc(record["ended_utc"]) or 0.0
    return campaign_id, end - (parse_utc(record["started_utc"]) or 0.0), end


def settled_after(pod: Any, server: Any, campaign_id: str, ended: float) -> float:
    """Seconds from the executor's end until the parent run is no longer RUNNING on the server."""
    path = pod.outputs / "_campaigns" / campaign_id / "tracking.json"

    def parent_done() -> bool:
        try:
            parent = json.loads(path.read_text()).get("parent_run_id")
        except (OSError, ValueError):
            return False
        return bool(parent) and server.client().get_run(parent).info.status != "RUNNING"

    wait_until(parent_done, timeout=300, interval=0.2, what=f"campaign {campaign_id}'s parent run settled")
    return max(0.0, time.time() - ended)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=6)
    parser.add_argument("--slots", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    spans: dict[str, list[float]] = {"off": [], "on": []}
    firsts: dict[str, list[float]] = {"off": [], "on": []}
    flush: list[float] = []
    with benchpods.workspace("tracking-overhead") as base:
        server = start_server(base / "mlflow", free_port_for_bench())
        pod = benchpods.make_pod("local", base, None, benchpods.source_repo(base))
        pod.set(TRAIN_WORKDIR="tests/sweep_fixture", RUN_STALL_SECS="60", SWEEP_CPU_SLOTS=str(args.slots),
                MLFLOW_TRACKING_URI=server.uri, MLFLOW_EXPERIMENT=f"bench-overhead-{uuid.uuid4().hex[:6]}")
        try:
            benchpods.must(pod.wf("bootstrap"))
            benchpods.must(pod.wf("checkout"))  # with tracking on: the run venv imports mlflow
            for round_no in range(args.repeat):
                for mode in ("off", "on"):
                    tag = f"{mode}{round_no}"
                    path = base / f"{tag}.csv"
                    path.write_text("run_id,config,seed,overrides,notes,gpus\n" + "".join(
                        f"{tag}-{i},config/ok.py,{i},steps={args.steps} sleep=0.3,,1\n" for i in range(args.rows)))
                    settings = ("--set", "MLFLOW_TRACKING_URI=") if mode == "off" else ()
                    campaign_id, span, ended = run_campaign(pod, str(path), *settings)
                    spans[mode].append(span)
                    firsts[mode].append(first_start(pod, campaign_id))
                    if mode == "on":
                        flush.append(settled_after(pod, server, campaign_id, ended))
        finally:
            pod.tmux("kill-server")
            server.stop()
    off, on = statistics.median(spans["off"]), statistics.median(spans["on"])
    print(f"tracking overhead: {args.rows} one-slot rows x {args.steps} steps on {args.slots} CPU slots, "
          f"{os.cpu_count()} CPU core(s), {args.repeat} campaign(s) each, alternating")
    print(f"  tracking off  makespan median {off:6.1f} s  ({', '.join(f'{s:.1f}' for s in spans['off'])})")
    print(f"  tracking on   makespan median {on:6.1f} s  ({', '.join(f'{s:.1f}' for s in spans['on'])})")
    wait_off, wait_on = statistics.median(firsts["off"]), statistics.median(firsts["on"])
    print(f"  first row started {wait_off:.1f} s (off) and {wait_on:.1f} s (on) after the executor: with tracking "
          "on a row waits for its child run (the sidecar's start-up)")
    print(f"  ratio on / off {on / off:.3f}x; with tracking on the parent run was settled "
          f"{statistics.median(flush):.1f} s (median) after the executor ended")
    benchpods.record("tracking_overhead", "sweep makespan: MLflow tracking on / off", on / off)


if __name__ == "__main__":
    main()

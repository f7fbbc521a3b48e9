#!/usr/bin/env python3
"""Slurm makespan: the 8-row bench campaign (one GPU each) as a job array on the one-node cluster (4 fake
GPUs) against the tmux executor with 4 slots on the same machine.

Run: WORKFLOW_VENV=.workflow/venv python bench/slurm_makespan.py [--rows 8] [--steps 12]

In one run: a one-node cluster on localhost (tests/slurm_cluster.py), one checked-out local login node,
the same CSV (fresh run ids) twice: SWEEP_EXECUTOR=tmux with SWEEP_CPU_SLOTS=4, then SWEEP_EXECUTOR=slurm.
Makespan = from calling sweep-start to the last row's summary ended_utc (what a user waits for).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import benchpods
import slurm_common
from conftest import wait_until

from helpers.pod.jsonio import parse_utc


def makespan(pod: Any, csv: Path, run_ids: list[str], *settings: str) -> float:
    began = time.time()
    benchpods.must(pod.wf(*settings, "sweep-start", "--csv", str(csv), timeout=600))
    summaries = [pod.outputs / r / "summary.json" for r in run_ids]
    wait_until(lambda: all(p.exists() for p in summaries), timeout=1800, interval=0.5, what=f"{csv.name} rows")
    time.sleep(0.5)  # the summary is written atomically; read it once complete
    ended = [parse_utc(json.loads(p.read_text()).get("ended_utc")) or time.time() for p in summaries]
    return max(ended) - began


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    with benchpods.workspace("slurm-makespan") as base, slurm_common.cluster(5) as on:
        pod = slurm_common.login_pod(base, on)
        spans = {}
        try:
            for kind in ("tmux", "slurm"):
                run_ids = [f"mk-{kind}-{i}" for i in range(args.rows)]
                csv = base / f"{kind}.csv"
                csv.write_text("run_id,config,seed,overrides,notes,gpus\n" + "".join(
                    f"{r},config/ok.py,{i},steps={args.steps} sleep=0.5,,1\n" for i, r in enumerate(run_ids)))
                spans[kind] = makespan(pod, csv, run_ids, "--set", f"SWEEP_EXECUTOR={kind}", "--set",
                                       "SWEEP_CPU_SLOTS=4")
        finally:
            pod.tmux("kill-server")
        ratio = spans["slurm"] / spans["tmux"]
        print(f"slurm makespan: {args.rows} one-GPU rows ({args.steps} steps of 0.5 s), 4 slots / 4 fake GPUs")
        print(f"  tmux executor (4 slots)        {spans['tmux']:7.1f} s")
        print(f"  slurm executor (job array)     {spans['slurm']:7.1f} s   ratio {ratio:.2f}x")
        benchpods.record("slurm_makespan", f"{args.rows}-row campaign: slurm / tmux executor", ratio)


if __name__ == "__main__":
    main()

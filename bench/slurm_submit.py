#!/usr/bin/env python3
"""Slurm submit: `sweep-start` of a 1,000-row CSV (SWEEP_EXECUTOR=slurm, MaxArraySize 1001: one array)
against one bare `sbatch --array=0-999` of the same size.

Run: WORKFLOW_VENV=.workflow/venv python bench/slurm_submit.py [--rows 1000] [-n 3]

In one run: a one-node cluster on localhost (tests/slurm_cluster.py), a checked-out local login node,
then interleaved: the bare sbatch (held, then scancelled) and sweep-start of a fresh CSV each time
(SLURM_EXTRA_ARGS=--hold: nothing runs; sweep-stop after each). sweep-start includes the tool's
preflight (sbatch --test-only, scontrol show config/node) and the run-directory bookkeeping.
"""

from __future__ import annotations

import argparse
import statistics

import benchpods
import slurm_common


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("-n", type=int, default=3)
    args = parser.parse_args()
    with benchpods.workspace("slurm-submit") as base, slurm_common.cluster(max(1001, args.rows)) as on:
        pod = slurm_common.login_pod(base, on)
        env = {**benchpods.bench_env(), **on.env}
        bare, tool = [], []
        for attempt in range(args.n):
            bare.append(benchpods.timed(["sbatch", "--parsable", "--hold", f"--array=0-{args.rows - 1}",
                                         "--job-name=bare-submit", f"--output={base}/bare-%A_%a.out",
                                         "--wrap=true"], env=env))
            on.run("scancel", "--name=bare-submit")
            csv = base / f"submit-{attempt}.csv"
            csv.write_text("run_id,config,seed,overrides,notes,gpus\n" + "".join(
                f"sb{attempt}-{i:04d},config/ok.py,{i},,,\n" for i in range(args.rows)))
            tool.append(benchpods.timed(slurm_common.wf_argv(pod, "--set", "SLURM_EXTRA_ARGS=--hold", "sweep-start",
                                                             "--csv", str(csv)), env=slurm_common.wf_env(pod)))
            benchpods.must(pod.wf("sweep-stop", timeout=600))
        ratio = statistics.median(tool) / statistics.median(bare)
        print(f"slurm submit: {args.rows} rows as one job array (MaxArraySize {max(1001, args.rows)})")
        print(f"  bare sbatch --array          {benchpods.describe(bare)}")
        print(f"  workflow.sh sweep-start      {benchpods.describe(tool)}   ratio {ratio:.2f}x")
        benchpods.record("slurm_submit", f"sweep-start {args.rows} rows / bare sbatch --array", ratio)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Slurm status: `sweep-status` of a campaign of 10,000 array tasks against one bare `sacct` of the same
job name. Goal: <= 1.5x, and under 2 s.

Run: WORKFLOW_VENV=.workflow/venv python bench/slurm_status.py [--tasks 10000] [-n 5]

In one run: a one-node cluster on localhost (MaxArraySize 1001), --tasks real array tasks (`true`, in
arrays of 1,000, named after the campaign) run to the end, and a campaign of as many rows whose chunk
files map to those tasks and whose run directories hold what a finished row leaves (as
bench/sweep_status_10k.py builds them). Then, interleaved: `sacct -X -P -n --name=<campaign>` and
`workflow.sh sweep-status` called again (one squeue; sacct's records of the ended jobs come from the
campaign's cache, written by the first status that saw them end; the row table is kept once every job's
end is cached, and the pod answers `unchanged` to a client that printed it: helpers/status_text.py), and
for reference: the same with the client's kept text removed (the stored table sent, parsed and drawn),
the table built again (status-cache.json removed: every row's view merged with the cached sacct
records) and that first status itself (the sacct cache removed before it: one sacct + one squeue).
"""

from __future__ import annotations

import argparse
import json
import statistics

import benchpods
import slurm_common
from sweep_status_10k import build_campaign

CAMPAIGN = "20261122-000000-bench0"  # the id build_campaign writes
ARRAY = 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=10000)
    parser.add_argument("-n", type=int, default=5)
    args = parser.parse_args()
    with benchpods.workspace("slurm-status") as base, slurm_common.cluster(ARRAY + 1) as on:
        pod = slurm_common.login_pod(base, on, checkout=False)
        build_campaign(str(pod.outputs), args.tasks)
        cdir = pod.outputs / "_campaigns" / CAMPAIGN
        (cdir / "slurm").mkdir()
        for number, first in enumerate(range(0, args.tasks, ARRAY)):
            size = min(ARRAY, args.tasks - first)
            job = on.run("sbatch", "--parsable", f"--array=0-{size - 1}", f"--job-name={CAMPAIGN}",
                         "--output=/dev/null", "--wrap=true").stdout.strip().split(";")[0]
            (cdir / "slurm" / f"chunk-001-{number:04d}.json").write_text(json.dumps(
                {"schema_version": 1, "campaign_id": CAMPAIGN, "generation": 1,
                 "rows": list(range(first, first + size)), "job_id": job, "argv": []}))
        slurm_common.drained(on, CAMPAIGN)
        manifest = json.loads((cdir / "manifest.json").read_text())
        (cdir / "manifest.json").write_text(json.dumps({**manifest, "config": {"SWEEP_EXECUTOR": "slurm"}}))
        (cdir / "executor.json").write_text(json.dumps({"executor": "slurm", "state": "running", "generation": 1}))
        sacct = ["sacct", "-X", "-P", "-n", f"--name={CAMPAIGN}",
                 "--format=JobID,State,ExitCode,Reason,NodeList,Elapsed"]
        env = {**benchpods.bench_env(), **on.env}
        status = slurm_common.wf_argv(pod, "sweep-status", "--campaign", CAMPAIGN)
        for _ in range(2):  # warm-up: the agent, sacct's cache, then the table kept
            benchpods.timed(status, env=slurm_common.wf_env(pod), check=False)
        floor = slurm_common.wf_argv(pod, "fsm-status")  # the tool's own start-up, for reference
        bare, tool, sent, least, cold, rebuilt = [], [], [], [], [], []
        texts = benchpods.REPO_ROOT / ".workflow" / "cache"  # the client's kept texts (helpers/status_text.py)
        cache = cdir / "slurm" / "sacct-cache.json"  # the ended jobs' sacct records (executors/slurm_cache.py)
        table = cdir / "status-cache.json"  # the concluded campaign's row table (helpers/pod/statuscache.py)
        for _ in range(args.n):
            bare.append(benchpods.timed(sacct, env=env))
            tool.append(benchpods.timed(status, env=slurm_common.wf_env(pod), check=False))
            for kept in texts.glob("status-text-*.json"):
                kept.unlink()
            sent.append(benchpods.timed(status, env=slurm_common.wf_env(pod), check=False))
            least.append(benchpods.timed(floor, env=slurm_common.wf_env(pod), check=False))
            table.unlink(missing_ok=True)  # every row's view built and merged again (sacct's records cached)
            rebuilt.append(benchpods.timed(status, env=slurm_common.wf_env(pod), check=False))
            benchpods.timed(status, env=slurm_common.wf_env(pod), check=False)  # the table kept again
            cache.unlink(missing_ok=True)  # as the first status after the campaign ended: sacct asked, cache written
            cold.append(benchpods.timed(status, env=slurm_common.wf_env(pod), check=False))
            benchpods.timed(status, env=slurm_common.wf_env(pod), check=False)  # the table kept again
        lines = len(on.run("sacct", *sacct[1:]).stdout.splitlines())
        ratio = statistics.median(tool) / statistics.median(bare)
        print(f"slurm status: a campaign of {args.tasks} finished array tasks ({lines} sacct lines)")
        print(f"  bare sacct --name          {benchpods.describe(bare)}")
        print(f"  workflow.sh sweep-status   {benchpods.describe(tool)}   ratio {ratio:.2f}x (goal <= 1.5x, < 2 s)")
        print(f"  sweep-status, table sent   {benchpods.describe(sent)}   ratio "
              f"{statistics.median(sent) / statistics.median(bare):.2f}x (the client's kept text removed first: "
              "the stored table sent, parsed and drawn)")
        print(f"  workflow.sh fsm-status     {benchpods.describe(least)}   (the tool's start-up alone)")
        print(f"  sweep-status, table built  {benchpods.describe(rebuilt)}   ratio "
              f"{statistics.median(rebuilt) / statistics.median(bare):.2f}x (status-cache.json removed first)")
        print(f"  sweep-status, sacct asked  {benchpods.describe(cold)}   ratio "
              f"{statistics.median(cold) / statistics.median(bare):.2f}x (the first status after the jobs ended)")
        benchpods.record("slurm_status", f"sweep-status {args.tasks} tasks / bare sacct", ratio, 1.5)


if __name__ == "__main__":
    main()

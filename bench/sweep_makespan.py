#!/usr/bin/env python3
"""Sweep makespan: 8 one-slot rows on 4 slots, against the ideal packing and against one by one.

Run: WORKFLOW_VENV=.workflow/venv python bench/sweep_makespan.py [--rows 8] [--slots 4] [--steps 12]

In one run, on the `local` target (this machine is the pod; CPU slots): bootstrap + checkout of a
repo holding the sweep test trainer (tests/sweep_fixture), then for two kinds of rows, sleeping
steps (slots do not fight over CPU except in torchrun's start-up) and CPU-bound steps (`busy=1`:
each step spins for its time, so with fewer cores than slots packing gains little), the same CSV
twice as two campaigns: with SWEEP_CPU_SLOTS=--slots and with SWEEP_CPU_SLOTS=1. Makespan = the
executor's start to end (executor.json); ideal = sum of the packed runs' durations / slots.
Prints both ratios for each kind.
"""

from __future__ import annotations

import argparse
import json

import benchpods
from conftest import wait_until

from helpers.pod.jsonio import parse_utc


def campaign_times(pod, campaign_id: str) -> tuple[float, list[float]]:  # type: ignore[no-untyped-def]
    cdir = pod.outputs / "_campaigns" / campaign_id
    executor = json.loads((cdir / "executor.json").read_text())
    makespan = (parse_utc(executor["ended_utc"]) or 0) - (parse_utc(executor["started_utc"]) or 0)
    rows = json.loads((cdir / "manifest.json").read_text())["rows"]
    durations = [json.loads((pod.outputs / r["run_id"] / "summary.json").read_text())["duration_s"] for r in rows]
    return makespan, durations


def run_sweep(pod, csv: str, slots: int) -> str:  # type: ignore[no-untyped-def]
    started = benchpods.must(pod.wf("--set", f"SWEEP_CPU_SLOTS={slots}", "sweep-start", "--csv", csv, "--json"))
    campaign_id = json.loads(started.stdout)["campaign_id"]
    executor = pod.outputs / "_campaigns" / campaign_id / "executor.json"
    wait_until(lambda: json.loads(executor.read_text()).get("state") == "finished", timeout=900, interval=0.5,
               what=f"campaign {campaign_id}")
    return campaign_id


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    with benchpods.workspace("makespan") as base:
        pod = benchpods.make_pod("local", base, None, benchpods.source_repo(base))
        pod.set(TRAIN_WORKDIR="tests/sweep_fixture", RUN_STALL_SECS="60")
        try:
            benchpods.must(pod.wf("bootstrap"))
            benchpods.must(pod.wf("checkout"))
            results = {}
            for kind, extra in (("sleeping", ""), ("CPU-bound", " busy=1")):
                csvs = []
                for name in ("packed", "sequential"):
                    tag = f"{name}-{'cpu' if extra else 'sleep'}"
                    path = base / f"{tag}.csv"
                    path.write_text("run_id,config,seed,overrides,notes,gpus\n" + "".join(
                        f"{tag}-{i},config/ok.py,{i},steps={args.steps} sleep=0.5{extra},,1\n"
                        for i in range(args.rows)))
                    csvs.append(str(path))
                packed_span, durations = campaign_times(pod, run_sweep(pod, csvs[0], args.slots))
                sequential_span, _ = campaign_times(pod, run_sweep(pod, csvs[1], 1))
                results[kind] = (packed_span, sequential_span, durations)
        finally:
            pod.tmux("kill-server")
    import os

    print(f"sweep makespan: {args.rows} one-slot rows, {args.slots} CPU slots, on {os.cpu_count()} CPU core(s)")
    for kind, (packed_span, sequential_span, durations) in results.items():
        ideal = sum(durations) / args.slots
        mean = sum(durations) / len(durations)
        print(f" {kind} rows (runs ~{mean:.1f}s each: torchrun start-up + steps"
              f"{' that spin the CPU' if kind == 'CPU-bound' else ' that sleep'})")
        print(f"  ideal (sum of run times / {args.slots}) {ideal:7.1f} s")
        print(f"  packed on {args.slots} slots            {packed_span:7.1f} s   "
              f"ratio to ideal {packed_span / ideal:.2f}x")
        print(f"  one by one (1 slot)          {sequential_span:7.1f} s   "
              f"packed is {sequential_span / packed_span:.2f}x faster")
        benchpods.record("sweep_makespan", f"{kind}: packed / one by one", packed_span / sequential_span)


if __name__ == "__main__":
    main()

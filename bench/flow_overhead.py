#!/usr/bin/env python3
"""flow's own overhead: `workflow.sh flow` against the sum of its phases run by hand.

Run: WORKFLOW_VENV=.workflow/venv python bench/flow_overhead.py [--rounds 2] [--rows 2]

In one run, on the `local` target (this machine is the pod), each round uses two fresh pods of the
same source repo (the sweep test trainer): on one, the phases by hand, each its own workflow.sh
command, timed one by one (bootstrap, checkout, sweep-start, sweep-watch, fetch-all); on the other,
one `workflow.sh flow` (the same phases in one command). The order alternates between rounds.
Prints per round: the sum by hand, flow's wall time, their ratio, and flow's overhead as flow itself
reports it (its wall time minus the durations it printed for its phases: the look-ups before the
first phase, planning and the phase lines). sweep-watch polls every 5 s in both, so the wait phase
adds up to 5 s of noise either way.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time

import benchpods

PHASES = ("bootstrap", "checkout", "sweep-start", "sweep-watch", "fetch-all")
SETTINGS = {"TRAIN_WORKDIR": "tests/sweep_fixture", "SWEEP_CPU_SLOTS": "2", "RUN_STALL_SECS": "60"}


def prepare(base, source, name: str, rows: int):  # type: ignore[no-untyped-def]
    folder = base / name
    folder.mkdir()
    pod = benchpods.make_pod("local", folder, None, source)
    csv = folder / "bench.csv"
    csv.write_text("run_id,config,seed,overrides,notes,gpus\n"
                   + "".join(f"{name}-{i},config/ok.py,{i},,,1\n" for i in range(rows)))
    pod.set(**SETTINGS, SWEEP_CSV=str(csv))
    return pod


def by_hand(pod) -> float:  # type: ignore[no-untyped-def]
    import json

    total = 0.0
    campaign = ""
    for phase in PHASES:
        args = [phase] + (["--json"] if phase == "sweep-start" else []) + (
            ["--campaign", campaign] if phase in ("sweep-watch", "fetch-all") else [])
        start = time.perf_counter()
        result = benchpods.must(pod.wf(*args, timeout=900))
        total += time.perf_counter() - start
        if phase == "sweep-start":
            campaign = json.loads(result.stdout)["campaign_id"]
    return total


def with_flow(pod) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = benchpods.must(pod.wf("flow", timeout=900))
    wall = time.perf_counter() - start
    inside = sum(float(x) for x in re.findall(r"^flow: \[\d/8\] \S+: (?:ok|ended \(exit \d+\)) in ([\d.]+) s",
                                              result.stdout, re.M))
    return wall, wall - inside


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rows", type=int, default=2)
    args = parser.parse_args()
    ratios, overheads = [], []
    with benchpods.workspace("flow") as base:
        source = benchpods.source_repo(base)
        for number in range(args.rounds):
            hand_pod = prepare(base, source, f"hand{number}", args.rows)
            flow_pod = prepare(base, source, f"flow{number}", args.rows)
            try:
                if number % 2 == 0:
                    hand = by_hand(hand_pod)
                    wall, own = with_flow(flow_pod)
                else:
                    wall, own = with_flow(flow_pod)
                    hand = by_hand(hand_pod)
            finally:
                for pod in (hand_pod, flow_pod):
                    pod.tmux("kill-server")
            ratios.append(wall / hand)
            overheads.append(own)
            print(f"round {number + 1}: by hand {hand:6.1f} s (sum of {len(PHASES)} commands), flow {wall:6.1f} s: "
                  f"{wall / hand:.3f}x; flow's own overhead {own:.2f} s ({own / wall * 100:.1f}% of its time)")
    ratio = statistics.median(ratios)
    print(f"flow / phases by hand: median {ratio:.3f}x over {len(ratios)} round(s); flow's own overhead median "
          f"{statistics.median(overheads):.2f} s")
    benchpods.record("flow_overhead", "flow / its phases by hand", ratio, 1.1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

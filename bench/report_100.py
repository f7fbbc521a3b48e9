#!/usr/bin/env python3
"""`workflow.sh report` of a fetched campaign of 100 runs against a bare matplotlib loop drawing the same
100 loss-curve PNGs in one process (the drawing no report can avoid). Goal (issue 14): under 10 s.

Run: WORKFLOW_VENV=.workflow/venv python bench/report_100.py [--runs 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchpods

ROOT = Path(__file__).resolve().parent.parent
BASELINE = """import json, sys, matplotlib
matplotlib.use("Agg")
from matplotlib import pyplot as plt
from pathlib import Path
artifacts, out = Path(sys.argv[1]), Path(sys.argv[2])
for run in sorted(p for p in artifacts.iterdir() if p.is_dir()):
    points = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=80)
    ax.plot([p["iter"] for p in points], [p["train_loss"] for p in points])
    ax.plot([p["iter"] for p in points], [p["val_loss"] for p in points])
    fig.savefig(out / (run.name + ".png"))
    plt.close(fig)
"""


def build(artifacts: Path, runs: int) -> None:
    for n in range(runs):
        run = artifacts / f"r{n:03d}"
        run.mkdir(parents=True)
        ok = n % 10 != 0
        (run / "summary.json").write_text(json.dumps({
            "run_id": run.name, "campaign_id": "20260101-000000-bench0", "ok": ok,
            "state": "success" if ok else "failed", "failure_class": None if ok else "crash",
            "reason_line": None if ok else "boom", "attempt": 1, "attempts": 1, "duration_s": 60.0 + n,
            "spec_hash": "x", "attempt_history": []}))
        (run / "metrics.jsonl").write_text("".join(json.dumps(
            {"iter": i, "train_loss": 4 - i / 10 + n / 1000, "val_loss": 4.1 - i / 10 + n / 1000}) + "\n"
            for i in range(20)))
        (run / "run.log").write_text("step\nboom\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    venv = os.environ.get("WORKFLOW_VENV", str(ROOT / ".workflow" / "venv"))
    python = os.path.join(venv, "bin", "python")
    with tempfile.TemporaryDirectory(prefix="wf-bench-report-") as tmp:
        base = Path(tmp)
        artifacts = base / "artifacts"
        build(artifacts, args.runs)
        env_file = base / "workflow.env"
        env_file.write_text(f"LOCAL_ARTIFACTS_DIR={artifacts}\n")
        tool, bare = [], []
        for round_ in range(args.rounds):  # interleaved
            out = base / f"bare-{round_}"
            out.mkdir()
            began = time.monotonic()
            benchpods.must(subprocess.run([python, "-c", BASELINE, str(artifacts), str(out)], text=True,
                                          capture_output=True))
            bare.append(time.monotonic() - began)
            began = time.monotonic()
            benchpods.must(subprocess.run([str(ROOT / "infra_scripts" / "workflow.sh"), "--env", str(env_file),
                                           "report", "--out", str(base / f"report-{round_}")],
                                          env={**os.environ, "WORKFLOW_VENV": venv}, text=True, capture_output=True))
            tool.append(time.monotonic() - began)
    tool_s, bare_s = statistics.median(tool), statistics.median(bare)
    ratio = tool_s / bare_s
    print(f"report of {args.runs} runs: {tool_s:.2f}s median (goal < 10 s); bare matplotlib loop "
          f"{bare_s:.2f}s; ratio {ratio:.2f}x")
    benchpods.record("report_100", f"report of {args.runs} runs vs bare matplotlib", ratio)
    return 0 if tool_s < 10 else 1


if __name__ == "__main__":
    sys.exit(main())

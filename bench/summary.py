#!/usr/bin/env python3
"""The closing table of `make bench`: every ratio the benches recorded in $BENCH_SUMMARY (JSON lines).

Run: BENCH_SUMMARY=/tmp/ratios.jsonl python bench/summary.py   (make bench sets it and runs this last)
"""

from __future__ import annotations

import json
import os
import sys


def main() -> int:
    path = os.environ.get("BENCH_SUMMARY") or (sys.argv[1] if len(sys.argv) > 1 else "")
    if not path or not os.path.exists(path):
        print("bench/summary: no ratios recorded (set BENCH_SUMMARY)", file=sys.stderr)
        return 2
    with open(path) as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    width = max([len(f"{r['bench']}: {r['name']}") for r in rows] + [10])
    print()
    print(f"{'summary of every ratio':<{width}}   ratio   target  verdict")
    for row in rows:
        target = row.get("target")
        verdict = "" if target is None else ("PASS" if row["ratio"] <= target else "OVER")
        shown = "" if target is None else f"<= {target:.2f}"
        print(f"{row['bench'] + ': ' + row['name']:<{width}}  {row['ratio']:6.2f}x  {shown:>7}  {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

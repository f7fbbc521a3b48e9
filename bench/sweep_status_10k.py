#!/usr/bin/env python3
"""sweep-status wall time for a campaign of 10,000 finished runs, against a bare `ssh host true`.

Run: WORKFLOW_VENV=.workflow/venv python bench/sweep_status_10k.py [--runs 10000] [-n 7]

Builds, in one run: a throwaway sshd on loopback, a pod directory with a synthetic campaign of
N finished runs (each run dir with the summary.json and campaign.json the executor leaves), then
times, interleaved: `ssh host true`; `workflow.sh sweep-status` called again on an unchanged finished
campaign (the pod answers `unchanged`, the client prints the text it kept: helpers/status_text.py);
the same with that kept text removed first (the pod's stored table sent, parsed and drawn: the
executor's index.json and the pod's status-cache.json); the same with the status cache removed too
(index.json parsed, every row built); and `sweep-status` with the index removed too (every run's
summary.json read). Prints medians and ratios against `ssh host true`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import benchpods


def build_campaign(outputs: str, count: int) -> None:
    campaign = "20261122-000000-bench0"
    cdir = os.path.join(outputs, "_campaigns", campaign)
    os.makedirs(cdir)
    rows, index = [], {}
    for i in range(count):
        run_id = f"run-{i:05d}"
        row = {"run_id": run_id, "row_number": i + 2, "config": "config/ok.py", "seed": i, "overrides": [],
               "gpus": 1, "timeout_secs": None, "retries": None, "notes": "", "spec_hash": f"{i:016x}"}
        rows.append(row)
        rdir = os.path.join(outputs, run_id)
        os.makedirs(rdir)
        ok = i % 10 != 0
        summary = {"schema_version": 1, "run_id": run_id, "campaign_id": campaign, "ok": ok,
                   "state": "success" if ok else "failed", "failure_class": None if ok else "nonzero_exit",
                   "attempts": 1, "duration_s": 12.5, "spec_hash": row["spec_hash"],
                   "final_metrics": {"iter": 100, "val_loss": 2.0 + i / count}}
        with open(os.path.join(rdir, "summary.json"), "w") as handle:
            json.dump(summary, handle)
        with open(os.path.join(rdir, "campaign.json"), "w") as handle:
            json.dump({"schema_version": 1, "campaign_id": campaign, "spec_hash": row["spec_hash"], "history": []},
                      handle)
        index[run_id] = {"ok": ok, "state": summary["state"], "failure_class": summary["failure_class"], "attempts": 1,
                         "duration_s": 12.5, "val_loss": summary["final_metrics"]["val_loss"]}
    with open(os.path.join(cdir, "manifest.json"), "w") as handle:
        json.dump({"schema_version": 1, "campaign_id": campaign, "created_utc": "2026-11-22T00:00:00.000Z",
                   "rows": rows, "config": {}}, handle)
    with open(os.path.join(cdir, "executor.json"), "w") as handle:
        json.dump({"state": "finished", "ended_utc": "2026-11-22T01:00:00.000Z", "slots": ["0", "1", "2", "3"]}, handle)
    with open(os.path.join(cdir, "index.json"), "w") as handle:
        json.dump(index, handle)
    os.makedirs(os.path.join(outputs, "_control"), exist_ok=True)
    with open(os.path.join(outputs, "_control", "latest_campaign"), "w") as handle:
        handle.write(campaign + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10000)
    parser.add_argument("-n", type=int, default=7)
    args = parser.parse_args()
    with benchpods.workspace("status") as base, benchpods.sshd(base) as server:
        pod = benchpods.make_pod("ssh", base, server)
        build_campaign(str(pod.outputs), args.runs)
        known = server.pinned_known_hosts(base / "pinned_known_hosts")
        status = [str(benchpods.WORKFLOW), "--env", str(pod.env_file), "sweep-status"]
        index = pod.outputs / "_campaigns" / "20261122-000000-bench0" / "index.json"
        benchpods.timed(status, check=False)  # warm-up: uploads the agent
        ssh, unchanged, with_cache, with_index, without_index = [], [], [], [], []
        cache = index.with_name("status-cache.json")  # helpers/pod/statuscache.py
        texts = benchpods.REPO_ROOT / ".workflow" / "cache"  # the client's kept texts (helpers/status_text.py)
        for _ in range(args.n):
            ssh.append(benchpods.timed([*server.ssh_argv(known), "true"]))
            benchpods.timed(status, check=False)  # (the text of this table kept)
            unchanged.append(benchpods.timed(status, check=False))
            for kept in texts.glob("status-text-*.json"):
                kept.unlink()
            with_cache.append(benchpods.timed(status, check=False))
            cache.unlink(missing_ok=True)
            with_index.append(benchpods.timed(status, check=False))
            index.rename(index.with_suffix(".aside"))
            without_index.append(benchpods.timed(status, check=False))
            index.with_suffix(".aside").rename(index)
        base_median = statistics.median(ssh)
        print(f"sweep-status, campaign of {args.runs} finished runs, over loopback ssh (one round trip)")
        print(f"  ssh host true                     {benchpods.describe(ssh)}")
        print(f"  sweep-status (unchanged)          {benchpods.describe(unchanged)}   "
              f"ratio {statistics.median(unchanged) / base_median:.2f}x")
        print(f"  sweep-status (status cache)       {benchpods.describe(with_cache)}   "
              f"ratio {statistics.median(with_cache) / base_median:.2f}x")
        print(f"  sweep-status (index, no cache)    {benchpods.describe(with_index)}   "
              f"ratio {statistics.median(with_index) / base_median:.2f}x")
        print(f"  sweep-status (read every summary) {benchpods.describe(without_index)}   "
              f"ratio {statistics.median(without_index) / base_median:.2f}x")
        benchpods.record("sweep_status_10k", "sweep-status (unchanged) / cold ssh",
                         statistics.median(unchanged) / base_median)
        benchpods.record("sweep_status_10k", "sweep-status (status cache) / cold ssh",
                         statistics.median(with_cache) / base_median)
        benchpods.record("sweep_status_10k", "sweep-status (index) / cold ssh",
                         statistics.median(with_index) / base_median)
        benchpods.record("sweep_status_10k", "sweep-status (no index) / cold ssh",
                         statistics.median(without_index) / base_median)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Per-refresh cost of sweep-watch's live view: one `sweep-watch-data` agent call on the shared SSH
connection, for a campaign of 200 rows with 8 running (each appending to a 3,000-line metrics.jsonl),
against a bare `ssh host true`.

Run: WORKFLOW_VENV=.workflow/venv python bench/watch_refresh.py [--rows 200] [--running 8] [-n 15]

Builds, in one run: a throwaway sshd on loopback, a pod directory with a synthetic campaign (192
finished rows in the executor's index, 8 rows running under a live process with metrics.jsonl files),
then times, interleaved: `ssh host true` (a new connection, as every benchmark's baseline); and one
refresh of the live view as it runs (the same Session, model and call as helpers/dashboard/live.py; one
new metrics line per running row between refreshes). Prints medians, the ratio against `ssh host true`,
and the bytes a refresh moves (request + reply; the first refresh reads each running row's tail, later
ones only the new lines).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import benchpods

CAMPAIGN = "20261203-000000-watch0"


def build_campaign(outputs: Path, rows: int, running: int) -> list[Path]:
    from helpers.pod import proctree
    from helpers.pod.jsonio import utc_now
    from helpers.pod.taskstate import new_record

    cdir = outputs / "_campaigns" / CAMPAIGN
    cdir.mkdir(parents=True)
    manifest_rows, index, metrics = [], {}, []
    me, started = os.getpid(), proctree.start_time(os.getpid())
    for i in range(rows):
        run_id = f"w-{i:04d}"
        spec = f"{i:016x}"
        manifest_rows.append({"run_id": run_id, "row_number": i + 2, "config": "config/ok.py", "seed": i,
                              "overrides": [], "gpus": 1, "notes": "", "spec_hash": spec})
        rdir = outputs / run_id
        rdir.mkdir()
        (rdir / "campaign.json").write_text(json.dumps({"schema_version": 1, "campaign_id": CAMPAIGN,
                                                        "spec_hash": spec, "history": []}))
        if i >= running:
            index[run_id] = {"ok": True, "state": "success", "failure_class": None, "attempts": 1,
                             "duration_s": 60.0, "val_loss": 2.0 + i / rows}
            continue
        record = new_record(run_id, "train.py", {})
        record.update(state="running", started_utc=utc_now(), heartbeat_utc=utc_now(), supervisor_pid=me,
                      supervisor_start_time=started)
        (rdir / "status.json").write_text(json.dumps(record))
        (rdir / "config.json").write_text(json.dumps({"max_iters": 5000}))
        lines = [json.dumps({"iter": s, "train_loss": 6.0 / (s + 1), "val_loss": 5.0 / (s + 1), "lr": 6e-4,
                             "tokens_per_sec": 120000.0, "mfu": 0.4, "elapsed_s": s * 0.5}) for s in range(3000)]
        (rdir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        metrics.append(rdir / "metrics.jsonl")
    (cdir / "manifest.json").write_text(json.dumps({"schema_version": 1, "campaign_id": CAMPAIGN,
                                                    "created_utc": "2026-12-03T00:00:00.000Z",
                                                    "rows": manifest_rows, "config": {}}))
    (cdir / "executor.json").write_text(json.dumps({"state": "running", "pid": me, "start_time": started,
                                                    "boot_id": proctree.boot_id(), "heartbeat_utc": utc_now(),
                                                    "slots": [str(s) for s in range(running)]}))
    (cdir / "index.json").write_text(json.dumps(index))
    (outputs / "_control").mkdir(parents=True, exist_ok=True)
    (outputs / "_control" / "latest_campaign").write_text(CAMPAIGN + "\n")
    return metrics


def session_for(env_file: Path):  # type: ignore[no-untyped-def]
    import argparse as ap

    from helpers.cli import COMMANDS_BY_NAME
    from helpers.config_cache import load
    from helpers.resolved import ConfigRequest
    from helpers.session import Session

    cfg = load(ConfigRequest(project_root=benchpods.REPO_ROOT, env_file=env_file), cacheable=False)
    return Session(cfg, ap.Namespace(campaign=None, debug=False, interval=None, plain=False, json=False),
                   COMMANDS_BY_NAME["sweep-watch"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--running", type=int, default=8)
    parser.add_argument("-n", type=int, default=15)
    args = parser.parse_args()
    from helpers.dashboard.model import WatchModel

    with benchpods.workspace("watch") as base, benchpods.sshd(base) as server:
        pod = benchpods.make_pod("ssh", base, server)
        metrics = build_campaign(pod.outputs, args.rows, args.running)
        known = server.pinned_known_hosts(base / "pinned_known_hosts")
        os.environ.update(benchpods.bench_env())
        session = session_for(pod.env_file)
        model = WatchModel(None)
        sizes: list[tuple[int, int]] = []

        def refresh() -> float:
            request = model.request()
            begin = time.perf_counter()
            reply = session.call_reconnecting("sweep-watch-data", args_fn=model.request, timeout=300)
            elapsed = time.perf_counter() - begin
            sent = json.dumps({"config": session.cfg.pod_values(include_secrets=False), "args": request})  # as agent.py
            sizes.append((len(sent), len(json.dumps({"ok": True, "result": reply}, separators=(",", ":")))))
            model.merge(reply)
            return elapsed

        first = refresh()  # uploads the agent, opens the shared connection, reads each running row's tail
        first_bytes = sizes[-1]
        ssh, watch, plain = [], [], []
        step = 3000
        try:
            for _ in range(args.n):
                ssh.append(benchpods.timed([*server.ssh_argv(known), "true"]))
                for path in metrics:  # the trainers go on: one new line each
                    with path.open("a") as handle:
                        handle.write(json.dumps({"iter": step, "train_loss": 0.5, "val_loss": 0.6}) + "\n")
                step += 1
                watch.append(refresh())
                begin = time.perf_counter()  # what the plain view asks for: the rows only
                session.call_reconnecting("sweep-status", {"campaign": None}, timeout=300)
                plain.append(time.perf_counter() - begin)
        finally:
            session.close()
        shown = model.rows()
        assert sum(1 for r in shown if r["state"] == "running") == args.running, [r["state"] for r in shown[:10]]
        assert all(r["step"] == step - 1 for r in shown if r["state"] == "running")
        base_median = statistics.median(ssh)
        steady = sizes[1:]
        print(f"sweep-watch refresh, campaign of {args.rows} rows ({args.running} running), loopback ssh")
        print(f"  ssh host true (new connection)       {benchpods.describe(ssh)}")
        print(f"  one refresh (sweep-watch-data)       {benchpods.describe(watch)}   "
              f"ratio {statistics.median(watch) / base_median:.2f}x")
        print(f"  sweep-status call (plain view)       {benchpods.describe(plain)}   "
              f"ratio {statistics.median(plain) / base_median:.2f}x")
        print(f"  first refresh (agent upload + tails) {first * 1000:7.1f} ms, request {first_bytes[0]} B, "
              f"reply {first_bytes[1]} B")
        print(f"  steady refresh bytes                 request median {statistics.median(s[0] for s in steady):.0f} B "
              f"(the config included), reply median {statistics.median(s[1] for s in steady):.0f} B")
        benchpods.record("watch_refresh", "sweep-watch refresh / cold ssh", statistics.median(watch) / base_median)


if __name__ == "__main__":
    sys.exit(main())

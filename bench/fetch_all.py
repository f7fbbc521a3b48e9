#!/usr/bin/env python3
"""fetch-all of 200 MB in 1,000 files against `ssh host 'tar cf - ...' | tar xf -`, then a second fetch.

Run: WORKFLOW_VENV=.workflow/venv python bench/fetch_all.py [--mb 200] [--files 1000]

In one run: a throwaway sshd on loopback; a synthetic finished campaign of 10 runs holding
--files files of --mb MB in all (random bytes, so nothing compresses); then, interleaved three
times each: the baseline `ssh host tar cf - -C OUTPUTS <runs> | tar xf - -C DEST` into an empty dir,
and `workflow.sh fetch-all` (rsync over the same ssh settings, then a size + sha256 check of
every file) into an empty LOCAL_ARTIFACTS_DIR, once in a pipe and once on a pseudo-terminal (where it
draws its own progress line from rsync's progress2 counts); finally `fetch-all` again with nothing changed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import threading
import time

import benchpods

CAMPAIGN = "20261122-000000-fetch0"


def build(outputs: str, total_mb: int, files: int, runs: int = 10) -> list[str]:
    size = total_mb * 1_000_000 // files
    cdir = os.path.join(outputs, "_campaigns", CAMPAIGN)
    os.makedirs(cdir)
    rows = []
    for r in range(runs):
        run_id = f"fetch-{r:02d}"
        rdir = os.path.join(outputs, run_id)
        os.makedirs(os.path.join(rdir, "samples"))
        for f in range(files // runs):
            with open(os.path.join(rdir, "samples", f"part-{f:04d}.bin"), "wb") as handle:
                handle.write(os.urandom(size))
        with open(os.path.join(rdir, "campaign.json"), "w") as handle:
            json.dump({"campaign_id": CAMPAIGN, "spec_hash": f"{r:016x}"}, handle)
        with open(os.path.join(rdir, "summary.json"), "w") as handle:
            json.dump({"ok": True, "state": "success", "campaign_id": CAMPAIGN, "spec_hash": f"{r:016x}"}, handle)
        rows.append({"run_id": run_id, "spec_hash": f"{r:016x}"})
    with open(os.path.join(cdir, "manifest.json"), "w") as handle:
        json.dump({"campaign_id": CAMPAIGN, "rows": rows, "config": {}}, handle)
    os.makedirs(os.path.join(outputs, "_control"), exist_ok=True)
    with open(os.path.join(outputs, "_control", "latest_campaign"), "w") as handle:
        handle.write(CAMPAIGN + "\n")
    return [row["run_id"] for row in rows]


def timed_tty(argv: list[str]) -> float:
    """Like benchpods.timed, with stdin/stdout/stderr on a pseudo-terminal that is read as fast as it is written."""
    master, slave = os.openpty()
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=benchpods.bench_env(), stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True)
    os.close(slave)
    seen: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            if not chunk:
                return
            seen.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    code = proc.wait()
    elapsed = time.perf_counter() - start
    reader.join(5)
    os.close(master)
    if code != 0:
        raise SystemExit(f"bench: {' '.join(argv[:6])}... failed on a terminal ({code}): {b''.join(seen)[-500:]!r}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("-n", type=int, default=3)
    args = parser.parse_args()
    with benchpods.workspace("fetch") as base, benchpods.sshd(base) as server:
        pod = benchpods.make_pod("ssh", base, server)
        run_ids = build(str(pod.outputs), args.mb, args.files)
        known = server.pinned_known_hosts(base / "pinned_known_hosts")
        artifacts = base / "artifacts"
        pod.set(LOCAL_ARTIFACTS_DIR=str(artifacts))
        fetch = [str(benchpods.WORKFLOW), "--env", str(pod.env_file), "fetch-all"]
        benchpods.must(pod.wf("fsm-status"))  # warm-up: uploads the agent (not part of any timing)
        tar_dest = base / "tar-dest"
        baseline, ours, on_tty = [], [], []
        for _ in range(args.n):
            shutil.rmtree(tar_dest, ignore_errors=True)
            tar_dest.mkdir()
            remote = " ".join(["tar", "cf", "-", "-C", str(pod.outputs), *run_ids])
            ssh = subprocess.list2cmdline([*server.ssh_argv(known), remote])
            baseline.append(benchpods.timed(["bash", "-c", f"{ssh} | tar xf - -C {tar_dest}"]))
            shutil.rmtree(artifacts, ignore_errors=True)
            ours.append(benchpods.timed(fetch))
            shutil.rmtree(artifacts, ignore_errors=True)
            on_tty.append(timed_tty(fetch))
        unchanged = [benchpods.timed(fetch) for _ in range(args.n)]
        got = sum(1 for _ in artifacts.rglob("part-*.bin"))
        ratio = statistics.median(ours) / statistics.median(baseline)
        print(f"fetch-all: {args.mb} MB in {args.files} files over 10 runs, loopback ssh "
              f"({got} files arrived, verified)")
        print(f"  ssh tar cf - | tar xf -          {benchpods.describe(baseline)}")
        print(f"  fetch-all (rsync + sha256 check)  {benchpods.describe(ours)}   ratio {ratio:.2f}x")
        tty_ratio = statistics.median(on_tty) / statistics.median(baseline)
        print(f"  fetch-all on a terminal (progress) {benchpods.describe(on_tty)}   ratio {tty_ratio:.2f}x")
        benchpods.record("fetch_all", "fetch-all / ssh tar", ratio)
        benchpods.record("fetch_all", "fetch-all on a terminal / ssh tar", tty_ratio)
        benchpods.record("fetch_all", "fetch-all unchanged / ssh tar",
                         statistics.median(unchanged) / statistics.median(baseline))
        print(f"  fetch-all again, nothing changed  {benchpods.describe(unchanged)}   "
              f"ratio {statistics.median(unchanged) / statistics.median(baseline):.2f}x of a full tar copy")


if __name__ == "__main__":
    main()

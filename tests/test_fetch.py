"""fetch-all's report: real sizes, --json rows as objects, and a rerun with nothing new says "up to date,
verified" (issue 10, item 8); on the `local` target and over the loopback sshd with rsync."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from conftest import Pod, wait_until

from helpers.fetch import human_size

SETTINGS = {"TRAIN_WORKDIR": "tests/sweep_fixture", "SWEEP_CPU_SLOTS": "2", "RUN_STALL_SECS": "60",
            "RUN_RETRIES": "0", "TASK_KILL_GRACE_SECS": "2"}


def _ended(pod: Pod) -> bool:
    campaigns = pod.outputs / "_campaigns"
    for campaign in campaigns.iterdir() if campaigns.is_dir() else []:
        with contextlib.suppress(OSError, ValueError):
            return json.loads((campaign / "executor.json").read_text()).get("state") in ("finished", "stopped", "lost")
    return False


def _local_sizes(run: Path) -> tuple[int, int]:
    files = [p for p in run.rglob("*") if p.is_file() and p.name != ".wf-fetch-checksums.json"]
    return len(files), sum(p.stat().st_size for p in files)


def test_fetch_all_sizes_json_objects_and_up_to_date_rerun(pod: Pod, tmp_path: Path):
    pod.set(**SETTINGS)
    for command in ("bootstrap", "checkout"):
        result = pod.wf(command, timeout=600)
        assert result.returncode == 0, f"{command}: {result.stderr}"
    csv = tmp_path / "f.csv"
    csv.write_text("run_id,config,seed,overrides,notes,gpus\nfe-ok,config/ok.py,1,,ok,1\nfe-fail,config/fail.py,2,,"
                   "fails,1\n")
    assert pod.wf("sweep-start", "--csv", str(csv)).returncode == 0
    try:
        wait_until(lambda: _ended(pod), 300, interval=0.5, what="the sweep to end")
    finally:
        pod.tmux("kill-server")
    artifacts = tmp_path / "artifacts"

    first = pod.wf("fetch-all", "--json", timeout=300)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    rows = {row["run_id"]: row for row in report["runs"]}
    assert sorted(rows) == ["fe-fail", "fe-ok"] and report["up_to_date"] is False
    for run_id, row in rows.items():
        files, size = _local_sizes(artifacts / run_id)
        assert row["files"] == files == row["fetched_files"] and row["bytes"] == size > 1000, row
        assert row["final"] is True
    assert rows["fe-ok"]["state"] == "ok" and report["fetched_files"] == sum(r["files"] for r in rows.values())

    again = pod.wf("fetch-all", timeout=300)  # nothing changed: nothing copied, all verified
    assert again.returncode == 0, again.stderr
    lines = again.stdout.splitlines()
    assert lines[-1].startswith(f"up to date, verified {report['fetched_files']} file(s)"), lines[-1]
    assert "0.0 MB" not in again.stdout
    for run_id, row in rows.items():
        line = next(line for line in lines if line.startswith(run_id + " "))
        assert human_size(row["bytes"]) in line and line.split()[-1] == "0", line
    again_json = json.loads(pod.wf("fetch-all", "--json", timeout=300).stdout)
    assert again_json["up_to_date"] is True and again_json["fetched_files"] == 0

    log = artifacts / "fe-ok" / "run.log"
    log.write_bytes(b"x" * log.stat().st_size)  # a damaged local copy is fetched again, and said so
    repaired = pod.wf("fetch-all", timeout=300)
    assert repaired.returncode == 0, repaired.stderr
    assert repaired.stdout.splitlines()[-1].startswith("fetched 1 file(s) and verified all"), repaired.stdout
    assert log.read_bytes() == (pod.outputs / "fe-ok" / "run.log").read_bytes()

"""The managed-recovery fence stops a superseded executor that is still alive (a shared volume, its pod
only cut off): once manage-prepare of a newer epoch has fenced its generation, it writes no attempt
record or summary of its rows and exits. Real tmux executor on the local target."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import Pod, wait_until

SETTINGS = {"TRAIN_WORKDIR": "tests/sweep_fixture", "SWEEP_CPU_SLOTS": "1", "RUN_STALL_SECS": "60",
            "RUN_RETRY_BACKOFF_SECS": "1", "TASK_KILL_GRACE_SECS": "2"}


@pytest.fixture
def ready(local_pod: Pod) -> Pod:
    local_pod.set(**SETTINGS)
    for command in ("bootstrap", "checkout"):
        assert local_pod.wf(command, timeout=600).returncode == 0, command
    return local_pod


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()


def test_a_superseded_executor_writes_no_results_and_exits(ready: Pod, tmp_path: Path) -> None:
    from helpers.pod.context import Context
    from helpers.pod.manage_ops import manage_prepare

    csv = tmp_path / "f.csv"
    csv.write_text("run_id,config,seed,overrides,notes,gpus\nfe-1,config/hang.py,1,,,1\nfe-2,config/ok.py,2,,,1\n")
    start = ready.wf("sweep-start", "--csv", str(csv), "--json")
    assert start.returncode == 0, start.stderr
    campaign = json.loads(start.stdout)["campaign_id"]
    path = ready.outputs / "_campaigns" / campaign
    run = ready.outputs / "fe-1"
    wait_until(lambda: (run / "status.json").exists() and json.loads((run / "status.json").read_text()).get(
        "state") == "running", timeout=120, interval=0.2, what="fe-1 runs")
    pid = int(json.loads((path / "executor.json").read_text())["pid"])
    # a newer epoch takes the campaign over (manage-prepare on the replacement, same shared outputs)
    manifest = json.loads((path / "manifest.json").read_text())
    done = manage_prepare(Context(manifest["config"], {"campaign": campaign, "epoch": 2, "pod": "new-pod"}))
    assert done["fenced_generation"] == 1
    wait_until(lambda: not alive(pid), timeout=120, interval=0.2, what="the superseded executor exits")
    log = (path / "executor.log").read_text()
    assert "superseded: epoch 2 (pod new-pod)" in log and "exiting without writing results" in log, log
    # nothing of the superseded attempt was written as a result: no summary, no attempt record, no verdict
    assert not (run / "summary.json").exists()
    assert not (run / "attempts.jsonl").exists()
    assert "fe-1" not in json.loads((path / "index.json").read_text() if (path / "index.json").exists() else "{}")
    assert not (ready.outputs / "fe-2").exists()  # and it started nothing more

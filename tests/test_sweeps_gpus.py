"""GPU packing end to end without GPUs: the executor takes its GPU ids from CUDA_VISIBLE_DEVICES when it
is set (a run variable in workflow.env), so a pod that says it has GPUs 0-3 gets 1-GPU rows packed four
at a time, each run with its own CUDA_VISIBLE_DEVICES, and a row without `gpus` takes them all under
torchrun with one process per GPU. The stand-in trainer (tests/sweep_fixture) prints what it saw."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Pod, make_pod
from test_sweeps import reap, run_dir, setup_pod, start, summary, utc, wait_campaign, write_csv


@pytest.fixture
def gpu_pod(tmp_path: Path, source_repo: Path) -> Iterator[Pod]:
    pod = make_pod("local", tmp_path, source_repo, None)
    try:
        setup_pod(pod, CUDA_VISIBLE_DEVICES="0,1,2,3")
        yield pod
    finally:
        reap(pod)


def devices_seen(pod: Pod, run_id: str) -> set[str]:
    return set(re.findall(r"cuda=([0-9,]+)", (run_dir(pod, run_id) / "run.log").read_text()))


def test_one_gpu_rows_are_packed_onto_free_gpus_and_a_full_row_takes_all(gpu_pod: Pod, tmp_path: Path):
    rows = [f"g{i},config/ok.py,{i},steps=8 sleep=0.5,,1" for i in range(4)]
    rows.append("all,config/ok.py,9,steps=2 sleep=0.1,,")
    plan = gpu_pod.wf("sweep-start", "--dry-run", "--csv", str(write_csv(tmp_path / "plan.csv", *rows)))
    assert plan.returncode == 0, plan.stderr
    assert "--nproc_per_node=4" in plan.stdout and "CUDA_VISIBLE_DEVICES=0,1,2,3 " in plan.stdout
    launched = start(gpu_pod, write_csv(tmp_path / "gpus.csv", *rows))
    done = wait_campaign(gpu_pod, launched["campaign_id"])
    assert done["state"] == "finished"
    runs = {run_id: summary(gpu_pod, run_id) for run_id in ("g0", "g1", "g2", "g3", "all")}
    assert all(s["ok"] for s in runs.values()), {k: s["state"] for k, s in runs.items()}
    seen = [devices_seen(gpu_pod, f"g{i}") for i in range(4)]
    assert all(len(s) == 1 for s in seen) and sorted(next(iter(s)) for s in seen) == ["0", "1", "2", "3"]
    one_gpu = [runs[f"g{i}"] for i in range(4)]
    assert max(utc(r["started_utc"]) for r in one_gpu) < min(utc(r["ended_utc"]) for r in one_gpu)  # all at once
    log = (run_dir(gpu_pod, "all") / "run.log").read_text()
    assert devices_seen(gpu_pod, "all") == {"0,1,2,3"} and "world=4" in log
    assert utc(runs["all"]["started_utc"]) >= max(utc(r["ended_utc"]) for r in one_gpu)

"""MLflow tracking on the Slurm executor: a small campaign (ok, failing, ok) as job arrays on the real
one-node cluster (tests/slurm_cluster.py), tracked to the real `mlflow server` (tests/mlflow_server.py)
by the campaign's sidecar that sweep-start runs on the login node, checked through MlflowClient: the
parent/child tree, final statuses (failure class tag), executor tag `slurm`, one step-indexed point per
metrics.jsonl line, the artifacts, the parent's campaign totals, and each row's own MLFLOW_RUN_ID; and
that `scontrol requeue` of a running row and `sweep-resume` of a failed one reuse the row's child."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Pod, cleanup_pod, make_pod, wait_until
from test_slurm import squeue, wait_done
from test_sweeps import FIXTURE_SETTINGS, campaign_ids, write_csv
from test_tracking import assert_points_match_lines, campaign_record, children, no_secret, settled_parent

PASSWORD = "mlflow-sekrit-slurm-5a6b7c"
TIMEOUT = 240


@pytest.fixture(scope="module")
def tracked_login(tmp_path_factory: pytest.TempPathFactory, source_repo: Path, slurm_cluster: Any,
                  mlflow_server: Any) -> Iterator[Pod]:
    pod = make_pod("local", tmp_path_factory.mktemp("slurm-tracked"), source_repo, None)
    pod.extra_env.update(slurm_cluster.env)
    pod.set(**{**FIXTURE_SETTINGS, "SWEEP_EXECUTOR": "slurm", "RUN_RETRIES": "0",
               "MLFLOW_TRACKING_URI": mlflow_server.uri, "MLFLOW_EXPERIMENT": f"wf-slurm-{uuid.uuid4().hex[:8]}",
               "MLFLOW_TRACKING_USERNAME": "tester", "MLFLOW_TRACKING_PASSWORD": PASSWORD,
               # a loaded CI machine can take more than the default 20 s to start the login node's sidecar
               # (sweep-start starts it after submitting); the wait ends as soon as the children exist
               "TRACKING_WAIT_SECS": "120"})
    try:
        for command in ("bootstrap", "checkout"):
            result = pod.wf(command, timeout=600)
            assert result.returncode == 0, f"{command}: {result.stderr}"
        yield pod
    finally:
        for campaign in campaign_ids(pod):
            pod.wf("sweep-stop", "--campaign", campaign, timeout=120)
        for record in pod.outputs.glob("_campaigns/*/tracking.json"):
            with contextlib.suppress(OSError, ValueError, ProcessLookupError, TypeError):
                os.kill(int(json.loads(record.read_text()).get("sidecar_pid")), signal.SIGKILL)
        cleanup_pod(pod)


def test_slurm_campaign_is_tracked_parent_children_metrics_statuses(tracked_login: Pod, slurm_cluster: Any,
                                                                     mlflow_server: Any, tmp_path: Path) -> None:
    pod = tracked_login
    csv = write_csv(tmp_path / "tracked.csv", "ts-ok,config/ok.py,1,steps=4,succeeds,1",
                    "ts-fail,config/fail.py,2,,exits at step 1,", "ts-two,config/ok.py,3,steps=3,,")
    result = pod.wf("sweep-start", "--csv", str(csv), "--json")
    assert result.returncode == 0, result.stderr
    started = json.loads(result.stdout)
    campaign = started["campaign_id"]
    assert started["executor"] == "slurm" and started["job_ids"]
    # the sidecar runs on the login node, beside the campaign, from sweep-start (not in an array task)
    wait_until(lambda: campaign_record(pod, campaign).get("sidecar_pid"), 60, interval=0.3,
               what="the campaign's tracking sidecar")
    wait_until(lambda: not squeue(slurm_cluster, campaign), TIMEOUT, interval=0.5, what=f"{campaign} to end")
    parent = settled_parent(pod, mlflow_server, campaign)
    assert parent.data.tags["workflow.campaign_id"] == campaign
    assert parent.data.tags["workflow.executor"] == "slurm"
    assert parent.info.status == "FAILED"  # one row failed
    kids = children(mlflow_server, parent)
    assert sorted(kids) == ["ts-fail", "ts-ok", "ts-two"]
    statuses = {r: wait_until(lambda r=r: (lambda s: s if s != "RUNNING" else None)(
        mlflow_server.client().get_run(kids[r].info.run_id).info.status), TIMEOUT, what=r) for r in kids}
    assert statuses == {"ts-ok": "FINISHED", "ts-fail": "FAILED", "ts-two": "FINISHED"}
    kids = children(mlflow_server, parent)
    assert kids["ts-fail"].data.tags["failure_class"] == "nonzero_exit"
    for run_id, child in kids.items():
        assert child.data.tags["workflow.executor"] == "slurm", run_id
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["workflow.campaign_id"] == campaign
        assert_points_match_lines(pod, mlflow_server, run_id, child)  # step-indexed, none twice
        artifacts = {a.path for a in mlflow_server.client().list_artifacts(child.info.run_id)}
        assert {"summary.json", "run_manifest.json"} <= artifacts, (run_id, artifacts)
    assert kids["ts-ok"].data.params["steps"] == "4" and kids["ts-ok"].data.params["config"] == "config/ok.py"
    totals = mlflow_server.client().get_run(parent.info.run_id).data.metrics
    assert (totals["rows_total"], totals["rows_ok"], totals["rows_failed"]) == (3, 2, 1)
    # each array task's row got its own child run id (the campaign's, not a per-task dir), never the parent's
    for run_id in ("ts-ok", "ts-two"):
        seen = json.loads((pod.outputs / run_id / "mlflow_env.json").read_text())
        assert seen["MLFLOW_RUN_ID"] == kids[run_id].info.run_id, run_id
        assert "MLFLOW_PARENT_RUN_ID" not in seen
    manifest = json.loads((pod.outputs / "ts-ok" / "run_manifest.json").read_text())
    assert manifest["slurm"]["job_id"] in started["job_ids"]
    assert not list((pod.outputs / "_campaigns" / campaign / "slurm" / "rows").glob("*/tracking*"))  # one sidecar
    no_secret(pod, mlflow_server, [parent, *kids.values()])
    shown = pod.wf("sweep-status", "--campaign", campaign)
    assert "tracking: MLflow parent run" in shown.stdout, shown.stdout
    # everything settled: the login node's sidecar has exited by itself (nothing left behind)
    pid = int(campaign_record(pod, campaign)["sidecar_pid"])
    wait_until(lambda: not _alive(pid), 60, interval=0.3, what=f"the sidecar (pid {pid}) to exit")


def test_slurm_requeue_and_resume_reuse_the_same_child(tracked_login: Pod, slurm_cluster: Any,
                                                       mlflow_server: Any, tmp_path: Path) -> None:
    pod = tracked_login
    csv = write_csv(tmp_path / "requeue.csv", "tq-long,config/ok.py,1,steps=30 sleep=0.5,requeued,",
                    "tq-fail,config/fail.py,2,,fails; resumed,")
    result = pod.wf("sweep-start", "--csv", str(csv), "--json")
    assert result.returncode == 0, result.stderr
    started = json.loads(result.stdout)
    campaign = started["campaign_id"]
    metrics = pod.outputs / "tq-long" / "metrics.jsonl"
    wait_until(lambda: metrics.exists() and metrics.read_bytes().count(b"\n") >= 3, TIMEOUT, interval=0.5,
               what="tq-long to train")
    slurm_cluster.run("scontrol", "requeue", f"{started['job_ids'][0]}_0")
    final = wait_done(pod, slurm_cluster, campaign)
    assert {r["run_id"]: r["attempts"] for r in final["rows"]}["tq-long"] == 2  # the requeue: a second attempt
    parent = settled_parent(pod, mlflow_server, campaign)
    kids = children(mlflow_server, parent)
    long_child = wait_until(lambda: (lambda run: run if run.info.status != "RUNNING" else None)(
        mlflow_server.client().get_run(kids["tq-long"].info.run_id)), TIMEOUT, what="tq-long settled")
    assert long_child.info.status == "FINISHED" and long_child.data.tags["workflow.attempt"] == "2"

    resumed = pod.wf("sweep-resume", "--campaign", campaign, "--json")
    assert resumed.returncode == 0, resumed.stderr
    wait_done(pod, slurm_cluster, campaign)

    def failed_again() -> Any:
        run = mlflow_server.client().get_run(kids["tq-fail"].info.run_id)
        return run if run.data.tags.get("workflow.attempt") == "2" and run.info.status != "RUNNING" else None

    failed = wait_until(failed_again, TIMEOUT, interval=0.5, what="tq-fail's child at attempt 2, settled")
    assert failed.info.status == "FAILED"
    for run_id, child in (("tq-long", long_child), ("tq-fail", failed)):
        named = mlflow_server.client().search_runs([parent.info.experiment_id],
                                                   filter_string=f"tags.`workflow.run_id` = '{run_id}'")
        assert [r.info.run_id for r in named] == [child.info.run_id], run_id  # one child over both attempts
        lines = (pod.outputs / run_id / "metrics.jsonl").read_bytes().count(b"\n")
        points = mlflow_server.client().get_metric_history(child.info.run_id, "val_loss")
        assert len(points) == lines, (run_id, len(points), lines)  # the requeue's lines too, none twice
    assert sorted(children(mlflow_server, parent)) == ["tq-fail", "tq-long"]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"

"""Experiment tracking end to end: real sweeps (tmux executor, supervisors, the stand-in trainer of
tests/sweep_fixture/) tracked to a real `mlflow server` (sqlite, loopback; the session fixture
``mlflow_server``), checked through MlflowClient: the parent/child tree and final statuses, one point
per metrics.jsonl line, MLFLOW_PARENT_RUN_ID, a retry reusing its child, the server going down and
coming back mid-run (nothing lost, nothing doubled), `track` resending a campaign, no secret anywhere."""

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
from conftest import Pod, make_pod, wait_until
from test_sweeps import SECRET, reap, run_dir, run_state, setup_pod, start, wait_campaign, write_csv

PASSWORD = "mlflow-sekrit-0d1e2f3a4b5c"
SETTLE = 180


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory, source_repo: Path, mlflow_server: Any) -> Iterator[Pod]:
    pod = make_pod("local", tmp_path_factory.mktemp("tracked"), source_repo, None)
    try:
        setup_pod(pod, WANDB_API_KEY=SECRET, MLFLOW_TRACKING_URI=mlflow_server.uri,
                  MLFLOW_EXPERIMENT=f"wf-tests-{uuid.uuid4().hex[:8]}", MLFLOW_TRACKING_USERNAME="tester",
                  MLFLOW_TRACKING_PASSWORD=PASSWORD, RUN_RETRIES="1")
        yield pod
    finally:
        for record in pod.outputs.glob("_campaigns/*/tracking.json"):
            with contextlib.suppress(OSError, ValueError, ProcessLookupError, TypeError):
                os.kill(int(json.loads(record.read_text()).get("sidecar_pid")), signal.SIGKILL)
        reap(pod)


def campaign_record(pod: Pod, campaign: str) -> dict[str, Any]:
    try:
        return dict(json.loads((pod.outputs / "_campaigns" / campaign / "tracking.json").read_text()))
    except (OSError, ValueError):
        return {}


def settled_parent(pod: Pod, server: Any, campaign: str) -> Any:
    """The campaign's parent run once the sidecar has given it its final status."""
    def done() -> Any:
        parent = campaign_record(pod, campaign).get("parent_run_id")
        if not parent:
            return None
        run = server.client().get_run(parent)
        return run if run.info.status != "RUNNING" else None

    return wait_until(done, SETTLE, interval=0.5, what=f"campaign {campaign}'s parent run to be settled")


def children(server: Any, parent: Any) -> dict[str, Any]:
    runs = server.client().search_runs([parent.info.experiment_id],
                                       filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return {run.data.tags["workflow.run_id"]: run for run in runs}


def assert_points_match_lines(pod: Pod, server: Any, run_id: str, child: Any) -> None:
    lines = _lines(run_dir(pod, run_id) / "metrics.jsonl")
    assert lines > 0, run_id
    for key in ("val_loss", "batch_size"):
        history = server.client().get_metric_history(child.info.run_id, key)
        assert len(history) == lines, (run_id, key, len(history), lines)
        assert len({point.step for point in history}) == len(history), f"{run_id}: a step sent twice"


def no_secret(pod: Pod, server: Any, runs: list[Any]) -> None:
    for run in runs:
        text = json.dumps({"params": run.data.params, "tags": run.data.tags})
        assert PASSWORD not in text and SECRET not in text, run.info.run_id
    for path in pod.outputs.glob("_campaigns/*/tracking*"):
        files = [path] if path.is_file() else list(path.glob("*"))
        for file in files:
            body = file.read_text(errors="replace")
            assert PASSWORD not in body and SECRET not in body, file


def test_tree_statuses_points_and_no_secret(tracked: Pod, mlflow_server: Any, tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "tree.csv",
                    "tr-ok,config/ok.py,1,steps=4,succeeds,1",
                    "tr-fail,config/fail.py,2,,exits 3 at step 1,1",
                    "tr-slow,config/slow.py,3,steps=60,cancelled by sweep-stop,1")
    campaign = start(tracked, csv, "--set", "SWEEP_CPU_SLOTS=3")["campaign_id"]
    wait_until(lambda: all((run_dir(tracked, r) / "summary.json").exists() for r in ("tr-ok", "tr-fail")), 120,
               interval=0.3, what="tr-ok and tr-fail to end")
    wait_until(lambda: run_state(tracked, "tr-slow") == "running" and _lines(
        run_dir(tracked, "tr-slow") / "metrics.jsonl") >= 2, 120, interval=0.3, what="tr-slow running")
    status = tracked.wf("sweep-status")
    assert "tracking: MLflow parent run" in status.stdout, status.stdout
    stop = tracked.wf("sweep-stop", "--campaign", campaign, timeout=300)
    assert stop.returncode == 0, stop.stderr
    wait_campaign(tracked, campaign)
    parent = settled_parent(tracked, mlflow_server, campaign)
    assert parent.data.tags["workflow.campaign_id"] == campaign
    assert parent.info.status in ("KILLED", "FAILED")
    kids = children(mlflow_server, parent)
    assert sorted(kids) == ["tr-fail", "tr-ok", "tr-slow"]
    statuses = {r: wait_until(lambda r=r: (lambda s: s if s != "RUNNING" else None)(
        mlflow_server.client().get_run(kids[r].info.run_id).info.status), SETTLE, what=r) for r in kids}
    assert statuses == {"tr-ok": "FINISHED", "tr-fail": "FAILED", "tr-slow": "KILLED"}
    kids = children(mlflow_server, parent)
    assert kids["tr-fail"].data.tags["failure_class"]
    assert kids["tr-ok"].data.params["steps"] == "4" and kids["tr-ok"].data.params["seed"] == "1"
    assert kids["tr-ok"].data.params["config"] == "config/ok.py"
    for tag in ("workflow.campaign_id", "workflow.attempt", "workflow.target", "workflow.executor", "git.sha",
                "git.dirty"):
        assert kids["tr-ok"].data.tags.get(tag), tag
    for run_id in kids:
        assert_points_match_lines(tracked, mlflow_server, run_id, kids[run_id])
    artifacts = {a.path for a in mlflow_server.client().list_artifacts(kids["tr-ok"].info.run_id)}
    assert {"summary.json", "run_manifest.json"} <= artifacts
    totals = mlflow_server.client().get_run(parent.info.run_id).data.metrics
    assert totals["rows_total"] == 3 and totals["rows_ok"] == 1
    # every row's process (all three started at once) got its own run id, never the parent's: the children
    # were all created before the first row started
    for run_id in kids:
        seen = json.loads((run_dir(tracked, run_id) / "mlflow_env.json").read_text())
        assert seen.get("MLFLOW_RUN_ID") == kids[run_id].info.run_id, run_id
        assert "MLFLOW_PARENT_RUN_ID" not in seen
    no_secret(tracked, mlflow_server, [parent, *kids.values()])
    # track resends nothing: every cursor is at the end already
    again = tracked.wf("track", "--campaign", campaign, "--json")
    assert again.returncode == 0, again.stderr
    for run_id in kids:
        assert_points_match_lines(tracked, mlflow_server, run_id, kids[run_id])


def test_retry_reuses_its_child_and_a_second_submission_attaches_to_the_parent(
        tracked: Pod, mlflow_server: Any, tmp_path: Path) -> None:
    first = start(tracked, write_csv(tmp_path / "retry.csv", "rt-nccl,config/flaky.py,1,,nccl error once,1")
                  )["campaign_id"]
    wait_campaign(tracked, first)
    parent = settled_parent(tracked, mlflow_server, first)
    kids = children(mlflow_server, parent)
    assert list(kids) == ["rt-nccl"]  # two attempts, one child
    child = kids["rt-nccl"]
    assert child.info.status == "FINISHED"
    assert child.data.tags["workflow.attempt"] == "2"
    assert_points_match_lines(tracked, mlflow_server, "rt-nccl", child)
    named = mlflow_server.client().search_runs([parent.info.experiment_id], filter_string="tags.`workflow.run_id` = "
                                               "'rt-nccl'")
    assert len(named) == 1

    def campaign_parents() -> int:
        return len(mlflow_server.client().search_runs(
            [parent.info.experiment_id], filter_string="tags.`workflow.kind` = 'campaign'"))

    before = campaign_parents()
    second = start(tracked, write_csv(tmp_path / "attach.csv", "at-ok,config/ok.py,2,,attached,1"),
                   "--set", f"MLFLOW_PARENT_RUN_ID={parent.info.run_id}")["campaign_id"]
    wait_campaign(tracked, second)
    assert campaign_record(tracked, second)["parent_run_id"] == parent.info.run_id
    wait_until(lambda: mlflow_server.client().get_run(parent.info.run_id).info.status != "RUNNING" and (
        campaign_record(tracked, second).get("totals")), SETTLE, interval=0.5, what="the attached campaign settled")
    kids = children(mlflow_server, parent)
    assert sorted(kids) == ["at-ok", "rt-nccl"]
    assert kids["at-ok"].data.tags["workflow.campaign_id"] == second
    assert kids["at-ok"].info.status == "FINISHED"
    assert campaign_parents() == before  # attached: no new parent run
    seen = json.loads((run_dir(tracked, "at-ok") / "mlflow_env.json").read_text())
    assert seen["MLFLOW_RUN_ID"] == kids["at-ok"].info.run_id and "MLFLOW_PARENT_RUN_ID" not in seen


def test_server_down_mid_run_loses_nothing_and_doubles_nothing(tracked: Pod, mlflow_server: Any,
                                                               tmp_path: Path) -> None:
    campaign = start(tracked, write_csv(tmp_path / "down.csv", "dn-slow,config/slow.py,1,steps=60 sleep=0.4,,1")
                     )["campaign_id"]
    metrics = run_dir(tracked, "dn-slow") / "metrics.jsonl"

    def child_points() -> int:
        child = (json.loads((tracked.outputs / "_campaigns" / campaign / "tracking" / "dn-slow.json").read_text())
                 if (tracked.outputs / "_campaigns" / campaign / "tracking" / "dn-slow.json").exists() else {})
        return int(child.get("points") or 0)

    wait_until(lambda: child_points() >= 4, 120, interval=0.3, what="points of dn-slow in MLflow")
    at_stop = _lines(metrics)
    mlflow_server.stop()
    try:
        wait_until(lambda: _lines(metrics) >= at_stop + 4, 120, interval=0.3, what="dn-slow to go on training")
        status = tracked.wf("sweep-status")
        assert status.returncode in (0, 1), status.stderr
        assert "tracking behind for 1 row(s): dn-slow" in status.stdout, status.stdout
        assert run_state(tracked, "dn-slow") == "running"  # the run itself never noticed
    finally:
        mlflow_server.start()
    final = wait_campaign(tracked, campaign)
    assert final["state"] == "finished"
    parent = settled_parent(tracked, mlflow_server, campaign)
    child = children(mlflow_server, parent)["dn-slow"]
    assert child.info.status == "FINISHED"
    assert _lines(metrics) == 60
    assert_points_match_lines(tracked, mlflow_server, "dn-slow", child)
    status = tracked.wf("sweep-status", "--campaign", campaign)
    assert "tracking behind" not in status.stdout, status.stdout


def test_server_down_at_sweep_start_rows_start_anyway_and_their_children_come_later(
        tracked: Pod, mlflow_server: Any, tmp_path: Path) -> None:
    mlflow_server.stop()
    try:  # a wait of 600 s for the children would hold the row far past wait_until's 120 s: it must not wait
        campaign = start(tracked, write_csv(tmp_path / "early.csv", "ed-slow,config/slow.py,1,steps=30 sleep=0.2,,1"),
                         "--set", "TRACKING_WAIT_SECS=600")["campaign_id"]
        metrics = run_dir(tracked, "ed-slow") / "metrics.jsonl"
        wait_until(lambda: _lines(metrics) >= 2, 120, interval=0.3, what="ed-slow training with the server down")
        assert run_state(tracked, "ed-slow") == "running"
        assert campaign_record(tracked, campaign).get("last_error"), "the sidecar says the server did not answer"
        seen = json.loads((run_dir(tracked, "ed-slow") / "mlflow_env.json").read_text())
        assert "MLFLOW_RUN_ID" not in seen  # no child yet: the row runs without one
    finally:
        mlflow_server.start()
    assert wait_campaign(tracked, campaign)["state"] == "finished"
    parent = settled_parent(tracked, mlflow_server, campaign)
    child = children(mlflow_server, parent)["ed-slow"]
    assert child.info.status == "FINISHED"
    assert_points_match_lines(tracked, mlflow_server, "ed-slow", child)


def test_wandb_pass_through_offline_and_the_verification_gate(tracked: Pod, mlflow_server: Any,
                                                               tmp_path: Path) -> None:
    from helpers.pod.tracking.wandb import run_dirs, run_id_for

    csv = write_csv(tmp_path / "wandb.csv",
                    "wb-on,config/ok.py,1,wandb_log=1,logs to W&B,1",
                    "wb-retry,config/flaky.py,2,wandb_log=1,nccl once: the retry continues the same W&B run,1",
                    "wb-silent,config/ok.py,3,,never calls wandb.init,1")
    campaign = start(tracked, csv, "--set", "SWEEP_WANDB=1", "--set", "WANDB_MODE=offline", "--set",
                     "WANDB_PROJECT=wf-tests", "--set", "WANDB_REQUIRED=1", "--set", "SWEEP_CPU_SLOTS=3")["campaign_id"]
    wait_campaign(tracked, campaign)
    for run_id in ("wb-on", "wb-retry"):
        seen = json.loads((run_dir(tracked, run_id) / "wandb_run.json").read_text())
        assert seen == {"id": run_id_for(campaign, run_id), "group": campaign, "name": run_id}, seen
        done = json.loads((run_dir(tracked, run_id) / "summary.json").read_text())
        assert done["ok"] and done["wandb"]["verified"], done.get("wandb")
        dirs = run_dirs(str(run_dir(tracked, run_id)), run_id_for(campaign, run_id))
        assert all(offline for _, _, offline in dirs)
        wandb_file = Path(dirs[-1][1]) / f"run-{run_id_for(campaign, run_id)}.wandb"
        assert wandb_file.stat().st_size > 0
    retried = run_dirs(str(run_dir(tracked, "wb-retry")), run_id_for(campaign, "wb-retry"))
    assert len(retried) == 2  # two attempts, one W&B run id (WANDB_RESUME=allow)
    silent = json.loads((run_dir(tracked, "wb-silent") / "summary.json").read_text())
    assert not silent["ok"] and silent["failure_class"] == "tracking", silent
    assert "W&B not verified" in silent["reason_line"]
    status = tracked.wf("sweep-status", "--campaign", campaign)
    assert status.returncode == 1 and "tracking" in status.stdout
    assert "W&B offline runs not synced: wb-on, wb-retry (upload them with" in status.stdout, status.stdout
    assert "W&B run not verified for 1 row(s): wb-silent (no W&B run directory" in status.stdout
    # no network, no valid key here: wandb sync fails, and wandb-sync names every row that did not sync; a run
    # `wandb sync` uploaded before (its run-<id>.wandb.synced marker) is not sent again
    for _, directory, _ in run_dirs(str(run_dir(tracked, "wb-on")), run_id_for(campaign, "wb-on")):
        (Path(directory) / f"run-{run_id_for(campaign, 'wb-on')}.wandb.synced").touch()
    synced = tracked.wf("wandb-sync", "--campaign", campaign, timeout=600)
    assert synced.returncode == 1, synced.stderr
    assert "2 row(s) did not sync: wb-retry, wb-silent" in synced.stdout, synced.stdout
    assert "wb-on: synced 1 run(s) (1 synced before)" in synced.stdout
    assert "wb-silent: NOT synced: no offline W&B run" in synced.stdout
    assert SECRET not in synced.stdout + synced.stderr


def test_track_sends_a_campaign_after_the_fact(tracked: Pod, mlflow_server: Any, tmp_path: Path) -> None:
    """A campaign run with tracking off is sent later by `track`, from the pod's files; a second `track`
    sends nothing twice."""
    csv = write_csv(tmp_path / "late.csv", "lt-ok,config/ok.py,1,steps=5,,1", "lt-fail,config/fail.py,2,,,1")
    campaign = start(tracked, csv, "--set", "MLFLOW_TRACKING_URI=")["campaign_id"]
    wait_campaign(tracked, campaign)
    assert not (tracked.outputs / "_campaigns" / campaign / "tracking.json").exists()  # no sidecar ran
    assert "MLFLOW_RUN_ID" not in json.loads((run_dir(tracked, "lt-ok") / "mlflow_env.json").read_text())
    for _ in range(2):
        sent = tracked.wf("track", "--campaign", campaign, "--json", timeout=600)
        assert sent.returncode == 0, sent.stderr
        rows = json.loads(sent.stdout)["rows"]
        assert {r: rows[r]["status"] for r in rows} == {"lt-ok": "FINISHED", "lt-fail": "FAILED"}
        parent = mlflow_server.client().get_run(campaign_record(tracked, campaign)["parent_run_id"])
        assert parent.info.status == "FAILED"
        kids = children(mlflow_server, parent)
        for run_id in ("lt-ok", "lt-fail"):
            assert_points_match_lines(tracked, mlflow_server, run_id, kids[run_id])
        assert kids["lt-ok"].data.params["trainer.steps"] == "5"  # the trainer's config.json, after the fact too
    running = tracked.wf("track", "--campaign", campaign, "--set", "MLFLOW_TRACKING_URI=")
    assert running.returncode == 2

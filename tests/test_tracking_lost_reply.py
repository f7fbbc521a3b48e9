"""Lost replies: the real tracking sidecar talks to the real `mlflow server` (the session fixture)
through a loopback proxy (tests/lossy_proxy.py) that lets the server do the work and then drops or
holds the answer (past the client's 1 s timeout) for some run creations, metric batches and param
batches. The sidecar sends those again; checked through MlflowClient: one parent, one child per row,
one point per metrics.jsonl line and field, the trainer's params, nothing doubled.

The campaign is written by hand (a manifest, an executor record naming this process, one attempt per
row, config.json and metrics.jsonl as a trainer writes them), so no sweep runs: only the sidecar."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Optional

from conftest import wait_until
from lossy_proxy import LossyProxy

from helpers.pod import proctree
from helpers.pod.jsonio import utc_now

ROOT = Path(__file__).resolve().parents[1]
ROWS = ("lr-a", "lr-b")
LINES = 24
SECRET = "zz-trainer-secret-4242"


def write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def make_campaign(base: Path, uri: str, experiment: str) -> tuple[Path, Path]:
    outputs = base / "outputs"
    campaign = f"lost-{uuid.uuid4().hex[:6]}"
    path = outputs / "_campaigns" / campaign
    rows = [{"run_id": r, "config": "config/ok.py", "seed": i, "overrides": [f"lr={i}e-3"], "spec_hash": r}
            for i, r in enumerate(ROWS, 1)]
    write(path / "manifest.json", {"campaign_id": campaign, "rows": rows, "config": {
        "MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT": experiment, "OPS_REMOTE_OUTPUTS_DIR": str(outputs),
        "OPS_REMOTE_REPO": str(ROOT)}})
    pid = os.getpid()
    write(path / "executor.json", {"state": "running", "pid": pid, "start_time": proctree.start_time(pid),
                                   "boot_id": proctree.boot_id()})
    for run_id in ROWS:
        write(outputs / run_id / "attempts" / "1" / "attempt.json", {"attempt": 1, "started_utc": utc_now(),
                                                                      "campaign_id": campaign})
        write(outputs / run_id / "config.json", {"lr": 0.001, "batch_size": 8, "api_key": SECRET, "model": {
            "n_layer": 2, "n_head": 4}, "out_dir": str(outputs / run_id)})
    return path, outputs


def lossy_rule() -> Any:
    """Lose the reply of the first parent and first child creation, of metric batches 2 and 4 (one
    dropped, one held past the timeout) and of the first batch of trainer params."""
    seen = {"parent": 0, "child": 0, "metrics": 0, "params": 0}

    def rule(method: str, path: str, body: bytes) -> Optional[str]:
        if method != "POST":
            return None
        if path.endswith("/runs/create"):
            kind = "child" if b"mlflow.parentRunId" in body else "parent"
            seen[kind] += 1
            return "drop" if seen[kind] == 1 else None
        if path.endswith("/runs/log-batch"):
            payload = json.loads(body or b"{}")
            if payload.get("metrics"):
                seen["metrics"] += 1
                return {2: "drop", 4: "hang"}.get(seen["metrics"])
            if any(p["key"].startswith("trainer.") for p in payload.get("params") or []):
                seen["params"] += 1
                return "drop" if seen["params"] == 1 else None
        return None

    return rule


def test_lost_replies_double_nothing(mlflow_server: Any, tmp_path: Path) -> None:
    experiment = f"wf-lost-{uuid.uuid4().hex[:8]}"
    with LossyProxy(mlflow_server.port, lossy_rule(), hang_secs=2.5) as proxy:
        path, outputs = make_campaign(tmp_path, proxy.uri, experiment)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "1", "MLFLOW_TRACKING_URI": ""}
        log = (tmp_path / "sidecar.log").open("wb")
        sidecar = subprocess.Popen([sys.executable, "-c", "import sys; from helpers.pod.tracking.sidecar import "
                                    "sidecar_main; sys.exit(sidecar_main(sys.argv[1:]))", str(path)],
                                   env=env, cwd=str(ROOT), stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        try:
            for step in range(LINES):  # as a trainer writes them: no time field (the sidecar stamps them)
                for run_id in ROWS:
                    with (outputs / run_id / "metrics.jsonl").open("a") as handle:
                        handle.write(json.dumps({"iter": step, "loss": 1.0 / (step + 1), "lr": 1e-3}) + "\n")
                time.sleep(0.15)
            for run_id in ROWS:
                write(outputs / run_id / "summary.json", {"ok": True, "state": "success", "attempt": 1, "campaign_id":
                                                          path.name, "run_id": run_id, "ended_utc": utc_now()})
            write(path / "executor.json", {"state": "finished", "ended_utc": utc_now()})
            assert sidecar.wait(timeout=180) == 0, (tmp_path / "sidecar.log").read_text()[-3000:]
        finally:
            if sidecar.poll() is None:
                sidecar.kill()
                sidecar.wait()
            log.close()
        lost = [p.rsplit("/", 1)[-1] for _, p in proxy.lost]
    assert lost.count("create") == 2 and lost.count("log-batch") >= 3, lost
    text = (tmp_path / "sidecar.log").read_text()
    assert "tracking server:" in text, text  # the sidecar saw the failures (and went on)
    client = mlflow_server.client()
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("workflow.kind") == "campaign"]
    assert len(parents) == 1, [r.info.run_id for r in parents]
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.data.tags["workflow.run_id"] for r in kids) == sorted(ROWS)  # no second child
    assert len(runs) == 1 + len(ROWS)
    for kid in kids:
        assert kid.info.status == "FINISHED"
        for key in ("loss", "lr"):
            history = client.get_metric_history(kid.info.run_id, key)
            assert len(history) == LINES, (kid.data.tags["workflow.run_id"], key, len(history))
            assert sorted(p.step for p in history) == list(range(LINES))
        params = kid.data.params
        assert params["trainer.lr"] == "0.001" and params["trainer.batch_size"] == "8"
        assert params["trainer.model.n_layer"] == "2" and params["trainer.api_key"] == "<hidden>"
        assert params["lr"] in ("1e-3", "2e-3") and params["config"] == "config/ok.py"
        assert SECRET not in json.dumps({"params": params, "tags": kid.data.tags})
    assert SECRET not in text
    wait_until(lambda: client.get_run(parents[0].info.run_id).info.status == "FINISHED", 30, what="parent settled")
    totals = client.get_metric_history(parents[0].info.run_id, "rows_total")
    assert [p.value for p in totals] == [2.0]


def test_params_a_lost_reply_already_stored_are_read_back_not_refused(mlflow_server: Any, tmp_path: Path) -> None:
    """The server stored trainer.batch_size=16 but the reply was lost; then the next attempt wrote
    batch_size=8: MLflow refuses to change a param, so the sidecar reads the stored ones back and
    sends the change as a tag."""
    from helpers.pod.tracking.mlflow_ops import sync_trainer_params

    client = mlflow_server.client()
    experiment = client.create_experiment(f"wf-lost-params-{uuid.uuid4().hex[:8]}")
    child = client.create_run(experiment).info.run_id
    client.log_param(child, "trainer.batch_size", "16")  # what the lost reply's request did
    run_path = tmp_path / "row"
    write(run_path / "attempts" / "2" / "attempt.json", {"attempt": 2, "started_utc": utc_now()})
    write(run_path / "config.json", {"batch_size": 8, "lr": 0.1})
    rec: dict[str, Any] = {"mlflow_run_id": child}  # the record never heard of the first batch
    assert sync_trainer_params(client, str(run_path), str(run_path), rec, 2)
    run = client.get_run(child)
    assert run.data.params == {"trainer.batch_size": "16", "trainer.lr": "0.1"}
    assert run.data.tags["trainer.batch_size"] == "8" and run.data.tags["workflow.trainer_changed"] == "batch_size"
    assert rec["trainer_params"] == run.data.params
    assert not sync_trainer_params(client, str(run_path), str(run_path), rec, 2)  # nothing new: no request

"""MLflow params of a row: ``trainer.<key>`` from the trainer's config.json (helpers/pod/tracking/params.py),
and what a later attempt does to them: the OOM retry (batch halved) and sweep-resume reuse the row's
child run, update its attempt tag, add new keys as params and show changed values as tags. Real
sweeps (tmux executor, the stand-in trainer) tracked to the real `mlflow server` fixture."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import Pod, wait_until
from test_sweeps import wait_campaign, write_csv
from test_tracking import children, settled_parent, tracked

from helpers.pod import attempts
from helpers.pod.jsonio import write_json
from helpers.pod.tracking.mlflow_ops import sync_trainer_params
from helpers.pod.tracking.params import CHANGED_TAG, HIDDEN, changed_list, plan, row_params, trainer_params

__all__ = ["tracked"]  # the module's tracked pod (the fixture of test_tracking.py)


def test_trainer_params_are_flat_text_within_mlflow_limits_and_hide_secrets() -> None:
    got = trainer_params({"lr": 3e-4, "compile": False, "steps": 4, "name": "x" * 7000, "wandb_api_key": "k",
                          "model": {"n_layer": 2, "dims": [1, 2]}, "weird key!": None})
    assert got["trainer.lr"] == "0.0003" and got["trainer.compile"] == "False" and got["trainer.steps"] == "4"
    assert len(got["trainer.name"]) == 6000 and got["trainer.wandb_api_key"] == HIDDEN
    assert got["trainer.model.n_layer"] == "2" and got["trainer.model.dims"] == "[1, 2]"
    assert got["trainer.weird key_"] == "null"
    assert row_params({"config": "c.py", "seed": 3, "overrides": ["lr=1", "--lr=2", "hf_token=abc"]}) == {
        "config": "c.py", "seed": "3", "lr": "2", "hf_token": HIDDEN}


def test_a_later_attempt_adds_new_keys_and_tags_changed_ones() -> None:
    first = plan({}, {}, {"batch_size": 16, "lr": 1})
    assert first.new == {"trainer.batch_size": "16", "trainer.lr": "1"} and not first.changed
    sent = dict(first.new)
    second = plan(sent, {}, {"batch_size": 8, "lr": 1, "resume": True})
    assert second.new == {"trainer.resume": "True"}  # params are immutable: 16 stays the param
    assert second.changed == {"trainer.batch_size": "8"}
    sent.update(second.new)
    assert changed_list(sent, second.current) == "batch_size"
    again = plan(sent, second.changed, {"batch_size": 8, "lr": 1, "resume": True})
    assert not again.new and not again.changed  # nothing to send twice
    back = plan(sent, second.changed, {"batch_size": 16, "lr": 1, "resume": True})
    assert back.changed == {"trainer.batch_size": "16"} and changed_list(sent, back.current) == ""


def test_oom_retry_and_resume_reuse_the_child_and_update_attempt_and_params(
        tracked: Pod, mlflow_server: Any, tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "params.csv", "pp-oom,config/oom.py,1,,oom at batch 16: retried at 8,1",
                    "pp-fail,config/fail.py,2,steps=3,fails; resumed later,1")
    campaign = tracked.wf("--set", "SWEEP_CPU_SLOTS=2", "sweep-start", "--csv", str(csv), "--json")
    assert campaign.returncode == 0, campaign.stderr
    campaign_id = json.loads(campaign.stdout)["campaign_id"]
    wait_campaign(tracked, campaign_id)
    parent = settled_parent(tracked, mlflow_server, campaign_id)
    kids = children(mlflow_server, parent)
    oom = kids["pp-oom"]
    assert oom.info.status == "FINISHED" and oom.data.tags["workflow.attempt"] == "2"
    # the param is attempt 1's value (16, kept in attempts/1/ when it ended, even if the retry rewrote the
    # out_dir's config.json before the sidecar looked); the retry's change is a tag
    assert oom.data.params["trainer.batch_size"] == "16", oom.data.params
    assert oom.data.tags["trainer.batch_size"] == "8"  # the value the last attempt ran with
    assert "batch_size" in oom.data.tags[CHANGED_TAG].split(",")  # (and the doubled accumulation)
    assert oom.data.params["trainer.mode"] == "oom" and oom.data.params["trainer.steps"] == "4"
    assert oom.data.params["config"] == "config/oom.py" and oom.data.params["seed"] == "1"
    assert_points_match_lines_loose(tracked, mlflow_server, "pp-oom", oom)
    failed = kids["pp-fail"]
    assert failed.info.status == "FAILED" and failed.data.tags["workflow.attempt"] == "1"
    assert failed.data.params["trainer.steps"] == "3" and CHANGED_TAG not in failed.data.tags

    resumed = tracked.wf("sweep-resume", "--campaign", campaign_id, "--json")
    assert resumed.returncode == 0, resumed.stderr
    wait_campaign(tracked, campaign_id)

    def again() -> Any:
        run = mlflow_server.client().get_run(failed.info.run_id)
        return run if run.data.tags.get("workflow.attempt") == "2" and run.info.status != "RUNNING" else None

    run = wait_until(again, 180, interval=0.5, what="pp-fail's child at attempt 2, settled")
    assert run.info.status == "FAILED"
    named = mlflow_server.client().search_runs([parent.info.experiment_id],
                                               filter_string="tags.`workflow.run_id` = 'pp-fail'")
    assert [r.info.run_id for r in named] == [failed.info.run_id]  # one child over both attempts
    assert run.data.params["trainer.steps"] == "3" and CHANGED_TAG not in run.data.tags
    assert_points_match_lines_loose(tracked, mlflow_server, "pp-fail", run)
    assert sorted(children(mlflow_server, parent)) == ["pp-fail", "pp-oom"]


def assert_points_match_lines_loose(pod: Pod, server: Any, run_id: str, child: Any) -> None:
    """One point per line (a rerun writes its steps again: steps may repeat, points never double)."""
    lines = (pod.outputs / run_id / "metrics.jsonl").read_bytes().count(b"\n")
    for key in ("val_loss", "batch_size"):
        assert len(server.client().get_metric_history(child.info.run_id, key)) == lines, (run_id, key)


def test_an_ended_attempts_kept_config_is_its_params_though_the_retry_rewrote_config_json(
        mlflow_server: Any, tmp_path: Path) -> None:
    """The race of the OOM retry: attempt 2 rewrote config.json before the sidecar's first look at the row.
    The params still are attempt 1's (its copy in attempts/1/), the change a tag; another campaign's
    attempt is not this child's."""
    run, out = tmp_path / "run", tmp_path / "out"
    out.mkdir()
    for number, campaign, batch in ((1, "c0", 64), (2, "c1", 16), (3, "c1", 8)):
        attempts.begin(str(run), number, {"campaign_id": campaign, "out_dir": str(out)})
        write_json(str(out / "config.json"), {"batch_size": batch, "lr": 0.1})
        if number < 3:
            attempts.finish(str(run), number, {"state": "failed", "failure_class": "oom"})
    assert (run / "attempts" / "2" / "config.json").exists()
    client = mlflow_server.client()
    experiment = client.create_experiment(f"params-race-{tmp_path.name}")
    child = client.create_run(experiment).info.run_id
    rec = {"mlflow_run_id": child, "campaign_id": "c1"}
    assert sync_trainer_params(client, str(run), str(out), rec, 3)
    got = client.get_run(child).data
    assert got.params["trainer.batch_size"] == "16" and got.params["trainer.lr"] == "0.1"
    assert got.tags["trainer.batch_size"] == "8" and got.tags[CHANGED_TAG] == "batch_size"
    assert not sync_trainer_params(client, str(run), str(out), rec, 3)  # nothing new: nothing sent
    attempts.finish(str(run), 3, {"state": "success"})
    sync_trainer_params(client, str(run), str(out), rec, 3)
    assert client.get_run(child).data.params["trainer.batch_size"] == "16"

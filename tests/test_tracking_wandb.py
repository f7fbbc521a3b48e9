"""W&B pass-through with the example trainer (examples/nanogpt, torch on CPU) and the real `wandb`
package in offline mode: the row environment the tool gives a sweep row (helpers/pod/tracking/wandb.py)
makes ``wandb_log=True`` write an offline run directory in the row's out_dir with the row's stable run
id; the tool verifies it (summary.json's ``wandb``) and sweep-status reports the offline run as not
synced (the marker ``run-<id>.wandb.synced`` that `wandb sync` leaves turns it synced). A resumed
attempt continues the same W&B run id."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from nanogpt_helpers import NANOGPT, build_shards, env, explain, tiny_args

from helpers.pod.jsonio import utc_now
from helpers.pod.tracking import wandb as tracking_wandb
from helpers.tracking.commands import tracking_lines

CAMPAIGN = "wb-campaign-1"
CONFIG = {"SWEEP_WANDB": "1", "WANDB_MODE": "offline", "WANDB_PROJECT": "wf-tests", "WANDB_REQUIRED": "1"}


def train(tmp_path: Path, out_dir: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    row_env = {"WANDB_MODE": "offline", "WANDB_PROJECT": "wf-tests", "WANDB_ENTITY": ""}
    tracking_wandb.row_env(CONFIG, CAMPAIGN, "wb-nano", str(out_dir), row_env)  # what the executor exports
    extra = {**row_env, "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"), "WANDB_CACHE_DIR": str(
        tmp_path / "wandb-cache"), "WANDB_DATA_DIR": str(tmp_path / "wandb-data"), "WANDB_SILENT": "true"}
    return subprocess.run([sys.executable, "train.py", *tiny_args(build_shards(tmp_path), out_dir, *overrides)],
                          cwd=NANOGPT, env=env(**extra), capture_output=True, text=True, timeout=300)


def test_example_trainer_logs_offline_to_wandb_and_the_tool_verifies_and_reports_it(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    run_path = outputs / "wb-nano"
    run_path.mkdir(parents=True)
    started = utc_now()
    first = train(tmp_path, run_path, "wandb_log=True", "max_iters=30", "eval_interval=10")
    assert first.returncode == 0, explain(first)
    wandb_id = tracking_wandb.run_id_for(CAMPAIGN, "wb-nano")
    dirs = tracking_wandb.run_dirs(str(run_path), wandb_id)
    assert len(dirs) == 1 and dirs[0][2], dirs  # one offline run directory, named by the row's id
    wandb_file = Path(dirs[0][1]) / f"run-{wandb_id}.wandb"
    assert wandb_file.stat().st_size > 0
    assert json.loads((run_path / "config.json").read_text())["wandb_log"] is True

    done = {"ok": True, "state": "success", "campaign_id": CAMPAIGN, "run_id": "wb-nano", "started_utc": started,
            "ended_utc": utc_now()}
    done = tracking_wandb.check(CONFIG, str(run_path), str(run_path), done)
    assert done["ok"] and done["wandb"]["verified"], done["wandb"]
    assert done["wandb"]["run_id"] == wandb_id and done["wandb"]["group"] == CAMPAIGN
    assert done["wandb"]["offline"] and done["wandb"]["dir"] == dirs[0][1]
    assert json.loads((run_path / "summary.json").read_text())["wandb"] == done["wandb"]

    view = tracking_wandb.status(CONFIG, str(outputs), CAMPAIGN, ["wb-nano", "wb-never"], {})
    assert view is not None and view["not_synced"] == ["wb-nano"] and not view["not_verified"]
    row = view["rows"][0]
    assert (row["wandb_id"], row["offline"], row["synced"], row["verified"]) == (wandb_id, True, False, True)
    lines = tracking_lines({"campaign_id": CAMPAIGN, "tracking": {"wandb": view}})
    assert lines[0] == "W&B (offline): 1 of 1 started row(s) have a W&B run, 1 verified, 0 of 1 offline run(s) synced"
    assert lines[1] == (f"W&B offline runs not synced: wb-nano (upload them with infra_scripts/workflow.sh "
                        f"wandb-sync --campaign {CAMPAIGN})")
    (wandb_file.parent / (wandb_file.name + ".synced")).touch()  # what `wandb sync` leaves when it uploaded
    view = tracking_wandb.status(CONFIG, str(outputs), CAMPAIGN, ["wb-nano"], {})
    assert view is not None and view["not_synced"] == [] and view["rows"][0]["synced"] is True

    # a resumed attempt (a retry) continues the same W&B run id: a second offline directory of it
    again = train(tmp_path, run_path, "wandb_log=True", "max_iters=40", "eval_interval=10", "resume=True")
    assert again.returncode == 0, explain(again)
    dirs = tracking_wandb.run_dirs(str(run_path), wandb_id)
    assert len(dirs) == 2 and all(offline for _, _, offline in dirs), dirs
    view = tracking_wandb.status(CONFIG, str(outputs), CAMPAIGN, ["wb-nano"], {})
    assert view is not None and view["not_synced"] == ["wb-nano"]  # the new directory is not synced yet


def test_a_row_without_its_wandb_run_fails_verification_with_wandb_required(tmp_path: Path) -> None:
    run_path = tmp_path / "outputs" / "wb-quiet"
    run_path.mkdir(parents=True)
    done = {"ok": True, "state": "success", "campaign_id": CAMPAIGN, "run_id": "wb-quiet", "started_utc": utc_now(),
            "ended_utc": utc_now()}
    done = tracking_wandb.check(CONFIG, str(run_path), str(run_path), done)
    assert not done["ok"] and done["failure_class"] == "tracking" and done["wandb"]["dir"] is None
    view = tracking_wandb.status(CONFIG, str(tmp_path / "outputs"), CAMPAIGN, ["wb-quiet"], {})
    assert view is not None and view["not_verified"] == ["wb-quiet"] and view["not_synced"] == []
    lines = tracking_lines({"campaign_id": CAMPAIGN, "tracking": {"wandb": view}})
    assert lines[-1].startswith("W&B run not verified for 1 row(s): wb-quiet (no W&B run directory"), lines

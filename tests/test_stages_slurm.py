"""Evaluation stages on SWEEP_EXECUTOR=slurm (the real one-node cluster of tests/slurm_cluster.py): the
array task runs each stage under the same supervisor, inside its allocation, after the row's training;
a gate not met ends the row `gated`, and the campaign still ends SWEEP_COMPLETED (a gate is no failure)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Pod, slurm_login, wait_until
from stage_helpers import FIXTURE_SETTINGS, HEADER, write_csv


@pytest.fixture(scope="module")
def login(tmp_path_factory: pytest.TempPathFactory, source_repo: Path, slurm_cluster: Any) -> Iterator[Pod]:
    yield from slurm_login(tmp_path_factory.mktemp("stages-slurm"), source_repo, slurm_cluster, FIXTURE_SETTINGS)


def test_stages_and_gates_on_slurm(login: Pod, slurm_cluster: Any, tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "slurm.csv", "sls-pass,config/ok.py,1,,passes,1,,",
                    "sls-gated,config/ok.py,2,,gated,1,,val_loss<1", header=HEADER)
    result = login.wf("--set", "EVAL_SMALL_CMD=python eval.py", "--set", "GATE_SMALL=val_loss<3",
                      "--set", "EVAL_FULL_CMD=python eval.py --scale 0.9", "--set", "GATE_FULL=val_loss<2",
                      "sweep-start", "--csv", str(csv), "--json")
    assert result.returncode == 0, result.stderr
    campaign = json.loads(result.stdout)["campaign_id"]
    summaries = {r: login.outputs / r / "summary.json" for r in ("sls-pass", "sls-gated")}
    wait_until(lambda: all(p.is_file() for p in summaries.values()), 300, interval=0.5,
               what=f"campaign {campaign}'s rows to conclude")
    passed, gated = (json.loads(p.read_text()) for p in summaries.values())
    assert passed["state"] == "success" and [s["gate"]["passed"] for s in passed["stages"]] == [True, True]
    assert gated["state"] == "gated" and [s["name"] for s in gated["stages"]] == ["eval_small"]
    stage = login.outputs / "sls-pass" / "stages" / "eval_full"
    assert json.loads((stage / "status.json").read_text()).get("slurm", {}).get("job_id")  # inside the allocation
    assert "eval: stage eval_full of sls-pass" in (stage / "stage.log").read_text()

    def fsm() -> str:
        return str(json.loads(login.wf("fsm-status", "--json").stdout)["state"])

    wait_until(lambda: fsm() == "SWEEP_COMPLETED", 60, what="the last array task to record SWEEP_COMPLETED")
    status = login.wf("sweep-status", "--campaign", campaign)
    assert "gated [eval_small]" in status.stdout and status.returncode == 0, status.stdout + status.stderr

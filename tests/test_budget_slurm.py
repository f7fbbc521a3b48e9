"""BUDGET_USD on SWEEP_EXECUTOR=slurm against the real one-node cluster (tests/slurm_cluster.py): an
array task whose row would start past the budget (counting the whole campaign's spend) does not start
it; the rows left are `budget`, the campaign concludes, and sweep-resume with a higher budget runs them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Pod, slurm_login, squeue, wait_until
from test_sweeps import FIXTURE_SETTINGS, campaigns_dir, rows_by_id, write_csv

TIMEOUT = 240


@pytest.fixture(scope="module")
def login(tmp_path_factory: pytest.TempPathFactory, source_repo: Path, slurm_cluster: Any) -> Iterator[Pod]:
    yield from slurm_login(tmp_path_factory.mktemp("slurm-budget"), source_repo, slurm_cluster, FIXTURE_SETTINGS)


def test_budget_on_slurm_starts_no_row_past_it(login: Pod, slurm_cluster: Any, tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "b.csv", "sb-1,config/ok.py,1,sleep=3,,", "sb-2,config/ok.py,2,,,",
                    "sb-3,config/ok.py,3,,,")
    money = ("--set", "POD_PRICE_PER_HOUR=3600", "--set", "SLURM_ARRAY_PARALLELISM=1")  # $1 per slot-second
    start = login.wf(*money, "--set", "BUDGET_USD=2", "sweep-start", "--csv", str(csv), "--json")
    assert start.returncode == 0, start.stderr
    campaign = json.loads(start.stdout)["campaign_id"]
    wait_until(lambda: not squeue(slurm_cluster, campaign), TIMEOUT, interval=0.5, what=f"{campaign} leaves squeue")
    result = login.wf(*money, "sweep-status", "--campaign", campaign, "--json")
    assert result.returncode == 1, result.stdout + result.stderr  # rows left unrun: it says so
    rows = rows_by_id(json.loads(result.stdout))
    assert rows["sb-1"]["state"] == "ok"
    assert rows["sb-2"]["state"] == "budget" and rows["sb-3"]["state"] == "budget", rows
    assert "BUDGET_USD=2" in (rows["sb-2"]["reason_line"] or "")
    for run_id in ("sb-2", "sb-3"):  # never started: no attempt, no summary
        assert not (login.outputs / run_id / "summary.json").exists()
        assert not (login.outputs / run_id / "attempts.jsonl").exists()
    state = json.loads((login.outputs / "_control" / "workflow_state.json").read_text())["state"]
    assert state == "SWEEP_FAILED"  # concluded with the rows the budget held back
    log = (campaigns_dir(login) / campaign / "slurm" / "rows" / "sb-2" / "executor.log").read_text()
    assert "not starting 1 row(s) (sb-2)" in log, log
    # a resume with a higher budget runs the held rows
    resumed = login.wf(*money, "--set", "BUDGET_USD=100000", "sweep-resume", "--campaign", campaign, "--json")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert sorted(json.loads(resumed.stdout)["rerun"]) == ["sb-2", "sb-3"]
    wait_until(lambda: not squeue(slurm_cluster, campaign), TIMEOUT, interval=0.5, what="the resume leaves squeue")
    again = login.wf("sweep-status", "--campaign", campaign, "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    assert {r["state"] for r in rows_by_id(json.loads(again.stdout)).values()} == {"ok"}

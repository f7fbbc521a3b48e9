"""BASELINE_RUN is checked at sweep-start on the pod before anything is created (issue 14): a relative
gate whose baseline has no run dir, has not finished, or lacks the gate's metric is exit 2 with one line
naming BASELINE_RUN and what to do; campaigns and run dirs stay as they were. A finished baseline with
the metric starts the sweep."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Pod, one_line_error
from stage_helpers import ready_local_pod, wait_campaign, write_csv

from helpers.pod import baseline


def _settings(run_id: str, gate: str = "val_loss<=baseline*1.5") -> tuple[str, ...]:
    return ("--set", "EVAL_SMALL_CMD=python eval.py", "--set", f"GATE_SMALL={gate}",
            "--set", f"BASELINE_RUN={run_id}")


def _listing(pod: Pod) -> list[str]:
    if not pod.outputs.is_dir():
        return []
    found = (str(p.relative_to(pod.outputs)) for p in pod.outputs.rglob("*"))
    return sorted(name for name in found if not name.startswith("_control"))  # the agent's own bundle


@pytest.fixture(scope="module")
def local_pod(tmp_path_factory: pytest.TempPathFactory, source_repo: Path) -> Iterator[Pod]:
    yield from ready_local_pod(tmp_path_factory.mktemp("baseline"), source_repo)


def test_problem_needs_relative_gates_only(tmp_path: Path) -> None:
    rows = [{"run_id": "a"}]
    assert baseline.problem({"EVAL_SMALL_CMD": "python eval.py", "GATE_SMALL": "val_loss<3"}, rows,
                            str(tmp_path)) is None  # an absolute gate needs no baseline
    assert baseline.problem({}, rows, str(tmp_path)) is None
    found = baseline.problem({"EVAL_SMALL_CMD": "python eval.py", "GATE_SMALL": "val_loss<baseline",
                              "BASELINE_RUN": "gone"}, rows, str(tmp_path))
    assert found == (f"BASELINE_RUN=gone has no run dir in {tmp_path}; run it to the end first, or set "
                     "BASELINE_RUN to a finished run id")


def test_baseline_run_checked_before_anything_is_created(local_pod: Pod, tmp_path: Path) -> None:
    pod = local_pod
    csv = write_csv(tmp_path / "gated.csv", "bl-row,config/ok.py,1,,,1,,")
    before = _listing(pod)
    result = pod.wf(*_settings("bl-missing"), "sweep-start", "--csv", str(csv))
    assert result.returncode == 2, result.stderr
    line = one_line_error(result)
    assert "BASELINE_RUN=bl-missing has no run dir" in line and "run it to the end first" in line, line
    assert _listing(pod) == before  # no campaign, no run dir, no manifest

    (pod.outputs / "bl-half").mkdir(parents=True)  # a run dir that never finished
    before = _listing(pod)
    result = pod.wf(*_settings("bl-half"), "sweep-start", "--csv", str(csv))
    assert result.returncode == 2, result.stderr
    assert "BASELINE_RUN=bl-half has not finished (no summary.json)" in one_line_error(result)
    assert _listing(pod) == before

    base = write_csv(tmp_path / "base.csv", "bl-base,config/ok.py,9,,the baseline,1,,")
    started = pod.wf("sweep-start", "--csv", str(base), "--json")
    assert started.returncode == 0, started.stderr
    wait_campaign(pod, json.loads(started.stdout)["campaign_id"])
    assert json.loads((pod.outputs / "bl-base" / "summary.json").read_text())["ok"] is True

    before = _listing(pod)
    result = pod.wf(*_settings("bl-base", "acc>=baseline"), "sweep-start", "--csv", str(csv))
    assert result.returncode == 2, result.stderr
    line = one_line_error(result)
    assert "BASELINE_RUN=bl-base has no value of 'acc' (row bl-row, 'acc>=baseline')" in line, line
    assert _listing(pod) == before

    row_gate = write_csv(tmp_path / "row.csv", "bl-col,config/ok.py,2,,,1,python eval.py,acc>baseline*2")
    result = pod.wf("--set", "BASELINE_RUN=bl-base", "sweep-start", "--csv", str(row_gate))
    assert result.returncode == 2 and "BASELINE_RUN=bl-base has no value of 'acc' (row bl-col" in \
        one_line_error(result)
    assert _listing(pod) == before

    result = pod.wf(*_settings("bl-base"), "sweep-start", "--csv", str(csv), "--json")
    assert result.returncode == 0, result.stderr  # a finished baseline with the metric: the sweep starts
    campaign = json.loads(result.stdout)["campaign_id"]
    wait_campaign(pod, campaign)
    done = json.loads((pod.outputs / "bl-row" / "summary.json").read_text())
    assert done["stages"][0]["gate"]["baseline_run"] == "bl-base" and done["ok"] is True

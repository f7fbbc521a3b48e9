"""A stage that fails with a transient failure class (here nccl) runs again within the row's `retries`
(issue 14): with retries left the second try passes and summary.json keeps the retried failure; with
`retries` 0 the row fails with that class at once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Pod
from stage_helpers import ready_local_pod, wait_campaign, write_csv

HEADER = "run_id,config,seed,overrides,notes,gpus,retries,eval_small_cmd,gate_small"
NCCL_ONCE = "python eval.py --nccl-once {run_dir}/nccl.marker"


@pytest.fixture(scope="module")
def local_pod(tmp_path_factory: pytest.TempPathFactory, source_repo: Path) -> Iterator[Pod]:
    yield from ready_local_pod(tmp_path_factory.mktemp("retry"), source_repo)


def test_a_transient_stage_failure_is_retried_within_the_rows_retries(local_pod: Pod, tmp_path: Path) -> None:
    pod = local_pod
    csv = write_csv(tmp_path / "retry.csv", f"rt-again,config/ok.py,1,,retried,1,2,{NCCL_ONCE},val_loss<3.0",
                    f"rt-none,config/ok.py,2,,no retries,1,0,{NCCL_ONCE},val_loss<3.0", header=HEADER)
    result = pod.wf("sweep-start", "--csv", str(csv), "--json")
    assert result.returncode == 0, result.stderr
    campaign = json.loads(result.stdout)["campaign_id"]
    wait_campaign(pod, campaign)
    again = json.loads((pod.outputs / "rt-again" / "summary.json").read_text())
    assert again["ok"] is True and again["state"] == "success", again.get("reason_line")
    small = again["stages"][0]
    assert small["state"] == "success" and small["gate"]["passed"] is True
    assert [r["failure_class"] for r in small["retries"]] == ["nccl"]  # the retried failure is kept
    previous = list((pod.outputs / "rt-again" / "stages" / "_previous").iterdir())
    assert len(previous) == 1 and "NCCL error" in (previous[0] / "stage.log").read_text()
    none = json.loads((pod.outputs / "rt-none" / "summary.json").read_text())
    assert none["ok"] is False and none["state"] == "failed" and none["failure_class"] == "nccl"
    assert none["stages"][0]["retries"] == [] and none["reason_line"].startswith("stage eval_small:")
    log = (pod.outputs / "_campaigns" / campaign / "executor.log").read_text()
    assert "rt-again: stage eval_small: nccl; retry 1/2, backoff 1s" in log


class _Ctx:
    def __init__(self, config: dict[str, str]) -> None:
        self.config = config

    def get(self, key: str) -> str:
        return self.config.get(key, "")

    def number(self, key: str, default: int) -> int:
        return int(self.config.get(key) or default)


class _Ex:
    def __init__(self, outputs: Path) -> None:
        self.outputs = str(outputs)
        self.ctx = _Ctx({"RUN_RETRIES": "1", "RUN_RETRY_BACKOFF_SECS": "30"})
        self.stop_reason: str | None = None
        self.said: list[str] = []

    def event(self, *_: object, **__: object) -> None:
        pass

    def say(self, line: str) -> None:
        self.said.append(line)


class _Row:
    def __init__(self) -> None:
        self.row = {"run_id": "u-1"}
        self.run_id = "u-1"
        self.transient_retries = 0
        self.stage: dict[str, object] | None = None
        self.stage_records: list[dict[str, object]] = []


def test_a_stop_during_the_backoff_ends_the_stage_failed(tmp_path: Path) -> None:
    """Unit level: the retry budget is the row's (shared with training), and a sweep-stop while the stage
    waits out its backoff keeps the transient failure as the stage's end (no new try)."""
    from helpers.pod import stages

    ex, rr = _Ex(tmp_path), _Row()
    sdir = tmp_path / "u-1" / "stages" / "eval_small"
    sdir.mkdir(parents=True)
    failed = {"state": "failed", "failure_class": "nccl", "reason": "NCCL error", "ended_utc": None}
    rr.stage = {"name": "eval_small", "command_text": "python eval.py", "gate": "", "dir": str(sdir)}
    assert stages.after(ex, rr, failed) == "retry" and rr.transient_retries == 1
    assert stages.poll(rr, ex) is None  # still in its 30 s backoff: nothing starts
    ex.stop_reason = "stop"
    status = stages.poll(rr, ex)
    assert status is not None and status["failure_class"] == "nccl"
    assert stages.after(ex, rr, status) == "failed"
    assert rr.stage_records[-1]["retries"] == [{"failure_class": "nccl", "reason": "NCCL error", "ended_utc": None}]
    ex.stop_reason, rr.stage = None, {"name": "eval_small", "command_text": "x", "gate": "", "dir": str(sdir)}
    assert stages.after(ex, rr, failed) == "failed"  # RUN_RETRIES=1 is spent: no more tries

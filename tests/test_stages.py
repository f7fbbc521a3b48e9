"""Evaluation stages and gates (issue 14): gate expressions (parse, thresholds, decisions), their
validation at `validate`/`sweep-start` (one line, nothing started), and a real campaign on the local
target with the stand-in trainer and eval (tests/sweep_fixture/eval.py): one row passes both gates,
one is gated at the small eval (`gated`, not failed, the full eval never runs), one fails in its eval,
one gates on a metric the eval never wrote; a slow eval does not hold up the other rows."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Pod, cleanup_pod, make_pod, one_line_error, wait_until
from stage_helpers import ready, ready_local_pod, wait_campaign, write_csv

from helpers.pod import gates, stages

STAGE_SETTINGS = ("--set", "EVAL_SMALL_CMD=python eval.py", "--set", "GATE_SMALL=val_loss<3.0",
                  "--set", "EVAL_FULL_CMD=python eval.py --scale 0.9 --eval-json {eval_json}",
                  "--set", "GATE_FULL=val_loss<=baseline*0.95", "--set", "BASELINE_RUN=st-base")


# ----------------------------------------------------------------------------- gate expressions


@pytest.mark.parametrize("text, metric, op, number, relative", [
    ("val_loss<3.6", "val_loss", "<", 3.6, False),
    (" val_loss <= 3 ", "val_loss", "<=", 3.0, False),
    ("acc>0.5", "acc", ">", 0.5, False),
    ("acc>=1e-2", "acc", ">=", 0.01, False),
    ("val_loss<baseline*0.98", "val_loss", "<", None, True),
    ("val_loss<baseline", "val_loss", "<", None, True),
    ("eval/ppl>=baseline+0.5", "eval/ppl", ">=", None, True),
])
def test_gates_parse(text: str, metric: str, op: str, number: float | None, relative: bool) -> None:
    gate = gates.parse(text)
    assert (gate.metric, gate.op, gate.number, gate.relative) == (metric, op, number, relative)
    assert gate.direction == ("min" if "<" in op else "max")


@pytest.mark.parametrize("text, says", [
    ("val_loss", "is not a gate"), ("val_loss=3", "is not a gate"), ("<3", "is not a gate"),
    ("val_loss<fast", "'fast' is not a number"), ("val_loss<nan", "finite number"),
    ("val_loss<baseline/2", "is not baseline, baseline*K"), ("val_loss<baseline*x", "'baseline*x' is not baseline"),
    ("", "is not a gate"),
])
def test_bad_gates_say_what_to_write(text: str, says: str) -> None:
    with pytest.raises(gates.GateError) as info:
        gates.parse(text)
    assert says in str(info.value) and "\n" not in str(info.value)
    assert "val_loss<3.6" in str(info.value)  # the example of what to write


def test_thresholds_and_decisions() -> None:
    assert gates.threshold(gates.parse("val_loss<baseline*0.98"), 2.0) == pytest.approx(1.96)
    assert gates.threshold(gates.parse("acc>baseline+0.1"), 0.5) == pytest.approx(0.6)
    assert gates.threshold(gates.parse("acc>baseline-0.1"), 0.5) == pytest.approx(0.4)
    assert gates.threshold(gates.parse("acc>baseline"), 0.5) == 0.5
    assert gates.threshold(gates.parse("acc>baseline"), None) is None
    met = gates.decide(gates.parse("val_loss<3.6"), {"val_loss": 3.5})
    assert met == {"expression": "val_loss<3.6", "metric": "val_loss", "op": "<", "direction": "min",
                   "value": 3.5, "threshold": 3.6, "passed": True, "problem": None}
    assert gates.describe(met) == "val_loss 3.5 < 3.6: met"
    assert not gates.decide(gates.parse("val_loss<3.6"), {"val_loss": 3.6})["passed"]
    assert gates.decide(gates.parse("val_loss<=3.6"), {"val_loss": 3.6})["passed"]
    assert not gates.decide(gates.parse("val_loss<3.6"), {"val_loss": math.nan})["passed"]  # NaN never passes
    missing = gates.decide(gates.parse("acc>0.5"), {"val_loss": 1.0, "note": "x"})
    assert not missing["passed"] and missing["problem"] == "the eval wrote no number 'acc' (it wrote: val_loss)"
    relative = gates.decide(gates.parse("val_loss<baseline*0.5"), {"val_loss": 1.0}, 4.0, "base-1")
    assert relative["passed"] and relative["threshold"] == 2.0 and relative["baseline_run"] == "base-1"
    no_base = gates.decide(gates.parse("val_loss<baseline"), {"val_loss": 1.0}, None, "base-1")
    assert not no_base["passed"] and "baseline run base-1 has no value of 'val_loss'" in no_base["problem"]


def test_stage_plan_and_row_overrides() -> None:
    config = {"EVAL_SMALL_CMD": "python eval.py --batches 2", "GATE_SMALL": "val_loss<3",
              "EVAL_FULL_CMD": "python eval.py --batches 0", "GATE_FULL": ""}
    plan = stages.plan(config, {"gate_small": "val_loss<2"})
    assert [(s["name"], s["command"], s["gate"]) for s in plan] == [
        ("eval_small", ["python", "eval.py", "--batches", "2"], "val_loss<2"),
        ("eval_full", ["python", "eval.py", "--batches", "0"], "")]
    assert stages.plan({}, {}) == []
    assert stages.problem(config, {}) is None
    assert stages.problem({"GATE_SMALL": "val_loss<3"}, {}) == (
        "GATE_SMALL='val_loss<3' gates the eval_small stage, but EVAL_SMALL_CMD is empty; set it or drop the gate")
    bad = stages.problem(config, {"gate_small": "val_loss<<3"})
    assert "gate_small: 'val_loss<<3': '<3' is not a number" in str(bad)
    assert "set BASELINE_RUN=<run_id>" in str(stages.problem({**config, "GATE_FULL": "val_loss<baseline"}, {}))
    assert "which the eval never writes (EVAL_METRICS: val_loss, val_ppl)" in str(
        stages.problem({**config, "EVAL_METRICS": "val_loss,val_ppl"}, {"gate_small": "acc>0.5"}))
    assert "unknown {placeholder}" in str(stages.problem({"EVAL_SMALL_CMD": "python eval.py {ckp}"}, {}))
    assert "cannot be split into words" in str(stages.problem({"EVAL_FULL_CMD": "python 'eval.py"}, {}))


# ----------------------------------------------------------------------------- on a real pod


@pytest.fixture(scope="module")
def local_pod(tmp_path_factory: pytest.TempPathFactory, source_repo: Path) -> Iterator[Pod]:
    yield from ready_local_pod(tmp_path_factory.mktemp("stages"), source_repo)


def test_bad_gates_are_one_line_at_validate_and_sweep_start(local_pod: Pod, tmp_path: Path) -> None:
    result = local_pod.wf("--set", "GATE_SMALL=val_loss<3", "validate")
    assert result.returncode == 2
    assert "GATE_SMALL='val_loss<3' is not usable: GATE_SMALL='val_loss<3' gates the eval_small stage, but " \
           "EVAL_SMALL_CMD is empty" in one_line_error(result)
    result = local_pod.wf("--set", "EVAL_SMALL_CMD=python eval.py", "--set", "GATE_SMALL=val_loss<baseline",
                          "validate")
    assert result.returncode == 2 and "set BASELINE_RUN=<run_id>" in one_line_error(result)
    csv = write_csv(tmp_path / "bad.csv", "bad-gate,config/ok.py,1,,,1,python eval.py,val_loss<<3")
    before = sorted(p.name for p in local_pod.outputs.iterdir()) if local_pod.outputs.is_dir() else []
    for command in ("validate", "sweep-start"):
        result = local_pod.wf(command, "--csv", str(csv))
        assert result.returncode == 2, result.stderr
        line = one_line_error(result)
        assert f"{csv} row 2 (bad-gate): gate_small: 'val_loss<<3': '<3' is not a number" in line, line
    after = sorted(p.name for p in local_pod.outputs.iterdir()) if local_pod.outputs.is_dir() else []
    assert after == before  # nothing started, nothing written
    csv = write_csv(tmp_path / "metric.csv", "bad-metric,config/ok.py,1,,,1,python eval.py,acc>0.5")
    result = local_pod.wf("--set", "EVAL_METRICS=val_loss val_ppl", "validate", "--csv", str(csv))
    assert result.returncode == 2
    assert "gates on 'acc', which the eval never writes (EVAL_METRICS: val_loss, val_ppl)" in one_line_error(result)


def test_dry_run_shows_each_rows_stages(local_pod: Pod, tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "plan.csv", "plan-a,config/ok.py,1,,,1,,", "plan-b,config/ok.py,2,,,1,,val_loss<1")
    result = local_pod.wf(*STAGE_SETTINGS, "sweep-start", "--csv", str(csv), "--dry-run")
    assert result.returncode == 0, result.stderr
    python = f"{local_pod.root / 'repo' / '.venv'}/bin/python"
    run_b = local_pod.outputs / "plan-b"
    assert f"  then stage eval_small, gate val_loss<1 (not met: the row ends gated): {python} eval.py" in result.stdout
    assert (f"  then stage eval_full, gate val_loss<=baseline*0.95 (not met: the row ends gated): {python} eval.py "
            f"--scale 0.9 --eval-json {run_b}/stages/eval_full/eval.json") in result.stdout
    assert result.stdout.count("then stage eval_small, gate val_loss<3.0") == 1  # plan-a: the workflow.env gate
    assert not (local_pod.outputs / "plan-a").exists()  # nothing started


def _status(pod: Pod) -> dict[str, Any]:
    result = pod.wf("sweep-status", "--json")
    assert result.returncode in (0, 1), result.stderr
    data = json.loads(result.stdout)
    return data


def _rows(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row[0]: dict(zip(status["columns"], row)) for row in status["rows"]} if "columns" in status else {
        row["run_id"]: row for row in status["rows"]}


def test_a_campaign_with_gates_met_not_met_and_a_failing_eval(local_pod: Pod, tmp_path: Path) -> None:
    pod = local_pod
    # st-pass passes both gates (GATE_FULL: val_loss*0.9 <= 0.95 * st-base's val_loss, from an earlier campaign);
    # st-gated is gated at the small eval; st-evalfail's eval raises; st-nometric gates on a metric never written;
    # st-slow evaluates for a while (sweep-status shows its stage) while st-after still starts and ends
    csv = write_csv(tmp_path / "stages.csv",
                    "st-pass,config/ok.py,1,,passes both gates,1,,",
                    "st-slow,config/ok.py,2,,slow eval,1,python eval.py --sleep 15,",
                    "st-gated,config/ok.py,3,,gated at the small eval,1,,val_loss<1.0",
                    "st-evalfail,config/ok.py,4,,eval raises,1,python eval.py --fail,",
                    "st-nometric,config/ok.py,5,,no val_loss in eval.json,1,python eval.py --no-metric,",
                    "st-after,config/ok.py,6,,a plain row,1,,")
    base = write_csv(tmp_path / "base.csv", "st-base,config/ok.py,9,,the baseline run,1,,")
    result = pod.wf("sweep-start", "--csv", str(base), "--json")
    assert result.returncode == 0, result.stderr
    wait_campaign(pod, json.loads(result.stdout)["campaign_id"])
    result = pod.wf(*STAGE_SETTINGS, "sweep-start", "--csv", str(csv), "--json")
    assert result.returncode == 0, result.stderr
    campaign = json.loads(result.stdout)["campaign_id"]
    seen_stage: set[str] = set()

    def ended() -> bool:
        rows = _rows(_status(pod))
        slow = rows.get("st-slow", {})
        if slow.get("stage") and slow.get("state") == "running":
            seen_stage.add(str(slow["stage"]))
        record = json.loads((pod.outputs / "_campaigns" / campaign / "executor.json").read_text())
        return record.get("state") in ("finished", "stopped", "lost")

    wait_until(ended, 300, interval=0.3, what=f"campaign {campaign} to end")
    assert "eval_small" in seen_stage  # sweep-status showed the stage it was in
    summaries = {r: json.loads((pod.outputs / r / "summary.json").read_text())
                 for r in ("st-pass", "st-slow", "st-gated", "st-evalfail", "st-nometric", "st-after")}

    passed = summaries["st-pass"]
    assert passed["ok"] is True and passed["state"] == "success"
    assert [s["name"] for s in passed["stages"]] == ["eval_small", "eval_full"]
    small, full = passed["stages"]
    assert small["state"] == "success" and small["gate"]["passed"] is True
    assert small["gate"]["metric"] == "val_loss" and small["gate"]["threshold"] == 3.0
    assert small["gate"]["direction"] == "min" and small["gate"]["value"] == pytest.approx(5 / 3)
    assert full["gate"]["passed"] is True and full["gate"]["baseline_run"] == "st-base"
    assert full["gate"]["baseline_value"] == pytest.approx(5 / 3) and full["gate"]["op"] == "<="
    assert full["metrics"]["val_loss"] == pytest.approx(1.5)  # --scale 0.9 of the last val_loss
    assert passed["eval_metrics"]["eval_full"]["val_loss"] == pytest.approx(1.5)
    stage_dir = pod.outputs / "st-pass" / "stages" / "eval_small"
    assert json.loads((stage_dir / "status.json").read_text())["state"] == "success"
    assert "eval: stage eval_small of st-pass" in (stage_dir / "stage.log").read_text()
    assert (stage_dir / "eval.json").is_file()

    gated = summaries["st-gated"]
    assert gated["ok"] is False and gated["state"] == "gated" and gated["failure_class"] is None
    assert [s["name"] for s in gated["stages"]] == ["eval_small"]  # the full eval never ran
    assert not (pod.outputs / "st-gated" / "stages" / "eval_full").exists()
    assert gated["gate"]["passed"] is False and gated["gate"]["threshold"] == 1.0
    assert gated["reason_line"] == "stage eval_small: val_loss 1.66667 < 1: not met"

    failed = summaries["st-evalfail"]
    assert failed["ok"] is False and failed["state"] == "failed"
    assert failed["failure_class"] == "python_exception" and failed["stages"][0]["state"] == "failed"
    assert "RuntimeError: eval: the checkpoint cannot be read" in " ".join(failed["fatal_lines"] or [])

    missing = summaries["st-nometric"]
    assert missing["state"] == "failed" and missing["failure_class"] == "metric_missing"
    assert "the eval wrote no number 'val_loss' (it wrote: acc)" in missing["reason_line"]

    slow, after = summaries["st-slow"], summaries["st-after"]
    assert slow["ok"] is True and [s["name"] for s in slow["stages"]] == ["eval_small", "eval_full"]
    assert after["ok"] is True and [s["name"] for s in after["stages"]] == ["eval_small", "eval_full"]
    # the executor kept going while st-slow evaluated: other rows started (on the other slot) meanwhile
    window = (slow["stages"][0]["started_utc"], slow["stages"][0]["ended_utc"])
    meanwhile = [r for r, done in summaries.items() if window[0] < done["started_utc"] < window[1]]
    assert meanwhile, (window, {r: d["started_utc"] for r, d in summaries.items()})

    result = pod.wf("sweep-status")
    assert result.returncode == 1  # two rows failed in their evals
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("st-")}
    assert "gated [eval_small]" in lines["st-gated"] and "val_loss 1.66667 < 1: not met" in lines["st-gated"]
    assert "failed [eval_small]" in lines["st-evalfail"]
    assert "ok [eval_full]" in lines["st-pass"]
    assert "gated 1" in result.stdout and "unfinished" not in result.stdout
    # the leaderboard ranks by the full eval's gate metric by default; gated rows after ok ones, failed last
    board = pod.wf("leaderboard", "--campaign", campaign, "--json")
    assert board.returncode == 0, board.stderr
    ranked = json.loads(board.stdout)
    assert ranked["metric"] == "eval_full:val_loss" and ranked["higher_is_better"] is False
    assert [r["run_id"] for r in ranked["rows"]] == ["st-after", "st-pass", "st-slow", "st-gated", "st-evalfail",
                                                     "st-nometric"]
    assert ranked["rows"][0]["value"] == pytest.approx(1.5) and ranked["rows"][3]["state"] == "gated"
    compared = pod.wf("compare", "st-pass", "st-gated", "--json")
    assert compared.returncode == 0, compared.stderr
    table = json.loads(compared.stdout)["metrics"]
    assert table["eval_full:val_loss"][0] == pytest.approx(1.5) and table["eval_full:val_loss"][1] is None
    assert table["eval_small:val_loss"] == [pytest.approx(5 / 3), pytest.approx(5 / 3)]
    # a resume reruns the failed rows only: the gated row is finished
    plan = pod.wf(*STAGE_SETTINGS, "sweep-resume", "--campaign", campaign, "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert "st-evalfail" in plan.stdout and "st-gated" not in plan.stdout.replace("gated", "")


def test_stages_over_ssh(tmp_path: Path, source_repo: Path, request: pytest.FixtureRequest) -> None:
    """The same stages on a pod reached over the loopback sshd: one row passes both gates, one is gated at the
    small eval, one fails in its eval."""
    pod = make_pod("ssh", tmp_path / "ssh", source_repo, request.getfixturevalue("sshd"))
    try:
        ready(pod)
        csv = write_csv(tmp_path / "ssh.csv", "ssh-pass,config/ok.py,1,,passes,1,,",
                        "ssh-gated,config/ok.py,2,,gated,1,,val_loss>2",
                        "ssh-evalfail,config/ok.py,3,,eval raises,1,python eval.py --fail,")
        result = pod.wf("--set", "EVAL_SMALL_CMD=python eval.py", "--set", "GATE_SMALL=val_loss<3",
                        "--set", "EVAL_FULL_CMD=python eval.py --scale 0.9", "sweep-start", "--csv", str(csv), "--json")
        assert result.returncode == 0, result.stderr
        wait_campaign(pod, json.loads(result.stdout)["campaign_id"])
        passed = json.loads((pod.outputs / "ssh-pass" / "summary.json").read_text())
        gated = json.loads((pod.outputs / "ssh-gated" / "summary.json").read_text())
        assert passed["state"] == "success" and [s["state"] for s in passed["stages"]] == ["success", "success"]
        assert passed["stages"][1]["gate"] is None  # a stage without a gate only records its metrics
        assert gated["state"] == "gated" and gated["gate"]["direction"] == "max"
        assert gated["gate"]["value"] == pytest.approx(5 / 3) and gated["gate"]["threshold"] == 2.0
        failed = json.loads((pod.outputs / "ssh-evalfail" / "summary.json").read_text())
        assert failed["state"] == "failed" and failed["failure_class"] == "python_exception"
        assert failed["stages"][0]["name"] == "eval_small" and failed["stages"][0]["state"] == "failed"
        status = pod.wf("sweep-status")
        assert status.returncode == 1, status.stdout + status.stderr  # the failed eval, not the gated row
        assert "failed 1, gated 1, ok 1" in status.stdout
        assert "failed [eval_small]" in status.stdout and "gated [eval_small]" in status.stdout
        fetched = pod.wf("fetch-run", "ssh-gated")
        assert fetched.returncode == 0, fetched.stderr
        local = tmp_path / "ssh" / "artifacts" / "ssh-gated"
        assert json.loads((local / "summary.json").read_text())["state"] == "gated"
        assert (local / "stages" / "eval_small" / "eval.json").is_file()  # the stage files come along
    finally:
        cleanup_pod(pod)


def test_sweep_stop_during_a_stage_cancels_it(local_pod: Pod, tmp_path: Path) -> None:
    pod = local_pod
    csv = write_csv(tmp_path / "stop.csv", "stop-eval,config/ok.py,1,,a long eval,1,python eval.py --sleep 120,")
    result = pod.wf("sweep-start", "--csv", str(csv), "--json")
    assert result.returncode == 0, result.stderr
    campaign = json.loads(result.stdout)["campaign_id"]
    stage_status = pod.outputs / "stop-eval" / "stages" / "eval_small" / "status.json"

    def evaluating() -> bool:
        row = _rows(_status(pod)).get("stop-eval", {})
        return row.get("stage") == "eval_small" and stage_status.is_file() and json.loads(
            stage_status.read_text()).get("state") == "running"

    wait_until(evaluating, 120, interval=0.3, what="stop-eval to be in its eval_small stage")
    supervisor = json.loads(stage_status.read_text())["supervisor_pid"]
    stopped = pod.wf("sweep-stop", "--campaign", campaign, timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    wait_campaign(pod, campaign)
    done = json.loads((pod.outputs / "stop-eval" / "summary.json").read_text())
    assert done["ok"] is False and done["state"] == "cancelled" and done["stages"][0]["state"] == "cancelled"
    assert json.loads(stage_status.read_text())["state"] == "cancelled"
    assert not Path(f"/proc/{supervisor}").exists() or "zombie" in Path(f"/proc/{supervisor}/status").read_text()


def test_resume_after_the_executor_died_mid_stage_runs_the_row_with_its_stages(local_pod: Pod, tmp_path: Path
                                                                                ) -> None:
    import os
    import signal

    pod = local_pod
    csv = write_csv(tmp_path / "orphan.csv", "orphan-eval,config/ok.py,1,,eval outlives its executor,1,"
                    "python eval.py --sleep 6,val_loss<3")
    result = pod.wf("sweep-start", "--csv", str(csv), "--json")
    assert result.returncode == 0, result.stderr
    campaign = json.loads(result.stdout)["campaign_id"]
    stage_status = pod.outputs / "orphan-eval" / "stages" / "eval_small" / "status.json"
    wait_until(lambda: stage_status.is_file() and json.loads(stage_status.read_text()).get("state") == "running",
               120, interval=0.3, what="orphan-eval's eval_small stage to run")
    executor = json.loads((pod.outputs / "_campaigns" / campaign / "executor.json").read_text())
    os.kill(int(executor["pid"]), signal.SIGKILL)  # the executor dies; the stage's supervisor goes on
    refused = pod.wf("sweep-resume", "--campaign", campaign)
    assert refused.returncode == 7 and "orphan-eval" in refused.stderr  # its stage still runs
    wait_until(lambda: json.loads(stage_status.read_text()).get("cleanup") == "done", 120, interval=0.3,
               what="the orphaned stage to end")
    assert not (pod.outputs / "orphan-eval" / "summary.json").exists()
    resumed = pod.wf("sweep-resume", "--campaign", campaign)
    assert resumed.returncode == 0, resumed.stderr
    assert "rerunning orphan-eval" in resumed.stdout  # not taken as ok without its gate
    wait_campaign(pod, campaign)
    done = json.loads((pod.outputs / "orphan-eval" / "summary.json").read_text())
    assert done["ok"] is True and [s["name"] for s in done["stages"]] == ["eval_small"]
    assert done["stages"][0]["gate"]["passed"] is True

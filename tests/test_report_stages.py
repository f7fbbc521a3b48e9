"""report of a campaign with stages: each row's stages and gate decisions, gated rows listed apart from failures."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import REPO_ROOT

CAMPAIGN = "20260101-000000-bbbbbb"


def _gate(value: float | None, limit: float, passed: bool, problem: str | None = None) -> dict[str, Any]:
    return {"expression": f"val_loss<{limit}", "metric": "val_loss", "op": "<", "direction": "min",
            "value": value, "threshold": limit, "passed": passed, "problem": problem}


def _stage(name: str, state: str, gate: dict[str, Any] | None, **more: Any) -> dict[str, Any]:
    return {"name": name, "command": "python eval.py", "state": state, "duration_s": 4.0, "gate": gate,
            "metrics": {"val_loss": gate["value"]} if gate and gate["value"] is not None else {}, **more}


def _run(root: Path, run_id: str, ok: bool, state: str, stages: list[dict[str, Any]], **more: Any) -> None:
    run = root / run_id
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({
        "run_id": run_id, "campaign_id": CAMPAIGN, "ok": ok, "state": state, "attempt": 1, "attempts": 1,
        "duration_s": 30.0, "spec_hash": "x", "attempt_history": [], "stages": stages, **more}))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"iter": i, "train_loss": 4 - i / 10,
                                                           "val_loss": 4.2 - i / 10}) + "\n" for i in range(10)))
    (run / "run.log").write_text("step 1\nstep 2\n")


def test_report_shows_stages_and_gates(tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    _run(artifacts, "st-pass", True, "success",
         [_stage("eval_small", "success", _gate(3.1, 3.6, True)),
          _stage("eval_full", "success", _gate(3.05, 3.2, True), retries=[{"failure_class": "nccl"}])])
    _run(artifacts, "st-gated", False, "gated", [_stage("eval_small", "gated", _gate(3.91, 3.6, False))],
         reason_line="stage eval_small: val_loss 3.91 < 3.6: not met")
    _run(artifacts, "st-evalfail", False, "failed",
         [_stage("eval_small", "failed", None, failure_class="nonzero_exit", reason="exit code 3")],
         failure_class="nonzero_exit", reason_line="stage eval_small: exit code 3")
    env_file = tmp_path / "workflow.env"
    env_file.write_text(f"LOCAL_ARTIFACTS_DIR={artifacts}\n")
    out = tmp_path / "report"
    result = subprocess.run([str(REPO_ROOT / "infra_scripts" / "workflow.sh"), "--env", str(env_file), "report",
                             "--out", str(out)], env={**os.environ, "WORKFLOW_VENV": sys.prefix}, text=True,
                            capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr
    page = (out / "report.html").read_text()
    assert "3 finished run(s): 1 ok, 1 gated, 1 failed." in page
    board = page.split("<table id='leaderboard'>")[1].split("</table>")[0]
    assert re.findall(r"<tr><td>\d+</td><td>([\w-]+)</td>", board) == ["st-pass", "st-gated", "st-evalfail"]
    table = page.split("<table id='stages'>")[1].split("</table>")[0]
    cells = [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr class=[^>]*>(.*?)</tr>", table)]
    assert cells == [
        ["st-pass", "eval_small", "success", "val_loss=3.1", "&lt; 3.6", "met", "4.0s"],
        ["st-pass", "eval_full", "success (retried after nccl)", "val_loss=3.05", "&lt; 3.2", "met", "4.0s"],
        ["st-gated", "eval_small", "gated", "val_loss=3.91", "&lt; 3.6", "not met", "4.0s"],
        ["st-evalfail", "eval_small", "failed", "", "no gate", "failed: nonzero_exit", "4.0s"],
    ]
    gated = page.split("<h2>Gated</h2>")[1].split("<h2>")[0]
    assert "id='gated-st-gated'" in gated and "stage eval_small: val_loss=3.91 &lt; 3.6: not met" in gated
    assert "st-evalfail" not in gated and "st-pass" not in gated
    failures = page.split("<h2>Failures</h2>")[1].split("<h2>")[0]
    assert "id='fail-st-evalfail'" in failures and "nonzero_exit" in failures
    assert "st-gated" not in failures  # a gate not met is not a failure

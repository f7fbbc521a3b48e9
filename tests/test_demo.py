"""The README's first command, examples/demo.sh, end to end on a copy of this working tree: set up,
checkout, a real 4-row sweep of the tiny GPT on two CPU slots, status, fetch. It must tell the truth
(one row fails on purpose, one survives a simulated OOM) and write nothing outside the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, require_tool


def copy_of_working_tree(target: Path) -> Path:
    """Tracked and untracked-but-not-ignored files, committed in a fresh repo (the demo clones its checkout)."""
    listed = subprocess.run(["git", "-C", str(REPO_ROOT), "ls-files", "-z", "-c", "-o", "--exclude-standard"],
                            check=True, stdout=subprocess.PIPE).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO_ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t",
                                                               "commit", "-q", "-m", "copy"]):
        subprocess.run(["git", "-C", str(target), *args], check=True)
    return target


@pytest.mark.slow
def test_demo_runs_a_true_sweep_and_fetches_it(tmp_path: Path):
    require_tool("tmux")
    checkout = copy_of_working_tree(tmp_path / "checkout")
    home = tmp_path / "home"
    home.mkdir()
    tmux_dir = tmp_path / "tmux"
    tmux_dir.mkdir()
    env = {**os.environ, "WORKFLOW_VENV": sys.prefix, "HOME": str(home), "TMUX_TMPDIR": str(tmux_dir)}
    env.pop("WORKFLOW_PROFILE", None)
    # rustup's proxies (on some dev machines' PATH) write ~/.rustup when anything probes rustc
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".cargo" not in p)
    try:
        result = subprocess.run([str(checkout / "examples" / "demo.sh")], env=env, text=True, timeout=600,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    finally:
        subprocess.run(["tmux", "kill-server"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "4/4  failed 1, gated 1, ok 2" in result.stdout
    assert "(sweep-status exits 1 because a row failed, as planned" in result.stdout
    # the final table tells the failed row's cause (the trainer's own line, not torchrun's wrapper)
    final = result.stdout.split("== workflow.sh sweep-status", 1)[1].split("== workflow.sh", 1)[0]
    typo = next(line for line in final.splitlines() if line.startswith("tiny-typo "))
    assert "config error: learning_rate expects float, got 'fast'" in typo, final
    assert "ok (oom→retry)" in final, final
    assert "\x1b[" not in result.stdout  # not a TTY: no ANSI codes
    summaries = {p.parent.name: json.loads(p.read_text()) for p in (checkout / "artifacts").glob("*/summary.json")}
    assert sorted(summaries) == ["tiny-lr2e-3", "tiny-lr6e-3", "tiny-oom-retry", "tiny-typo"]
    assert [summaries[r]["ok"] for r in sorted(summaries)] == [True, False, True, False]
    # the stages: tiny-lr2e-3 passes both gates, tiny-lr6e-3 is gated at the small eval (README's first command)
    passed, gated = summaries["tiny-lr2e-3"], summaries["tiny-lr6e-3"]
    assert [(s["name"], s["gate"]["passed"]) for s in passed["stages"]] == [("eval_small", True), ("eval_full", True)]
    assert gated["state"] == "gated" and [s["name"] for s in gated["stages"]] == ["eval_small"]
    assert gated["gate"]["metric"] == "val_loss" and gated["gate"]["value"] > gated["gate"]["threshold"] == 3.0
    assert "gated [eval_small]" in final and "val_loss" in final
    board = result.stdout.split("== workflow.sh leaderboard", 1)[1].split("== workflow.sh", 1)[0]
    assert "best eval_full:val_loss" in board and board.index("tiny-lr2e-3") < board.index("tiny-lr6e-3"), board
    oom = summaries["tiny-oom-retry"]
    assert oom["attempts"] == 2 and oom["attempt_history"][0]["failure_class"] == "oom"
    for run_id in ("tiny-lr2e-3", "tiny-lr6e-3"):
        losses = [json.loads(line)["val_loss"] for line in
                  (checkout / "artifacts" / run_id / "metrics.jsonl").read_text().splitlines()]
        assert losses[-1] < losses[0]  # it learned something real
    assert summaries["tiny-typo"]["failure_class"] == "nonzero_exit"
    assert "state:    SWEEP_FAILED" in result.stdout
    assert list(home.iterdir()) == []  # nothing written outside the checkout
    assert (checkout / ".workflow" / "pod" / "outputs" / "_control" / "workflow_state.json").is_file()

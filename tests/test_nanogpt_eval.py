"""examples/nanogpt/eval.py on a real tiny checkpoint (CPU): the same val loss as the trainer's own
eval over the same batches, the whole val split with --batches 0, eval.json where a stage wants it
($WF_CKPT / $WF_EVAL_JSON), and one-line errors for a missing or foreign checkpoint."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from nanogpt_helpers import NANOGPT, VAL_TOKENS, build_shards, env, explain, metrics, run_train, tiny_args

BASE = ("max_iters=20", "eval_interval=10", "eval_iters=2", "log_interval=10", "checkpoint_interval=0")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    shards = build_shards(tmp_path_factory.getbasetemp())
    out = tmp_path_factory.mktemp("eval-ckpt")
    proc = run_train(tiny_args(shards, out, *BASE))
    assert proc.returncode == 0, explain(proc)
    return shards, out


def run_eval(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "eval.py", *args], cwd=NANOGPT, env=env(**extra), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)


def read(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_small_eval_matches_the_trainers_val_loss(trained: tuple[Path, Path]) -> None:
    shards, out = trained
    proc = run_eval("--ckpt", str(out / "ckpt.pt"), "--batches", "2", "--data-dir", str(shards))
    assert proc.returncode == 0, explain(proc)
    result = read(out / "eval.json")  # beside the checkpoint by default
    last = metrics(out)[-1]
    assert result["iter"] == 20 and result["batches"] == 2 and result["tokens"] == 2 * 16 * 64
    # the trainer's eval at iter 20: eval_iters=2 batches of 16 x 64 from the start of the val split
    assert result["metrics"]["val_loss"] == pytest.approx(last["val_loss"], abs=1e-4)
    assert result["metrics"]["val_ppl"] == pytest.approx(math.exp(last["val_loss"]), rel=1e-3)
    assert f"eval: 2 val batches (2048 tokens) of {out / 'ckpt.pt'} at iter 20: val_loss" in proc.stdout


def test_full_eval_as_a_stage_reads_its_environment(trained: tuple[Path, Path], tmp_path: Path) -> None:
    shards, out = trained
    target = tmp_path / "stages" / "eval_full" / "eval.json"
    proc = run_eval("--batches", "0", WF_CKPT=str(out / "ckpt.pt"), WF_EVAL_JSON=str(target), DATA_DIR=str(shards))
    assert proc.returncode == 0, explain(proc)
    result = read(target)
    assert result["batches"] == (VAL_TOKENS - 1) // (16 * 64) and result["val_tokens"] == VAL_TOKENS - 1
    assert 0 < result["metrics"]["val_loss"] < math.log(256)  # it learned something: better than uniform
    assert result["data_dir"] == str(shards)


def test_bad_checkpoints_are_one_line(trained: tuple[Path, Path], tmp_path: Path) -> None:
    proc = run_eval("--ckpt", str(tmp_path / "nope.pt"))
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert f"eval.py: argument error: --ckpt {tmp_path / 'nope.pt'} does not exist" in proc.stderr
    proc = run_eval(WF_CKPT="")
    assert proc.returncode == 2 and "no checkpoint: pass --ckpt PATH" in proc.stderr
    import torch

    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    proc = run_eval("--ckpt", str(tmp_path / "other.pt"), "--data-dir", str(trained[0]))
    assert proc.returncode == 2 and "is not a train.py checkpoint" in proc.stderr, explain(proc)
    assert not (tmp_path / "eval.json").exists()

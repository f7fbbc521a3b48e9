"""End-to-end runs of examples/nanogpt/train.py on offline byte-level shards (CPU)."""

from __future__ import annotations

import math
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from nanogpt_helpers import (
    OUT_FILES,
    build_shards,
    explain,
    finish,
    metrics,
    results,
    run_train,
    start_train,
    tiny_args,
)

# the baseline: 40 iterations of the tiny config, batch 16, evals at 0/10/20/30/40
BASE = ("max_iters=40", "eval_interval=10", "eval_iters=2", "log_interval=10", "checkpoint_interval=0")
LOG_LINE = re.compile(r"^iter \d+ \| loss \d+\.\d{4} \| lr \d\.\d{2}e[-+]\d{2} \| \d+ tok/s \| "
                      r"mfu (n/a|\d+\.\d{2}%) \| \d+\.\d ms/iter$")


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_shards(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def baseline(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    out = tmp_path_factory.mktemp("baseline")
    return out, run_train(tiny_args(shards, out, *BASE))


def assert_same_losses(a: list[dict[str, Any]], b: list[dict[str, Any]], tol: float) -> None:
    assert [m["iter"] for m in a] == [m["iter"] for m in b]
    for x, y in zip(a, b):
        assert x["train_loss"] == pytest.approx(y["train_loss"], abs=tol), (x, y)
        assert x["val_loss"] == pytest.approx(y["val_loss"], abs=tol), (x, y)


def test_tiny_run_learns_and_writes_its_outputs(baseline: tuple[Path, Any]) -> None:
    out, proc = baseline
    assert proc.returncode == 0, explain(proc)
    assert {p.name for p in out.iterdir()} == OUT_FILES  # nothing the sweep runner owns
    rows = metrics(out)
    assert [m["iter"] for m in rows] == [0, 10, 20, 30, 40]
    assert set(rows[0]) == {"iter", "train_loss", "val_loss", "lr", "tokens_per_sec", "mfu", "elapsed_s"}
    first, last = rows[0]["val_loss"], rows[-1]["val_loss"]
    assert first == pytest.approx(math.log(256), abs=0.3)  # an untrained model guesses uniformly
    assert last < first - 0.5 and last < math.log(256)
    assert rows[-1]["tokens_per_sec"] > 0 and rows[-1]["mfu"] is None  # no peak FLOPs known on CPU
    res = results(out)
    assert res["status"] == "completed" and res["iters"] == 40 and res["tokens"] == 40 * 16 * 64
    assert res["final_val_loss"] == last and res["best_val_loss"] == min(m["val_loss"] for m in rows)
    assert res["tokens_per_sec"] > 0 and res["elapsed_s"] > 0
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("config: out_dir=") and " batch_size=16 " in lines[0]
    assert sum(bool(LOG_LINE.match(line)) for line in lines) == 4, proc.stdout
    assert "eval iter 40 | train " in proc.stdout
    assert lines[-1] == f"done: iters=40 best_val_loss={res['best_val_loss']:.4f}"


def test_resume_continues_exactly(shards: Path, tmp_path: Path) -> None:
    # dropout on: the checkpointed RNG state matters too
    common = ("eval_interval=1", "eval_iters=1", "log_interval=5", "dropout=0.1", "checkpoint_interval=0")
    straight, split = tmp_path / "straight", tmp_path / "split"
    procs = [start_train(tiny_args(shards, straight, *common, "max_iters=20")),
             start_train(tiny_args(shards, split, *common, "max_iters=10", "resume=1"))]
    for proc in map(finish, procs):
        assert proc.returncode == 0, explain(proc)
    assert f"resume: no checkpoint at {split / 'ckpt.pt'}, starting fresh" in proc.stdout
    resumed = run_train(tiny_args(shards, split, *common, "max_iters=20", "resume=1"))
    assert resumed.returncode == 0, explain(resumed)
    assert f"resume: continuing from {split / 'ckpt.pt'} at iter 10" in resumed.stdout
    assert "eval iter 10 " not in resumed.stdout and "eval iter 11 " in resumed.stdout
    assert_same_losses(metrics(split), metrics(straight), tol=1e-5)
    assert results(split)["iters"] == 20 and results(split)["tokens"] == results(straight)["tokens"]


def test_sigterm_saves_a_checkpoint_that_resumes(shards: Path, tmp_path: Path) -> None:
    args = tiny_args(shards, tmp_path, "max_iters=100000", "eval_interval=5", "eval_iters=1",
                     "log_interval=1", "checkpoint_interval=5")
    proc = start_train(args)
    deadline = time.time() + 60
    while not (tmp_path / "ckpt.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert (tmp_path / "metrics.jsonl").exists() and (tmp_path / "ckpt.pt").exists()
    proc.send_signal(signal.SIGTERM)
    done = finish(proc)
    assert done.returncode == 143, explain(done)
    assert "Traceback" not in done.stderr
    stopped = re.search(r"^interrupted: checkpoint saved at iter (\d+)$", done.stdout, re.MULTILINE)
    assert stopped, explain(done)
    n = int(stopped.group(1))
    res = results(tmp_path)
    assert res["status"] == "interrupted" and res["iters"] == n >= 5
    assert {p.name for p in tmp_path.iterdir()} == OUT_FILES
    again = run_train([*args, "resume=1", f"max_iters={n + 3}"])
    assert again.returncode == 0, explain(again)
    assert f"at iter {n} " in again.stdout
    assert results(tmp_path)["status"] == "completed" and results(tmp_path)["iters"] == n + 3
    assert [m["iter"] for m in metrics(tmp_path)] == sorted({*range(0, n + 1, 5), n + 3})


def test_simulated_oom_then_resume_with_half_batch(shards: Path, tmp_path: Path,
                                                   baseline: tuple[Path, Any]) -> None:
    hook = ("simulate_oom_batch_over=8", "simulate_oom_at_iter=20")
    crash = run_train(tiny_args(shards, tmp_path, *BASE, *hook, "checkpoint_interval=10"))
    assert crash.returncode == 1, explain(crash)
    assert crash.stderr.rstrip().splitlines()[-1] == (
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB "
        "(simulated: batch_size=16 > simulate_oom_batch_over=8)")
    assert "Traceback (most recent call last)" in crash.stderr
    assert "eval iter 20 " in crash.stdout and not (tmp_path / "results.json").exists()
    retry = run_train(tiny_args(shards, tmp_path, *BASE, *hook, "checkpoint_interval=10", "resume=1",
                                "batch_size=8", "gradient_accumulation_steps=2"))
    assert retry.returncode == 0, explain(retry)
    assert "at iter 20 (train shard 0, token offset 20480)" in retry.stdout
    res = results(tmp_path)
    assert res["status"] == "completed" and res["iters"] == 40 and res["tokens"] == 40 * 16 * 64
    # same tokens per step, same data position: the same run as the uninterrupted baseline
    assert_same_losses(metrics(tmp_path), metrics(baseline[0]), tol=1e-4)


def test_ddp_two_cpu_processes_split_the_batch(shards: Path, tmp_path: Path,
                                               baseline: tuple[Path, Any]) -> None:
    proc = run_train(tiny_args(shards, tmp_path, *BASE, "batch_size=8"), torchrun_nproc=2, timeout=120)
    assert proc.returncode == 0, explain(proc)
    assert proc.stdout.count("done: iters=40") == 1  # rank 0 logs alone
    assert "world_size 2" in proc.stdout
    res = results(tmp_path)
    assert res["status"] == "completed" and res["world_size"] == 2 and res["tokens"] == 40 * 16 * 64
    # 2 ranks x 8 rows that are different slices of the stream == 1 process x 16 rows
    assert_same_losses(metrics(tmp_path), metrics(baseline[0]), tol=1e-4)


def test_resume_refuses_a_checkpoint_of_another_model(baseline: tuple[Path, Any], shards: Path) -> None:
    out = baseline[0]
    before = (out / "results.json").read_text()
    clash = run_train(tiny_args(shards, out, *BASE, "n_layer=3", "resume=1"))
    assert clash.returncode == 2, explain(clash)
    assert clash.stderr == (f"train.py: config error: resume: {out / 'ckpt.pt'} has n_layer=2 "
                            "but the config says n_layer=3\n")
    assert (out / "results.json").read_text() == before


def test_help_lists_the_keys() -> None:
    proc = run_train(["--help"])
    assert proc.returncode == 0, explain(proc)
    assert proc.stdout.startswith("usage: python train.py")
    assert "  learning_rate = 0.0006  (float)" in proc.stdout

"""End-to-end runs of examples/nanogpt/train.py on offline byte-level shards (CPU)."""

from __future__ import annotations

import math
import os
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
LOG_LINE = re.compile(r"^iter \d+ \| loss \d+\.\d{4} \| lr \d\.\d{2}e[-+]\d{2} \| (\d+) tok/s \| "
                      r"mfu (n/a|\d+\.\d{2}%) \| \d+\.\d ms/iter$", re.MULTILINE)
# what metrics.jsonl rows of two runs of the same steps share (the rest is timing)
SAME_KEYS = ("iter", "train_loss", "val_loss", "lr")


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


def logged_losses(stdout: str) -> list[str]:
    """The loss parts of the log lines: 'iter N | loss X' and 'eval iter N | train X | val Y'."""
    return [line.split(" | lr ")[0] for line in stdout.splitlines() if line.startswith(("iter ", "eval iter "))]


def flops_per_token(res: dict[str, Any], n_layer: int = 2, n_embd: int = 128, block_size: int = 64) -> float:
    """Training FLOPs per token of the tiny model: 6N + 12 L E T (the PaLM count; N in results.json)."""
    return 6.0 * res["params"] + 12.0 * n_layer * n_embd * block_size


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


def test_resume_between_evals_gives_the_same_train_and_val_loss(shards: Path, tmp_path: Path) -> None:
    # evals at 0/5/10/15, checkpoints at 3/6/9: the crash (a simulated OOM at iter 8) leaves the
    # checkpoint of iter 6, one training step after the eval at 5; the train_loss at 10 must still be
    # the mean over iters 6..10, as in the run that never stopped
    common = ("max_iters=15", "eval_interval=5", "eval_iters=1", "log_interval=5", "dropout=0.1",
              "checkpoint_interval=3")
    straight, split = tmp_path / "straight", tmp_path / "split"
    procs = [start_train(tiny_args(shards, straight, *common)),
             start_train(tiny_args(shards, split, *common, "simulate_oom_batch_over=8",
                                   "simulate_oom_at_iter=8"))]
    done, crash = map(finish, procs)
    assert done.returncode == 0, explain(done)
    assert crash.returncode == 1 and "CUDA out of memory" in crash.stderr, explain(crash)
    assert [m["iter"] for m in metrics(split)] == [0, 5]
    resumed = run_train(tiny_args(shards, split, *common, "resume=1"))
    assert resumed.returncode == 0, explain(resumed)
    assert f"resume: continuing from {split / 'ckpt.pt'} at iter 6 " in resumed.stdout
    rows = [{k: m[k] for k in SAME_KEYS} for m in metrics(split)]
    assert rows == [{k: m[k] for k in SAME_KEYS} for m in metrics(straight)]  # bit for bit on CPU
    assert [m["iter"] for m in rows] == [0, 5, 10, 15]
    # the log lines after the resume show the same losses too
    after = logged_losses(resumed.stdout)
    assert after == logged_losses(done.stdout)[-len(after):]
    assert [line.split(" | ")[0] for line in after] == ["iter 10", "eval iter 10", "iter 15", "eval iter 15"]
    assert results(split)["final_train_loss"] == results(straight)["final_train_loss"]


def test_mfu_is_reported_with_peak_flops_given(shards: Path, tmp_path: Path) -> None:
    peak = 1e11  # per device; on CPU only an explicit peak_flops gives an MFU
    proc = run_train(tiny_args(shards, tmp_path, "max_iters=20", "eval_interval=10", "eval_iters=1",
                               "log_interval=5", "checkpoint_interval=0", f"peak_flops={peak}"))
    assert proc.returncode == 0, explain(proc)
    res = results(tmp_path)
    fpt = flops_per_token(res)
    rows = metrics(tmp_path)
    assert rows[0]["tokens_per_sec"] is None and rows[0]["mfu"] is None  # nothing timed before iter 1
    for row in [*rows[1:], res]:
        assert 0 < row["mfu"] < 1 and row["mfu"] == pytest.approx(fpt * row["tokens_per_sec"] / peak, rel=1e-9)
    logs = LOG_LINE.findall(proc.stdout)
    assert len(logs) == 4, proc.stdout
    for tok_s, mfu_text in logs:  # each log line: its own window's tok/s and the MFU of that
        assert mfu_text.endswith("%") and float(mfu_text[:-1]) > 0
        one_token = 100 * fpt / peak  # the log shows tok/s as a whole number: up to one token/s of rounding
        assert float(mfu_text[:-1]) == pytest.approx(100 * fpt * int(tok_s) / peak, abs=0.006 + one_token)


def test_bfloat16_autocast_learns_on_cpu(shards: Path, tmp_path: Path) -> None:
    proc = run_train(tiny_args(shards, tmp_path, *BASE, "dtype=bfloat16"))
    assert proc.returncode == 0, explain(proc)
    assert "| device cpu | dtype bfloat16 |" in proc.stdout
    rows = metrics(tmp_path)
    losses = [m[k] for m in rows for k in ("train_loss", "val_loss")]
    assert all(math.isfinite(x) for x in losses)
    assert [m["iter"] for m in rows] == [0, 10, 20, 30, 40]
    vals = [m["val_loss"] for m in rows]
    assert vals[0] == pytest.approx(math.log(256), abs=0.3)
    assert vals[-1] < vals[0] - 1.0 and vals[-1] < min(vals[:2])
    assert results(tmp_path)["status"] == "completed"


def test_eval_and_checkpoint_time_is_not_in_tokens_per_sec(shards: Path, tmp_path: Path) -> None:
    # an eval (20 batches of val) and a checkpoint after every step: most of the run is not training
    proc = run_train(tiny_args(shards, tmp_path, "max_iters=10", "eval_interval=1", "eval_iters=20",
                               "log_interval=5", "checkpoint_interval=1"))
    assert proc.returncode == 0, explain(proc)
    res = results(tmp_path)
    train_s = 9 * 16 * 64 / res["tokens_per_sec"]  # the timed steps: all but the first (warm-up)
    assert train_s < 0.5 * res["elapsed_s"], res
    for tok_s, _ in LOG_LINE.findall(proc.stdout):  # the log windows leave out evals and checkpoints too
        assert 5 * 16 * 64 / int(tok_s) < 0.5 * res["elapsed_s"], proc.stdout


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
    assert [m["iter"] for m in metrics(tmp_path)] == sorted({*range(0, n + 4, 5), n + 3})


def test_sigusr2_to_the_workers_checkpoints_and_training_goes_on(shards: Path, tmp_path: Path) -> None:
    # as the Slurm executor's supervisor forwards --signal=B:USR2@N: to torchrun's workers, not torchrun
    args = tiny_args(shards, tmp_path, "batch_size=8", "max_iters=100000", "eval_interval=1000", "eval_iters=1",
                     "log_interval=10", "checkpoint_interval=1000")
    proc = start_train(args, torchrun_nproc=2, new_session=True)
    deadline = time.time() + 90  # the eval at iter 0 wrote metrics: both ranks are in the loop, handlers set
    while not (tmp_path / "metrics.jsonl").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    workers = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    assert len(workers) == 2 and not (tmp_path / "ckpt.pt").exists()
    for pid in workers:
        os.kill(pid, signal.SIGUSR2)
    deadline = time.time() + 60
    while not (tmp_path / "ckpt.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    time.sleep(1)
    assert proc.poll() is None  # training goes on
    os.killpg(proc.pid, signal.SIGTERM)
    done = finish(proc)
    assert len(re.findall(r"^SIGUSR2: checkpoint saved at iter \d+$", done.stdout, re.MULTILINE)) == 1, explain(done)
    assert results(tmp_path)["status"] == "interrupted"


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
    assert "| world_size 2 | backend gloo |" in proc.stdout  # backend=auto on CPU
    res = results(tmp_path)
    assert res["status"] == "completed" and res["world_size"] == 2 and res["tokens"] == 40 * 16 * 64
    # 2 ranks x 8 rows that are different slices of the stream == 1 process x 16 rows
    assert_same_losses(metrics(tmp_path), metrics(baseline[0]), tol=1e-4)


def test_sigterm_to_a_torchrun_process_group_checkpoints_and_resumes(shards: Path, tmp_path: Path) -> None:
    # as the supervisor stops a task: SIGTERM to the whole group (torchrun and both ranks)
    args = tiny_args(shards, tmp_path, "batch_size=8", "max_iters=100000", "eval_interval=5", "eval_iters=1",
                     "log_interval=1", "checkpoint_interval=5")
    proc = start_train(args, torchrun_nproc=2, new_session=True)
    deadline = time.time() + 60
    while not (tmp_path / "ckpt.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert (tmp_path / "ckpt.pt").exists() and proc.poll() is None
    os.killpg(proc.pid, signal.SIGTERM)
    done = finish(proc)
    assert done.returncode != 0, explain(done)  # torchrun's own verdict; results.json is the run's
    stopped = re.findall(r"^interrupted: checkpoint saved at iter (\d+)$", done.stdout, re.MULTILINE)
    assert len(stopped) == 1, explain(done)  # rank 0 alone saves and says so
    n = int(stopped[0])
    res = results(tmp_path)
    assert res["status"] == "interrupted" and res["iters"] == n >= 5 and res["world_size"] == 2
    assert {p.name for p in tmp_path.iterdir()} == OUT_FILES
    again = run_train([*args, "resume=1", f"max_iters={n + 2}"], torchrun_nproc=2, timeout=120)
    assert again.returncode == 0, explain(again)
    assert f"resume: continuing from {tmp_path / 'ckpt.pt'} at iter {n} " in again.stdout
    res = results(tmp_path)
    assert res["status"] == "completed" and res["iters"] == n + 2 and res["tokens"] == (n + 2) * 16 * 64


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

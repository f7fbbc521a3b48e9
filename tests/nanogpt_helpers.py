"""Shared helpers for the tests of examples/nanogpt (imported by tests/test_nanogpt_*.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
NANOGPT = REPO / "examples" / "nanogpt"
TINY = "config/train_tiny_cpu.py"
OUT_FILES = {"config.json", "metrics.jsonl", "ckpt.pt", "results.json"}
# small offline shards: plenty for a few hundred tiny iterations, built in well under a second
TRAIN_TOKENS = 600_000
VAL_TOKENS = 65_536


def load_module(relpath: str) -> ModuleType:
    """Import a file of examples/nanogpt under a unique name (no clash with other tests' modules)."""
    path = NANOGPT / relpath
    name = "nanogpt_" + relpath.replace("/", "_").removesuffix(".py")
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def build_shards(base: Path) -> Path:
    """Offline byte-level shards in ``base/nanogpt_shards`` (idempotent: built once per session)."""
    out = base / "nanogpt_shards"
    load_module("data/build_offline_shards.py").build(out, TRAIN_TOKENS, VAL_TOKENS)
    return out


def env(**extra: str) -> dict[str, str]:
    result = {k: v for k, v in os.environ.items() if k not in ("DATA_DIR", "DOWNLOAD_FINEWEB")}
    # one thread per run: several runs share the 2 cores of a test machine, and equal thread counts
    # keep the runs that are compared with each other bit-for-bit comparable
    result.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **extra)
    return result


def tiny_args(data_dir: Path, out_dir: Path, *overrides: str) -> list[str]:
    return [TINY, f"data_dir={data_dir}", f"out_dir={out_dir}", *overrides]


def start_train(args: list[str], torchrun_nproc: int = 0, new_session: bool = False) -> subprocess.Popen[str]:
    """Start ``python train.py ARGS`` (or under torchrun) in examples/nanogpt; ``new_session``: in a
    process group of its own (its pid is the group id), to be signalled as a whole like the supervisor does."""
    cmd = [sys.executable, "train.py", *args]
    if torchrun_nproc:
        cmd[1:1] = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun_nproc}"]
    return subprocess.Popen(cmd, cwd=NANOGPT, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=new_session)


def finish(proc: subprocess.Popen[str], timeout: float = 90) -> subprocess.CompletedProcess[str]:
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_train(args: list[str], torchrun_nproc: int = 0,
              timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return finish(start_train(args, torchrun_nproc), timeout)


def run_many(arg_lists: list[list[str]]) -> list[subprocess.CompletedProcess[str]]:
    """Run several train.py processes at once (cheap failure cases: mostly torch import time)."""
    return [finish(p) for p in [start_train(a) for a in arg_lists]]


def metrics(out_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def results(out_dir: Path) -> dict[str, Any]:
    return json.loads((out_dir / "results.json").read_text())


def explain(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"

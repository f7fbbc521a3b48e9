"""Shared by the Slurm benches (bench/slurm_*.py): a one-node cluster on localhost (tests/slurm_cluster.py,
the tests' own fixture) and a checked-out local "login node" pod with SWEEP_EXECUTOR=slurm. Not a bench."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import benchpods
import slurm_cluster  # tests/slurm_cluster.py (benchpods puts tests/ on sys.path)
from conftest import wait_until


@contextmanager
def cluster(max_array: int) -> Iterator[Any]:
    missing = slurm_cluster.missing_tools()
    if missing:
        raise SystemExit(f"bench: Slurm is needed: missing {', '.join(missing)}")
    directory = Path(f"/tmp/wfsb-{uuid.uuid4().hex[:8]}")  # short: the munge socket path has a length limit
    started = slurm_cluster.start_cluster(directory, max_array)
    try:
        yield started
    finally:
        started.stop()
        shutil.rmtree(directory, ignore_errors=True)


def login_pod(base: Path, on: Any, checkout: bool = True) -> Any:
    pod = benchpods.make_pod("local", base, None, benchpods.source_repo(base) if checkout else None)
    pod.extra_env.update(on.env)
    pod.set(TRAIN_WORKDIR="tests/sweep_fixture", RUN_STALL_SECS="60", SWEEP_EXECUTOR="slurm", RUN_RETRIES="0")
    if checkout:
        benchpods.must(pod.wf("bootstrap", timeout=900))
        benchpods.must(pod.wf("checkout", timeout=900))
    return pod


def drained(on: Any, name: str, timeout: float = 1800) -> None:
    wait_until(lambda: not on.run("squeue", "-h", f"--name={name}", check=False).stdout.strip(), timeout=timeout,
               interval=0.5, what=f"jobs {name} to leave squeue")


def start_json(pod: Any, *argv: str) -> dict[str, Any]:
    return dict(json.loads(benchpods.must(pod.wf(*argv, "--json", timeout=900)).stdout))


def wf_argv(pod: Any, *args: str) -> list[str]:
    return [str(benchpods.WORKFLOW), "--env", str(pod.env_file), *args]


def wf_env(pod: Any) -> dict[str, str]:
    return {**benchpods.bench_env(), **pod.extra_env}

"""Shared by the benchmarks: a throwaway sshd on loopback and "pods" (config files + dirs), built with
the same helpers the tests use (tests/conftest.py), and a timer. Not a benchmark itself."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))
sys.path.insert(0, str(REPO_ROOT))

import conftest  # noqa: E402  (tests/conftest.py: start_sshd, make_pod, Pod)

WORKFLOW = REPO_ROOT / "infra_scripts" / "workflow.sh"


def venv() -> str:
    return os.environ.get("WORKFLOW_VENV") or sys.prefix


def bench_env() -> dict[str, str]:
    """The environment workflow.sh runs with: a real user's (bytecode caching on)."""
    env = {**os.environ, "WORKFLOW_VENV": venv()}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


@contextmanager
def workspace(name: str) -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix=f"wf-bench-{name}-"))
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def sshd(base: Path) -> Iterator[conftest.SSHServer]:
    server = conftest.start_sshd(base / "sshd", conftest.free_port())
    try:
        yield server
    finally:
        children = Path(f"/proc/{server.pid}/task/{server.pid}/children")
        for pid in (children.read_text().split() if children.exists() else []):
            conftest.with_signal(int(pid), 9)  # its connections: a shared one (ControlMaster) ends with them
        conftest.with_signal(server.pid, 15)


def make_pod(kind: str, base: Path, server: conftest.SSHServer | None, source: Path | None = None) -> conftest.Pod:
    pod = conftest.make_pod(kind, base, source, server)
    pod.extra_env.update(bench_env())
    return pod


def source_repo(base: Path) -> Path:
    """A git repo with this checkout's examples/ and the sweep test trainer (as REPO_URL)."""
    repo = base / "source"
    repo.mkdir()
    shutil.copytree(REPO_ROOT / "tests" / "sweep_fixture", repo / "tests" / "sweep_fixture",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO_ROOT / "examples", repo / "examples", ignore=shutil.ignore_patterns("__pycache__", "out",
                                                                                               "*.bin", "*.pt"))
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "bench"]):
        conftest.git(repo, *args)
    return repo


def timed(argv: list[str], env: dict[str, str] | None = None, check: bool = True) -> float:
    start = time.perf_counter()
    result = subprocess.run(argv, env=env or bench_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if check and result.returncode != 0:
        raise SystemExit(f"bench: {' '.join(argv[:6])}... failed ({result.returncode}): {result.stderr.strip()}")
    return elapsed


def describe(values: list[float]) -> str:
    return (f"median {statistics.median(values) * 1000:7.1f} ms  (min {min(values) * 1000:.1f}, "
            f"max {max(values) * 1000:.1f}, n={len(values)})")


def must(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    if result.returncode != 0:
        raise SystemExit(f"bench: step failed ({result.returncode}): {result.stderr.strip()[-500:]}")
    return result


def record(bench: str, name: str, ratio: float, target: float | None = None) -> None:
    """Append one ratio to $BENCH_SUMMARY (JSON lines) for `make bench`'s closing table (bench/summary.py)."""
    path = os.environ.get("BENCH_SUMMARY")
    if not path:
        return
    import json

    with open(path, "a") as handle:
        handle.write(json.dumps({"bench": bench, "name": name, "ratio": round(ratio, 3), "target": target}) + "\n")

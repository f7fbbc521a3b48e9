"""The bad-CSV corpus (tests/data/csv_bad/) end to end: `sweep-start --csv` and `validate --csv` on a
checked-out pod exit 2 with one stderr line naming the file, the row and the column (as EXPECTED.json
says) and the pod is left exactly as it was. The corpus was written against tests/data/csv_workdir/
(it holds config/train_tiny_cpu.py), so TRAIN_WORKDIR points there; a bad CSV never reaches the pod.

Every file runs on one shared `local` pod; a handful also run over the loopback sshd.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO_ROOT, WORKFLOW, Pod, SSHServer, cleanup_pod, make_pod, one_line_error

CORPUS = REPO_ROOT / "tests" / "data" / "csv_bad"
EXPECTED: dict[str, dict[str, Any]] = json.loads((CORPUS / "EXPECTED.json").read_text())
FILES = sorted(p.name for p in CORPUS.glob("*.csv"))
OVER_SSH = ["config_missing.csv", "run_id_slash.csv", "not_utf8.csv", "unclosed_quote.csv", "header_only.csv"]
COMMANDS = ("sweep-start", "validate")


def checked_out_pod(kind: str, base: Path, source: Path, server: SSHServer | None) -> Pod:
    pod = make_pod(kind, base, source, server)
    pod.set(TRAIN_WORKDIR="tests/data/csv_workdir", SWEEP_CPU_SLOTS="2")
    for command in ("bootstrap", "checkout"):
        result = pod.wf(command, timeout=600)
        assert result.returncode == 0, f"{command}: {result.stderr}"
    return pod


@pytest.fixture(scope="module")
def csv_pod(tmp_path_factory: pytest.TempPathFactory, source_repo: Path) -> Iterator[Pod]:
    pod = checked_out_pod("local", tmp_path_factory.mktemp("csvpod"), source_repo, None)
    yield pod
    cleanup_pod(pod)


@pytest.fixture(scope="module")
def csv_ssh_pod(tmp_path_factory: pytest.TempPathFactory, source_repo: Path, sshd: SSHServer) -> Iterator[Pod]:
    pod = checked_out_pod("ssh", tmp_path_factory.mktemp("csvsshpod"), source_repo, sshd)
    yield pod
    cleanup_pod(pod)


def check_refused(pod: Pod, command: str, name: str) -> None:
    expected = EXPECTED[name]
    before = pod.snapshot()
    result = pod.wf(command, "--csv", str(CORPUS / name))
    assert result.returncode == 2, (result.returncode, result.stderr)
    line = one_line_error(result)
    assert line.startswith(f"workflow.sh {command}: "), line
    assert name in line, line
    if expected["row"] is not None:
        assert re.search(rf"\brow {expected['row']}\b", line), line
    if expected["column"] is not None:
        assert f"column {expected['column']}" in line, line
    assert expected["contains"] in line, line
    assert result.stdout == ""
    assert pod.snapshot() == before
    assert not (pod.outputs / "_campaigns").exists() and not (pod.outputs / "_manifests").exists()


def test_corpus_and_expectations_agree():
    assert FILES and sorted(EXPECTED) == FILES
    assert set(OVER_SSH) <= set(FILES)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("name", FILES)
def test_bad_csv_is_refused_locally(csv_pod: Pod, name: str, command: str):
    check_refused(csv_pod, command, name)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("name", OVER_SSH)
def test_bad_csv_is_refused_over_ssh(csv_ssh_pod: Pod, name: str, command: str):
    check_refused(csv_ssh_pod, command, name)


def test_the_pod_was_ready_for_a_good_csv(csv_pod: Pod, tmp_path: Path):
    """The refusals above come from the CSV, not from a pod that could not start anything: the same pod
    plans a good CSV with the corpus's config (dry run: nothing changes)."""
    good = tmp_path / "good.csv"
    good.write_text("run_id,config,seed,overrides,notes\nok1,config/train_tiny_cpu.py,1,learning_rate=3e-4,fine\n")
    before = csv_pod.snapshot()
    for args in (("validate", "--csv", str(good)), ("sweep-start", "--dry-run", "--csv", str(good))):
        result = csv_pod.wf(*args)
        assert result.returncode == 0, result.stderr
    assert "sweep CSV OK" in csv_pod.wf("validate", "--csv", str(good)).stdout
    assert csv_pod.snapshot() == before


def _wf_in(pod: Pod, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WORKFLOW_VENV": sys.prefix}
    env.pop("WORKFLOW_PROFILE", None)
    return subprocess.run([str(WORKFLOW), "--env", str(pod.env_file), *args], cwd=cwd, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=180)


def test_relative_csv_path_means_the_same_file_to_both_commands(csv_pod: Pod):
    messages = {}
    for command in COMMANDS:
        result = _wf_in(csv_pod, CORPUS, command, "--csv", "seed_float.csv")
        assert result.returncode == 2, result.stderr
        messages[command] = one_line_error(result).split(": ", 1)[1]
    assert messages["validate"] == messages["sweep-start"]
    assert EXPECTED["seed_float.csv"]["contains"] in messages["validate"]

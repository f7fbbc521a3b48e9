"""workflow.sh plot: loss curves of several runs in the terminal, from fetched files or from the pod
(local target and over the loopback sshd), with a legend; no escape codes off a terminal."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import Pod, one_line_error
from test_dashboard import ESCAPE, Terminal

from helpers.errors import ExitCode


def write_metrics(directory: Path, losses: list[float]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"iter": 10 * i, "train_loss": loss + 0.2, "val_loss": loss}) for i, loss in enumerate(losses)]
    (directory / "metrics.jsonl").write_text("\n".join(lines) + "\n{\"iter\": 99, \"val_lo")  # a half-written line


def test_two_fetched_runs_overlaid_with_a_legend(local_pod: Pod):
    artifacts = local_pod.root.parent / "artifacts"
    write_metrics(artifacts / "run-a", [5.0, 4.0, 3.2, 2.9, 2.7])
    write_metrics(artifacts / "run-b", [5.5, 3.5, 2.5, 2.1, 2.0])
    result = local_pod.wf("plot", "run-a", "run-b", "--width", "80", "--height", "20")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "run-a" in out and "run-b" in out and "val_loss by step" in out  # the legend, the title
    assert not ESCAPE.search(out)  # a pipe: plain text
    assert "5 point(s) from" in out and str(artifacts / "run-a" / "metrics.jsonl") in out
    chart = out.split("  run-a:")[0].splitlines()
    assert max(len(line) for line in chart) <= 80
    assert "*" in out and "o" in out  # one marker per run without colour
    train = local_pod.wf("plot", "run-a", "--metric", "train_loss", "--json")
    assert json.loads(train.stdout)["series"]["run-a"][0] == [0.0, pytest.approx(5.2)]


@pytest.mark.parametrize("pod", ["local", "ssh"], indirect=True)
def test_runs_on_the_pod_are_read_there(pod: Pod):
    write_metrics(pod.outputs / "pod-a", [4.0, 3.0, 2.0])
    write_metrics(pod.outputs / "pod-b", [4.5, 2.5, 1.5])
    result = pod.wf("plot", "pod-a", "pod-b", "--width", "70", "--height", "16")
    assert result.returncode == 0, result.stderr
    assert "pod-a" in result.stdout and "pod-b" in result.stdout and "3 point(s) from pod" in result.stdout
    missing = pod.wf("plot", "pod-a", "no-such-run")
    assert missing.returncode == ExitCode.NOT_FOUND, missing.stderr
    assert "no-such-run" in one_line_error(missing)
    bad = pod.wf("plot", "pod-a", "--metric", "nope")
    assert bad.returncode == ExitCode.NOT_FOUND and "--metric" in one_line_error(bad)


def test_colour_on_a_terminal(local_pod: Pod):
    write_metrics(local_pod.root.parent / "artifacts" / "run-c", [3.0, 2.0, 1.0])
    term = Terminal(local_pod, ["plot", "run-c"], 100, 30)
    try:
        assert term.wait(60) == 0, term.text
    finally:
        term.kill()
    assert re.search(r"\x1b\[[0-9;]*m", term.text) and "run-c" in term.text

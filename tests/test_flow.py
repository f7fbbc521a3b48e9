"""flow end to end: the phases run by one command on the local target and on a Lium pod (the real
Lium SDK against tests/fake_lium_api.py, whose pods' SSH endpoint is the loopback sshd); its
dry-run plan, bad phase values, the up-front refusal of --teardown delete, stopping and continuing."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Pod, SSHServer, one_line_error
from fake_lium_api import FakeLiumAPI
from lium_pod import SETTINGS, fake_lium_pod, write_csv

API_KEY = "lium-flow-key-8d1e4c2a9b"


def flow_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith("flow: ")]


def phase_line(result: subprocess.CompletedProcess[str], phase: str, word: str) -> str:
    hits = [line for line in flow_lines(result) if f"] {phase}: {word}" in line]
    assert hits, f"no '{phase}: {word}' line in {flow_lines(result)}"
    return hits[-1]


@pytest.fixture
def flow_pod(local_pod: Pod, tmp_path: Path) -> Pod:
    csv = write_csv(tmp_path / "flow.csv", "fl-a,config/ok.py,1,,,1", "fl-b,config/ok.py,2,,,1")
    local_pod.set(**SETTINGS, SWEEP_CSV=str(csv), POD_PRICE_PER_HOUR="36")
    return local_pod


def test_dry_run_prints_every_phase_and_changes_nothing(flow_pod: Pod) -> None:
    before = flow_pod.snapshot()
    result = flow_pod.wf("flow", "--dry-run", "--report")
    assert result.returncode == 0, result.stderr
    lines = flow_lines(result)
    for number, phase in enumerate(("provision", "bootstrap", "checkout", "sweep", "wait", "fetch", "report",
                                    "teardown"), 1):
        assert any(f"[{number}/8] {phase}:" in line for line in lines), lines
    assert "would run" in phase_line(result, "bootstrap", "would run")
    assert "sweep-start" in phase_line(result, "sweep", "would run")
    assert any("price: $36.00/h (POD_PRICE_PER_HOUR)" in line for line in lines), lines
    assert any(line.startswith("flow: cost estimate for 2 row(s)") for line in lines), lines
    managed = flow_pod.wf("flow", "--dry-run", "--manage")  # sweep-watch --manage when it has it, else a plain wait
    assert managed.returncode == 0, managed.stderr
    wait = phase_line(managed, "wait", "would run")
    assert ("sweep-watch --manage" in wait) != ("waits normally" in wait), wait
    assert flow_pod.snapshot() == before
    assert not (flow_pod.env_file.parent / ".workflow" / "flow-state.json").exists()


@pytest.mark.parametrize("args,fragment", [
    (("--teardown", "destroy"), "--teardown 'destroy' is not a phase value; use one of keep, stop, delete"),
    (("--sweep", "again"), "--sweep 'again' is not a phase value; use one of start, resume, skip"),
    (("--provision", "maybe"), "--provision 'maybe' is not a phase value"),
    (("--fetch", "some"), "--fetch 'some' is not a phase value; use one of none, all"),
])
def test_bad_phase_value_is_one_line_and_changes_nothing(flow_pod: Pod, args: tuple[str, ...], fragment: str
                                                         ) -> None:
    before = flow_pod.snapshot()
    for dry in ((), ("--dry-run",)):
        result = flow_pod.wf("flow", *args, *dry)
        assert result.returncode == 2
        assert fragment in one_line_error(result)
        assert not flow_lines(result)
    assert flow_pod.snapshot() == before


def test_teardown_delete_refused_up_front_on_a_pod_the_tool_did_not_rent(flow_pod: Pod) -> None:
    before = flow_pod.snapshot()
    for how in (("flow", "--teardown", "delete"), ("--set", "TEARDOWN_ON_FINISH=delete", "flow"),
                ("flow", "--teardown", "delete", "--dry-run")):
        result = flow_pod.wf(*how)
        assert result.returncode == 7
        line = one_line_error(result)
        assert "--teardown delete refused" in line and "not a Lium pod this tool rented" in line
        assert not flow_lines(result)
    assert flow_pod.snapshot() == before


def test_flow_local_end_to_end_then_stopped_and_continued(flow_pod: Pod, tmp_path: Path) -> None:
    # stopped: the sweep phase fails (its CSV is missing) after bootstrap and checkout ran
    missing = tmp_path / "later.csv"
    first = flow_pod.wf("--set", f"SWEEP_CSV={missing}", "flow", timeout=900)
    assert first.returncode == 2, first.stdout + first.stderr
    assert "ok in" in phase_line(first, "bootstrap", "ok")
    assert "ok in" in phase_line(first, "checkout", "ok")
    assert "FAILED (exit 2)" in phase_line(first, "sweep", "FAILED")
    stop = [line for line in flow_lines(first) if "stopped at sweep" in line]
    assert stop and "continue with: infra_scripts/workflow.sh" in stop[0] and " flow " in stop[0]
    assert not any("] wait:" in line for line in flow_lines(first))  # nothing after the failed phase
    # continued: bootstrap and checkout are not redone; the sweep runs, is waited on, fetched
    write_csv(missing, "fl-a,config/ok.py,1,,,1", "fl-b,config/ok.py,2,,,1")
    second = flow_pod.wf("--set", f"SWEEP_CSV={missing}", "flow", timeout=900)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "workflow state CHECKED_OUT" in phase_line(second, "bootstrap", "done already")
    assert "workflow state CHECKED_OUT" in phase_line(second, "checkout", "done already")
    sweep = phase_line(second, "sweep", "ok")
    assert "2 row(s)" in sweep
    assert "every row ok" in phase_line(second, "wait", "ok")
    assert "cost: spent $" in phase_line(second, "wait", "ok")
    assert "2 run(s)" in phase_line(second, "fetch", "ok") and "verified" in phase_line(second, "fetch", "ok")
    assert "pod is kept" in phase_line(second, "teardown", "skipped")
    artifacts = flow_pod.env_file.parent / "artifacts"
    for run_id in ("fl-a", "fl-b"):
        summary = json.loads((artifacts / run_id / "summary.json").read_text())
        assert summary["ok"] is True
        assert summary["cost"]["usd"] > 0 and summary["cost"]["price_per_hour"] == 36.0
    # a third run continues again: the campaign it started is not started over
    third = flow_pod.wf("--set", f"SWEEP_CSV={missing}", "flow", timeout=600)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "flow started campaign" in phase_line(third, "sweep", "done already")
    assert len(list((flow_pod.outputs / "_campaigns").iterdir())) == 1


# ----------------------------------------------------------------------------- Lium


@pytest.fixture
def lium_pod(tmp_path: Path, sshd: SSHServer, source_repo: Path) -> Iterator[tuple[FakeLiumAPI, Pod]]:
    with fake_lium_pod(tmp_path, sshd, source_repo, api_key=API_KEY, pod_name="wf-flow-pod",
                       rows=("lf-a,config/ok.py,1,,,1",)) as made:
        yield made


def test_flow_on_lium_rents_then_keeps_then_deletes_exactly_that_pod(lium_pod: tuple[FakeLiumAPI, Pod]) -> None:
    api, pod = lium_pod
    other = api.add_pod("someone-else", host="127.0.0.1", port=1)
    kept = pod.wf("flow", "--yes", timeout=900)  # --teardown keep (the default)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    rents = api.calls("POST", r"/executors/.*/rent")
    assert len(rents) == 1 and rents[0].body["pod_name"] == "wf-flow-pod"
    assert "bills until deleted" in phase_line(kept, "provision", "ok")
    assert "bills until pod-delete" in phase_line(kept, "teardown", "skipped")
    assert not api.calls("DELETE", ".*")
    uuid = next(p for p in api.pod_ids() if p != other["id"])
    record = json.loads((pod.env_file.parent / ".workflow" / "rented-pods.json").read_text())
    assert list(record["pods"]) == [uuid]
    # delete: the same flow again continues (no second rent, nothing redone) and deletes exactly that pod
    gone = pod.wf("flow", "--teardown", "delete", timeout=900)
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert len(api.calls("POST", r"/executors/.*/rent")) == 1
    assert f"flow rented pod {uuid} earlier" in phase_line(gone, "provision", "done already")
    assert "flow started campaign" in phase_line(gone, "sweep", "done already")
    assert "verified" in phase_line(gone, "fetch", "ok")
    assert f"pod {uuid} deleted" in phase_line(gone, "teardown", "ok")
    lines = flow_lines(gone)
    fetch_at = next(i for i, line in enumerate(lines) if "] fetch: ok" in line)
    delete_at = next(i for i, line in enumerate(lines) if "] teardown: start" in line)
    assert fetch_at < delete_at  # deleted only after the verified fetch
    assert [d.path for d in api.calls("DELETE", ".*")] == [f"/pods/{uuid}"]
    assert api.pod_ids() == [other["id"]]
    summary = json.loads((pod.env_file.parent / "artifacts" / "lf-a" / "summary.json").read_text())
    assert summary["cost"]["price_per_hour"] == 3.0  # the Lium API's price of the pod
    for result in (kept, gone):
        assert API_KEY not in result.stdout + result.stderr


def test_flow_refuses_to_delete_a_lium_pod_it_did_not_rent(lium_pod: tuple[FakeLiumAPI, Pod],
                                                          sshd: SSHServer) -> None:
    api, pod = lium_pod
    theirs = api.add_pod("theirs", host="127.0.0.1", port=sshd.port)
    pod.set(LIUM_TARGET="theirs")
    for dry in ((), ("--dry-run",)):
        result = pod.wf("flow", "--teardown", "delete", "--yes", *dry, timeout=300)
        assert result.returncode == 7, result.stdout + result.stderr
        line = one_line_error(result)
        assert f"Lium pod {theirs['id']} was not rented by this tool" in line
    assert not api.calls("DELETE", ".*") and not api.calls("POST", r"/executors/.*/rent")
    assert not (pod.outputs / "_control" / "workflow_state.json").exists()

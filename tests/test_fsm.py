"""The workflow state machine: table, enforcement, next-step hints, the state file under contention."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from helpers.errors import ExitCode, WorkflowError
from helpers.pod import fsm


def test_missing_file_is_init_and_nothing_is_written(tmp_path):
    path = tmp_path / "s.json"
    record = fsm.read_state(str(path))
    assert record.state == "INIT" and not record.exists and not path.exists()


def test_typical_path_and_history(tmp_path):
    path = str(tmp_path / "s.json")
    for command, expected in [("bootstrap", "BOOTSTRAPPED"), ("checkout", "CHECKED_OUT"),
                              ("sweep-start", "SWEEP_RUNNING"), ("sweep-complete", "SWEEP_COMPLETED"),
                              ("checkout", "CHECKED_OUT")]:
        assert fsm.transition(path, command, f"{command} ok", enforce=True).state == expected
    data = json.loads(Path(path).read_text())
    assert data["schema_version"] == 1 and data["previous_state"] == "SWEEP_COMPLETED"
    assert [h["to"] for h in data["history"]] == ["BOOTSTRAPPED", "CHECKED_OUT", "SWEEP_RUNNING",
                                                  "SWEEP_COMPLETED", "CHECKED_OUT"]
    assert data["updated_utc"].endswith("Z") and data["created_utc"] <= data["updated_utc"]


def test_illegal_command_names_state_allowed_and_next(tmp_path):
    path = str(tmp_path / "s.json")
    with pytest.raises(WorkflowError) as info:
        fsm.transition(path, "checkout", "", enforce=True)
    message = info.value.message
    assert info.value.code == ExitCode.ILLEGAL_STATE
    assert "checkout is not allowed in state INIT" in message
    assert "allowed in: BOOTSTRAPPED, CHECKED_OUT" in message
    assert "next run: workflow.sh bootstrap" in message
    assert not Path(path).exists()


def test_next_step_hints():
    assert fsm.next_step(fsm.State.INIT, "sweep-start") == "bootstrap"
    assert fsm.next_step(fsm.State.BOOTSTRAPPED, "sweep-start") == "checkout"
    assert fsm.next_step(fsm.State.SWEEP_RUNNING, "checkout").startswith("sweep-status")


def test_enforcement_off_moves_to_the_natural_target(tmp_path):
    path = str(tmp_path / "s.json")
    assert fsm.transition(path, "checkout", "", enforce=False).state == "CHECKED_OUT"


def test_corrupt_file_is_an_error_and_reset_keeps_it(tmp_path):
    path = tmp_path / "s.json"
    path.write_text("{not json")
    with pytest.raises(WorkflowError) as info:
        fsm.read_state(str(path))
    assert info.value.code == ExitCode.STATE_UNREADABLE
    record = fsm.reset(str(path), "BOOTSTRAPPED", "recovered")
    assert record.state == "BOOTSTRAPPED"
    kept = list(tmp_path.glob("s.json.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_text() == "{not json"


def test_unknown_state_in_file_is_an_error(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"state": "DANCING"}))
    with pytest.raises(WorkflowError) as info:
        fsm.read_state(str(path))
    assert info.value.code == ExitCode.STATE_UNREADABLE and "fsm-reset" in info.value.message


def _worker(args: tuple[str, int]) -> str:
    path, index = args
    return fsm.reset(path, ["BOOTSTRAPPED", "CHECKED_OUT"][index % 2], f"worker {index}").state


def test_twenty_processes_transition_at_once(tmp_path):
    path = str(tmp_path / "s.json")
    with multiprocessing.get_context("fork").Pool(20) as pool:
        results = pool.map(_worker, [(path, i) for i in range(20)])
    assert len(results) == 20
    data = json.loads(Path(path).read_text())  # valid JSON: never half-written
    reasons = sorted(h["reason"] for h in data["history"])
    assert reasons == sorted(f"worker {i}" for i in range(20))
    for before, after in zip(data["history"], data["history"][1:]):
        assert after["from"] == before["to"]  # each transition saw the previous one
    assert not list(tmp_path.glob(".s.json.*.tmp"))


def _stop_then_start(args: tuple[str, int]) -> int:
    """sweep-stop is legal only in SWEEP_RUNNING: retry it until this worker's turn, then sweep-start."""
    import time

    path, index = args
    tries = 0
    while True:
        tries += 1
        try:
            fsm.transition(path, "sweep-stop", f"stop {index}", enforce=True)
            break
        except WorkflowError as exc:
            assert exc.code == ExitCode.ILLEGAL_STATE and tries < 20_000
            time.sleep(0.001)
    fsm.transition(path, "sweep-start", f"start {index}", enforce=True)
    return tries


def test_twenty_processes_checked_transitions_under_contention(tmp_path):
    """The table is checked under the lock: two stops can never both see SWEEP_RUNNING."""
    path = str(tmp_path / "s.json")
    fsm.reset(path, "SWEEP_RUNNING", "start")
    with multiprocessing.get_context("fork").Pool(20) as pool:
        pool.map(_stop_then_start, [(path, i) for i in range(20)])
    data = json.loads(Path(path).read_text())
    moves = data["history"][1:]
    assert len(moves) == 40
    for before, after in zip(data["history"], moves):
        assert after["from"] == before["to"]
    stops = [h for h in moves if h["reason"].startswith("stop")]
    assert len(stops) == 20 and all(h["from"] == "SWEEP_RUNNING" and h["to"] == "SWEEP_STOPPED" for h in stops)
    assert sorted(h["reason"] for h in stops) == sorted(f"stop {i}" for i in range(20))
    assert data["state"] == "SWEEP_RUNNING"

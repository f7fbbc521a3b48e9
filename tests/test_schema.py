"""helpers/pod/schema.py: every kind of pod state file checked when read (unit level, no pod)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from helpers.pod import fsm, jsonio, schema
from helpers.pod.errors import DiskFullError, ExitCode, WorkflowError

GOOD: dict[str, Any] = {
    "workflow state file": {"schema_version": 1, "state": "CHECKED_OUT", "previous_state": "BOOTSTRAPPED",
                            "history": [{"utc": "t", "command": "checkout", "from": "BOOTSTRAPPED",
                                         "to": "CHECKED_OUT", "reason": "ok", "pid": 1}]},
    "task status file": {"schema_version": 1, "id": "t", "state": "running", "pid": 5, "exit_code": None,
                         "timeouts": {"timeout_secs": 10, "stall_secs": None}, "cleanup": None},
    "task spec": {"id": "t", "argv": ["bash", "c.sh"], "marker": "m", "timeout_secs": 5},
    "run summary": {"schema_version": 1, "run_id": "r", "ok": True, "state": "success", "attempts": 1},
    "campaign manifest": {"schema_version": 1, "campaign_id": "c", "rows": [{"run_id": "r"}], "config": {}},
    "campaign index": {"r": {"ok": True, "state": "success", "attempts": 1}},
    "executor status": {"state": "running", "generation": 2, "pid": 7},
    "run ownership file": {"schema_version": 1, "campaign_id": "c", "spec_hash": "h", "history": []},
    "stop request": {"generation": 1, "utc": "t"},
}
BAD = [
    ("task spec", None, "null"), ("task spec", {"id": "t"}, "'argv' is missing"),
    ("task spec", {"id": "t", "argv": [1]}, "argv item 1 is a number"), ("task spec", {"id": "t", "argv": []}, "empty"),
    ("run ownership file", [], "a list"), ("run ownership file", {"campaign_id": 3}, "'campaign_id' is a number"),
    ("stop request", {"generation": "1"}, "'generation' is a string"),
    ("executor status", {"state": "running", "generation": True}, "'generation' is a boolean"),
    ("task status file", {"state": "running", "exit_code": True}, "'exit_code' is a boolean"),
    ("campaign manifest", {"campaign_id": "c", "rows": [{"run_id": None}], "config": {}}, "'run_id' is null"),
]


@pytest.mark.parametrize("what", sorted(GOOD))
def test_a_good_record_of_each_kind_passes(what: str, tmp_path: Path):
    path = tmp_path / "f.json"
    path.write_text(json.dumps(GOOD[what]))
    assert jsonio.read_json(str(path), what) == GOOD[what]


@pytest.mark.parametrize("what", sorted(GOOD))
def test_null_is_never_an_empty_record(what: str, tmp_path: Path):
    path = tmp_path / "f.json"
    path.write_text("null")
    with pytest.raises(WorkflowError) as info:
        jsonio.read_json(str(path), what)
    assert info.value.code == ExitCode.STATE_UNREADABLE
    assert f"{what} {path} is corrupt: it is null, not a JSON object" in info.value.message
    assert "\n" not in info.value.message


@pytest.mark.parametrize(("what", "data", "says"), BAD, ids=[f"{w}-{s}" for w, _, s in BAD])
def test_bad_records(what: str, data: Any, says: str):
    with pytest.raises(WorkflowError) as info:
        schema.check(what, "/x/f.json", data)
    assert info.value.code == ExitCode.STATE_UNREADABLE and says in info.value.message


def test_files_without_a_schema_are_only_parsed(tmp_path: Path):
    path = tmp_path / "results.json"
    path.write_text("[1, 2]")
    assert jsonio.read_json(str(path), "trainer results") == [1, 2]


def test_transition_on_a_corrupt_state_file_refuses_and_keeps_it(tmp_path: Path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"state": "BOOTSTRAPPED", "history": [3]}))
    with pytest.raises(WorkflowError) as info:
        fsm.transition(str(path), "checkout", "", enforce=True)
    assert info.value.code == ExitCode.STATE_UNREADABLE and "history entry 1 is a number" in info.value.message
    assert json.loads(path.read_text())["history"] == [3]  # never overwritten


def test_disk_full_error_is_one_line_and_an_oserror(tmp_path: Path):
    error = jsonio.disk_full_error(str(tmp_path / "status.json"), OSError(28, "No space left on device"))
    assert isinstance(error, DiskFullError) and isinstance(error, OSError) and error.errno == 28
    assert error.code == ExitCode.STATE_UNREADABLE and "\n" not in error.message
    assert error.message.startswith(f"the filesystem {error.mount} on the pod is full (No space left on device;")

"""Schemas of the JSON files the tool keeps on the pod, checked every time one is read.

``check(what, path, data)`` validates a parsed file by its kind (the ``what`` label its reader
passes to ``jsonio.read_json``: "workflow state file", "task status file", ...). A file that does
not match (``null``, a list, a wrong type, an unknown state, a history entry that is not a record,
a missing field) raises exit 6 with one line naming the file and what is wrong; nothing reads it
as a fresh or empty record. Kinds without a schema (a trainer's own files, caches) are only parsed.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from .errors import ExitCode, WorkflowError

NoneType = type(None)
_STR = (str,)
_OPT_STR = (str, NoneType)
_OPT_INT = (int, NoneType)
_OPT_DICT = (dict, NoneType)
_OPT_LIST = (list, NoneType)

# what to do next, per kind (after "<what> <path> is corrupt: <problem>; ")
HINTS = {
    "workflow state file": "inspect it, then run: workflow.sh fsm-reset STATE --reason '...' (the bad file is "
                           "kept as .corrupt-<time>)",
    "task status file": "inspect it; workflow.sh task-run --id ID --force replaces the task (the old directory is "
                        "kept)",
    "task spec": "inspect it; workflow.sh task-run --id ID --force replaces the task (the old directory is kept)",
}
DEFAULT_HINT = "it was not written by this workflow.sh or was damaged; inspect it (workflow.sh never repairs it " \
               "silently)"


class Bad(Exception):
    """What is wrong with a record (internal to this module)."""


def _type_name(value: Any) -> str:
    return "null" if value is None else {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
                                         int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _expect(value: Any, types: Tuple[type, ...], where: str) -> None:
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        names = " or ".join(sorted({"null" if t is NoneType else _type_name(t()) for t in types}))
        raise Bad(f"{where} is {_type_name(value)}, expected {names}")


def _fields(data: Dict[str, Any], required: Dict[str, Tuple[type, ...]], optional: Dict[str, Tuple[type, ...]],
            prefix: str = "") -> None:
    for key, types in required.items():
        if key not in data:
            raise Bad(f"{prefix}{key!r} is missing")
        _expect(data[key], types, f"{prefix}{key!r}")
    for key, types in optional.items():
        if key in data:
            _expect(data[key], types, f"{prefix}{key!r}")


def _one_of(value: Any, allowed: Sequence[Optional[str]], where: str) -> None:
    if value not in allowed:
        shown = repr(value)[:40]
        raise Bad(f"{where} {shown} is not one of {', '.join(str(a) for a in allowed if a is not None)}")


def _object(data: Any) -> Dict[str, Any]:
    if not isinstance(data, dict):
        raise Bad(f"it is {_type_name(data)}, not a JSON object")
    return data


def _version(data: Dict[str, Any], newest: int) -> None:
    _fields(data, {}, {"schema_version": (int,)})
    if int(data.get("schema_version", newest)) > newest:
        raise Bad(f"schema_version {data['schema_version']}, newer than this tool's {newest}: update workflow.sh")


def workflow_state(data: Any) -> None:
    from .fsm import SCHEMA_VERSION, State

    record = _object(data)
    states = [s.value for s in State]
    _fields(record, {"state": _STR}, {"previous_state": _OPT_STR, "reason": _OPT_STR, "created_utc": _OPT_STR,
                                      "updated_utc": _OPT_STR, "last_command": _OPT_STR, "history": (list,)})
    _one_of(record["state"], states, "state")
    if record.get("previous_state") is not None:
        _one_of(record["previous_state"], states, "previous_state")
    for number, entry in enumerate(record.get("history", []), 1):
        if not isinstance(entry, dict):
            raise Bad(f"history entry {number} is {_type_name(entry)}, not a record")
        _fields(entry, {"utc": _STR, "command": _STR, "from": _STR, "to": _STR}, {"reason": _OPT_STR},
                f"history entry {number}: ")
    _version(record, SCHEMA_VERSION)


def task_status(data: Any) -> None:
    from .taskstate import SCHEMA_VERSION, TaskState

    record = _object(data)
    _fields(record, {"state": _STR}, {
        "id": _STR, "command": _STR, "created_utc": _OPT_STR, "started_utc": _OPT_STR, "ended_utc": _OPT_STR,
        "heartbeat_utc": _OPT_STR, "heartbeat_mono": (int, float, NoneType), "last_output_utc": _OPT_STR,
        "pid": _OPT_INT, "supervisor_pid": _OPT_INT,
        "exit_code": _OPT_INT, "signal": _OPT_INT, "failure_class": _OPT_STR, "reason": _OPT_STR,
        "fatal": _OPT_DICT, "timeouts": _OPT_DICT, "tmux": _OPT_DICT, "boot_id": _OPT_STR, "workdir": _OPT_STR,
        "pid_start_time": (int, float, str, NoneType), "supervisor_start_time": (int, float, str, NoneType)})
    _one_of(record["state"], [s.value for s in TaskState], "state")
    _one_of(record.get("cleanup"), [None, "stopping", "done"], "cleanup")
    for key, value in (record.get("timeouts") or {}).items():
        _expect(value, (int, float, NoneType), f"timeouts.{key}")
    _version(record, SCHEMA_VERSION)


def task_spec(data: Any) -> None:
    record = _object(data)
    _fields(record, {"id": _STR, "argv": (list,)}, {
        "workdir": _OPT_STR, "marker": _STR, "log": _STR, "timeout_secs": (int, float, NoneType),
        "stall_secs": (int, float, NoneType), "kill_grace_secs": (int, float, NoneType),
        "lost_after_secs": (int, float, NoneType), "tmux": _OPT_DICT, "env_file": _STR})
    for number, item in enumerate(record["argv"], 1):
        _expect(item, _STR, f"argv item {number}")
    if not record["argv"]:
        raise Bad("'argv' is empty")


def run_summary(data: Any) -> None:
    record = _object(data)
    _fields(record, {}, {
        "run_id": _STR, "ok": (bool,), "state": _STR, "campaign_id": _OPT_STR, "failure_class": _OPT_STR,
        "attempts": (int,), "attempt_history": _OPT_LIST,
        "final_metrics": _OPT_DICT, "best_metrics": _OPT_DICT, "spec_hash": _OPT_STR})
    for number, entry in enumerate(record.get("attempt_history") or [], 1):
        _expect(entry, (dict,), f"attempt_history entry {number}")
    _version(record, 1)


def campaign_manifest(data: Any) -> None:
    record = _object(data)
    _fields(record, {"campaign_id": _STR, "rows": (list,), "config": (dict,)}, {"created_utc": _OPT_STR})
    for number, row in enumerate(record["rows"], 1):
        _expect(row, (dict,), f"rows entry {number}")
        _fields(row, {"run_id": _STR}, {}, f"rows entry {number}: ")
    _version(record, 1)


def campaign_index(data: Any) -> None:
    for run_id, entry in _object(data).items():
        _expect(entry, (dict,), f"entry {run_id!r}")
        _fields(entry, {}, {"ok": (bool, NoneType), "state": _OPT_STR, "attempts": _OPT_INT}, f"entry {run_id!r}: ")


def executor_status(data: Any) -> None:
    record = _object(data)
    _fields(record, {"state": _STR}, {"generation": (int,), "pid": _OPT_INT, "heartbeat_utc": _OPT_STR,
                                      "created_utc": _OPT_STR, "boot_id": _OPT_STR})


def run_ownership(data: Any) -> None:
    record = _object(data)
    _fields(record, {"campaign_id": _STR}, {"spec_hash": _OPT_STR, "history": (list,)})


def stop_request(data: Any) -> None:
    _fields(_object(data), {"generation": (int,)}, {"utc": _OPT_STR})


VALIDATORS: Dict[str, Callable[[Any], None]] = {
    "workflow state file": workflow_state,
    "task status file": task_status,
    "task spec": task_spec,
    "run summary": run_summary,
    "campaign manifest": campaign_manifest,
    "campaign index": campaign_index,
    "executor status": executor_status,
    "run ownership file": run_ownership,
    "stop request": stop_request,
}


def corrupt(what: str, path: str, problem: str) -> WorkflowError:
    return WorkflowError(f"{what} {path} is corrupt: {problem}; {HINTS.get(what, DEFAULT_HINT)}",
                         ExitCode.STATE_UNREADABLE)


def check(what: str, path: str, data: Any) -> Any:
    """``data`` if it matches the schema of ``what`` (kinds without one pass); exit 6 otherwise."""
    validator: Optional[Callable[[Any], None]] = VALIDATORS.get(what)
    if validator is None:
        return data
    try:
        validator(data)
    except Bad as exc:
        raise corrupt(what, path, str(exc)) from None
    return data

"""Task states (one transition table, a terminal set) and the status.json record of a task or run."""

from __future__ import annotations

import enum
import os
from typing import Any, Dict, FrozenSet, Optional

from .errors import ExitCode
from .jsonio import locked, read_json, utc_now, write_json

SCHEMA_VERSION = 1
STATUS_FILE = "status.json"


class TaskState(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    STALLED = "stalled"
    CANCELLED = "cancelled"
    LOST = "lost"
    GATED = "gated"  # a row whose evaluation gate was not met (stages.py): finished, not failed


T = TaskState
TERMINAL: FrozenSet[TaskState] = frozenset({T.SUCCESS, T.FAILED, T.TIMED_OUT, T.STALLED, T.CANCELLED, T.LOST,
                                            T.GATED})
TRANSITIONS: Dict[TaskState, FrozenSet[TaskState]] = {
    T.PENDING: frozenset({T.RUNNING, T.FAILED, T.CANCELLED, T.LOST}),
    T.RUNNING: frozenset({T.SUCCESS, T.FAILED, T.TIMED_OUT, T.STALLED, T.CANCELLED, T.LOST, T.GATED}),
    **{state: frozenset() for state in TERMINAL},
}
# failure_class of the states that are failures by themselves
STATE_CLASS = {T.TIMED_OUT: "timeout", T.STALLED: "stalled", T.LOST: "lost", T.CANCELLED: "killed"}
# task-wait exit codes (README: exit codes)
WAIT_EXIT = {T.SUCCESS: ExitCode.OK, T.TIMED_OUT: ExitCode.TIMED_OUT, T.STALLED: ExitCode.STALLED,
             T.LOST: ExitCode.LOST, T.CANCELLED: ExitCode.CANCELLED}


def can_move(current: str, new: str) -> bool:
    return TaskState(new) in TRANSITIONS[TaskState(current)]


def is_terminal(state: str) -> bool:
    return TaskState(state) in TERMINAL


def wait_exit_code(record: Dict[str, Any]) -> int:
    """task-wait's exit code for a terminal record: 0 success; a failed task's own exit code (1 when
    stopped on a fatal line, 128+N when killed by signal N); 124 timed_out, 125 stalled, 126 lost,
    130 cancelled. A task's own code can equal a reserved one (a command may exit 124 itself):
    ``task-wait --json`` reports ``state`` next to ``exit_code`` and ``wait_exit_code``, which
    tells them apart."""
    state = TaskState(record["state"])
    if state == T.FAILED:
        code = record.get("exit_code")
        stopped_on_fatal = bool((record.get("fatal") or {}).get("pattern"))
        if isinstance(code, int) and 0 < code < 256 and not (stopped_on_fatal and code in (137, 143)):
            return code  # the task's own exit code
        if record.get("signal") and not stopped_on_fatal:
            return 128 + int(record["signal"])
        return ExitCode.FAILED
    return int(WAIT_EXIT.get(state, ExitCode.FAILED))


def status_path(task_dir: str) -> str:
    return os.path.join(task_dir, STATUS_FILE)


def read_status(task_dir: str) -> Optional[Dict[str, Any]]:
    """The task's status record (None if there is none); exit 6 if it does not match schema.task_status."""
    data: Optional[Dict[str, Any]] = read_json(status_path(task_dir), "task status file")
    return data


def new_record(task_id: str, command: str, spec: Dict[str, Any]) -> Dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION, "id": task_id, "state": T.PENDING.value, "command": command,
        "created_utc": utc_now(), "started_utc": None, "ended_utc": None, "heartbeat_utc": None,
        "pid": None, "pid_start_time": None, "supervisor_pid": None, "supervisor_start_time": None,
        "boot_id": None, "exit_code": None, "signal": None, "failure_class": None, "reason": None,
        "fatal": None, "cleanup": None, "last_output_utc": None,
        "timeouts": {"timeout_secs": spec.get("timeout_secs"), "stall_secs": spec.get("stall_secs"),
                     "kill_grace_secs": spec.get("kill_grace_secs"), "lost_after_secs": spec.get("lost_after_secs")},
        "workdir": spec.get("workdir"), "tmux": spec.get("tmux"),
    }


def update_status(task_dir: str, durable: bool = True, **changes: Any) -> Dict[str, Any]:
    """Read-modify-write status.json under its lock. A move to a new state must be legal; a
    record that is already terminal keeps its state (later changes only add details)."""
    path = status_path(task_dir)
    with locked(path):
        record = read_status(task_dir) or {}
        new_state = changes.get("state")
        if new_state is not None and new_state != record.get("state") and not can_move(record["state"], new_state):
            changes = {k: v for k, v in changes.items()
                       if k not in ("state", "failure_class", "reason", "fatal", "ended_utc")}
        record.update(changes)
        write_json(path, record, durable=durable)
        return record

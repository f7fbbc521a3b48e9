"""The workflow state machine kept on the pod: states, the one transition table, the state file.

Typical path: INIT -> POD_READY -> BOOTSTRAPPED -> CHECKED_OUT -> SWEEP_RUNNING -> SWEEP_COMPLETED.
The state file (``_control/workflow_state.json`` or WF_STATE_FILE) holds state, previous state,
reason, a bounded history and UTC timestamps; it is written atomically under a lock. A missing
file is a fresh pod (INIT, nothing written); a corrupt one is an error (exit 6). Read-only
commands never write it.
"""

from __future__ import annotations

import enum
import os
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Tuple

from .errors import ExitCode, WorkflowError
from .jsonio import keep_corrupt, locked, read_json, utc_now, write_json

SCHEMA_VERSION = 1
HISTORY_LIMIT = 500


class State(str, enum.Enum):
    INIT = "INIT"
    POD_READY = "POD_READY"
    BOOTSTRAPPED = "BOOTSTRAPPED"
    CHECKED_OUT = "CHECKED_OUT"
    SWEEP_RUNNING = "SWEEP_RUNNING"
    SWEEP_COMPLETED = "SWEEP_COMPLETED"
    SWEEP_FAILED = "SWEEP_FAILED"
    SWEEP_STOPPED = "SWEEP_STOPPED"


S = State
_READY_FOR_SWEEP = (S.CHECKED_OUT, S.SWEEP_COMPLETED, S.SWEEP_FAILED, S.SWEEP_STOPPED)
_SWEEP_DONE = (S.SWEEP_COMPLETED, S.SWEEP_FAILED, S.SWEEP_STOPPED)

# command -> {from state: to state}. The first entry of each row is its natural target, used
# when WF_FSM_ENFORCE=0 lets a command run from a state the table does not list.
TRANSITIONS: Dict[str, Dict[State, State]] = {
    "bootstrap": {S.INIT: S.BOOTSTRAPPED, S.POD_READY: S.BOOTSTRAPPED, S.BOOTSTRAPPED: S.BOOTSTRAPPED,
                  **{s: s for s in (S.CHECKED_OUT, *_SWEEP_DONE)}},
    "pod-up": {S.INIT: S.POD_READY, S.POD_READY: S.POD_READY},
    "checkout": {S.BOOTSTRAPPED: S.CHECKED_OUT, **{s: S.CHECKED_OUT for s in _READY_FOR_SWEEP}},
    # from SWEEP_RUNNING only when its executor is gone (the op checks liveness and refuses otherwise)
    "sweep-start": {s: S.SWEEP_RUNNING for s in (*_READY_FOR_SWEEP, S.SWEEP_RUNNING)},
    "sweep-resume": {s: S.SWEEP_RUNNING for s in (*_READY_FOR_SWEEP, S.SWEEP_RUNNING)},
    "sweep-stop": {S.SWEEP_RUNNING: S.SWEEP_STOPPED},
    # written by the sweep executor on the pod when the last row ends
    "sweep-complete": {S.SWEEP_RUNNING: S.SWEEP_COMPLETED},
    "sweep-fail": {S.SWEEP_RUNNING: S.SWEEP_FAILED},
}
# commands a user types, in the order next-step hints prefer them
USER_COMMANDS: Tuple[str, ...] = ("bootstrap", "checkout", "sweep-start", "sweep-stop", "sweep-resume", "pod-up")
STATUS_HINT = {S.SWEEP_RUNNING: "sweep-status (or sweep-stop to stop it)"}


def allowed_states(command: str) -> List[State]:
    return list(TRANSITIONS[command])


def next_step(current: State, command: str) -> str:
    """The user command that leads from ``current`` towards a state where ``command`` is allowed."""
    if current in STATUS_HINT:
        return STATUS_HINT[current]
    goal = set(TRANSITIONS[command])
    frontier: Deque[Tuple[State, Optional[str]]] = deque([(current, None)])
    seen = {current}
    while frontier:
        state, first = frontier.popleft()
        for cmd in USER_COMMANDS:
            target = TRANSITIONS[cmd].get(state)
            if target is None or target in seen:
                continue
            step = first or cmd
            if target in goal:
                return step
            seen.add(target)
            frontier.append((target, step))
    return "fsm-reset STATE --reason '...'"


class StateRecord:
    """The state file's record (a plain class: no dataclasses/inspect on the read-only path)."""

    FIELDS = ("state", "previous_state", "reason", "created_utc", "updated_utc", "last_command", "history",
              "schema_version")

    def __init__(self, state: str = State.INIT.value, previous_state: Optional[str] = None,
                 reason: str = "fresh pod (no state file yet)", created_utc: Optional[str] = None,
                 updated_utc: Optional[str] = None, last_command: Optional[str] = None,
                 history: Optional[List[Dict[str, Any]]] = None, schema_version: int = SCHEMA_VERSION,
                 exists: bool = False) -> None:
        self.state = state
        self.previous_state = previous_state
        self.reason = reason
        self.created_utc = created_utc
        self.updated_utc = updated_utc
        self.last_command = last_command
        self.history: List[Dict[str, Any]] = [] if history is None else history
        self.schema_version = schema_version
        self.exists = exists  # not stored: whether the file was there

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StateRecord) and (self.to_json(), self.exists) == (other.to_json(), other.exists)

    def __repr__(self) -> str:
        return f"StateRecord({self.to_json()!r}, exists={self.exists})"

    def to_json(self) -> Dict[str, Any]:
        data = {name: getattr(self, name) for name in self.FIELDS}
        data["history"] = [dict(h) for h in self.history]
        return data


def read_state(path: str) -> StateRecord:
    """The state file's record (a fresh INIT record if there is none); exit 6 if it does not match its schema."""
    data = read_json(path, "workflow state file")  # checked against schema.workflow_state
    if data is None:
        return StateRecord()
    return StateRecord(
        state=State(data["state"]).value, previous_state=data.get("previous_state"),
        reason=str(data.get("reason") or ""), created_utc=data.get("created_utc"),
        updated_utc=data.get("updated_utc"), last_command=data.get("last_command"),
        history=list(data.get("history", [])), schema_version=int(data.get("schema_version", SCHEMA_VERSION)),
        exists=True)


def check_allowed(record: StateRecord, command: str, enforce: bool) -> State:
    """The state ``command`` leads to from ``record``; exit 4 if the table forbids it."""
    current = State(record.state)
    table = TRANSITIONS[command]
    if current in table:
        return table[current]
    if not enforce:
        return next(iter(table.values()))
    allowed = ", ".join(s.value for s in table)
    raise WorkflowError(
        f"{command} is not allowed in state {current.value} (allowed in: {allowed}); next run: "
        f"workflow.sh {next_step(current, command)}  (WF_FSM_ENFORCE=0 skips this check)",
        ExitCode.ILLEGAL_STATE)


def _write(path: str, record: StateRecord, to: State, command: str, reason: str) -> StateRecord:
    now = utc_now()
    record.history.append({"utc": now, "command": command, "from": record.state, "to": to.value,
                           "reason": reason, "pid": os.getpid()})
    del record.history[:-HISTORY_LIMIT]
    record.previous_state = record.state
    record.state = to.value
    record.reason = reason
    record.last_command = command
    record.updated_utc = now
    record.created_utc = record.created_utc or now
    write_json(path, record.to_json())
    record.exists = True
    return record


def transition(path: str, command: str, reason: str, enforce: bool) -> StateRecord:
    """Apply ``command``'s transition atomically under the state file's lock."""
    with locked(path):
        record = read_state(path)
        target = check_allowed(record, command, enforce)
        return _write(path, record, target, command, reason)


def reset(path: str, state: str, reason: str) -> StateRecord:
    """Set any state explicitly. A corrupt file is kept aside (renamed), never lost."""
    try:
        target = State(state)
    except ValueError:
        raise WorkflowError(f"fsm-reset: unknown state {state!r}; use one of: "
                            f"{', '.join(s.value for s in State)}", ExitCode.USAGE) from None
    with locked(path):
        try:
            record = read_state(path)
        except WorkflowError as exc:
            if exc.code != ExitCode.STATE_UNREADABLE:
                raise
            kept = keep_corrupt(path)
            record = StateRecord(reason=f"previous file kept as {kept}")
        return _write(path, record, target, "fsm-reset", reason or "manual reset")

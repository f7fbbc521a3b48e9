"""What the sweep executor (executor.py) keeps about itself and its rows: RowRun (one row's progress
through attempts in an executor pass), its log lines (executor.log and the tmux pane), events.jsonl,
the executor.json heartbeat, the campaign index, and the stop request that sweep-stop and a managed
recovery's fence write (read before every launch). Each write survives a full filesystem: an event
is kept and written with the next one, a running beat waits for the next, an ending one is retried.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Dict, List, Optional, TextIO

from .jsonio import append_jsonl, is_disk_full, read_json, utc_now, write_json

STOP_REQUEST = "stop-request.json"
FINAL_RETRY_SECS = 600.0  # how long the executor's last write is retried on a full filesystem


class RowRun:
    """One row's progress through attempts in this executor pass."""

    def __init__(self, row: Dict[str, Any]) -> None:
        self.row = row
        self.attempts: List[Dict[str, Any]] = []
        self.extra: List[str] = []  # overrides replacing the row's own on retries
        self.oom_retries = 0
        self.transient_retries = 0
        self.not_before = 0.0
        self.slots: List[str] = []
        self.out_dir = ""
        self.command = ""
        self.retry_note = ""
        self.number = 0  # the current attempt's number over the run directory's life (attempts/<n>/)
        self.logged_attempt = 0  # the attempt whose attempts.jsonl line is written
        self.stage: Optional[Dict[str, Any]] = None  # the evaluation stage running now (stages.py)
        self.stage_records: List[Dict[str, Any]] = []  # this row's ended stages

    @property
    def run_id(self) -> str:
        return str(self.row["run_id"])



class ExecutorRecords:
    """The executor's writes about itself (the Executor's base)."""

    dir: str
    index: Dict[str, Any]
    log_handle: TextIO
    pending_events: List[Dict[str, Any]]
    pending_beat: Dict[str, Any]
    full_said: float

    def say(self, text: str) -> None:
        line = f"[{utc_now()[11:19]}] {text}"
        try:
            self.log_handle.write(line + "\n")
            self.log_handle.flush()
        except OSError as exc:  # a full filesystem: the pane (and sweep-status) still tell
            if not is_disk_full(exc):
                raise
        try:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except (OSError, ValueError):
            pass

    def event(self, kind: str, **fields: Any) -> None:
        """One line of events.jsonl; on a full filesystem kept and written with the next one."""
        self.pending_events.append({"utc": utc_now(), "event": kind, **fields})
        path = os.path.join(self.dir, "events.jsonl")
        try:
            while self.pending_events:
                append_jsonl(path, self.pending_events[0])
                self.pending_events.pop(0)
        except OSError as exc:
            if not is_disk_full(exc):  # (a DiskFullError, or a raw ENOSPC from a plain write)
                raise
            self._disk_full(exc)

    def beat(self, state: str = "running", **extra: Any) -> None:
        """executor.json; a running beat that cannot be written (full filesystem) waits for the next one,
        an ending one is retried."""
        path = os.path.join(self.dir, "executor.json")
        self.pending_beat.update(state=state, **extra)
        deadline = time.monotonic() + (0 if state == "running" else FINAL_RETRY_SECS)
        while True:
            record = read_json(path, "executor status") or {}
            record.update(heartbeat_utc=utc_now(), **self.pending_beat)
            try:
                write_json(path, record, durable=state != "running")
                self.pending_beat = {}
                return
            except OSError as exc:
                if not is_disk_full(exc):  # (a DiskFullError, or a raw ENOSPC from a plain write)
                    raise
                self._disk_full(exc)
                if time.monotonic() >= deadline:
                    return
                time.sleep(1.0)

    def _disk_full(self, exc: OSError) -> None:
        """Say once per spell that the filesystem is full; the executor keeps going and retries."""
        now = time.monotonic()
        if now - self.full_said > 60:
            self.full_said = now
            self.say(f"{exc}; waiting for space (rows are concluded and started once it is freed)")

    def _write_index(self, durable: bool = False) -> None:
        try:
            write_json(os.path.join(self.dir, "index.json"), self.index, durable=durable)
        except OSError as exc:  # the index is rebuilt from memory at the next write
            if not is_disk_full(exc):  # (a DiskFullError, or a raw ENOSPC from a plain write)
                raise
            self._disk_full(exc)


def request_stop(campaign_path: str, generation: int) -> None:
    """Ask the executor of ``generation`` (and any earlier one) to stop; read by the executor before it
    starts and before each launch, so one that is still starting never runs a row."""
    write_json(os.path.join(campaign_path, STOP_REQUEST), {"generation": generation, "utc": utc_now()})


def stop_requested(campaign_path: str, generation: int) -> bool:
    record = read_json(os.path.join(campaign_path, STOP_REQUEST), "stop request") or {}
    return isinstance(record, dict) and int(record.get("generation") or 0) >= generation

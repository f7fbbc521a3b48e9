"""A supervisor's writes (status.json, the log) that survive a full filesystem.

The supervisor keeps a small reserve file in the task directory. When a verdict (a state change)
cannot be written because the filesystem is full, the reserve is given up and the write tried again
(a heartbeat never spends it); a write that still fails is kept and merged into the next one (at the
next heartbeat), so the last verdict lands as soon as there is room. Log output that cannot be
written is counted, not fatal: the supervisor keeps supervising, and a task that fails on a full
filesystem is classed disk_full.
"""

from __future__ import annotations

import os
from typing import Any, BinaryIO, Dict, Optional

from .errors import DiskFullError
from .jsonio import is_disk_full, mount_point
from .taskstate import update_status

RESERVE_FILE = ".wf-reserve.tmp"  # a dot name ending in .tmp: never fetched
RESERVE_BYTES = 256 * 1024
FULL_BELOW_BYTES = 1024 * 1024  # a filesystem with less free than this is full (for the verdict)


def free_bytes(path: str) -> Optional[int]:
    try:
        stat = os.statvfs(path)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


class StatusWriter:
    def __init__(self, task_dir: str) -> None:
        self.task_dir = task_dir
        self.reserve = os.path.join(task_dir, RESERVE_FILE)
        self.pending: Dict[str, Any] = {}
        self.full: Optional[str] = None  # the mount point of the filesystem that was found full
        self.dropped = 0  # bytes of output the log could not take

    def make_reserve(self) -> None:
        try:
            with open(self.reserve, "wb") as handle:
                handle.write(b"\0" * RESERVE_BYTES)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError:
            self.release()

    def release(self) -> None:
        try:
            os.unlink(self.reserve)
        except OSError:
            pass

    def update(self, durable: bool = True, **changes: Any) -> Dict[str, Any]:
        """update_status with the writes still pending; {} if the filesystem is (still) full."""
        merged = {**self.pending, **changes}
        for attempt in range(2):
            try:
                record = update_status(self.task_dir, durable=durable, **merged)
            except DiskFullError as exc:
                self.full = exc.mount
                if attempt == 0 and "state" in merged and os.path.exists(self.reserve):
                    self.release()  # give up the reserve so a verdict lands (a heartbeat never spends it)
                    continue
                self.pending = merged
                return {}
            self.pending = {}
            return record
        return {}

    def retry(self) -> bool:
        """Write what is pending; True when nothing is left."""
        if self.pending:
            self.update()
        return not self.pending

    def write_log(self, log: BinaryIO, data: bytes) -> None:
        try:
            log.write(data)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            self.full = mount_point(self.task_dir)
            self.dropped += len(data)

    def is_full_now(self) -> bool:
        free = free_bytes(self.task_dir)
        return free is not None and free < FULL_BELOW_BYTES

    def verdict_note(self) -> Optional[str]:
        """Why the filesystem matters to this task's verdict (None: it was not full)."""
        if self.full is None and not self.is_full_now():
            return None
        where = self.full or mount_point(self.task_dir)
        lost = f"; {self.dropped} bytes of output could not be logged" if self.dropped else ""
        return f"the filesystem {where} is full{lost}"

"""Finding and stopping every process of a task, including ones that left its session.

torchrun's workers (and daemons in general) can start their own session, so killing a process
group or the top pid orphans them. The supervisor therefore (1) becomes a child subreaper, so
orphaned descendants are re-parented to it and stay in its tree, and (2) marks the task's
environment with a unique WF_TASK_MARKER, so leftovers can be found even after the supervisor
itself is gone (a lost task). Linux /proc only; stdlib only.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from typing import Callable, Dict, Iterable, List, Optional, Set

MARKER_ENV = "WF_TASK_MARKER"
PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    import ctypes  # the supervisor only: not on task-status's path

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _stat_fields(pid: int) -> Optional[List[str]]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read().decode("utf-8", "replace")
    except OSError:
        return None
    close = raw.rfind(")")
    return raw[close + 2:].split() if close > 0 else None  # fields from state (3rd) on


def start_time(pid: int) -> Optional[int]:
    """Process start time in clock ticks since boot (identifies a pid across reuse)."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def is_alive(pid: Optional[int], started: Optional[int] = None) -> bool:
    if not pid:
        return False
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return started is None or (len(fields) > 19 and int(fields[19]) == started)


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _all_pids() -> List[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def descendants(root: int) -> Set[int]:
    """Every live process below ``root`` (by parent links)."""
    children: Dict[int, List[int]] = {}
    for pid in _all_pids():
        fields = _stat_fields(pid)
        if fields is None or fields[0] in ("Z", "X"):
            continue
        children.setdefault(int(fields[1]), []).append(pid)
    found: Set[int] = set()
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def children(parent: int) -> Set[int]:
    """The live direct children of ``parent``."""
    found: Set[int] = set()
    for pid in _all_pids():
        fields = _stat_fields(pid)
        if fields is not None and fields[0] not in ("Z", "X") and int(fields[1]) == parent:
            found.add(pid)
    return found


def catches(pid: int, signum: int) -> bool:
    """Whether ``pid`` has a handler installed for ``signum`` (SigCgt in /proc/<pid>/status)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def marked(marker: str) -> Set[int]:
    """Live processes whose environment carries ``WF_TASK_MARKER=marker``."""
    needle = f"{MARKER_ENV}={marker}".encode() + b"\0"
    me = os.getpid()
    found: Set[int] = set()
    for pid in _all_pids():
        if pid == me:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                env = handle.read() + b"\0"
        except OSError:
            continue
        if (b"\0" + needle) in (b"\0" + env):
            fields = _stat_fields(pid)
            if fields is not None and fields[0] not in ("Z", "X"):
                found.add(pid)
    return found


def signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError as exc:
            if exc.errno not in (errno.ESRCH, errno.EPERM):
                raise


def reap_children(keep: Optional[int] = None) -> None:
    """Collect exited children (a subreaper inherits orphans and must wait for them), except
    ``keep``, whose exit status its owner still has to read."""
    me = os.getpid()
    for pid in _all_pids():
        if pid == keep:
            continue
        fields = _stat_fields(pid)
        if fields is not None and fields[0] == "Z" and int(fields[1]) == me:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


def stop_tree(find: Callable[[], Set[int]], grace: float, pgid: Optional[int] = None,
              on_wait: Optional[Callable[[], None]] = None, keep: Optional[int] = None) -> int:
    """SIGTERM everything ``find()`` returns (and process group ``pgid``), wait up to ``grace``
    seconds, then SIGKILL whatever is left until nothing is. Returns how many needed SIGKILL."""
    targets = find()
    if pgid:
        try:
            os.killpg(pgid, signal.SIGTERM)
        except OSError:
            pass
    signal_all(targets, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if on_wait is not None:
            on_wait()
        reap_children(keep)
        if not find():
            return 0
        time.sleep(0.05)
    killed = 0
    for _ in range(100):
        left = find()
        if pgid:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass
        if not left:
            break
        killed += len(left)
        signal_all(left, signal.SIGKILL)
        if on_wait is not None:
            on_wait()
        time.sleep(0.05)
        reap_children(keep)
    return killed

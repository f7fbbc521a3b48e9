"""Why a task's process ended without a fatal match: exit classification and OOM-kill evidence.

``classify_exit`` gives the failure_class of a failed process from its exit code or signal and
``oom_verdict``'s answer. The OOM evidence is best effort and never raises: the ``oom_kill``
counter of this process's memory cgroup (``oom_kill_count``), the kernel log (/dev/kmsg read
without blocking, else ``dmesg``) for OOM-killed pids, and a wrapper's report that a worker died
of SIGKILL (``WORKER_SIGKILL_RE``, matched by the supervisor in the task's output).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from typing import Callable, Iterable

_CRASH_SIGNALS = frozenset(int(getattr(signal, n, -1)) for n in ("SIGSEGV", "SIGBUS", "SIGABRT", "SIGFPE",
                                                                  "SIGILL"))  # fmt: skip
_STOPPED_BY = {"timeout": "timeout", "stall": "stalled", "cancel": "killed"}


def classify_exit(
    exit_code: int | None, signal_number: int | None, oom_killed: bool, stopped_by: str | None
) -> str:
    """The failure_class of a process that ended WITHOUT a fatal match; the first row that applies:

        stopped_by "timeout" / "stall" / "cancel" (else ValueError)  -> timeout / stalled / killed
        exit code 0 and no signal                                    -> ValueError: not a failure
        neither exit code nor signal known                           -> lost
        oom_killed, and SIGKILL or a non-zero exit code              -> oom
        SIGSEGV, SIGBUS, SIGABRT, SIGFPE, SIGILL: a crash, not a kill -> nonzero_exit
        any other signal (SIGKILL, SIGTERM, SIGINT, SIGHUP, ...)     -> killed
        any other non-zero exit code                                 -> nonzero_exit

    Exit code -N (Python's ``returncode``) or 128+N in 129..192 (a shell's, e.g. 137) is signal N.
    ``oom_killed``: the kernel OOM-killed this task's process or a child of it during the run (a
    wrapper like torchrun then exits 1), as ``oom_verdict`` decides from the evidence. "lost"
    (the supervisor vanished) is otherwise decided by the caller."""
    if stopped_by is not None:
        if stopped_by not in _STOPPED_BY:
            raise ValueError(f"stopped_by must be one of {sorted(_STOPPED_BY)}, not {stopped_by!r}")
        return _STOPPED_BY[stopped_by]
    sig = exit_signal(exit_code, signal_number)
    if sig is None and exit_code is None:
        return "lost"
    if sig is None and exit_code == 0:
        raise ValueError("exit code 0 without a signal is not a failure")
    if oom_killed and (sig is None or sig == signal.SIGKILL):
        return "oom"
    if sig is None or sig in _CRASH_SIGNALS:
        return "nonzero_exit"
    return "killed"


def _read_counter(path: str, key: str) -> int | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return int(dict(line.split(None, 1) for line in f if len(line.split()) == 2)[key])
    except (OSError, ValueError, KeyError):
        return None


def oom_kill_count() -> int | None:
    """The ``oom_kill`` counter of this process's memory cgroup (v2 memory.events, or v1
    memory.oom_control, of its cgroup or nearest readable ancestor), or None if unavailable."""
    try:
        with open("/proc/self/cgroup", encoding="utf-8", errors="replace") as f:
            entries = [line.rstrip("\n").split(":", 2) for line in f]
        for entry in entries:
            if len(entry) != 3:
                continue
            if entry[0] == "0" and entry[1] == "":
                root, name = "/sys/fs/cgroup", "memory.events"
            elif "memory" in entry[1].split(","):
                root, name = "/sys/fs/cgroup/memory", "memory.oom_control"
            else:
                continue
            parts = [p for p in entry[2].split("/") if p and p != ".."]
            for depth in range(len(parts), -1, -1):
                value = _read_counter(os.path.join(root, *parts[:depth], name), "oom_kill")
                if value is not None:
                    return value
    except Exception:  # best effort: never raise
        return None
    return None


def _kernel_log() -> str | None:
    """What /dev/kmsg holds now (non-blocking reads), else ``dmesg`` output, else None."""
    records: list[bytes] = []
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
        try:
            for _ in range(100_000):
                try:
                    records.append(os.read(fd, 16384))
                except BrokenPipeError:  # records were overwritten while reading: go on
                    continue
                except BlockingIOError:  # nothing more for now
                    break
        finally:
            os.close(fd)
    except OSError:
        pass
    if records:
        return b"".join(records).decode("utf-8", "replace")
    try:
        done = subprocess.run(["dmesg"], capture_output=True, timeout=3, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.decode("utf-8", "replace") if done.returncode == 0 else None


_KILLED_RE = re.compile(r"Killed process (\d+)\b|oom-kill:.*?\bpid=(\d+)\b")
# a wrapper's report that a child died of SIGKILL: torchrun's ChildFailedError summary and its log line
WORKER_SIGKILL_RE = re.compile(r"\bexitcode\s*:\s*-9\b|\bSignal 9 \(SIGKILL\) received by PID\b")


def exit_signal(exit_code: int | None, signal_number: int | None) -> int | None:
    """The signal that ended a process: ``signal_number``, else exit code -N (Python's
    ``returncode``) or 128+N in 129..192 (a shell's: ``bash command.sh`` whose child was
    SIGKILLed exits 137), else None."""
    if signal_number is not None:
        return signal_number
    if exit_code is not None and exit_code < 0:
        return -exit_code
    if exit_code is not None and 128 < exit_code <= 192:
        return exit_code - 128
    return None


def kernel_oom_killed_pids() -> set[int] | None:
    """Every pid the kernel log shows OOM-killed ("Killed process PID", "oom-kill:... pid=PID"),
    read as ``kernel_oom_killed`` does; None if the log is not readable."""
    try:
        text = _kernel_log()
        if text is None:
            return None
        return {int(a or b) for a, b in _KILLED_RE.findall(text)}
    except Exception:  # best effort: never raise
        return None


def oom_verdict(exit_code: int | None, signal_number: int | None, counter_before: int | None,
                counter_after: int | None, task_pids: Iterable[int], worker_sigkill: bool = False,
                kernel_killed: Callable[[], set[int] | None] | None = None) -> bool:
    """Whether a task that failed without a fatal match was killed by the kernel's OOM killer.

    The ``oom_kill`` counter (``oom_kill_count``) belongs to a memory cgroup the task may share
    with other processes, so its rise alone proves nothing: it counts only with a SIGKILL of this
    task (exit_signal is SIGKILL, e.g. exit 137, or ``worker_sigkill``: the output reported a
    worker that died with -9). The kernel log is decisive when it shows one of ``task_pids``
    (the task's processes seen during the run) OOM-killed; it is read only when there is some
    evidence (a SIGKILL or a counter rise). ``kernel_killed`` defaults to kernel_oom_killed_pids."""
    sigkill = exit_signal(exit_code, signal_number) == signal.SIGKILL or worker_sigkill
    counter_rose = counter_before is not None and counter_after is not None and counter_after > counter_before
    if not (sigkill or counter_rose):
        return False
    killed = (kernel_killed or kernel_oom_killed_pids)()
    if killed and killed & set(task_pids):
        return True
    return counter_rose and sigkill


def kernel_oom_killed(pid: int) -> bool | None:
    """Whether the kernel log shows an OOM kill of ``pid`` ("Killed process PID" or "oom-kill:...
    pid=PID"), from /dev/kmsg read without blocking, else ``dmesg`` (3 s limit); None if neither
    is readable, as in most containers. The kernel logs host pids: in a pid namespace they differ."""
    try:
        text = _kernel_log()
        if text is None:
            return None
        return re.search(rf"Killed process {int(pid)}\b|oom-kill:.*\bpid={int(pid)}\b", text) is not None
    except Exception:  # best effort: never raise
        return None

"""The one error type of workflow.sh, and its documented exit codes.

Lives in the pod package (stdlib only) so that the pod agent and the local CLI raise and
report the same thing; ``helpers.errors`` re-exports it for the local side.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Exit codes of workflow.sh (README "Exit codes")."""

    OK = 0
    FAILED = 1  # a check, a task or a run failed
    USAGE = 2  # bad config, argument, CSV or id: nothing was changed
    TRANSPORT = 3  # cannot reach or authenticate to the pod, or its host key changed
    ILLEGAL_STATE = 4  # the workflow state machine forbids this command now
    NOT_FOUND = 5  # no such task, run, campaign or pod
    STATE_UNREADABLE = 6  # a state file on the pod is unreadable or corrupt
    REFUSED = 7  # refused to discard or replace something (running sweep, dirty tree, existing id)
    # task-wait only
    WAIT_TIMEOUT = 123  # task-wait's own --timeout-secs ran out; the task goes on
    TIMED_OUT = 124  # the task hit its wall-clock timeout
    STALLED = 125  # the task printed nothing for its stall window
    LOST = 126  # the task's supervisor vanished (tmux killed, pod rebooted)
    CANCELLED = 130  # task-kill / sweep-stop


class WorkflowError(Exception):
    """A failure with a one-line message that says what to do next, and an exit code."""

    def __init__(self, message: str, code: int = ExitCode.FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = int(code)

    def __str__(self) -> str:
        return self.message

    def to_json(self) -> dict[str, object]:
        return {"error": self.message, "code": self.code}


class DiskFullError(WorkflowError, OSError):
    """A state file could not be written because its filesystem is full (exit 6); the message names it.
    Also an OSError with its errno, so a caller that tolerates a failed write (a cache) still does."""

    def __init__(self, message: str, mount: str, errno_value: int, strerror: str) -> None:
        WorkflowError.__init__(self, message, ExitCode.STATE_UNREADABLE)
        self.mount = mount
        self.errno = errno_value
        self.strerror = strerror

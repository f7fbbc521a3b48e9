"""Local re-export of the one error type (defined in the pod package so both sides share it)."""

from helpers.pod.errors import ExitCode, WorkflowError

__all__ = ["ExitCode", "WorkflowError"]

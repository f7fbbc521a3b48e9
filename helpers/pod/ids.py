"""Identifiers that name directories on the pod: task ids, run ids, campaign ids."""

from __future__ import annotations

import re

from .errors import ExitCode, WorkflowError

ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_ID_RE = re.compile(rf"\A{ID_PATTERN}\Z")


def is_valid_id(value: str) -> bool:
    return bool(_ID_RE.match(value)) and ".." not in value


def check_id(value: str, what: str = "id") -> str:
    """Return ``value`` if it is a safe directory name, else raise a usage error."""
    if not is_valid_id(value):
        shown = value if len(value) <= 60 else value[:57] + "..."
        raise WorkflowError(
            f"invalid {what} {shown!r}: use 1-128 characters from A-Z a-z 0-9 . _ -, starting with a "
            "letter or digit, without '..'",
            ExitCode.USAGE,
        )
    return value

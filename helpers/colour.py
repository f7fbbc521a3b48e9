"""State colours for status tables and the live view: on a terminal only, never with NO_COLOR.

Plain ANSI codes (no rich import: sweep-status, task-list and pod-status stay fast). The same state
names map to the same colours in the live sweep-watch view (helpers/dashboard/live.py).
"""

from __future__ import annotations

import os
import sys
from typing import IO, Optional

from helpers.render import Paint

GOOD = ("ok", "success", "finished", "completed", "reachable", "SWEEP_COMPLETED")
BAD = ("failed", "timed_out", "stalled", "lost", "error", "unreachable", "missing")
LIVE = ("running", "starting", "stopping", "pending")
WAIT = ("retrying", "queued", "cancelled", "stopped")
STYLE = {**{s: "green" for s in GOOD}, **{s: "red" for s in BAD}, **{s: "cyan" for s in LIVE},
         **{s: "yellow" for s in WAIT}}
_ANSI = {"green": "32", "red": "31", "cyan": "36", "yellow": "33"}


def enabled(stream: Optional[IO[str]] = None) -> bool:
    """Colour on: the stream is a terminal, NO_COLOR is unset (any value turns colour off) and TERM is not dumb."""
    stream = stream or sys.stdout
    if "NO_COLOR" in os.environ or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def style_of(state: str) -> str:
    """The colour name of a state (its first word: ``ok (oom→retry)`` is ok), "" for none; the workflow
    states (SWEEP_FAILED, SWEEP_RUNNING, ...) by their last part."""
    words = str(state).split()
    if not words:
        return ""
    if words[0] in STYLE:
        return STYLE[words[0]]
    tail = words[0].rsplit("_", 1)[-1]
    return {"FAILED": "red", "MISSING": "red", "RUNNING": "cyan", "COMPLETED": "green", "READY": "green",
            "BOOTSTRAPPED": "green", "OUT": "green", "STOPPED": "yellow"}.get(tail, "")


def paint(text: str, state: str) -> str:
    code = _ANSI.get(style_of(state))
    return f"\x1b[{code}m{text}\x1b[0m" if code else text


def painter(column: int, on: bool) -> Optional[Paint]:
    """For render.table: colour the cell of ``column`` by its own state word; None when colour is off."""
    if not on:
        return None

    def _paint(index: int, padded: str, cell: str) -> str:
        return paint(padded, cell) if index == column else padded

    return _paint

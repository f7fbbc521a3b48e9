"""Which sweep-watch to run: the live view on a terminal, else the plain change lines (cmd_sweeps)."""

from __future__ import annotations

import sys

from helpers.session import Session


def interval_of(session: Session) -> float:
    """--interval, else WATCH_INTERVAL_SECS (default 2); never below half a second."""
    given = getattr(session.options, "interval", None)
    configured = session.cfg["WATCH_INTERVAL_SECS"]
    value = given if given is not None else (configured if isinstance(configured, (int, float)) else 2.0)
    return max(0.5, float(value))


def wants_live(session: Session) -> bool:
    """The live view: stdout is a terminal, and neither --plain nor --json was asked for."""
    if getattr(session.options, "plain", False) or session.as_json:
        return False
    try:
        if not sys.stdout.isatty():
            return False
    except (AttributeError, ValueError):
        return False
    try:
        import rich  # noqa: F401
    except ImportError:  # a WORKFLOW_VENV made before rich was a dependency
        session.note("sweep-watch: rich is not installed in this venv (pip install 'rich>=13'); plain output")
        return False
    return True


def run_live(session: Session, interval: float) -> int:
    from helpers.dashboard.live import run_live as live

    return live(session, interval)

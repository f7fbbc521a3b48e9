"""Client side of sweep parts: ``sweep-start --index-offset N --num-jobs M`` or SWEEP_START_AT / SWEEP_LIMIT
(pod side: pod/executors/slurm_parts.py).

The request names a range of the selected rows; every selected row goes to the pod (the campaign's
manifest holds the whole sweep) and the pod decides which campaign the part joins.
"""

from __future__ import annotations

from typing import Any, Sequence

from helpers.errors import ExitCode, WorkflowError
from helpers.session import Session


def part_request(session: Session, rows: Sequence[Any], key_offset: int | None = None,
                 key_count: int | None = None) -> dict[str, Any] | None:
    """{"offset", "count"} from --index-offset / --num-jobs, each else from SWEEP_START_AT's row / SWEEP_LIMIT
    (key_offset / key_count, already checked), checked against the sweep's rows; None: the whole sweep."""
    offset = getattr(session.options, "index_offset", None)
    count = getattr(session.options, "num_jobs", None)
    offset = key_offset if offset is None else offset
    count = key_count if count is None else count
    if offset is None and count is None:
        return None
    offset = offset or 0
    if offset >= len(rows):
        raise WorkflowError(f"--index-offset {offset} is past the sweep's last row (it has {len(rows)} row(s): "
                            f"offsets 0-{len(rows) - 1}); pick a smaller --index-offset", ExitCode.USAGE)
    if count is not None and count < 1:
        raise WorkflowError(f"--num-jobs {count} submits nothing; use a positive number of rows", ExitCode.USAGE)
    return {"offset": offset, "count": count}


def _rows(indices: Sequence[int]) -> str:
    return f"{indices[0] + 1}-{indices[-1] + 1}" if len(indices) > 1 else f"{indices[0] + 1}" if indices else "none"


def part_line(part: dict[str, Any] | None, verb: str = "submits") -> str:
    """One line: which part, which rows, which campaign."""
    if not part:
        return ""
    where = f"joins campaign {part['join']}" if part.get("join") else "starts a new campaign"
    already = f"; {len(part['already'])} row(s) of its range were submitted by an earlier part" if part.get(
        "already") else ""
    rest = part["total"] - part["offset"] - part["count"]
    named = f" (or SWEEP_START_AT={part['next_run_id']})" if part.get("next_run_id") else ""
    more = (f"; next part: sweep-start --index-offset {part['offset'] + part['count']}{named}" if rest > 0 else "")
    return (f"part {part['part']} {verb} rows {_rows(part['rows'])} of {part['total']} and {where}{already}{more}")


def status_lines(status: dict[str, Any]) -> list[str]:
    """sweep-status of a campaign in parts: its parts and the rows not submitted yet."""
    parts = status.get("parts")
    if not parts:
        return []
    shown = "; ".join(f"part {p['part']}: rows {p['rows']}" for p in parts["parts"])
    lines = [f"parts: {shown}"]
    if parts.get("unsubmitted"):
        lines.append(f"{parts['unsubmitted']} row(s) not submitted yet; submit them with: infra_scripts/workflow.sh "
                     f"sweep-start --index-offset {parts['next_offset']}" + (
                         f" (or SWEEP_START_AT={parts['next_run_id']})" if parts.get("next_run_id") else ""))
    return lines

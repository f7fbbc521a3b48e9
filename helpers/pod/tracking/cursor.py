"""metrics.jsonl -> MLflow points, from a byte-offset cursor (stdlib only, pure but for reading).

A line becomes one point per numeric field, step-indexed by its ``step`` (or ``iter``) field, else by
its line number. Only complete lines (ending in a newline) are read: a line being written is left for
the next pass. Points are cut into batches of at most MAX_METRICS_PER_BATCH (MLflow's log_batch
limit); each batch carries the byte offset just past its last line, so the cursor advances only over
lines whose every point was accepted and a restarted logger sends nothing twice.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

MAX_METRICS_PER_BATCH = 1000  # MLflow: at most 1000 metrics in one log_batch request
MAX_READ_BYTES = 8 << 20  # one pass reads at most this much of a file
STEP_KEYS = ("step", "iter", "iteration")
TIME_KEYS = ("time", "timestamp", "ts")
MAX_KEY_CHARS = 250  # MLflow's limit on a metric name


class Point(NamedTuple):
    key: str
    value: float
    timestamp_ms: int
    step: int


class Batch(NamedTuple):
    points: List[Point]
    end_offset: int  # the cursor once every point of this batch (and all before) is stored
    lines: int  # complete lines this batch finishes


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def line_points(record: Any, line_number: int, now_ms: int) -> List[Point]:
    if not isinstance(record, dict):
        return []
    step: Optional[float] = None
    for key in STEP_KEYS:
        step = _number(record.get(key))
        if step is not None:
            break
    stamp = next((t for t in (_number(record.get(k)) for k in TIME_KEYS) if t is not None), None)
    if stamp is not None and not math.isfinite(stamp):
        stamp = None
    millis = now_ms if stamp is None else int(stamp * 1000 if stamp < 1e11 else stamp)  # seconds or ms
    points = []
    for key, raw in record.items():
        value = _number(raw)
        if value is None or key in STEP_KEYS or key in TIME_KEYS or not str(key) or len(str(key)) > MAX_KEY_CHARS:
            continue
        points.append(Point(str(key), value, millis, int(step) if step is not None else line_number))
    return points


def read_new(path: str, offset: int, limit: int = MAX_READ_BYTES) -> Tuple[bytes, int]:
    """(complete lines after ``offset``, the file's size); an offset past the end (the file was
    replaced) reads from the start."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return b"", 0
    if offset > size:
        offset = 0
    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read(min(limit, size - offset))
    cut = data.rfind(b"\n")
    return (data[:cut + 1] if cut >= 0 else b""), size


def batches(data: bytes, offset: int, first_line: int, now_ms: int,
            limit: int = MAX_METRICS_PER_BATCH) -> List[Batch]:
    """Cut the complete lines in ``data`` (read at ``offset``; line numbers from ``first_line``) into
    batches of at most ``limit`` points; a line is never split unless it alone has more points than
    ``limit`` (then only its last part moves the cursor past it). Unreadable lines yield no points
    but are passed over."""
    out: List[Batch] = []
    current: List[Point] = []
    position, line_number, lines = offset, first_line, 0
    for raw in data.split(b"\n")[:-1]:  # complete lines only: "\n"-terminated, as the cursor counts them
        line_start = position
        position += len(raw) + 1
        try:
            record = json.loads(raw.decode("utf-8", errors="replace"))
        except ValueError:
            record = None
        points = line_points(record, line_number, now_ms)
        line_number += 1
        if current and len(current) + len(points) > limit:  # the line does not fit: send the lines before it
            out.append(Batch(current, line_start, lines))
            current, lines = [], 0
        while len(points) > limit:  # one line wider than a request: only its last part moves the cursor
            out.append(Batch(points[:limit], line_start, 0))
            points = points[limit:]
        current.extend(points)
        lines += 1
        if len(current) == limit:
            out.append(Batch(current, position, lines))
            current, lines = [], 0
    if current or lines:
        out.append(Batch(current, position, lines))
    return out


def count_lines(path: str) -> int:
    try:
        with open(path, "rb") as handle:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
    except OSError:
        return 0


def behind(path: str, cursor: int) -> int:
    """Bytes of complete lines of ``path`` not yet sent."""
    data, _ = read_new(path, cursor)
    return len(data)


def points_per_key(data: bytes) -> Dict[str, int]:
    """How many points each metric gets from these lines (for tests and `track`)."""
    counts: Dict[str, int] = {}
    for batch in batches(data, 0, 0, 0):
        for point in batch.points:
            counts[point.key] = counts.get(point.key, 0) + 1
    return counts

"""The metrics.jsonl cursor and log_batch batching of the pod's tracking sidecar (pure functions)."""

from __future__ import annotations

import json
from pathlib import Path

from helpers.pod.tracking.cursor import MAX_METRICS_PER_BATCH, batches, line_points, read_new


def _write(path: Path, records: list[dict], tail: str = "") -> bytes:
    data = "".join(json.dumps(r) + "\n" for r in records) + tail
    path.write_text(data)
    return data.encode()


def test_points_are_step_indexed_and_skip_what_is_not_a_number():
    points = line_points({"iter": 7, "val_loss": 1.5, "lr": 3e-4, "ok": True, "note": "x", "time": 1700000000.5},
                         0, 42)
    assert {(p.key, p.step) for p in points} == {("val_loss", 7), ("lr", 7)}
    assert all(p.timestamp_ms == 1700000000500 for p in points)
    assert [p.step for p in line_points({"loss": 1}, 5, 42)] == [5]  # no step field: the line number
    assert line_points({"loss": 1}, 5, 42)[0].timestamp_ms == 42
    assert line_points([1, 2], 0, 0) == []


def test_a_partial_last_line_waits_and_the_cursor_resumes_exactly(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    _write(path, [{"step": i, "loss": float(i)} for i in range(3)], tail='{"step": 3, "lo')
    data, size = read_new(str(path), 0)
    assert data.count(b"\n") == 3 and size > len(data)
    got = batches(data, 0, 0, 0)
    assert [p.step for b in got for p in b.points] == [0, 1, 2]
    cursor = got[-1].end_offset
    with path.open("a") as handle:
        handle.write('ss": 3.0}\n{"step": 4, "loss": 4.0}\n')
    again = batches(read_new(str(path), cursor)[0], cursor, 3, 0)
    assert [p.step for b in again for p in b.points] == [3, 4]  # nothing twice, nothing lost
    assert again[-1].end_offset == path.stat().st_size


def test_batches_respect_the_per_request_limit_and_never_pass_a_line_half_sent(tmp_path: Path):
    wide = {f"m{i}": float(i) for i in range(600)}
    data = _write(tmp_path / "m.jsonl", [{"step": s, **wide} for s in range(4)])
    got = batches(data, 0, 0, 0)
    assert all(len(b.points) <= MAX_METRICS_PER_BATCH for b in got)
    assert sum(len(b.points) for b in got) == 2400
    line = len(data) // 4
    assert [len(b.points) for b in got] == [600] * 4  # a line is never split over two requests
    assert [b.end_offset for b in got] == [line, 2 * line, 3 * line, 4 * line]
    assert sum(b.lines for b in got) == 4
    huge = batches(_write(tmp_path / "h.jsonl", [{"step": 0, **{f"k{i}": 1.0 for i in range(2500)}}]), 0, 0, 0)
    assert [len(b.points) for b in huge] == [1000, 1000, 500]
    assert [b.end_offset for b in huge][:2] == [0, 0] and huge[-1].lines == 1
    offsets = [b.end_offset for b in got]
    assert offsets == sorted(offsets)


def test_bad_lines_are_passed_over_and_a_replaced_file_reads_from_the_start(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('not json\n{"step": 1, "loss": 2}\n')
    got = batches(read_new(str(path), 0)[0], 0, 0, 0)
    assert [p.value for b in got for p in b.points] == [2.0] and got[-1].lines == 2
    data, size = read_new(str(path), 10_000)
    assert data == path.read_bytes() and size == len(data)

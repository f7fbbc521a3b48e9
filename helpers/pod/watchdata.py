"""sweep-watch-data: everything one refresh of sweep-watch shows, in one call (stdlib only).

The reply is sweep-status's (rows, totals, executor), plus the pod's GPUs (one ``nvidia-smi
--query-gpu`` per call, none when there is no nvidia-smi), the executor's heartbeat age on the pod's own
clock, and for each running row the metrics.jsonl points written since the byte offset the caller
remembered (``args.cursors``: run_id -> offset). Without an offset (the first refresh) or when the
file was replaced (a resumed run trims it), only the tail is read and the row says ``reset``: the
caller starts that row's history again. A row is never read from the start on every refresh.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from typing import Any, Dict, List, Optional

from . import runs
from .campaignstatus import sweep_status
from .context import Context
from .jsonio import parse_utc

TAIL_BYTES = 64 << 10  # the first look at a row (or a replaced file): its last lines only
MAX_NEW_BYTES = 1 << 20  # more new bytes than this since the last refresh: read the tail instead
DEFAULT_POINTS = 60
WATCHED = ("running", "pending", "retrying", "starting")
KEEP = ("iter", "step", "train_loss", "val_loss", "loss", "tokens_per_sec", "tokens_per_s", "elapsed_s", "lr")
MAX_KEYS = ("max_iters", "steps", "max_steps")
GPU_QUERY = ["nvidia-smi", "--query-gpu=index,utilization.gpu,memory.used,memory.total",
             "--format=csv,noheader,nounits"]


def gpus() -> List[Dict[str, Any]]:
    """Utilisation (%) and memory (MiB) per GPU; [] without nvidia-smi or when it fails."""
    if shutil.which(GPU_QUERY[0]) is None:
        return []
    try:
        out = subprocess.run(GPU_QUERY, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             errors="replace", timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    found = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4:
            continue
        try:
            found.append({"index": int(parts[0]), "util": float(parts[1]), "mem_used": float(parts[2]),
                          "mem_total": float(parts[3])})
        except ValueError:
            continue
    return found


def _slim(record: Any) -> Optional[Dict[str, Any]]:
    if not isinstance(record, dict):
        return None
    kept = {k: record[k] for k in KEEP if isinstance(record.get(k), (int, float)) and not isinstance(record[k], bool)}
    return kept or None


def read_points(path: str, offset: Optional[int], limit: int) -> Dict[str, Any]:
    """New complete lines of ``path`` after ``offset`` -> {"offset", "points", "reset"}."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return {"offset": 0, "points": [], "reset": offset is not None and offset > 0}
    reset = offset is None or offset > size or size - offset > MAX_NEW_BYTES
    start = max(0, size - TAIL_BYTES) if reset else int(offset or 0)
    with open(path, "rb") as handle:
        handle.seek(start)
        data = handle.read(size - start)
    if reset and start > 0:  # the tail starts mid-line: drop the partial first line
        cut = data.find(b"\n")
        data, start = (data[cut + 1:], start + cut + 1) if cut >= 0 else (b"", size)
    end = data.rfind(b"\n")
    complete = data[:end + 1] if end >= 0 else b""
    points = []
    for line in complete.splitlines():
        try:
            slim = _slim(json.loads(line))
        except ValueError:
            continue
        if slim:
            points.append(slim)
    return {"offset": start + len(complete), "points": points[-limit:], "reset": reset}


def max_steps(out_dir: str) -> Optional[int]:
    """The run's planned steps from the config.json the trainer writes (max_iters, or steps)."""
    try:
        with open(os.path.join(out_dir, "config.json"), encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError):
        return None
    for key in MAX_KEYS:
        try:
            value = int(config.get(key))
        except (TypeError, ValueError, AttributeError):
            continue
        if value > 0:
            return value
    return None


def _out_dir(ctx: Context, run_id: str) -> str:
    if ctx.get("RUN_OUT_MODE") == "local_sync":
        return os.path.join(ctx.path("RUN_OUT_LOCAL_ROOT"), run_id)
    return runs.run_dir(ctx.outputs, run_id)


def sweep_watch_data(ctx: Context) -> Dict[str, Any]:
    status = sweep_status(ctx)
    cursors = ctx.args.get("cursors") or {}
    limit = max(1, min(1000, int(ctx.args.get("points") or DEFAULT_POINTS)))
    state_at = status["columns"].index("state")
    metrics: Dict[str, Any] = {}
    for row in status["rows"]:
        run_id = str(row[0])
        if row[state_at] not in WATCHED:
            continue
        out_dir = _out_dir(ctx, run_id)
        found = read_points(os.path.join(out_dir, "metrics.jsonl"), cursors.get(run_id), limit)
        found["max_steps"] = max_steps(out_dir)
        metrics[run_id] = found
    beat = parse_utc(status["executor"].get("heartbeat_utc"))
    status["metrics"] = metrics
    status["gpus"] = gpus()
    status["heartbeat_age_s"] = round(time.time() - beat, 1) if beat else None
    return status


def run_metrics(ctx: Context) -> Dict[str, Any]:
    """``plot``: every (step, value) of one metric for each run in ``args.run_ids``, from its metrics.jsonl
    (at most MAX_PLOT_POINTS, evenly thinned); a run without the file is named in ``missing``."""
    from .ids import check_id

    metric = str(ctx.args.get("metric") or "val_loss")
    series: Dict[str, List[List[float]]] = {}
    missing: List[str] = []
    for run_id in ctx.args.get("run_ids") or []:
        path = os.path.join(_out_dir(ctx, check_id(str(run_id), "run id")), "metrics.jsonl")
        if not os.path.isfile(path):
            missing.append(str(run_id))
            continue
        series[str(run_id)] = metric_series(runs.jsonl_records(path), metric)
    return {"metric": metric, "series": series, "missing": missing}


MAX_PLOT_POINTS = 2000


def metric_series(records: Any, metric: str) -> List[List[float]]:
    """[step, value] pairs of ``metric`` (step: iter/step, else the line number), thinned to MAX_PLOT_POINTS."""
    points: List[List[float]] = []
    for number, record in enumerate(records):
        if not isinstance(record, dict):
            continue
        value = record.get(metric)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            continue
        step = record.get("iter", record.get("step", number))
        points.append([float(step) if isinstance(step, (int, float)) else float(number), float(value)])
    if len(points) > MAX_PLOT_POINTS:
        every = len(points) / MAX_PLOT_POINTS
        points = [points[int(i * every)] for i in range(MAX_PLOT_POINTS - 1)] + [points[-1]]
    return points

"""The campaign-level side of the Slurm executor, called from campaigns.py (SWEEP_EXECUTOR=slurm):
start/resume (submit), the executor's state, the status merge and stop."""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional, Tuple

from .. import fsm, runs
from ..context import Context
from ..errors import WorkflowError
from ..jsonio import read_json, utc_now, write_json
from . import slurm, slurm_cache, slurm_defer, slurm_nodes, slurm_parts, slurm_state, slurm_tracking

STOP_WAIT_SECS = 60
ENDED = ("ok", "failed", "cancelled", "timeout", "stopped", "lost", "gated", "budget")  # a row view's verdicts


def _record_path(path: str) -> str:
    return os.path.join(path, "executor.json")


def dry_run(ctx: Context, rows: List[Dict[str, Any]], part: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Every sbatch command line and the rendered job script; submits nothing (``part``: only its rows)."""
    name = part["join"] if part and part.get("join") else "<campaign-id>"
    path = os.path.join(ctx.outputs, "_campaigns", name)
    indices = part["rows"] if part else list(range(len(rows)))
    planned, script = slurm.plan(ctx, name, path, rows, indices, 1, chain=bool(part and part.get("join")))
    try:  # validated as the real start does: the refusal is shown, the plan still printed
        slurm_nodes.check_nodes(ctx.get("SLURM_PARTITION"), rows, indices)
        refusal = ""
    except WorkflowError as exc:
        refusal = exc.message
    python = os.path.join(ctx.path("VENV_DIR"), "bin", "python")
    multinode = slurm_nodes.dry_run_lines(python, ctx.get("TRAIN_ENTRYPOINT"), [c for c, _, _ in planned], rows, path)
    return {"slots": [], "part": part, "slurm_plan": {"commands": [argv for _, _, argv in planned], "script": script,
                                                      "chunks": [c["rows"] for c, _, _ in planned],
                                                      "multinode": multinode, "refusal": refusal}}


def start(ctx: Context, path: str, campaign_id: str, rows: List[Dict[str, Any]], generation: int) -> List[str]:
    """Submit the rows that are not ok yet; executor.json says which jobs hold the campaign."""
    allowed = slurm_parts.generation_rows(path, generation)  # a part: its rows; a resume: the parts submitted
    todo = [i for i, row in enumerate(rows) if (allowed is None or i in allowed)
            and not runs.is_ok(runs.run_dir(ctx.outputs, str(row["run_id"])), row["spec_hash"])]
    if generation > 1:
        slurm_parts.retire_final(path, generation)
    job_ids = slurm.submit(ctx, campaign_id, path, rows, todo, generation) if todo else []
    record = read_json(_record_path(path), "executor status") or {}
    write_json(_record_path(path), {**record, "executor": "slurm", "state": "running", "generation": generation,
                                    "created_utc": utc_now(), "job_ids": [*record.get("job_ids", []), *job_ids],
                                    "submitted_rows": len(todo), "ended_utc": None, "reason": None})
    if job_ids:  # MLflow on: the campaign's tracking sidecar on the login node (executors/slurm_tracking.py)
        slurm_tracking.start(ctx, path)
    return job_ids


def executor_state(path: str, record: Dict[str, Any]) -> Tuple[str, Dict[str, Any]]:
    """running while Slurm still holds one of the campaign's jobs (one squeue), else finished/stopped."""
    if record.get("state") == "stopped":
        return "stopped", record
    if slurm.live_jobs(path) or slurm_defer.pending(path):  # deferred chunks still to submit: not finished
        return "running", record
    return "finished", record


def merge_status(ctx: Context, path: str, manifest: Dict[str, Any], views: List[Dict[str, Any]]
                 ) -> Tuple[str, bool]:
    """Fill every row view with Slurm's view (one sacct + one squeue); returns a note (sacct missing) and
    whether Slurm's part is final (every job ended and cached, nothing deferred: a status table may be kept)."""
    stopped = (read_json(_record_path(path), "executor status") or {}).get("state") == "stopped"
    if not stopped and slurm_defer.pending(path):
        slurm_defer.submit_deferred(path)  # what fits now goes in; the rest waits for the next status / task
    waiting = slurm_defer.deferred_rows(path)
    sizes = {str(c["job_id"]): len(c["rows"]) for c in slurm_state.chunks(path)}
    scheduler, note, all_ended = slurm_cache.scheduler_view(path, str(manifest["campaign_id"]), sizes)  # cached
    jobs = slurm_state.row_jobs(path)
    for number, view in enumerate(views):
        key = jobs.get(number)
        info = scheduler.get(key) if key else None
        if number in waiting and view["state"] in ("missing", "queued", "pending"):
            view.update(state="queued", slurm=f"deferred ({waiting[number]}): submitted as earlier chunks drain")
            continue
        if not key or not info:
            if stopped and view["state"] in ("missing", "queued", "running", "pending", "lost"):
                view.update(state="cancelled", failure_class="killed")  # scancelled before sacct saw it end
            elif key and note and view["state"] in ("missing", "queued", "running", "pending", "retrying"):
                view.update(state="lost", failure_class="lost")  # left squeue, no sacct to say how it ended
                view["slurm"] = f"{key[0]}_{key[1]} not in squeue (no sacct)"
            continue
        state = str(info.get("state") or "UNKNOWN")
        view["slurm"] = f"{key[0]}_{key[1]} {state}" + (f" ({info['reason']})" if state == "PENDING" and info.get(
            "reason") else "") + (f" on {info['node']} {info.get('elapsed') or ''}".rstrip() if state == "RUNNING"
                                  and info.get("node") else "")
        shown, klass = slurm_state.row_state(state)
        final = view["state"] in ("ok", "failed", "cancelled", "stopped", "timeout", "gated") and view.get("attempts")
        if final and shown not in ("queued", "running"):
            continue  # the row's own summary is the verdict
        if shown in ("queued", "running"):
            if view["state"] in ("missing", "queued") or shown == "queued":
                view["state"] = "queued" if shown == "queued" else "running"
            continue
        if view["state"] in ("running", "pending", "retrying", "queued", "missing", "lost"):
            view.update(state=shown, failure_class=klass)  # ended in Slurm without a summary
    if not stopped:
        _conclude_if_ended(ctx, path, manifest, views, scheduler)
    return note, all_ended and not waiting


def _conclude_if_ended(ctx: Context, path: str, manifest: Dict[str, Any], views: List[Dict[str, Any]],
                       scheduler: Dict[Tuple[str, int], Dict[str, Any]]) -> None:
    """Every row has its verdict and Slurm holds none of them: the FSM reaches its end state now, whoever
    reads it first (nobody ran the last row, e.g. its job was scancelled outside the tool before it started)."""
    views = [v for v in views if v["state"] != slurm_parts.UNSUBMITTED]  # rows of parts not submitted yet
    if not views or any(v["state"] not in ENDED for v in views):
        return
    if any(str(info.get("state") or "").split(" ")[0] in slurm_state.LIVE for info in scheduler.values()):
        return
    failed = sum(1 for v in views if v["state"] not in ("ok", "gated"))  # a gate not met is no failure
    slurm_state.conclude(ctx.state_file, ctx.enforce, path, str(manifest["campaign_id"]), failed, len(views),
                         "sweep-status")


def stop(ctx: Context, path: str, campaign_id: str) -> Dict[str, Any]:
    """scancel exactly the campaign's jobs; wait until they have left the queue; SWEEP_STOPPED."""
    record = read_json(_record_path(path), "executor status") or {}
    was = executor_state(path, record)[0]
    ids = slurm.stop(path)
    deadline = time.monotonic() + STOP_WAIT_SECS + ctx.number("TASK_KILL_GRACE_SECS", 10)
    while time.monotonic() < deadline and slurm.live_jobs(path, fresh=True):
        time.sleep(0.5)
    write_json(_record_path(path), {**record, "state": "stopped", "ended_utc": utc_now(),
                                    "stop_reason": "sweep-stop (scancel)"})
    if fsm.read_state(ctx.state_file).state == fsm.State.SWEEP_RUNNING.value:
        fsm.transition(ctx.state_file, "sweep-stop", f"campaign {campaign_id} stopped (scancel)", ctx.enforce)
    return {"campaign_id": campaign_id, "executor_was": was, "stopped_runs": [], "cancelled_jobs": ids,
            "state": fsm.read_state(ctx.state_file).state}

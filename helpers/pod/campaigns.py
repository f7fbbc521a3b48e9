"""Agent ops for sweeps: sweep-start, sweep-status (read-only), sweep-stop, sweep-resume.

A campaign is one immutable sweep launch: ``_campaigns/<id>/`` holds manifest.json (the rows,
the config without secrets, the selection), sweep.csv, executor.json (the executor's liveness),
events.jsonl, executor.log and index.json (finished rows, for a fast status). The uploaded CSV
is also kept as ``_manifests/sweep-latest.csv`` plus a copy per campaign.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from typing import Any, Dict, List, Optional, Tuple

from . import attempts, fsm, proctree, runs, stages, tmuxctl
from .campaignstate import LIVE, STARTING_GRACE_SECS, campaign_dir, executor_state, latest_file, root  # noqa: F401
from .campaignstatus import row_view
from .context import Context
from .errors import ExitCode, WorkflowError
from .executor_records import request_stop
from .executors import SLURM, kind_of, slurm_parts
from .ids import check_id
from .jsonio import read_json, utc_now, write_bytes, write_json
from .scheduling import detect_slots, planned_run_env, slot_env
from .taskstate import is_terminal, read_status


def live_campaigns(ctx: Context) -> List[str]:
    if not os.path.isdir(root(ctx)):
        return []
    return [name for name in sorted(os.listdir(root(ctx)))
            if executor_state(os.path.join(root(ctx), name))[0] in LIVE]


def _refuse_if_running(ctx: Context, joining: Optional[str] = None) -> None:
    for campaign_id in live_campaigns(ctx):
        if campaign_id == joining and kind_of(ctx.config) == SLURM:
            continue  # a later part of this campaign: Slurm queues it beside the earlier parts
        if campaign_id == joining:
            slurm_parts.refuse_tmux_join(campaign_id, "running")
        raise WorkflowError(f"campaign {campaign_id} is still running on the pod; watch it with workflow.sh "
                            f"sweep-status, or stop it first with workflow.sh sweep-stop --campaign {campaign_id}",
                            ExitCode.REFUSED)


def _start_executor(ctx: Context, path: str, generation: int) -> str:
    write_json(os.path.join(path, "executor.json"), {"state": "starting", "created_utc": utc_now(),
                                                     "generation": generation})
    argv = tmuxctl.agent_command("sweep-exec", path)
    return tmuxctl.open_window(ctx.tmux_base(), ctx.get("SWEEP_TMUX_SESSION"), "sweep", argv, path)


def _preflight(ctx: Context, rows: List[Dict[str, Any]]) -> None:
    if kind_of(ctx.config) == SLURM:
        from .executors import slurm

        slurm.preflight(ctx, rows, [i for i, row in enumerate(rows) if not runs.is_ok(
            runs.run_dir(ctx.outputs, str(row["run_id"])), row["spec_hash"])])


def _start_rows(ctx: Context, path: str, campaign_id: str, rows: List[Dict[str, Any]], generation: int
                ) -> List[str]:
    """The one dispatch on SWEEP_EXECUTOR: tmux (the executor window) or slurm (job arrays)."""
    if kind_of(ctx.config) == SLURM:
        from .executors import slurm_campaign

        return slurm_campaign.start(ctx, path, campaign_id, rows, generation)
    _start_executor(ctx, path, generation)
    return []


def _check_pod_side(ctx: Context, rows: List[Dict[str, Any]]) -> List[str]:
    python = os.path.join(ctx.path("VENV_DIR"), "bin", "python")
    if not os.path.exists(python):
        raise WorkflowError(f"the run venv {ctx.path('VENV_DIR')} is missing on the pod; run workflow.sh checkout",
                            ExitCode.FAILED)
    workdir = os.path.join(ctx.path("OPS_REMOTE_REPO"), ctx.get("TRAIN_WORKDIR"))
    entry = os.path.join(workdir, ctx.get("TRAIN_ENTRYPOINT"))
    if not os.path.isfile(entry):
        raise WorkflowError(f"TRAIN_ENTRYPOINT {entry} does not exist in the pod checkout; fix TRAIN_WORKDIR / "
                            "TRAIN_ENTRYPOINT or run checkout", ExitCode.USAGE)
    slots = detect_slots(ctx, planned_run_env(ctx))  # exactly as the executor will see them
    if kind_of(ctx.config) != SLURM:
        from .executors import slurm_nodes

        slurm_nodes.refuse_on_tmux(rows)
    for row in rows:
        if not os.path.isfile(os.path.join(workdir, row["config"])):
            raise WorkflowError(f"row {row['row_number']} ({row['run_id']}): config {row['config']} is not in the "
                                f"pod checkout {workdir}; commit and push it, then run checkout", ExitCode.USAGE)
        if row.get("gpus") and int(row["gpus"]) > len(slots) and kind_of(ctx.config) != SLURM:
            raise WorkflowError(f"row {row['row_number']} ({row['run_id']}) needs {row['gpus']} GPU(s) but the pod "
                                f"has {len(slots)} slot(s) ({', '.join(slots)})", ExitCode.USAGE)
    return slots


def run_is_live(path: str) -> bool:
    """Whether the run's supervisor is still alive with an attempt that has not ended."""
    status = read_status(path) or {}
    ended = is_terminal(status.get("state", "success")) and status.get("cleanup") in ("done", None)
    return bool(status) and not ended and proctree.is_alive(  # (a verdict still being cleaned up is live)
        status.get("supervisor_pid"), status.get("supervisor_start_time")) or stages.live(path)  # or its eval stage


def _refuse_live(campaign_id: str, live: List[str]) -> None:
    if live:
        raise WorkflowError(
            f"campaign {campaign_id}: run(s) {', '.join(live[:5])} are still running under their supervisors (the "
            "executor is gone, the runs are not); resuming now would start them twice. Wait for them to end "
            f"(workflow.sh sweep-status --campaign {campaign_id}) or stop them with workflow.sh sweep-stop "
            f"--campaign {campaign_id}, then resume", ExitCode.REFUSED)


def live_runs(ctx: Context, rows: List[Dict[str, Any]]) -> List[str]:
    return [row["run_id"] for row in rows if run_is_live(runs.run_dir(ctx.outputs, row["run_id"]))]


def _check_ownership(ctx: Context, rows: List[Dict[str, Any]], reuse: bool, campaign_id: Optional[str] = None
                     ) -> List[Tuple[str, str]]:
    """Run dirs this launch may use; returns (run_id, owner campaign) pairs to move aside (reuse)."""
    aside: List[Tuple[str, str]] = []
    for row in rows:
        path = runs.run_dir(ctx.outputs, row["run_id"])
        if not os.path.exists(path):
            continue
        own = runs.owner(path)
        if own is None:
            raise WorkflowError(f"row {row['row_number']}: {path} exists and was not created by workflow.sh; it is "
                                "left alone: choose another run_id", ExitCode.REFUSED)
        if run_is_live(path):
            raise WorkflowError(f"row {row['row_number']}: run {row['run_id']} is running right now (campaign "
                                f"{own.get('campaign_id')}); stop it first", ExitCode.REFUSED)
        if own.get("campaign_id") in (campaign_id, None) or own.get("spec_hash") == row["spec_hash"]:
            continue  # the same run again: it continues (and is skipped if already ok)
        if not reuse:
            raise WorkflowError(
                f"row {row['row_number']}: run_id {row['run_id']} belongs to campaign {own.get('campaign_id')} with a "
                "different config/seed/overrides; choose a new run_id, or pass --reuse-run-ids to take it over (the "
                "old directory is kept aside)", ExitCode.REFUSED)
        aside.append((row["run_id"], str(own.get("campaign_id"))))
    return aside


def sweep_start(ctx: Context) -> Dict[str, Any]:
    """Start a campaign: one sweep-start at a time (the check that none runs and the creation are atomic)."""
    from .jsonio import locked_dir

    if ctx.args.get("plan_only") or not os.path.isdir(ctx.outputs):
        return _sweep_start(ctx)
    with locked_dir(ctx.outputs):
        return _sweep_start(ctx)


def _sweep_start(ctx: Context) -> Dict[str, Any]:
    args = ctx.args
    rows: List[Dict[str, Any]] = [dict(r) for r in args.get("rows") or []]
    for row in rows:
        check_id(row["run_id"], "run id")
        row["spec_hash"] = runs.spec_hash(row)
    part = slurm_parts.plan(ctx.outputs, rows, dict(args["part"]), kind_of(ctx.config)) if args.get("part") else None
    mine = [rows[i] for i in part["rows"]] if part else rows  # the rows this launch starts
    if args.get("plan_only") and kind_of(ctx.config) == SLURM:  # --dry-run: sbatch lines + job script
        from .executors import slurm_campaign

        return slurm_campaign.dry_run(ctx, rows, part)
    if args.get("plan_only"):  # --dry-run: what the executor would see and skip; changes nothing
        env = planned_run_env(ctx)
        slots = detect_slots(ctx, env)
        return {"slots": slots, "env": {k: v for k, v in slot_env(env, slots, slots).items()
                                        if k != "CUDA_VISIBLE_DEVICES"}, "part": part,
                "already_ok": [r["run_id"] for r in mine if runs.is_ok(runs.run_dir(ctx.outputs, r["run_id"]),
                                                                       r["spec_hash"])]}
    fsm.check_allowed(fsm.read_state(ctx.state_file), "sweep-start", ctx.enforce)
    joining = part["join"] if part else None
    _refuse_if_running(ctx, joining)
    slots = _check_pod_side(ctx, mine)
    from .baseline import check as check_baseline

    check_baseline(ctx, mine)  # BASELINE_RUN finished, with the relative gates' metrics (issue 14)
    aside = _check_ownership(ctx, mine, bool(args.get("reuse_run_ids")), joining)
    _preflight(ctx, mine)
    ctx.sync_env()
    if part and joining:
        return _join_part(ctx, joining, rows, part, slots, aside)
    campaign_id = f"{utc_now()[:19].replace('-', '').replace(':', '').replace('T', '-')}-{uuid.uuid4().hex[:6]}"
    path = os.path.join(root(ctx), campaign_id)
    os.makedirs(path)  # a new id: never an existing campaign
    for run_id, old in aside:
        target = os.path.join(ctx.outputs, "_superseded", f"{run_id}.{old}")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.rename(runs.run_dir(ctx.outputs, run_id), target)
    ok_already = sum(1 for row in mine if runs.is_ok(runs.run_dir(ctx.outputs, row["run_id"]), row["spec_hash"]))
    manifest = {
        "schema_version": runs.SCHEMA_VERSION, "campaign_id": campaign_id, "created_utc": utc_now(),
        "csv_name": args.get("csv_name"), "csv_sha256": args.get("csv_sha256"), "selection": args.get("selection"),
        "rows": rows, "config": ctx.config, "user_patterns": args.get("user_patterns", ""),
        "user_patterns_source": args.get("user_patterns_source", ""), "superseded": aside,
        "price": args.get("price"),  # the pod's price per hour from sweep-start (Lium), else POD_PRICE_PER_HOUR
    }
    write_json(os.path.join(path, "manifest.json"), manifest, mode=0o444)
    csv_bytes = str(args.get("csv_text", "")).encode("utf-8")
    write_bytes(os.path.join(path, "sweep.csv"), csv_bytes, 0o444)
    manifests = os.path.join(ctx.outputs, "_manifests")
    write_bytes(os.path.join(manifests, f"sweep-{campaign_id}.csv"), csv_bytes, 0o444)
    write_bytes(os.path.join(manifests, "sweep-latest.csv"), csv_bytes)
    write_bytes(latest_file(ctx), (campaign_id + "\n").encode())
    if part:
        slurm_parts.record_part(path, part, 1)
    before = fsm.read_state(ctx.state_file)
    fsm.transition(ctx.state_file, "sweep-start", f"campaign {campaign_id} ({len(rows)} rows)", ctx.enforce)
    try:
        job_ids = _start_rows(ctx, path, campaign_id, rows, 1)
    except WorkflowError:
        fsm.reset(ctx.state_file, before.state, f"campaign {campaign_id}: the executor could not start")
        raise
    return {"campaign_id": campaign_id, "executor": kind_of(ctx.config), "job_ids": job_ids, "rows": len(mine),
            "already_ok": ok_already, "slots": slots, "part": part,
            "session": ctx.get("SWEEP_TMUX_SESSION"), "superseded": aside, "socket": ctx.get("TMUX_SOCKET")}


def _join_part(ctx: Context, campaign_id: str, rows: List[Dict[str, Any]], part: Dict[str, Any], slots: List[str],
               aside: List[Tuple[str, str]]) -> Dict[str, Any]:
    """A later part of a campaign (slurm_parts): its rows as the campaign's next executor generation."""
    path = os.path.join(root(ctx), campaign_id)
    if aside:
        raise WorkflowError(f"run(s) {', '.join(r for r, _ in aside[:5])} belong to another campaign; a part cannot "
                            "take them over (start the sweep anew with --reuse-run-ids)", ExitCode.REFUSED)
    if kind_of(ctx.config) != SLURM:
        slurm_parts.refuse_tmux_join(campaign_id, executor_state(path)[0])
    record = read_json(os.path.join(path, "executor.json"), "executor status") or {}
    generation = int(record.get("generation", 1)) + 1
    slurm_parts.record_part(path, part, generation)
    mine = [rows[i] for i in part["rows"]]
    ok_already = sum(1 for row in mine if runs.is_ok(runs.run_dir(ctx.outputs, row["run_id"]), row["spec_hash"]))
    fsm.transition(ctx.state_file, "sweep-start", f"campaign {campaign_id}: part {part['part']} ({len(mine)} rows)",
                   ctx.enforce)
    write_bytes(latest_file(ctx), (campaign_id + "\n").encode())
    job_ids = _start_rows(ctx, path, campaign_id, rows, generation)
    return {"campaign_id": campaign_id, "executor": kind_of(ctx.config), "job_ids": job_ids, "rows": len(mine),
            "already_ok": ok_already, "slots": slots, "part": part, "session": ctx.get("SWEEP_TMUX_SESSION"),
            "superseded": [], "socket": ctx.get("TMUX_SOCKET")}


def _stop_runs(ctx: Context, manifest: Dict[str, Any], campaign_id: str) -> List[str]:
    from .tasks import stop_leftovers

    stopped = []
    for row in manifest.get("rows", []):
        path = runs.run_dir(ctx.outputs, row["run_id"])
        own = runs.owner(path) if os.path.isdir(path) else None
        if not own or own.get("campaign_id") != campaign_id:
            continue
        if stages.stop_live(path, ctx.number("TASK_KILL_GRACE_SECS", 10) + 15):  # an eval stage (stages.py)
            stopped.append(row["run_id"])
        status = read_status(path) or {}
        if not status or (is_terminal(status["state"]) and status.get("cleanup") in ("done", None)):
            continue
        pid = status.get("supervisor_pid")
        if pid and proctree.is_alive(pid, status.get("supervisor_start_time")):
            os.kill(int(pid), signal.SIGTERM)
            deadline = time.monotonic() + ctx.number("TASK_KILL_GRACE_SECS", 10) + 15
            while time.monotonic() < deadline and proctree.is_alive(pid, status.get("supervisor_start_time")):
                time.sleep(0.1)
        from .taskstate import update_status

        record = update_status(path, state="cancelled", failure_class="killed", reason="cancelled (sweep-stop)",
                               ended_utc=utc_now())
        stop_leftovers(path, record)
        update_status(path, cleanup="done")
        stopped.append(row["run_id"])
    return stopped


def sweep_stop(ctx: Context) -> Dict[str, Any]:
    campaign_id, path = campaign_dir(ctx, ctx.args.get("campaign"))
    manifest = read_json(os.path.join(path, "manifest.json"), "campaign manifest") or {}
    if kind_of(manifest.get("config", {})) == SLURM:
        from .executors import slurm_campaign

        return slurm_campaign.stop(ctx, path, campaign_id)
    state, executor = executor_state(path)
    was = state
    rows = manifest.get("rows", [])
    active = live_runs(ctx, rows)  # the plan: these are cancelled, whoever (executor or this op) stops them
    if ctx.args.get("plan_only"):
        return {"campaign_id": campaign_id, "executor": state, "active": active,
                "queued": [r["run_id"] for r in rows if r["run_id"] not in active
                           and row_view(ctx, campaign_id, r, {}, state in LIVE)["state"]
                           == "queued"]}
    # first the request: an executor still starting reads it before it runs anything, and a running one
    # before each launch (a signal alone could come before it has installed its handler, or be missed)
    request_stop(path, int(executor.get("generation") or 1))
    if state == "starting":  # it may have come up between that look and the request: then stop it as running
        state_now, record_now = executor_state(path)
        if state_now == "running":
            executor = record_now
            state = "running"
    if state in ("running", "stopping"):
        os.kill(int(executor["pid"]), signal.SIGTERM)  # it cancels its active runs, then exits
        deadline = time.monotonic() + ctx.number("TASK_KILL_GRACE_SECS", 10) + 60
        while time.monotonic() < deadline and proctree.is_alive(executor["pid"], executor.get("start_time")):
            time.sleep(0.1)
    stopped = _stop_runs(ctx, manifest, campaign_id)  # anything the executor did not (or could not) stop
    attempts.conclude_orphans(ctx.outputs, path, campaign_id, rows)  # their attempts kept, as the executor does
    stopped = [*active, *(r for r in stopped if r not in active)]
    record = read_json(os.path.join(path, "executor.json"), "executor status") or {}
    if record.get("state") in LIVE:
        record.update(state="stopped", ended_utc=utc_now(), stop_reason="sweep-stop (executor gone or not yet started)")
        write_json(os.path.join(path, "executor.json"), record)
    current = fsm.read_state(ctx.state_file)
    if current.state == fsm.State.SWEEP_RUNNING.value:
        fsm.transition(ctx.state_file, "sweep-stop", f"campaign {campaign_id} stopped", ctx.enforce)
    return {"campaign_id": campaign_id, "executor_was": was, "stopped_runs": stopped,
            "state": fsm.read_state(ctx.state_file).state}


def _resume_plan(ctx: Context, campaign_id: str, path: str, rows: List[Dict[str, Any]]
                 ) -> Tuple[List[Tuple[str, bool]], List[Dict[str, Any]]]:
    """(rows concluded first, rows to rerun): the one plan for sweep-resume and its --dry-run. Rows whose
    supervisors finished after the executor died are concluded first; an ok one is never rerun."""
    dry = bool(ctx.args.get("plan_only"))
    concluded = attempts.conclude_orphans(ctx.outputs, path, campaign_id, rows, dry_run=dry)
    ok_now = {run_id for run_id, ok in concluded if ok}
    allowed = slurm_parts.submitted(path)  # a campaign in parts: only the rows its parts submitted
    todo = [r for i, r in enumerate(rows) if r["run_id"] not in ok_now and (allowed is None or i in allowed)
            and not runs.is_ok(runs.run_dir(ctx.outputs, r["run_id"]), r["spec_hash"])]
    return concluded, todo


def sweep_resume(ctx: Context) -> Dict[str, Any]:
    campaign_id, path = campaign_dir(ctx, ctx.args.get("campaign"))
    manifest = read_json(os.path.join(path, "manifest.json"), "campaign manifest") or {}
    rows = manifest.get("rows", [])
    if ctx.args.get("plan_only"):
        concluded, todo = _resume_plan(ctx, campaign_id, path, rows)
        return {"campaign_id": campaign_id, "concluded": concluded, "rerun": [r["run_id"] for r in todo],
                "executor": executor_state(path)[0], "live": live_runs(ctx, todo)}
    fsm.check_allowed(fsm.read_state(ctx.state_file), "sweep-resume", ctx.enforce)
    _refuse_if_running(ctx)
    # live runs first: one whose supervisor ends between the plan and a later check would run twice
    own = [r for r in rows if (runs.owner(runs.run_dir(ctx.outputs, r["run_id"])) or {}).get(
        "campaign_id") == campaign_id]
    _refuse_live(campaign_id, live_runs(ctx, own))
    concluded, todo = _resume_plan(ctx, campaign_id, path, rows)
    taken = [r["run_id"] for r in todo if (runs.owner(runs.run_dir(ctx.outputs, r["run_id"])) or {}).get(
        "campaign_id", campaign_id) != campaign_id and os.path.isdir(runs.run_dir(ctx.outputs, r["run_id"]))]
    if taken:
        raise WorkflowError(f"run(s) {', '.join(taken[:5])} now belong to a later campaign; resume that one "
                            "instead", ExitCode.REFUSED)
    if not todo:
        return {"campaign_id": campaign_id, "rerun": [], "concluded": concluded,
                "state": fsm.read_state(ctx.state_file).state}
    _refuse_live(campaign_id, live_runs(ctx, todo))
    _check_pod_side(ctx, todo)
    _preflight(ctx, rows)
    ctx.sync_env()
    record = read_json(os.path.join(path, "executor.json"), "executor status") or {}
    fsm.transition(ctx.state_file, "sweep-resume", f"campaign {campaign_id}: rerun {len(todo)} row(s)", ctx.enforce)
    write_bytes(latest_file(ctx), (campaign_id + "\n").encode())
    job_ids = _start_rows(ctx, path, campaign_id, rows, int(record.get("generation", 1)) + 1)
    return {"campaign_id": campaign_id, "rerun": [r["run_id"] for r in todo], "concluded": concluded,
            "job_ids": job_ids, "session": ctx.get("SWEEP_TMUX_SESSION"), "socket": ctx.get("TMUX_SOCKET")}

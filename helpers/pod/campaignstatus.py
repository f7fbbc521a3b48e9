"""sweep-status (read-only), built from the pod's files: one view per row (its campaign index entry,
else its summary.json and status.json, its attempts), merged with Slurm's view (one sacct + one
squeue) on the Slurm executor, sent compact (statuscache.compact) and kept once the campaign is
concluded (statuscache.save), so the next call is answered from that table (campaignstate.py).
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional

from . import attempts, campaignstate, cost, proctree, runs, stages, statuscache
from .campaignstate import LIVE
from .context import Context
from .executors import SLURM, kind_of, slurm_parts
from .jsonio import parse_utc, read_json
from .taskstate import is_terminal, read_status

ROW_COLUMNS = ("run_id", "state", "attempts", "duration_s", "failure_class", "val_loss", "from_campaign",
               "reason_line", "log", "recovered_from", "stage", "cost_usd")


def row_view(ctx: Context, campaign_id: str, row: Dict[str, Any], index: Dict[str, Any], executor_live: bool
              ) -> Dict[str, Any]:
    run_id = row["run_id"]
    view: Dict[str, Any] = {"run_id": run_id, "row_number": row.get("row_number")}
    indexed = index.get(run_id)
    if indexed:
        return {**view, **indexed, "state": "ok" if indexed.get("ok") else indexed.get("state")}
    path = runs.run_dir(ctx.outputs, run_id)
    done = runs.summary(path)
    status = (read_status(path) or {}) if done else {}
    if done and runs.superseded(done, status):
        done = None
    if done and done.get("spec_hash") == row.get("spec_hash") and (
            done.get("campaign_id") == campaign_id or done.get("ok")):
        return {**view, **attempts.index_entry(done), "state": "ok" if done.get("ok") else done.get("state"),
                "from_campaign": None if done.get("campaign_id") == campaign_id else done.get("campaign_id")}
    own = runs.owner(path) if os.path.isdir(path) else None
    if not own or own.get("campaign_id") != campaign_id:
        return {**view, "state": "queued" if executor_live else "missing", "attempts": 0}
    status = status or read_status(path) or {}
    state = status.get("state", "pending")
    ended = is_terminal(state)
    if state in ("running", "pending") and status.get("supervisor_pid") and not proctree.is_alive(
            status.get("supervisor_pid"), status.get("supervisor_start_time")):
        state, ended = "lost", True
    elif ended and executor_live:
        state = "retrying"  # an attempt ended; the executor decides what comes next
    stage = stages.view(path) if state in ("retrying", "success") and executor_live else None
    if stage:  # the training attempt succeeded and an evaluation stage runs now (stages.py)
        state, ended = "running", False
        view["stage"] = stage
    started = parse_utc(status.get("started_utc"))
    count = len(runs.campaign_attempts(path, campaign_id))
    out_dir = os.path.join(ctx.path("RUN_OUT_LOCAL_ROOT"), run_id) if ctx.get("RUN_OUT_MODE") == "local_sync" else path
    return {**view, "state": state, "attempts": count + (0 if ended else 1),
            "duration_s": round(time.time() - started, 1) if started and not ended else None,
            "failure_class": status.get("failure_class"), "val_loss": runs.last_val_loss(out_dir),
            "reason_line": status.get("reason") if ended and state != "success" else None,
            "log": os.path.join(path, "run.log")}


def sweep_status(ctx: Context, known: Optional[campaignstate.Known] = None) -> Dict[str, Any]:
    """sweep-status (pod/campaignstate.py sweep_status, the agent's op, comes here with ``known``: what it
    read on its way to the stored table, which was not current)."""
    if known is None:
        found = campaignstate.cached_status(ctx)  # a concluded campaign's stored table: see statuscache
        if isinstance(found, dict):
            return found
        known = found
    campaign_id, path, state, executor, files, cacheable = known
    manifest = read_json(os.path.join(path, "manifest.json"), "campaign manifest") or {}
    index = read_json(os.path.join(path, "index.json"), "campaign index") or {}
    live = state in LIVE
    watched = statuscache.row_marks(ctx, [str(r["run_id"]) for r in manifest.get("rows", [])
                                          if not index.get(r["run_id"])]) if cacheable else {}
    views = [row_view(ctx, campaign_id, row, index, live) for row in manifest.get("rows", [])]
    parts = slurm_parts.mark_unsubmitted(path, views)  # a campaign in parts: rows no part submitted yet
    if ctx.args.get("attempts"):
        for view in views:
            view["attempt_list"] = attempt_list(runs.run_dir(ctx.outputs, view["run_id"]))
    columns, note = list(ROW_COLUMNS), None
    if kind_of(manifest.get("config", {})) == SLURM:  # one sacct + one squeue merged into the views
        from .executors import slurm_campaign

        note, final = slurm_campaign.merge_status(ctx, path, manifest, views)
        note = note or None
        columns.append("slurm")
        cacheable = cacheable and final  # every job's end in slurm/sacct-cache.json (marked): the table may be kept
    if ctx.args.get("attempts"):
        columns.append("attempt_list")
    totals: Dict[str, int] = {}
    for view in views:
        totals[view["state"]] = totals.get(view["state"], 0) + 1
    sent, rows, empty = statuscache.compact(columns, views, ctx.outputs)  # 10,000 rows stay small on the wire
    table = {"columns": sent, "rows": rows, "empty_columns": empty, "totals": totals, "parts": parts or None,
             "cost": cost.campaign_cost(manifest, executor, views)}
    kept = None
    if cacheable and statuscache.settled(views) and not ctx.args.get("read_only"):  # read_only: a --dry-run
        kept = statuscache.save(ctx, path, campaign_id, state, files, watched, manifest, table)
    reply = campaignstate.status_reply(ctx, campaign_id, path, manifest, state, executor, note, table,
                                       [str(view["run_id"]) for view in views])
    if kept and note is None:  # as the stored table's replies will be (their note is None)
        reply["hashes"] = campaignstate.reply_hashes(kept, reply)
    return reply


def attempt_list(path: str) -> List[Dict[str, Any]]:
    """Every attempt of a run (all campaigns, all passes), each from its own attempts/<n>/ files."""
    found = []
    for number in attempts.numbers(path):
        done = read_json(os.path.join(attempts.attempt_dir(path, number), "summary.json"), "attempt summary") or {}
        began = attempts.info(path, number)
        found.append({"attempt": number, "campaign_id": began.get("campaign_id"),
                      "started_utc": began.get("started_utc"), "ended_utc": done.get("ended_utc"),
                      "state": done.get("state") or "unfinished", "failure_class": done.get("failure_class"),
                      "reason_line": done.get("reason_line"), "note": began.get("note"),
                      "log": os.path.join(attempts.attempt_dir(path, number), "run.log")})
    return found


# ----------------------------------------------------------------------------- stop / resume

"""Where a campaign lives and what its executor is doing, and the sweep-status op's lean start.

The agent's sweep-status op starts here: a concluded campaign whose stored table is current
(pod/statuscache.py) is answered from it with only these imports (the campaign directory, the
executor's state, the tracking view); anything else (a live executor, --attempts, a table to build)
goes on in pod/campaignstatus.py sweep_status, which imports the row views, stages, runs and the
Slurm merge. campaigns.py re-exports the names below for the modules that import them from there.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional, Tuple, Union

from . import statuscache
from .context import Context
from .errors import ExitCode, WorkflowError
from .executors import SLURM, kind_of
from .ids import check_id
from .jsonio import parse_utc, read_json

STARTING_GRACE_SECS = 30
LIVE = ("running", "starting", "stopping")  # an executor in these states may still start or stop runs
Known = Tuple[str, str, str, Dict[str, Any], List[statuscache.Mark], bool]  # what campaignstatus.sweep_status takes


def root(ctx: Context) -> str:
    return os.path.join(ctx.outputs, "_campaigns")


def latest_file(ctx: Context) -> str:
    return os.path.join(ctx.outputs, "_control", "latest_campaign")


def campaign_dir(ctx: Context, campaign_id: Optional[str]) -> Tuple[str, str]:
    latest = not campaign_id
    if not campaign_id:
        try:
            with open(latest_file(ctx)) as handle:
                campaign_id = handle.read().strip()
        except FileNotFoundError:
            raise WorkflowError("no sweep has been started on this pod; start one with workflow.sh sweep-start",
                                ExitCode.NOT_FOUND) from None
    path = os.path.join(root(ctx), check_id(campaign_id, "campaign id"))
    if not os.path.isfile(os.path.join(path, "manifest.json")):
        if latest and os.path.isdir(os.path.join(ctx.outputs, "_archive", str(campaign_id))):  # see pod/archive.py
            raise WorkflowError(f"the latest campaign {campaign_id} was archived; restore it with workflow.sh archive "
                                f"--restore {campaign_id}, or name another with --campaign", ExitCode.NOT_FOUND)
        known = sorted(os.listdir(root(ctx)))[-5:] if os.path.isdir(root(ctx)) else []
        raise WorkflowError(f"no campaign {campaign_id!r} on the pod (recent: {', '.join(known) or 'none'})",
                            ExitCode.NOT_FOUND)
    return campaign_id, path


def executor_state(path: str) -> Tuple[str, Dict[str, Any]]:
    """running | starting | stopping | finished | stopped | lost, told truthfully on every read: a
    running or stopping executor whose process (pid + start time) is gone is lost."""
    record = read_json(os.path.join(path, "executor.json"), "executor status") or {}
    if record.get("executor") == SLURM:  # Slurm holds the rows: its queue says whether they still run
        from .executors import slurm_campaign

        return slurm_campaign.executor_state(path, record)
    state = record.get("state", "lost")
    if state in ("running", "stopping"):
        from . import proctree  # here: a concluded campaign's status never needs it

        if record.get("boot_id") and record["boot_id"] != proctree.boot_id():
            return "lost", {**record, "reason": "the pod rebooted"}
        if not proctree.is_alive(record.get("pid"), record.get("start_time")):
            return "lost", {**record, "reason": "the executor process is gone (tmux killed?)"}
    if state == "starting":
        age = time.time() - (parse_utc(record.get("created_utc")) or time.time())
        if age > STARTING_GRACE_SECS:
            return "lost", {**record, "reason": f"the executor never started ({age:.0f}s)"}
    return state, record


def status_reply(ctx: Context, campaign_id: str, path: str, manifest: Dict[str, Any], state: str,
                 executor: Dict[str, Any], note: Optional[str], table: Dict[str, Any], run_ids: List[str]
                 ) -> Dict[str, Any]:
    return {"campaign_id": campaign_id, "created_utc": manifest.get("created_utc"), "executor": {
        "state": state, "pid": executor.get("pid"), "slots": executor.get("slots"), "reason": executor.get("reason"),
        "heartbeat_utc": executor.get("heartbeat_utc"), "ended_utc": executor.get("ended_utc"),
        "kind": kind_of(manifest.get("config", {})), "note": note},
        "columns": table["columns"], "rows": table["rows"], "empty_columns": table["empty_columns"],
        "totals": table["totals"], "parts": table.get("parts"), "total": len(table["rows"]), "outputs": ctx.outputs,
        "session": ctx.get("SWEEP_TMUX_SESSION"), "tracking": tracking_view(ctx, path, manifest, run_ids),
        "cost": table.get("cost")}


def tracking_view(ctx: Context, path: str, manifest: Dict[str, Any], run_ids: List[str]
                  ) -> Optional[Dict[str, Any]]:
    from . import tracking

    local = ctx.get("RUN_OUT_MODE") == "local_sync"
    out_dirs = {r: os.path.join(ctx.path("RUN_OUT_LOCAL_ROOT"), r) for r in run_ids} if local else {}
    return tracking.status(tracking.campaign_config(path, manifest), ctx.outputs, path, run_ids, out_dirs)


TABLE_KEYS = ("columns", "rows", "empty_columns", "totals", "parts", "total", "cost")  # from the stored table


def reply_hashes(table_hash: str, reply: Dict[str, Any]) -> Dict[str, str]:
    """What a client that rendered ``reply`` sends back to be told ``unchanged``: the stored table's hash and
    the hash of everything else in the reply (executor, tracking, paths), which is read fresh every call."""
    import hashlib
    import json

    rest = {k: v for k, v in reply.items() if k not in TABLE_KEYS}
    digest = hashlib.sha256((table_hash + json.dumps(rest, sort_keys=True, default=str)).encode()).hexdigest()
    return {"table": table_hash, "reply": digest}


def _tracked(config: Dict[str, Any]) -> bool:
    """The reply's tracking view reads every row's tracking record (so the table's run ids)."""
    return bool(str(config.get("MLFLOW_TRACKING_URI") or "").strip()) or str(config.get("SWEEP_WANDB")) == "1"


def cached_status(ctx: Context) -> Union[Dict[str, Any], Known]:
    """The sweep-status reply from the campaign's stored table when it is current, else what was read on
    the way: (campaign id, its directory, executor state, executor record, file marks, cacheable). A caller
    whose ``known`` hashes (reply_hashes) still hold is answered ``unchanged``, without the table being read."""
    campaign_id, path = campaign_dir(ctx, ctx.args.get("campaign"))
    state, executor = executor_state(path)
    cacheable = state not in LIVE and not ctx.args.get("attempts")  # a concluded campaign: see statuscache
    files = statuscache.campaign_marks(path) if cacheable else []
    asked = ctx.args.get("known")
    known: Dict[str, Any] = asked if isinstance(asked, dict) else {}
    hit = statuscache.lookup(ctx, path, campaign_id, state, files, known.get("table")) if cacheable else None
    if hit is not None and hit["table"] is None and _tracked(hit.get("config") or {}):
        hit = statuscache.lookup(ctx, path, campaign_id, state, files)  # its tracking view needs the run ids
    if hit is None:
        return campaign_id, path, state, executor, files, cacheable
    manifest = {"created_utc": hit.get("created_utc"), "config": hit.get("config") or {}}
    table = hit["table"] or {"columns": [], "rows": [], "empty_columns": [], "totals": {}}
    run_ids = [str(row[0]) for row in table["rows"]]
    reply = status_reply(ctx, campaign_id, path, manifest, state, executor, None, table, run_ids)
    hashes = reply_hashes(str(hit["table_hash"]), reply)
    if hit["table"] is None:
        if hashes["reply"] == known.get("reply"):
            return {"unchanged": True, "hashes": hashes, "campaign_id": campaign_id}
        hit = statuscache.lookup(ctx, path, campaign_id, state, files)  # the rest changed: the whole reply
        if hit is None:
            return campaign_id, path, state, executor, files, cacheable
        table = hit["table"]
        reply = status_reply(ctx, campaign_id, path, manifest, state, executor, None, table,
                             [str(row[0]) for row in table["rows"]])
    return {**reply, "hashes": hashes}


def sweep_status(ctx: Context) -> Dict[str, Any]:
    """The agent's sweep-status op."""
    known = cached_status(ctx)
    if isinstance(known, dict):
        return known
    from .campaignstatus import sweep_status as build

    return build(ctx, known)

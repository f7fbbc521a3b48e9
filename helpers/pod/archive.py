"""Campaign lifecycle and archive: ``archive`` moves finished campaigns (``_campaigns/<id>/``) and the run
dirs they own under ``_archive/<id>/{campaign,runs/<run_id>}`` with an index (``_archive/index.json``);
``archive --restore ID`` moves them back. Nothing is ever deleted; a campaign that is running (its
executor, or any of its runs' supervisors, alive) is never touched, nor is a run dir this tool did not
create (no campaign.json) or one a later campaign took over.

Lifecycle of a campaign: active (running), success (every row ok), failed (a row failed or never
finished), stale (not active, and ended more than STALE_DAYS days ago; its outcome is still kept).
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional, Tuple

from . import proctree, runs
from .campaigns import LIVE, executor_state, root
from .context import Context
from .errors import ExitCode, WorkflowError
from .ids import check_id
from .jsonio import locked, parse_utc, read_json, utc_now, write_json
from .taskstate import read_status

DAY = 86400.0


def archive_root(ctx: Context) -> str:
    return os.path.join(ctx.outputs, "_archive")


def index_path(ctx: Context) -> str:
    return os.path.join(archive_root(ctx), "index.json")


def read_index(ctx: Context) -> Dict[str, Any]:
    data = read_json(index_path(ctx), "archive index")
    if not isinstance(data, dict):
        data = {"schema_version": 1, "campaigns": {}}
    data.setdefault("campaigns", {})
    return data


def _run_live(path: str) -> bool:
    status = read_status(path) or {}
    if status.get("state") in ("running", "pending") and bool(status.get("supervisor_pid")) and \
            proctree.is_alive(status.get("supervisor_pid"), status.get("supervisor_start_time")):
        return True
    from . import stages

    return stages.live(path)  # an evaluation stage still running


def _users(ctx: Context) -> Dict[str, List[Tuple[str, str]]]:
    """run_id -> (campaign, spec hash) of every campaign on the pod that lists it."""
    found: Dict[str, List[Tuple[str, str]]] = {}
    for cid in _campaign_ids(ctx):
        manifest = read_json(os.path.join(root(ctx), cid, "manifest.json"), "campaign manifest") or {}
        for row in manifest.get("rows", []):
            found.setdefault(str(row["run_id"]), []).append((cid, str(row.get("spec_hash"))))
    return found


def lifecycle(ctx: Context, campaign_id: str, users: Optional[Dict[str, List[Tuple[str, str]]]] = None
              ) -> Dict[str, Any]:
    """The campaign's lifecycle state, outcome and which run dirs it owns (and which it does not): a run
    dir another campaign shows as its own row (same spec: it was ok already, so not run again) stays."""
    users = _users(ctx) if users is None else users
    path = os.path.join(root(ctx), campaign_id)
    manifest = read_json(os.path.join(path, "manifest.json"), "campaign manifest") or {}
    state, record = executor_state(path)
    owned: List[str] = []
    left: List[Dict[str, str]] = []
    ok = failed = 0
    live = state in LIVE
    for row in manifest.get("rows", []):
        run_id = str(row["run_id"])
        run_path = runs.run_dir(ctx.outputs, run_id)
        own = runs.owner(run_path) if os.path.isdir(run_path) else None
        done = runs.summary(run_path) if own else None
        if done and done.get("spec_hash") == row.get("spec_hash") and (
                done.get("ok") or done.get("state") == "gated"):  # a gate not met (stages.py) is no failure
            ok += 1
        else:
            failed += 1
        if not own:
            if os.path.exists(run_path):
                left.append({"run_id": run_id, "why": "not created by workflow.sh (no campaign.json)"})
            continue
        if own.get("campaign_id") != campaign_id:
            left.append({"run_id": run_id, "why": f"owned by campaign {own.get('campaign_id')}"})
            continue
        live = live or _run_live(run_path)
        shared = [cid for cid, spec in users.get(run_id, []) if cid != campaign_id and spec == row.get("spec_hash")]
        if shared:
            left.append({"run_id": run_id, "why": f"also a row of campaign {shared[-1]}"})
            continue
        owned.append(run_id)
    ended = record.get("ended_utc") or record.get("heartbeat_utc") or manifest.get("created_utc")
    ended_s = parse_utc(ended)
    age_days = (time.time() - ended_s) / DAY if ended_s else None
    outcome = "success" if failed == 0 and ok else "failed"
    if live:
        phase = "active"
    elif age_days is not None and age_days > ctx.number("STALE_DAYS", 14):
        phase = "stale"
    else:
        phase = outcome
    return {"campaign_id": campaign_id, "lifecycle": phase, "outcome": None if live else outcome,
            "executor": state, "rows": len(manifest.get("rows", [])), "ok": ok, "failed": failed,
            "ended_utc": None if live else ended, "age_days": None if age_days is None else round(age_days, 2),
            "runs": owned, "left": left}


def _campaign_ids(ctx: Context) -> List[str]:
    base = root(ctx)
    names = sorted(os.listdir(base)) if os.path.isdir(base) else []
    return [n for n in names if os.path.isfile(os.path.join(base, n, "manifest.json"))]


def _selected(info: Dict[str, Any], status: str, older_than: Optional[int]) -> Optional[str]:
    """Why a campaign is not archived, or None when it is."""
    if info["lifecycle"] == "active":
        return "running"
    if status != "all" and info["outcome"] != status:
        return f"outcome {info['outcome']}, not {status}"
    if older_than is not None and (info["age_days"] is None or info["age_days"] < older_than):
        return f"ended less than {older_than} day(s) ago"
    return None


def _move(source: str, target: str) -> None:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.exists(target):
        raise WorkflowError(f"archive: {target} already exists; nothing there is replaced", ExitCode.REFUSED)
    os.rename(source, target)


def archive(ctx: Context) -> Dict[str, Any]:
    args = ctx.args
    if args.get("restore"):
        return restore(ctx, check_id(str(args["restore"]), "campaign id"))
    users = _users(ctx)
    infos = [lifecycle(ctx, cid, users) for cid in _campaign_ids(ctx)]
    index = read_index(ctx)
    archived = [{"campaign_id": cid, "lifecycle": "archived", **{k: entry.get(k) for k in (
        "outcome", "rows", "ok", "failed", "ended_utc", "archived_utc", "runs")}}
        for cid, entry in sorted(index["campaigns"].items())]
    if args.get("list_only"):
        return {"campaigns": infos, "archived": archived, "stale_days": ctx.number("STALE_DAYS", 14)}
    status = str(args.get("status") or "all")
    older = args.get("older_than")
    older_than = int(older) if older is not None else None
    plan: List[Dict[str, Any]] = []
    skipped: List[Dict[str, Any]] = []
    for info in infos:
        why = _selected(info, status, older_than)
        (skipped if why else plan).append({**info, "skipped": why} if why else info)
    if args.get("plan_only"):
        return {"plan": plan, "skipped": skipped, "moved": []}
    moved = []
    base = archive_root(ctx)
    with locked(index_path(ctx)):
        index = read_index(ctx)
        for info in plan:
            cid = info["campaign_id"]
            info = lifecycle(ctx, cid)  # again, under the lock: it may have started meanwhile
            if _selected(info, status, older_than):
                skipped.append({**info, "skipped": _selected(info, status, older_than)})
                continue
            home = os.path.join(base, cid)
            if os.path.exists(home) or cid in index["campaigns"]:
                raise WorkflowError(f"archive: {home} already exists (an earlier archive of {cid}); restore or "
                                    "move it first; nothing was moved for this campaign", ExitCode.REFUSED)
            entry = {**{k: info[k] for k in ("outcome", "lifecycle", "rows", "ok", "failed", "ended_utc", "runs",
                                             "left")}, "archived_utc": utc_now(), "state": "moving",
                     "from": {"campaign": os.path.join(root(ctx), cid), "outputs": ctx.outputs}}
            index["campaigns"][cid] = entry
            write_json(index_path(ctx), index)
            for run_id in info["runs"]:
                _move(runs.run_dir(ctx.outputs, run_id), os.path.join(home, "runs", run_id))
            _move(os.path.join(root(ctx), cid), os.path.join(home, "campaign"))
            entry["state"] = "archived"
            write_json(index_path(ctx), index)
            moved.append(info)
    return {"plan": plan, "skipped": skipped, "moved": moved, "archive": base}


def restore(ctx: Context, campaign_id: str) -> Dict[str, Any]:
    home = os.path.join(archive_root(ctx), campaign_id)
    with locked(index_path(ctx)):
        index = read_index(ctx)
        entry = index["campaigns"].get(campaign_id)
        if not entry or not os.path.isdir(os.path.join(home, "campaign")):
            known = ", ".join(sorted(index["campaigns"])[-5:]) or "none"
            raise WorkflowError(f"archive --restore: no archived campaign {campaign_id!r} (archived: {known})",
                                ExitCode.NOT_FOUND)
        runs_home = os.path.join(home, "runs")
        names = sorted(os.listdir(runs_home)) if os.path.isdir(runs_home) else []
        taken = [n for n in names if os.path.exists(runs.run_dir(ctx.outputs, n))]
        target = os.path.join(root(ctx), campaign_id)
        if os.path.exists(target):
            taken.insert(0, target)
        if taken:
            raise WorkflowError(f"archive --restore {campaign_id}: {', '.join(taken[:5])} exist(s) on the pod "
                                "again; nothing was moved (move those aside first)", ExitCode.REFUSED)
        if ctx.args.get("plan_only"):
            return {"restored": None, "plan": {"campaign_id": campaign_id, "runs": names}}
        for name in names:
            _move(os.path.join(runs_home, name), runs.run_dir(ctx.outputs, name))
        _move(os.path.join(home, "campaign"), target)
        for empty in (runs_home, home):  # the folders this tool made for it, empty now
            if os.path.isdir(empty) and not os.listdir(empty):
                os.rmdir(empty)
        del index["campaigns"][campaign_id]
        index.setdefault("restored", []).append({"campaign_id": campaign_id, "restored_utc": utc_now(),
                                                 "runs": names})
        write_json(index_path(ctx), index)
    return {"restored": campaign_id, "runs": names}

"""Parts of one sweep in one campaign: ``sweep-start --index-offset N --num-jobs M``.

A part submits rows N..N+M-1 of the sweep (0-based, of the rows SWEEP_MATCH selects;
SWEEP_START_AT=<run_id> / SWEEP_LIMIT=M are the same part, sweep_csv.select_part).
The first part creates the campaign with *every* row of the sweep in its manifest; ``parts.json``
in the campaign directory says which rows each part submitted (and as which executor generation).
A later part of the same sweep (same run ids and specs, same executor) joins the newest such campaign
that still has rows not submitted, as a new generation: on Slurm while the earlier parts still run
(new job arrays, the campaign's ``%`` throttle chained on to them, deferred at the cluster's submit
limits counting the user's jobs already queued); on the tmux executor once the earlier part's executor
has ended (one executor per pod, refused in one line before). Rows never submitted show
``unsubmitted``; sweep-resume reruns the unfinished rows of the parts submitted, never the others.

Also the submit room (``submit_room``): a QOS's MaxSubmitJobs / the cluster's MaxJobCount minus the
jobs already in the queue, so a chunk that does not fit is deferred instead of refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from typing import Any, Dict, List, Optional, Set, Tuple

from ..errors import ExitCode, WorkflowError
from ..jsonio import locked, read_json, utc_now, write_json

PARTS_FILE = "parts.json"
UNSUBMITTED = "unsubmitted"
SCAN_NEWEST = 200  # campaigns looked at, newest first, for one to join


def sweep_key(rows: List[Dict[str, Any]], kind: str) -> str:
    """The sweep's identity: its run ids and specs, in order, and the executor."""
    text = json.dumps([kind, [[str(r["run_id"]), r.get("spec_hash")] for r in rows]])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _parts_path(campaign_dir: str) -> str:
    return os.path.join(campaign_dir, PARTS_FILE)


def read_parts(campaign_dir: str) -> Optional[Dict[str, Any]]:
    record = read_json(_parts_path(campaign_dir), "campaign parts")
    return record if isinstance(record, dict) else None


def submitted(campaign_dir: str) -> Optional[Set[int]]:
    """Manifest row indices some part submitted; None for a campaign not started in parts (all rows)."""
    record = read_parts(campaign_dir)
    if record is None:
        return None
    return {int(i) for part in record.get("parts", []) for i in part.get("rows", [])}


def generation_rows(campaign_dir: str, generation: int) -> Optional[Set[int]]:
    """The rows an executor generation runs: a part's own rows; a resume's: every row submitted so far;
    None (every row) for a campaign not started in parts."""
    record = read_parts(campaign_dir)
    if record is None:
        return None
    for part in record.get("parts", []):
        if int(part.get("generation", 0)) == generation:
            return {int(i) for i in part.get("rows", [])}
    return {int(i) for part in record.get("parts", []) for i in part.get("rows", [])}


def part_indices(total: int, part: Dict[str, Any]) -> List[int]:
    """Validated once more on the pod (the client checks first): offset within the sweep, count >= 1."""
    offset, count = int(part.get("offset") or 0), part.get("count")
    if offset < 0 or offset >= total:
        raise WorkflowError(f"--index-offset {offset} is past the sweep's last row (it has {total} row(s): offsets "
                            f"0-{total - 1}); pick a smaller --index-offset", ExitCode.USAGE)
    if count is not None and int(count) < 1:
        raise WorkflowError(f"--num-jobs {count} submits nothing; use a positive number of rows", ExitCode.USAGE)
    end = total if count is None else min(total, offset + int(count))
    return list(range(offset, end))


def _ranges(indices: List[int]) -> str:
    """[0,1,2,5] -> '1-3, 6' (1-based row positions, as the user counts them)."""
    out: List[Tuple[int, int]] = []
    for i in sorted(indices):
        if out and out[-1][1] == i - 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return ", ".join(f"{a + 1}" if a == b else f"{a + 1}-{b + 1}" for a, b in out)


def find_joinable(outputs: str, key: str) -> Optional[Tuple[str, str]]:
    """(campaign id, dir) of the newest campaign of this sweep started in parts that has rows not submitted."""
    root = os.path.join(outputs, "_campaigns")
    names = sorted(os.listdir(root), reverse=True)[:SCAN_NEWEST] if os.path.isdir(root) else []
    for name in names:
        path = os.path.join(root, name)
        record = read_parts(path)
        if not record or record.get("sweep_key") != key:
            continue
        done = {int(i) for part in record.get("parts", []) for i in part.get("rows", [])}
        if len(done) < int(record.get("total") or 0):
            return name, path
    return None


def plan(outputs: str, rows: List[Dict[str, Any]], part: Dict[str, Any], kind: str) -> Dict[str, Any]:
    """What this part does: the campaign it joins (None: a new one), its part number, the rows it submits and
    those of its range an earlier part already submitted. Refuses a part with nothing new to submit."""
    wanted = part_indices(len(rows), part)
    key = sweep_key(rows, kind)
    found = find_joinable(outputs, key)
    done: Set[int] = set()
    number = 1
    if found:
        record = read_parts(found[1]) or {}
        done = {int(i) for p in record.get("parts", []) for i in p.get("rows", [])}
        number = len(record.get("parts", [])) + 1
    new = [i for i in wanted if i not in done]
    if not new:
        left = sorted(set(range(len(rows))) - done)
        raise WorkflowError(
            f"rows {_ranges(wanted)} of this sweep were already submitted in campaign {found[0] if found else '?'}; "
            f"the rows not submitted yet start at --index-offset {left[0]} (SWEEP_START_AT={rows[left[0]]['run_id']}, "
            f"{len(left)} row(s)); rerun failed rows "
            "with workflow.sh sweep-resume", ExitCode.REFUSED)
    return {"join": found[0] if found else None, "part": number, "rows": new, "key": key, "total": len(rows),
            "offset": wanted[0], "count": len(wanted), "already": [i for i in wanted if i in done],
            "run_ids": [str(rows[i]["run_id"]) for i in new],
            "next_run_id": str(rows[wanted[-1] + 1]["run_id"]) if wanted[-1] + 1 < len(rows) else None}


def record_part(campaign_dir: str, planned: Dict[str, Any], generation: int) -> None:
    """Add the part to parts.json (under a lock) before its rows are started."""
    path = _parts_path(campaign_dir)
    with locked(path):
        record = read_parts(campaign_dir) or {"schema_version": 1, "sweep_key": planned["key"],
                                              "total": planned["total"], "parts": []}
        record["parts"].append({"part": len(record["parts"]) + 1, "generation": generation,
                                "offset": planned["offset"], "count": planned["count"], "rows": planned["rows"],
                                "utc": utc_now()})
        write_json(path, record)


def mark_unsubmitted(campaign_dir: str, views: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Rows no part submitted show ``unsubmitted``; returns the parts summary for sweep-status (or {})."""
    record = read_parts(campaign_dir)
    if record is None:
        return {}
    done = {int(i) for part in record.get("parts", []) for i in part.get("rows", [])}
    left = [i for i in range(len(views)) if i not in done]
    for i in left:
        views[i].update(state=UNSUBMITTED, attempts=0)
    return {"parts": [{"part": p["part"], "rows": _ranges(p["rows"]), "utc": p.get("utc")}
                      for p in record.get("parts", [])], "unsubmitted": len(left),
            "next_offset": left[0] if left else None, "next_run_id": views[left[0]].get("run_id") if left else None}


def refuse_tmux_join(campaign_id: str, state: str) -> None:
    """One executor per pod: a tmux campaign takes its next part once the earlier part's executor ended."""
    if state in ("running", "starting", "stopping"):
        raise WorkflowError(f"campaign {campaign_id} is still running its earlier part in tmux; the tmux executor "
                            "takes the next part once it ends (watch with workflow.sh sweep-status), or use "
                            "SWEEP_EXECUTOR=slurm to queue parts while others run", ExitCode.REFUSED)


def retire_final(campaign_dir: str, generation: int) -> None:
    """A new part or resume of a concluded Slurm campaign: its end is recorded again when these rows end."""
    final = os.path.join(campaign_dir, "slurm", "final.json")
    with locked(final):
        if os.path.exists(final):
            os.replace(final, os.path.join(campaign_dir, "slurm", f"final-before-{generation:03d}.json"))


# ----------------------------------------------------------------------------- submit room


def _count(argv: List[str]) -> Optional[int]:
    try:
        result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return len([line for line in result.stdout.splitlines() if line.strip()]) if result.returncode == 0 else None


def qos_limits(qos: str) -> Dict[str, int]:
    """Slurm's reason name of each submit limit of ``qos`` -> its value (sacctmgr; {} when unknown)."""
    if not qos or not shutil.which("sacctmgr"):
        return {}
    names = ("QOSMaxSubmitJobPerUserLimit", "QOSMaxSubmitJobPerAccountLimit", "QOSGrpSubmitJobsLimit")
    try:
        result = subprocess.run(["sacctmgr", "-n", "-P", "show", "qos", qos, "format=MaxSubmitPU,MaxSubmitPA,"
                                 "GrpSubmit"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    fields = (result.stdout.strip().splitlines() or [""])[0].split("|") if result.returncode == 0 else []
    return {name: int(value) for name, value in zip(names, fields) if value.strip().isdigit()}


def submit_room(qos: str, max_job_count: Optional[int]) -> Optional[Tuple[int, str]]:
    """(array tasks that may be submitted now, the binding limit's name): the QOS's submit limits minus the
    user's jobs already queued (every array task counts), MaxJobCount minus the cluster's; None: no limit."""
    best: Optional[Tuple[int, str]] = None
    limits = qos_limits(qos)
    if limits:
        mine = _count(["squeue", "-h", "-r", "--me", f"--qos={qos}", "-o", "%i"])  # every array task counts
        for name, value in limits.items():
            room = value - (mine or 0)
            if best is None or room < best[0]:
                best = (room, name)
    if max_job_count:
        everyone = _count(["squeue", "-h", "-o", "%i"])  # job records: a pending array is one until split
        room = max_job_count - (everyone or 0)
        if best is None or room < best[0]:
            best = (room, "MaxJobCount")
    return best

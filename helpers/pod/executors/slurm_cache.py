"""sacct's answers about finished array jobs, kept in the campaign (``slurm/sacct-cache.json``).

Once every task of a campaign's array job has a final state in sacct (COMPLETED, FAILED, CANCELLED,
TIMEOUT, ... : nothing Slurm still holds), that job's records never change again: they are written
here, and later sweep-status calls ask sacct only about the jobs not finished yet (none at all when
the whole campaign has ended). The one squeue of each call still overlays the live view, so a
finished job brought back (``scontrol requeue``) shows its new state, and leaves the cache.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Tuple

from ..jsonio import locked, read_json, write_bytes
from . import slurm_state

CACHE = "sacct-cache.json"

View = Dict[Tuple[str, int], Dict[str, Any]]


def _path(campaign_dir: str) -> str:
    return os.path.join(campaign_dir, "slurm", CACHE)


def load(campaign_dir: str) -> Dict[str, Dict[str, Any]]:
    """job id -> {array index (str) -> sacct record} of the jobs whose every task has ended."""
    try:
        record = read_json(_path(campaign_dir), "sacct cache")
    except Exception:  # a torn or foreign file: ask sacct again
        return {}
    return dict(record.get("jobs") or {}) if isinstance(record, dict) else {}


def scheduler_view(campaign_dir: str, campaign_id: str, sizes: Dict[str, int]) -> Tuple[View, str, bool]:
    """As slurm_state.scheduler_view, with sacct asked only about the jobs not cached as ended; and whether
    every job's end now is in the cache (nothing Slurm holds: the view changes only with this file)."""
    cached = {job: tasks for job, tasks in load(campaign_dir).items() if job in sizes}
    ask = {job: n for job, n in sizes.items() if job not in cached}
    view, note = slurm_state.scheduler_view(campaign_id, ask)
    live = {key for key, info in view.items() if str(info.get("state") or "") in slurm_state.LIVE}
    requeued = {job for job, _ in live if job in cached}  # back in Slurm's hands: ask sacct again next time
    for job, tasks in cached.items():
        for index, record in tasks.items():
            view.setdefault((job, int(index)), dict(record))  # the squeue overlay (a live task) wins
    if note:
        return view, note, False  # no sacct: nothing new is known to be final
    ended = {}
    for job, size in ask.items():
        tasks = {str(i): view.get((job, i)) for i in range(size)}
        if all(t and t.get("state") and t["state"] not in slurm_state.LIVE for t in tasks.values()):
            ended[job] = tasks
    if ended or requeued:
        with locked(_path(campaign_dir)):
            jobs = {j: t for j, t in load(campaign_dir).items() if j not in requeued}
            jobs.update(ended)
            text = json.dumps({"schema_version": 1, "jobs": jobs}, separators=(",", ":"))  # compact: 10,000 tasks
            write_bytes(_path(campaign_dir), text.encode("utf-8"), 0o644, False)
    return view, note, not live and len(ended) == len(ask)

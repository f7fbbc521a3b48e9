"""BUDGET_USD on the Slurm executor (stdlib only): each array task is an executor of one row, so before
its row starts it counts what the whole campaign has spent (helpers/pod/cost.py's rule, campaign-wide):
the recorded costs of the rows that concluded in this campaign plus the time so far of the rows running
in other array tasks. Past the budget its row is not started: it is marked ``budget`` in the campaign's
index.json (under its lock; sweep-status shows it, the campaign concludes with it as not run) and
sweep-resume runs it again (its array task takes the mark away when it starts).
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List

from .. import runs
from ..cost import usd
from ..jsonio import locked, parse_utc, read_json, write_json
from ..taskstate import is_terminal, read_status


def campaign_spent(outputs: str, campaign_id: str, rows: List[Dict[str, Any]], own: int, price: Any,
                   pod_slots: int) -> float:
    """USD the campaign's other rows spent so far (concluded: their summaries' costs; running: their time)."""
    spent, now = 0.0, time.time()
    for number, row in enumerate(rows):
        if number == own:
            continue
        path = runs.run_dir(outputs, str(row["run_id"]))
        done = runs.summary(path)
        if done and done.get("campaign_id") == campaign_id and done.get("spec_hash") == row.get("spec_hash"):
            spent += float((done.get("cost") or {}).get("usd") or 0.0)
            continue
        status = read_status(path) or {}
        owner = runs.owner(path) if os.path.isdir(path) else None
        if not owner or owner.get("campaign_id") != campaign_id or is_terminal(status.get("state", "pending")):
            continue
        start = parse_utc(status.get("started_utc") or status.get("created_utc"))
        if start and now > start:
            spent += usd(now - start, price, pod_slots) or 0.0
    return spent


def _index(campaign_path: str) -> str:
    return os.path.join(campaign_path, "index.json")


def mark_held(campaign_path: str, entries: Dict[str, Any]) -> None:
    with locked(_index(campaign_path)):
        index = read_json(_index(campaign_path), "campaign index") or {}
        index.update(entries)
        write_json(_index(campaign_path), index)


def clear_held(campaign_path: str, run_id: str) -> None:
    """The row runs now (a resume): its `budget` mark no longer holds."""
    if not os.path.exists(_index(campaign_path)):
        return
    with locked(_index(campaign_path)):
        index = read_json(_index(campaign_path), "campaign index") or {}
        if (index.get(run_id) or {}).get("state") == "budget":
            del index[run_id]
            write_json(_index(campaign_path), index)


def held(campaign_path: str, run_id: str) -> bool:
    index = read_json(_index(campaign_path), "campaign index") or {}
    return isinstance(index.get(run_id), dict) and index[run_id].get("state") == "budget"

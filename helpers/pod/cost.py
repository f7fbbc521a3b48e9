"""What a campaign costs, on the pod (stdlib only): each row's cost, spend so far, projection, budget.

The price is the pod's per hour: the campaign manifest's ``price`` (set at sweep-start: the Lium
API's price for a Lium pod) or POD_PRICE_PER_HOUR. It is split evenly over the pod's slots (GPUs,
or CPU slots), so a row's cost is its slot-seconds (each attempt's duration x the slots it held)
x the price per slot-second. No price: every cost is None (shown as unknown, never as $0).
The pod's idle time (slot-seconds of the campaign's wall time no row held) is reported beside it.

Idle share: when an executor pass ends, the pod's idle slot-seconds of that pass (its wall time from
the executor's start to its end x the pod's slots, less the slot-seconds the rows' attempts of this
pass held) are split over the rows that pass concluded, in proportion to each row's slot-seconds in
the pass (evenly when none held any time). Each such row's summary.json ``cost`` then has
``busy_usd`` (its own slot time), ``idle_share_slot_seconds``/``idle_share_usd`` and ``usd`` = the
two together, so the rows' costs add up to the pod's bill for the pass. Rows never started (e.g.
``budget``) bear no share. A row's cost before its pass ends is its busy cost only.

BUDGET_USD: the executor starts no new row once the spend so far plus the projected remainder of
the running rows (from the mean duration of the rows finished so far) reaches it; the rows left are
marked ``budget``. BUDGET_HARD=1 also stops the running rows at the cap.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional

from .jsonio import parse_utc, read_json, write_json


def price_per_hour(manifest: Dict[str, Any]) -> Optional[float]:
    given = (manifest.get("price") or {}).get("per_hour") if isinstance(manifest.get("price"), dict) else None
    text = given if given is not None else (manifest.get("config") or {}).get("POD_PRICE_PER_HOUR")
    try:
        value = float(text) if text not in (None, "") else None
    except (TypeError, ValueError):
        return None
    return value if value is not None and value > 0 else None


def price_source(manifest: Dict[str, Any]) -> str:
    price = manifest.get("price")
    if isinstance(price, dict) and price.get("per_hour") is not None:
        return str(price.get("source") or "sweep-start")
    return "POD_PRICE_PER_HOUR" if price_per_hour(manifest) is not None else ""


def slot_seconds(attempts: List[Dict[str, Any]], now: Optional[float] = None) -> float:
    """Each attempt's duration x the slots it held (an attempt still going counts up to ``now``)."""
    total = 0.0
    for attempt in attempts:
        start = parse_utc(attempt.get("started_utc"))
        end = parse_utc(attempt.get("ended_utc")) or (now if now is not None else None)
        if start and end and end > start:
            total += (end - start) * max(1, len(attempt.get("slots") or []) or 1)
    return total


def usd(slot_s: float, price: Optional[float], pod_slots: int) -> Optional[float]:
    if price is None:
        return None
    return round(slot_s * price / 3600.0 / max(1, pod_slots), 6)


def row_cost(attempts: List[Dict[str, Any]], price: Optional[float], pod_slots: int) -> Dict[str, Any]:
    """summary.json's ``cost``."""
    busy = slot_seconds(attempts)
    busy_usd = usd(busy, price, pod_slots)
    return {"usd": busy_usd, "busy_usd": busy_usd, "slot_seconds": round(busy, 1), "price_per_hour": price,
            "pod_slots": pod_slots, "currency": "USD"}


def budget_limit(config: Dict[str, Any]) -> Optional[float]:
    try:
        value = float(config.get("BUDGET_USD") or 0)
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None


def current_budget(config: Dict[str, str], env_file: str) -> tuple[Optional[float], bool]:
    """(BUDGET_USD, BUDGET_HARD) as the pod env file has them now (sweep-resume syncs it: a budget raised
    for a resume holds), else as the campaign started."""
    from .context import read_env_file

    values = {**config, **{k: v for k, v in read_env_file(env_file).items() if k in ("BUDGET_USD", "BUDGET_HARD")}}
    return budget_limit(values), values.get("BUDGET_HARD", "0") in ("1", "true", "True", "yes")


class Spend:
    """The executor's running account of one pass: concluded rows' costs and the running rows'."""

    def __init__(self, price: Optional[float], pod_slots: int) -> None:
        self.price = price
        self.pod_slots = pod_slots
        self.concluded: Dict[str, float] = {}  # run_id -> usd
        self.durations: List[float] = []  # finished rows' busy time per slot (for the projection)
        self.started = time.time()  # this executor pass's start: its wall time bounds the pod's idle time
        self.rows: Dict[str, tuple[str, float]] = {}  # run_id -> (run dir, slot-seconds in this pass)
        self.others = 0.0  # USD spent by rows other executors run (a Slurm array task: the rest of the campaign)

    def seed(self, index: Dict[str, Any]) -> None:
        for run_id, entry in index.items():
            if isinstance(entry, dict) and entry.get("cost_usd") is not None:
                self.concluded[run_id] = float(entry["cost_usd"])
            if isinstance(entry, dict) and entry.get("duration_s"):
                self.durations.append(float(entry["duration_s"]))

    def conclude(self, run_id: str, cost: Dict[str, Any], duration_s: Optional[float]) -> None:
        if cost.get("usd") is not None:
            self.concluded[run_id] = float(cost["usd"])
        if duration_s:
            self.durations.append(float(duration_s))

    def running(self, active: List[Any], now_utc: float) -> tuple[float, float]:
        """(spent so far by the running rows, their projected remainder) in USD."""
        spent = projected = 0.0
        mean = sum(self.durations) / len(self.durations) if self.durations else None
        for rr in active:
            attempts = getattr(rr, "attempts", [])
            spent += usd(slot_seconds(attempts, now_utc), self.price, self.pod_slots) or 0.0
            if mean is not None and attempts:
                start = parse_utc(attempts[0].get("started_utc")) or now_utc
                left = max(0.0, mean - (now_utc - start)) * max(1, len(getattr(rr, "slots", []) or [1]))
                projected += usd(left, self.price, self.pod_slots) or 0.0
        return spent, projected

    def over(self, limit: Optional[float], active: List[Any], hard: bool = False) -> Optional[str]:
        """Why no new row may start (None: it may), or, with ``hard``, why running rows must stop."""
        if limit is None or self.price is None:
            return None
        spent_running, projected = self.running(active, time.time())
        spent = sum(self.concluded.values()) + self.others + spent_running
        if hard:
            return f"BUDGET_USD={limit:g} reached: spent ${spent:.4f}" if spent >= limit else None
        if spent + projected >= limit:
            return (f"BUDGET_USD={limit:g}: spent ${spent:.4f} + projected ${projected:.4f} for the running rows "
                    "would pass it")
        return None


def campaign_cost(manifest: Dict[str, Any], executor: Dict[str, Any], views: List[Dict[str, Any]]) -> Dict[str, Any]:
    """sweep-status's ``cost``: spent so far (rows' recorded costs + the running rows' time), the
    projection for the rows left (from the finished rows' mean duration), the pod's idle slot time."""
    price = price_per_hour(manifest)
    slots = len(executor.get("slots") or []) or 1
    spent = 0.0
    busy = 0.0
    durations = []
    left = 0
    for view in views:
        if view.get("from_campaign"):
            continue  # ok in an earlier campaign: its cost is that campaign's
        state = view.get("state")
        if state in ENDED:
            recorded = view.get("cost_usd")
            if recorded is None and view.get("duration_s"):  # its summary is being written: one slot assumed
                recorded = usd(float(view["duration_s"]), price, slots)
            spent += float(recorded or 0.0)
            if view.get("duration_s"):
                durations.append(float(view["duration_s"]))
                busy += float(view["duration_s"])
        else:
            left += 1
            if view.get("duration_s"):  # running: its time so far, one slot assumed
                busy += float(view["duration_s"])
                spent += usd(float(view["duration_s"]), price, slots) or 0.0
    mean = sum(durations) / len(durations) if durations else None
    start = parse_utc(executor.get("started_utc"))
    end = parse_utc(executor.get("ended_utc")) or time.time()
    wall = (end - start) * slots if start and end > start else None
    return {"price_per_hour": price, "price_source": price_source(manifest),
            "spent_usd": round(spent, 6) if price is not None else None, "rows_left": left,
            "projected_usd": usd(mean * left, price, slots) if mean is not None else None,
            "projected_from_rows": len(durations),
            "idle_slot_seconds": round(max(0.0, wall - busy), 1) if wall is not None else None,
            "budget_usd": budget_limit(manifest.get("config") or {})}


ENDED = ("ok", "failed", "timed_out", "stalled", "cancelled", "lost", "budget")


# ----------------------------------------------------------------------------- the executor's hooks


def with_cost(executor: Any, rr: Any, done: Dict[str, Any], run_path: str) -> Dict[str, Any]:
    """summary.json gets the row's cost (None without a price: unknown, never $0)."""
    spend = getattr(executor, "spend", None) or Spend(price_per_hour(executor.manifest), len(executor.slots) or 1)
    done["cost"] = row_cost(done.get("attempt_history") or rr.attempts, spend.price, spend.pod_slots)
    write_json(os.path.join(run_path, "summary.json"), done)
    spend.conclude(rr.run_id, done["cost"], done.get("duration_s"))
    spend.rows[rr.run_id] = (run_path, slot_seconds(rr.attempts))
    return done


def idle_shares(idle: float, weights: Dict[str, float]) -> Dict[str, float]:
    """The idle slot-seconds split over the rows by their slot-seconds (evenly when all are 0)."""
    total = sum(weights.values())
    if not weights:
        return {}
    return {k: idle * w / total if total > 0 else idle / len(weights) for k, w in weights.items()}


def split_idle(executor: Any, now: Optional[float] = None) -> float:
    """At the pass's end: each concluded row's summary.json and index entry get its idle share (see the
    module's docstring). Returns the idle slot-seconds split."""
    spend = getattr(executor, "spend", None)
    if spend is None or not spend.rows:
        return 0.0
    weights = {run_id: slot_s for run_id, (_, slot_s) in spend.rows.items()}
    wall = max(0.0, ((now if now is not None else time.time()) - spend.started) * spend.pod_slots)
    idle = max(0.0, wall - sum(weights.values()))
    for run_id, share in idle_shares(idle, weights).items():
        path = os.path.join(spend.rows[run_id][0], "summary.json")
        done = read_json(path, "summary")
        if not isinstance(done, dict) or not isinstance(done.get("cost"), dict):
            continue
        row = done["cost"]
        busy = row.get("busy_usd")  # the row's own slot time, set with the cost: a second split never adds twice
        idle_usd = usd(share, spend.price, spend.pod_slots)
        row.update(busy_usd=busy, idle_share_slot_seconds=round(share, 1), idle_share_usd=idle_usd,
                   usd=None if busy is None or idle_usd is None else round(busy + idle_usd, 6),
                   idle_split="by slot-seconds")
        write_json(path, done)
        entry = executor.index.get(run_id)
        if isinstance(entry, dict):
            entry["cost_usd"] = row["usd"]
    return idle


def budget_hold(executor: Any, todo: List[Any], active: List[Any], why: Optional[str] = None) -> bool:
    """BUDGET_USD: no new row once spent + the running rows' projected remainder reaches it; the rows
    left are marked `budget` in the campaign index (sweep-resume runs them, e.g. with a higher budget)."""
    why = why or (executor.spend.over(executor.budget[0], active) if todo else None)
    if why is None or not todo:
        return False
    for rr in todo:
        executor.index[rr.run_id] = {"ok": False, "state": "budget", "failure_class": None, "attempts": 0,
                                     "duration_s": None, "started_utc": None, "ended_utc": None, "val_loss": None,
                                     "reason_line": f"not started: {why}"}
        executor.event("run-end", run_id=rr.run_id, ok=False, state="budget", reason=why)
    executor.say(f"{why}: not starting {len(todo)} row(s) ({', '.join(r.run_id for r in todo[:5])})")
    executor.held.extend(todo)
    executor._write_index()
    return True

"""What one refresh of sweep-watch knows: the pod's sweep-watch-data reply, merged into a history.

The model remembers each running row's metrics.jsonl byte offset (sent back on the next call, so the
pod reads only the new lines) and the last N points of its losses, for the sparklines. Pure logic: no
terminal, no SSH.
"""

from __future__ import annotations

from typing import Any

from helpers.cmd_sweeps import FAILED_STATES, LIVE, expand_rows

HISTORY = 60  # points kept per row (and asked for on a row's first read)
SPARKS = "▁▂▃▄▅▆▇█"
TRAIN_KEYS = ("train_loss", "loss")
RATE_KEYS = ("tokens_per_sec", "tokens_per_s")


def sparkline(values: list[float], width: int = 12) -> str:
    """The last ``width`` values as unicode blocks, lowest ▁ to highest █ (flat: all ▄)."""
    shown = [v for v in values if v == v][-width:]  # NaN dropped
    if not shown:
        return ""
    low, high = min(shown), max(shown)
    if high - low < 1e-12:
        return SPARKS[3] * len(shown)
    return "".join(SPARKS[min(7, int((v - low) / (high - low) * 7.999))] for v in shown)


def _first(point: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    for key in keys:
        if isinstance(point.get(key), (int, float)):
            return float(point[key])
    return None


class RowHistory:
    __slots__ = ("offset", "points", "max_steps")

    def __init__(self) -> None:
        self.offset: int | None = None
        self.points: list[dict[str, Any]] = []
        self.max_steps: int | None = None

    def merge(self, data: dict[str, Any]) -> None:
        if data.get("reset"):
            self.points = []
        self.points = (self.points + list(data.get("points") or []))[-HISTORY:]
        self.offset = int(data.get("offset") or 0)
        self.max_steps = data.get("max_steps") or self.max_steps

    def series(self, keys: tuple[str, ...]) -> list[float]:
        return [v for v in (_first(p, keys) for p in self.points) if v is not None]

    def step(self) -> int | None:
        for point in reversed(self.points):
            value = _first(point, ("iter", "step"))
            if value is not None:
                return int(value)
        return None


class WatchModel:
    """The sweep as last seen, and what to ask the pod next time."""

    def __init__(self, campaign: str | None) -> None:
        self.campaign = campaign
        self.history: dict[str, RowHistory] = {}
        self.status: dict[str, Any] | None = None

    def request(self) -> dict[str, Any]:
        cursors = {run_id: h.offset for run_id, h in self.history.items() if h.offset is not None}
        return {"campaign": self.campaign, "cursors": cursors, "points": HISTORY}

    def merge(self, reply: dict[str, Any]) -> None:
        metrics = reply.pop("metrics", {}) or {}
        self.status = expand_rows(reply)
        self.campaign = self.campaign or reply.get("campaign_id")
        for run_id, data in metrics.items():
            self.history.setdefault(run_id, RowHistory()).merge(data)

    @property
    def live(self) -> bool:
        return self.status is not None and self.status["executor"]["state"] in LIVE

    def rows(self) -> list[dict[str, Any]]:
        """Each row's view: the status row plus step, max, ETA, losses, sparklines, tokens/s, stage."""
        assert self.status is not None
        shown = []
        for row in self.status["rows"]:
            history = self.history.get(row["run_id"])
            view = dict(row)
            view.update(row_metrics(row, history))
            shown.append(view)
        return shown


def stage_of(state: str, step: int | None, maximum: int | None) -> str:
    if state == "ok":
        return "done"
    if state in FAILED_STATES:
        return "ended"
    if state in ("queued", "missing"):
        return "wait"
    if state == "retrying":
        return "retry"
    if step is None:
        return "start"
    if maximum and step >= maximum:
        return "final"
    return "train"


def row_metrics(row: dict[str, Any], history: RowHistory | None) -> dict[str, Any]:
    step = history.step() if history else None
    maximum = history.max_steps if history else None
    train = history.series(TRAIN_KEYS) if history else []
    val = history.series(("val_loss",)) if history else []
    rate = history.series(RATE_KEYS) if history else []
    eta = None
    elapsed = row.get("duration_s")
    if step and maximum and elapsed and step < maximum and row["state"] == "running":
        eta = float(elapsed) * (maximum - step) / step
    last_val = val[-1] if val else row.get("val_loss")
    return {"step": step, "max_steps": maximum, "eta_s": eta, "train_loss": train[-1] if train else None,
            "val_loss": last_val, "train_spark": sparkline(train), "val_spark": sparkline(val),
            "tokens_per_s": rate[-1] if rate else None, "stage": stage_of(str(row["state"]), step, maximum)}


def order(rows: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """The view's order: ``all`` (campaign order), ``failed`` (failed first), ``running`` (running only)."""
    if mode == "running":
        return [r for r in rows if r["state"] in ("running", "pending", "retrying")]
    if mode == "failed":
        return sorted(rows, key=lambda r: (r["state"] not in FAILED_STATES, r["state"] != "running"))
    return rows

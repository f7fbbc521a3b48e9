"""Cost, client side: the pod's price (Lium API or POD_PRICE_PER_HOUR), the status line, estimates.

The pod side (helpers/pod/cost.py) computes each row's cost into its summary.json and the
campaign's spend/projection/idle time for sweep-status; this module finds the price at sweep-start
(a Lium pod: its price from the Lium SDK, per GPU x its GPUs) and words the figures. A price nobody
knows is shown as unknown, never as $0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from helpers.errors import WorkflowError

if TYPE_CHECKING:
    from helpers.session import Session


def lium_price(session: Session) -> float | None:
    """The Lium pod's price per hour from the API (None when it cannot be read or is not priced)."""
    cfg = session.cfg
    if cfg.target != "lium" or not cfg.text("LIUM_TARGET"):
        return None
    try:
        from helpers.cmd_lium import lium_settings
        from helpers.lium_api import client_for, list_pods, select_pod

        client = client_for(lium_settings(cfg))
        pod = select_pod([p for p, _ in list_pods(client, "reading the pod's price")], cfg.text("LIUM_TARGET"))
    except WorkflowError:
        return None
    return pod.price_per_hour


def price_of(session: Session) -> tuple[float | None, str]:
    """(USD per hour, where it came from); POD_PRICE_PER_HOUR wins over the Lium API's price."""
    value = session.cfg["POD_PRICE_PER_HOUR"]
    if isinstance(value, float):
        return value, "POD_PRICE_PER_HOUR"
    price = lium_price(session)
    return (price, "the Lium API") if price else (None, "")


def start_args(session: Session) -> dict[str, Any]:
    """sweep-start's ``price`` argument (kept in the campaign manifest for the executor)."""
    price, source = price_of(session)
    return {"price": {"per_hour": price, "source": source} if price else None}


def money(value: float | None) -> str:
    if value is None:
        return "unknown"
    return f"${value:.2f}" if value >= 1 else f"${value:.4f}"


def cost_line(status: dict[str, Any]) -> str:
    """sweep-status's cost line."""
    cost = status.get("cost")
    if not isinstance(cost, dict):
        return ""
    idle = cost.get("idle_slot_seconds")
    idle_text = f"; pod idle {idle:.0f} slot-s" if isinstance(idle, (int, float)) else ""
    budget = f"; budget {money(cost.get('budget_usd'))}" if cost.get("budget_usd") else ""
    if cost.get("price_per_hour") is None:
        return f"cost: unknown (no price: set POD_PRICE_PER_HOUR){idle_text}{budget}"
    left = cost.get("rows_left") or 0
    if not left:
        projection = "nothing left to run"
    elif cost.get("projected_usd") is None:
        projection = f"projection for {left} row(s) left: unknown (no row finished yet)"
    else:
        projection = (f"~{money(cost['projected_usd'])} more for {left} row(s) left (from "
                      f"{cost.get('projected_from_rows')} finished row(s))")
    return (f"cost: spent {money(cost.get('spent_usd'))} so far, {projection}; price "
            f"{money(cost['price_per_hour'])}/h ({cost.get('price_source')}){idle_text}{budget}")


def estimate_lines(session: Session, latest_status: Callable[[], Any]) -> list[str]:
    """The campaign's cost estimate (flow and sweep-start --dry-run): the price, and rows x the mean
    duration of the latest campaign's finished rows (earlier runs of the same config), when there are any."""
    price, source = price_of(session)
    lines = [f"price: {money(price)}/h ({source})" if price else "price: unknown (set POD_PRICE_PER_HOUR)"]
    try:
        from helpers.cmd_sweeps import load_selected_rows

        _, rows = load_selected_rows(session)
    except WorkflowError as exc:
        return [*lines, f"cost estimate: unknown ({exc.message})"]
    durations: list[float] = []
    slots = 1
    status = latest_status()
    if isinstance(status, dict):
        slots = len((status.get("executor") or {}).get("slots") or []) or 1
        durations = [float(r["duration_s"]) for r in status.get("rows") or []
                     if isinstance(r, dict) and r.get("state") == "ok" and r.get("duration_s")]
    if not durations:
        return [*lines, f"cost estimate for {len(rows)} row(s): unknown (no finished rows of an earlier campaign "
                        "to estimate from)"]
    mean = sum(durations) / len(durations)
    hours = mean * len(rows) / 3600.0 / slots  # the pod's time: rows packed onto its slots
    total = f"~{money(price * hours)}" if price else "unknown"
    return [*lines, f"cost estimate for {len(rows)} row(s): {total} ({len(rows)} x {mean:.0f} s, the mean of "
                    f"{len(durations)} finished row(s) of the latest campaign, on {slots} slot(s))"]


def latest_status_of(session: Session) -> Any:
    """The latest campaign's status (rows as dicts), or None when there is none (for estimates)."""
    from helpers.cmd_sweeps import expand_rows

    try:
        return expand_rows(session.call("sweep-status", {"campaign": None, "read_only": True}, timeout=300))
    except WorkflowError:
        return None

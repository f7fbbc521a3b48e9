"""sweep-watch on a terminal: a full-screen live view (rich), refreshed every WATCH_INTERVAL_SECS.

One line per row: state (coloured), stage, step/max with a bar, ETA, the last train and val loss with a
sparkline of their history, tokens/s, attempts, failure class; the pod's GPUs (absent when it has
none), the executor's heartbeat age, and the totals. Each refresh is one agent call
(``sweep-watch-data``) on the one connection. Keys: q quit (the sweep goes on), f failed first,
r running only, a all rows, j/k (arrows) scroll a row, d/u (PgDn/PgUp) a page. When the sweep ends
the screen is left and the final sweep-status table is printed; the exit code is sweep-status's.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from helpers.colour import style_of
from helpers.dashboard.keys import Keys
from helpers.dashboard.model import WatchModel, order
from helpers.render import age, duration
from helpers.session import Session

MODES = {"a": "all", "f": "failed", "r": "running"}
MODE_LABEL = {"all": "all rows", "failed": "failed first", "running": "running only"}


class View:
    """What the person chose: the order/filter and the first row shown."""

    def __init__(self) -> None:
        self.mode = "all"
        self.top = 0

    def key(self, key: str, page: int) -> None:
        if key in MODES:
            self.mode, self.top = MODES[key], 0
        elif key == "j":
            self.top += 1
        elif key == "k":
            self.top = max(0, self.top - 1)
        elif key == "d":
            self.top += max(1, page)
        elif key == "u":
            self.top = max(0, self.top - max(1, page))


def _bar(step: int | None, maximum: int | None, width: int) -> Text:
    if step is None:
        return Text("")
    if not maximum:
        return Text(str(step))
    filled = min(width, round(width * step / maximum))
    return Text.assemble(("█" * filled, "cyan"), ("░" * (width - filled), "dim"), f" {step}/{maximum}")


def _loss(value: float | None, spark: str, number: bool = True) -> Text:
    if value is None:
        return Text("")
    return Text.assemble(f"{value:.3f} " if number else "", (spark, "magenta"))


def _rate(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value / 1000:.1f}k" if value >= 1000 else f"{value:.0f}"


def gpu_text(gpus: list[dict[str, Any]]) -> Text | None:
    if not gpus:
        return None
    text = Text()
    for gpu in gpus:
        util = float(gpu.get("util") or 0)
        filled = min(5, round(util / 20))
        style = "green" if util >= 50 else ("yellow" if util >= 10 else "dim")
        text.append(f"GPU{gpu['index']} ")
        text.append("█" * filled + "░" * (5 - filled), style)
        text.append(f" {util:.0f}% {float(gpu['mem_used']) / 1024:.1f}/{float(gpu['mem_total']) / 1024:.0f}G  ")
    return text


NARROW = 120  # below this many columns: shorter bars and sparklines, the train loss as a sparkline only


def render(model: WatchModel, view: View, width: int, height: int, interval: float) -> Group:
    from helpers.cmd_sweeps import progress_line

    status = model.status
    assert status is not None
    ex = status["executor"]
    beat = status.get("heartbeat_age_s")
    narrow = width < NARROW
    head = Text.assemble(f"campaign {status['campaign_id']}  executor ",
                         (str(ex["state"]), style_of(str(ex["state"])) or "bold"), f"  heartbeat {age(beat) or '-'}")
    parts: list[Any] = [head]
    cost = status.get("cost")
    if isinstance(cost, dict) and cost.get("price_per_hour") is not None:  # spend only when the price is known
        from helpers.cost import cost_line

        parts.append(Text(cost_line(status)))
    gpus = gpu_text(status.get("gpus") or [])
    if gpus is not None:
        parts.append(gpus)
    rows = order(model.rows(), view.mode)
    page = max(1, height - len(parts) - 4)
    view.top = max(0, min(view.top, len(rows) - page))
    table = Table(box=None, padding=(0, 1, 0, 0), show_edge=False, header_style="bold", pad_edge=False)
    for name, justify in (("RUN_ID", "left"), ("STATE", "left"), ("STAGE", "left"), ("STEP", "left"),
                          ("ETA", "right"), ("TRAIN", "left"), ("VAL", "left"), ("TOK/S", "right"),
                          ("ATT", "right"), ("FAILURE", "left")):
        table.add_column(name, justify=justify, no_wrap=True, overflow="ellipsis")  # type: ignore[arg-type]
    spark, bar_width = (5, 4) if narrow else (12, 8)
    for row in rows[view.top:view.top + page]:
        state = str(row["state"])
        table.add_row(str(row["run_id"]), Text(state, style_of(state)), str(row["stage"]),
                      _bar(row["step"], row["max_steps"], bar_width), duration(row["eta_s"]),
                      _loss(row["train_loss"], row["train_spark"][-spark:], number=not narrow),
                      _loss(row["val_loss"], row["val_spark"][-spark:]), _rate(row["tokens_per_s"]),
                      str(row.get("attempts") or 0), str(row.get("failure_class") or ""))
    parts.append(table)
    parts.append(Text(progress_line(status)))
    shown = f"{view.top + 1}-{min(len(rows), view.top + page)}/{len(rows)}" if rows else "no rows"
    parts.append(Text(f"q quit  f failed first  r running  a all  j/k scroll  rows {shown} "
                      f"({MODE_LABEL[view.mode]}, every {interval:g}s)", style="dim", overflow="ellipsis",
                      no_wrap=True))
    return Group(*parts)


def run_live(session: Session, interval: float) -> int:
    from helpers.cmd_sweeps import _status_code, render_status

    model = WatchModel(session.options.campaign)

    def fetch() -> None:
        model.merge(session.call_reconnecting("sweep-watch-data", args_fn=model.request, timeout=300))

    fetch()
    console = Console(highlight=False)  # rich itself honours NO_COLOR and TERM=dumb
    view = View()
    quit_ = False
    with Keys() as keys, Live(console=console, screen=True, auto_refresh=False, redirect_stderr=False) as live:
        while True:
            live.update(render(model, view, console.size.width, console.size.height, interval), refresh=True)
            if not model.live:
                break
            deadline = time.monotonic() + interval
            while not quit_:
                key = keys.wait(deadline - time.monotonic())
                if key in ("q", "Q"):
                    quit_ = True
                elif key:
                    view.key(key, console.size.height - 6)
                    live.update(render(model, view, console.size.width, console.size.height, interval), refresh=True)
                if time.monotonic() >= deadline:
                    break
            if quit_:
                break
            fetch()
    assert model.status is not None
    from helpers.colour import enabled

    session.print("\n".join(render_status(model.status, colour=enabled())))
    if quit_:
        session.print(f"left sweep-watch; the sweep goes on (campaign {model.status['campaign_id']}): "
                      "infra_scripts/workflow.sh sweep-watch")
        return 0
    from helpers import teardown

    teardown.after_status(session, model.status)  # TEARDOWN_ON_FINISH once the campaign has ended
    return _status_code(model.status)

"""plot: loss curves of one or more runs drawn in the terminal (plotext), overlaid with a legend.

Each run's metrics.jsonl comes from LOCAL_ARTIFACTS_DIR/<run_id>/ when it was fetched, else from the
pod (one ``run-metrics`` agent call for all the runs not fetched). On a terminal the curves are in
colour; off a terminal or with NO_COLOR there are no escape codes and each run has its own marker.
"""

from __future__ import annotations

import re
import shutil
import sys

from helpers.colour import enabled
from helpers.errors import ExitCode, WorkflowError
from helpers.pod.ids import check_id
from helpers.session import Session

ANSI = re.compile(r"\x1b\[[0-9;]*m")
PLAIN_MARKERS = ("*", "o", "x", "+", "#", "@", "%", "&")


Series = dict[str, list[list[float]]]  # run_id -> [[step, value], ...]


def load_series(session: Session, run_ids: list[str], metric: str) -> tuple[Series, dict[str, str]]:
    """({run_id: [[step, value], ...]}, {run_id: where it came from}); a run found nowhere is an error."""
    from helpers.pod.runs import jsonl_records
    from helpers.pod.watchdata import metric_series

    root = session.cfg.local_path("LOCAL_ARTIFACTS_DIR")
    series: dict[str, list[list[float]]] = {}
    source: dict[str, str] = {}
    remote = []
    for run_id in run_ids:
        path = root / run_id / "metrics.jsonl" if root else None
        if path is not None and path.is_file():
            series[run_id] = metric_series(jsonl_records(str(path)), metric)
            source[run_id] = str(path)
        else:
            remote.append(run_id)
    if remote:
        found = session.call("run-metrics", {"run_ids": remote, "metric": metric}, timeout=120)
        if found["missing"]:
            raise WorkflowError(f"no metrics.jsonl for run(s) {', '.join(found['missing'])}, neither fetched into "
                                f"{root} nor on the pod; check the run ids (workflow.sh sweep-status)",
                                ExitCode.NOT_FOUND)
        for run_id in remote:
            series[run_id] = found["series"][run_id]
            source[run_id] = "pod"
    empty = [run_id for run_id in run_ids if not series[run_id]]
    if len(empty) == len(run_ids):
        raise WorkflowError(f"no {metric!r} values in the metrics.jsonl of {', '.join(run_ids)}; pick a metric "
                            "the trainer writes with --metric (e.g. val_loss, train_loss)", ExitCode.NOT_FOUND)
    return series, source


def draw(series: Series, metric: str, width: int, height: int, colour: bool) -> str:
    try:
        import plotext as plt
    except ImportError:  # a WORKFLOW_VENV made before plotext was a dependency
        raise WorkflowError("plotext is not installed in this venv; install it: pip install 'plotext>=5,<6'",
                            ExitCode.FAILED) from None
    plt.clear_figure()
    plt.plotsize(width, height)
    if not colour:
        plt.theme("clear")
    for number, (run_id, points) in enumerate(series.items()):
        if not points:
            continue
        marker = "braille" if colour else PLAIN_MARKERS[number % len(PLAIN_MARKERS)]
        plt.plot([p[0] for p in points], [p[1] for p in points], label=run_id, marker=marker)
    plt.title(f"{metric} by step")
    plt.xlabel("step")
    text: str = plt.build()
    return text if colour else ANSI.sub("", text)


def cmd_plot(session: Session) -> int:
    run_ids = [check_id(r, "run id") for r in dict.fromkeys(session.options.run_ids)]
    metric = session.options.metric or "val_loss"
    series, source = load_series(session, run_ids, metric)
    if session.as_json:
        session.emit_json({"metric": metric, "series": series, "source": source})
        return 0
    size = shutil.get_terminal_size((100, 30))
    width = session.options.width or min(size.columns, 160)
    height = session.options.height or max(12, min(size.lines - 3, 32))
    session.print(draw(series, metric, width, height, enabled()).rstrip("\n"))
    empty = [run_id for run_id, points in series.items() if not points]
    if empty:
        session.print(f"no {metric} values in: {', '.join(empty)}")
    for run_id in run_ids:
        sys.stdout.write(f"  {run_id}: {len(series[run_id])} point(s) from {source[run_id]}\n")
    return 0

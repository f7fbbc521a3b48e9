"""The evaluation-stage keys (EVAL_SMALL_CMD, GATE_SMALL, ..., BASELINE_RUN, EVAL_METRICS) and the
stage columns of a sweep CSV, checked at validate/sweep-start with one line naming the key or row.
The rules themselves live in helpers/pod/stages.py (the pod runs the same ones)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from helpers.errors import ExitCode, WorkflowError
from helpers.pod import stages

STAGE_KEYS = ("EVAL_SMALL_CMD", "GATE_SMALL", "EVAL_FULL_CMD", "GATE_FULL", "BASELINE_RUN", "EVAL_METRICS",
              "EVAL_TIMEOUT_SECS")


def config_of(text: Callable[[str], str]) -> dict[str, str]:
    return {key: text(key) for key in STAGE_KEYS}


def check(text: Callable[[str], str], bad: Callable[[str, str], WorkflowError]) -> None:
    """Raise ``bad(key, what)`` for the first malformed stage key (the workflow.env values alone)."""
    found = stages.problem(config_of(text), {})
    if found:
        key = next((k for k in STAGE_KEYS if found.startswith(k)), "GATE_SMALL")
        raise bad(key, "is not usable: " + found)


def check_rows(cfg: Any, csv_path: Path, rows: Sequence[Any]) -> None:
    """Each row's stages (its stage columns over the keys); exit 2 naming the row at the first problem."""
    config = config_of(cfg.text)
    for row in rows:
        cells = dict(row.stages)
        if not cells:
            continue
        found = stages.problem(config, cells)
        if found:
            raise WorkflowError(f"{csv_path} row {row.row_number} ({row.run_id}): {found}", ExitCode.USAGE)


def plan_lines(cfg: Any, row: Any, run_dir: str, out_dir: str) -> list[str]:
    """sweep-start --dry-run: the row's stages after its training, each command as the executor will run it."""
    import shlex

    lines = []
    python = f"{cfg.text('VENV_DIR').rstrip('/')}/bin/python"
    for stage in stages.plan(config_of(cfg.text), dict(row.stages)):
        sdir = f"{run_dir}/stages/{stage['name']}"
        values = {"ckpt": f"{out_dir}/ckpt.pt", "run_dir": run_dir, "out_dir": out_dir,
                  "eval_json": f"{sdir}/{stages.EVAL_JSON}", "stage_dir": sdir}
        argv = [word.format(**values) for word in stage["command"]]
        if argv and argv[0] in ("python", "python3"):
            argv[0] = python
        gate = f"gate {stage['gate']} (not met: the row ends gated)" if stage["gate"] else "no gate"
        lines.append(f"  then stage {stage['name']}, {gate}: {shlex.join(argv)}")
    return lines

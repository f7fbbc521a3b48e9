"""BASELINE_RUN, checked at sweep-start on the pod before anything is created.

A relative gate (``val_loss<baseline*0.98``) compares with BASELINE_RUN's value of its metric. When
any row about to start has one, the baseline must be a finished run dir (the runner's summary.json)
holding that metric (a stage's metrics, else its best/final metrics: the lookup the stage runner
uses when it decides the gate); otherwise sweep-start is exit 2 with one line naming BASELINE_RUN.
Stdlib only (runs on the pod).
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

from . import gates, stages
from .errors import ExitCode, WorkflowError
from .ids import is_valid_id

FIX = "run it to the end first, or set BASELINE_RUN to a finished run id"


def _relative_gates(config: Dict[str, Any], rows: List[Dict[str, Any]]
                    ) -> List[Tuple[str, gates.Gate, Dict[str, Any]]]:
    """(stage name, gate, row) of every relative gate of the rows, in row order."""
    found: List[Tuple[str, gates.Gate, Dict[str, Any]]] = []
    for row in rows:
        for step in stages.plan(config, row):
            if step["gate"]:
                try:
                    gate = gates.parse(step["gate"])
                except gates.GateError:
                    continue  # malformed gates are refused locally (validate) with their own line
                if gate.relative:
                    found.append((step["name"], gate, row))
    return found


def problem(config: Dict[str, Any], rows: List[Dict[str, Any]], outputs: str) -> Optional[str]:
    """What is wrong with BASELINE_RUN for these rows (one line naming it), None when all is well."""
    relative = _relative_gates(config, rows)
    if not relative:
        return None
    run_id = str(config.get("BASELINE_RUN") or "").strip()
    name, gate, row = relative[0]
    if not run_id:
        return (f"row {row.get('run_id')}: {gate.text!r} is relative to a baseline run, but BASELINE_RUN is empty; "
                "set BASELINE_RUN=<run_id> of a finished run")
    if not is_valid_id(run_id):
        return f"BASELINE_RUN={run_id!r} is not a run id (letters, digits, . _ -)"
    from .runs import run_dir, summary

    path = run_dir(outputs, run_id)
    try:
        done = summary(path) if os.path.isdir(path) else None
    except WorkflowError:
        done = None  # a corrupt summary is no finished baseline
    if done is None:
        where = "has no run dir" if not os.path.isdir(path) else "has not finished (no summary.json)"
        return f"BASELINE_RUN={run_id} {where} in {outputs}; {FIX}"
    for name, gate, row in relative:
        if gates.baseline_value(done, gate.metric, name) is None:
            return (f"BASELINE_RUN={run_id} has no value of {gate.metric!r} (row {row.get('run_id')}, "
                    f"{gate.text!r}); gate on a metric the baseline wrote, or {FIX}")
    return None


def check(ctx: Any, rows: List[Dict[str, Any]]) -> None:
    """sweep-start: exit 2 (nothing created) when the rows' relative gates have no usable baseline."""
    found = problem(ctx.config, rows, ctx.outputs)
    if found:
        raise WorkflowError(found, ExitCode.USAGE)

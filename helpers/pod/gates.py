"""Evaluation gates: ``metric<op>value`` expressions, parsed once and decided against an eval's metrics.

A gate is ``METRIC OP THRESHOLD`` with OP one of ``<  <=  >  >=`` and THRESHOLD a number
(``val_loss<3.6``) or relative to a baseline run's value of the same metric (``val_loss<baseline*0.98``,
``acc>=baseline+0.01``, ``val_loss<=baseline``; BASELINE_RUN names that run). ``<``/``<=`` mean lower is
better (direction ``min``), ``>``/``>=`` higher is better (``max``). A NaN or missing value never passes.
Stdlib only: the validate step (local) and the stage runner (pod) share this module.
"""

from __future__ import annotations

import math
import re
from typing import Any, Dict, NamedTuple, Optional

_GATE_RE = re.compile(
    r"\A\s*(?P<metric>[A-Za-z_][A-Za-z0-9_./-]*)\s*(?P<op><=|>=|<|>)\s*(?P<rhs>\S.*?)\s*\Z")
_BASELINE_RE = re.compile(r"\Abaseline\s*(?:(?P<op>[*+-])\s*(?P<num>[0-9.eE+-]+))?\Z")
DIRECTION = {"<": "min", "<=": "min", ">": "max", ">=": "max"}
EXAMPLES = "write metric<op>value, e.g. val_loss<3.6 or val_loss<baseline*0.98 (op: < <= > >=)"


class GateError(ValueError):
    """A gate expression that cannot be parsed (its message says what to write instead)."""


class Gate(NamedTuple):
    text: str
    metric: str
    op: str
    number: Optional[float]  # an absolute threshold, or None for a baseline-relative one
    baseline_op: Optional[str]  # None (baseline itself), "*", "+" or "-"
    baseline_num: float

    @property
    def relative(self) -> bool:
        return self.number is None

    @property
    def direction(self) -> str:
        return DIRECTION[self.op]


def _number(text: str, expression: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise GateError(f"{expression!r}: {text!r} is not a number; {EXAMPLES}") from None
    if math.isnan(value) or math.isinf(value):
        raise GateError(f"{expression!r}: the threshold must be a finite number; {EXAMPLES}")
    return value


def parse(text: str) -> Gate:
    """The gate of ``text``; GateError (one line) when it is not one."""
    found = _GATE_RE.match(text or "")
    if not found:
        raise GateError(f"{text!r} is not a gate; {EXAMPLES}")
    metric, op, rhs = found.group("metric"), found.group("op"), found.group("rhs")
    if rhs.startswith("baseline"):
        relative = _BASELINE_RE.match(rhs.replace(" ", ""))
        if not relative:
            raise GateError(f"{text!r}: {rhs!r} is not baseline, baseline*K, baseline+K or baseline-K; {EXAMPLES}")
        num = _number(relative.group("num"), text) if relative.group("op") else 0.0
        return Gate(text.strip(), metric, op, None, relative.group("op"), num)
    return Gate(text.strip(), metric, op, _number(rhs, text), None, 0.0)


def threshold(gate: Gate, baseline: Optional[float]) -> Optional[float]:
    """The threshold the value is compared with (None: relative, and the baseline is unknown)."""
    if gate.number is not None:
        return gate.number
    if baseline is None or not isinstance(baseline, (int, float)) or math.isnan(baseline):
        return None
    if gate.baseline_op == "*":
        return baseline * gate.baseline_num
    if gate.baseline_op == "+":
        return baseline + gate.baseline_num
    if gate.baseline_op == "-":
        return baseline - gate.baseline_num
    return float(baseline)


def compare(value: float, op: str, limit: float) -> bool:
    if math.isnan(value):
        return False
    return {"<": value < limit, "<=": value <= limit, ">": value > limit, ">=": value >= limit}[op]


def number_of(metrics: Dict[str, Any], metric: str) -> Optional[float]:
    value = metrics.get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def decide(gate: Gate, metrics: Dict[str, Any], baseline: Optional[float] = None,
           baseline_run: Optional[str] = None) -> Dict[str, Any]:
    """The gate decision as summary.json keeps it: metric, value, threshold, op, direction, passed, and
    ``problem`` (a one-line reason) when it could not be decided (the metric or the baseline is missing)."""
    value = number_of(metrics, gate.metric)
    limit = threshold(gate, baseline)
    decision: Dict[str, Any] = {"expression": gate.text, "metric": gate.metric, "op": gate.op,
                                "direction": gate.direction, "value": value, "threshold": limit,
                                "passed": False, "problem": None}
    if gate.relative:
        decision.update(baseline_run=baseline_run, baseline_value=baseline)
    if value is None:
        written = sorted(k for k in metrics if number_of(metrics, k) is not None)
        decision["problem"] = (f"the eval wrote no number {gate.metric!r} (it wrote: "
                               f"{', '.join(written) if written else 'nothing'})")
    elif limit is None:
        decision["problem"] = (f"baseline run {baseline_run or '(BASELINE_RUN unset)'} has no value of "
                               f"{gate.metric!r}")
    else:
        decision["passed"] = compare(value, gate.op, limit)
    return decision


def describe(decision: Dict[str, Any]) -> str:
    """One line: ``val_loss 3.71 < 3.6: not met`` (or the problem)."""
    if decision.get("problem"):
        return f"{decision['expression']}: {decision['problem']}"
    verdict = "met" if decision["passed"] else "not met"
    return f"{decision['metric']} {decision['value']:.6g} {decision['op']} {decision['threshold']:.6g}: {verdict}"


def baseline_value(done: Dict[str, Any], metric: str, stage: str) -> Optional[float]:
    """A baseline run's summary's value of ``metric``: its stage of the same name, any stage, else its
    best/final metrics (the stage runner and sweep-start's BASELINE_RUN check share this lookup)."""
    listed = [s for s in done.get("stages") or [] if isinstance(s, dict)]
    ordered = [s for s in listed if s.get("name") == stage] + [s for s in reversed(listed) if s.get("name") != stage]
    for record in ordered:
        value = number_of(record.get("metrics") or {}, metric)
        if value is not None:
            return value
    for key in ("best_metrics", "final_metrics"):
        value = number_of(done.get(key) or {}, metric)
        if value is not None:
            return value
    return None

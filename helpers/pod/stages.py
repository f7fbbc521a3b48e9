"""The stages of a row after its training: a small eval, a full eval, each with its gate.

A row's stages come from EVAL_SMALL_CMD/GATE_SMALL and EVAL_FULL_CMD/GATE_FULL (the CSV columns
eval_small_cmd, gate_small, eval_full_cmd, gate_full override them per row). Once the training attempt
succeeded, the executor starts each stage as its own supervised task (the same supervisor: timeout
EVAL_TIMEOUT_SECS, stall window, fatal lines, failure classes) in ``<run_id>/stages/<name>/`` (spec.json,
status.json, stage.log, eval.json) and keeps polling it like any running row: the executor's loop never
waits for a stage, so other rows start meanwhile. The stage command gets the checkpoint, run dir and
eval.json path as placeholders ({ckpt} {run_dir} {out_dir} {eval_json} {stage_dir}) and as WF_CKPT,
WF_RUN_DIR, WF_OUT_DIR, WF_EVAL_JSON, WF_STAGE, WF_STAGE_DIR. The stage writes its metrics to eval.json;
its gate is decided on them. A gate not met ends the row as ``gated`` (not failed; later stages do not
run); a stage that fails, or a gate whose metric the eval did not write, fails the row.
``<run_id>/stages/stages.json`` says which stage runs now and every stage's record so far.
"""

from __future__ import annotations

import os
import shlex
import signal
import time
from typing import Any, Dict, List, Optional

from . import gates, proctree
from .ids import is_valid_id
from .jsonio import parse_utc, read_json, utc_now, write_json
from .taskstate import is_terminal, read_status

# (stage name, command key, gate key, command column, gate column)
STAGES = (("eval_small", "EVAL_SMALL_CMD", "GATE_SMALL", "eval_small_cmd", "gate_small"),
          ("eval_full", "EVAL_FULL_CMD", "GATE_FULL", "eval_full_cmd", "gate_full"))
STAGE_COLUMNS = tuple(c for stage in STAGES for c in stage[3:])
PROGRESS = "stages.json"
EVAL_JSON = "eval.json"
PLACEHOLDERS = ("ckpt", "run_dir", "out_dir", "eval_json", "stage_dir")
TRANSIENT = ("nccl", "lost", "stalled")  # the executor's transient classes: a stage failing so is run again


def _value(config: Dict[str, Any], row: Dict[str, Any], key: str, column: str) -> str:
    cell = row.get(column)
    return str(cell).strip() if cell not in (None, "") else str(config.get(key) or "").strip()


def plan(config: Dict[str, Any], row: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The row's stages in order: name, command (words), gate (text or "")."""
    found = []
    for name, cmd_key, gate_key, cmd_col, gate_col in STAGES:
        command = _value(config, row, cmd_key, cmd_col)
        if command:
            found.append({"name": name, "command": shlex.split(command), "command_text": command,
                          "gate": _value(config, row, gate_key, gate_col)})
    return found


def problem(config: Dict[str, Any], row: Dict[str, Any]) -> Optional[str]:
    """What is wrong with the row's stages (one line naming the key or column), None when all is well."""
    metrics = [m for m in str(config.get("EVAL_METRICS") or "").replace(",", " ").split() if m]
    baseline = str(config.get("BASELINE_RUN") or "").strip()
    if baseline and not is_valid_id(baseline):
        return f"BASELINE_RUN={baseline!r} is not a run id (letters, digits, . _ -)"
    for name, cmd_key, gate_key, cmd_col, gate_col in STAGES:
        command = _value(config, row, cmd_key, cmd_col)
        where_cmd = cmd_col if row.get(cmd_col) not in (None, "") else cmd_key
        where_gate = gate_col if row.get(gate_col) not in (None, "") else gate_key
        try:
            words = shlex.split(command)
        except ValueError as exc:
            return f"{where_cmd}={command!r} cannot be split into words ({exc}); check its quotes"
        if command and not words:
            return f"{where_cmd} is empty; give the eval command, e.g. python eval.py --batches 4"
        for word in words:
            try:
                word.format(**{p: "" for p in PLACEHOLDERS})
            except (KeyError, IndexError, ValueError):
                return (f"{where_cmd}: {word!r} has an unknown {{placeholder}}; use "
                        f"{', '.join('{' + p + '}' for p in PLACEHOLDERS)} (write {{{{ for a brace)")
        gate_text = _value(config, row, gate_key, gate_col)
        if not gate_text:
            continue
        if not command:
            return f"{where_gate}={gate_text!r} gates the {name} stage, but {cmd_key} is empty; set it or drop the gate"
        try:
            gate = gates.parse(gate_text)
        except gates.GateError as exc:
            return f"{where_gate}: {exc}"
        if gate.relative and not baseline:
            return f"{where_gate}={gate_text!r} is relative to a baseline run; set BASELINE_RUN=<run_id>"
        if metrics and gate.metric not in metrics:
            return (f"{where_gate}={gate_text!r} gates on {gate.metric!r}, which the eval never writes "
                    f"(EVAL_METRICS: {', '.join(metrics)}); gate on one of those")
    return None


# ----------------------------------------------------------------------------- on the pod, in the executor


def stages_dir(run_path: str) -> str:
    return os.path.join(run_path, "stages")


def _progress(run_path: str, current: Optional[str], records: List[Dict[str, Any]]) -> None:
    write_json(os.path.join(stages_dir(run_path), PROGRESS), {"schema_version": 1, "current": current,
                                                               "stages": records, "utc": utc_now()})


def reset(rr: Any) -> None:
    """A training attempt just succeeded: its stages start from the first."""
    rr.stage, rr.stage_records = None, []


def _aside(path: str) -> None:
    """A stage directory of an earlier attempt is kept under stages/_previous/."""
    if os.path.lexists(path):
        keep = os.path.join(os.path.dirname(path), "_previous", f"{os.path.basename(path)}.{utc_now()}"
                            .replace(":", ""))
        os.makedirs(os.path.dirname(keep), exist_ok=True)
        os.rename(path, keep)


def launch_next(ex: Any, rr: Any) -> bool:
    """Start the row's next stage as a supervised task; False when no stage is left."""
    steps = plan(ex.ctx.config, rr.row)
    if len(rr.stage_records) >= len(steps):
        return False
    stage = steps[len(rr.stage_records)]
    from .context import run_env
    from .scheduling import slot_env

    ctx = ex.ctx
    path = os.path.join(ex.outputs, rr.run_id)
    sdir = os.path.join(stages_dir(path), stage["name"])
    _aside(sdir)
    os.makedirs(sdir)
    out_dir = rr.out_dir or path
    values = {"ckpt": os.path.join(out_dir, "ckpt.pt"), "run_dir": path, "out_dir": out_dir,
              "eval_json": os.path.join(sdir, EVAL_JSON), "stage_dir": sdir}
    argv = [word.format(**values) for word in stage["command"]]
    if argv and argv[0] in ("python", "python3"):  # the run venv's python, as for training
        argv[0] = os.path.join(ctx.path("VENV_DIR"), "bin", "python")
    env_base = run_env(ctx)
    env = dict(env_base)
    env.update(slot_env(env_base, ex.slots, rr.slots))
    env.update(WF_RUN_ID=rr.run_id, WF_CAMPAIGN_ID=ex.campaign_id, WF_STAGE=stage["name"], WF_STAGE_DIR=sdir,
               WF_CKPT=values["ckpt"], WF_RUN_DIR=path, WF_OUT_DIR=out_dir, WF_EVAL_JSON=values["eval_json"])
    spec = {
        "id": f"{rr.run_id}.{stage['name']}", "argv": argv,
        "workdir": os.path.join(ctx.path("OPS_REMOTE_REPO"), ctx.get("TRAIN_WORKDIR")), "log": "stage.log",
        "timeout_secs": ctx.number("EVAL_TIMEOUT_SECS", 3600), "stall_secs": ctx.number("RUN_STALL_SECS", 1800),
        "kill_grace_secs": ctx.number("TASK_KILL_GRACE_SECS", 10),
        "lost_after_secs": ctx.number("TASK_LOST_AFTER_SECS", 60),
        "log_banner": f"stage {stage['name']} of run {rr.run_id} (campaign {ex.campaign_id})",
        "command_display": shlex.join(argv),
        "user_patterns": ex.manifest.get("user_patterns", ""),
        "user_patterns_source": ex.manifest.get("user_patterns_source", ""),
    }
    ex._launch(sdir, spec, env, shlex.join(argv))
    rr.stage = {**stage, "dir": sdir, "started_utc": utc_now()}
    _progress(path, stage["name"], rr.stage_records)
    ex.event("stage-start", run_id=rr.run_id, stage=stage["name"])
    ex.say(f"{rr.run_id}: stage {stage['name']}: {shlex.join(argv)}")
    return True


def poll(rr: Any, ex: Any = None) -> Optional[Dict[str, Any]]:
    """The stage's final status once its supervisor is done with it; None while it runs (or waits out
    the backoff before its retry, then starts again)."""
    if rr.stage.get("retry_at") is not None:
        if ex is not None and ex.stop_reason:  # stopped during the backoff: the failure stands
            return dict(rr.stage["retry_status"])
        if ex is None or time.monotonic() < rr.stage["retry_at"]:
            return None
        retried = list(rr.stage.get("retried") or [])
        launch_next(ex, rr)  # the same stage: it has no record yet
        rr.stage["retried"] = retried
        return None
    sdir = rr.stage["dir"]
    status = read_status(sdir) or {}
    if not status.get("state"):
        return None
    if is_terminal(status["state"]) and status.get("cleanup") in ("done", None):
        return status
    from .tasks import refresh

    status = refresh(sdir, status)  # a vanished supervisor is lost, and told
    return status if is_terminal(status["state"]) and status.get("cleanup") == "done" else None


def _baseline(ex: Any, metric: str, stage: str) -> Optional[float]:
    """BASELINE_RUN's value of ``metric``: from its stage of the same name, any stage, else its metrics."""
    run_id = str(ex.ctx.get("BASELINE_RUN") or "")
    if not is_valid_id(run_id):
        return None
    from .runs import summary

    try:
        done = summary(os.path.join(ex.outputs, run_id)) or {}
    except Exception:  # noqa: BLE001 - a corrupt baseline summary is a missing baseline
        return None
    return gates.baseline_value(done, metric, stage)


def _retry(ex: Any, rr: Any, status: Dict[str, Any]) -> bool:
    """A stage that failed with a transient class (nccl, lost, stalled) runs again within the row's
    ``retries`` (else RUN_RETRIES), the budget its training attempts share, after the same backoff."""
    klass = status.get("failure_class")
    if status.get("state") == "success" or klass not in TRANSIENT or ex.stop_reason:
        return False
    retries = rr.row.get("retries")
    limit = int(retries) if retries not in (None, "") else ex.ctx.number("RUN_RETRIES", 2)
    if rr.transient_retries >= limit:
        return False
    rr.transient_retries += 1
    delay = ex.ctx.number("RUN_RETRY_BACKOFF_SECS", 30) * 2 ** (rr.transient_retries - 1)
    retried = list(rr.stage.get("retried") or []) + [{
        "failure_class": klass, "reason": status.get("reason"), "ended_utc": status.get("ended_utc")}]
    rr.stage = {**rr.stage, "retry_at": time.monotonic() + delay, "retry_status": status, "retried": retried}
    ex.event("stage-retry", run_id=rr.run_id, stage=rr.stage["name"], failure_class=klass)
    ex.say(f"{rr.run_id}: stage {rr.stage['name']}: {klass}; retry {rr.transient_retries}/{limit}, "
           f"backoff {delay}s")
    return True


def read_metrics(sdir: str, keep: List[str]) -> Dict[str, Any]:
    data = read_json(os.path.join(sdir, EVAL_JSON), "eval metrics") if os.path.isfile(
        os.path.join(sdir, EVAL_JSON)) else None
    if not isinstance(data, dict):
        return {}
    inner = data.get("metrics")
    found: Dict[str, Any] = inner if isinstance(inner, dict) else data
    numbers = {k: v for k, v in found.items() if gates.number_of(found, k) is not None or v is None}
    return {k: v for k, v in numbers.items() if k in keep} if keep else numbers


def after(ex: Any, rr: Any, status: Dict[str, Any]) -> str:
    """Record the ended stage and decide: 'ok' (passed: the next stage may start), 'gated', 'failed' or
    'retry' (a transient failure with retries left: the stage runs again after the backoff)."""
    if _retry(ex, rr, status):
        return "retry"
    stage, rr.stage = rr.stage, None
    path = os.path.join(ex.outputs, rr.run_id)
    keep = [m for m in str(ex.ctx.get("EVAL_METRICS") or "").replace(",", " ").split() if m]
    metrics = read_metrics(stage["dir"], keep) if status.get("state") == "success" else {}
    start, end = parse_utc(status.get("started_utc")), parse_utc(status.get("ended_utc"))
    record: Dict[str, Any] = {
        "name": stage["name"], "command": stage["command_text"], "state": status.get("state"),
        "failure_class": status.get("failure_class"), "reason": status.get("reason"),
        "exit_code": status.get("exit_code"), "started_utc": status.get("started_utc"),
        "ended_utc": status.get("ended_utc"), "duration_s": round(end - start, 1) if start and end else None,
        "metrics": metrics, "gate": None, "log": os.path.join(stage["dir"], "stage.log"),
        "fatal_lines": (status.get("fatal") or {}).get("lines"), "retries": list(stage.get("retried") or [])}
    verdict = "ok" if status.get("state") == "success" else "failed"
    if verdict == "ok" and stage["gate"]:
        gate = gates.parse(stage["gate"])
        baseline = _baseline(ex, gate.metric, stage["name"]) if gate.relative else None
        decision = gates.decide(gate, metrics, baseline, str(ex.ctx.get("BASELINE_RUN") or "") or None)
        record["gate"] = decision
        if decision["problem"]:
            verdict = "failed"
            record.update(state="failed", failure_class="metric_missing" if decision["value"] is None
                          else "baseline_missing", reason=gates.describe(decision))
        elif not decision["passed"]:
            verdict = "gated"
            record.update(state="gated", reason=gates.describe(decision))
        else:
            record["reason"] = gates.describe(decision)
    rr.stage_records.append(record)
    _progress(path, None, rr.stage_records)
    ex.event("stage-end", run_id=rr.run_id, stage=stage["name"], state=record["state"], gate=record["gate"])
    ex.say(f"{rr.run_id}: stage {stage['name']}: {record['state']}"
           + (f" ({record['reason']})" if record.get("reason") else ""))
    return verdict


def stop(rr: Any) -> None:
    """sweep-stop: SIGTERM to the running stage's supervisor (it stops its tree, status cancelled)."""
    if rr.stage is None:
        return
    status = read_status(rr.stage["dir"]) or {}
    pid = status.get("supervisor_pid")
    if pid and proctree.is_alive(pid, status.get("supervisor_start_time")):
        os.kill(int(pid), signal.SIGTERM)


def apply(run_path: str, rr: Any, done: Dict[str, Any], write: bool = True) -> Dict[str, Any]:
    """summary.json with every stage (state, metrics, gate decision) and the row's verdict after them
    (``write=False``: only the record, written by the caller)."""
    records = list(getattr(rr, "stage_records", []) or [])
    if not records or not done.get("ok"):
        return done
    last = records[-1]
    done["stages"] = records
    done["stage"] = last["name"]  # the last stage the row reached (sweep-status)
    done["eval_metrics"] = {r["name"]: r["metrics"] for r in records if r.get("metrics")}
    line = f"stage {last['name']}: {last.get('reason') or last['state']}"
    if last["state"] == "gated":
        done.update(ok=False, state="gated", failure_class=None, reason=line, reason_line=line, gate=last["gate"])
    elif last["state"] != "success":
        done.update(ok=False, state=last["state"],
                    failure_class=last.get("failure_class") or "nonzero_exit", reason=line, reason_line=line,
                    fatal_lines=last.get("fatal_lines"), log=last.get("log"))
    ended = parse_utc(last.get("ended_utc"))
    started = parse_utc(done.get("started_utc"))
    if ended and started:
        done.update(ended_utc=last.get("ended_utc"), duration_s=round(ended - started, 1))
    if write:
        write_json(os.path.join(run_path, "summary.json"), done)
    return done


def view(run_path: str) -> Optional[str]:
    """The stage a row is in now (sweep-status), None when none runs."""
    file = os.path.join(stages_dir(run_path), PROGRESS)
    if not os.path.isfile(file):
        return None
    data = read_json(file, "stage progress") or {}
    current = data.get("current") if isinstance(data, dict) else None
    return str(current) if current else None


def _live_stage(run_path: str) -> Optional[Dict[str, Any]]:
    """The status of the stage running now under a live supervisor (None when none is)."""
    current = view(run_path)
    if not current:
        return None
    status = read_status(os.path.join(stages_dir(run_path), current)) or {}
    ended = is_terminal(status.get("state", "success")) and status.get("cleanup") in ("done", None)
    alive = proctree.is_alive(status.get("supervisor_pid"), status.get("supervisor_start_time"))
    return status if status and not ended and alive else None


def live(run_path: str) -> bool:
    """Whether one of the run's stages is still running under its supervisor (sweep-resume, archive)."""
    return _live_stage(run_path) is not None


def stop_live(run_path: str, wait_secs: float) -> bool:
    """sweep-stop without an executor: SIGTERM to a live stage's supervisor, waiting up to ``wait_secs`` for it."""
    import time

    status = _live_stage(run_path)
    if status is None:
        return False
    pid, start = status.get("supervisor_pid"), status.get("supervisor_start_time")
    os.kill(int(pid), signal.SIGTERM)  # type: ignore[arg-type]
    deadline = time.monotonic() + wait_secs
    while time.monotonic() < deadline and proctree.is_alive(pid, start):
        time.sleep(0.1)
    return True

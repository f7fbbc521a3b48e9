"""Sweep commands: sweep-csv-template, sweep-start, sweep-status, sweep-watch, sweep-stop, sweep-resume."""

from __future__ import annotations

import hashlib
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from helpers.errors import ExitCode, WorkflowError
from helpers.pod import runs
from helpers.pod.scheduling import plan_schedule
from helpers.render import bar, duration, table
from helpers.session import Session
from helpers.sweep_csv import SweepRow, parse_sweep_csv, select_rows, write_template

FAILED_STATES = ("failed", "timed_out", "stalled", "lost", "cancelled")


def csv_path_of(session: Session) -> Path:
    """--csv (relative to the current directory), else SWEEP_CSV (relative to the checkout)."""
    given = getattr(session.options, "csv", None)
    if given:
        path = Path(given)
        return path if path.is_absolute() else Path.cwd() / path
    configured = session.cfg.local_path("SWEEP_CSV")
    if configured is None:
        raise WorkflowError("no sweep CSV: set SWEEP_CSV or pass --csv FILE", ExitCode.USAGE)
    return configured


def load_selected_rows(session: Session, path: Path | None = None) -> tuple[list[SweepRow], list[SweepRow]]:
    cfg = session.cfg
    rows = parse_sweep_csv(path or csv_path_of(session), cfg.project_root / cfg.text("TRAIN_WORKDIR"))
    selected = select_rows(rows, cfg.text("SWEEP_MATCH") or None, cfg.text("SWEEP_START_AT") or None,
                           cfg.number("SWEEP_LIMIT"))
    return rows, selected


def _row_payload(row: SweepRow) -> dict[str, Any]:
    return {"run_id": row.run_id, "row_number": row.row_number, "notes": row.notes, **row.spec()}


def cmd_sweep_csv_template(session: Session) -> int:
    out = Path(session.options.out) if session.options.out else session.cfg.local_path("SWEEP_CSV")
    assert out is not None
    if session.dry_run:
        state = "exists: would refuse (never overwritten)" if out.exists() else "would be written"
        session.print(f"{out}: {state}")
        return 0
    write_template(out)
    session.print(f"wrote {out}; edit it, then: infra_scripts/workflow.sh sweep-start --csv {out}")
    return 0


def _pod_slots(session: Session) -> list[str]:
    """The slots the executor would use (same detection on the pod: CUDA_VISIBLE_DEVICES, nvidia-smi,
    SWEEP_CPU_SLOTS); a read-only agent call."""
    return [str(slot) for slot in session.call("sweep-start", {"plan_only": True}, timeout=120)["slots"]]


def plan_sweep(session: Session, rows: list[SweepRow], slots: list[str]) -> list[str]:
    """Every row's exact command and slot assignment, in the order the executor starts them: the
    executor's own rule (:func:`schedule_step`), simulated as if every run took the same time."""
    cfg = session.cfg
    cpu = slots[0].startswith("cpu")
    repo = cfg.text("OPS_REMOTE_REPO").rstrip("/")
    workdir = f"{repo}/{cfg.text('TRAIN_WORKDIR')}"
    python = f"{cfg.text('VENV_DIR').rstrip('/')}/bin/python"
    outputs = cfg.text("OPS_REMOTE_OUTPUTS_DIR").rstrip("/")
    local_sync = cfg.text("RUN_OUT_MODE") == "local_sync"
    by_id = {row.run_id: row for row in rows}
    lines = []
    for row in rows:
        need = row.gpus or len(slots)
        if need > len(slots):
            lines.append(f"row {row.row_number} {row.run_id}: needs {need} slot(s), the pod has {len(slots)}: "
                         "sweep-start will refuse it")
    for run_id, take, wave in plan_schedule([(row.run_id, row.gpus or len(slots)) for row in rows], slots):
        row = by_id[run_id]
        base = cfg.text("RUN_OUT_LOCAL_ROOT").rstrip("/") if local_sync else outputs
        out_dir = f"{base}/{row.run_id}"
        argv = runs.build_argv(python, cfg.text("TRAIN_ENTRYPOINT"), row.config, row.seed, out_dir, list(row.overrides),
                               len(take))
        visible = "" if cpu else ",".join(take)
        where = f"CPU slot(s) {','.join(take)}" if cpu else f"GPU(s) {visible}"
        lines.append(f"row {row.row_number} {row.run_id}: {where} (wave {wave})")
        lines.append(f"  cd {shlex.quote(workdir)} && CUDA_VISIBLE_DEVICES={shlex.quote(visible)} {shlex.join(argv)}")
    return lines


def cmd_sweep_start(session: Session) -> int:
    cfg = session.cfg
    path = csv_path_of(session)
    _, selected = load_selected_rows(session, path)
    from helpers.cmd_tasks import load_user_patterns

    load_user_patterns(session)
    patterns_path = cfg.local_path("TASK_FATAL_PATTERNS_FILE")
    from helpers import cmd_slurm

    if session.dry_run and cmd_slurm.is_slurm(session):
        return cmd_slurm.dry_run(session, [_row_payload(row) for row in selected], path)
    if session.dry_run:
        slots = _pod_slots(session)
        session.print(f"would start a campaign of {len(selected)} row(s) from {path} on {session.transport_label()}; "
                      f"slots: {', '.join(slots)}; timeout {cfg.number('RUN_TIMEOUT_SECS') or 'none'}s per attempt; "
                      "rows start in this order as slots free up, none ahead of an earlier row that waits for "
                      "slots (the slots shown assume equal run times)")
        for line in plan_sweep(session, selected, slots):
            session.print(line)
        return 0
    csv_bytes = path.read_bytes()
    args = {
        "rows": [_row_payload(row) for row in selected], "csv_name": path.name,
        "csv_text": csv_bytes.decode("utf-8", errors="replace"), "csv_sha256": hashlib.sha256(csv_bytes).hexdigest(),
        "selection": {"match": cfg.text("SWEEP_MATCH"), "start_at": cfg.text("SWEEP_START_AT"),
                      "limit": cfg.number("SWEEP_LIMIT")},
        "reuse_run_ids": bool(session.options.reuse_run_ids),
        "user_patterns": patterns_path.read_text(encoding="utf-8") if patterns_path else "",
        "user_patterns_source": str(patterns_path or ""), **cmd_slurm.template_args(session),
    }
    result = session.call("sweep-start", args, sync_env=True, timeout=180)
    if session.as_json:
        session.emit_json(result)
        return 0
    if result.get("executor") == "slurm":
        cmd_slurm.start_message(session, result)
        return 0
    socket = f" -L {result['socket']}" if result.get("socket") else ""
    already = f" ({result['already_ok']} already ok: skipped)" if result["already_ok"] else ""
    session.print(f"campaign {result['campaign_id']} started: {result['rows']} row(s){already} on "
                  f"{', '.join(result['slots'])}")
    for run_id, old in result.get("superseded", []):
        session.print(f"  run {run_id} taken over from campaign {old} (old directory kept in _superseded/)")
    session.print("  status:  infra_scripts/workflow.sh sweep-status   (or sweep-watch)")
    session.print(f"  on the pod: tmux{socket} attach -t {result['session']}")
    return 0


def expand_rows(status: dict[str, Any]) -> dict[str, Any]:
    """The pod sends rows as lists under `columns`; turn them into dicts."""
    columns = status.get("columns")
    if columns:
        status["rows"] = [dict(zip(columns, row)) for row in status["rows"]]
        del status["columns"]
    return status


def render_status(status: dict[str, Any]) -> list[str]:
    ex = status["executor"]
    slots = f", slots {','.join(ex['slots'])}" if ex.get("slots") else ""
    reason = f" ({ex['reason']})" if ex.get("reason") else ""
    lines = [f"campaign {status['campaign_id']} (created {status['created_utc']}): executor {ex['state']}{reason}"
             f"{slots}"]
    rows = []
    for row in status["rows"]:
        loss = row.get("val_loss")
        state = row["state"] + (f" (campaign {row['from_campaign']})" if row.get("from_campaign") else "")
        rows.append([row["run_id"], state, str(row.get("attempts") or 0), duration(row.get("duration_s")),
                     row.get("failure_class") or "", "" if loss is None else f"{loss:.4f}"])
    header = ["RUN_ID", "STATE", "ATTEMPTS", "DURATION", "FAILURE", "VAL_LOSS"]
    if any("slurm" in row for row in status["rows"]):  # SWEEP_EXECUTOR=slurm: the scheduler's view per row
        header.append("SLURM")
        for shown, row in zip(rows, status["rows"]):
            shown.append(row.get("slurm") or "")
    if ex.get("note"):
        lines.append(f"note: {ex['note']}")
    lines += table(header, rows)
    totals = status["totals"]
    done = sum(v for k, v in totals.items() if k in ("ok", *FAILED_STATES))
    lines.append(bar(done, status["total"]) + "  " + ", ".join(f"{k} {v}" for k, v in sorted(totals.items())))
    left = unfinished_rows(status)
    if left:
        gone = "is gone" if ex["state"] == "lost" else f"has {ex['state']}"
        lines.append(f"incomplete: the executor {gone} and {len(left)} row(s) never finished "
                     f"({', '.join(left[:5])}{', ...' if len(left) > 5 else ''}); rerun them with: "
                     f"infra_scripts/workflow.sh sweep-resume --campaign {status['campaign_id']}")
    return lines


def unfinished_rows(status: dict[str, Any]) -> list[str]:
    """Rows that neither succeeded nor failed although no executor is left to run them."""
    if status["executor"]["state"] in ("running", "starting"):
        return []
    return [row["run_id"] for row in status["rows"] if row["state"] not in ("ok", *FAILED_STATES)]


def _status_code(status: dict[str, Any]) -> int:
    failed = any(status["totals"].get(s) for s in FAILED_STATES)
    return int(ExitCode.FAILED) if failed or unfinished_rows(status) else 0


def cmd_sweep_status(session: Session) -> int:
    status = expand_rows(session.call("sweep-status", {"campaign": session.options.campaign}, timeout=300))
    status["unfinished"] = unfinished_rows(status)
    if session.as_json:
        session.emit_json(status)
    else:
        session.print("\n".join(render_status(status)))
    return _status_code(status)


def cmd_sweep_watch(session: Session) -> int:
    interval = max(0.5, float(session.options.interval))
    tty = sys.stdout.isatty()
    while True:
        status = expand_rows(session.call("sweep-status", {"campaign": session.options.campaign}, timeout=300))
        if tty:
            sys.stdout.write("\x1b[2J\x1b[H")
        session.print("\n".join(render_status(status)))
        sys.stdout.flush()
        if status["executor"]["state"] not in ("running", "starting"):
            return _status_code(status)
        time.sleep(interval)


def cmd_sweep_stop(session: Session) -> int:
    campaign = session.options.campaign
    if session.dry_run:
        session.print(f"would stop campaign {campaign or '(the latest)'} on {session.transport_label()}: SIGTERM to "
                      "the executor, which cancels every active run (their whole process trees); state "
                      "SWEEP_STOPPED")
        return 0
    result = session.call("sweep-stop", {"campaign": campaign}, timeout=600)
    if session.as_json:
        session.emit_json(result)
        return 0
    stopped = ", ".join(result["stopped_runs"]) or "none left running"
    session.print(f"campaign {result['campaign_id']} stopped (executor was {result['executor_was']}); "
                  f"runs stopped here: {stopped}; state {result['state']}")
    return 0


def cmd_sweep_resume(session: Session) -> int:
    campaign = session.options.campaign
    if session.dry_run:
        session.print(f"would rerun the failed, cancelled and missing rows of campaign {campaign or '(the latest)'} "
                      f"on {session.transport_label()} (rows already ok are skipped)")
        return 0
    result = session.call("sweep-resume", {"campaign": campaign}, sync_env=True, timeout=180)
    if session.as_json:
        session.emit_json(result)
        return 0
    if not result["rerun"]:
        session.print(f"campaign {result['campaign_id']}: every row is ok; nothing to resume")
        return 0
    session.print(f"campaign {result['campaign_id']} resumed: rerunning {', '.join(result['rerun'])}")
    return 0

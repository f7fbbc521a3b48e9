"""Sweep commands: sweep-csv-template, sweep-start, sweep-status, sweep-watch, sweep-stop, sweep-resume."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from helpers import cost
from helpers.errors import ExitCode, WorkflowError
from helpers.render import bar, duration, table
from helpers.session import Session

if TYPE_CHECKING:  # the CSV parser, run argv and scheduling are imported where used: not on sweep-status's path
    from helpers.sweep_csv import SweepRow

FAILED_STATES = ("failed", "timed_out", "stalled", "lost", "cancelled")
LIVE = ("running", "starting", "stopping")  # executor states that may still change rows (pod/campaigns.LIVE)


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
    from helpers.sweep_csv import parse_sweep_csv, select_rows

    cfg = session.cfg
    rows = parse_sweep_csv(path or csv_path_of(session), cfg.project_root / cfg.text("TRAIN_WORKDIR"))
    from helpers.stage_keys import check_rows  # the rows' evaluation stages and gates (issue 14)

    check_rows(cfg, path or csv_path_of(session), rows)
    selected = select_rows(rows, cfg.text("SWEEP_MATCH") or None, cfg.text("SWEEP_START_AT") or None,
                           cfg.number("SWEEP_LIMIT"))
    return rows, selected


def load_sweep_in_parts(session: Session, path: Path) -> tuple[list[SweepRow], dict[str, Any] | None]:
    """sweep-start's rows: every row SWEEP_MATCH selects (the campaign is the whole sweep) and the part to
    submit (SWEEP_START_AT / SWEEP_LIMIT, or --index-offset / --num-jobs, which win), None: every row."""
    from helpers import sweep_parts
    from helpers.stage_keys import check_rows
    from helpers.sweep_csv import parse_sweep_csv, select_part

    cfg = session.cfg
    rows = parse_sweep_csv(path, cfg.project_root / cfg.text("TRAIN_WORKDIR"))
    check_rows(cfg, path, rows)
    whole, offset, count = select_part(rows, cfg.text("SWEEP_MATCH") or None, cfg.text("SWEEP_START_AT") or None,
                                       cfg.number("SWEEP_LIMIT"))
    return whole, sweep_parts.part_request(session, whole, offset, count)


def _row_payload(row: SweepRow) -> dict[str, Any]:
    return {"run_id": row.run_id, "row_number": row.row_number, "notes": row.notes, **row.spec()}


def cmd_sweep_csv_template(session: Session) -> int:
    out = Path(session.options.out) if session.options.out else new_template_path(Path.cwd())
    if session.dry_run:
        state = "exists: would refuse (never overwritten)" if out.exists() else "would be written"
        session.print(f"{out}: {state}")
        return 0
    from helpers.sweep_csv import write_template

    write_template(out)
    session.print(f"wrote {out}; edit it, then: infra_scripts/workflow.sh sweep-start --csv {out}")
    return 0


def new_template_path(directory: Path) -> Path:
    """Without --out: a file name not taken yet (sweep.csv, sweep-2.csv, ...), never SWEEP_CSV."""
    for n in range(1, 1000):
        path = directory / ("sweep.csv" if n == 1 else f"sweep-{n}.csv")
        if not path.exists():
            return path
    raise WorkflowError(f"{directory}: sweep.csv .. sweep-999.csv all exist; pass --out FILE", ExitCode.REFUSED)


def _pod_plan(session: Session, rows: list[SweepRow], part: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the executor would see (a read-only agent call, the same detection on the pod:
    CUDA_VISIBLE_DEVICES, nvidia-smi, SWEEP_CPU_SLOTS): its slots, the env it adds to every run
    (OMP_NUM_THREADS on CPU slots) and which rows are already ok (the real start skips them)."""
    plan: dict[str, Any] = session.call("sweep-start", {"plan_only": True, "rows": [_row_payload(r) for r in rows],
                                                        **({"part": part} if part else {})}, timeout=120)
    plan["slots"] = [str(slot) for slot in plan["slots"]]
    return plan


def plan_sweep(session: Session, rows: list[SweepRow], slots: list[str], env: dict[str, str] | None = None
               ) -> list[str]:
    """Every row's exact command and slot assignment, in the order the executor starts them: the
    executor's own rule (:func:`schedule_step`), simulated as if every run took the same time."""
    from helpers.pod import runs
    from helpers.pod.scheduling import plan_schedule

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
        shown = {**(env or {}), "CUDA_VISIBLE_DEVICES": visible}
        words = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(shown.items()))
        lines.append(f"  cd {shlex.quote(workdir)} && {words} {shlex.join(argv)}")
        from helpers.stage_keys import plan_lines  # its evaluation stages (issue 14)

        lines += plan_lines(cfg, row, f"{outputs}/{row.run_id}", out_dir)
    return lines


def cmd_sweep_start(session: Session) -> int:
    cfg = session.cfg
    path = csv_path_of(session)
    selected, part = load_sweep_in_parts(session, path)  # SWEEP_START_AT/_LIMIT, --index-offset/--num-jobs
    from helpers import sweep_parts
    from helpers.cmd_tasks import load_user_patterns

    load_user_patterns(session)
    patterns_path = cfg.local_path("TASK_FATAL_PATTERNS_FILE")
    from helpers import cmd_slurm

    if session.dry_run and cmd_slurm.is_slurm(session):
        return cmd_slurm.dry_run(session, [_row_payload(row) for row in selected], path, part)
    if session.dry_run:
        plan = _pod_plan(session, selected, part)
        slots, skip = plan["slots"], set(plan.get("already_ok") or [])
        if plan.get("part"):
            session.print(sweep_parts.part_line(plan["part"], "would submit"))
        mine = [selected[i] for i in plan["part"]["rows"]] if plan.get("part") else selected
        todo = [row for row in mine if row.run_id not in skip]
        already = f" ({len(skip)} already ok: skipped: {', '.join(sorted(skip))})" if skip else ""
        session.print(f"would start a campaign of {len(mine)} row(s){already} from {path} on "
                      f"{session.transport_label()}, running {len(todo)}; slots: {', '.join(slots)}; timeout "
                      f"{cfg.number('RUN_TIMEOUT_SECS') or 'none'}s per attempt; rows start in this order as slots "
                      "free up, none ahead of an earlier row that waits for slots (the slots shown assume equal run "
                      "times)")
        for line in plan_sweep(session, todo, slots, plan.get("env") or {}):
            session.print(line)
        for line in cost.estimate_lines(session, lambda: cost.latest_status_of(session)):
            session.print(line)
        return 0
    csv_bytes = path.read_bytes()
    import hashlib  # here: sweep-status imports this module too

    args = {
        "rows": [_row_payload(row) for row in selected], "csv_name": path.name,
        "csv_text": csv_bytes.decode("utf-8", errors="replace"), "csv_sha256": hashlib.sha256(csv_bytes).hexdigest(),
        "selection": {"match": cfg.text("SWEEP_MATCH"), "start_at": cfg.text("SWEEP_START_AT"),
                      "limit": cfg.number("SWEEP_LIMIT")},
        "reuse_run_ids": bool(session.options.reuse_run_ids),
        "user_patterns": patterns_path.read_text(encoding="utf-8") if patterns_path else "",
        "user_patterns_source": str(patterns_path or ""), **cmd_slurm.template_args(session),
        **({"part": part} if part else {}),
        **cost.start_args(session),
    }
    result = session.call("sweep-start", args, sync_env=True, timeout=180)
    if session.as_json:
        session.emit_json(result)
        return 0
    if result.get("part"):
        session.print(sweep_parts.part_line(result["part"]))
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
    """The pod sends rows as lists under `columns`; turn them into dicts (with what it left out)."""
    columns = status.get("columns")
    empty = status.get("empty_columns") or []
    if columns and not set(columns) & set(empty):  # one dict per row, the columns it left out already in
        status.pop("empty_columns", None)
        names, pad = [*columns, *empty], [None] * len(empty)
        status["rows"] = [dict(zip(names, row + pad)) for row in status["rows"]] if pad else [
            dict(zip(names, row)) for row in status["rows"]]
        del status["columns"]
        if "log" in columns:
            _default_logs(status)
        return status
    if columns:
        status["rows"] = [dict(zip(columns, row)) for row in status["rows"]]
        del status["columns"]
    _fill_compacted(status)
    return status


def _default_logs(status: dict[str, Any]) -> None:
    """A log path sent as "" is the default ``<outputs>/<run_id>/run.log``."""
    import posixpath

    outputs = str(status.get("outputs"))
    for row in status["rows"]:
        if row.get("log") == "":
            row["log"] = posixpath.join(outputs, str(row["run_id"]), "run.log")


def _fill_compacted(status: dict[str, Any]) -> None:
    """What the pod left out to keep the reply small (helpers/pod/statuscache.compact): the columns no
    row has a value in, and a log path that is the default ``<outputs>/<run_id>/run.log`` (sent as "")."""
    empty = status.pop("empty_columns", None) or []
    for row in status["rows"]:
        for column in empty:
            row.setdefault(column, None)
    _default_logs(status)


def row_state(row: dict[str, Any]) -> str:
    """The STATE cell: a row that recovered from a failure says so, e.g. ``ok (oom→retry)``."""
    state = str(row["state"])
    recovered = row.get("recovered_from") or []
    if state == "ok" and recovered:
        state += f" ({'→'.join(dict.fromkeys(recovered))}→retry)"
    if row.get("stage"):  # the evaluation stage it is in, or the last one it reached (gated at eval_small)
        state += f" [{row['stage']}]"
    return state + (f" (campaign {row['from_campaign']})" if row.get("from_campaign") else "")


REASON_WIDTH = 100


_SHOWS_REASON = frozenset((*FAILED_STATES, "gated"))


def _row_cells(row: dict[str, Any], durations: dict[Any, str] | None = None) -> list[str]:
    """One row of the table (``durations``: DURATION cells already made, by value: 10,000 rows share few)."""
    get = row.get
    loss, state, seconds = get("val_loss"), row["state"], get("duration_s")
    reason = str(get("reason_line") or "") if state in _SHOWS_REASON else ""
    if len(reason) > REASON_WIDTH:
        reason = reason[:REASON_WIDTH - 3] + "..."
    shown = durations.get(seconds) if durations is not None else None
    if shown is None:
        shown = duration(seconds)
        if durations is not None:
            durations[seconds] = shown
    plain = not (get("recovered_from") or get("stage") or get("from_campaign"))
    return [row["run_id"], str(state) if plain else row_state(row), str(get("attempts") or 0), shown,
            get("failure_class") or "", "" if loss is None else f"{loss:.4f}", reason]


HEADERS = ["RUN_ID", "STATE", "ATTEMPTS", "DURATION", "FAILURE", "VAL_LOSS", "REASON"]


def render_status(status: dict[str, Any], colour: bool = False) -> list[str]:
    ex = status["executor"]
    slots = f", slots {','.join(ex['slots'])}" if ex.get("slots") else ""
    reason = f" ({ex['reason']})" if ex.get("reason") else ""
    lines = [f"campaign {status['campaign_id']} (created {status['created_utc']}): executor {ex['state']}{reason}"
             f"{slots}"]
    durations: dict[Any, str] = {}
    headers, cells = list(HEADERS), [_row_cells(row, durations) for row in status["rows"]]
    if any("slurm" in row for row in status["rows"]):  # SWEEP_EXECUTOR=slurm: the scheduler's view per row
        headers.insert(-1, "SLURM")
        for shown, row in zip(cells, status["rows"]):
            shown.insert(-1, row.get("slurm") or "")
    if ex.get("note"):
        lines.append(f"note: {ex['note']}")
    from helpers.colour import painter

    lines += table(headers, cells, painter(1, colour))  # colour: the STATE cell, on a terminal only
    for row in status["rows"]:
        for attempt in row.get("attempt_list") or []:
            why = f": {attempt['reason_line']}" if attempt.get("reason_line") else ""
            klass = f" [{attempt['failure_class']}]" if attempt.get("failure_class") else ""
            lines.append(f"  {row['run_id']} attempt {attempt['attempt']} ({attempt.get('campaign_id')}): "
                         f"{attempt['state']}{klass}{why}  log {attempt['log']}")
    failed = [row for row in status["rows"] if row["state"] in FAILED_STATES and row.get("log")]
    if failed:
        lines.append(f"a failed row's log: infra_scripts/workflow.sh sweep-logs {failed[0]['run_id']}")
    lines += [line for line in [cost.cost_line(status)] if line]  # spend, projection, idle; unknown price
    lines.append(progress_line(status))
    from helpers.tracking.commands import tracking_lines

    lines += tracking_lines(status)  # MLflow on: the parent run, rows whose tracking is behind
    from helpers.sweep_parts import status_lines

    lines += status_lines(status)  # a campaign in parts: its parts, the rows not submitted yet
    left = unfinished_rows(status)
    if left:
        gone = "is gone" if ex["state"] == "lost" else f"has {ex['state']}"
        lines.append(f"incomplete: the executor {gone} and {len(left)} row(s) never finished "
                     f"({', '.join(left[:5])}{', ...' if len(left) > 5 else ''}); rerun them with: "
                     f"infra_scripts/workflow.sh sweep-resume --campaign {status['campaign_id']}")
    return lines


def progress_line(status: dict[str, Any]) -> str:
    """The bar fills only for rows that are finished for good: a lost row, or one no executor is left
    to run, is unfinished work (never a full bar)."""
    left = set(unfinished_rows(status))
    done = sum(1 for row in status["rows"] if row["run_id"] not in left and (
        row["state"] in ("ok", "gated") or (row["state"] in FAILED_STATES and row["state"] != "lost")))
    totals = status["totals"]
    extra = f", unfinished {len(left)}" if left else ""
    return bar(done, status["total"]) + "  " + ", ".join(f"{k} {v}" for k, v in sorted(totals.items())) + extra


def unfinished_rows(status: dict[str, Any]) -> list[str]:
    """Rows that neither succeeded nor failed for good although no executor is left to run them (a
    lost row is unfinished: sweep-resume reruns it)."""
    if status["executor"]["state"] in LIVE:
        return []
    settled = ("ok", "gated", "unsubmitted", *FAILED_STATES)
    return [row["run_id"] for row in status["rows"] if row["state"] not in settled or row["state"] == "lost"]


def _status_code(status: dict[str, Any]) -> int:
    failed = any(status["totals"].get(s) for s in FAILED_STATES)
    return int(ExitCode.FAILED) if failed or unfinished_rows(status) else 0


def _status_call(session: Session, attempts: bool = False, reconnect: bool = False) -> dict[str, Any]:
    call = session.call_reconnecting if reconnect else session.call
    return expand_rows(call("sweep-status", {"campaign": session.options.campaign, "attempts": attempts},
                            timeout=300))


def cmd_sweep_status(session: Session) -> int:
    attempts = bool(getattr(session.options, "attempts", False))
    keep = (session.cfg.text("TEARDOWN_ON_FINISH") or "keep") == "keep"  # keep: teardown is not even imported
    if not session.as_json and not attempts and keep:
        return _status_text(session)
    status = _status_call(session, attempts)
    status["unfinished"] = unfinished_rows(status)
    if session.as_json:
        session.emit_json(status)
    else:
        from helpers.colour import enabled

        session.print("\n".join(render_status(status, colour=enabled())))
    if not keep:
        from helpers import teardown

        teardown.after_status(session, status)  # TEARDOWN_ON_FINISH once the campaign has ended
    return _status_code(status)


def _status_text(session: Session) -> int:
    """The table, or for a concluded campaign the text printed before when the pod says it is unchanged
    (helpers/status_text.py)."""
    from helpers import status_text
    from helpers.colour import enabled

    colour, campaign = enabled(), session.options.campaign
    cfg = session.cfg
    path = status_text.cache_file(cfg.project_root, [cfg.target, cfg.text("OPS_DEFAULT_HOST"), cfg.text("LIUM_TARGET"),
                                                     cfg.text("OPS_REMOTE_OUTPUTS_DIR")], campaign, colour)
    kept = status_text.load(path)
    reply = session.call("sweep-status", {"campaign": campaign, "attempts": False,
                                          **({"known": kept["hashes"]} if kept else {})}, timeout=300)
    if reply.get("unchanged"):
        if kept and reply.get("hashes") == kept["hashes"]:
            session.print(kept["text"])
            return int(kept["code"])
        reply = session.call("sweep-status", {"campaign": campaign, "attempts": False}, timeout=300)  # kept text gone
    status = expand_rows(reply)
    text = "\n".join(render_status(status, colour=colour))
    session.print(text)
    code = _status_code(status)
    if isinstance(status.get("hashes"), dict):  # a concluded campaign's stored table: keep what was printed
        status_text.save(path, status["hashes"], text, code)
    return code


def _change_keys(status: dict[str, Any]) -> list[str]:
    """One key per line of render_status that ignores what changes on its own (a running row's
    duration, the table's padding): a line is printed again only when its key changes."""
    still = {**status, "rows": [{**row, "duration_s": None} for row in status["rows"]]}
    if isinstance(status.get("cost"), dict):  # the spend of running rows grows on its own, too
        still["cost"] = {**status["cost"], "spent_usd": None, "idle_slot_seconds": None, "projected_usd": None}
    return [" ".join(line.split()) for line in render_status(still)]


def cmd_sweep_watch(session: Session) -> int:
    """On a TTY the live view (helpers/dashboard/live.py); elsewhere (a log file, a pipe) or with --plain
    the table is printed once, then only the lines that changed."""
    if getattr(session.options, "manage", False):  # --manage: watch and recover a lost pod (helpers/manage/)
        from helpers.manage import loop

        return loop.watch(session)
    from helpers.dashboard import watch

    interval = watch.interval_of(session)
    if watch.wants_live(session):
        return watch.run_live(session, interval)
    shown: set[str] = set()
    while True:
        status = _status_call(session, reconnect=True)
        lines = render_status(status)
        keys = _change_keys(status)
        changed = [line for line, key in zip(lines, keys) if key not in shown]
        if changed:
            session.print("\n".join(changed if shown else lines))
        shown = set(keys)
        sys.stdout.flush()
        if status["executor"]["state"] not in LIVE:
            from helpers import teardown

            teardown.after_status(session, status)  # TEARDOWN_ON_FINISH once the campaign has ended
            return _status_code(status)
        time.sleep(interval)


def cmd_sweep_stop(session: Session) -> int:
    campaign = session.options.campaign
    if session.dry_run:
        plan = session.call("sweep-stop", {"campaign": campaign, "plan_only": True}, timeout=120)
        session.print(f"would stop campaign {plan['campaign_id']} on {session.transport_label()} (executor "
                      f"{plan['executor']}): SIGTERM to the executor, which cancels every active run (their whole "
                      "process trees); state SWEEP_STOPPED")
        for run_id in plan["active"]:
            session.print(f"  would cancel {run_id} (running)")
        for run_id in plan["queued"]:
            session.print(f"  would not start {run_id} (queued)")
        if not plan["active"]:
            session.print("  no row is running")
        return 0
    if not session.as_json:
        session.print(f"stopping campaign {campaign or '(the latest)'} on {session.transport_label()} ...")
    result = session.call("sweep-stop", {"campaign": campaign}, timeout=600)
    if session.as_json:
        session.emit_json(result)
        return 0
    for run_id in result["stopped_runs"]:
        session.print(f"  {run_id}: cancelled")
    stopped = f"{len(result['stopped_runs'])} run(s) cancelled" if result["stopped_runs"] else "no run was running"
    session.print(f"campaign {result['campaign_id']} stopped (executor was {result['executor_was']}); {stopped}; "
                  f"state {result['state']}")
    return 0


def cmd_sweep_resume(session: Session) -> int:
    campaign = session.options.campaign
    if session.dry_run:
        plan = session.call("sweep-resume", {"campaign": campaign, "plan_only": True}, timeout=120)
        session.print(f"would resume campaign {plan['campaign_id']} on {session.transport_label()}: rerun "
                      f"{len(plan['rerun'])} row(s) (rows already ok are skipped)")
        for run_id, ok in plan["concluded"]:
            session.print(f"  would first conclude {run_id}: its last attempt ended {'ok' if ok else 'failed'} "
                          "after the executor died" + (" (not run again)" if ok else ""))
        for run_id in plan["rerun"]:
            session.print(f"  would rerun {run_id}")
        if plan.get("executor") in LIVE or plan.get("live"):
            session.print("  (the real resume refuses now: the campaign is still running)")
        return 0
    result = session.call("sweep-resume", {"campaign": campaign}, sync_env=True, timeout=180)
    if session.as_json:
        session.emit_json(result)
        return 0
    if not result["rerun"]:
        session.print(f"campaign {result['campaign_id']}: every row is ok; nothing to resume")
    for run_id, ok in result.get("concluded") or []:
        session.print(f"  {run_id}: concluded first ({'ok: not run again' if ok else 'failed'})")
    if not result["rerun"]:
        return 0
    session.print(f"campaign {result['campaign_id']} resumed: rerunning {', '.join(result['rerun'])}")
    return 0

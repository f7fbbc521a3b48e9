"""Every attempt of a sweep run keeps its own files: ``<run_dir>/attempts/<n>/``.

Attempts are numbered over the run directory's whole life (retries, resumes, later campaigns that
continue the same run), so nothing ever reuses a number: ``attempt.json`` (written when the attempt
starts: campaign, slots, overrides, where its output begins in run.log), ``run.log`` (that attempt's
slice of run.log), ``config.json`` (the trainer's resolved config of that attempt, copied from
its out_dir when it ends: the next attempt, e.g. the OOM retry, rewrites the out_dir's),
``summary.json`` (its verdict: state, failure_class, exit code, one-line reason, fatal lines; the
run's final summary for the attempt that concluded the row) and ``status.json`` (the supervisor's
record). Files of an ended attempt are never rewritten.
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Optional, Tuple

from .jsonio import parse_utc, read_json, utc_now, write_bytes, write_json

DIR = "attempts"
TRAINER_CONFIG = "config.json"  # the trainer writes its resolved config here, in its out_dir
TRAINER_CONFIG_LIMIT = 4 << 20  # bytes of it kept per attempt
LOG_SLICE_LIMIT = 64 << 20  # bytes of one attempt's output copied into its own run.log
REASON_CHARS = 200


def attempt_dir(run_path: str, number: int) -> str:
    return os.path.join(run_path, DIR, str(number))


def numbers(run_path: str) -> List[int]:
    try:
        names = os.listdir(os.path.join(run_path, DIR))
    except OSError:
        return []
    return sorted(int(name) for name in names if name.isdigit())


def next_number(run_path: str) -> int:
    found = numbers(run_path)
    return (found[-1] if found else 0) + 1


def begin(run_path: str, number: int, info: Dict[str, Any]) -> None:
    """Record an attempt that is about to start (before its supervisor writes to run.log)."""
    try:
        offset = os.path.getsize(os.path.join(run_path, "run.log"))
    except OSError:
        offset = 0
    path = attempt_dir(run_path, number)
    os.makedirs(path, exist_ok=False)  # a new number: never a past attempt's directory
    write_json(os.path.join(path, "attempt.json"), {"attempt": number, "log_offset": offset,
                                                    "started_utc": utc_now(), **info})


def info(run_path: str, number: int) -> Dict[str, Any]:
    data = read_json(os.path.join(attempt_dir(run_path, number), "attempt.json"), "attempt record")
    return data if isinstance(data, dict) else {}


def ended(run_path: str, number: int) -> bool:
    return os.path.exists(os.path.join(attempt_dir(run_path, number), "summary.json"))


def pending(run_path: str) -> Optional[Tuple[int, Dict[str, Any]]]:
    """The latest attempt if it started but was never concluded (its executor died)."""
    found = numbers(run_path)
    if not found or ended(run_path, found[-1]):
        return None
    return found[-1], info(run_path, found[-1])


def log_text(run_path: str, number: int) -> str:
    """The attempt's own output: its copy once ended, else its slice of the live run.log."""
    own = os.path.join(attempt_dir(run_path, number), "run.log")
    try:
        with open(own, "rb") as handle:
            return handle.read().decode("utf-8", "replace")
    except OSError:
        pass
    return _slice(run_path, number).decode("utf-8", "replace")


def _slice(run_path: str, number: int) -> bytes:
    start = int(info(run_path, number).get("log_offset") or 0)
    try:
        with open(os.path.join(run_path, "run.log"), "rb") as handle:
            handle.seek(start)
            return handle.read(LOG_SLICE_LIMIT)
    except OSError:
        return b""


def finish(run_path: str, number: int, record: Dict[str, Any]) -> Dict[str, Any]:
    """Keep the ended attempt's log and status and write its summary; returns the record with its
    one-line ``reason_line`` (why it failed: the child's first error line)."""
    path = attempt_dir(run_path, number)
    os.makedirs(path, exist_ok=True)
    keep_trainer_config(run_path, number)  # before summary.json: an ended attempt has its config kept
    text = _slice(run_path, number)
    write_bytes(os.path.join(path, "run.log"), text)
    status = read_json(os.path.join(run_path, "status.json"), "task status")
    if isinstance(status, dict):
        write_json(os.path.join(path, "status.json"), status)
    record = {**record, "log": os.path.join(path, "run.log")}
    if record.get("state") != "success":
        record["reason_line"] = reason_line(text.decode("utf-8", "replace"), record)
    write_json(os.path.join(path, "summary.json"), {"schema_version": 1, "kind": "attempt", **record})
    return record


def keep_trainer_config(run_path: str, number: int) -> None:
    """Copy the out_dir's config.json into the attempt's dir when this attempt wrote it (not before the
    attempt began: an earlier attempt's file is not this one's config)."""
    started = info(run_path, number)
    source = os.path.join(str(started.get("out_dir") or run_path), TRAINER_CONFIG)
    begun = parse_utc(started.get("started_utc"))
    try:
        if begun is not None and os.path.getmtime(source) + 1 < begun:  # utc stamps have whole seconds
            return
        with open(source, "rb") as handle:
            payload = handle.read(TRAINER_CONFIG_LIMIT)
    except OSError:
        return
    write_bytes(os.path.join(attempt_dir(run_path, number), TRAINER_CONFIG), payload, durable=False)


def trainer_config_path(run_path: str, number: int) -> str:
    return os.path.join(attempt_dir(run_path, number), TRAINER_CONFIG)


def keep_final_summary(run_path: str, number: int, data: Dict[str, Any]) -> None:
    write_json(os.path.join(attempt_dir(run_path, number), "summary.json"), {**data, "kind": "run"})


# ----------------------------------------------------------------------------- why it failed

_WRAPPER = re.compile(
    r"^[EWI]\d{4} \d|torch[./]distributed[./](elastic|run|launch)|ChildFailedError|^\*{5,}|^=+ ?$|^-+ ?$|"
    r"^Root Cause|^Failures:|<NO_OTHER_FAILURES>|^\[\d+\]:$|^ *(time|host|rank|exitcode|error_file|traceback) *:|"
    r"^=====.*=====$|Setting OMP_NUM_THREADS|warnings\.warn|Warning:|FutureWarning|UserWarning")
_ERRORISH = re.compile(r"\b(error|exception|fatal|failed|failure|abort(ed)?|refus\w*|cannot|invalid)\b",
                       re.IGNORECASE)
STOPPED_BY_SUPERVISOR = ("stalled", "timeout", "killed", "lost", "disk_full")
_RANK_PREFIX = re.compile(r"^\[(default)?rank\d+\]: ?")


def _child_lines(text: str) -> List[str]:
    """The child's own output lines: torchrun's wrapper report (and everything after it) dropped."""
    lines: List[str] = []
    traceback_at = -1
    for raw in text.splitlines():
        line = _RANK_PREFIX.sub("", raw.rstrip())
        if "ChildFailedError" in line or "SignalException" in line or re.match(r"^\S+ FAILED$", line):
            if traceback_at >= 0:
                del lines[traceback_at:]  # that traceback was torchrun's own, not the child's
            break  # torchrun's own report of the failure: the child's lines are above it
        if not line.strip() or _WRAPPER.search(line) or not line.strip(" ^~"):
            continue  # blank, torchrun's, or a traceback's ^^^^ markers
        if line.startswith("Traceback (most recent call last)"):
            traceback_at = len(lines)  # a traceback opens: whose, its exception line tells
        elif not line.startswith((" ", "\t")):
            traceback_at = -1  # an exception line closed it: it was the child's
        lines.append(line)
    return lines


def reason_line(text: str, record: Dict[str, Any]) -> str:
    """The first error line the child printed (not torchrun's ChildFailedError wrapper): the exception
    line ending a Python traceback, else the first line that reads as an error, else the fatal match,
    else the child's last line, else the supervisor's reason."""
    if record.get("failure_class") in STOPPED_BY_SUPERVISOR and record.get("reason"):
        return str(record["reason"])[:REASON_CHARS]  # the supervisor stopped it: its reason says why
    lines = _child_lines(text)
    found = None
    for i, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last)"):
            for after in lines[i + 1:]:
                if not after.startswith((" ", "\t")):
                    found = after
                    break
            if found:
                break
            continue
        if _ERRORISH.search(line) and not line.startswith((" ", "\t")):
            found = line
            break
    fatal = record.get("fatal_lines") or []
    if found is None and fatal:
        found = str(fatal[0])
    if found is None and lines:
        found = lines[-1]
    found = (found or str(record.get("reason") or record.get("failure_class") or "failed")).strip()
    return found if len(found) <= REASON_CHARS else found[:REASON_CHARS - 3] + "..."


# ----------------------------------------------------------------------------- concluding


def index_entry(done: Dict[str, Any]) -> Dict[str, Any]:
    """A concluded row as index.json (and sweep-status) keeps it."""
    entry = {k: done.get(k) for k in ("ok", "state", "failure_class", "attempts", "duration_s", "started_utc",
                                      "ended_utc", "reason_line", "log", "recovered_from", "stage")}
    entry["val_loss"] = (done.get("final_metrics") or {}).get("val_loss")
    entry["cost_usd"] = (done.get("cost") or {}).get("usd")  # None: no price (unknown, never $0)
    return entry


def unconcluded(run_path: str) -> Optional[Tuple[int, Dict[str, Any]]]:
    """The attempt whose supervisor ended after its executor died: (number, info), else None. An
    attempt whose supervisor is still at work, or that never got one, is not concluded here."""
    from .taskstate import is_terminal, read_status

    found = pending(run_path)
    if found is None:
        return None
    number, record = found
    status = read_status(run_path) or {}
    if not is_terminal(status.get("state", "pending")) or status.get("cleanup") not in ("done", None):
        return None
    if (status.get("created_utc") or "") < (record.get("started_utc") or ""):
        return None  # that status is an earlier attempt's: this one never started
    return number, record


def conclude_orphans(outputs: str, campaign_path: str, campaign_id: str, rows: List[Dict[str, Any]],
                     dry_run: bool = False) -> List[Tuple[str, bool]]:
    """Rows of this campaign whose last attempt ended after the executor died are concluded now, as the
    executor would have (summary, attempts.jsonl, index): an ok one is never run again. Returns
    (run_id, ok) for each; with ``dry_run`` only says which."""
    from . import runs
    from .jsonio import append_jsonl
    from .stages import plan
    from .taskstate import read_status

    concluded: List[Tuple[str, bool]] = []
    config = (read_json(os.path.join(campaign_path, "manifest.json"), "campaign manifest") or {}).get("config") or {}
    index_path = os.path.join(campaign_path, "index.json")
    index = read_json(index_path, "campaign index") or {}
    for row in rows:
        path = runs.run_dir(outputs, str(row["run_id"]))
        own = runs.owner(path) if os.path.isdir(path) else None
        found = unconcluded(path) if own and own.get("campaign_id") == campaign_id else None
        if found is None or found[1].get("campaign_id") != campaign_id:
            continue
        number, started = found
        ok = (read_status(path) or {}).get("state") == "success"
        if ok and plan(config, row):  # trained, but its evaluation stages never ended: it runs again, gated
            continue
        concluded.append((str(row["run_id"]), ok))
        if dry_run:
            continue
        record = runs.attempt_record(path, number, {"slots": started.get("slots"), "note": started.get("note")})
        record = finish(path, number, {"campaign_id": campaign_id, **record, "concluded_by": "sweep-resume"})
        append_jsonl(os.path.join(path, "attempts.jsonl"), record)
        try:
            with open(os.path.join(path, "command.sh"), encoding="utf-8") as handle:
                command = handle.read()
        except OSError:
            command = ""
        done = runs.write_summary(path, campaign_id, row, [record], str(started.get("out_dir") or path), command)
        keep_final_summary(path, number, done)
        index[str(row["run_id"])] = index_entry(done)
    if concluded and not dry_run:
        write_json(index_path, index)
    return concluded

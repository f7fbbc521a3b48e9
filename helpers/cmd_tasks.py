"""Tracked-task commands: task-run, task-status, task-wait, task-list, task-logs, task-kill."""

from __future__ import annotations

import re
import sys
import time
from typing import TYPE_CHECKING, Any

from helpers.errors import ExitCode, WorkflowError
from helpers.pod.ids import check_id
from helpers.pod.taskstate import wait_exit_code
from helpers.render import age, table
from helpers.session import Session

if TYPE_CHECKING:
    from helpers.pod import fatal

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def load_user_patterns(session: Session) -> list[fatal.FatalPattern]:
    from helpers.pod import fatal  # dataclasses: not on task-status's path

    path = session.cfg.local_path("TASK_FATAL_PATTERNS_FILE")
    if path is None:
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkflowError(f"{session.cfg.source('TASK_FATAL_PATTERNS_FILE')}: cannot read TASK_FATAL_PATTERNS_FILE "
                            f"{path}: {exc}", ExitCode.USAGE) from None
    return fatal.parse_user_patterns(text, str(path))


def _patterns_payload(session: Session) -> dict[str, str]:
    path = session.cfg.local_path("TASK_FATAL_PATTERNS_FILE")
    if path is None:
        return {"user_patterns": "", "user_patterns_source": ""}
    load_user_patterns(session)  # validate here, before anything is sent
    return {"user_patterns": path.read_text(encoding="utf-8"), "user_patterns_source": str(path)}


def _task_env(session: Session) -> dict[str, str]:
    env: dict[str, str] = {}  # the run variables of workflow.env are added on the pod, from its env file
    for item in session.options.task_env:
        name, sep, value = item.partition("=")
        if not sep or not _ENV_NAME.match(name):
            raise WorkflowError(f"--env {item!r}: expected NAME=VALUE with NAME of A-Z a-z 0-9 _", ExitCode.USAGE)
        env[name] = value
    return env


def _seconds(value: int | None, key: str, session: Session, flag: str) -> int:
    if value is None:
        return session.cfg.number(key) or 0
    if value < 0:
        raise WorkflowError(f"{flag} {value}: must be 0 (off) or a positive number of seconds", ExitCode.USAGE)
    return value


def cmd_task_run(session: Session) -> int:
    from helpers.config import is_secret, redact

    o = session.options
    task_id = check_id(o.task_id, "task id")
    if not o.cmd.strip():
        raise WorkflowError("--cmd is empty; give the command to run", ExitCode.USAGE)
    args: dict[str, Any] = {
        "id": task_id, "cmd": o.cmd, "workdir": o.workdir, "force": o.force,
        "timeout_secs": _seconds(o.timeout_secs, "TASK_TIMEOUT_SECS", session, "--timeout-secs"),
        "stall_secs": _seconds(o.stall_secs, "TASK_STALL_SECS", session, "--stall-secs"),
        "env": _task_env(session), **_patterns_payload(session),
    }
    cfg = session.cfg
    if session.dry_run:
        outputs = cfg.text("OPS_REMOTE_OUTPUTS_DIR").rstrip("/")
        session.print(f"would start task {task_id} in {outputs}/_tasks/{task_id}/ on {session.transport_label()}")
        session.print(f"  command.sh (run with bash, exactly): {o.cmd!r}")
        session.print(f"  workdir: {o.workdir or cfg.text('OPS_REMOTE_REPO') + ' (if it exists)'}")
        session.print(f"  timeout: {args['timeout_secs'] or 'none'}s, stall window: {args['stall_secs'] or 'off'}s, "
                      f"grace {cfg.number('TASK_KILL_GRACE_SECS')}s")
        session.print(f"  tmux: window {task_id} in session {cfg.text('WF_TMUX_SESSION')}"
                      + (" (replacing the existing task; the old directory is kept)" if o.force else ""))
        env_text = ", ".join(f"{k}={redact(k, v)}" if not is_secret(k) else f"{k}=<hidden>"
                             for k, v in sorted(args["env"].items()))
        session.print(f"  env: {env_text or '(none extra)'}")
        return 0
    result = session.call("task-run", args, sync_env=True, timeout=120)
    if session.as_json:
        session.emit_json(result)
        return 0
    socket = f" -L {result['socket']}" if result.get("socket") else ""
    session.print(f"task {task_id} started on {session.transport_label()} ({result['state']})")
    if result.get("replaced"):
        session.print(f"  the previous {task_id} is kept in {result['replaced']}")
    session.print(f"  follow:  infra_scripts/workflow.sh task-logs --id {task_id} --follow")
    session.print(f"  wait:    infra_scripts/workflow.sh task-wait --id {task_id}")
    session.print(f"  on the pod: tmux{socket} attach -t {result['session']}")
    return 0


def _task_line(task: dict[str, Any]) -> list[str]:
    exit_text = "" if task.get("exit_code") is None else str(task["exit_code"])
    if task.get("signal"):
        exit_text = f"sig {task['signal']}"
    return [task["id"], task["state"], exit_text, task.get("failure_class") or "",
            (task.get("started_utc") or task.get("created_utc") or "")[:19].replace("T", " "),
            "" if task.get("duration_s") is None else f"{task['duration_s']:.1f}s",
            age(task.get("heartbeat_age_s"))]


def cmd_task_status(session: Session) -> int:
    o = session.options
    task_id = o.task_id if o.task_id is not None else o.positional_id
    if task_id is not None:  # an empty id (`--id=`) is refused, not read as "all tasks"
        check_id(task_id, "task id")
    result = session.call("task-status", {"id": task_id, "lines": o.lines}, timeout=60)
    if session.as_json:
        session.emit_json(result)
        return 0
    if "tasks" in result:
        return _print_tasks(session, result["tasks"])
    t = result["task"]
    exit_text = "-" if t["exit_code"] is None else str(t["exit_code"])
    if t.get("signal"):
        exit_text += f" (signal {t['signal']})"
    session.print(f"task:      {t['id']}")
    session.print(f"state:     {t['state']}" + (f"  [{t['failure_class']}]" if t.get("failure_class") else ""))
    session.print(f"exit:      {exit_text}")
    if t.get("reason"):
        session.print(f"reason:    {t['reason']}")
    session.print(f"command:   {t['command']!r}")
    session.print(f"created:   {t['created_utc']}   started: {t['started_utc'] or '-'}   "
                  f"ended: {t['ended_utc'] or '-'}")
    if t.get("duration_s") is not None:
        session.print(f"duration:  {t['duration_s']:.1f}s")
    if t.get("heartbeat_age_s") is not None:
        session.print(f"heartbeat: {t['heartbeat_age_s']:.1f}s ago")
    timeouts = t.get("timeouts") or {}
    session.print(f"limits:    timeout {timeouts.get('timeout_secs') or 'none'}s, "
                  f"stall {timeouts.get('stall_secs') or 'off'}s")
    fatal_info = t.get("fatal") or {}
    if fatal_info.get("lines"):
        session.print(f"fatal:     {fatal_info.get('description')} (pattern {fatal_info.get('pattern')})")
        for line in fatal_info["lines"]:
            session.print(f"  > {line}")
        context = fatal_info.get("context") or []
        if context:
            session.print(f"context ({len(context)} lines before and at the error, last 15 shown):")
            for line in context[-15:]:
                session.print(f"  | {line}")
    if t["last_lines"]:
        session.print(f"output (last {len(t['last_lines'])} lines of {t['task_dir']}/stdout.log):")
        for line in t["last_lines"]:
            session.print(f"  | {line}")
    return 0


def _print_tasks(session: Session, tasks: list[dict[str, Any]]) -> int:
    if not tasks:
        session.print("no tasks yet (start one with workflow.sh task-run --id ID --cmd '...')")
        return 0
    from helpers.colour import enabled, painter

    for line in table(["ID", "STATE", "EXIT", "CLASS", "STARTED (UTC)", "DURATION", "HEARTBEAT"],
                      [_task_line(t) for t in tasks], painter(1, enabled())):
        session.print(line)
    return 0


def cmd_task_list(session: Session) -> int:
    result = session.call("task-list", timeout=60)
    if session.as_json:
        session.emit_json(result)
        return 0
    return _print_tasks(session, result["tasks"])


def cmd_task_wait(session: Session) -> int:
    """Block until the task ends; exit with ``wait_exit_code`` (README: Tracked tasks).

    A failed task exits with its own exit code, which can coincide with a code task-wait reserves
    for itself (a command that exits 124, 126 or 130 on its own looks like timed_out, lost or
    cancelled; one that exits 123 like the wait's own timeout). ``task-wait --json`` tells them
    apart: its object has ``state`` (the task's state: "failed" for the task's own code, "running"
    or "pending" when the wait timed out), ``exit_code`` (the task's own), ``wait_exit_code`` and
    ``wait_timed_out``."""
    o = session.options
    task_id = check_id(o.task_id, "task id")
    if o.timeout_secs is not None and o.timeout_secs < 0:
        raise WorkflowError("--timeout-secs must be >= 0", ExitCode.USAGE)
    deadline = None if not o.timeout_secs else time.monotonic() + o.timeout_secs
    from helpers.progress import Progress

    progress = Progress(f"task {task_id}")  # on a TTY: state, elapsed, the last output line (every 2 s)
    longest = 2.0 if progress.on else 60.0
    while True:
        slice_secs = longest if deadline is None else max(0.0, min(longest, deadline - time.monotonic()))
        result = session.call_reconnecting("task-wait", {"id": task_id, "slice_secs": slice_secs,
                                                         "last_line": progress.on}, timeout=slice_secs + 60)
        record = result["record"]
        if not result["done"]:
            last = f" | {result['last_line']}" if result.get("last_line") else ""
            progress.show(f"{record['state']} {progress.elapsed()}{last}", force=True)
        if result["done"]:
            progress.done()
            code = wait_exit_code(record)
            if session.as_json:
                session.emit_json({**record, "wait_exit_code": code, "wait_timed_out": False})
            else:
                detail = f" [{record['failure_class']}]" if record.get("failure_class") else ""
                why = f": {record['reason']}" if record.get("reason") and record["state"] != "success" else ""
                session.print(f"task {task_id}: {record['state']}{detail}{why} (exit {code})")
            return code
        if deadline is not None and time.monotonic() >= deadline:
            progress.done()
            if session.as_json:
                session.emit_json({**record, "wait_exit_code": int(ExitCode.WAIT_TIMEOUT), "wait_timed_out": True})
            session.note(f"task-wait: {task_id} is still {record['state']} after {o.timeout_secs}s; it goes on "
                         f"(exit {int(ExitCode.WAIT_TIMEOUT)})")
            return int(ExitCode.WAIT_TIMEOUT)


def cmd_task_logs(session: Session) -> int:
    o = session.options
    task_id = check_id(o.task_id, "task id")
    if o.lines < 0:
        raise WorkflowError("--lines must be >= 0", ExitCode.USAGE)

    # task-logs -f: where in the log the shown bytes began (the pod says so on stderr) and how many were shown
    base: list[int | None] = [None]
    shown = [0]

    def out(chunk: bytes) -> None:
        shown[0] += len(chunk)
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()

    if not o.follow:
        return int(session.agent().call("task-logs", {"id": task_id, "lines": o.lines, "follow": False},
                                        on_stdout=out))

    def offset_line(chunk: bytes) -> None:
        found = re.search(rb"log-offset (\d+)", chunk)
        if found and base[0] is None:
            base[0] = int(found.group(1))

    def request() -> dict[str, object]:  # a reconnect goes on from the byte where the output stopped
        args: dict[str, object] = {"id": task_id, "lines": o.lines, "follow": True, "report_offset": True}
        if base[0] is not None:
            args["offset"] = base[0] + shown[0]
            base[0], shown[0] = None, 0  # the resumed call reports its own start
        return args

    return int(session.call_reconnecting("task-logs", on_stdout=out, on_stderr=offset_line, args_fn=request))


def cmd_task_kill(session: Session) -> int:
    task_id = check_id(session.options.task_id, "task id")
    if session.dry_run:
        session.print(f"would stop task {task_id} on {session.transport_label()}: SIGTERM to its supervisor, which "
                      f"stops the whole process tree (SIGKILL after {session.cfg.number('TASK_KILL_GRACE_SECS')}s); "
                      "state cancelled")
        return 0
    result = session.call("task-kill", {"id": task_id}, timeout=180)
    if session.as_json:
        session.emit_json(result)
    elif result["already"]:
        session.print(f"task {task_id} had already ended: {result['state']}")
    else:
        session.print(f"task {task_id}: {result['state']}")
    return 0

"""Agent ops for tracked tasks: task-run, task-status, task-list, task-kill, task-wait, task-logs.

A task lives in ``_tasks/<id>/`` (command.sh exactly as given, spec.json, status.json,
stdout.log) and runs under its supervisor in a window of WF_TMUX_SESSION. Reading a status
also tells the truth about tasks whose supervisor vanished: they become ``lost``, and any
process they left behind is stopped.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any, Dict, List, Optional

from . import proctree
from .context import Context, run_env
from .errors import DiskFullError, ExitCode, WorkflowError
from .ids import check_id
from .jsonio import keep_corrupt, locked_dir, parse_utc, read_json, utc_now, write_bytes, write_json
from .taskstate import TaskState, is_terminal, new_record, read_status, status_path, update_status

PENDING_GRACE_SECS = 30


def tasks_root(ctx: Context) -> str:
    return os.path.join(ctx.outputs, "_tasks")


def task_dir_of(ctx: Context, task_id: str, must_exist: bool = True) -> str:
    path = os.path.join(tasks_root(ctx), check_id(task_id, "task id"))
    if must_exist and not os.path.isfile(os.path.join(path, "status.json")):
        known = sorted(_task_ids(ctx))[-5:]
        hint = f"known tasks include: {', '.join(known)}" if known else "there are no tasks yet"
        raise WorkflowError(f"no task {task_id!r} on the pod ({hint}); see workflow.sh task-list", ExitCode.NOT_FOUND)
    return path


def _task_ids(ctx: Context) -> List[str]:
    root = tasks_root(ctx)
    try:
        return [name for name in os.listdir(root) if not name.startswith(("_", "."))]
    except FileNotFoundError:
        return []


# ----------------------------------------------------------------------------- start


def launch_supervised(task_dir: str, spec: Dict[str, Any], env: Dict[str, str], command_text: str,
                      tmux_base: List[str], session: str) -> Dict[str, Any]:
    """Write a task directory's spec, secrets and pending status, and start its supervisor in tmux."""
    os.makedirs(task_dir, exist_ok=True)
    import uuid  # with tmuxctl (subprocess): only a launch needs them, not task-status

    from . import tmuxctl

    spec.setdefault("marker", f"{spec['id']}-{uuid.uuid4().hex[:12]}")
    spec["tmux"] = {"session": session, "socket": tmux_base[2] if len(tmux_base) > 2 else None}
    write_json(os.path.join(task_dir, "spec.json"), spec)
    write_bytes(os.path.join(task_dir, spec.get("env_file", ".env.json")), json.dumps(env).encode(), 0o600)
    record = new_record(str(spec["id"]), command_text, spec)
    write_json(os.path.join(task_dir, "status.json"), record)
    argv = tmuxctl.agent_command("supervise", task_dir)
    window = tmuxctl.open_window(tmux_base, session, str(spec["id"]), argv, task_dir)
    return update_status(task_dir, tmux={**spec["tmux"], "window": window})


def _claim(ctx: Context, task_id: str, task_dir: str, force: bool) -> Optional[str]:
    """Create the task's directory (exactly one concurrent task-run wins: mkdir is atomic), moving an
    ended task aside first with ``force``; exit 7 if the id is taken. Returns where the old one went."""
    replaced = None
    if os.path.lexists(task_dir):
        try:
            old = read_status(task_dir) or {}
            corrupt = None
        except WorkflowError as exc:
            if exc.code != ExitCode.STATE_UNREADABLE or not force or isinstance(exc, DiskFullError):
                raise
            old, corrupt = {}, exc.message
        if not force:
            raise WorkflowError(f"task {task_id!r} already exists (state {old.get('state', 'being created')}); "
                                "choose another id, or --force to replace it (the old directory is kept)",
                                ExitCode.REFUSED)
        old = refresh(task_dir, old, ctx) if old else old
        if old and not is_terminal(old["state"]):
            raise WorkflowError(f"task {task_id!r} is still {old['state']}; stop it first: workflow.sh task-kill "
                                f"--id {task_id}", ExitCode.REFUSED)
        if old and old.get("cleanup") == "stopping":
            raise WorkflowError(f"task {task_id!r} is {old['state']} and its supervisor is still stopping its "
                                "processes; try again in a moment", ExitCode.REFUSED)
        ctx.sync_env()
        replaced = os.path.join(tasks_root(ctx), "_replaced", f"{task_id}.{utc_now().replace(':', '')}")
        os.makedirs(os.path.dirname(replaced), exist_ok=True)
        os.rename(task_dir, replaced)
        if corrupt is not None:  # the unreadable status is kept, under a name that says so
            keep_corrupt(status_path(replaced))
    else:
        ctx.sync_env()
    try:
        os.mkdir(task_dir)
    except FileExistsError:
        raise WorkflowError(f"task {task_id!r} was just created by another task-run; choose another id",
                            ExitCode.REFUSED) from None
    return replaced


def task_run(ctx: Context) -> Dict[str, Any]:
    args = ctx.args
    task_id = check_id(str(args["id"]), "task id")
    task_dir = task_dir_of(ctx, task_id, must_exist=False)
    # every check comes before any change: a refused task-run (even with --force) leaves everything as it was
    workdir = args.get("workdir") or ""
    if workdir:
        workdir = os.path.abspath(os.path.expanduser(workdir))
        if not os.path.isdir(workdir):
            raise WorkflowError(f"--workdir {workdir} does not exist on the pod", ExitCode.USAGE)
    else:
        repo = ctx.path("OPS_REMOTE_REPO")
        workdir = repo if os.path.isdir(repo) else task_dir
    command = str(args["cmd"])
    command_bytes = command.encode("utf-8", "surrogateescape")  # the exact bytes given, even if not UTF-8
    os.makedirs(tasks_root(ctx), exist_ok=True)
    with locked_dir(tasks_root(ctx)):  # one task-run at a time, until its status exists
        replaced = _claim(ctx, task_id, task_dir, bool(args.get("force")))
        write_bytes(os.path.join(task_dir, "command.sh"), command_bytes, 0o755)
        spec = {
            "id": task_id, "argv": ["bash", os.path.join(task_dir, "command.sh")], "workdir": workdir,
            "timeout_secs": int(args["timeout_secs"]), "stall_secs": int(args["stall_secs"]),
            "kill_grace_secs": ctx.number("TASK_KILL_GRACE_SECS", 10), "lost_after_secs": ctx.number(
                "TASK_LOST_AFTER_SECS", 60), "log": "stdout.log", "command_display": command.replace("\n", "; ")[:200],
            "user_patterns": args.get("user_patterns", ""),
            "user_patterns_source": args.get("user_patterns_source", ""),
        }
        env = {**run_env(ctx), **{str(k): str(v) for k, v in (args.get("env") or {}).items()}}
        record = launch_supervised(task_dir, spec, env, command, ctx.tmux_base(), ctx.get("WF_TMUX_SESSION"))
    return {"id": task_id, "task_dir": task_dir, "session": ctx.get("WF_TMUX_SESSION"), "state": record["state"],
            "replaced": replaced, "socket": ctx.get("TMUX_SOCKET")}


# ----------------------------------------------------------------------------- truth on read


def refresh(task_dir: str, record: Dict[str, Any], ctx: Optional[Context] = None,
            lost_after: Optional[float] = None) -> Dict[str, Any]:
    """Mark a running/pending task whose supervisor vanished as lost, and stop its leftovers.

    A task that ended but whose cleanup is still ``stopping`` (its supervisor was stopping the
    tree, or doing a run's final sync) is finished here if that supervisor is gone or has no
    heartbeat for ``lost_after`` seconds: its leftovers are stopped and cleanup becomes ``done``,
    so task-wait and task-logs --follow end, and task-kill leaves nothing behind."""
    if lost_after is None:
        lost_after = float((record.get("timeouts") or {}).get("lost_after_secs") or
                           (ctx.number("TASK_LOST_AFTER_SECS", 60) if ctx else 60))
    if is_terminal(record["state"]):
        if record.get("cleanup") != "stopping" or (record.get("supervisor_pid") and
                                                   _supervisor_problem(record, lost_after) is None):
            return record
        left = stop_leftovers(task_dir, record)
        return update_status(task_dir, cleanup="done", leftovers_stopped=left)
    reason = _supervisor_problem(record, lost_after)
    if reason is None and not record.get("supervisor_pid"):
        now = time.time()
        created = parse_utc(record.get("created_utc")) or now
        if now - created > PENDING_GRACE_SECS:
            reason = f"its supervisor never started ({now - created:.0f}s after task-run)"
    if reason is None:
        return record
    record = update_status(task_dir, state=TaskState.LOST.value, failure_class="lost", reason=reason,
                           ended_utc=utc_now(), cleanup="stopping")
    left = stop_leftovers(task_dir, record)
    return update_status(task_dir, cleanup="done", leftovers_stopped=left)


def _supervisor_problem(record: Dict[str, Any], lost_after: float) -> Optional[str]:
    """Why the record's supervisor can no longer be counted on (None: on this boot, alive, with a heartbeat
    within ``lost_after`` s; also None when no supervisor was recorded yet)."""
    boot = record.get("boot_id")
    if boot and boot != proctree.boot_id():
        return "the pod rebooted while it ran"
    if not record.get("supervisor_pid"):
        return None
    if not proctree.is_alive(record["supervisor_pid"], record.get("supervisor_start_time")):
        return "its supervisor is gone (tmux server killed, or the process was killed)"
    mono = record.get("heartbeat_mono")
    if isinstance(mono, (int, float)) and not isinstance(mono, bool):  # same boot: one monotonic clock for all
        age = time.monotonic() - mono
    else:
        beat = parse_utc(record.get("heartbeat_utc"))
        age = time.time() - beat if beat is not None else 0.0
    if age > lost_after:
        return f"no heartbeat for {age:.0f}s (supervisor hung, or the pod was suspended)"
    return None


def stop_leftovers(task_dir: str, record: Dict[str, Any]) -> int:
    spec = read_json(os.path.join(task_dir, "spec.json"), "task spec") or {}
    marker = spec.get("marker")
    if not marker:
        return 0
    pids = proctree.marked(marker)
    sup = record.get("supervisor_pid")
    if sup and proctree.is_alive(sup, record.get("supervisor_start_time")):
        pids.add(int(sup))
    count = len(pids)
    if count:
        proctree.stop_tree(lambda: proctree.marked(marker), 2.0)
        proctree.signal_all([p for p in pids if proctree.is_alive(p)], signal.SIGKILL)
    return count


def summary(record: Dict[str, Any]) -> Dict[str, Any]:
    started, ended = parse_utc(record.get("started_utc")), parse_utc(record.get("ended_utc"))
    beat = parse_utc(record.get("heartbeat_utc"))
    now = time.time()
    return {
        "id": record.get("id"), "state": record["state"], "exit_code": record.get("exit_code"),
        "signal": record.get("signal"), "failure_class": record.get("failure_class"), "reason": record.get("reason"),
        "created_utc": record.get("created_utc"), "started_utc": record.get("started_utc"),
        "ended_utc": record.get("ended_utc"),
        "duration_s": round((ended or now) - started, 1) if started else None,
        "heartbeat_age_s": None if beat is None or is_terminal(record["state"]) else round(now - beat, 1),
        "command": record.get("command", ""), "cleanup": record.get("cleanup"),
    }


def tail_lines(path: str, count: int) -> List[str]:
    """The last ``count`` complete lines (all with 0), reading backwards only as far as needed."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            start = size = handle.tell()
            data = b""
            while start > 0 and (count == 0 or data.count(b"\n") <= count):
                start = max(0, start - max(65536, len(data)))
                handle.seek(start)
                data = handle.read(size - start)
    except OSError:
        return []
    lines = data.decode("utf-8", "replace").splitlines()
    if start > 0:
        lines = lines[1:]  # the first one may be cut
    return lines[-count:] if count else lines


def task_status(ctx: Context) -> Dict[str, Any]:
    task_id = ctx.args.get("id")
    lines = int(ctx.args.get("lines", 10))
    if task_id:
        task_dir = task_dir_of(ctx, str(task_id))
        record = refresh(task_dir, read_status(task_dir) or {}, ctx)
        return {"task": {**summary(record), "fatal": record.get("fatal"), "timeouts": record.get("timeouts"),
                         "workdir": record.get("workdir"), "tmux": record.get("tmux"),
                         "last_lines": tail_lines(os.path.join(task_dir, "stdout.log"), lines),
                         "task_dir": task_dir}}
    return {"tasks": _all(ctx)}


def _all(ctx: Context) -> List[Dict[str, Any]]:
    out = []
    for task_id in _task_ids(ctx):
        task_dir = os.path.join(tasks_root(ctx), task_id)
        try:
            record = read_status(task_dir)
        except WorkflowError as exc:
            out.append({"id": task_id, "state": "unreadable", "reason": exc.message, "created_utc": ""})
            continue
        if record:
            out.append(summary(refresh(task_dir, record, ctx)))
    return sorted(out, key=lambda r: r.get("created_utc") or "", reverse=True)


def task_list(ctx: Context) -> Dict[str, Any]:
    return {"tasks": _all(ctx)}


def task_kill(ctx: Context) -> Dict[str, Any]:
    task_dir = task_dir_of(ctx, str(ctx.args["id"]))
    record = refresh(task_dir, read_status(task_dir) or {}, ctx)
    if is_terminal(record["state"]):
        return {"already": True, **summary(record)}
    sup = record.get("supervisor_pid")
    if sup and proctree.is_alive(sup, record.get("supervisor_start_time")):
        os.kill(int(sup), signal.SIGTERM)
        grace = float((record.get("timeouts") or {}).get("kill_grace_secs") or 10)
        deadline = time.monotonic() + grace + 15
        while time.monotonic() < deadline:
            record = read_status(task_dir) or record
            if is_terminal(record["state"]) and record.get("cleanup") == "done":
                return {"already": False, **summary(record)}
            if not proctree.is_alive(sup, record.get("supervisor_start_time")):
                break
            time.sleep(0.1)
    # no live supervisor (or it did not finish in time): do it here
    record = update_status(task_dir, state=TaskState.CANCELLED.value, failure_class="killed",
                           reason="cancelled (task-kill)", ended_utc=utc_now(), cleanup="stopping")
    left = stop_leftovers(task_dir, record)
    record = update_status(task_dir, cleanup="done", leftovers_stopped=left)
    return {"already": False, **summary(record)}


def task_wait(ctx: Context) -> Dict[str, Any]:
    """Wait up to ``slice_secs`` on the pod; the caller repeats until its own deadline."""
    task_dir = task_dir_of(ctx, str(ctx.args["id"]))
    deadline = time.monotonic() + float(ctx.args.get("slice_secs", 60))
    while True:
        record = refresh(task_dir, read_status(task_dir) or {}, ctx)
        if is_terminal(record["state"]) and record.get("cleanup") in ("done", None):
            return {"done": True, "record": {**summary(record), "fatal": record.get("fatal")}}
        if time.monotonic() >= deadline:
            last = tail_lines(os.path.join(task_dir, "stdout.log"), 1) if ctx.args.get("last_line") else []
            return {"done": False, "record": summary(record), "last_line": last[-1] if last else None}
        time.sleep(0.1)


def task_logs(ctx: Context) -> int:
    """Streaming op: print the log (last N lines), then with follow, new output until the task ends."""
    task_dir = task_dir_of(ctx, str(ctx.args["id"]))
    path = os.path.join(task_dir, "stdout.log")
    count = int(ctx.args.get("lines", 50))
    out = sys.stdout.buffer
    if ctx.args.get("offset") is not None:  # a follow resumed after a reconnect: from where the client got to
        count, offset = 0, max(0, int(ctx.args["offset"]))
    elif count:
        text = ("\n".join(tail_lines(path, count)) + "\n").encode()
        text = b"" if text == b"\n" else text
        out.write(text)
        offset = os.path.getsize(path) if os.path.exists(path) else 0
        start = max(0, offset - len(text))
    else:
        offset = start = 0
    if ctx.args.get("report_offset"):  # where the printed bytes begin in the log, so a resume can go on
        sys.stderr.write("log-offset %d\n" % (offset if ctx.args.get("offset") is not None else start))
        sys.stderr.flush()
    out.flush()
    if not ctx.args.get("follow"):
        if not count:
            offset = _copy_from(path, offset, out)
        return 0
    while True:
        offset = _copy_from(path, offset, out)
        record = refresh(task_dir, read_status(task_dir) or {}, ctx)
        if is_terminal(record["state"]) and record.get("cleanup") in ("done", None):
            _copy_from(path, offset, out)
            return 0
        time.sleep(0.2)


def _copy_from(path: str, offset: int, out: Any) -> int:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            while True:
                chunk = handle.read(65536)
                if not chunk:
                    break
                out.write(chunk)
                offset += len(chunk)
    except FileNotFoundError:
        return offset
    out.flush()
    return offset

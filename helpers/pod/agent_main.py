"""Entry point of the pod agent: ``python3 -I -S agent-<hash>.pyz OP [ARGS]``.

Request/reply ops read one JSON request on stdin ({"config": {...}, "args": {...},
"env_file": {...}?}) and print one JSON reply line on stdout ({"ok": true, "result": ...} or
{"ok": false, "error": "...", "code": N}); progress goes to stderr. Long-running ops started
in tmux (supervise, sweep-exec) take argv instead. Each op's module is imported on demand so a
read-only call stays fast.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from typing import Any, Callable, Dict, List, Tuple

from .context import Context
from .errors import ExitCode, WorkflowError

# op -> (module, function) for request/reply ops
OPS: Dict[str, Tuple[str, str]] = {
    "fsm-status": ("ops_state", "fsm_status"),
    "fsm-reset": ("ops_state", "fsm_reset"),
    "fsm-transition": ("ops_state", "fsm_transition"),
    "pod-status": ("probes", "pod_status"),
    "bootstrap": ("bootstrap", "bootstrap"),
    "checkout": ("checkout", "checkout"),
    "task-run": ("tasks", "task_run"),
    "task-status": ("tasks", "task_status"),
    "task-list": ("tasks", "task_list"),
    "task-kill": ("tasks", "task_kill"),
    "task-wait": ("tasks", "task_wait"),
    "sweep-start": ("campaigns", "sweep_start"),
    "sweep-status": ("campaignstate", "sweep_status"),  # a concluded campaign: without campaigns' imports
    "sweep-stop": ("campaigns", "sweep_stop"),
    "sweep-resume": ("campaigns", "sweep_resume"),
    "manage-probe": ("manage_ops", "manage_probe"),
    "manage-prepare": ("manage_ops", "manage_prepare"),
    "sweep-logs": ("sweepinfo", "sweep_logs"),
    "sweep-list": ("sweepinfo", "sweep_list"),
    "fetch-list": ("fetchlist", "fetch_list"),
    "leaderboard": ("results", "leaderboard"),
    "compare": ("results", "compare"),
    "promote-source": ("results", "promote_source"),
    "promote-record": ("results", "promote_record"),
    "archive": ("archive", "archive"),
    "track": ("tracking.ops", "track"),
    "wandb-sync": ("tracking.wandb", "wandb_sync"),
    "sweep-watch-data": ("watchdata", "sweep_watch_data"),
    "run-metrics": ("watchdata", "run_metrics"),
}
# ops whose stdout is raw data (not a JSON reply); errors go to stderr
STREAM_OPS: Dict[str, Tuple[str, str]] = {
    "task-logs": ("tasks", "task_logs"),
}
# ops that run for a long time in tmux, with argv
LONG_OPS: Dict[str, Tuple[str, str]] = {
    "supervise": ("supervisor", "supervise_main"),
    "sweep-exec": ("executor", "executor_main"),
    "slurm-task": ("executors.slurm_task", "slurm_task_main"),  # one array task of a Slurm campaign
    "tracking-sidecar": ("tracking.sidecar", "sidecar_main"),  # run by the run venv's python (mlflow)
}


def _load(module: str, function: str) -> Callable[..., Any]:
    package = __name__.rsplit(".", 1)[0]
    found: Callable[..., Any] = getattr(importlib.import_module(f"{package}.{module}"), function)
    return found


def _emit(reply: Dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(reply, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def main(argv: List[str]) -> int:
    if not argv:
        sys.stderr.write("usage: agent OP  (ops: %s)\n" % ", ".join(sorted([*OPS, *STREAM_OPS, *LONG_OPS])))
        return ExitCode.USAGE
    op, rest = argv[0], argv[1:]
    if op in LONG_OPS:
        return int(_load(*LONG_OPS[op])(rest) or 0)
    if op in STREAM_OPS:
        try:
            request = json.loads(sys.stdin.read() or "{}")
            return int(_load(*STREAM_OPS[op])(Context(request.get("config", {}), request.get("args", {}))))
        except WorkflowError as exc:
            sys.stderr.write(exc.message + "\n")
            return exc.code
        except (BrokenPipeError, KeyboardInterrupt):
            return ExitCode.FAILED
        except OSError as exc:
            error = _os_error(exc)
            sys.stderr.write(error.message + "\n")
            return error.code
    if op not in OPS:
        _emit({"ok": False, "error": f"unknown agent op {op!r}; the local workflow.sh and the pod agent "
               "disagree (re-run to re-upload)", "code": ExitCode.USAGE})
        return ExitCode.USAGE
    try:
        request = json.loads(sys.stdin.read() or "{}")
        ctx = Context(request.get("config", {}), request.get("args", {}), request.get("env_file"))
        result = _load(*OPS[op])(ctx)
    except WorkflowError as exc:
        _emit({"ok": False, "error": exc.message, "code": exc.code})
        return exc.code
    except KeyboardInterrupt:
        _emit({"ok": False, "error": "interrupted", "code": ExitCode.FAILED})
        return ExitCode.FAILED
    except OSError as exc:
        if not _is_full(exc):
            return _bug(op, exc)
        error = _os_error(exc)
        _emit({"ok": False, "error": error.message, "code": error.code})
        return error.code
    except Exception as exc:  # a bug: say where, never a half answer
        return _bug(op, exc)
    _emit({"ok": True, "result": result})
    return ExitCode.OK


def _bug(op: str, exc: BaseException) -> int:
    import traceback

    traceback.print_exception(type(exc), exc, exc.__traceback__)
    _emit({"ok": False, "error": f"internal error in the pod agent ({op}): {exc.__class__.__name__}: {exc} "
           "(a bug in workflow.sh; the traceback is above)", "code": ExitCode.FAILED})
    return ExitCode.FAILED


def _is_full(exc: OSError) -> bool:
    from .jsonio import is_disk_full

    return is_disk_full(exc)


def _os_error(exc: OSError) -> WorkflowError:
    """A full filesystem met outside the state writers (a log, a lock file): one line naming it."""
    from .jsonio import disk_full_error

    if _is_full(exc):
        return disk_full_error(exc.filename or os.getcwd(), exc)
    return WorkflowError(f"{exc.strerror or exc} ({exc.filename or 'no file named'})", ExitCode.FAILED)

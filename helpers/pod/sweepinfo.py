"""Read-only sweep ops: sweep-logs (one attempt's output of a run) and sweep-list (every campaign)."""

from __future__ import annotations

import os
from typing import Any, Dict, List

from .campaignstate import executor_state, latest_file, root  # not campaigns: sweep-list starts lean
from .context import Context
from .errors import ExitCode, WorkflowError
from .ids import check_id
from .jsonio import read_json
from .taskstate import is_terminal, read_status

LOG_CHUNK = 1 << 20  # bytes sent per call (a --follow asks again from the offset)


def sweep_logs(ctx: Context) -> Dict[str, Any]:
    from . import attempts, runs  # here: sweep-list needs neither

    run_id = check_id(str(ctx.args.get("run_id") or ""), "run id")
    path = runs.run_dir(ctx.outputs, run_id)
    if runs.owner(path) is None:
        raise WorkflowError(f"no sweep run {run_id!r} on the pod (see workflow.sh sweep-status)", ExitCode.NOT_FOUND)
    numbers = attempts.numbers(path)
    wanted = ctx.args.get("attempt")
    if wanted is not None and int(wanted) not in numbers:
        raise WorkflowError(f"run {run_id} has no attempt {wanted} (attempts: "
                            f"{', '.join(map(str, numbers)) or 'none yet'})", ExitCode.NOT_FOUND)
    number = int(wanted) if wanted is not None else (numbers[-1] if numbers else 0)
    if number:
        own = os.path.join(attempts.attempt_dir(path, number), "run.log")
        final = attempts.ended(path, number)
        if final and os.path.exists(own):
            log, start = own, 0
        else:
            log, start = os.path.join(path, "run.log"), int(attempts.info(path, number).get("log_offset") or 0)
            final = final or is_terminal((read_status(path) or {}).get("state", "pending"))
    else:  # a run from before attempts were kept apart: its whole run.log
        log, start, final = os.path.join(path, "run.log"), 0, True
    offset = int(ctx.args.get("offset") or 0)
    try:
        size = os.path.getsize(log) - start
        with open(log, "rb") as handle:
            if not offset and size > LOG_CHUNK and not ctx.args.get("follow"):
                offset = size - LOG_CHUNK
            handle.seek(start + offset)
            data = handle.read(LOG_CHUNK)
    except OSError:
        data = b""
    return {"run_id": run_id, "attempt": number, "attempts": numbers, "log": log, "text": data.decode(
        "utf-8", "replace"), "offset": offset + len(data), "final": bool(final) and len(data) < LOG_CHUNK}


def sweep_list(ctx: Context) -> Dict[str, Any]:
    found: List[Dict[str, Any]] = []
    base = root(ctx)
    try:
        latest = open(latest_file(ctx)).read().strip()  # noqa: SIM115 - one short read
    except OSError:
        latest = ""
    for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        path = os.path.join(base, name)
        manifest = read_json(os.path.join(path, "manifest.json"), "campaign manifest")
        if not isinstance(manifest, dict):
            continue
        state, record = executor_state(path)
        index = read_json(os.path.join(path, "index.json"), "campaign index") or {}
        rows = manifest.get("rows", [])
        ok = sum(1 for r in rows if (index.get(r["run_id"]) or {}).get("ok"))
        failed = sum(1 for r in rows if (index.get(r["run_id"]) or {}).get("ok") is False)
        found.append({"campaign_id": name, "state": state, "rows": len(rows), "ok": ok, "failed": failed,
                      "created_utc": manifest.get("created_utc"), "ended_utc": record.get("ended_utc"),
                      "csv_name": manifest.get("csv_name"), "latest": name == latest})
    return {"campaigns": found}

"""Agent op ``track``: (re)send a campaign from the pod's files to its tracking server, through one
``--once`` pass of the sidecar in the run venv. Idempotent: the cursors say what was sent."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any, Dict

from ..context import Context
from ..errors import ExitCode, WorkflowError
from ..jsonio import read_json
from . import enabled, sidecar_argv, sidecar_env

TRACK_TIMEOUT_SECS = 1800


def track(ctx: Context) -> Dict[str, Any]:
    from ..campaigns import LIVE, campaign_dir, executor_state

    campaign_id, path = campaign_dir(ctx, ctx.args.get("campaign"))
    manifest = read_json(os.path.join(path, "manifest.json"), "campaign manifest") or {}
    config = dict(manifest.get("config") or {})
    uri = ctx.get("MLFLOW_TRACKING_URI")
    if not enabled({"MLFLOW_TRACKING_URI": uri}):
        raise WorkflowError("track: MLFLOW_TRACKING_URI is empty; set it (in workflow.env or --set "
                            "MLFLOW_TRACKING_URI=...) to the server to send the campaign to", ExitCode.USAGE)
    if executor_state(path)[0] in LIVE:
        raise WorkflowError(f"track: campaign {campaign_id} is still running; its sidecar is sending it live "
                            f"(watch with workflow.sh sweep-status --campaign {campaign_id})", ExitCode.REFUSED)
    first = config.get("MLFLOW_TRACKING_URI", "").strip()
    if first and first != uri.strip():
        raise WorkflowError(f"track: campaign {campaign_id} was tracked to another MLFLOW_TRACKING_URI; sending it "
                            "to a second server is not supported (its cursors belong to the first)", ExitCode.REFUSED)
    if not first:
        _adopt(path, uri, ctx)
    python = os.path.join(ctx.path("VENV_DIR"), "bin", "python")
    if not os.path.exists(python):
        raise WorkflowError(f"track: no run venv at {ctx.path('VENV_DIR')}; run workflow.sh checkout first",
                            ExitCode.FAILED)
    ctx.sync_env()
    proc = subprocess.run(sidecar_argv(ctx.path("VENV_DIR"), path, "--once"), env=sidecar_env(ctx),
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=TRACK_TIMEOUT_SECS)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    reply: Dict[str, Any] = json.loads(lines[-1]) if lines else {}
    if not reply.get("ok"):
        why = reply.get("error") or (proc.stderr.strip().splitlines() or ["no output"])[-1]
        code = ExitCode.REFUSED if reply.get("busy") else ExitCode.FAILED
        raise WorkflowError(f"track: campaign {campaign_id}: {why}; nothing already sent is sent again on the "
                            "next try", code)
    return {"campaign_id": campaign_id, "rows": reply.get("rows", {}), "settled": reply.get("settled"),
            "parent_run_id": (read_json(os.path.join(path, "tracking.json"), "tracking record") or {}).get(
                "parent_run_id")}


def _adopt(path: str, uri: str, ctx: Context) -> None:
    """A campaign started with tracking off: its manifest is read-only, so the sidecar reads the tracking
    keys of this call from tracking-config.json beside it."""
    from ..jsonio import write_json

    keys = {k: ctx.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT", "MLFLOW_PARENT_RUN_ID")}
    keys["MLFLOW_TRACKING_URI"] = uri
    write_json(os.path.join(path, "tracking-config.json"), keys)

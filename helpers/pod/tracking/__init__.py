"""MLflow tracking on the pod: the hooks the executor and sweep-status call (stdlib only).

The work is done by one tracking sidecar per campaign (sidecar.py), a process the executor starts
beside itself with the RUN VENV's python (where checkout put mlflow-skinny), so the agent stays
stdlib-only and a slow or dead tracking server never touches a row. Files:

- ``_campaigns/<id>/tracking.json``: the parent run, the experiment, the sidecar's last error;
- ``_campaigns/<id>/tracking/<run_id>.json``: the row's child run id, its metrics.jsonl byte cursor
  and the last status sent (a retry or a resume of the campaign reuses the child);
- ``_campaigns/<id>/tracking.log``: what the sidecar did (never a credential).
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional

from ..jsonio import read_json

RECORD = "tracking.json"
LOG = "tracking.log"
LOCK = "tracking.lock"
DEFAULT_WAIT_SECS = 20


def campaign_config(path: str, manifest: Dict[str, Any]) -> Dict[str, str]:
    """The campaign's config, with the tracking keys `track` gave a campaign started without them."""
    extra = read_json(os.path.join(path, "tracking-config.json"), "tracking config") if os.path.exists(
        os.path.join(path, "tracking-config.json")) else None
    return {**(manifest.get("config") or {}), **(extra if isinstance(extra, dict) else {})}


def enabled(config: Dict[str, str]) -> bool:
    return bool(config.get("MLFLOW_TRACKING_URI", "").strip())


def record(path: str) -> Dict[str, Any]:
    """The tracking record of a campaign dir, or of ``<campaign>/tracking/<run_id>`` ({} if none)."""
    file = os.path.join(path, RECORD) if os.path.isdir(path) else path + ".json"
    found = read_json(file, "tracking record") if os.path.exists(file) else None
    return found if isinstance(found, dict) else {}


def row_record(campaign_path: str, run_id: str) -> Dict[str, Any]:
    return record(os.path.join(campaign_path, "tracking", run_id))


def sidecar_argv(venv: str, *args: str) -> List[str]:
    from ..tmuxctl import agent_command

    argv = agent_command("tracking-sidecar", *args)
    # the run venv's python, with its site-packages (no -S): that is where mlflow is
    return [os.path.join(venv, "bin", "python"), *[word for word in argv[1:] if word != "-S"]]


def sidecar_env(ctx: Any) -> Dict[str, str]:
    from ..context import run_env

    env = {**os.environ, **run_env(ctx)}
    # a down server must not hold the sidecar for minutes: one try per request, our own loop retries
    env.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    env.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    for key in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(key, None)
    return env


def start_sidecar(ctx: Any, campaign_path: str) -> Optional[int]:
    """Start the campaign's sidecar (detached, its own session); None when tracking is off."""
    if not enabled(ctx.config):
        return None
    import subprocess  # here: sweep-status reads tracking.status without it

    log = open(os.path.join(campaign_path, LOG), "ab")  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen(sidecar_argv(ctx.path("VENV_DIR"), campaign_path), cwd=campaign_path,
                                env=sidecar_env(ctx), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
    finally:
        log.close()
    return proc.pid


def row_env(config: Dict[str, str], campaign_path: str, run_id: str, env: Dict[str, str], wait_until: float,
            out_dir: str = "") -> Dict[str, str]:
    """The row's own tracking variables: W&B's (wandb.py), and its MLflow child run id (waiting for the
    sidecar to create it until ``wait_until``, a monotonic time), never the parent's."""
    from . import wandb

    wandb.row_env(config, os.path.basename(campaign_path), run_id, out_dir or os.path.join(
        os.path.dirname(os.path.dirname(campaign_path)), run_id), env)
    for key in ("MLFLOW_PARENT_RUN_ID", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT"):
        env.pop(key, None)
    if not enabled(config):
        return env
    while True:
        child = row_record(campaign_path, run_id).get("mlflow_run_id")
        if child or time.monotonic() >= wait_until:
            break
        time.sleep(0.2)
    if child:
        env["MLFLOW_RUN_ID"] = str(child)
    return env


def wait_children(campaign_path: str, run_ids: List[str], until: float, since_utc: str) -> int:
    """Wait once, before the executor's first row, until every row of ``run_ids`` has its child run (the
    sidecar creates them all side by side on its first pass), ``until`` (monotonic) passes, or the
    sidecar records that the server did not answer since ``since_utc``: rows then start without a child
    id and the sidecar creates their children when the server answers. The number of rows still without."""
    from ..jsonio import parse_utc

    since = parse_utc(since_utc) or 0.0
    while True:
        left = [r for r in run_ids if not row_record(campaign_path, r).get("mlflow_run_id")]
        top = record(campaign_path)
        failed = top.get("last_error") and (parse_utc(top.get("last_error_utc")) or 0.0) + 1 >= since
        if not left or failed or time.monotonic() >= until:
            return len(left)
        time.sleep(0.1)


def wait_secs(config: Dict[str, str]) -> float:
    try:
        return float(config.get("TRACKING_WAIT_SECS") or DEFAULT_WAIT_SECS)
    except ValueError:
        return DEFAULT_WAIT_SECS


def status(config: Dict[str, str], outputs: str, campaign_path: str, run_ids: List[str],
           out_dirs: Dict[str, str]) -> Optional[Dict[str, Any]]:
    """For sweep-status: the parent run and the rows whose tracking is behind (lines not yet sent, or
    a final status not yet set); with SWEEP_WANDB=1 also ``wandb``, each row's W&B run (wandb.py)."""
    from . import wandb

    seen = wandb.status(config, outputs, os.path.basename(campaign_path), run_ids, out_dirs)
    found = _mlflow_status(config, outputs, campaign_path, run_ids, out_dirs)
    if seen is None:
        return found
    return {**(found or {}), "wandb": seen}


def _mlflow_status(config: Dict[str, str], outputs: str, campaign_path: str, run_ids: List[str],
                   out_dirs: Dict[str, str]) -> Optional[Dict[str, Any]]:
    if not enabled(config):
        return None
    from .cursor import read_new

    top = record(campaign_path)
    late: List[Dict[str, Any]] = []
    for run_id in run_ids:
        path = os.path.join(outputs, run_id)
        rec = row_record(campaign_path, run_id)
        if not rec.get("mlflow_run_id"):
            if os.path.isdir(path):
                late.append({"run_id": run_id, "lines": None, "why": "no child run yet"})
            continue
        data, _ = read_new(os.path.join(out_dirs.get(run_id, path), "metrics.jsonl"), int(rec.get("cursor") or 0))
        lines = data.count(b"\n")
        done = read_json(os.path.join(path, "summary.json"), "run summary") if os.path.exists(
            os.path.join(path, "summary.json")) else None
        unfinal = isinstance(done, dict) and done.get("ended_utc") and done.get("campaign_id") == rec.get(
            "campaign_id") and rec.get("final_ended_utc") != done.get("ended_utc")
        if lines or unfinal:
            late.append({"run_id": run_id, "lines": lines, "why": "final status not sent" if unfinal and not lines
                         else f"{lines} metrics line(s) not sent"})
    return {"parent_run_id": top.get("parent_run_id"), "experiment_id": top.get("experiment_id"),
            "last_error": top.get("last_error"), "behind": late}

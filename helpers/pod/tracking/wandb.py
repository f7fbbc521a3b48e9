"""W&B pass-through for sweep rows (stdlib only): the row's W&B variables, the check that its W&B run
showed up, and the ``wandb-sync`` op for offline runs.

With SWEEP_WANDB=1 each row gets WANDB_RUN_GROUP = campaign id, WANDB_NAME = run_id, a stable
WANDB_RUN_ID (the same for every attempt, so with WANDB_RESUME=allow a retry continues the same W&B
run) and WANDB_DIR = its out_dir (so its W&B files live in the run directory). After the row, its
run directory (``wandb/run-*-<id>`` or, offline, ``wandb/offline-run-*-<id>`` with a non-empty
``run-<id>.wandb``) must exist and have appeared within WANDB_VERIFY_SECS of the attempt's start;
otherwise the summary says so, and with WANDB_REQUIRED=1 an ok row becomes failed [tracking].
"""

from __future__ import annotations

import os
import re
import time
from typing import Any, Dict, List, Optional, Tuple

from ..jsonio import parse_utc, write_json

PASS_KEYS = ("WANDB_PROJECT", "WANDB_ENTITY", "WANDB_MODE")
_DIR = re.compile(r"^(offline-)?run-(\d{8}_\d{6})-(.+)$")


def on(config: Dict[str, str]) -> bool:
    return config.get("SWEEP_WANDB", "0") in ("1", "true", "True", "yes")


def run_id_for(campaign_id: str, run_id: str) -> str:
    """A W&B run id that is the same for every attempt of this row of this campaign."""
    import hashlib  # here: sweep-status reads wandb.status without it

    digest = hashlib.sha256(f"{campaign_id}/{run_id}".encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9_-]', '-', run_id)[:48]}-{digest}"


def row_env(config: Dict[str, str], campaign_id: str, run_id: str, out_dir: str, env: Dict[str, str]) -> None:
    for key in PASS_KEYS:  # an empty key means W&B's own default, not an empty value
        if not env.get(key):
            env.pop(key, None)
    if not on(config):
        return
    env.update(WANDB_RUN_GROUP=campaign_id, WANDB_NAME=run_id, WANDB_RUN_ID=run_id_for(campaign_id, run_id),
               WANDB_RESUME="allow", WANDB_DIR=out_dir)


def run_dirs(out_dir: str, wandb_id: str) -> List[Tuple[float, str, bool]]:
    """(start time, path, offline) of every W&B run directory of ``wandb_id`` under out_dir/wandb."""
    base = os.path.join(out_dir, "wandb")
    found = []
    try:
        names = os.listdir(base)
    except OSError:
        return []
    for name in names:
        match = _DIR.match(name)
        if not match or match.group(3) != wandb_id:
            continue
        stamp = time.strptime(match.group(2), "%Y%m%d_%H%M%S")  # wandb names them in local time
        found.append((time.mktime(stamp), os.path.join(base, name), bool(match.group(1))))
    return sorted(found)


def verify(config: Dict[str, str], out_dir: str, wandb_id: str, started_utc: Optional[str]) -> Tuple[bool, str]:
    limit = int(config.get("WANDB_VERIFY_SECS") or 300)
    dirs = run_dirs(out_dir, wandb_id)
    if not dirs:
        return False, f"no W&B run directory for run id {wandb_id} under {os.path.join(out_dir, 'wandb')}"
    start = parse_utc(started_utc) if started_utc else None
    late = [d for d in dirs if start is not None and d[0] > start + limit + 1]
    if start is not None and len(late) == len(dirs):
        return False, f"the W&B run appeared {dirs[0][0] - start:.0f}s after the start (WANDB_VERIFY_SECS={limit})"
    if config.get("WANDB_MODE") == "offline":
        offline = [d for d in dirs if d[2]]
        if not offline:
            return False, "WANDB_MODE=offline but no offline-run directory"
        wandb_file = os.path.join(offline[-1][1], f"run-{wandb_id}.wandb")
        if not os.path.exists(wandb_file) or os.path.getsize(wandb_file) == 0:
            return False, f"{wandb_file} is missing or empty: the offline run recorded nothing"
    return True, f"{len(dirs)} W&B run director{'y' if len(dirs) == 1 else 'ies'} ({os.path.basename(dirs[-1][1])})"


def check(config: Dict[str, str], run_path: str, out_dir: str, done: Dict[str, Any], write: bool = True
          ) -> Dict[str, Any]:
    """The summary with its W&B verdict (rewritten when SWEEP_WANDB=1 and the mode is not disabled;
    ``write=False``: only the record, written by the caller)."""
    if not on(config) or config.get("WANDB_MODE") == "disabled" or done.get("state") == "cancelled":
        return done
    wandb_id = run_id_for(str(done.get("campaign_id")), str(done.get("run_id")))
    history = done.get("attempt_history") or [{}]
    ok, why = verify(config, out_dir, wandb_id, history[-1].get("started_utc") or done.get("started_utc"))
    dirs = run_dirs(out_dir, wandb_id)
    done = {**done, "wandb": {"run_id": wandb_id, "group": done.get("campaign_id"), "verified": ok, "detail": why,
                              "dir": dirs[-1][1] if dirs else None, "offline": bool(dirs) and dirs[-1][2]}}
    if not ok and config.get("WANDB_REQUIRED", "0") in ("1", "true", "True", "yes") and done.get("ok"):
        done.update(ok=False, state="failed", failure_class="tracking", reason_line=f"W&B not verified: {why}")
    if write:
        write_json(os.path.join(run_path, "summary.json"), done)
    return done


def synced(run_dir: str, wandb_id: str) -> bool:
    """An offline run directory that `wandb sync` has uploaded: it leaves ``run-<id>.wandb.synced``."""
    return os.path.exists(os.path.join(run_dir, f"run-{wandb_id}.wandb.synced"))


def row_view(campaign_id: str, run_id: str, out_dir: str, done: Dict[str, Any]) -> Dict[str, Any]:
    """sweep-status: a row's W&B run: its id, latest directory, offline or not, synced or not, and the
    verdict its summary got (None while it runs)."""
    wandb_id = run_id_for(campaign_id, run_id)
    dirs = run_dirs(out_dir, wandb_id)
    offline = [d[1] for d in dirs if d[2]]
    found = done.get("wandb") if done.get("campaign_id") == campaign_id else None
    verdict: Dict[str, Any] = found if isinstance(found, dict) else {}
    return {"run_id": run_id, "wandb_id": wandb_id, "dir": dirs[-1][1] if dirs else None, "runs": len(dirs),
            "offline": bool(offline), "synced": all(synced(d, wandb_id) for d in offline) if offline else None,
            "verified": verdict.get("verified"), "detail": verdict.get("detail")}


def status(config: Dict[str, str], outputs: str, campaign_id: str, run_ids: List[str],
           out_dirs: Dict[str, str]) -> Optional[Dict[str, Any]]:
    """The W&B part of sweep-status (SWEEP_WANDB=1): every started row's W&B run, the offline ones not
    synced yet, the ones not verified."""
    if not on(config) or config.get("WANDB_MODE") == "disabled":
        return None
    from ..jsonio import read_json

    rows = []
    for run_id in run_ids:
        path = os.path.join(outputs, run_id)
        if not os.path.isdir(path):
            continue
        done = read_json(os.path.join(path, "summary.json"), "run summary") if os.path.exists(
            os.path.join(path, "summary.json")) else None
        rows.append(row_view(campaign_id, run_id, out_dirs.get(run_id, path), done if isinstance(done, dict) else {}))
    return {"mode": config.get("WANDB_MODE") or "online", "rows": rows,
            "not_synced": [r["run_id"] for r in rows if r["offline"] and not r["synced"]],
            "not_verified": [r["run_id"] for r in rows if r["verified"] is False]}


def _hide(text: str, env: Dict[str, str]) -> str:
    for key, value in env.items():
        if value and len(value) >= 4 and re.search(r"(KEY|TOKEN|SECRET|PASSWORD)$", key):
            text = text.replace(value, "<hidden>")
    return text


def wandb_sync(ctx: Any) -> Dict[str, Any]:
    """Agent op: `wandb sync` every offline W&B run of the campaign's rows, with the run venv's wandb;
    the rows that did not sync (or have no offline run) are listed."""
    from .. import procs
    from ..campaigns import campaign_dir
    from ..context import run_env
    from ..jsonio import read_json

    campaign_id, path = campaign_dir(ctx, ctx.args.get("campaign"))
    manifest = read_json(os.path.join(path, "manifest.json"), "campaign manifest") or {}
    python = os.path.join(ctx.path("VENV_DIR"), "bin", "python")
    if procs.run([python, "-c", "import wandb"], timeout=120)[0] != 0:
        from ..errors import ExitCode, WorkflowError

        raise WorkflowError(f"wandb-sync: the run venv ({ctx.path('VENV_DIR')}) cannot import wandb; add wandb to "
                            "the trainer's requirements (PIP_INSTALL_ARGS) and run workflow.sh checkout",
                            ExitCode.FAILED)
    env = {**os.environ, **run_env(ctx)}
    rows: Dict[str, Any] = {}
    for row in manifest.get("rows") or []:
        run_id = str(row["run_id"])
        run_path = os.path.join(ctx.outputs, run_id)
        run_manifest = read_json(os.path.join(run_path, "run_manifest.json"), "run manifest") if os.path.exists(
            os.path.join(run_path, "run_manifest.json")) else None
        out_dir = (run_manifest or {}).get("out_dir") or run_path
        offline = [d for d in run_dirs(out_dir, run_id_for(campaign_id, run_id)) if d[2]]
        if not offline:
            rows[run_id] = {"synced": False, "runs": 0, "error": "no offline W&B run"}
            continue
        errors = []
        wandb_id = run_id_for(campaign_id, run_id)
        todo = [directory for _, directory, _ in offline if not synced(directory, wandb_id)]  # done before: skip
        for directory in todo:
            code, out = procs.run([python, "-m", "wandb", "sync", directory], timeout=600, env=env)
            if code != 0:
                errors.append(_hide(procs.tail(out, 1), env))
            elif not synced(directory, wandb_id):  # the marker is wandb's own word that it uploaded the run
                errors.append(f"wandb sync exited 0 but left no run-{wandb_id}.wandb.synced in {directory}")
        rows[run_id] = {"synced": not errors, "runs": len(offline), "already": len(offline) - len(todo),
                        "error": errors[0] if errors else None}
    return {"campaign_id": campaign_id, "rows": rows,
            "not_synced": sorted(r for r, v in rows.items() if not v["synced"])}

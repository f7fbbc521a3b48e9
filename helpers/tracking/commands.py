"""`workflow.sh track --campaign ID`: (re)send a finished campaign from the pod's files to the MLflow
server (one pass of the pod's tracking sidecar, in the run venv; idempotent through its cursors), and
the tracking lines of sweep-status."""

from __future__ import annotations

from typing import Any

from helpers.errors import ExitCode, WorkflowError
from helpers.session import Session


def _uri_shown(uri: str) -> str:
    from helpers.pod.tracking.sidecar import redact_uri

    return redact_uri(uri)


def cmd_track(session: Session) -> int:
    campaign = session.options.campaign
    uri = session.cfg.text("MLFLOW_TRACKING_URI")
    if session.dry_run:
        session.print(f"would send campaign {campaign or '(the latest)'} on {session.transport_label()} to "
                      f"{_uri_shown(uri) or '(MLFLOW_TRACKING_URI is empty: track would refuse)'}: the parent run, "
                      "one child run per row, every metrics.jsonl line not sent yet, final statuses and artifacts")
        return 0
    if not uri.strip():
        raise WorkflowError("track: MLFLOW_TRACKING_URI is empty; set it in workflow.env (or --set "
                            "MLFLOW_TRACKING_URI=http://host:5000) to the server to send the campaign to",
                            ExitCode.USAGE)
    result = session.call("track", {"campaign": campaign}, sync_env=True, timeout=1900)
    if session.as_json:
        session.emit_json(result)
        return 0
    session.print(f"campaign {result['campaign_id']} -> {_uri_shown(uri)}: parent run {result.get('parent_run_id')}")
    for run_id, row in sorted(result["rows"].items()):
        session.print(f"  {run_id}: run {row.get('mlflow_run_id')} {row.get('status')}, {row.get('points')} "
                      f"point(s) from {row.get('lines')} line(s)")
    if not result.get("settled"):
        session.print("not everything is settled yet (a row still running?); run track again later")
    return 0


def tracking_lines(status: dict[str, Any]) -> list[str]:
    """sweep-status: the parent run, and the rows whose tracking is behind."""
    info = status.get("tracking")
    if not info:
        return []
    lines = wandb_lines(info["wandb"], str(status.get("campaign_id"))) if info.get("wandb") else []
    if "parent_run_id" not in info:  # MLflow off (W&B only)
        return lines
    lines.insert(0, f"tracking: MLflow parent run {info.get('parent_run_id') or '(not created yet)'}")
    if info.get("last_error"):
        lines[0] += f"; server: {info['last_error']}"
    behind = info.get("behind") or []
    if behind:
        shown = ", ".join(f"{row['run_id']} ({row['why']})" for row in behind[:5])
        lines.insert(1, f"tracking behind for {len(behind)} row(s): {shown}{', ...' if len(behind) > 5 else ''}")
    return lines


def _few(names: list[str]) -> str:
    return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")


def wandb_lines(info: dict[str, Any], campaign: str) -> list[str]:
    """sweep-status with SWEEP_WANDB=1: the rows' W&B runs, offline ones not synced, unverified ones."""
    rows = info.get("rows") or []
    seen = [row for row in rows if row.get("dir")]
    offline = [row for row in seen if row.get("offline")]
    line = (f"W&B ({info.get('mode')}): {len(seen)} of {len(rows)} started row(s) have a W&B run, "
            f"{sum(1 for r in rows if r.get('verified'))} verified")
    if offline:
        line += f", {len(offline) - len(info.get('not_synced') or [])} of {len(offline)} offline run(s) synced"
    lines = [line]
    if info.get("not_synced"):
        lines.append(f"W&B offline runs not synced: {_few(info['not_synced'])} (upload them with "
                     f"infra_scripts/workflow.sh wandb-sync --campaign {campaign})")
    bad = [row for row in rows if row.get("verified") is False]
    if bad:
        lines.append(f"W&B run not verified for {len(bad)} row(s): " + "; ".join(
            f"{row['run_id']} ({row.get('detail')})" for row in bad[:3]) + ("; ..." if len(bad) > 3 else ""))
    return lines


def cmd_wandb_sync(session: Session) -> int:
    """`wandb sync` every offline W&B run of a campaign on the pod; exit 1 naming the rows that did not sync."""
    campaign = session.options.campaign
    if session.dry_run:
        session.print(f"would run `wandb sync` (the run venv's) on the pod ({session.transport_label()}) for every "
                      f"offline W&B run of campaign {campaign or '(the latest)'}, and list the rows that do not sync")
        return 0
    result = session.call("wandb-sync", {"campaign": campaign}, sync_env=True, timeout=3600)
    if session.as_json:
        session.emit_json(result)
        return 1 if result["not_synced"] else 0
    for run_id, row in sorted(result["rows"].items()):
        already = f" ({row['already']} synced before)" if row.get("already") else ""
        verdict = f"synced {row['runs']} run(s){already}" if row["synced"] else f"NOT synced: {row.get('error')}"
        session.print(f"  {run_id}: {verdict}")
    if result["not_synced"]:
        session.print(f"campaign {result['campaign_id']}: {len(result['not_synced'])} row(s) did not sync: "
                      f"{', '.join(result['not_synced'])}")
        return 1
    session.print(f"campaign {result['campaign_id']}: every row's offline W&B runs synced")
    return 0

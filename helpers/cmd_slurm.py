"""Client side of SWEEP_EXECUTOR=slurm: the job-script template, --dry-run output and the start message."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from helpers.errors import ExitCode, WorkflowError
from helpers.session import Session


def is_slurm(session: Session) -> bool:
    return session.cfg.text("SWEEP_EXECUTOR") == "slurm"


def template_args(session: Session) -> dict[str, Any]:
    """SLURM_JOB_TEMPLATE is a local file: its text travels with the request."""
    path = session.cfg.local_path("SLURM_JOB_TEMPLATE") if session.cfg.text("SLURM_JOB_TEMPLATE") else None
    if not path:
        return {}
    try:
        return {"slurm_job_template": Path(path).read_text(encoding="utf-8")}
    except OSError as exc:
        raise WorkflowError(f"{session.cfg.source('SLURM_JOB_TEMPLATE')}: SLURM_JOB_TEMPLATE={path} cannot be read "
                            f"({exc.strerror}); fix the path", ExitCode.USAGE) from None


def dry_run(session: Session, rows: list[dict[str, Any]], csv: Path, part: dict[str, Any] | None = None) -> int:
    from helpers.sweep_parts import part_line

    answer = session.call("sweep-start", {"plan_only": True, "rows": rows, **template_args(session),
                                          **({"part": part} if part else {})}, timeout=120)
    plan = answer["slurm_plan"]
    if answer.get("part"):
        session.print(part_line(answer["part"], "would submit"))
    count = len(answer["part"]["rows"]) if answer.get("part") else len(rows)
    session.print(f"would submit {count} row(s) from {csv} to Slurm on {session.transport_label()} as "
                  f"{len(plan['commands'])} job array(s) (nothing is submitted):")
    for argv, chunk in zip(plan["commands"], plan["chunks"]):
        session.print(f"  rows {chunk[0] + 1}-{chunk[-1] + 1}: {shlex.join(argv)}")
    for multi in plan.get("multinode") or []:  # rows with nodes > 1: what their array task runs
        session.print(f"  rows {multi['rows'][0] + 1}-{multi['rows'][-1] + 1} on {multi['nodes']} nodes each, "
                      f"e.g. row {multi['rows'][0] + 1}: {shlex.join(multi['argv'])}")
    if plan.get("refusal"):
        session.print(f"sweep-start will refuse this: {plan['refusal']}")
    session.print("job script (slurm/job.sh in the campaign directory):")
    for line in plan["script"].splitlines():
        session.print(f"  | {line}")
    return 0


def start_message(session: Session, result: dict[str, Any]) -> None:
    jobs = ", ".join(result.get("job_ids") or []) or ("none yet (deferred: the cluster's submit limit; they go in as "
                                                      "earlier jobs drain)" if result["rows"] > result.get(
                                                          "already_ok", 0) else "none (every row already ok)")
    session.print(f"campaign {result['campaign_id']} submitted to Slurm: {result['rows']} row(s), array job(s) "
                  f"{jobs}")
    session.print("  status:  infra_scripts/workflow.sh sweep-status   (or sweep-watch)")

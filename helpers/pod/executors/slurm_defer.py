"""Chunks that Slurm cannot take yet (MaxSubmitJobs of the QOS, MaxJobCount of the cluster): deferred, never failed.

``submit`` (executors/slurm.py) marks a chunk ``deferred`` when sbatch refuses it for a submit limit
("QOSMaxSubmitJobPerUserLimit", "Job violates accounting/QOS policy", "Slurm temporarily unable to
accept job"), and every chunk after it too (rows keep their order). The chunk file keeps its sbatch
argv; ``submit_deferred`` sends them, in order, as earlier ones drain: from each array task that ends
(the last running one included) and from every sweep-status, under one lock so a chunk goes in once.
``sweep-stop`` cancels them (``cancel_deferred``): a deferred row then shows cancelled, never lost.
"""

from __future__ import annotations

import os
import re
import subprocess
from typing import Any, Dict, List, Optional, Tuple

from ..jsonio import locked, read_json, utc_now, write_json

LIMIT_MARKS = ("maxsubmitjob", "accounting/qos policy", "temporarily unable to accept job", "maxjobcount",
               "assocmaxsubmitjob", "qosgrpsubmitjob")
SBATCH_TIMEOUT_SECS = 45  # sbatch retries by itself while slurmctld is at MaxJobCount: then defer


def deferrable(stderr: str) -> bool:
    low = stderr.lower()
    return any(mark in low for mark in LIMIT_MARKS)


def limit_reason(stderr: str) -> str:
    found = re.search(r"\b(QOS|Assoc)\w*Limit\b", stderr)
    return found.group(0) if found else " ".join(stderr.replace("sbatch: error:", "").split())[:120]


def sbatch(argv: List[str]) -> subprocess.CompletedProcess:
    """sbatch; one that keeps retrying past SBATCH_TIMEOUT_SECS (cluster full) reads as a deferrable refusal."""
    try:
        return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              timeout=SBATCH_TIMEOUT_SECS)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 1, "", "Slurm temporarily unable to accept job (sbatch kept "
                                                        f"retrying for {SBATCH_TIMEOUT_SECS}s)")


def _chunk_files(campaign_dir: str) -> List[str]:
    folder = os.path.join(campaign_dir, "slurm")
    if not os.path.isdir(folder):
        return []
    return [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if n.startswith("chunk-") and n.endswith(
        ".json")]


def pending(campaign_dir: str) -> List[Tuple[str, Dict[str, Any]]]:
    """(chunk file, record) of every chunk still waiting to be submitted, oldest first."""
    found = []
    for path in _chunk_files(campaign_dir):
        record = read_json(path, "slurm chunk")
        if isinstance(record, dict) and not record.get("job_id") and record.get("deferred"):
            found.append((path, record))
    return found


def deferred_rows(campaign_dir: str) -> Dict[int, str]:
    """Manifest row index -> why its chunk waits."""
    return {int(row): str(record["deferred"]) for _, record in pending(campaign_dir) for row in record["rows"]}


def _live(job_id: str) -> bool:
    try:
        result = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%i"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and bool(result.stdout.strip())


def with_dependency(argv: List[str], campaign_dir: str) -> List[str]:
    """The throttle's --dependency=afterany on the newest submitted chunk, while Slurm still has it."""
    if not any(w.startswith("--dependency=") for w in argv):
        return argv
    submitted = [read_json(p, "slurm chunk") or {} for p in _chunk_files(campaign_dir)]
    last: Optional[str] = next((str(r["job_id"]) for r in reversed(submitted) if r.get("job_id")), None)
    keep = last is not None and _live(last)
    return [(f"--dependency=afterany:{last}" if keep else "") if w.startswith("--dependency=") else w
            for w in argv if keep or not w.startswith("--dependency=")]


def submit_deferred(campaign_dir: str) -> List[str]:
    """Submit the deferred chunks in order until sbatch refuses again; returns the new array job ids."""
    if not pending(campaign_dir):
        return []
    job_ids: List[str] = []
    with locked(os.path.join(campaign_dir, "slurm", "deferred")):
        for path, record in pending(campaign_dir):  # re-read under the lock
            argv = with_dependency(list(record["argv"]), campaign_dir)
            result = sbatch(argv)
            if result.returncode != 0:
                why = limit_reason(result.stderr) if deferrable(result.stderr) else \
                    f"sbatch refused: {' '.join(result.stderr.split())[:160]}"
                write_json(path, {**record, "deferred": why, "tries": int(record.get("tries", 0)) + 1,
                                  "last_try_utc": utc_now()})
                break
            job_id = result.stdout.strip().split(";")[0]
            write_json(path, {**record, "argv": argv, "job_id": job_id, "deferred": None,
                              "submitted_utc": utc_now()})
            job_ids.append(job_id)
    return job_ids


def cancel_deferred(campaign_dir: str) -> int:
    """sweep-stop: the chunks still waiting are never submitted."""
    with locked(os.path.join(campaign_dir, "slurm", "deferred")):
        waiting = pending(campaign_dir)
        for path, record in waiting:
            write_json(path, {**record, "deferred": None, "cancelled_utc": utc_now()})
    return len(waiting)

"""The scheduler's view of a Slurm campaign: Slurm commands, one sacct and one squeue per status.

``STATES`` maps every Slurm job state to what a row shows (state, failure class) when the row's
own files hold no verdict; a state not in the table (UNKNOWN included) is never success.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Any, Dict, List, Optional, Tuple

from .. import fsm
from ..errors import ExitCode, WorkflowError
from ..jsonio import locked, read_json, utc_now, write_json

COMMANDS = ("sbatch", "squeue", "sacct", "scontrol", "scancel")

# Slurm job state -> (row state, failure class): queued/running rows are still in Slurm's hands
STATES: Dict[str, Tuple[str, Optional[str]]] = {
    "PENDING": ("queued", None), "CONFIGURING": ("queued", None), "REQUEUED": ("queued", None),
    "REQUEUE_FED": ("queued", None), "REQUEUE_HOLD": ("queued", None), "RESV_DEL_HOLD": ("queued", None),
    "SUSPENDED": ("running", None), "RUNNING": ("running", None), "COMPLETING": ("running", None),
    "STAGE_OUT": ("running", None), "SIGNALING": ("running", None), "RESIZING": ("running", None),
    "STOPPED": ("running", None),
    "COMPLETED": ("failed", "lost"),  # exit 0 but no summary: the row's verdict never got written
    "FAILED": ("failed", "nonzero_exit"), "CANCELLED": ("cancelled", "killed"), "TIMEOUT": ("failed", "timeout"),
    "NODE_FAIL": ("failed", "lost"), "PREEMPTED": ("failed", "preempted"), "OUT_OF_MEMORY": ("failed", "oom"),
    "BOOT_FAIL": ("failed", "lost"), "DEADLINE": ("failed", "timeout"), "REVOKED": ("cancelled", "killed"),
    "SPECIAL_EXIT": ("failed", "nonzero_exit"),
}
UNKNOWN = ("failed", "unknown")
NO_SACCT = ("no Slurm accounting (sacct/slurmdbd): rows from squeue and their own files; a row that left the "
            "queue without a summary shows lost")
LIVE = {state for state, (row, _) in STATES.items() if row in ("queued", "running")}


def row_state(slurm_state: str) -> Tuple[str, Optional[str]]:
    """'CANCELLED by 0' -> CANCELLED; anything not in the table is a failure, never success."""
    return STATES.get(slurm_state.split()[0] if slurm_state else "UNKNOWN", UNKNOWN)


def exit_code(text: str) -> Tuple[Optional[int], Optional[int]]:
    """sacct's ExitCode 'N:M' -> (exit code, signal)."""
    code, _, sig = (text or "").partition(":")
    return (int(code) if code.isdigit() else None, int(sig) if sig.isdigit() else None)


def require_commands() -> None:
    missing = [name for name in COMMANDS if shutil.which(name) is None]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise WorkflowError(f"SWEEP_EXECUTOR=slurm but {', '.join(missing)} {verb} not on PATH on the pod (the "
                            "login node); load the Slurm module / install slurm-client, or set SWEEP_EXECUTOR=tmux",
                            ExitCode.FAILED)


def run(argv: List[str], timeout: float = 60) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
    except FileNotFoundError:
        require_commands()
        raise WorkflowError(f"{argv[0]} is not on PATH on the pod", ExitCode.FAILED) from None
    except subprocess.TimeoutExpired:
        raise WorkflowError(f"{argv[0]} did not answer within {timeout:.0f}s (slurmctld down?)",
                            ExitCode.FAILED) from None


def show_config() -> Dict[str, str]:
    """`scontrol show config` as KEY -> value."""
    result = run(["scontrol", "show", "config"])
    if result.returncode != 0:
        raise WorkflowError(f"scontrol show config failed: {result.stderr.strip() or result.stdout.strip()}",
                            ExitCode.FAILED)
    found: Dict[str, str] = {}
    for line in result.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            found[key.strip()] = value.strip()
    return found


def qos_submit_limits(qos: str) -> List[int]:
    """MaxSubmitJobsPerUser / PerAccount / GrpSubmitJobs of ``qos`` ([] when unknown): from ``sacctmgr``
    where the login node has it, else slurmctld's association manager (which lists a per-user limit only
    once the user has used the QOS)."""
    if shutil.which("sacctmgr"):
        result = run(["sacctmgr", "-n", "-P", "show", "qos", qos, "format=MaxSubmitPU,MaxSubmitPA,GrpSubmit"])
        if result.returncode == 0 and result.stdout.strip():
            return [int(n) for n in re.split(r"[|\s]+", result.stdout.strip()) if n.isdigit()]
    result = run(["scontrol", "show", "assoc_mgr", "flags=qos", f"qos={qos}"])
    if result.returncode != 0:
        return []
    return [int(n) for n in re.findall(r"\b(?:MaxSubmitJobs(?:PU|PA)|GrpSubmitJobs)=(\d+)", result.stdout)]


def max_gpus_per_node(partition: str) -> int:
    """The most GPUs (GRES gpu) any node of ``partition`` (any node when empty) offers."""
    result = run(["scontrol", "-o", "show", "node"])
    best = 0
    for line in result.stdout.splitlines():
        fields = dict(word.split("=", 1) for word in line.split() if "=" in word)
        parts = fields.get("Partitions", "").split(",")
        if partition and not set(partition.split(",")) & set(parts):
            continue
        for gres in fields.get("Gres", "").split(","):
            found = re.match(r"^gpu(?::[^:(]+)?:(\d+)", gres)
            if found:
                best = max(best, int(found.group(1)))
    return best


# ----------------------------------------------------------------------------- one sacct + one squeue


def _indices(spec: str) -> List[int]:
    """'3' / '[0-4%2]' / '[1,3-5]' -> the array indices."""
    spec = spec.strip("[]").split("%")[0]
    out: List[int] = []
    for part in spec.split(","):
        low, _, high = part.partition("-")
        if low.isdigit():
            out.extend(range(int(low), int(high or low) + 1))
    return out


_QUEUE: Dict[str, List[str]] = {}  # campaign id -> squeue lines, once per agent call


def queue_lines(campaign_id: str, fresh: bool = False) -> List[str]:
    """The campaign's array tasks in squeue (``%i|%T|%r|%N|%M``): one squeue per agent call unless ``fresh``."""
    if fresh or campaign_id not in _QUEUE:
        result = run(["squeue", "-h", "-r", "--me", f"--name={campaign_id}", "--format=%i|%T|%r|%N|%M"], timeout=60)
        if result.returncode != 0:
            raise WorkflowError(f"squeue failed: {result.stderr.strip() or result.stdout.strip()}", ExitCode.FAILED)
        _QUEUE[campaign_id] = [line for line in result.stdout.splitlines() if line.strip()]
    return _QUEUE[campaign_id]


def forget_queue() -> None:
    """Drop the squeue lines of this process (a long-lived caller, e.g. the tracking sidecar, asks again)."""
    _QUEUE.clear()


def scheduler_view(campaign_id: str, sizes: Dict[str, int]) -> Tuple[Dict[Tuple[str, int], Dict[str, Any]], str]:
    """(array job id, index) -> {state, reason, node, elapsed, exit_code, signal} from one sacct of the campaign's
    array jobs (``sizes``: job id -> its number of tasks; by id, so also a job cancelled while pending, which no
    time window of sacct lists, and after the jobs left squeue) and one squeue (pending reasons, live state); and
    a note when sacct is not available (no slurmdbd): then only squeue and the rows' own files count."""
    view: Dict[Tuple[str, int], Dict[str, Any]] = {}
    note = ""
    argv = ["sacct", "-X", "-P", "-n", f"--jobs={','.join(sorted(sizes))}",
            "--format=JobID,State,ExitCode,Reason,NodeList,Elapsed"]
    try:  # no job to ask about (none, or every one's end cached: executors/slurm_cache.py): no sacct at all
        acct = subprocess.CompletedProcess(argv, 0, "", "") if not sizes else run(argv, timeout=120) if shutil.which(
            "sacct") else None
    except WorkflowError as exc:  # sacct hangs (slurmdbd unreachable)
        acct, note = None, str(exc)
    if acct is None or acct.returncode != 0:
        why = note or ("sacct is not on PATH" if acct is None else " ".join(acct.stderr.split())[:160] or
                       f"sacct exited {acct.returncode}")
        note = f"{NO_SACCT}: {why}"
    whole: Dict[str, Dict[str, Any]] = {}  # 'JOBID' alone: an array that never split into tasks
    for line in (acct.stdout if acct is not None and acct.returncode == 0 else "").splitlines():
        job, state, code, reason, node, elapsed = (line.split("|") + [""] * 6)[:6]
        array_id, _, spec = job.partition("_")
        ec, sig = exit_code(code)
        record = {"state": state.split()[0] if state else "UNKNOWN", "reason": reason,
                  "node": node if node not in ("None assigned", "") else None, "elapsed": elapsed,
                  "exit_code": ec, "signal": sig}
        if not spec:
            whole[array_id] = record
            continue
        for index in _indices(spec):
            view[(array_id, index)] = dict(record)
    for array_id, record in whole.items():
        for index in range(sizes.get(array_id, 0)):
            view.setdefault((array_id, index), dict(record))
    for line in queue_lines(campaign_id):
        job, state, reason, node, elapsed = (line.split("|") + [""] * 5)[:5]
        array_id, _, spec = job.partition("_")
        for index in _indices(spec):
            record = view.setdefault((array_id, index), {"exit_code": None, "signal": None})
            record.update(state=state, reason=reason, node=node or None, elapsed=elapsed)
    return view, note


def chunks(campaign_dir: str) -> List[Dict[str, Any]]:
    """Every submitted chunk of the campaign (slurm/chunk-*.json), oldest first."""
    folder = os.path.join(campaign_dir, "slurm")
    names = sorted(n for n in os.listdir(folder) if n.startswith("chunk-") and n.endswith(".json")) if os.path.isdir(
        folder) else []
    found = [read_json(os.path.join(folder, name), "slurm chunk") for name in names]
    return [c for c in found if isinstance(c, dict) and c.get("job_id")]


def row_jobs(campaign_dir: str) -> Dict[int, Tuple[str, int]]:
    """Manifest row index -> its latest (array job id, array index)."""
    latest: Dict[int, Tuple[str, int]] = {}
    for chunk in chunks(campaign_dir):
        for index, row_index in enumerate(chunk["rows"]):
            latest[int(row_index)] = (str(chunk["job_id"]), index)
    return latest


def conclude(state_file: str, enforce: bool, campaign_dir: str, campaign_id: str, failed: int, rows: int,
             by: Any) -> str:
    """SWEEP_COMPLETED / SWEEP_FAILED for the campaign whose rows all have their verdict, exactly once
    (slurm/final.json under a lock): the last array task, or the first status that sees every row ended in
    Slurm (e.g. scancelled outside the tool before they started). Only while the pod's workflow state is
    still this campaign's SWEEP_RUNNING (a later campaign's state is left alone). '' when already done."""
    final = os.path.join(campaign_dir, "slurm", "final.json")
    os.makedirs(os.path.dirname(final), exist_ok=True)
    with locked(final):
        if os.path.exists(final):
            return ""
        command = "sweep-fail" if failed else "sweep-complete"
        note = f"campaign {campaign_id}: every row ended ({failed} failed); {command}"
        outputs = os.path.dirname(os.path.dirname(campaign_dir.rstrip("/")))  # <outputs>/_campaigns/<id>
        latest = os.path.join(outputs, "_control", "latest_campaign")
        try:
            with open(latest) as handle:
                ours = handle.read().strip() in ("", campaign_id)
        except OSError:
            ours = True
        if ours and fsm.read_state(state_file).state == fsm.State.SWEEP_RUNNING.value:
            try:
                fsm.transition(state_file, command, f"campaign {campaign_id}: {failed} failed row(s)", enforce)
            except Exception as exc:  # the state was changed by hand meanwhile: say so
                note = f"workflow state not updated: {exc}"
        write_json(final, {"utc": utc_now(), "failed": failed, "rows": rows, "by": by})
        return note

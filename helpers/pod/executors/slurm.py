"""The Slurm executor: a campaign's rows as job arrays (SWEEP_EXECUTOR=slurm; the pod is the login node).

``submit`` sends one ``sbatch --parsable --array=0-K[%M]`` per chunk: consecutive rows with the same
request (GPUs, time), at most MaxArraySize of them (it caps the index, so every chunk's indices start
at 0). A chunk file ``slurm/chunk-<generation>-<n>.json`` maps array index -> manifest row, and each
array task runs ``agent slurm-task CAMPAIGN_DIR CHUNK_FILE`` (executors/slurm_task.py) under the same
supervisor as the tmux executor. With SLURM_ARRAY_PARALLELISM=M every chunk gets ``%M`` and waits for
the one before it (``--dependency=afterany``), so never more than M rows of the campaign run at once.
Every job is named after the campaign id; ``stop`` scancels exactly the recorded job ids.
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import Any, Dict, List, Optional, Tuple

from .. import runs
from ..context import Context
from ..errors import ExitCode, WorkflowError
from ..jsonio import read_json, utc_now, write_bytes, write_json
from . import slurm_defer, slurm_nodes, slurm_parts, slurm_state

TIME_MARGIN_MIN = 10  # the row's own timeout fires first; Slurm's limit is the backstop
SIGNAL = "--signal=B:USR2@120"  # USR1 is NCCL's
ROW_PLACEHOLDER = "@WF_RUN_ROW@"


def _row_time_minutes(ctx: Context, row: Dict[str, Any]) -> int:
    secs = row.get("timeout_secs") if row.get("timeout_secs") is not None else ctx.number("RUN_TIMEOUT_SECS", 43200)
    return 0 if not secs else -(-int(secs) // 60) + TIME_MARGIN_MIN


def _gpus(ctx: Context, row: Dict[str, Any]) -> int:
    fixed = ctx.get("SLURM_GPUS_PER_NODE")
    return int(fixed) if fixed else int(row.get("gpus") or 0)


def plan_chunks(ctx: Context, rows: List[Dict[str, Any]], indices: List[int], max_array: int
                ) -> List[Dict[str, Any]]:
    """Consecutive rows with the same (GPUs, time, nodes) request, at most ``max_array`` per chunk."""
    out: List[Dict[str, Any]] = []
    for index in indices:
        row = rows[index]
        want = (_gpus(ctx, row), ctx.get("SLURM_TIME") or _row_time_minutes(ctx, row), slurm_nodes.nodes_of(row))
        last = out[-1] if out else None
        if last and (last["gpus"], last["time"], last["nodes"]) == want and len(last["rows"]) < max_array:
            last["rows"].append(index)
        else:
            out.append({"gpus": want[0], "time": want[1], "nodes": want[2], "rows": [index]})
    return out


def sbatch_argv(ctx: Context, campaign_id: str, campaign_dir: str, chunk: Dict[str, Any], script: str,
                chunk_file: str, after: Optional[str]) -> List[str]:
    throttle = ctx.get("SLURM_ARRAY_PARALLELISM")
    argv = ["sbatch", "--parsable", f"--array=0-{len(chunk['rows']) - 1}" + (f"%{throttle}" if throttle else ""),
            f"--job-name={campaign_id}", f"--output={os.path.join(campaign_dir, 'slurm', '%A_%a.out')}",
            "--open-mode=append", "--requeue", SIGNAL, f"--chdir={campaign_dir}"]
    for key, option in (("SLURM_PARTITION", "partition"), ("SLURM_ACCOUNT", "account"), ("SLURM_QOS", "qos"),
                        ("SLURM_CONSTRAINT", "constraint"), ("SLURM_CPUS_PER_TASK", "cpus-per-task"),
                        ("SLURM_MEM", "mem")):
        if ctx.get(key):
            argv.append(f"--{option}={ctx.get(key)}")
    if chunk["gpus"]:
        argv.append(f"--gpus-per-node={chunk['gpus']}")
    if int(chunk.get("nodes") or 1) > 1:  # one torchrun per node under srun (executors/slurm_nodes.py)
        argv.extend([f"--nodes={chunk['nodes']}", "--ntasks-per-node=1"])
    if chunk["time"]:
        argv.append(f"--time={chunk['time']}")
    if after:
        argv.append(f"--dependency=afterany:{after}")
    return [*argv, *ctx.words("SLURM_EXTRA_ARGS"), script, chunk_file]


def job_script(ctx: Context, campaign_id: str, campaign_dir: str, template: str) -> str:
    """The batch script every array task runs (a user template gets the row command at @WF_RUN_ROW@)."""
    archive = os.path.abspath(sys.argv[0])
    run_row = shlex.join([sys.executable, "-I", "-S", archive, "slurm-task", campaign_dir]) + ' "$1"'
    if template:
        if ROW_PLACEHOLDER not in template:
            raise WorkflowError(f"SLURM_JOB_TEMPLATE has no {ROW_PLACEHOLDER} (where the row's command goes, e.g. "
                                f"'exec apptainer exec image.sif {ROW_PLACEHOLDER}'); add it", ExitCode.USAGE)
        return template.replace(ROW_PLACEHOLDER, run_row)
    return "\n".join(["#!/bin/bash", f"# workflow.sh campaign {campaign_id}: one array task = one CSV row",
                      "# $1 = the chunk file mapping SLURM_ARRAY_TASK_ID to the row", "exec " + run_row, ""])


def _max_array(qos: str = "") -> int:
    """The most tasks one chunk may have: the cluster's MaxArraySize and MaxJobCount, and SLURM_QOS's
    MaxSubmitJobsPerUser / MaxSubmitJobs (Slurm commands checked first)."""
    slurm_state.require_commands()
    config = slurm_state.show_config()
    limits = [int(config.get("MaxArraySize", "1001") or 1001)]
    if str(config.get("MaxJobCount", "")).isdigit():
        limits.append(int(config["MaxJobCount"]))
    if qos:
        limits.extend(slurm_state.qos_submit_limits(qos))
    return max(1, min(limits))


def _check_gpus(ctx: Context, rows: List[Dict[str, Any]], indices: List[int]) -> None:
    """Refuse a row that needs more GPUs than any node (of SLURM_PARTITION) offers."""
    need = max((_gpus(ctx, rows[i]) for i in indices), default=0)
    if need:
        have = slurm_state.max_gpus_per_node(ctx.get("SLURM_PARTITION"))
        if need > have:
            row = next(rows[i] for i in indices if _gpus(ctx, rows[i]) == need)
            where = f"partition {ctx.get('SLURM_PARTITION')}" if ctx.get("SLURM_PARTITION") else "the cluster"
            raise WorkflowError(f"row {row.get('row_number')} ({row['run_id']}) needs {need} GPU(s) per node but no "
                                f"node of {where} has more than {have}; lower the row's gpus (or "
                                "SLURM_GPUS_PER_NODE) or pick another SLURM_PARTITION", ExitCode.USAGE)


def _relay(stderr: str) -> WorkflowError:
    """sbatch's own message, naming the key behind it."""
    text = " ".join(line.replace("sbatch: error:", "").strip() for line in stderr.splitlines() if line.strip())
    low = text.lower()
    key = next((k for word, k in (("partition", "SLURM_PARTITION"), ("account", "SLURM_ACCOUNT"),
                                  ("qos", "SLURM_QOS"), ("constraint", "SLURM_CONSTRAINT"),
                                  ("feature", "SLURM_CONSTRAINT"),
                                  ("memory", "SLURM_MEM"), ("time limit", "SLURM_TIME")) if word in low),
               "SLURM_EXTRA_ARGS")
    return WorkflowError(f"sbatch refused the campaign ({key}?): {text or 'no message'}; nothing was submitted",
                         ExitCode.USAGE)


def plan(ctx: Context, campaign_id: str, campaign_dir: str, rows: List[Dict[str, Any]], indices: List[int],
         generation: int, chain: bool = False) -> Tuple[List[Tuple[Dict[str, Any], str, List[str]]], str]:
    """Pure apart from reading the cluster's limits: [(chunk, chunk file, sbatch argv)], job script. ``chain``:
    the first chunk too waits for the campaign's newest live chunk (a later part: one throttle for all)."""
    max_array = _max_array(ctx.get("SLURM_QOS"))
    script_path = os.path.join(campaign_dir, "slurm", "job.sh")
    script = job_script(ctx, campaign_id, campaign_dir, str(ctx.args.get("slurm_job_template") or ""))
    planned = []
    throttled = bool(ctx.get("SLURM_ARRAY_PARALLELISM"))
    for number, chunk in enumerate(plan_chunks(ctx, rows, indices, max_array)):
        chunk_file = os.path.join(campaign_dir, "slurm", f"chunk-{generation:03d}-{number:04d}.json")
        after = "PREVIOUS_CHUNK_JOB_ID" if throttled and (number or chain) else None  # the real id once submitted
        planned.append((chunk, chunk_file, sbatch_argv(ctx, campaign_id, campaign_dir, chunk, script_path,
                                                       chunk_file, after)))
    return planned, script


def submit(ctx: Context, campaign_id: str, campaign_dir: str, rows: List[Dict[str, Any]], indices: List[int],
           generation: int) -> List[str]:
    """Submit the rows ``indices`` of the manifest (``preflight`` first); returns the array job ids. A chunk
    larger than the submit room left (the user's jobs already queued count) is deferred, not refused."""
    planned, script = plan(ctx, campaign_id, campaign_dir, rows, indices, generation, chain=generation > 1)
    config = slurm_state.show_config()
    count = str(config.get("MaxJobCount", ""))
    room = slurm_parts.submit_room(ctx.get("SLURM_QOS"), int(count) if count.isdigit() else None)
    os.makedirs(os.path.join(campaign_dir, "slurm"), exist_ok=True)
    script_path = os.path.join(campaign_dir, "slurm", "job.sh")
    if ctx.args.get("slurm_job_template") or not os.path.exists(script_path):  # a resume keeps the campaign's
        write_bytes(script_path, script.encode(), 0o755)
    job_ids: List[str] = []
    deferred = ""  # a submit limit refused a chunk: it and every later one wait (executors/slurm_defer.py)
    for chunk, chunk_file, argv in planned:
        if job_ids and ctx.get("SLURM_ARRAY_PARALLELISM"):
            argv = [w if not w.startswith("--dependency=") else f"--dependency=afterany:{job_ids[-1]}" for w in argv]
        elif not deferred:  # a later part's first chunk: after the campaign's newest chunk still in Slurm
            argv = slurm_defer.with_dependency(argv, campaign_dir)
        write_json(chunk_file, {"schema_version": runs.SCHEMA_VERSION, "campaign_id": campaign_id,
                                "generation": generation, "rows": chunk["rows"], "job_id": None,
                                "argv": argv, "created_utc": utc_now(), "deferred": deferred or None})
        if deferred:
            continue
        if room is not None and len(chunk["rows"]) > room[0]:  # over the limit with the jobs already queued
            deferred = room[1]
            write_json(chunk_file, {**(read_json(chunk_file, "slurm chunk") or {}), "deferred": deferred})
            continue
        result = slurm_defer.sbatch(argv)
        if result.returncode != 0:
            if (job_ids or room is not None) and slurm_defer.deferrable(result.stderr):
                deferred = slurm_defer.limit_reason(result.stderr)
                write_json(chunk_file, {**(read_json(chunk_file, "slurm chunk") or {}), "deferred": deferred})
                continue
            if job_ids:  # a later chunk refused: what was submitted stays, and the user is told
                raise WorkflowError(f"sbatch refused chunk {chunk_file} after {len(job_ids)} chunk(s) went in "
                                    f"({', '.join(job_ids)}): {result.stderr.strip()}; stop them with sweep-stop",
                                    ExitCode.FAILED)
            raise _relay(result.stderr)
        job_id = result.stdout.strip().split(";")[0]
        record = read_json(chunk_file, "slurm chunk") or {}
        write_json(chunk_file, {**record, "job_id": job_id})
        job_ids.append(job_id)
        room = None if room is None else (room[0] - len(chunk["rows"]), room[1])
    return job_ids


def preflight(ctx: Context, rows: List[Dict[str, Any]], indices: List[int]) -> None:
    """Before anything changes: Slurm commands there, GPUs enough, and ``sbatch --test-only`` of the first
    chunk's options accepted (an unknown partition/account/QOS gets sbatch's message, naming the key)."""
    if not indices:
        return
    planned, _ = plan(ctx, "wf-preflight", ctx.outputs, rows, indices, 1)
    slurm_nodes.check_nodes(ctx.get("SLURM_PARTITION"), rows, indices)  # before sbatch's vaguer "node configuration"
    # names first (partition, account, QOS: sbatch's own message), then GPUs against scontrol's nodes
    argv = [w for w in planned[0][2][:-2]
            if not w.startswith(("--output=", "--chdir=", "--dependency=", "--gpus-per-node="))]
    probe = slurm_state.run([argv[0], "--test-only", *argv[1:], "--wrap=true"])
    if probe.returncode != 0 and not slurm_defer.deferrable(probe.stderr):  # a submit limit full now: deferred
        raise _relay(probe.stderr)
    _check_gpus(ctx, rows, indices)


def live_jobs(campaign_dir: str, fresh: bool = False) -> List[str]:
    """The campaign's array jobs Slurm still holds (queued or running), from the one squeue of this call."""
    lines = slurm_state.queue_lines(os.path.basename(campaign_dir.rstrip("/")), fresh)
    return sorted({line.split("|")[0].split("_")[0] for line in lines})


def stop(campaign_dir: str) -> List[str]:
    """scancel exactly the campaign's array jobs; returns their ids."""
    slurm_defer.cancel_deferred(campaign_dir)  # first: no task that ends now submits them
    ids = [str(c["job_id"]) for c in slurm_state.chunks(campaign_dir)]
    if ids:
        result = slurm_state.run(["scancel", *ids])
        if result.returncode != 0:
            raise WorkflowError(f"scancel failed: {result.stderr.strip()}", ExitCode.FAILED)
    return ids

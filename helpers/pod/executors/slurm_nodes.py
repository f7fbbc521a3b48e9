"""Rows with ``nodes`` > 1 (a CSV column; SWEEP_EXECUTOR=slurm only): one allocation of N nodes per row.

The chunk asks for ``--nodes=N --ntasks-per-node=1``; the array task, on the allocation's first node,
runs the row under the same supervisor, its command being ``srun`` over the N nodes of one torchrun each,
rendezvousing with c10d on the first node (``--rdzv_endpoint=<its hostname>:RDZV_PORT``, the job id as
``--rdzv_id``) instead of ``--standalone``. Rows that need more nodes than SLURM_PARTITION has are
refused before anything is submitted (``scontrol show partition``).
"""

from __future__ import annotations

import os
import socket
import subprocess
from typing import Any, Dict, List

from ..errors import ExitCode, WorkflowError
from . import slurm_state

RDZV_PORT = 29500
FIRST_NODE = "$FIRST_NODE"  # shown by --dry-run: the allocation's first node, known once it runs


def nodes_of(row: Dict[str, Any]) -> int:
    return max(1, int(row.get("nodes") or 1))


def multinode_argv(argv: List[str], nodes: int, head: str, rdzv_id: str) -> List[str]:
    """``python -m torch.distributed.run --standalone ...`` -> srun over the nodes, c10d on ``head``."""
    if nodes <= 1 or "--standalone" not in argv:
        return argv
    at = argv.index("--standalone")
    torch = [*argv[:at], f"--nnodes={nodes}", "--rdzv_backend=c10d", f"--rdzv_endpoint={head}:{RDZV_PORT}",
             f"--rdzv_id={rdzv_id}", *argv[at + 1:]]
    return ["srun", f"--nodes={nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1", *torch]


def allocation_nodes() -> List[str]:
    """The allocation's nodes, first node first (``scontrol show hostnames $SLURM_JOB_NODELIST``; one plain
    name needs no scontrol); [] outside an allocation or when scontrol cannot say."""
    nodelist = os.environ.get("SLURM_JOB_NODELIST", "")
    if not nodelist or not any(c in nodelist for c in "[,"):
        return [nodelist] if nodelist else []
    try:
        result = subprocess.run(["scontrol", "show", "hostnames", nodelist], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return result.stdout.split() if result.returncode == 0 else []


def rendezvous_host() -> str:
    """The c10d endpoint's host: this node's own hostname. The batch step runs on the allocation's first node,
    and its hostname is what the other nodes resolve and what torchrun matches to host the store there; Slurm's
    NodeName need not be either (NodeName=n1 NodeHostname=gpu-017, or a NodeAddr only Slurm uses)."""
    return socket.gethostname()


def max_nodes(partition: str) -> int:
    """The most nodes one job may get: TotalNodes of SLURM_PARTITION (its largest, for a list), else of the
    default partition (any partition when none is marked default)."""
    result = slurm_state.run(["scontrol", "-o", "show", "partition"])
    best, default = 0, 0
    for line in result.stdout.splitlines():
        fields = dict(word.split("=", 1) for word in line.split() if "=" in word)
        total = int(fields.get("TotalNodes", "0") or 0) if fields.get("TotalNodes", "").isdigit() else 0
        if partition and fields.get("PartitionName") not in partition.split(","):
            continue
        best = max(best, total)
        if fields.get("Default") == "YES":
            default = total
    return default or best if not partition else best


def check_nodes(partition: str, rows: List[Dict[str, Any]], indices: List[int]) -> None:
    """Refuse a row that needs more nodes than the partition offers (one line, nothing submitted)."""
    need = max((nodes_of(rows[i]) for i in indices), default=1)
    if need <= 1:
        return
    have = max_nodes(partition)
    if need > have:
        row = next(rows[i] for i in indices if nodes_of(rows[i]) == need)
        where = f"partition {partition}" if partition else "the default partition"
        raise WorkflowError(f"row {row.get('row_number')} ({row['run_id']}) needs {need} nodes but {where} has "
                            f"{have}; lower the row's nodes or pick another SLURM_PARTITION", ExitCode.USAGE)


def refuse_on_tmux(rows: List[Dict[str, Any]]) -> None:
    """The tmux executor runs every row on the one pod: a multi-node row is refused, naming it."""
    for row in rows:
        if nodes_of(row) > 1:
            raise WorkflowError(f"row {row.get('row_number')} ({row['run_id']}) needs {nodes_of(row)} nodes; rows "
                                "with nodes > 1 run on Slurm only: set SWEEP_EXECUTOR=slurm, or empty its nodes "
                                "cell", ExitCode.USAGE)


def dry_run_lines(ctx_python: str, entry: str, chunks: List[Dict[str, Any]], rows: List[Dict[str, Any]],
                  campaign_dir: str) -> List[Dict[str, Any]]:
    """For --dry-run: the command of the first row of every multi-node chunk, as its array task runs it."""
    from .. import runs

    out = []
    for chunk in chunks:
        if int(chunk.get("nodes") or 1) <= 1:
            continue
        row = rows[chunk["rows"][0]]
        out_dir = runs.run_dir(os.path.dirname(os.path.dirname(campaign_dir)), str(row["run_id"]))
        argv = runs.build_argv(ctx_python, entry, row["config"], int(row["seed"]), out_dir, list(row["overrides"]),
                               int(chunk.get("gpus") or 1))
        out.append({"rows": chunk["rows"], "nodes": chunk["nodes"],
                    "argv": multinode_argv(argv, int(chunk["nodes"]), FIRST_NODE, "$SLURM_JOB_ID")})
    return out

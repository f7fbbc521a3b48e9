"""Sweep slots and the scheduling rule, shared by the executor, sweep-start and --dry-run.

The slots a sweep packs rows onto come from CUDA_VISIBLE_DEVICES (the run environment first), else
the GPUs nvidia-smi lists, else SWEEP_CPU_SLOTS CPU slots. :func:`schedule_step` is the one rule for
which queued rows start on which free slots; :func:`plan_schedule` simulates it for --dry-run.
"""

from __future__ import annotations

import os
import subprocess
from typing import Dict, List, Optional, Sequence, Tuple

from .context import RUN_ENV_PREFIXES, Context, run_env


def slots_from(visible: Optional[str], gpus: Sequence[str], cpu_slots: int) -> List[str]:
    """The slots a sweep packs rows onto: CUDA_VISIBLE_DEVICES when it is set (set but empty: no GPU),
    else the GPUs nvidia-smi lists, else ``cpu_slots`` CPU slots named cpu0, cpu1, ..."""
    if visible is not None and visible.strip():
        return [v.strip() for v in visible.split(",") if v.strip()]
    if visible is None and gpus:
        return list(gpus)
    return [f"cpu{i}" for i in range(max(1, cpu_slots))]


def visible_devices(env: Dict[str, str]) -> Optional[str]:
    """CUDA_VISIBLE_DEVICES as a run sees it: the run environment first, then this process's own."""
    return env.get("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES"))


def list_gpus() -> List[str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def detect_slots(ctx: Context, env: Dict[str, str]) -> List[str]:
    """GPU ids (respecting CUDA_VISIBLE_DEVICES), else SWEEP_CPU_SLOTS CPU slots named cpu0..."""
    visible = visible_devices(env)
    return slots_from(visible, list_gpus() if visible is None else [], ctx.number("SWEEP_CPU_SLOTS", 1))


def planned_run_env(ctx: Context) -> Dict[str, str]:
    """The run environment the executor will have once sweep-start has written this request's config
    to the pod env file (secrets aside: they never decide slots)."""
    env = run_env(ctx)
    for key, value in ctx.config.items():
        if key.startswith(RUN_ENV_PREFIXES):
            env[key[len("RUNENV_"):] if key.startswith("RUNENV_") else key] = str(value)
    return env


# ----------------------------------------------------------------------------- the scheduling rule


def schedule_step(queue: Sequence[Tuple[str, int, bool]], free: Sequence[str], total: int
                  ) -> Tuple[List[Tuple[str, List[str]]], List[str]]:
    """Which queued rows start now, on which slots: the one rule of the executor and of --dry-run.

    ``queue`` is (key, slots needed, ready) in queue order (CSV order; a retried row goes first);
    a row that is not ready is waiting out a retry backoff and does not hold the queue. Ready rows
    start in order while they fit; the first ready row that does not fit waits for slots, and no
    row behind it starts meanwhile (no backfill), so a full-width row is never starved by a stream
    of narrow ones. A row needing more than ``total`` slots is never started (sweep-start refuses
    it; the executor fails it). Returns the (key, slots) started and the slots left free."""
    left = list(free)
    started: List[Tuple[str, List[str]]] = []
    for key, need, ready in queue:
        if not ready or need > total:
            continue
        if need > len(left):
            break
        started.append((key, left[:need]))
        left = left[need:]
    return started, left


def plan_schedule(needs: Sequence[Tuple[str, int]], slots: Sequence[str]) -> List[Tuple[str, List[str], int]]:
    """(key, slots, wave) for each row, simulating the executor with :func:`schedule_step` as if every
    run took the same time: the order and packing that sweep-start will follow (which slot a row gets
    later on depends on which run ends first). Rows that can never fit are left out."""
    total = len(slots)
    queue = [(key, need) for key, need in needs if need <= total]
    plan: List[Tuple[str, List[str], int]] = []
    wave = 0
    while queue:  # equal run times: a wave's runs end together, so each wave starts on all slots
        wave += 1
        started, _ = schedule_step([(key, need, True) for key, need in queue], slots, total)
        done = {key for key, _ in started}
        queue = [(key, need) for key, need in queue if key not in done]
        plan += [(key, taken, wave) for key, taken in started]
    return plan


def slot_env(env: Dict[str, str], slots: Sequence[str], take: Sequence[str]) -> Dict[str, str]:
    """What the executor adds to a run's environment on the slots ``take`` (of the pod's ``slots``), and
    shows in its command.sh: CUDA_VISIBLE_DEVICES, and on CPU slots OMP_NUM_THREADS (the cores shared
    out, unless the env file sets it). The one rule of the executor and of --dry-run."""
    cpu_mode = bool(slots) and str(slots[0]).startswith("cpu")
    shown = {"CUDA_VISIBLE_DEVICES": "" if cpu_mode else ",".join(take)}
    if "OMP_NUM_THREADS" in env:
        shown["OMP_NUM_THREADS"] = env["OMP_NUM_THREADS"]
    elif cpu_mode:
        shown["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // len(slots)))
    return shown

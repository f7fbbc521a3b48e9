"""Process-level plumbing for train.py: torchrun/DDP setup, device and dtype choice, the SIGTERM
stop flag, peak FLOPs for MFU, RNG state and atomic file writes."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist
from configurator import ConfigError, DistInfo

# Dense bf16 tensor-core peak FLOP/s per GPU, matched against torch.cuda.get_device_name() in
# order (more specific names first). float32 runs use TF32, which is half of these.
PEAK_BF16_FLOPS: list[tuple[str, float]] = [
    ("B200", 2250e12),
    ("H200", 989e12),
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),
]


def pick_device(name: str, d: DistInfo) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device=cuda but no CUDA GPU is visible; use device=cpu or device=auto")
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def resolve_backend(backend: str, device: torch.device) -> str:
    """The process-group backend: ``auto`` is nccl on GPU, gloo on CPU."""
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    return backend


def init_distributed(backend: str) -> Any:
    """Join the torchrun process group with ``backend`` (resolved: nccl or gloo). Returns the group
    used for cheap CPU-side collectives (stop flag, RNG states, loss sums): the default group under
    gloo, a side gloo group under nccl."""
    dist.init_process_group(backend=backend)
    return dist.new_group(backend="gloo") if backend == "nccl" else dist.group.WORLD


class StopFlag:
    """Remembers a SIGTERM (stop) and a SIGUSR2 (checkpoint now and go on: Slurm's --signal=B:USR2@N
    before a time limit or preemption, forwarded by workflow.sh's supervisor); ``agreed()`` tells every
    rank whether any rank got a SIGTERM, and sets ``checkpoint`` when any rank got a SIGUSR2 (one
    all_reduce for both)."""

    def __init__(self) -> None:
        self.requested = False
        self.usr2 = False
        self.checkpoint = False
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGUSR2, self._on_usr2)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def _on_usr2(self, signum: int, frame: FrameType | None) -> None:
        self.usr2 = True

    def agreed(self, cpu_group: Any) -> bool:
        if cpu_group is None:
            self.checkpoint, self.usr2 = self.usr2, False
            return self.requested
        flag = torch.tensor([int(self.requested), int(self.usr2)], dtype=torch.int32)
        self.usr2 = False
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=cpu_group)
        self.checkpoint = bool(flag[1].item())
        return bool(flag[0].item())


def peak_flops(override: float, device: torch.device, dtype: torch.dtype) -> float | None:
    """Peak FLOP/s of one device for MFU, or None when unknown (CPU, unlisted GPU)."""
    if override > 0:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16_FLOPS:
        if key in name:
            return flops / 2 if dtype == torch.float32 else flops
    return None


def make_grad_scaler(device: torch.device, enabled: bool) -> Any:
    """A GradScaler (only active for float16); torch.amp.GradScaler is new in torch 2.3."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device.type, enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Write to a temp file next to ``path``, fsync, then rename over it: never a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)

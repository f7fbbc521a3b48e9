"""pod-status: one read-only look at the pod (tools, GPUs, disks, volume mount, workflow state)."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import sys
from typing import Any, Dict, List, Optional, Tuple

from . import fsm
from .context import Context, expand
from .errors import WorkflowError

TOOLS: Dict[str, List[str]] = {
    "tmux": ["tmux", "-V"],
    "rsync": ["rsync", "--version"],
    "git": ["git", "--version"],
    "nvidia-smi": ["nvidia-smi", "--query-gpu=index,name,memory.total,memory.used,utilization.gpu",
                   "--format=csv,noheader,nounits"],
}


def _spawn_all(commands: Dict[str, List[str]]) -> Dict[str, Tuple[int, str]]:
    """Start every probe at once, then collect (exit code, stdout); missing programs -> 127."""
    running: Dict[str, Any] = {}
    results: Dict[str, Tuple[int, str]] = {}
    for name, argv in commands.items():
        if shutil.which(argv[0]) is None:
            results[name] = (127, "")
            continue
        running[name] = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                         errors="replace")
    for name, proc in running.items():
        try:
            out, _ = proc.communicate(timeout=15)
            results[name] = (proc.returncode, out)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            results[name] = (124, "")
    return results


def mount_of(path: str) -> Dict[str, str]:
    """The mount point and filesystem type that hold ``path`` (nearest existing ancestor)."""
    probe = expand(path)
    while probe and not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    best = {"mount": "/", "fstype": "?", "device": "?"}
    try:
        with open("/proc/mounts") as handle:
            for line in handle:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mount = parts[1].replace("\\040", " ")
                if (probe == mount or probe.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best["mount"]):
                    best = {"mount": mount, "fstype": parts[2], "device": parts[0]}
    except OSError:
        pass
    best["path"] = probe
    return best


def is_fuse(path: str) -> bool:
    fstype = mount_of(path)["fstype"]
    return fstype.startswith("fuse") or "s3fs" in fstype


def disk(path: str) -> Dict[str, Any]:
    info: Dict[str, Any] = dict(mount_of(path))
    try:
        usage = shutil.disk_usage(info["path"])
        info.update(total_gb=round(usage.total / 1e9, 1), free_gb=round(usage.free / 1e9, 1))
    except OSError as exc:
        info["error"] = exc.strerror
    info["configured"] = path
    return info


def gpus_from(output: str) -> List[Dict[str, Any]]:
    gpus = []
    for line in output.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 5:
            gpus.append({"index": parts[0], "name": parts[1], "memory_total_mib": parts[2],
                         "memory_used_mib": parts[3], "utilization_pct": parts[4]})
    return gpus


def tool_versions(results: Dict[str, Tuple[int, str]]) -> Dict[str, Optional[str]]:
    tools: Dict[str, Optional[str]] = {}
    for name in ("tmux", "rsync", "git"):
        code, out = results[name]
        tools[name] = (out.strip().splitlines() or [""])[0] if code == 0 else None
    tools["python3"] = f"Python {platform.python_version()} ({sys.executable})"
    return tools


def has_venv_support() -> bool:
    import importlib.util

    return importlib.util.find_spec("venv") is not None and importlib.util.find_spec("ensurepip") is not None


def pod_status(ctx: Context) -> Dict[str, Any]:
    results = _spawn_all(TOOLS)
    code, smi = results["nvidia-smi"]
    try:
        state = fsm.read_state(ctx.state_file)
        workflow = {"state": state.state, "updated_utc": state.updated_utc, "reason": state.reason}
    except WorkflowError as exc:
        workflow = {"state": "UNREADABLE", "error": exc.message}
    return {
        "hostname": socket.gethostname(),
        "user": _user(),
        "os": platform.platform(terse=True),
        "uptime_s": _uptime(),
        "tools": tool_versions(results),
        "python3_venv": has_venv_support(),
        "gpus": gpus_from(smi) if code == 0 else [],
        "gpu_note": "" if code == 0 else ("nvidia-smi not found (CPU host)" if code == 127
                                          else f"nvidia-smi failed (exit {code})"),
        "disks": {"outputs": disk(ctx.get("OPS_REMOTE_OUTPUTS_DIR")), "data": disk(ctx.get("DATA_DIR"))},
        "volume": mount_of("/mnt") if os.path.isdir("/mnt") else None,
        "workflow": workflow,
    }


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (KeyError, ImportError):
        return str(os.geteuid())


def _uptime() -> Optional[int]:
    try:
        with open("/proc/uptime") as handle:
            return int(float(handle.read().split()[0]))
    except (OSError, ValueError, IndexError):
        return None

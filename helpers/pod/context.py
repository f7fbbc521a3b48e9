"""What one agent call knows: the resolved config values, the op's arguments, progress output."""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Optional

from .errors import ExitCode, WorkflowError
from .jsonio import write_bytes

ENV_FILE_MARKER = "# written by workflow.sh"
# config variables meant for the runs themselves (W&B, Hugging Face, NCCL, ...): accepted in
# workflow.env without being keys of the tool, and exported to every task and run
RUN_ENV_PREFIXES = ("WANDB_", "HF_", "HUGGINGFACE_", "NCCL_", "TORCH_", "PYTORCH_", "OMP_", "CUDA_", "MLFLOW_",
                    "TOKENIZERS_", "RUNENV_")


def expand(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path)) if path else path


class Context:
    def __init__(self, config: Dict[str, str], args: Optional[Dict[str, Any]] = None,
                 env_file: Optional[Dict[str, str]] = None) -> None:
        self.config = config
        self.args = args or {}
        self.env_file = env_file

    def sync_env(self) -> str:
        """Write the pod env file if the request carried one (call after the op's own checks)."""
        if not self.env_file or not self.env_file.get("path"):
            return "not sent"
        return sync_env_file(self.env_file["path"], self.env_file["content"])

    # -- config access
    def get(self, key: str, default: str = "") -> str:
        return self.config.get(key, default)

    def path(self, key: str) -> str:
        return expand(self.get(key))

    def flag(self, key: str) -> bool:
        return self.get(key, "0") in ("1", "true", "True", "yes")

    def number(self, key: str, default: int = 0) -> int:
        text = self.get(key)
        try:
            return int(text) if text else default
        except ValueError:
            return default

    def words(self, key: str) -> List[str]:
        import shlex

        return shlex.split(self.get(key))

    @property
    def outputs(self) -> str:
        return self.path("OPS_REMOTE_OUTPUTS_DIR")

    @property
    def state_file(self) -> str:
        return self.path("WF_STATE_FILE") or os.path.join(self.outputs, "_control", "workflow_state.json")

    @property
    def enforce(self) -> bool:
        return self.flag("WF_FSM_ENFORCE")

    def tmux_base(self) -> List[str]:
        socket = self.get("TMUX_SOCKET")
        return ["tmux", "-L", socket] if socket else ["tmux"]

    # -- output
    @staticmethod
    def progress(message: str) -> None:
        sys.stderr.write(message.rstrip("\n") + "\n")
        sys.stderr.flush()


def sync_env_file(path: str, content: str) -> str:
    """Write the pod env file (0600) when it changed; never replace a file the tool did not write."""
    path = expand(path)
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            current: Optional[str] = handle.read()
    except FileNotFoundError:
        current = None
    except OSError as exc:
        raise WorkflowError(f"cannot read REMOTE_ENV_PATH {path}: {exc.strerror}", ExitCode.FAILED) from None
    if current == content:
        return "unchanged"
    if current is not None and not current.startswith(ENV_FILE_MARKER):
        raise WorkflowError(
            f"REMOTE_ENV_PATH {path} exists and was not written by workflow.sh; it is left alone. Set "
            "REMOTE_ENV_PATH to another path (or move that file away)", ExitCode.REFUSED)
    try:
        write_bytes(path, content.encode("utf-8"), 0o600)
    except OSError as exc:
        raise WorkflowError(f"cannot write REMOTE_ENV_PATH {path}: {exc.strerror}; set REMOTE_ENV_PATH to a "
                            "writable path", ExitCode.FAILED) from None
    return "written"


def run_env(ctx: Context) -> Dict[str, str]:
    """The environment every task and run gets on top of the pod's own: the run variables of the
    pod env file (WANDB_*, HF_*, NCCL_*, ..., secrets included; RUNENV_X becomes X) and the pod paths."""
    values = read_env_file(ctx.get("REMOTE_ENV_PATH"))
    env = {k: v for k, v in values.items() if k.startswith(RUN_ENV_PREFIXES) or k in ("WANDB_API_KEY", "HF_TOKEN")}
    for key in ("DATA_DIR", "OPS_REMOTE_OUTPUTS_DIR", "OPS_REMOTE_REPO"):
        if ctx.get(key):
            env[key] = ctx.path(key)
    for key in [k for k in env if k.startswith("RUNENV_")]:
        env[key[len("RUNENV_"):]] = env.pop(key)
    return env


def read_env_file(path: str) -> Dict[str, str]:
    """Parse the env file this tool wrote (KEY=shell-quoted value lines)."""
    import shlex

    values: Dict[str, str] = {}
    try:
        with open(expand(path), encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return values
    for line in lines:
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, rest = line.partition("=")
        try:
            words = shlex.split(rest)
        except ValueError:
            continue
        values[key] = words[0] if words else ""
    return values

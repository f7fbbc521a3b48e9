"""bootstrap: the pod has tmux, rsync, git and python3 with venv (installs them via apt-get when asked)."""

from __future__ import annotations

import os
import shutil
from typing import Any, Dict, List

from . import fsm, procs
from .context import Context, expand
from .errors import ExitCode, WorkflowError

APT_PACKAGES = {"tmux": "tmux", "rsync": "rsync", "git": "git", "python3-venv": "python3-venv"}


def missing_prereqs(python_bin: str) -> List[str]:
    missing = [tool for tool in ("tmux", "rsync", "git") if shutil.which(tool) is None]
    code, _ = procs.run([python_bin, "-c", "import venv, ensurepip"], timeout=30)
    if code != 0:
        missing.append("python3-venv")
    return missing


def install_with_apt(missing: List[str], timeout: int) -> None:
    if os.geteuid() != 0:
        raise WorkflowError(
            f"bootstrap: missing on the pod: {', '.join(missing)}; AUTO_INSTALL_PREREQS=1 installs with apt-get "
            "only as root: log in as root or run: sudo apt-get install -y "
            f"{' '.join(APT_PACKAGES[m] for m in missing)}",
            ExitCode.FAILED)
    if shutil.which("apt-get") is None:
        raise WorkflowError(f"bootstrap: missing on the pod: {', '.join(missing)}, and there is no apt-get; install "
                            "them with the pod's package manager", ExitCode.FAILED)
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    Context.progress(f"bootstrap: apt-get install {' '.join(APT_PACKAGES[m] for m in missing)}")
    procs.check(["apt-get", "update", "-qq"], "apt-get update", "check the pod's network and apt sources",
                timeout=timeout, env=env)
    procs.check(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                 *[APT_PACKAGES[m] for m in missing]], "apt-get install",
                "install them by hand and re-run bootstrap", timeout=timeout, env=env)


def _run_script(path: str, key: str, timeout: int) -> None:
    if not os.path.isfile(path):
        raise WorkflowError(f"bootstrap: {key}={path} does not exist on the pod; fix the path or empty {key}",
                            ExitCode.FAILED)
    Context.progress(f"bootstrap: running {key} {path}")
    code, output = procs.run(["bash", path], timeout=timeout)
    for line in output.strip().splitlines()[-20:]:
        Context.progress(f"  | {line}")
    if code != 0:
        raise WorkflowError(f"bootstrap: {key} {path} exited {code}: {procs.tail(output)}; fix the script and "
                            "re-run bootstrap", ExitCode.FAILED)


def wandb_credentials_present(env_values: Dict[str, str]) -> bool:
    if env_values.get("WANDB_API_KEY") or os.environ.get("WANDB_API_KEY"):
        return True
    try:
        with open(os.path.expanduser("~/.netrc"), encoding="utf-8", errors="replace") as handle:
            return "api.wandb.ai" in handle.read()
    except OSError:
        return False


def bootstrap(ctx: Context) -> Dict[str, Any]:
    record = fsm.read_state(ctx.state_file)
    fsm.check_allowed(record, "bootstrap", ctx.enforce)
    timeout = ctx.number("CHECKOUT_TIMEOUT_SECS", 1800)
    python_bin = ctx.get("REMOTE_PYTHON_BIN") or "python3"
    installed: List[str] = []
    missing = missing_prereqs(python_bin)
    if missing and not ctx.flag("AUTO_INSTALL_PREREQS"):
        raise WorkflowError(f"bootstrap: missing on the pod: {', '.join(missing)}; install them or set "
                            "AUTO_INSTALL_PREREQS=1 (apt-get, as root)", ExitCode.FAILED)
    wandb = ctx.flag("SWEEP_WANDB") or ctx.flag("RUN_WANDB_SETUP")
    for key in ("BOOTSTRAP_SCRIPT", *(["WANDB_SETUP_SCRIPT"] if wandb else [])):
        if ctx.get(key) and not os.path.isfile(ctx.path(key)):
            raise WorkflowError(f"bootstrap: {key}={ctx.path(key)} does not exist on the pod; fix the path or empty "
                                f"{key}", ExitCode.FAILED)
    ctx.sync_env()  # every check passed: now change things
    if missing:
        from .ticker import Ticker

        with Ticker(ctx, f"bootstrap: apt-get install {' '.join(APT_PACKAGES[m] for m in missing)}"):
            install_with_apt(missing, timeout)
        still = missing_prereqs(python_bin)
        if still:
            raise WorkflowError(f"bootstrap: still missing after apt-get: {', '.join(still)}; install by hand",
                                ExitCode.FAILED)
        installed = missing
    ran: List[str] = []
    if ctx.get("BOOTSTRAP_SCRIPT"):
        _run_script(ctx.path("BOOTSTRAP_SCRIPT"), "BOOTSTRAP_SCRIPT", timeout)
        ran.append("BOOTSTRAP_SCRIPT")
    if wandb and ctx.get("WANDB_SETUP_SCRIPT"):
        _run_script(ctx.path("WANDB_SETUP_SCRIPT"), "WANDB_SETUP_SCRIPT", timeout)
        ran.append("WANDB_SETUP_SCRIPT")
    if ctx.flag("SWEEP_WANDB") and ctx.get("WANDB_MODE") not in ("offline", "disabled"):  # offline: no key needed
        from .context import read_env_file

        if not wandb_credentials_present(read_env_file(ctx.get("REMOTE_ENV_PATH"))):
            raise WorkflowError("bootstrap: SWEEP_WANDB=1 but the pod has no W&B credentials (no api.wandb.ai in "
                                "~/.netrc, no WANDB_API_KEY); set WANDB_SETUP_SCRIPT or export WANDB_API_KEY",
                                ExitCode.FAILED)
    record = fsm.transition(ctx.state_file, "bootstrap", "bootstrap ok" + (
        f"; installed {', '.join(installed)}" if installed else ""), ctx.enforce)
    return {"installed": installed, "ran": ran, "state": record.state, "outputs": expand(ctx.get(
        "OPS_REMOTE_OUTPUTS_DIR"))}

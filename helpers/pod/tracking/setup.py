"""checkout's part in tracking: with MLFLOW_TRACKING_URI set, the run venv must import mlflow (the
sidecar runs there); if it cannot, mlflow-skinny is pip-installed into the run venv, never into the
pod's own python."""

from __future__ import annotations

import os
from typing import Any, Dict

from .. import procs
from ..context import Context
from . import enabled

_PROBE = "import mlflow; print(mlflow.__version__)"


def ensure_client(ctx: Context, venv: str) -> Dict[str, Any]:
    if not enabled(ctx.config):
        return {"mlflow": None}
    python = os.path.join(venv, "bin", "python")
    code, out = procs.run([python, "-c", _PROBE], timeout=300)
    if code == 0:
        return {"mlflow": out.strip().splitlines()[-1], "mlflow_installed": False}
    Context.progress("checkout: MLFLOW_TRACKING_URI is set: installing mlflow-skinny into the run venv")
    if procs.run([python, "-m", "pip", "--version"], timeout=60)[0] != 0:
        procs.check([python, "-m", "ensurepip", "--default-pip"], "installing pip into the venv (ensurepip)",
                    "install python3-venv on the pod", timeout=300)
    procs.check([python, "-m", "pip", "install", "--disable-pip-version-check", "--quiet", "mlflow-skinny"],
                "pip install mlflow-skinny", "the pod must reach the package index (or set MLFLOW_TRACKING_URI= "
                "to turn tracking off)", timeout=ctx.number("CHECKOUT_TIMEOUT_SECS", 1800))
    code, out = procs.run([python, "-c", _PROBE], timeout=300)
    return {"mlflow": out.strip().splitlines()[-1] if code == 0 else None, "mlflow_installed": True}

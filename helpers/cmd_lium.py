"""Lium commands: resolve LIUM_TARGET for the transport, pod-up, pod-delete (exactly one pod)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from helpers.config import Config
from helpers.endpoint import SSHEndpoint
from helpers.errors import ExitCode, WorkflowError
from helpers.session import Session

if TYPE_CHECKING:
    from helpers.lium import LiumSettings


def lium_settings(cfg: Config) -> LiumSettings:
    from helpers.lium import LiumSettings

    def opt(key: str) -> str | None:
        return cfg.text(key) or None

    ttl = cfg["LIUM_TTL_HOURS"]
    return LiumSettings(
        target=opt("LIUM_TARGET"), api_key=opt("LIUM_API_KEY"), base_url=opt("LIUM_BASE_URL"),
        pod_name=opt("LIUM_POD_NAME"), executor_id=opt("LIUM_EXECUTOR_ID"), gpu_type=opt("LIUM_GPU_TYPE"),
        gpu_count=cfg.number("LIUM_GPU_COUNT"), country=opt("LIUM_COUNTRY"), volume=opt("LIUM_VOLUME"),
        ttl_hours=float(ttl) if isinstance(ttl, float) else None, template_id=opt("LIUM_TEMPLATE_ID"),
        yes=cfg.flag("LIUM_YES"), ready_timeout_secs=cfg.number("LIUM_READY_TIMEOUT_SECS") or 900,
        ssh_key_path=str(cfg.local_path("LIUM_SSH_KEY_PATH")) if cfg.text("LIUM_SSH_KEY_PATH") else None,
    )


def _cache_file(cfg: Config) -> Path:
    """Beside the config file that names the target (for the tracked workflow.env: the checkout's .workflow/)."""
    return cfg.env_file.parent / ".workflow" / "lium-targets.json"


def _known_hosts_dir() -> Path:
    return Path.home() / ".lium" / "known_hosts"


def resolve_lium_endpoint(cfg: Config, refresh: bool = False) -> SSHEndpoint:
    from helpers.lium import resolve_target

    endpoint = resolve_target(lium_settings(cfg), _cache_file(cfg), _known_hosts_dir(), refresh=refresh)
    outputs_on_volume(cfg, endpoint.volume_path)
    return endpoint


_ON_VOLUME = "on LIUM_VOLUME"


def outputs_on_volume(cfg: Config, mount: str | None) -> None:
    """LIUM_VOLUME set and OPS_REMOTE_OUTPUTS_DIR left empty: the outputs (every run dir, with its
    checkpoints) go on the volume, ``<mount>/workflow/outputs``, so that a replacement pod that attaches
    the same volume finds the campaign and resumes its rows from their checkpoints. Applied before any
    call reaches the pod (the mount is known once the endpoint is resolved, from the API or its cache)."""
    setting = cfg.settings["OPS_REMOTE_OUTPUTS_DIR"]
    if not mount or not cfg.text("LIUM_VOLUME") or not setting.source.startswith(("default", _ON_VOLUME)):
        return  # (again for a replacement pod, whose volume may be mounted elsewhere)
    outputs = f"{mount.rstrip('/')}/workflow/outputs"
    setting.value, setting.source = outputs, f"{_ON_VOLUME} (mounted at {mount})"
    state = cfg.settings["WF_STATE_FILE"]
    if "from OPS_REMOTE_OUTPUTS_DIR" in state.source:
        state.value = f"{outputs}/_control/workflow_state.json"


def _confirm(text: str) -> bool:
    if not sys.stdin.isatty():
        raise WorkflowError(f"{text.rstrip('?')}: no terminal to confirm on; pass --yes (or LIUM_YES=1)",
                            ExitCode.REFUSED)
    sys.stderr.write(f"{text} [y/N] ")
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def cmd_pod_up(session: Session) -> int:
    from helpers.lium import execute_pod_up, plan_pod_up

    settings = lium_settings(session.cfg)
    if getattr(session.options, "yes", False):
        settings = type(settings)(**{**settings.__dict__, "yes": True})
    plan = plan_pod_up(settings)
    if session.dry_run:
        session.print(f"would rent: {plan.describe()}")
        session.print("then wait until it is RUNNING with SSH, pin its host key, and set its workflow state to "
                      "POD_READY")
        return 0
    from helpers.progress import Progress

    with Progress("pod-up").ticking("waiting for the pod and its SSH") as waiting:  # a TTY: elapsed, every second
        pod, endpoint = execute_pod_up(plan, settings, _known_hosts_dir(), waiting.quiet(_confirm),
                                       cache_file=_cache_file(session.cfg), on_progress=waiting.note)
    from helpers import rented
    from helpers.lium_api import base_url_of

    rented.record_rented(session.cfg, pod.uuid, pod.name, pod.huid, base_url_of(settings.base_url), "pod-up")
    outputs_on_volume(session.cfg, endpoint.volume_path)  # the workflow state goes where the outputs will be
    state = "unknown"
    try:  # the pod's workflow state starts at POD_READY (one SSH round trip through the new endpoint)
        from helpers.agent import Agent
        from helpers.paramiko_ssh import SSHTransport

        transport = SSHTransport(endpoint, session.cfg.number("SSH_CONNECT_TIMEOUT_SECS") or 15,
                                 session.cfg.number("SSH_KEEPALIVE_SECS") or 15)
        try:
            state = Agent(transport, session.cfg).call(
                "fsm-transition", {"command": "pod-up", "commit": True, "reason": f"pod-up {pod.uuid}"})["state"]
        finally:
            transport.close()
    except WorkflowError as exc:
        session.note(f"pod-up: the pod is up, but its workflow state was not set: {exc.message}")
    if session.as_json:
        session.emit_json({"uuid": pod.uuid, "huid": pod.huid, "name": pod.name, "host": endpoint.host,
                           "port": endpoint.port, "user": endpoint.user, "state": state})
        return 0
    session.print(f"pod {pod.name} ({pod.huid}, {pod.uuid}) is ready at {endpoint.display()}; state {state}")
    if settings.volume and endpoint.volume_path:
        session.print(f"its volume is mounted at {endpoint.volume_path}; outputs: "
                      f"{session.cfg.text('OPS_REMOTE_OUTPUTS_DIR')} ({session.cfg.source('OPS_REMOTE_OUTPUTS_DIR')})")
    session.print("put this in workflow.env (it bills until pod-delete):")
    session.print(f"LIUM_TARGET={pod.uuid}")
    return 0


def cmd_pod_delete(session: Session) -> int:
    from helpers.lium import execute_pod_delete, plan_pod_delete

    settings = lium_settings(session.cfg)
    if getattr(session.options, "yes", False):
        settings = type(settings)(**{**settings.__dict__, "yes": True})
    plan = plan_pod_delete(settings)
    if session.dry_run:
        session.print(f"would {plan.describe()}")
        return 0
    pod = execute_pod_delete(plan, settings, _confirm, cache_file=_cache_file(session.cfg),
                             known_hosts_dir=_known_hosts_dir())
    from helpers import rented

    rented.forget_rented(session.cfg, pod.uuid)
    session.print(f"deleted pod {pod.name} ({pod.huid}, {pod.uuid})")
    return 0

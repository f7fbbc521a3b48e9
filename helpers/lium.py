"""The Lium target: resolve LIUM_TARGET to an SSH endpoint, rent a pod (pod-up), delete one pod (pod-delete).

Everything goes through the real Lium SDK (PyPI ``lium.io``); after resolution the pod is plain SSH.
Pod statuses, as the API reports them: PENDING (being created, no SSH yet), RUNNING (SSH works once
``ssh_connect_cmd`` is set), REBOOT_PENDING / STARTING (coming back), and terminal ones that never
become ready (FAILED, CREATION_FAILED, BROKEN, STOPPED, DELETING, ...). A pod bills from the rent
until it is deleted, whatever its status.

Deletion removes exactly one pod, by UUID, after a fresh lookup; there is no other deletion path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from helpers.endpoint import SSHEndpoint
from helpers.lium_api import (
    LiumPod,
    LiumSettings,
    api_call,
    base_url_of,
    cache_forget,
    cache_lookup,
    cache_store,
    client_for,
    default_ssh_key_path,
    endpoint_for,
    known_hosts_file,
    list_pods,
    pod_delete_command,
    sdk,
    select_pod,
)
from helpers.lium_up import PodUpPlan, VolumeSpec, execute_pod_up, parse_volume, plan_pod_up
from helpers.pod.errors import ExitCode, WorkflowError

__all__ = [
    "LiumPod",
    "LiumSettings",
    "PodDeletePlan",
    "PodUpPlan",
    "VolumeSpec",
    "execute_pod_delete",
    "execute_pod_up",
    "parse_volume",
    "plan_pod_delete",
    "plan_pod_up",
    "resolve_target",
]


def _require_target(settings: LiumSettings) -> str:
    target = (settings.target or "").strip()
    if not target:
        raise WorkflowError(
            "LIUM_TARGET is not set: put a pod name, HUID or UUID in the config", ExitCode.USAGE
        )
    return target


def resolve_target(
    settings: LiumSettings, cache_file: Path, known_hosts_dir: Path, *, refresh: bool = False
) -> SSHEndpoint:
    """LIUM_TARGET as an SSH endpoint: from the cache, else (or with ``refresh``) from one API listing."""
    target = _require_target(settings)
    base_url = base_url_of(settings.base_url)
    cached = None if refresh else cache_lookup(cache_file, target, base_url)
    if cached is not None:
        return endpoint_for(cached, settings.ssh_key_path or default_ssh_key_path(), known_hosts_dir)
    client = client_for(settings)
    pod = select_pod([p for p, _ in list_pods(client, f"resolving LIUM_TARGET={target!r}")], target)
    if not pod.has_ssh:
        if pod.status in sdk().Lium.TERMINAL_POD_STATUSES:
            raise WorkflowError(
                f"{pod.label} is {pod.status} and will not become ready: delete it "
                f"(`{pod_delete_command(pod.uuid)}`) and rent another with pod-up",
                ExitCode.FAILED,
            )
        if pod.status == "RUNNING" and pod.ssh_cmd:
            raise WorkflowError(
                f"{pod.label} has an SSH command this tool cannot use ({pod.ssh_cmd!r}): "
                "check it with `lium ps`",
                ExitCode.FAILED,
            )
        raise WorkflowError(
            f"{pod.label} is {pod.status} and has no SSH endpoint yet: wait and retry "
            "(`lium ps` shows its status)",
            ExitCode.FAILED,
        )
    cache_store(cache_file, target, pod, base_url)
    key = str(client.config.ssh_key_path) if client.config.ssh_key_path else None
    return endpoint_for(pod, key, known_hosts_dir)


# --------------------------------------------------------------------------------- pod-delete
@dataclass(frozen=True)
class PodDeletePlan:
    target: str
    pod: LiumPod

    def describe(self) -> str:
        return f"delete Lium {self.pod.summary()}, named by LIUM_TARGET={self.target!r}"


def plan_pod_delete(settings: LiumSettings) -> PodDeletePlan:
    """The one pod LIUM_TARGET names, from a fresh API listing (never the cache)."""
    target = _require_target(settings)
    client = client_for(settings)
    pods = [p for p, _ in list_pods(client, f"looking up LIUM_TARGET={target!r}")]
    return PodDeletePlan(target=target, pod=select_pod(pods, target))


def execute_pod_delete(
    plan: PodDeletePlan,
    settings: LiumSettings,
    confirm: Callable[[str], bool],
    *,
    cache_file: Path | None = None,
    known_hosts_dir: Path | None = None,
) -> LiumPod:
    """Delete exactly ``plan.pod`` by UUID (re-checked in a fresh listing), after confirmation."""
    import requests

    client = client_for(settings)
    uuid = plan.pod.uuid
    listed = [(p, info) for p, info in list_pods(client, f"looking up pod {uuid}") if p.uuid == uuid]
    if len(listed) != 1:
        if cache_file is not None:
            cache_forget(cache_file, uuid)
        raise WorkflowError(
            f"{plan.pod.label} is no longer listed on Lium: nothing deleted", ExitCode.NOT_FOUND
        )
    pod, info = listed[0]
    question = f"Delete Lium {pod.summary()}? Its disk is lost and billing stops."
    if not settings.yes and not confirm(question):
        raise WorkflowError(f"pod-delete cancelled: {pod.label} was not deleted", ExitCode.REFUSED)
    # a 2xx without a JSON body still means the API accepted the DELETE
    with api_call(client, f"deleting {pod.label}"), contextlib.suppress(requests.exceptions.JSONDecodeError):
        client.rm(info)
    if cache_file is not None:
        cache_forget(cache_file, uuid)
    if known_hosts_dir is not None and known_hosts_dir.is_dir():
        known_hosts_file(known_hosts_dir, uuid).unlink(missing_ok=True)
    return pod

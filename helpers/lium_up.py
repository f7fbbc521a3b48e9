"""pod-up for the Lium target: plan what to rent (pure), then rent it through the SDK and wait for SSH.

A rented pod bills from the rent until it is deleted, ready or not: every failure after the rent
names the pod's UUID and the exact command that deletes it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from helpers.endpoint import SSHEndpoint
from helpers.lium_api import (
    LiumPod,
    LiumSettings,
    api_call,
    cache_store,
    client_for,
    endpoint_for,
    list_pods,
    pod_delete_command,
    pod_from_sdk,
    scrub,
    sdk,
)
from helpers.pod.errors import ExitCode, WorkflowError

MAX_TTL_HOURS = 720  # the API's limit on termination_hours
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_COUNTRY_RE = re.compile(r"[A-Za-z]{2}")


@dataclass(frozen=True)
class VolumeSpec:
    existing: str | None = None  # HUID or UUID of a volume to attach
    new_name: str | None = None  # name of a volume to create and attach
    new_description: str = ""

    def describe(self) -> str:
        if self.existing:
            return f"attach volume {self.existing}"
        return f"create volume {self.new_name!r} and attach it"


def parse_volume(spec: str) -> VolumeSpec:
    """``id:<HUID|UUID>`` or ``new:name=<NAME>[,desc=<TEXT>]`` (the Lium CLI's grammar; no size: the
    SDK's volume API takes only a name and a description)."""
    text = spec.strip()
    usage = "LIUM_VOLUME must be 'id:<HUID or UUID>' or 'new:name=<NAME>[,desc=<TEXT>]'"
    if text.startswith("id:") and text[3:].strip():
        return VolumeSpec(existing=text[3:].strip())
    if not text.startswith("new:"):
        raise WorkflowError(f"{usage}, not {spec!r}", ExitCode.USAGE)
    params: dict[str, str] = {}
    for part in text[4:].split(","):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if key == "size":
            raise WorkflowError(f"{usage}: the Lium volume API takes no size", ExitCode.USAGE)
        if not sep or key not in ("name", "desc") or key in params:
            raise WorkflowError(f"{usage}, not {spec!r}", ExitCode.USAGE)
        params[key] = value
    name = params.get("name", "")
    if not _NAME_RE.fullmatch(name):
        raise WorkflowError(f"{usage}: NAME is 1-64 of A-Z a-z 0-9 . _ -, got {name!r}", ExitCode.USAGE)
    return VolumeSpec(new_name=name, new_description=params.get("desc", ""))


@dataclass(frozen=True)
class PodUpPlan:
    name: str
    executor_id: str | None
    gpu_type: str | None
    gpu_count: int | None
    country: str | None
    volume: VolumeSpec | None
    ttl_hours: float | None
    termination_hours: int | None  # whole hours sent with the rent (the API takes integers)
    template_id: str | None
    ready_timeout_secs: int

    def describe(self) -> str:
        if self.executor_id:
            where = f"node {self.executor_id}" + (f" ({self.gpu_count} GPUs)" if self.gpu_count else "")
        else:
            filters = [f"GPU {self.gpu_type}"]
            filters += [f"{self.gpu_count} GPUs"] if self.gpu_count else []
            filters += [f"country {self.country}"] if self.country else []
            where = "the cheapest available node ($/GPU-hour) with " + ", ".join(filters)
        parts = [f"rent {where} as pod {self.name!r}"]
        parts.append(f"template {self.template_id}" if self.template_id else "the node's default template")
        if self.volume:
            parts.append(self.volume.describe())
        if self.ttl_hours:
            parts.append(f"auto-delete {self.ttl_hours:g} h after the rent")
        parts.append(f"wait up to {self.ready_timeout_secs} s for SSH")
        return "; ".join(parts)


def plan_pod_up(settings: LiumSettings, now: datetime | None = None) -> PodUpPlan:
    """Validate the pod-up settings and say what would be rented. Pure: no network, no files."""
    gpu_type = (settings.gpu_type or "").strip() or None
    country = (settings.country or "").strip().upper() or None
    executor_id = (settings.executor_id or "").strip() or None
    if executor_id and (gpu_type or country):
        raise WorkflowError(
            "set either LIUM_EXECUTOR_ID or the filters LIUM_GPU_TYPE/LIUM_COUNTRY for pod-up, not both",
            ExitCode.USAGE,
        )
    if not executor_id and not gpu_type:
        raise WorkflowError(
            "pod-up needs LIUM_EXECUTOR_ID (a node from `lium ls`) or LIUM_GPU_TYPE (e.g. H100)",
            ExitCode.USAGE,
        )
    if settings.gpu_count is not None and settings.gpu_count < 1:
        raise WorkflowError(f"LIUM_GPU_COUNT must be 1 or more, not {settings.gpu_count}", ExitCode.USAGE)
    if country and not _COUNTRY_RE.fullmatch(country):
        raise WorkflowError(
            f"LIUM_COUNTRY must be a 2-letter ISO code like US, not {country!r}", ExitCode.USAGE
        )
    ttl = settings.ttl_hours
    if ttl is not None and not (0 < ttl <= MAX_TTL_HOURS):
        raise WorkflowError(f"LIUM_TTL_HOURS must be in (0, {MAX_TTL_HOURS}], not {ttl}", ExitCode.USAGE)
    if settings.ready_timeout_secs < 1:
        raise WorkflowError("LIUM_READY_TIMEOUT_SECS must be 1 or more", ExitCode.USAGE)
    name = settings.pod_name or f"wf-{(now or datetime.now(timezone.utc)):%Y%m%d-%H%M%S}"
    if not _NAME_RE.fullmatch(name):
        raise WorkflowError(f"LIUM_POD_NAME must be 1-64 of A-Z a-z 0-9 . _ -, not {name!r}", ExitCode.USAGE)
    return PodUpPlan(
        name=name,
        executor_id=executor_id,
        gpu_type=gpu_type,
        gpu_count=settings.gpu_count,
        country=country,
        volume=parse_volume(settings.volume) if settings.volume else None,
        ttl_hours=ttl,
        termination_hours=max(1, math.ceil(ttl)) if ttl is not None else None,
        template_id=(settings.template_id or "").strip() or None,
        ready_timeout_secs=settings.ready_timeout_secs,
    )


def _free_gpus(node: Any) -> int:
    return int(node.gpu_count if node.available_gpu_count is None else node.available_gpu_count)


def _country(node: Any) -> str:
    return str((node.location or {}).get("country_code") or "").upper()


def _choose_node(client: Any, plan: PodUpPlan) -> Any:
    if plan.executor_id:
        with api_call(client, f"looking up node {plan.executor_id}"):
            try:
                node = client.get_executor(plan.executor_id)
            except ValueError as exc:  # a HUID shared by several nodes
                raise WorkflowError(scrub(str(exc), None), ExitCode.USAGE) from None
        if node is None:
            raise WorkflowError(
                f"node {plan.executor_id} (LIUM_EXECUTOR_ID) is not among Lium's available nodes: it may be "
                "rented or offline; pick another with `lium ls` or use LIUM_GPU_TYPE",
                ExitCode.NOT_FOUND,
            )
        return node
    from lium.sdk.utils import gpu_short_matches

    assert plan.gpu_type is not None
    with api_call(client, "listing available nodes"):
        nodes = client.ls(gpu_type=plan.gpu_type)
    nodes = [n for n in nodes if gpu_short_matches(plan.gpu_type, n.gpu_type)]
    if plan.gpu_count:
        nodes = [n for n in nodes if _free_gpus(n) == plan.gpu_count]
    if plan.country:
        nodes = [n for n in nodes if _country(n) == plan.country]
    if not nodes:
        wanted = ", ".join(
            [f"GPU {plan.gpu_type}"]
            + ([f"{plan.gpu_count} GPUs"] if plan.gpu_count else [])
            + ([f"country {plan.country}"] if plan.country else [])
        )
        raise WorkflowError(
            f"no available Lium node has {wanted}: relax LIUM_GPU_TYPE/LIUM_GPU_COUNT/LIUM_COUNTRY "
            "or retry later (`lium ls` lists nodes)",
            ExitCode.NOT_FOUND,
        )
    # cheapest $/GPU-hour first (what `lium ls` sorts on), unpriced nodes last, ties in API order
    return sorted(nodes, key=lambda n: (not n.price_per_gpu, n.price_per_gpu or 0.0))[0]


def _volume_id(client: Any, spec: VolumeSpec) -> str | None:
    """The UUID of an existing volume (``id:``), or None for ``new:`` after checking the name is free."""
    with api_call(client, "listing your volumes"):
        volumes = client.volumes()
    if spec.existing:
        hits = [v for v in volumes if spec.existing in (v.id, v.huid)]
        if len(hits) != 1:
            known = ", ".join(f"{v.name} ({v.huid})" for v in volumes[:5]) or "none"
            raise WorkflowError(
                f"LIUM_VOLUME id:{spec.existing} names {len(hits)} of your volumes (yours: {known}): "
                "use its UUID",
                ExitCode.NOT_FOUND if not hits else ExitCode.USAGE,
            )
        return str(hits[0].id)
    taken = [v for v in volumes if v.name == spec.new_name]
    if taken:
        raise WorkflowError(
            f"a volume named {spec.new_name!r} exists already: "
            f"set LIUM_VOLUME=id:{taken[0].huid} to attach it",
            ExitCode.USAGE,
        )
    return None


def execute_pod_up(
    plan: PodUpPlan,
    settings: LiumSettings,
    known_hosts_dir: Path,
    confirm: Callable[[str], bool],
    *,
    cache_file: Path | None = None,
    poll_interval_secs: float | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> tuple[LiumPod, SSHEndpoint]:
    """Rent what ``plan`` says, wait until it has SSH, and return it (cached under its UUID)."""
    client = client_for(settings)
    key_path = client.config.ssh_key_path
    if not key_path or not client.config.ssh_public_keys:
        shown = f"{key_path}.pub" if key_path else "a key"
        raise WorkflowError(
            f"pod-up needs an SSH public key and found none ({shown}): set LIUM_SSH_KEY_PATH to a "
            "private key with its .pub next to it",
            ExitCode.USAGE,
        )
    clash = [p for p, _ in list_pods(client, "listing your pods") if p.name == plan.name]
    if clash:
        raise WorkflowError(
            f"a pod named {plan.name!r} exists already ({clash[0].uuid}): set another LIUM_POD_NAME, or "
            f"LIUM_TARGET={clash[0].uuid} to use it",
            ExitCode.USAGE,
        )
    node = _choose_node(client, plan)
    volume_id = _volume_id(client, plan.volume) if plan.volume else None
    count = plan.gpu_count or _free_gpus(node)
    where = _country(node) or "?"
    question = (
        f"Rent Lium node {node.huid} ({node.id}): {count}x{node.gpu_type} in {where} at "
        f"${(node.price_per_gpu or 0) * count:.2f}/h, as pod {plan.name!r}"
        + (f", {plan.volume.describe()}" if plan.volume else "")
        + (f", auto-deleted after {plan.ttl_hours:g} h" if plan.ttl_hours else "")
        + "? It bills until it is deleted."
    )
    if not settings.yes and not confirm(question):
        raise WorkflowError(
            "pod-up cancelled: nothing was rented (LIUM_YES=1 or --yes skips the question)", ExitCode.REFUSED
        )
    if plan.volume and plan.volume.new_name:
        with api_call(client, f"creating volume {plan.volume.new_name!r}"):
            volume = client.volume_create(plan.volume.new_name, description=plan.volume.new_description)
            volume_id = str(volume.id)
    kept = f"; volume {volume_id} is kept" if plan.volume and plan.volume.new_name else ""
    rented_at = datetime.now(timezone.utc)
    with api_call(client, f"renting node {node.huid}", suffix=kept):
        try:
            created = client.up(
                executor_id=node.id,
                name=plan.name,
                template_id=plan.template_id,
                volume_id=volume_id,
                termination_hours=plan.termination_hours,
                gpu_count=plan.gpu_count if plan.executor_id else None,
            )
        except ValueError as exc:  # refused by the SDK before anything was sent
            raise WorkflowError(f"pod-up: {scrub(str(exc), None)}", ExitCode.USAGE) from None
    uuid = str(created["id"])
    billing = f"; pod {uuid} is STILL BILLING: delete it with `{pod_delete_command(uuid)}`"
    seen: list[str] = []

    def on_poll(_pod: Any, status: str, elapsed: float) -> None:
        if on_progress is not None and (not seen or seen[-1] != status):
            on_progress(f"lium pod {plan.name} ({uuid}): {status} after {elapsed:.0f} s")
        seen.append(status)

    with api_call(client, f"waiting for lium pod {plan.name} ({uuid})", suffix=billing):
        try:
            ready = client.wait_ready(
                uuid, timeout=plan.ready_timeout_secs, poll_interval=poll_interval_secs, on_poll=on_poll
            )
        except sdk().PodStartError as exc:
            cause = f" ({scrub(exc.cause, None)})" if exc.cause else ""
            raise WorkflowError(
                f"lium pod {plan.name} ({uuid}) will not start: status {exc.status or 'gone'}{cause}; it may "
                f"still be billing: delete it with `{pod_delete_command(uuid)}`",
                ExitCode.FAILED,
            ) from None
    if ready is None:
        raise WorkflowError(
            f"lium pod {plan.name} ({uuid}) is not ready after {plan.ready_timeout_secs} s (status "
            f"{seen[-1] if seen else 'unknown'}) and is STILL BILLING: wait and use LIUM_TARGET={uuid}, or "
            f"delete it with `{pod_delete_command(uuid)}`",
            ExitCode.FAILED,
        )
    pod = pod_from_sdk(ready)
    if not pod.has_ssh:
        raise WorkflowError(
            f"{pod.label} gave an unusable SSH command ({pod.ssh_cmd!r}){billing}", ExitCode.FAILED
        )
    if plan.ttl_hours and plan.ttl_hours != plan.termination_hours:
        # the rent carried whole hours counted from boot; set the exact time now that it has booted
        at = rented_at + timedelta(hours=plan.ttl_hours)
        with api_call(client, f"scheduling the removal of {pod.label}", suffix=billing):
            client.schedule_termination(uuid, termination_time=at.strftime("%Y-%m-%dT%H:%M:%SZ"))
    if cache_file is not None:
        cache_store(cache_file, uuid, pod, client.config.base_url)
    return pod, endpoint_for(pod, str(key_path), known_hosts_dir)



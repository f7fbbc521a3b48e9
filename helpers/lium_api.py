"""Lium SDK plumbing for helpers.lium: settings, client, error mapping, pod matching, resolution cache.

The SDK (PyPI ``lium.io``, ``import lium``) is imported lazily: it is an optional dependency, and
importing it runs ``dotenv.load_dotenv()`` as a side effect. Every SDK exception becomes a one-line
``WorkflowError``; the API key never appears in a message (the SDK's own auth/permission messages
carry a fingerprint of it, which is scrubbed as well).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from helpers.endpoint import SSHEndpoint
from helpers.pod.errors import ExitCode, WorkflowError

DEFAULT_BASE_URL = "https://lium.io/api"
# What a user runs to remove one pod by UUID; named in every message about a pod that may be billing.
POD_DELETE_COMMAND = "infra_scripts/workflow.sh --set LIUM_TARGET={uuid} pod-delete --yes"
API_KEY_HELP = (
    "set LIUM_API_KEY in the workflow config (or the environment), or run `lium init` to save one "
    "in ~/.lium/config.ini"
)
CACHE_VERSION = 1
_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class LiumSettings:
    """The LIUM_* config keys (LIUM_<FIELD upper-cased>)."""

    target: str | None = None  # pod name, HUID or UUID
    api_key: str | None = field(default=None, repr=False)  # None: LIUM_API_KEY env or ~/.lium/config.ini
    base_url: str | None = None  # None: LIUM_BASE_URL env or https://lium.io/api
    pod_name: str | None = None  # pod-up: the new pod's name (None: wf-<UTC time>)
    executor_id: str | None = None  # pod-up: node UUID or HUID (`lium ls`)
    gpu_type: str | None = None  # pod-up filter, e.g. "H100"
    gpu_count: int | None = None  # pod-up filter: GPUs the pod gets
    country: str | None = None  # pod-up filter: ISO 3166 alpha-2 code
    volume: str | None = None  # pod-up: "id:<HUID|UUID>" or "new:name=<NAME>[,desc=<TEXT>]"
    ttl_hours: float | None = None  # pod-up: Lium removes the pod this long after the rent
    template_id: str | None = None  # pod-up: template UUID (None: the node's default PyTorch image)
    yes: bool = False  # skip the confirmation questions
    ready_timeout_secs: int = 900  # pod-up: how long to wait for RUNNING + SSH
    ssh_key_path: str | None = None  # private key for the pod (None: the SDK's configured key)


def pod_delete_command(uuid: str) -> str:
    return POD_DELETE_COMMAND.format(uuid=uuid)


def base_url_of(configured: str | None) -> str:
    """The API base URL: LIUM_BASE_URL from the config, else the environment, else the SDK default."""
    return (configured or os.environ.get("LIUM_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")


def sdk() -> Any:
    """The ``lium.sdk`` module, or a usage error naming the package to install."""
    try:
        import lium.sdk as lium_sdk
    except ImportError:
        raise WorkflowError(
            f"the Lium SDK is not installed in this venv: run {sys.executable} -m pip install 'lium.io>=0.32' "
            "(or delete .workflow/venv and let workflow.sh rebuild it)",
            ExitCode.USAGE,
        ) from None
    return lium_sdk


def scrub(text: str, secret: str | None) -> str:
    """``text`` on one line, without the API key or the SDK's fingerprint of it."""
    line = " ".join(str(text).split())
    if secret:
        line = line.replace(secret, "***")
        if len(secret) > 12:
            line = line.replace(f"{secret[:6]}…{secret[-4:]}", "***")
    return line


def open_client(api_key: str | None, base_url: str | None, ssh_key_path: str | None) -> Any:
    """A ``lium.sdk.Lium`` built from an explicit Config: no prompt, no ssh-keygen, nothing written.

    The key is ``api_key`` (LIUM_API_KEY from the workflow config) or, when unset, whatever the SDK
    finds itself (LIUM_API_KEY in the environment, ~/.lium/config.ini), read by ``Config.load``,
    which only reads. A missing key is a usage error raised before any request.
    """
    lium_sdk = sdk()
    try:
        config = lium_sdk.Config.load(require_key=False)
    except ValueError as exc:  # LIUM_WORKSPACE names a workspace with no saved key
        if not api_key:
            raise WorkflowError(f"{scrub(str(exc), None)}; or {API_KEY_HELP}", ExitCode.USAGE) from None
        key_path, key_source = lium_sdk.config.resolve_ssh_key_path()
        config = lium_sdk.Config(api_key=api_key, ssh_key_path=key_path, ssh_key_source=key_source)
    if api_key:
        config.api_key = api_key
        config.api_key_source = "LIUM_API_KEY in the workflow config"
    if not config.api_key:
        raise WorkflowError(f"no Lium API key: {API_KEY_HELP}", ExitCode.USAGE)
    config.base_url = base_url_of(base_url)
    if ssh_key_path:
        config.ssh_key_path = Path(ssh_key_path).expanduser()
        config.ssh_key_source = "LIUM_SSH_KEY_PATH in the workflow config"
    return lium_sdk.Lium(config=config)


def default_ssh_key_path() -> str | None:
    """The private key the SDK would use (LIUM_SSH_KEY_PATH, ~/.lium/config.ini, ~/.ssh/id_*), or None."""
    path, _source = sdk().config.resolve_ssh_key_path()
    return str(path) if path else None


def map_error(exc: BaseException, doing: str, base_url: str, secret: str | None) -> WorkflowError | None:
    """The WorkflowError for an SDK or network exception raised while ``doing``; None if not ours to map."""
    import requests

    errors = sdk()
    said = scrub(str(exc), secret)
    if isinstance(exc, errors.LiumAuthError):
        return WorkflowError(
            f"Lium refused the API key while {doing}: check LIUM_API_KEY in the workflow config "
            "(or the environment / ~/.lium/config.ini)",
            ExitCode.USAGE,
        )
    if isinstance(exc, errors.LiumInsufficientBalanceError):
        return WorkflowError(
            f"Lium refused {doing} for lack of balance ({said}): top up at lium.io", ExitCode.FAILED
        )
    if isinstance(exc, errors.LiumPermissionError):
        return WorkflowError(
            f"Lium denied {doing} ({said}): use an API key allowed to do this", ExitCode.FAILED
        )
    if isinstance(exc, errors.LiumRentOutcomeUnknownError):
        return WorkflowError(
            f"the Lium API did not confirm {doing}: a pod may have been created and be billing; "
            "check `lium ps` before trying again",
            ExitCode.TRANSPORT,
        )
    if isinstance(exc, errors.LiumNotFoundError):
        return WorkflowError(
            f"not found on Lium while {doing} ({said}): check the configured ids", ExitCode.NOT_FOUND
        )
    if isinstance(exc, errors.LiumRateLimitError):
        return WorkflowError(
            f"the Lium API rate-limited {doing}: wait a minute and retry", ExitCode.TRANSPORT
        )
    if isinstance(exc, errors.LiumServerError):
        return WorkflowError(
            f"the Lium API failed while {doing} ({said}): retry in a few minutes", ExitCode.TRANSPORT
        )
    if isinstance(exc, requests.Timeout):
        return WorkflowError(
            f"the Lium API at {base_url} did not answer in time while {doing}: check the network and retry",
            ExitCode.TRANSPORT,
        )
    if isinstance(exc, requests.ConnectionError):
        return WorkflowError(
            f"cannot reach the Lium API at {base_url} while {doing}: check the network (and LIUM_BASE_URL) "
            "and retry",
            ExitCode.TRANSPORT,
        )
    if isinstance(exc, requests.RequestException):
        return WorkflowError(
            f"bad answer from the Lium API at {base_url} while {doing} ({type(exc).__name__}): retry later",
            ExitCode.TRANSPORT,
        )
    if isinstance(exc, errors.LiumError):
        return WorkflowError(f"the Lium API refused {doing}: {said}", ExitCode.FAILED)
    return None


@contextlib.contextmanager
def api_call(client: Any, doing: str, suffix: str = "") -> Iterator[None]:
    """Run SDK calls, turning their exceptions into one-line WorkflowErrors (``suffix`` appended)."""
    try:
        yield
    except WorkflowError:
        raise
    except Exception as exc:
        mapped = map_error(exc, doing, client.config.base_url, client.config.api_key)
        if mapped is None:
            raise
        # `from None`: the SDK's exception text may carry a fingerprint of the key
        raise WorkflowError(mapped.message + suffix, mapped.code) from None


@dataclass(frozen=True)
class LiumPod:
    """One pod as listed by the Lium API, with its SSH endpoint parsed (None until it has one)."""

    uuid: str
    huid: str
    name: str
    status: str  # upper-case: PENDING, RUNNING, ... (see the module doc of helpers.lium)
    user: str | None = None
    host: str | None = None
    port: int | None = None
    ssh_cmd: str | None = None  # the API's raw value, kept for messages when it cannot be parsed
    gpu_type: str | None = None
    gpu_count: int | None = None
    price_per_hour: float | None = None
    removal_scheduled_at: str | None = None
    volume_path: str | None = None  # where the rental volume (LIUM_VOLUME) is mounted on the pod, once it runs

    @property
    def has_ssh(self) -> bool:
        return self.status == "RUNNING" and self.host is not None and self.port is not None

    @property
    def label(self) -> str:
        shown = "".join(c if c.isprintable() else "?" for c in self.name) or self.huid
        return f"lium pod {shown} ({self.uuid})"

    def summary(self) -> str:
        gpus = f", {self.gpu_count or '?'}x{self.gpu_type}" if self.gpu_type else ""
        price = f", ${self.price_per_hour:.2f}/h" if self.price_per_hour else ""
        return f"pod {self.name!r} (HUID {self.huid}, UUID {self.uuid}, status {self.status}{gpus}{price})"


def pod_from_sdk(info: Any) -> LiumPod:
    """A LiumPod from the SDK's PodInfo; the ssh command is parsed strictly by the SDK's ``ssh_target``."""
    from lium.sdk.client import ssh_target

    user = host = None
    port = None
    if info.ssh_cmd:
        with contextlib.suppress(ValueError):  # not `ssh <user>@<host> [-p <port>]`: no endpoint
            user, host, port = ssh_target(info.ssh_cmd)
    executor = info.executor
    gpu_count = info.gpu_count or (executor.gpu_count if executor else None)
    return LiumPod(
        uuid=str(info.id),
        huid=str(info.huid),
        name=str(info.name or ""),
        status=str(info.status or "unknown").upper(),
        user=user,
        host=host,
        port=port,
        ssh_cmd=info.ssh_cmd,
        gpu_type=executor.gpu_type if executor else None,
        gpu_count=int(gpu_count) if gpu_count else None,
        price_per_hour=float(executor.price_per_hour) if executor and executor.price_per_hour else None,
        removal_scheduled_at=info.removal_scheduled_at,
        volume_path=getattr(info, "local_volume_path", None) or None,
    )


def match_target(pods: Sequence[LiumPod], target: str) -> list[LiumPod]:
    """Pods that ``target`` names: by exact UUID, else exact HUID, else exact name (never a prefix)."""
    wanted = target.strip()
    for hits in (
        [p for p in pods if p.uuid.lower() == wanted.lower()],
        [p for p in pods if p.huid == wanted],
        [p for p in pods if p.name == wanted],
    ):
        if hits:
            return hits
    return []


def select_pod(pods: Sequence[LiumPod], target: str) -> LiumPod:
    """The one pod ``target`` names; a not-found or ambiguous target is an error (never a guess)."""
    hits = match_target(pods, target)
    if len(hits) == 1:
        return hits[0]
    if hits:
        uuids = ", ".join(p.uuid for p in hits)
        raise WorkflowError(
            f"LIUM_TARGET={target!r} matches {len(hits)} Lium pods ({uuids}): "
            "set LIUM_TARGET to one of these UUIDs",
            ExitCode.USAGE,
        )
    if not pods:
        raise WorkflowError(
            f"no Lium pod matches LIUM_TARGET={target!r}: this account has no pods; run pod-up to rent one",
            ExitCode.NOT_FOUND,
        )
    shown = ", ".join(f"{p.name or '-'} ({p.huid})" for p in pods[:5])
    more = f" and {len(pods) - 5} more" if len(pods) > 5 else ""
    raise WorkflowError(
        f"no Lium pod matches LIUM_TARGET={target!r} (by UUID, HUID or name); pods on this account: "
        f"{shown}{more}; fix LIUM_TARGET or run pod-up",
        ExitCode.NOT_FOUND,
    )


def known_hosts_file(known_hosts_dir: Path, uuid: str) -> Path:
    """``known_hosts_dir/<uuid>``, the per-pod pin file (the directory is created, mode 0700)."""
    known_hosts_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        os.chmod(known_hosts_dir, 0o700)
    return known_hosts_dir / (_UNSAFE_FILENAME.sub("_", uuid) or "unknown")


# ---------------------------------------------------------------------------------------- cache
def read_cache(path: Path) -> dict[str, dict[str, Any]]:
    """The cache's entries (target -> entry); a missing or unreadable file is an empty cache."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    entries = data.get("entries") if isinstance(data, dict) and data.get("version") == CACHE_VERSION else None
    if not isinstance(entries, dict):
        return {}
    return {k: v for k, v in entries.items() if isinstance(k, str) and isinstance(v, dict)}


def write_cache(path: Path, entries: dict[str, dict[str, Any]]) -> None:
    """Replace the cache file atomically (temporary file in the same directory, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"version": CACHE_VERSION, "entries": entries}, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def cache_lookup(path: Path, target: str, base_url: str) -> LiumPod | None:
    """The cached RUNNING pod for ``target`` resolved against ``base_url``, or None."""
    entry = read_cache(path).get(target)
    if not entry or entry.get("base_url") != base_url:
        return None
    uuid, host, port, user = entry.get("uuid"), entry.get("host"), entry.get("port"), entry.get("user")
    if not (isinstance(uuid, str) and isinstance(host, str) and isinstance(port, int)):
        return None
    return LiumPod(
        uuid=uuid,
        huid=str(entry.get("huid") or ""),
        name=str(entry.get("name") or ""),
        status="RUNNING",
        user=user if isinstance(user, str) else None,
        host=host,
        port=port,
        volume_path=entry["volume_path"] if isinstance(entry.get("volume_path"), str) else None,
    )


def cache_store(path: Path, target: str, pod: LiumPod, base_url: str) -> None:
    entries = read_cache(path)
    entries[target] = {
        "uuid": pod.uuid,
        "huid": pod.huid,
        "name": pod.name,
        "host": pod.host,
        "port": pod.port,
        "user": pod.user,
        "volume_path": pod.volume_path,
        "base_url": base_url,
        "resolved_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    write_cache(path, entries)


def cache_forget(path: Path, uuid: str) -> None:
    """Drop every cache entry that points at pod ``uuid``."""
    entries = read_cache(path)
    kept = {k: v for k, v in entries.items() if v.get("uuid") != uuid}
    if kept != entries:
        write_cache(path, kept)


# ---------------------------------------------------------------------------------------- shared
def client_for(settings: LiumSettings) -> Any:
    return open_client(settings.api_key, settings.base_url, settings.ssh_key_path)


def list_pods(client: Any, doing: str) -> list[tuple[LiumPod, Any]]:
    """Every pod on the account, as (LiumPod, the SDK's PodInfo): one GET /pods."""
    with api_call(client, doing):
        return [(pod_from_sdk(info), info) for info in client.ps()]


def endpoint_for(pod: LiumPod, key_filename: str | None, known_hosts_dir: Path) -> SSHEndpoint:
    assert pod.host is not None and pod.port is not None
    return SSHEndpoint(
        host=pod.host,
        port=pod.port,
        user=pod.user,
        key_filename=key_filename,
        known_hosts=str(known_hosts_file(known_hosts_dir, pod.uuid)),
        label=pod.label,
        volume_path=pod.volume_path,
    )

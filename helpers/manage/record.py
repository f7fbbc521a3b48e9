"""What sweep-watch --manage keeps on this machine about one campaign, so that a restarted watcher
goes on where the last one stopped: the pod now running it, the commit, the recoveries made (counted
against MANAGE_MAX_RECOVERIES) and the epoch fencing them; the campaign's manifest beside it (put
back on a replacement whose disk does not have it).

``<config dir>/.workflow/manage/<campaign_id>/record.json`` and ``manifest.json``, written atomically.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from helpers.config import Config

SCHEMA_VERSION = 1


@dataclass
class ManageRecord:
    campaign_id: str
    git_sha: str | None = None
    pod_uuid: str | None = None  # the Lium pod running the campaign now (None: not a Lium target)
    pod_name: str | None = None
    gpu_type: str | None = None
    gpu_count: int | None = None
    epoch: int = 1  # 1 = the pod the campaign was started on; +1 per recovery
    recoveries: list[dict[str, Any]] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION


def directory(cfg: Config, campaign_id: str) -> Path:
    return cfg.env_file.parent / ".workflow" / "manage" / campaign_id


def _write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(cfg: Config, campaign_id: str) -> ManageRecord | None:
    path = directory(cfg, campaign_id) / "record.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        from helpers.errors import ExitCode, WorkflowError

        raise WorkflowError(f"{path}: unreadable ({exc}); move it away to start managing afresh",
                            ExitCode.STATE_UNREADABLE) from None
    known = set(ManageRecord.__dataclass_fields__)
    return ManageRecord(**{k: v for k, v in data.items() if k in known})


def save(cfg: Config, record: ManageRecord) -> None:
    _write(directory(cfg, record.campaign_id) / "record.json", asdict(record))


def save_manifest(cfg: Config, campaign_id: str, manifest: dict[str, Any]) -> None:
    _write(directory(cfg, campaign_id) / "manifest.json", manifest)


def load_manifest(cfg: Config, campaign_id: str) -> dict[str, Any] | None:
    try:
        data = json.loads((directory(cfg, campaign_id) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None

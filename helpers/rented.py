"""The record of Lium pods this tool rented (pod-up, flow), and of flow's own progress.

``.workflow/rented-pods.json`` beside the config file: one entry per pod UUID rented by pod-up or
flow (name, HUID, API base URL, UTC time). `flow --teardown delete` deletes only a pod listed here;
pod-delete drops the entry. ``.workflow/flow-state.json``: what flow started (the rented pod, the
campaign, the CSV's sha256), so that running flow again continues instead of starting over.
Both files are written atomically (temp + rename); neither holds a secret.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from helpers.resolved import Config

VERSION = 1


def _dir(cfg: Config) -> Path:
    return cfg.env_file.parent / ".workflow"


def rented_file(cfg: Config) -> Path:
    return _dir(cfg) / "rented-pods.json"


def flow_file(cfg: Config) -> Path:
    return _dir(cfg) / "flow-state.json"


def _read(path: Path, key: str) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    entries = data.get(key) if isinstance(data, dict) and data.get("version") == VERSION else None
    return {k: v for k, v in entries.items() if isinstance(v, dict)} if isinstance(entries, dict) else {}


def _write(path: Path, key: str, entries: dict[str, dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"version": VERSION, key: entries}, handle, indent=1, sort_keys=True)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def record_rented(cfg: Config, uuid: str, name: str, huid: str, base_url: str, by: str) -> None:
    entries = _read(rented_file(cfg), "pods")
    entries[uuid] = {"name": name, "huid": huid, "base_url": base_url, "rented_utc": utc_now(), "by": by}
    _write(rented_file(cfg), "pods", entries)


def rented_pods(cfg: Config) -> dict[str, dict[str, Any]]:
    return _read(rented_file(cfg), "pods")


def forget_rented(cfg: Config, uuid: str) -> None:
    entries = _read(rented_file(cfg), "pods")
    if entries.pop(uuid, None) is not None:
        _write(rented_file(cfg), "pods", entries)


def _flow_key(cfg: Config) -> str:
    return f"{cfg.env_file.resolve()}|{cfg.profile or ''}"


def flow_record(cfg: Config) -> dict[str, Any]:
    return _read(flow_file(cfg), "flows").get(_flow_key(cfg), {})


def update_flow_record(cfg: Config, **fields: Any) -> dict[str, Any]:
    entries = _read(flow_file(cfg), "flows")
    record = {**entries.get(_flow_key(cfg), {}), **fields, "updated_utc": utc_now()}
    entries[_flow_key(cfg)] = record
    _write(flow_file(cfg), "flows", entries)
    return record

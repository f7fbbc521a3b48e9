"""MLflow credentials for the pod: MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN from the config, else the
environment (config.py), else ``~/.mlflow/credentials`` (the file MLflow's own client reads:
``[mlflow]`` with ``mlflow_tracking_username = ...``). They are secrets: only the pod env file
(mode 0600) carries them; every output shows them hidden."""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def credentials_file(env: Mapping[str, str]) -> Path:
    return Path(env.get("HOME") or os.path.expanduser("~")) / ".mlflow" / "credentials"


def read_file(path: Path) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path, encoding="utf-8")
    except (configparser.Error, OSError, UnicodeDecodeError):
        return {}
    if not parser.has_section("mlflow"):
        return {}
    return {key: parser.get("mlflow", key.lower(), fallback="").strip() for key in KEYS}


def fill(settings: dict[str, Any], env: Mapping[str, str], setting_type: Any) -> None:
    """Give each credential key still empty the value of the credentials file, when tracking is on."""
    uri = settings.get("MLFLOW_TRACKING_URI")
    if uri is None or not str(uri.value or "").strip():
        return
    missing = [key for key in KEYS if key in settings and not str(settings[key].value or "")]
    if not missing:
        return
    path = credentials_file(env)
    found = read_file(path) if path.is_file() else {}
    for key in missing:
        if found.get(key):
            setting = setting_type(key, found[key], f"{path} (secret)")
            setting.value = found[key]
            settings[key] = setting

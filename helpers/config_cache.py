"""The resolved config of read-only commands, cached so they start lean.

A read-only command (fsm-status, task-status, pod-status, sweep-status, ...) reads
``.workflow/cache/config-<hash>.json`` under the checkout instead of parsing workflow.env: no
python-dotenv, no key table, no validation on its path. The cache holds one resolved config and
what it was made from; it is current while all of these are unchanged, else the config is loaded
in full and the cache rewritten:

- the request: the checkout, --env (or WORKFLOW_ENV), --profile (or WORKFLOW_PROFILE), every
  --set, the python running workflow.sh (and the current directory when the config path is relative);
- each file read (workflow.env and every profile of the chain: path, mtime in ns, size, inode) and
  the config code itself (helpers/keys.py, config.py, ...);
- every environment variable the load looked at (its value's hash; for a secret-named one only
  whether it is set), and HOME.

Secrets never reach the file: secret keys are stored without their values, and a config read
from the cache loads the full config (files and environment, as ever) the moment anything asks
for a secret. No cache is written when a --set names a secret, or when a non-secret value
contains a secret's value (a ${VAR} reference to it). WORKFLOW_CONFIG_CACHE=0 turns it off.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from helpers.prelaunch import env_mark as _env_mark
from helpers.prelaunch import file_mark as _stat
from helpers.prelaunch import sha256
from helpers.resolved import Config, ConfigRequest, Setting

SCHEMA_VERSION = 1
MAX_FILES = 32  # cache files kept (one per env file/profile/--set combination); the oldest go first
# commands that change nothing and need no secret on their usual path
READ_ONLY = frozenset({"pod-status", "fsm-status", "task-status", "task-wait", "task-list", "task-logs",
                       "sweep-status", "sweep-logs", "sweep-list", "sweep-watch", "disconnect"})
_CODE = ("keys.py", "slurm_keys.py", "config.py", "config_layers.py", "resolved.py", "config_cache.py",
         "stage_keys.py", "pod/stages.py", "pod/gates.py")
_HELPERS = os.path.dirname(os.path.abspath(__file__))


class RecordingEnviron(Mapping[str, str]):
    """os.environ, noting every name looked up (what the resolved config may depend on)."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        self.seen: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.seen.add(name)
        return self._environ[name]

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str):
            self.seen.add(name)
        return name in self._environ

    def __iter__(self) -> Iterator[str]:  # every name: the result may depend on any
        self.seen.update(self._environ)
        return iter(self._environ)

    def __len__(self) -> int:
        return len(self._environ)


def load(request: ConfigRequest, cacheable: bool) -> Config:
    """The resolved config: from the cache when ``cacheable`` and current, else loaded (and cached)."""
    if not cacheable or os.environ.get("WORKFLOW_CONFIG_CACHE", "1") == "0":
        return _load_full(request)
    path = cache_path(request)
    cfg = _read(path, request)
    if cfg is not None:
        return cfg
    environ = RecordingEnviron(os.environ)
    files: list[Path] = []
    from helpers.config import load_config

    cfg = load_config(request, environ=environ, files_read=files)
    _write(path, request, cfg, environ.seen, files)
    return cfg


def _load_full(request: ConfigRequest) -> Config:
    from helpers.config import load_config

    return load_config(request)


def _identity(request: ConfigRequest) -> list[Any]:
    given = str(request.env_file) if request.env_file else os.environ.get("WORKFLOW_ENV", "")
    relative = not given or not os.path.isabs(given)
    return [str(request.project_root), given, request.profile or "", list(request.overrides), sys.executable,
            os.getcwd() if relative and given else ""]


def cache_path(request: ConfigRequest) -> Path:
    digest = sha256(json.dumps(_identity(request)).encode()).hexdigest()[:24]
    return Path(request.project_root) / ".workflow" / "cache" / f"config-{digest}.json"


def _read(path: Path, request: ConfigRequest) -> Config | None:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        if data.get("schema_version") != SCHEMA_VERSION or data["identity"] != _identity(request):
            return None
        for name, mark in data["files"].items():
            if _stat(name, content=len(mark) > 3) != mark:
                return None
        for name, mark in data["env"].items():
            if _env_mark(name, mark == "set") != mark:
                return None
        c = data["config"]
        settings = {key: Setting(key, raw, source, literal, value)
                    for key, (raw, source, literal, value) in c["settings"].items()}
        return Config(project_root=Path(c["project_root"]), env_file=Path(c["env_file"]), profile=c["profile"],
                      settings=settings, target=c["target"], secret_keys=frozenset(c["secret_keys"]),
                      full=lambda: _load_full(request))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # no cache, an old or a damaged one: load in full


def _write(path: Path, request: ConfigRequest, cfg: Config, env_seen: set[str], files_read: list[Path]) -> None:
    from helpers.config import is_secret
    from helpers.keys import is_secret_name

    secret_keys = sorted(key for key in cfg.settings if is_secret(key))
    if any(is_secret(item.partition("=")[0].strip()) for item in request.overrides):
        return  # the file name would hash a secret
    secrets = {cfg.settings[key].raw for key in secret_keys} | {
        os.environ.get(name, "") for name in env_seen if is_secret_name(name)}
    secrets = {value for value in secrets if len(value) >= 4}
    settings: dict[str, list[Any]] = {}
    for key, setting in cfg.settings.items():
        if key in secret_keys:
            settings[key] = ["", setting.source, setting.literal, None]
            continue
        shown = f"{setting.raw}\0{setting.value}"
        if any(secret in shown for secret in secrets):
            return  # a value holds a secret (a ${VAR} reference to one): not cached
        settings[key] = [setting.raw, setting.source, setting.literal, setting.value]
    files = {str(p): _stat(str(p), content=True) for p in files_read}
    files.update({os.path.join(_HELPERS, name): _stat(os.path.join(_HELPERS, name)) for name in _CODE})
    env = {name: _env_mark(name, is_secret_name(name)) for name in sorted(env_seen | {"HOME"})}
    data = {"schema_version": SCHEMA_VERSION, "identity": _identity(request), "files": files, "env": env,
            "config": {"project_root": str(cfg.project_root), "env_file": str(cfg.env_file),
                       "profile": cfg.profile, "target": cfg.target, "secret_keys": secret_keys,
                       "settings": settings}}
    try:
        text = json.dumps(data, indent=0)
        if json.loads(text)["config"]["settings"] != settings:
            return  # a value JSON does not give back as it was
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)  # atomic; writers racing write the same content
        _prune(path.parent)
    except (OSError, TypeError, ValueError):
        return  # a cache only: a read-only checkout just loads in full each time


def _prune(directory: Path) -> None:
    entries = sorted(directory.glob("config-*.json"), key=lambda p: p.stat().st_mtime_ns)
    for old in entries[:-MAX_FILES]:
        old.unlink(missing_ok=True)

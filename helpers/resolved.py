"""A resolved config: every key's final value and where it came from (plain classes, stdlib only).

helpers.config builds one from workflow.env + the profile chain + --set (python-dotenv, the key
table); helpers.config_cache rebuilds one from its cache file without either, for the read-only
commands. A config from the cache holds no secret values: asking for one (or for every setting)
loads the full config once, from the files and the environment, and answers from that.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from helpers.config_layers import TargetKind
else:
    TargetKind = Literal["local", "ssh", "lium"]


class Setting:
    """One key: the value as written, where it came from, and (after validation) its typed value."""

    __slots__ = ("key", "raw", "source", "literal", "value")

    def __init__(self, key: str, raw: str, source: str, literal: bool = False, value: object = None) -> None:
        self.key = key
        self.raw = raw  # as written (after ${VAR} resolution), "" when unset
        self.source = source  # "workflow.env:12", "profile gpu (profiles/gpu.env:3)", "--set", "default", ...
        self.literal = literal  # single-quoted: no ${VAR} resolution
        self.value = value  # typed value, set by validation (helpers.config)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Setting) and all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    def __repr__(self) -> str:
        return (f"Setting(key={self.key!r}, raw={self.raw!r}, source={self.source!r}, literal={self.literal!r}, "
                f"value={self.value!r})")


class ConfigRequest:
    """What the command line asked for."""

    __slots__ = ("project_root", "env_file", "profile", "overrides")

    def __init__(self, project_root: Path, env_file: Path | None = None, profile: str | None = None,
                 overrides: tuple[str, ...] = ()) -> None:
        self.project_root = project_root
        self.env_file = env_file
        self.profile = profile
        self.overrides = tuple(overrides)  # --set KEY=VALUE, in order

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ConfigRequest) and all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, n) for n in self.__slots__))

    def __repr__(self) -> str:
        return (f"ConfigRequest(project_root={self.project_root!r}, env_file={self.env_file!r}, "
                f"profile={self.profile!r}, overrides={self.overrides!r})")


class Config:
    def __init__(self, project_root: Path, env_file: Path, profile: str | None,
                 settings: dict[str, Setting] | None = None, target: TargetKind = "local",
                 secret_keys: frozenset[str] | None = None,
                 full: Callable[[], Config] | None = None) -> None:
        self.project_root = project_root
        self.env_file = env_file
        self.profile = profile
        self._settings: dict[str, Setting] = {} if settings is None else settings
        self.target: TargetKind = target
        self.secret_keys = secret_keys  # from the cache: which keys are secret (no key table needed)
        self._full = full  # from the cache: loads the full config (secret values included)

    # -- the settings; a cached config loads the full one for a secret or for all of them
    @property
    def settings(self) -> dict[str, Setting]:
        if self._full is not None:
            self._load_full()
        return self._settings

    def _load_full(self) -> None:
        assert self._full is not None
        full, self._full = self._full, None
        self._settings = full()._settings

    def _setting(self, key: str) -> Setting:
        if self._full is not None and self.is_secret(key):
            self._load_full()
        return self._settings[key]

    def is_secret(self, key: str) -> bool:
        if self.secret_keys is not None:
            return key in self.secret_keys
        from helpers.config import is_secret

        return is_secret(key)

    # -- typed access
    def __getitem__(self, key: str) -> object:
        return self._setting(key).value

    def text(self, key: str) -> str:
        value = self._setting(key).value
        return "" if value is None else str(value)

    def number(self, key: str) -> int | None:
        value = self._setting(key).value
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def flag(self, key: str) -> bool:
        return bool(self._setting(key).value)

    def words(self, key: str) -> list[str]:
        value = self._setting(key).value
        return list(value) if isinstance(value, (list, tuple)) else []

    def local_path(self, key: str) -> Path | None:
        """A path on this machine (relative = to the project root)."""
        text = self.text(key)
        if not text:
            return None
        path = Path(os.path.expanduser(text))
        return path if path.is_absolute() else self.project_root / path

    def source(self, key: str) -> str:
        return self._setting(key).source

    def require(self, command: str, *keys: str) -> None:
        for key in keys:
            if not self.text(key):
                from helpers.errors import ExitCode, WorkflowError
                from helpers.keys import KEYS_BY_NAME

                raise WorkflowError(
                    f"{command} needs {key} ({KEYS_BY_NAME[key].doc}); set it in {self.env_file.name} "
                    f"or pass --set {key}=...", ExitCode.USAGE)

    # -- what goes to the pod
    def pod_values(self, include_secrets: bool = False) -> dict[str, str]:
        """Resolved values as strings, for the pod agent and the pod env file."""
        settings = self.settings if include_secrets else self._settings
        out: dict[str, str] = {}
        for key, setting in settings.items():
            if not include_secrets and self.is_secret(key):
                continue
            out[key] = to_text(setting.value)
        return out


def to_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (list, tuple)):
        import shlex

        return shlex.join(str(v) for v in value)
    return str(value)

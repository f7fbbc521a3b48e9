"""Read the config layers: workflow.env, the profile chain, --set, then ${VAR} references.

Files are parsed with python-dotenv's parser, never `source`d. Each value is kept as written
(a `Setting` with the file and line it came from); helpers.config types and validates them.
"""

from __future__ import annotations

import difflib
import io
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from dotenv.parser import parse_stream
from dotenv.variables import Variable, parse_variables

from helpers.errors import ExitCode, WorkflowError
from helpers.keys import KEYS_BY_NAME
from helpers.resolved import Setting

TargetKind = Literal["local", "ssh", "lium"]

_KEY_NAME_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")


def read_layers(env_file: Path, profile: str | None, overrides: tuple[str, ...],
                files_read: list[Path] | None = None) -> dict[str, Setting]:
    """workflow.env, then the profile chain (base first), then --set; later layers win. ``files_read``
    collects every file read (helpers.config_cache keys its cache on them)."""
    layered: dict[str, Setting] = {}
    for setting in _read_env_file(env_file, env_file.name, files_read):
        layered[setting.key] = setting
    from_set = [_parse_set(item) for item in overrides]
    if profile:  # WORKFLOW_PROFILES_DIR may itself come from --set: it decides where profiles are
        where = {**layered, **{s.key: s for s in from_set if s.key == "WORKFLOW_PROFILES_DIR"}}
        for setting in _profile_chain(profile, _profiles_dir(where, env_file), env_file, files_read):
            layered[setting.key] = setting
    for setting in from_set:
        layered[setting.key] = setting
    return layered


def _parse_set(item: str) -> Setting:
    if "=" not in item:
        shown = repr(item) if _KEY_NAME_RE.match(item) else "(not shown: it may hold a secret)"
        raise WorkflowError(f"--set {shown}: expected KEY=VALUE, e.g. --set RUN_TIMEOUT_SECS=3600",
                            ExitCode.USAGE)
    key, _, value = item.partition("=")
    key = key.strip()
    if not _KEY_NAME_RE.match(key):
        raise WorkflowError(f"--set: {key[:60]!r} is not a KEY name (A-Z, 0-9, _)", ExitCode.USAGE)
    return Setting(key=key, raw=value, source="--set")


def _read_env_file(path: Path, label: str, files_read: list[Path] | None = None) -> list[Setting]:
    if files_read is not None:
        files_read.append(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkflowError(f"cannot read config file {path}: {exc}", ExitCode.USAGE) from exc
    out: list[Setting] = []
    for binding in parse_stream(io.StringIO(text)):
        line = binding.original.line
        if binding.error:
            shown = binding.original.string.strip()[:60]
            raise WorkflowError(f"{label}:{line}: cannot parse {shown!r}; write KEY=VALUE (quote values "
                                "with spaces)", ExitCode.USAGE)
        if binding.key is None:
            continue
        if not _KEY_NAME_RE.match(binding.key) and binding.key != "_BASE":
            raise WorkflowError(f"{label}:{line}: {binding.key!r} is not a KEY name (A-Z, 0-9, _)",
                                ExitCode.USAGE)
        after_eq = binding.original.string.split("=", 1)[1].lstrip() if "=" in binding.original.string else ""
        out.append(Setting(key=binding.key, raw=binding.value or "", source=f"{label}:{line}",
                           literal=after_eq.startswith("'")))
    return out


def _profiles_dir(layered: Mapping[str, Setting], env_file: Path) -> Path:
    text = layered["WORKFLOW_PROFILES_DIR"].raw if "WORKFLOW_PROFILES_DIR" in layered else ""
    path = Path(os.path.expanduser(text or KEYS_BY_NAME["WORKFLOW_PROFILES_DIR"].default))
    return path if path.is_absolute() else env_file.parent / path


def _profile_chain(name: str, profiles_dir: Path, env_file: Path,
                   files_read: list[Path] | None = None) -> list[Setting]:
    """Settings of profile ``name`` and its _BASE ancestors, base first."""
    chain: list[str] = []
    layers: list[list[Setting]] = []
    current: str | None = name
    while current:
        if current in chain:
            loop = " -> ".join([*chain, current])
            raise WorkflowError(f"profile loop: {loop}; remove one _BASE= line to break it", ExitCode.USAGE)
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", current):
            raise WorkflowError(f"invalid profile name {current!r}: use letters, digits, . _ -", ExitCode.USAGE)
        path = profiles_dir / f"{current}.env"
        if not path.is_file():
            known = sorted(p.stem for p in profiles_dir.glob("*.env")) if profiles_dir.is_dir() else []
            hint = f"known profiles: {', '.join(known)}" if known else f"no profiles in {profiles_dir}"
            raise WorkflowError(f"unknown profile {current!r} (no {path}); {hint}", ExitCode.USAGE)
        chain.append(current)
        try:
            rel = path.relative_to(env_file.parent)
        except ValueError:
            rel = path
        settings = _read_env_file(path, str(rel), files_read)
        base = [s for s in settings if s.key == "_BASE"]
        layers.append([
            Setting(s.key, s.raw, f"profile {current} ({s.source})", s.literal)
            for s in settings if s.key != "_BASE"
        ])
        current = base[-1].raw.strip() if base else None
    return [s for layer in reversed(layers) for s in layer]


def unknown_key_message(key: str, source: str) -> str:
    close = difflib.get_close_matches(key, list(KEYS_BY_NAME), n=1, cutoff=0.8)  # a typo, not any key
    hint = f"did you mean {close[0]}?" if close else "workflow.env lists every key"
    return (f"{source}: unknown key {key}; {hint} (variables for runs may use the prefixes "
            "WANDB_, HF_, NCCL_, TORCH_, OMP_, CUDA_, MLFLOW_, RUNENV_)")


def resolve_references(layered: dict[str, Setting], environ: Mapping[str, str], target: TargetKind) -> None:
    resolved: dict[str, str] = {}
    visiting: list[str] = []

    def lookup(name: str) -> str | None:
        if name in resolved:
            return resolved[name]
        if name in layered and layered[name].raw:
            return resolve(name)
        spec = KEYS_BY_NAME.get(name)
        if spec is not None:  # a key left empty: its default, as the final config will have it
            if target == "local" and spec.local_default is not None:
                return spec.local_default
            return spec.default or environ.get(name)
        return environ.get(name)

    def resolve(name: str) -> str:
        setting = layered[name]
        if name in visiting:
            cycle = " -> ".join([*visiting[visiting.index(name):], name])
            raise WorkflowError(f"{setting.source}: ${{...}} references form a loop: {cycle}", ExitCode.USAGE)
        if setting.literal or "$" not in setting.raw:
            resolved[name] = setting.raw
            return setting.raw
        visiting.append(name)
        parts: list[str] = []
        for atom in parse_variables(setting.raw):
            if isinstance(atom, Variable):
                value = lookup(atom.name)
                parts.append(value if value else (atom.default or ""))
            else:
                parts.append(atom.resolve({}))
        visiting.pop()
        setting.raw = "".join(parts)
        resolved[name] = setting.raw
        return setting.raw

    for key in list(layered):
        resolve(key)


def target_kind(layered: Mapping[str, Setting]) -> TargetKind:
    host = layered["OPS_DEFAULT_HOST"].raw.strip() if "OPS_DEFAULT_HOST" in layered else "local"
    lium = layered["LIUM_TARGET"].raw.strip() if "LIUM_TARGET" in layered else ""
    if lium and host not in ("", "local"):
        raise WorkflowError(
            f"both LIUM_TARGET ({layered['LIUM_TARGET'].source}) and OPS_DEFAULT_HOST "
            f"({layered['OPS_DEFAULT_HOST'].source}) name a pod; set only one (OPS_DEFAULT_HOST=local "
            "to use LIUM_TARGET)", ExitCode.USAGE)
    if lium:
        return "lium"
    return "local" if host in ("", "local") else "ssh"

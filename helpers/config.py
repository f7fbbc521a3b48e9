"""Load workflow.env (+ profile chain + --set), type and validate every key once.

workflow.env is parsed with python-dotenv's parser, never `source`d, so a value cannot run
code. `${VAR}` / `${VAR:-default}` references resolve against the other keys, then the
environment (single-quoted values stay literal). Layers, lowest first: key defaults,
workflow.env, the profile chain (base first), --set. Secrets left empty are taken from the
environment. Every error is one line naming the key, the file and line it came from, and what
is allowed; exit code 2.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dotenv.parser import parse_stream
from dotenv.variables import Variable, parse_variables

from helpers.errors import ExitCode, WorkflowError
from helpers.keys import KEYS, KEYS_BY_NAME, Key, is_passthrough, is_secret_name

TargetKind = Literal["local", "ssh", "lium"]

_BOOL_TRUE = {"1", "true", "yes", "on"}
_BOOL_FALSE = {"0", "false", "no", "off"}
_HOST_RE = re.compile(r"^(?:[A-Za-z0-9._-]+@)?(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:]+\])(?::[0-9]{1,5})?$")
_TMUX_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SHA_RE = re.compile(r"^[0-9a-fA-F]{7,40}$")
_PR_RE = re.compile(r"^(?:[0-9]+|pull/[0-9]+/head)$")
_KEY_NAME_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")


@dataclass
class Setting:
    key: str
    raw: str  # as written (after ${VAR} resolution), "" when unset
    source: str  # "workflow.env:12", "profile gpu (profiles/gpu.env:3)", "--set", "default", "environment"
    literal: bool = False  # single-quoted: no ${VAR} resolution
    value: object = None  # typed value, set by validation


@dataclass
class Config:
    project_root: Path
    env_file: Path
    profile: str | None
    settings: dict[str, Setting] = field(default_factory=dict)
    target: TargetKind = "local"

    # -- typed access
    def __getitem__(self, key: str) -> object:
        return self.settings[key].value

    def text(self, key: str) -> str:
        value = self.settings[key].value
        return "" if value is None else str(value)

    def number(self, key: str) -> int | None:
        value = self.settings[key].value
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def flag(self, key: str) -> bool:
        return bool(self.settings[key].value)

    def words(self, key: str) -> list[str]:
        value = self.settings[key].value
        return list(value) if isinstance(value, (list, tuple)) else []

    def local_path(self, key: str) -> Path | None:
        """A path on this machine (relative = to the project root)."""
        text = self.text(key)
        if not text:
            return None
        path = Path(os.path.expanduser(text))
        return path if path.is_absolute() else self.project_root / path

    def source(self, key: str) -> str:
        return self.settings[key].source

    def require(self, command: str, *keys: str) -> None:
        for key in keys:
            if not self.text(key):
                raise WorkflowError(
                    f"{command} needs {key} ({KEYS_BY_NAME[key].doc}); set it in {self.env_file.name} "
                    f"or pass --set {key}=...", ExitCode.USAGE)

    # -- what goes to the pod
    def pod_values(self, include_secrets: bool = False) -> dict[str, str]:
        """Resolved values as strings, for the pod agent and the pod env file."""
        out: dict[str, str] = {}
        for key, setting in self.settings.items():
            if not include_secrets and is_secret(key):
                continue
            out[key] = _to_text(setting.value)
        return out


def is_secret(key: str) -> bool:
    spec = KEYS_BY_NAME.get(key)
    return spec.is_secret if spec else is_secret_name(key)


def redact(key: str, value: str) -> str:
    if is_secret(key):
        return "<set, hidden>" if value else ""
    return value


def _to_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (list, tuple)):
        import shlex

        return shlex.join(str(v) for v in value)
    return str(value)


# ----------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class ConfigRequest:
    """What the command line asked for."""

    project_root: Path
    env_file: Path | None = None
    profile: str | None = None
    overrides: tuple[str, ...] = ()  # --set KEY=VALUE, in order


def load_config(request: ConfigRequest, environ: Mapping[str, str] | None = None) -> Config:
    env = dict(os.environ if environ is None else environ)
    root = request.project_root
    env_file = request.env_file or Path(env.get("WORKFLOW_ENV") or root / "workflow.env")
    if not env_file.is_absolute():
        env_file = Path.cwd() / env_file
    if not env_file.is_file():
        raise WorkflowError(f"config file {env_file} not found; pass --env FILE or create workflow.env "
                            "(a fresh clone has one at the repo root)", ExitCode.USAGE)
    profile = request.profile or env.get("WORKFLOW_PROFILE") or None
    cfg = Config(project_root=root, env_file=env_file, profile=profile)

    layered: dict[str, Setting] = {}
    for setting in _read_env_file(env_file, env_file.name):
        layered[setting.key] = setting
    if profile:
        for setting in _profile_chain(profile, _profiles_dir(layered, env_file), env_file):
            layered[setting.key] = setting
    for item in request.overrides:
        if "=" not in item:
            raise WorkflowError(f"--set {item!r}: expected KEY=VALUE, e.g. --set RUN_TIMEOUT_SECS=3600",
                                ExitCode.USAGE)
        key, _, value = item.partition("=")
        key = key.strip()
        if not _KEY_NAME_RE.match(key):
            raise WorkflowError(f"--set: {key[:60]!r} is not a KEY name (A-Z, 0-9, _)", ExitCode.USAGE)
        layered[key] = Setting(key=key, raw=value, source="--set")

    for key, setting in layered.items():
        if key not in KEYS_BY_NAME and not is_passthrough(key):
            raise WorkflowError(_unknown_key_message(key, setting.source), ExitCode.USAGE)

    cfg.target = _target_kind(layered)
    _resolve_references(layered, env, cfg.target)
    for spec in KEYS:
        found = layered.get(spec.name)
        if found is not None and found.raw != "":
            setting = found
        else:
            from_env = env.get(spec.name, "") if spec.is_secret else ""
            if from_env:
                setting = Setting(spec.name, from_env, "environment")
            else:
                local = cfg.target == "local" and spec.local_default is not None
                default = spec.local_default if local else spec.default
                setting = Setting(spec.name, default or "", "default (local target)" if local else "default")
        setting.value = _typed(spec, setting)
        cfg.settings[spec.name] = setting
    for key, setting in layered.items():
        if is_passthrough(key):
            setting.value = setting.raw
            cfg.settings[key] = setting
    _derive(cfg)
    _cross_check(cfg)
    return cfg


def _read_env_file(path: Path, label: str) -> list[Setting]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkflowError(f"cannot read config file {path}: {exc}", ExitCode.USAGE) from exc
    import io

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


def _profile_chain(name: str, profiles_dir: Path, env_file: Path) -> list[Setting]:
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
        settings = _read_env_file(path, str(rel))
        base = [s for s in settings if s.key == "_BASE"]
        layers.append([
            Setting(s.key, s.raw, f"profile {current} ({s.source})", s.literal)
            for s in settings if s.key != "_BASE"
        ])
        current = base[-1].raw.strip() if base else None
    return [s for layer in reversed(layers) for s in layer]


def _unknown_key_message(key: str, source: str) -> str:
    close = difflib.get_close_matches(key, list(KEYS_BY_NAME), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}?" if close else "see workflow.env for the keys"
    return (f"{source}: unknown key {key}; {hint} (variables for runs may use the prefixes "
            "WANDB_, HF_, NCCL_, TORCH_, OMP_, CUDA_, MLFLOW_, RUNENV_)")


def _resolve_references(layered: dict[str, Setting], environ: Mapping[str, str], target: TargetKind) -> None:
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


def _target_kind(layered: Mapping[str, Setting]) -> TargetKind:
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


def _typed(spec: Key, setting: Setting) -> object:
    raw = setting.raw.strip() if spec.type != "str" else setting.raw
    where = setting.source if setting.source != "default" else "the default"

    def bad(what: str) -> WorkflowError:
        return WorkflowError(f"{where}: {spec.name}={setting.raw!r} {what}", ExitCode.USAGE)

    if spec.type == "bool":
        low = raw.lower()
        if low in _BOOL_TRUE:
            return True
        if low in _BOOL_FALSE:
            return False
        raise bad("is not a boolean; use 1 or 0 (true/false, yes/no also work)")
    if spec.type == "int":
        if raw == "":
            return None
        if not re.match(r"^-?[0-9]+$", raw):
            limits = [f">= {spec.minimum}" if spec.minimum is not None else "",
                      f"<= {spec.maximum}" if spec.maximum is not None else ""]
            shown = " and ".join(limit for limit in limits if limit)
            raise bad("is not a whole number" + (f"; use one {shown}" if shown else ""))
        number = int(raw)
        if spec.minimum is not None and number < spec.minimum:
            raise bad(f"is below the minimum {spec.minimum}")
        if spec.maximum is not None and number > spec.maximum:
            raise bad(f"is above the maximum {spec.maximum}")
        return number
    if spec.type == "float":
        if raw == "":
            return None
        try:
            number_f = float(raw)
        except ValueError:
            raise bad("is not a number") from None
        if number_f <= 0:
            raise bad("must be positive")
        return number_f
    if spec.type == "enum":
        if raw not in spec.choices:
            raise bad(f"is not allowed; use one of: {', '.join(spec.choices)}")
        return raw
    if spec.type == "words":
        import shlex

        try:
            return shlex.split(raw)
        except ValueError as exc:
            raise bad(f"cannot be split into words ({exc}); balance the quotes") from None
    if spec.type in ("path", "podpath") and "\n" in raw:
        raise bad("must be a single-line path")
    return raw


def _derive(cfg: Config) -> None:
    """Fill the automatic values that depend on other keys and on the target."""

    def put(key: str, value: object, why: str) -> None:
        setting = cfg.settings[key]
        setting.value = value
        setting.source = f"{setting.source}, {why}" if setting.source else why

    local = cfg.target == "local"
    if local:  # pod paths on the local target: absolute, relative to the checkout
        for spec in KEYS:
            if spec.type == "podpath" and cfg.text(spec.name):
                path = Path(os.path.expanduser(cfg.text(spec.name)))
                if not path.is_absolute():
                    cfg.settings[spec.name].value = str(cfg.project_root / path)
    outputs = cfg.text("OPS_REMOTE_OUTPUTS_DIR").rstrip("/")
    repo = cfg.text("OPS_REMOTE_REPO").rstrip("/")
    if not cfg.text("WF_STATE_FILE"):
        put("WF_STATE_FILE", f"{outputs}/_control/workflow_state.json", "from OPS_REMOTE_OUTPUTS_DIR")
    if not cfg.text("VENV_DIR"):
        put("VENV_DIR", f"{repo}/.venv", "from OPS_REMOTE_REPO")
    if not cfg.text("RUN_OUT_LOCAL_ROOT"):
        put("RUN_OUT_LOCAL_ROOT", f"{repo}/{cfg.text('TRAIN_WORKDIR').strip('/')}/out", "from OPS_REMOTE_REPO")
    if not cfg.text("REMOTE_PYTHON_BIN"):
        put("REMOTE_PYTHON_BIN", sys.executable if local else "python3",
            "the python running workflow.sh" if local else "the pod's python3")
    if local and not cfg.text("REPO_URL"):
        put("REPO_URL", str(cfg.project_root), "this checkout")


def _cross_check(cfg: Config) -> None:
    def bad(key: str, what: str) -> WorkflowError:
        return WorkflowError(f"{cfg.source(key)}: {key}={cfg.text(key)!r} {what}", ExitCode.USAGE)

    host = cfg.text("OPS_DEFAULT_HOST").strip()
    if cfg.target == "ssh" and not _HOST_RE.match(host):
        raise bad("OPS_DEFAULT_HOST", "is not a host; use local, an ~/.ssh/config alias or [user@]host[:port]")
    if cfg.target == "ssh" and ":" in host and not host.endswith("]"):
        port = int(host.rsplit(":", 1)[1])
        if not 1 <= port <= 65535:
            raise bad("OPS_DEFAULT_HOST", "has a port outside 1-65535")
    for key in ("WF_TMUX_SESSION", "SWEEP_TMUX_SESSION"):
        if not _TMUX_NAME_RE.match(cfg.text(key)):
            raise bad(key, "is not a tmux session name; use 1-64 of A-Z a-z 0-9 _ -")
    if cfg.text("TMUX_SOCKET") and not _TMUX_NAME_RE.match(cfg.text("TMUX_SOCKET")):
        raise bad("TMUX_SOCKET", "is not a socket name; use 1-64 of A-Z a-z 0-9 _ -")
    if cfg.text("WF_TMUX_SESSION") == cfg.text("SWEEP_TMUX_SESSION"):
        raise bad("SWEEP_TMUX_SESSION", "must differ from WF_TMUX_SESSION")
    if cfg.text("CHECKOUT_BRANCH") and cfg.text("CHECKOUT_PR"):
        raise bad("CHECKOUT_PR", f"and CHECKOUT_BRANCH ({cfg.source('CHECKOUT_BRANCH')}) are both set; set one")
    if cfg.text("CHECKOUT_PR") and not _PR_RE.match(cfg.text("CHECKOUT_PR")):
        raise bad("CHECKOUT_PR", "is not a pull request; use a number like 42 or pull/42/head")
    if cfg.text("CHECKOUT_BRANCH").startswith("-"):
        raise bad("CHECKOUT_BRANCH", "cannot start with '-'")
    if cfg.text("EXPECT_GIT_SHA") and not _SHA_RE.match(cfg.text("EXPECT_GIT_SHA")):
        raise bad("EXPECT_GIT_SHA", "is not a commit sha; use 7-40 hex digits")
    if cfg.text("SWEEP_MATCH"):
        try:
            re.compile(cfg.text("SWEEP_MATCH"))
        except re.error as exc:
            raise bad("SWEEP_MATCH", f"is not a regular expression ({exc})") from None
    for key in ("TRAIN_WORKDIR", "TRAIN_ENTRYPOINT"):
        value = cfg.text(key)
        if not value or value.startswith("/") or ".." in Path(value).parts:
            raise bad(key, "must be a relative path inside the repo")
    if cfg.text("OPS_REMOTE_OUTPUTS_DIR").rstrip("/") in ("", "/", "~"):
        raise bad("OPS_REMOTE_OUTPUTS_DIR", "must be a directory of its own, not / or ~")

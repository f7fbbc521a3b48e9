"""Load workflow.env (+ profile chain + --set), type and validate every key once.

workflow.env is parsed with python-dotenv's parser, never `source`d, so a value cannot run
code. `${VAR}` / `${VAR:-default}` references resolve against the other keys, then the
environment (single-quoted values stay literal). Layers, lowest first: key defaults,
workflow.env, the profile chain (base first), --set. Secrets left empty are taken from the
environment. Every error is one line naming the key, the file and line it came from, and what
is allowed; exit code 2.
"""

from __future__ import annotations

import os
import posixpath
import re
import sys
from collections.abc import Mapping
from pathlib import Path

from helpers.config_layers import (
    Setting,
    TargetKind,
    read_layers,
    resolve_references,
    target_kind,
    unknown_key_message,
)
from helpers.errors import ExitCode, WorkflowError
from helpers.keys import KEYS, KEYS_BY_NAME, Key, is_passthrough, is_secret_name
from helpers.resolved import Config, ConfigRequest

__all__ = ["Config", "ConfigRequest", "Setting", "TargetKind", "is_secret", "load_config", "redact"]

_BOOL_TRUE = {"1", "true", "yes", "on"}
_BOOL_FALSE = {"0", "false", "no", "off"}
_HOST_RE = re.compile(r"^(?:[A-Za-z0-9._-]+@)?(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:]+\])(?::[0-9]{1,5})?$")
_TMUX_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SHA_RE = re.compile(r"^[0-9a-fA-F]{7,40}$")
_PR_RE = re.compile(r"^(?:[0-9]+|pull/[0-9]+/head)$")


def is_secret(key: str) -> bool:
    spec = KEYS_BY_NAME.get(key)
    return spec.is_secret if spec else is_secret_name(key)


def redact(key: str, value: str) -> str:
    if is_secret(key):
        return "<set, hidden>" if value else ""
    return value


# ----------------------------------------------------------------------------- loading


def load_config(request: ConfigRequest, environ: Mapping[str, str] | None = None,
                files_read: list[Path] | None = None) -> Config:
    env = os.environ if environ is None else environ  # only read (helpers.config_cache records what is)
    root = request.project_root
    env_file = request.env_file or Path(env.get("WORKFLOW_ENV") or root / "workflow.env")
    if not env_file.is_absolute():
        env_file = Path.cwd() / env_file
    if not env_file.is_file():
        raise WorkflowError(f"config file {env_file} not found; pass --env FILE or create workflow.env "
                            "(a fresh clone has one at the repo root)", ExitCode.USAGE)
    profile = request.profile or env.get("WORKFLOW_PROFILE") or None
    cfg = Config(project_root=root, env_file=env_file, profile=profile)
    layered = read_layers(env_file, profile, request.overrides, files_read)
    for key, setting in layered.items():
        if key not in KEYS_BY_NAME and not is_passthrough(key):
            raise WorkflowError(unknown_key_message(key, setting.source), ExitCode.USAGE)

    cfg.target = target_kind(layered)
    resolve_references(layered, env, cfg.target)
    for spec in KEYS:
        setting = _with_fallback(layered.get(spec.name), spec.name, env, spec.is_secret,
                                 _default_setting(spec, cfg.target))
        setting.value = _typed(spec, setting)
        cfg.settings[spec.name] = setting
    for key, found in layered.items():
        if key in KEYS_BY_NAME or not is_passthrough(key):
            continue  # a table key (WANDB_API_KEY, HF_TOKEN) was settled above, environment included
        setting = _with_fallback(found, key, env, is_secret_name(key), Setting(key, "", "default"))
        setting.value = setting.raw
        cfg.settings[key] = setting
    from helpers.tracking.credentials import fill as fill_mlflow_credentials

    fill_mlflow_credentials(cfg.settings, env, Setting)  # ~/.mlflow/credentials, when tracking is on
    _derive(cfg)
    _cross_check(cfg)
    return cfg


def _default_setting(spec: Key, target: TargetKind) -> Setting:
    local = target == "local" and spec.local_default is not None
    default = spec.local_default if local else spec.default
    return Setting(spec.name, default or "", "default (local target)" if local else "default")


def _with_fallback(found: Setting | None, key: str, env: Mapping[str, str], secret: bool,
                   default: Setting) -> Setting:
    """The layered value if it is not empty, else (for a secret) the exported one, else the default.

    An empty line in a file (the shipped `WANDB_API_KEY=`) never hides a secret exported in the
    shell; the source says which file left it empty, the same way for every key.
    """
    if found is not None and found.raw != "":
        return found
    left_empty = f", {found.source} left empty" if found is not None else ""
    from_env = env.get(key, "") if secret else ""
    if from_env:
        return Setting(key, from_env, f"environment{left_empty}")
    default.source += left_empty
    return default


def _typed(spec: Key, setting: Setting) -> object:
    raw = setting.raw.strip() if spec.type != "str" else setting.raw
    where = "the default" if setting.source.startswith("default") else setting.source

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
        if raw == "" or raw.lower() in spec.choices:  # e.g. LIUM_TTL_HOURS=off
            return None
        try:
            number_f = float(raw)
        except ValueError:
            raise bad("is not a number; use a positive number, e.g. 2.5") from None
        if not number_f > 0 or number_f == float("inf"):  # nan and inf are no amounts either
            raise bad("must be positive (a number above 0)")
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


def _normalise_pod_path(text: str) -> str:
    """`..` and `.` resolved (`/tmp/..` is `/`); a leading `~/` is kept for the pod's shell, and a
    `..` that climbs out of it is kept too (the outputs check refuses it)."""
    if text == "~" or text.startswith("~/"):
        rest = posixpath.normpath(text[2:] or ".")
        return "~" if rest == "." else f"~/{rest}"
    return posixpath.normpath(text)


def _derive(cfg: Config) -> None:
    """Fill the automatic values that depend on other keys and on the target."""

    def put(key: str, value: object, why: str) -> None:
        setting = cfg.settings[key]
        setting.value = value
        setting.source = f"{setting.source}, {why}" if setting.source else why

    local = cfg.target == "local"
    for spec in KEYS:
        if spec.type != "podpath" or not cfg.text(spec.name):
            continue
        text = cfg.text(spec.name)
        if local:  # pod paths on the local target: absolute, relative to the checkout
            path = Path(os.path.expanduser(text))
            text = str(path if path.is_absolute() else cfg.project_root / path)
        # `..` resolved before any check (`/tmp/..` is `/`); a leading ~ stays for the pod's shell
        cfg.settings[spec.name].value = _normalise_pod_path(text)
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
    if host.startswith("-"):
        raise bad("OPS_DEFAULT_HOST", "cannot start with '-' (ssh would read it as an option); "
                  "use local, an ~/.ssh/config alias or [user@]host[:port]")
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
    from helpers import slurm_keys  # the SLURM_* keys

    slurm_keys.check(cfg.text, cfg.words, bad)
    from helpers import stage_keys  # EVAL_*/GATE_*/BASELINE_RUN (issue 14)

    stage_keys.check(cfg.text, bad)
    outputs = cfg.text("OPS_REMOTE_OUTPUTS_DIR")
    if outputs.rstrip("/") in ("", "/", "~", ".") or ".." in outputs.split("/"):
        raw = cfg.settings["OPS_REMOTE_OUTPUTS_DIR"].raw
        shown = f"{raw!r} resolves to {outputs!r}; it" if raw.strip() != outputs else repr(outputs)
        raise WorkflowError(f"{cfg.source('OPS_REMOTE_OUTPUTS_DIR')}: OPS_REMOTE_OUTPUTS_DIR={shown} must be a "
                            "directory of its own, not / or ~", ExitCode.USAGE)

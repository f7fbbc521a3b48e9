"""Config loading for train.py, in the style of nanoGPT's configurator.

    python train.py config/train_tiny_cpu.py learning_rate=3e-4 --max_iters=200

Every argument without ``=`` is a config file: a Python file of ``key = value`` assignments,
executed in order. Every ``key=value`` or ``--key=value`` argument is an override, applied after
all files. Override values go through ``ast.literal_eval`` (if that fails the text is kept as a
string) and must match the type of the key's default: an int is accepted for a float, and a bool
accepts True/False/1/0/true/false.

Anything wrong (unknown key, wrong type, value out of range) raises ConfigError with a one-line
message; train.py prints it and exits with code 2 before touching data or devices.
This module deliberately imports nothing heavy (no torch) so that errors come back fast.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
import types
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

SCRIPT_DIR = Path(__file__).resolve().parent


def _default_data_dir() -> str:
    return os.environ.get("DATA_DIR") or "data/fineweb10B"


@dataclass
class Config:
    """All trainer settings. Defaults describe a GPT-2 small (124M) run on FineWeb."""

    # I/O
    out_dir: str = "out"
    seed: int = 1337
    data_dir: str = field(default_factory=_default_data_dir)  # env DATA_DIR, else data/fineweb10B
    # model
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = False
    # batch: tokens per optimizer step = batch_size * block_size * gradient_accumulation_steps * world_size
    batch_size: int = 16  # micro batch per process
    gradient_accumulation_steps: int = 32  # micro steps per optimizer step, per process
    # AdamW and a linear-warmup + cosine-decay learning rate schedule
    learning_rate: float = 6e-4
    min_lr: float = 6e-5
    warmup_iters: int = 250
    lr_decay_iters: int = 5000
    max_iters: int = 5000
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 = off
    # eval, logging, checkpoints
    eval_interval: int = 250  # 0 = only at the end
    eval_iters: int = 20  # micro batches per eval, per process
    log_interval: int = 10
    checkpoint_interval: int = 500  # 0 = only at the end (and on SIGTERM)
    resume: bool = False  # continue from out_dir/ckpt.pt if it exists
    # system
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    compile: bool = False
    backend: str = "auto"  # auto | nccl | gloo
    peak_flops: float = 0.0  # per device, for MFU; 0 = look the GPU up in a small table
    # W&B: log the eval rows to W&B (project, mode, run id, group, dir come from the WANDB_* environment,
    # which workflow.sh sets per sweep row with SWEEP_WANDB=1); needs the wandb package
    wandb_log: bool = False
    # test hooks: raise a (simulated) CUDA OOM error when batch_size is too large
    simulate_oom_batch_over: int = 0  # 0 = off
    simulate_oom_at_iter: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


CHOICES: dict[str, tuple[str, ...]] = {
    "device": ("auto", "cpu", "cuda"),
    "dtype": ("auto", "float32", "bfloat16", "float16"),
    "backend": ("auto", "nccl", "gloo"),
}
POSITIVE = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "batch_size",
            "gradient_accumulation_steps", "eval_iters", "log_interval")
NON_NEGATIVE = ("max_iters", "warmup_iters", "lr_decay_iters", "eval_interval", "checkpoint_interval",
                "learning_rate", "min_lr", "weight_decay", "grad_clip", "peak_flops",
                "simulate_oom_batch_over", "simulate_oom_at_iter")
_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


class ConfigError(Exception):
    """A bad config file, override or value; the message is one line meant for the user."""


class HelpRequested(Exception):
    """-h/--help was given; the message is the help text."""


def key_types() -> dict[str, type]:
    defaults = Config()
    return {f.name: type(getattr(defaults, f.name)) for f in fields(Config)}


def _unknown_key(key: str, where: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(key_types()), n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'?" if close else "python train.py --help lists the keys"
    return ConfigError(f"unknown key '{key}'{where} ({hint})")


def coerce(key: str, value: Any, source: str) -> Any:
    """Check ``value`` against the type of ``key``'s default; return it converted (e.g. int -> float)."""
    want = key_types()[key]
    shown = value if isinstance(value, str) else repr(value)
    problem = ConfigError(f"{key} expects {want.__name__}, got '{shown}' ({source})")
    if want is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        raise problem
    if isinstance(value, bool):  # bool is an int subclass; never accept it for numbers
        raise problem
    if want is int:
        if isinstance(value, float) and value.is_integer():  # max_iters=1e4
            return int(value)
        if not isinstance(value, int):
            raise problem
        return value
    if want is float:
        if not isinstance(value, (int, float)):
            raise problem
        return float(value)
    if not isinstance(value, want):
        raise problem
    return value


def parse_override(arg: str) -> tuple[str, Any]:
    """``key=value`` or ``--key=value`` -> (key, value), with the value literal-evaluated if possible."""
    key, _, text = arg[2:].partition("=") if arg.startswith("--") else arg.partition("=")
    key = key.strip().replace("-", "_")
    if key not in key_types():
        raise _unknown_key(key, "")
    value: Any
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        value = text
    if key_types()[key] is str and not isinstance(value, str):
        value = text  # out_dir=2024 means the string "2024"
    return key, coerce(key, value, f"from override {arg}")


def find_file(name: str) -> Path:
    """A config file path as given, else relative to this directory (so it works from any cwd)."""
    path = Path(name)
    if path.is_file():
        return path
    if not path.is_absolute() and (SCRIPT_DIR / path).is_file():
        return SCRIPT_DIR / path
    raise ConfigError(f"config file '{name}' not found")


def read_config_file(name: str) -> dict[str, Any]:
    """Execute a config file and return the key/value pairs it assigns (checked and converted)."""
    path = find_file(name)
    namespace: dict[str, Any] = {}
    try:
        exec(compile(path.read_text(), str(path), "exec"), namespace)
    except Exception as exc:  # noqa: BLE001 -- any error in user code becomes one line
        line = getattr(exc, "lineno", None)
        at = f" (line {line})" if line else ""
        raise ConfigError(f"cannot run config file {name}: {type(exc).__name__}: {exc}{at}") from None
    values: dict[str, Any] = {}
    for key, value in namespace.items():
        if key.startswith("_") or isinstance(value, (types.ModuleType, types.FunctionType, type)):
            continue
        if key not in key_types():
            raise _unknown_key(key, f" in {name}")
        values[key] = coerce(key, value, f"from {name}")
    return values


def validate(cfg: Config) -> None:
    """Range and consistency checks that types alone cannot express."""
    for key, allowed in CHOICES.items():
        value = getattr(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got '{value}'")
    for key in POSITIVE:
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"{key} must be > 0, got {getattr(cfg, key)}")
    for key in NON_NEGATIVE:
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{key} must be >= 0, got {getattr(cfg, key)}")
    if cfg.n_embd % cfg.n_head:
        raise ConfigError(f"n_embd={cfg.n_embd} must be divisible by n_head={cfg.n_head}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {cfg.dropout}")
    if not (0.0 <= cfg.beta1 < 1.0 and 0.0 <= cfg.beta2 < 1.0):
        raise ConfigError(f"beta1 and beta2 must be in [0, 1), got {cfg.beta1} and {cfg.beta2}")
    if cfg.min_lr > cfg.learning_rate:
        raise ConfigError(f"min_lr={cfg.min_lr} must not exceed learning_rate={cfg.learning_rate}")
    if not cfg.out_dir or not cfg.data_dir:
        raise ConfigError("out_dir and data_dir must not be empty")
    if cfg.wandb_log and importlib.util.find_spec("wandb") is None:
        raise ConfigError("wandb_log=True but the wandb package is not installed (pip install wandb)")


def help_text() -> str:
    lines = ["usage: python train.py [CONFIG.py ...] [key=value | --key=value ...]", "", "keys (default):"]
    for key, value in Config().to_dict().items():
        lines.append(f"  {key} = {value!r}  ({key_types()[key].__name__})")
    return "\n".join(lines)


def load_config(argv: list[str]) -> Config:
    """Build the Config from config files and overrides (argv without the program name)."""
    files: list[str] = []
    overrides: list[str] = []
    for arg in argv:
        if arg in ("-h", "--help"):
            raise HelpRequested(help_text())
        if "=" in arg:
            overrides.append(arg)
        elif arg.startswith("-"):
            raise ConfigError(f"override '{arg}' needs a value, e.g. {arg.lstrip('-')}=...")
        else:
            files.append(arg)
    values: dict[str, Any] = {}
    for name in files:
        values.update(read_config_file(name))
    for arg in overrides:
        key, value = parse_override(arg)
        values[key] = value
    cfg = Config(**values)
    validate(cfg)
    return cfg


def config_echo(cfg: Config) -> str:
    """``config: key=value ...`` on one line (values with spaces are quoted)."""
    words = []
    for key, value in cfg.to_dict().items():
        text = str(value)
        words.append(f"{key}={text!r}" if (not text or any(c.isspace() for c in text)) else f"{key}={text}")
    return "config: " + " ".join(words)


@dataclass
class DistInfo:
    """Rank layout from the torchrun environment (no process group is needed to read it)."""

    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def is_ddp(self) -> bool:
        return self.world > 1

    @property
    def master(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> DistInfo:
        return cls(rank=int(os.environ.get("RANK", "0")), local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                   world=int(os.environ.get("WORLD_SIZE", "1")))

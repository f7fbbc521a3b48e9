"""MLflow params of a row (stdlib only, pure but for reading config.json): the row's spec (``config``,
``seed``, every override) and the trainer's resolved config as ``trainer.<key>``.

The trainer's resolved config is the ``config.json`` it writes into its out_dir when it starts (the
example trainer and the stand-in of the tests both do). Nested dicts are flattened with dots, other
non-scalars are JSON; a secret-named key is ``<hidden>``; keys and values are cut to MLflow's limits.
MLflow params are immutable, so a later attempt (a retry, a resume, the OOM retry's halved batch)
that changes a value cannot rewrite its param: the param keeps the first attempt's value, a key new
in this attempt becomes a param, and each changed key gets a tag ``trainer.<key>`` with the value the
latest attempt ran with, listed in the tag ``workflow.trainer_changed``. Sending the same params
again is a no-op for MLflow (same key, same value), so a lost reply is simply sent again.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from ..jsonio import parse_utc, read_json

PREFIX = "trainer."
MAX_KEY_CHARS = 250  # MLflow's limit on a param key
MAX_VALUE_CHARS = 6000  # MLflow's limit on a param value
MAX_TAG_CHARS = 5000  # a changed value's tag (MLflow allows 8000)
MAX_PARAMS = 400  # at most this many trainer params per run (a config with thousands of keys is cut)
PARAMS_PER_REQUEST = 100  # MLflow: at most 100 params in one log_batch
HIDDEN = "<hidden>"
CHANGED_TAG = "workflow.trainer_changed"
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")


class ParamPlan(NamedTuple):
    new: Dict[str, str]  # params to log (never logged before)
    changed: Dict[str, str]  # tags: trainer.<key> -> the latest attempt's value, where it differs
    current: Dict[str, str]  # every trainer param of this attempt, as text


def secret_name(key: str) -> bool:
    return bool(re.search(r"(key|token|secret|password|pass|credentials)$", key, re.IGNORECASE))


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, (bool, int, float)):
        return json.dumps(value) if not isinstance(value, bool) else str(value)
    return json.dumps(value, sort_keys=True, default=str)


def _flatten(prefix: str, value: Any, out: Dict[str, Any], depth: int = 0) -> None:
    if isinstance(value, dict) and value and depth < 4:
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out, depth + 1)
    else:
        out[prefix] = value


def clean_key(key: str) -> str:
    return _BAD_KEY_CHARS.sub("_", key)[:MAX_KEY_CHARS]


def param_value(key: str, value: Any) -> str:
    if secret_name(key.rsplit(".", 1)[-1]):
        return HIDDEN
    return _text(value)[:MAX_VALUE_CHARS]


def trainer_params(config: Dict[str, Any]) -> Dict[str, str]:
    """``trainer.<key>`` -> value text for a trainer's resolved config (at most MAX_PARAMS keys)."""
    flat: Dict[str, Any] = {}
    _flatten("", config, flat)
    out: Dict[str, str] = {}
    for key in sorted(flat):
        if not key or len(out) >= MAX_PARAMS:
            continue
        out[clean_key(PREFIX + key)] = param_value(key, flat[key])
    return out


def row_params(row: Dict[str, Any]) -> Dict[str, str]:
    """The row's spec: ``config``, ``seed`` and every override (a key given twice: the last, as the
    trainer sees it)."""
    params = {"config": str(row.get("config", "")), "seed": str(row.get("seed", ""))}
    for word in row.get("overrides") or []:
        key, _, value = str(word).lstrip("-").partition("=")
        if key and key not in ("config", "seed"):
            params[clean_key(key)] = HIDDEN if secret_name(key) else value[:MAX_VALUE_CHARS]
    return params


def chunks(params: Dict[str, str]) -> List[List[Tuple[str, str]]]:
    items = sorted(params.items())
    return [items[start:start + PARAMS_PER_REQUEST] for start in range(0, len(items), PARAMS_PER_REQUEST)]


def config_stat(out_dir: str) -> Optional[List[int]]:
    try:
        found = os.stat(os.path.join(out_dir, "config.json"))
    except OSError:
        return None
    return [found.st_mtime_ns, found.st_size]


def read_trainer_config(out_dir: str, since_utc: Optional[str]) -> Optional[Dict[str, Any]]:
    """The trainer's config.json, when it was written by this attempt (not before ``since_utc``, the
    attempt's start: an earlier attempt's file is not this one's config)."""
    path = os.path.join(out_dir, "config.json")
    try:
        mtime = os.path.getmtime(path)
    except OSError:
        return None
    start = parse_utc(since_utc) if since_utc else None
    if start is not None and mtime + 1 < start:  # utc stamps have whole seconds
        return None
    try:
        found = read_json(path, "trainer config")
    except Exception:  # noqa: BLE001 - a torn or foreign file: no params this pass
        return None
    return found if isinstance(found, dict) else None


def plan(sent: Dict[str, str], changed_before: Dict[str, str], config: Dict[str, Any]) -> ParamPlan:
    """What to send for this attempt's config, given the params already sent (first values) and the
    changed-value tags already set."""
    current = trainer_params(config)
    new = {k: v for k, v in current.items() if k not in sent}
    changed = {k: v[:MAX_TAG_CHARS] for k, v in current.items() if k in sent and sent[k] != v}
    # a key changed back to its first value: its tag says so too (the latest attempt's value)
    for key in changed_before:
        if key in current and key not in changed and changed_before[key] != current[key][:MAX_TAG_CHARS]:
            changed[key] = current[key][:MAX_TAG_CHARS]
    changed = {k: v for k, v in changed.items() if changed_before.get(k) != v}
    return ParamPlan(new, changed, current)


def changed_list(sent: Dict[str, str], current: Dict[str, str]) -> str:
    """The tag ``workflow.trainer_changed``: the keys whose latest value differs from their param."""
    keys = sorted(k[len(PREFIX):] for k, v in current.items() if k in sent and sent[k] != v)
    return ",".join(keys)[:MAX_TAG_CHARS]

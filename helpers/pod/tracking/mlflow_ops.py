"""The sidecar's MLflow requests that must survive a lost reply (run venv only: imports mlflow).

A request whose reply is lost (the server got it, the answer never came: a timeout, a dropped
connection) is sent again on the next pass, so each one is made safe to repeat:

- creating a run: the record says "creating" before the request; the next pass first looks for a
  run with the same tags (campaign, row, parent) and adopts it, so a lost reply never makes a second
  child (or parent) run;
- metrics: a batch is resent with the same key, step, value and timestamp (the sidecar keeps the
  timestamp it chose for unsent lines), which MLflow's SQL store drops as a duplicate point;
- params: the same key and value again is a no-op; a param MLflow already has with another value
  (a lost reply, then a new attempt changed the config) is read back from the server;
- tags, final status, artifacts: setting them again gives the same result.
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Optional

from .. import attempts
from ..jsonio import read_json
from .params import CHANGED_TAG, PREFIX, changed_list, chunks, config_stat, plan, read_trainer_config

_USERINFO = re.compile(r"//[^/@\s]+@")


def redact_uri(text: str) -> str:
    return _USERINFO.sub("//***@", text)


def short_error(exc: BaseException) -> str:
    """One line about a failed request: the innermost reason urllib3 gives (refused, timed out), not the
    whole chain; never a credential of the URI."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    found = re.search(r"(Connection refused|Read timed out|timed out|Name or service not known|"
                      r"Failed to establish a new connection[^\)\"']*)", text)
    reason = found.group(1) if found else text[:200]
    return redact_uri(f"{exc.__class__.__name__}: {reason}")[:240]


def find_run(client: Any, experiment_id: str, tags: Dict[str, str]) -> Optional[str]:
    """The oldest live run of the experiment with all these tags (values are ids: no quotes inside)."""
    where = " and ".join(f"tags.`{key}` = '{value}'" for key, value in sorted(tags.items()))
    found = client.search_runs([experiment_id], filter_string=where, max_results=10, order_by=["start_time ASC"])
    return str(found[0].info.run_id) if found else None


def log_params(client: Any, run_id: str, params: Dict[str, str]) -> None:
    from mlflow.entities import Param

    for chunk in chunks(params):
        client.log_batch(run_id, params=[Param(key, value) for key, value in chunk])


def _log_tags(client: Any, run_id: str, tags: Dict[str, str]) -> None:
    from mlflow.entities import RunTag

    for chunk in chunks(tags):
        client.log_batch(run_id, tags=[RunTag(key, value) for key, value in chunk])


def sync_trainer_params(client: Any, run_path: str, out_dir: str, rec: Dict[str, Any], attempt: int) -> bool:
    """Send the ``trainer.<key>`` params of each attempt's config, oldest attempt first (params.py): an
    ended attempt's is the copy kept in its attempt dir (attempts.py), so an OOM retry that rewrote the
    out_dir's config.json before this pass still leaves attempt 1's values as the params; the running
    attempt's is the out_dir's, once it wrote it. True when ``rec`` changed (the caller saves it)."""
    if not attempt:
        return False
    changed = False
    for number in attempts.numbers(run_path):
        if number <= int(rec.get("trainer_attempt") or 0) or number > attempt:
            continue
        if not attempts.ended(run_path, number):
            break  # the running attempt: below
        if attempts.info(run_path, number).get("campaign_id") == rec.get("campaign_id"):
            kept = read_json(attempts.trainer_config_path(run_path, number), "kept trainer config")
            if isinstance(kept, dict):
                _send_trainer_params(client, rec, kept)
        rec["trainer_attempt"] = number  # this ended attempt is told: never read again
        changed = True
    if attempt <= int(rec.get("trainer_attempt") or 0) or attempts.ended(run_path, attempt):
        return changed
    stat = config_stat(out_dir)
    if stat is None or rec.get("trainer_stat") == [attempt, *stat]:
        return changed
    config = read_trainer_config(out_dir, attempts.info(run_path, attempt).get("started_utc"))
    if config is None:
        return changed
    _send_trainer_params(client, rec, config)
    rec["trainer_stat"] = [attempt, *stat]
    return True


def _send_trainer_params(client: Any, rec: Dict[str, Any], config: Dict[str, Any]) -> None:
    child = rec["mlflow_run_id"]
    sent: Dict[str, str] = dict(rec.get("trainer_params") or {})
    tagged: Dict[str, str] = dict(rec.get("trainer_tags") or {})
    todo = plan(sent, tagged, config)
    try:
        log_params(client, child, todo.new)
    except Exception as exc:  # noqa: BLE001 - MLflow's "Changing param values is not allowed"
        if "INVALID_PARAMETER_VALUE" not in str(getattr(exc, "error_code", "")):
            raise
        known = client.get_run(child).data.params  # what the server has (a reply of ours was lost)
        sent.update({k: v for k, v in known.items() if k.startswith(PREFIX)})
        todo = plan(sent, tagged, config)
        log_params(client, child, todo.new)
    sent.update(todo.new)
    listed = changed_list(sent, todo.current)
    tags = dict(todo.changed)
    if listed != (rec.get("trainer_changed") or ""):
        tags[CHANGED_TAG] = listed or "-"
    _log_tags(client, child, tags)
    rec.update(trainer_params=sent, trainer_tags={**tagged, **todo.changed}, trainer_changed=listed)


def metric_stamp(rec: Dict[str, Any], now_ms: int) -> int:
    """The timestamp of points of lines without their own time: the one chosen when these lines were
    first tried (kept in the record until they are sent), so a resend repeats the same points."""
    pending = rec.get("pending")
    if isinstance(pending, dict) and pending.get("from") == rec.get("cursor") and pending.get("ms"):
        return int(pending["ms"])
    rec["pending"] = {"from": int(rec.get("cursor") or 0), "ms": now_ms}
    return now_ms


def upload_artifacts(client: Any, run_id: str, run_path: str, names: List[str]) -> None:
    for name in names:
        if os.path.exists(os.path.join(run_path, name)):
            client.log_artifact(run_id, os.path.join(run_path, name))

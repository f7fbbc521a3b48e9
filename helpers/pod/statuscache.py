"""sweep-status of a concluded campaign from ``<campaign dir>/status-cache.json`` (stdlib only).

A campaign whose executor is no longer live (finished, stopped, lost) and whose rows are all
settled (no row pending, running, retrying or queued) gives the same row table on every call
until one of the files it was read from changes. The first call builds the table as ever and
writes it here (temp + rename); later calls stat what the table came from and, when all of it
is unchanged, send the stored table without parsing manifest.json, index.json or a single run's
files: a finished campaign of 10,000 runs costs a few stats instead of 10,000 file reads.

What the table depends on, and so what invalidates it (mtime in ns, size and inode of each):
manifest.json, index.json, executor.json and tracking-config.json of the campaign; for every row
the index does not answer, that run's summary.json, status file, campaign.json, attempts.jsonl and
metrics.jsonl (all the row view reads); on Slurm, the ``slurm/`` directory (every chunk file is
written there by rename, so a new or rewritten chunk changes it), its sacct-cache.json and final.json:
a Slurm campaign's table is kept only once every job's end is in that cache (executors/slurm_cache.py;
a job requeued makes the campaign live again, never read from here); the executor's state as read now;
the pod agent itself (its unpacked directory: a new agent never trusts an old table); the outputs and
RUN_OUT_* keys.
Anything else (executor details, tracking lag) is read fresh on every call. A cache that cannot
be written (read-only or full filesystem) is skipped silently: it is an optimisation only.

The table itself is kept beside, in ``status-table-<hash>.json`` (written first; the cache file that
names it is replaced after), and the cache file holds its sha256. A client that rendered that table
before sends its hash (and that of the rest of the reply): when both still match, the reply is only
``unchanged`` and the table is not even read (campaignstate.cached_status; helpers/cmd_sweeps.py keeps
the text it printed).

The wire format is compact either way (see ``compact``): columns no row has a value in are named
in ``empty_columns`` instead of being sent 10,000 times, and a row's log path is sent as "" when
it is the default ``<outputs>/<run_id>/run.log``. helpers/cmd_sweeps.expand_rows undoes both.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .taskstate import status_path

CACHE_FILE = "status-cache.json"
TABLE_FILE = "status-table-{}.json"
VERSION = 2
UNSETTLED = frozenset({"pending", "running", "retrying", "queued", "starting", "stopping"})
CAMPAIGN_FILES = ("manifest.json", "index.json", "executor.json", "tracking-config.json", "parts.json",
                  "slurm", "slurm/sacct-cache.json", "slurm/final.json")  # "slurm": its chunk files come and go
ROW_FILES = ("summary.json", "campaign.json", "attempts.jsonl")  # beside the status file and metrics.jsonl
_AGENT = os.path.dirname(os.path.abspath(__file__))

Mark = Optional[List[int]]


def mark(path: str) -> Mark:
    """What a file looks like now (None: it does not exist)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return [info.st_mtime_ns, info.st_size, info.st_ino]


def key(ctx: Any, campaign_id: str, executor_state: str) -> List[Any]:
    return [VERSION, _AGENT, campaign_id, executor_state, ctx.outputs, ctx.get("RUN_OUT_MODE"),
            ctx.path("RUN_OUT_LOCAL_ROOT") if ctx.get("RUN_OUT_MODE") == "local_sync" else ""]


def campaign_marks(path: str) -> List[Mark]:
    return [mark(os.path.join(path, name)) for name in CAMPAIGN_FILES]


def _row_files(ctx: Any, run_id: str) -> List[str]:
    run = os.path.join(ctx.outputs, run_id)
    out_dir = os.path.join(ctx.path("RUN_OUT_LOCAL_ROOT"), run_id) if ctx.get("RUN_OUT_MODE") == "local_sync" else run
    return [*(os.path.join(run, name) for name in ROW_FILES), status_path(run), os.path.join(out_dir, "metrics.jsonl")]


def row_marks(ctx: Any, run_ids: Sequence[str]) -> Dict[str, List[Mark]]:
    """The marks of every file the row views of ``run_ids`` (those the index does not answer) read."""
    return {run_id: [mark(file) for file in _row_files(ctx, run_id)] for run_id in run_ids}


def _read_json(path: str) -> Any:
    with open(path, "rb") as handle:
        return json.loads(handle.read().decode("utf-8"))


def lookup(ctx: Any, path: str, campaign_id: str, executor_state: str, files: List[Mark],
           known_table: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """The stored table when everything it came from (``files``: campaign_marks, now) is unchanged, else None.
    ``known_table``: the hash of the table the caller has; when it is the stored one, the table is not read
    (``table`` is None in the answer)."""
    try:
        data = _read_json(os.path.join(path, CACHE_FILE))
        if data.get("key") != key(ctx, campaign_id, executor_state) or data.get("files") != files:
            return None
        for run_id, marks in data["watched"].items():
            if [mark(file) for file in _row_files(ctx, run_id)] != marks:
                return None
        digest = str(data["table_hash"])
        if known_table and known_table == digest:
            return {**data, "table": None}
        table = _read_json(os.path.join(path, TABLE_FILE.format(digest[:16])))
        if not isinstance(table, dict):
            return None
        return {**data, "table": table}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # none yet, or an old or damaged one: build the table


def settled(views: Sequence[Dict[str, Any]]) -> bool:
    return all(view.get("state") not in UNSETTLED for view in views)


def table_hash(table: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(table, separators=(",", ":"), sort_keys=True).encode()).hexdigest()


def _write(target: str, text: str) -> None:
    tmp = f"{target}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, target)  # atomic: a reader sees the old file or the new one
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def save(ctx: Any, path: str, campaign_id: str, executor_state: str, files: List[Mark],
         watched: Dict[str, List[Mark]], manifest: Dict[str, Any], table: Dict[str, Any]) -> Optional[str]:
    """Keep ``table`` with the marks taken *before* its files were read (a change in between is seen);
    its hash, or None when it could not be kept."""
    try:
        digest = table_hash(table)
        table_file = os.path.join(path, TABLE_FILE.format(digest[:16]))
        _write(table_file, json.dumps(table, separators=(",", ":")))  # first: the cache file names it
        data = {"key": key(ctx, campaign_id, executor_state), "files": files, "watched": watched,
                "created_utc": manifest.get("created_utc"), "config": manifest.get("config") or {},
                "table_hash": digest}
        _write(os.path.join(path, CACHE_FILE), json.dumps(data, separators=(",", ":")))
        for old in glob.glob(os.path.join(path, TABLE_FILE.format("*"))):
            if old != table_file and not old.endswith(".tmp"):
                os.unlink(old)
        return digest
    except (OSError, TypeError, ValueError):
        return None


def compact(columns: Sequence[str], views: Sequence[Dict[str, Any]], outputs: str
            ) -> Tuple[List[str], List[List[Any]], List[str]]:
    """(columns sent, rows as lists, columns no row has a value in): the rows small on the wire."""
    sent = [c for c in columns if c == "run_id" or any(view.get(c) is not None for view in views)]
    empty = [c for c in columns if c not in sent]
    rows = [[view.get(c) for c in sent] for view in views]
    if "log" in sent:
        at = sent.index("log")
        for row, view in zip(rows, views):
            if row[at] is not None and row[at] == os.path.join(outputs, str(view["run_id"]), "run.log"):
                row[at] = ""
    return sent, rows, empty

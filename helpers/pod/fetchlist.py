"""fetch-list: the files of runs (size + sha256) that fetch-run / fetch-all copy and then verify.

Checksums are cached per run in ``.wf-checksums.json`` by (size, mtime), so a second fetch of
unchanged runs hashes nothing. Checkpoints are left out unless asked for; symlinks are never
followed (listed as skipped).
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from typing import Any, Dict, List, Optional

from . import runs
from .campaigns import campaign_dir
from .context import Context
from .errors import ExitCode, WorkflowError
from .executors.slurm_parts import submitted
from .ids import check_id
from .jsonio import read_json, write_json
from .taskstate import read_status

CHECKPOINT_GLOBS = ("*.pt", "*.pth", "*.ckpt", "*.safetensors")
CACHE = ".wf-checksums.json"
NEVER = (".env.json", CACHE)


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _skip(name: str, include_checkpoints: bool) -> bool:
    if name in NEVER or name.endswith(".lock") or (name.startswith(".") and name.endswith(".tmp")):
        return True
    return not include_checkpoints and any(fnmatch.fnmatch(name, g) for g in CHECKPOINT_GLOBS)


def list_run(path: str, include_checkpoints: bool) -> Dict[str, Any]:
    cache_path = os.path.join(path, CACHE)
    try:
        cache: Dict[str, Any] = read_json(cache_path, "checksum cache") or {}
    except Exception:
        cache = {}
    files: List[List[Any]] = []
    symlinks: List[str] = []
    fresh: Dict[str, Any] = {}
    for directory, subdirs, names in os.walk(path):
        subdirs[:] = sorted(d for d in subdirs if not os.path.islink(os.path.join(directory, d)))
        for name in sorted(names):
            full = os.path.join(directory, name)
            rel = os.path.relpath(full, path)
            if os.path.islink(full):
                symlinks.append(rel)
                continue
            if _skip(name, include_checkpoints) or not os.path.isfile(full):
                continue
            stat = os.stat(full)
            key = [stat.st_size, stat.st_mtime_ns]
            cached = cache.get(rel)
            digest = cached[2] if cached and cached[:2] == key else sha256_file(full)
            fresh[rel] = [*key, digest]
            files.append([rel, stat.st_size, digest])
    if fresh != cache:
        try:
            write_json(cache_path, fresh, durable=False)
        except OSError:
            pass  # a read-only volume: no cache, still correct
    status = read_status(path) or {}
    done = runs.summary(path) or {}
    if done and runs.superseded(done, status):
        done = {}  # the run is not final
    # final: the runner wrote its verdict and nothing runs in the directory any more
    return {"path": path, "files": files, "skipped_symlinks": symlinks,
            "state": ("ok" if done.get("ok") else done.get("state")) if done else status.get("state"),
            "final": bool(done), "bytes": sum(f[1] for f in files)}


def fetch_list(ctx: Context) -> Dict[str, Any]:
    include = bool(ctx.args.get("include_checkpoints"))
    run_ids: List[str] = [check_id(r, "run id") for r in ctx.args.get("run_ids") or []]
    campaign: Optional[str] = None
    missing: List[str] = []
    unsubmitted: List[str] = []
    if ctx.args.get("all"):
        campaign, cpath = campaign_dir(ctx, ctx.args.get("campaign"))
        manifest = read_json(os.path.join(cpath, "manifest.json"), "campaign manifest") or {}
        allowed = submitted(cpath)  # a campaign in parts: rows no part submitted yet are not "missing"
        for number, row in enumerate(manifest.get("rows", [])):
            if allowed is not None and number not in allowed:
                unsubmitted.append(row["run_id"])
                continue
            path = runs.run_dir(ctx.outputs, row["run_id"])
            own = runs.owner(path) if os.path.isdir(path) else None
            if own and (own.get("campaign_id") == campaign or runs.is_ok(path, row.get("spec_hash", ""))):
                run_ids.append(row["run_id"])
            else:
                missing.append(row["run_id"])
    out = []
    for run_id in run_ids:
        path = runs.run_dir(ctx.outputs, run_id)
        if not os.path.isdir(path):
            raise WorkflowError(f"no run {run_id!r} on the pod (no {path}); see workflow.sh sweep-status",
                                ExitCode.NOT_FOUND)
        out.append({"run_id": run_id, **list_run(path, include)})
    return {"campaign_id": campaign, "outputs": ctx.outputs, "runs": out, "missing": missing,
            "unsubmitted": unsubmitted}

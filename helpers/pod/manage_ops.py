"""Agent ops for managed recovery (sweep-watch --manage): manage-probe (read-only), manage-prepare.

manage-probe: what the watcher keeps about a campaign before anything goes wrong: the commit the
pod's checkout is at, the campaign's manifest (when asked) and its fence.

manage-prepare: on the pod that takes the campaign over (a replacement, or the same pod whose
executor died), before sweep-resume: pin the checkout to the campaign's commit, put the campaign's
manifest back when the pod's disk does not have it (no persistent volume), and fence the earlier
attempt: a stop request for the executor generation(s) before this one (an executor of the lost
attempt that comes back on the shared volume reads it and stops; the one sweep-resume starts has a
newer generation), and ``manage_fence.json`` naming this epoch, which a superseded watcher refuses.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

from . import procs
from .campaigns import campaign_dir, latest_file, root
from .context import Context
from .errors import ExitCode, WorkflowError
from .executor_records import request_stop
from .fence import FENCE
from .ids import check_id
from .jsonio import read_json, utc_now, write_bytes, write_json


def _head(repo: str) -> Optional[str]:
    code, out = procs.run(["git", "-C", repo, "rev-parse", "HEAD"], timeout=30)
    return out.strip() if code == 0 and out.strip() else None


def manage_probe(ctx: Context) -> Dict[str, Any]:
    campaign_id, path = campaign_dir(ctx, ctx.args.get("campaign"))
    reply: Dict[str, Any] = {"campaign_id": campaign_id, "git_sha": _head(ctx.path("OPS_REMOTE_REPO")),
                             "fence": read_json(os.path.join(path, FENCE), "manage fence")}
    if ctx.args.get("manifest"):
        reply["manifest"] = read_json(os.path.join(path, "manifest.json"), "campaign manifest")
    return reply


def _pin(ctx: Context, sha: str) -> str:
    repo = ctx.path("OPS_REMOTE_REPO")
    head = _head(repo)
    if head == sha:
        return sha
    timeout = ctx.number("CHECKOUT_TIMEOUT_SECS", 1800)
    code, _ = procs.run(["git", "-C", repo, "cat-file", "-e", f"{sha}^{{commit}}"], timeout=30)
    if code != 0:
        procs.run(["git", "-C", repo, "fetch", "--quiet", "origin", sha], timeout=timeout)
    code, out = procs.run(["git", "-C", repo, "checkout", "--quiet", "--detach", sha], timeout=timeout)
    if code != 0 or _head(repo) != sha:
        raise WorkflowError(f"manage: cannot check out the campaign's commit {sha[:12]} in {repo} "
                            f"({procs.tail(out)}); push that commit to REPO_URL", ExitCode.FAILED)
    return sha


def manage_prepare(ctx: Context) -> Dict[str, Any]:
    args = ctx.args
    campaign_id = check_id(str(args["campaign"]), "campaign id")
    epoch = int(args["epoch"])
    path = os.path.join(root(ctx), campaign_id)
    restored = False
    if not os.path.isfile(os.path.join(path, "manifest.json")):
        manifest = args.get("manifest")
        if not isinstance(manifest, dict) or manifest.get("campaign_id") != campaign_id:
            raise WorkflowError(f"manage: campaign {campaign_id} is not on this pod and no manifest of it was kept "
                                "locally; start it again with sweep-start", ExitCode.NOT_FOUND)
        os.makedirs(path, exist_ok=True)
        write_json(os.path.join(path, "manifest.json"), manifest, mode=0o444)
        restored = True
    fence = read_json(os.path.join(path, FENCE), "manage fence") or {}
    if int(fence.get("epoch") or 0) > epoch:
        raise WorkflowError(f"manage: campaign {campaign_id} was taken over by a newer recovery (epoch "
                            f"{fence.get('epoch')} on {fence.get('pod')}); this watcher is superseded",
                            ExitCode.REFUSED)
    sha = str(args.get("git_sha") or "")
    pinned = _pin(ctx, sha) if sha else _head(ctx.path("OPS_REMOTE_REPO"))
    record = read_json(os.path.join(path, "executor.json"), "executor status") or {}
    generation = int(record.get("generation") or 1)
    request_stop(path, generation)  # the superseded generation stops if it ever comes back
    write_json(os.path.join(path, FENCE), {"epoch": epoch, "pod": str(args.get("pod") or ""), "utc": utc_now(),
                                           "fenced_generation": generation})
    write_bytes(latest_file(ctx), (campaign_id + "\n").encode())
    return {"campaign_id": campaign_id, "restored": restored, "git_sha": pinned, "fenced_generation": generation}

"""CHECKOUT_PUSH_LOCAL=1: the client's uncommitted tracked changes, applied as a patch on the pod checkout.

The patch is ``git diff HEAD --binary`` of the client's tree; it is applied with ``git apply --index``
on top of the same commit, so the pod's ``git diff HEAD`` is the same bytes and the runs' provenance
(dirty, diff_sha256) names the patch. A marker in the clone's .git directory records what was applied:
a later checkout reverts the tool's own patch when the pod's tracked changes are still exactly that
patch (the original lives on the client); any other change on the pod is refused as before.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import time
from typing import Any, Dict, List, Optional

from .errors import ExitCode, WorkflowError
from .jsonio import read_json, write_bytes, write_json

MARKER = "workflow-local-patch.json"
PATCH_FILE = "workflow-local.patch"
# the same pathspecs as runs.git_provenance, so the hashes agree
DIFF_SPECS = ["--", ".", ":(exclude,glob)**/__pycache__/**", ":(exclude,glob)**/*.pyc"]
SCHEMA_VERSION = 1


def _git_env() -> Dict[str, str]:
    return {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}


def tracked_diff(repo: str, timeout: float) -> Optional[bytes]:
    """``git diff HEAD --binary`` of the tracked files (staged or not); None when git fails."""
    try:
        proc = subprocess.run(["git", "-C", repo, "diff", "HEAD", "--binary", *DIFF_SPECS], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, env=_git_env(), timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def marker_path(repo: str) -> str:
    return os.path.join(repo, ".git", MARKER)


def read_marker(repo: str) -> Optional[Dict[str, Any]]:
    try:
        data = read_json(marker_path(repo), "local patch marker")
    except WorkflowError:
        return None
    return data if isinstance(data, dict) else None


def ours(repo: str, head: Optional[str], timeout: float) -> Optional[Dict[str, Any]]:
    """The marker, when the pod's tracked changes are exactly the patch an earlier checkout applied."""
    marker = read_marker(repo)
    if not marker or not head or marker.get("base") != head:
        return None
    diff = tracked_diff(repo, timeout)
    if diff is None or hashlib.sha256(diff).hexdigest() != marker.get("sha256"):
        return None
    return marker


def forget(repo: str) -> None:
    for name in (MARKER, PATCH_FILE):
        try:
            os.remove(os.path.join(repo, ".git", name))
        except FileNotFoundError:
            pass


def decode(args: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The patch the client sent (base, files, sha256, bytes), checked against its hash."""
    sent = args.get("local_patch")
    if not sent:
        return None
    data = base64.b64decode(str(sent["patch_b64"]))
    if hashlib.sha256(data).hexdigest() != sent["sha256"]:
        raise WorkflowError("checkout: the local patch arrived damaged (sha256 differs); run checkout again",
                            ExitCode.TRANSPORT)
    return {"base": str(sent["base"]), "files": [str(f) for f in sent["files"]], "sha256": str(sent["sha256"]),
            "data": data}


def apply(repo: str, patch: Dict[str, Any], timeout: float) -> Dict[str, Any]:
    """Apply the patch (index and tree) and record it; returns the marker."""
    path = os.path.join(repo, ".git", PATCH_FILE)
    write_bytes(path, patch["data"], 0o600, durable=False)
    try:
        proc = subprocess.run(["git", "-C", repo, "apply", "--index", "--binary", "--whitespace=nowarn", path],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_git_env(), timeout=timeout)
        code, out = proc.returncode, proc.stdout.decode(errors="replace")
    except subprocess.TimeoutExpired:
        code, out = 124, "timed out"
    if code != 0:
        subprocess.run(["git", "-C", repo, "reset", "--hard", "--quiet"], env=_git_env(), timeout=timeout)
        forget(repo)
        last = [line for line in out.strip().splitlines() if line.strip()][-1:] or ["(no output)"]
        raise WorkflowError(f"checkout: the local patch does not apply on {patch['base'][:12]} ({last[0]}); the pod "
                            "tree was left clean at that commit", ExitCode.FAILED)
    diff = tracked_diff(repo, timeout) or b""
    marker = {"schema_version": SCHEMA_VERSION, "base": patch["base"], "files": patch["files"],
              "sent_sha256": patch["sha256"], "sha256": hashlib.sha256(diff).hexdigest(),
              "applied_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_json(marker_path(repo), marker)
    return marker


def summary(marker: Dict[str, Any]) -> Dict[str, Any]:
    files: List[str] = marker.get("files") or []
    return {"files": files, "sha256": marker.get("sha256"), "base": marker.get("base")}

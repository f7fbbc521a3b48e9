"""The local checkout against what `checkout` puts on the pod: warnings about changes the pod will not
run, and the patch CHECKOUT_PUSH_LOCAL=1 sends.

The local tree is the git work tree of this checkout (the project root), and only when it is a clone of
REPO_URL (REPO_URL is its path, or one of its remotes): an unrelated REPO_URL gets no warnings. The
patch is ``git diff HEAD --binary`` of the tracked files (staged or not), with git's diff options
pinned to their defaults so it applies with ``git apply`` anywhere; untracked files are never sent,
and neither are the config files (workflow.env, profiles): the pod gets the resolved config apart,
and a patch holding the value of a secret key is refused.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers.config import Config, is_secret
from helpers.errors import ExitCode, WorkflowError
from helpers.pod.checkout import same_url
from helpers.pod.localpatch import DIFF_SPECS

PATCH_LIMIT = 16 << 20  # bytes; a bigger change belongs in a commit
_PINNED = ("-c", "diff.noprefix=false", "-c", "diff.mnemonicPrefix=false", "-c", "diff.relative=false",
           "-c", "core.quotePath=true")
_GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}


@dataclass
class LocalTree:
    root: Path
    head: str
    branch: str  # "" when detached
    changed: list[str] = field(default_factory=list)  # tracked files that differ from HEAD, config files excluded
    left_out: list[str] = field(default_factory=list)  # changed config files, never sent
    remote: str = ""  # the local remote whose URL is REPO_URL; "" when REPO_URL is this tree itself

    def describe(self, limit: int = 5) -> str:
        shown = ", ".join(self.changed[:limit])
        return shown + (f" (+{len(self.changed) - limit} more)" if len(self.changed) > limit else "")


@dataclass
class Patch:
    base: str
    files: list[str]
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def to_args(self) -> dict[str, Any]:
        return {"base": self.base, "files": self.files, "sha256": self.sha256,
                "patch_b64": base64.b64encode(self.data).decode()}


def _git(root: Path, *args: str, raw: bool = False) -> tuple[int, bytes]:
    try:
        proc = subprocess.run(["git", "-C", str(root), *_PINNED, *args], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, env={**os.environ, **_GIT_ENV}, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return 1, b""
    return proc.returncode, proc.stdout if raw else proc.stdout.strip()


def _text(root: Path, *args: str) -> str | None:
    code, out = _git(root, *args)
    return out.decode(errors="replace") if code == 0 else None


def _config_files(cfg: Config, root: Path) -> set[str]:
    """The local config files inside the tree (workflow.env, profiles), relative to it."""
    paths = [cfg.env_file, root / "workflow.env"]
    profiles = cfg.local_path("WORKFLOW_PROFILES_DIR")
    if profiles is not None and profiles.is_dir():
        paths += list(profiles.glob("*.env"))
    out = set()
    for path in paths:
        try:
            out.add(str(Path(os.path.realpath(path)).relative_to(root)))
        except ValueError:
            continue
    return out


def local_tree(cfg: Config) -> LocalTree | None:
    """The local tree when it is a clone of REPO_URL, else None."""
    url = cfg.text("REPO_URL")
    top = _text(cfg.project_root, "rev-parse", "--show-toplevel")
    if not url or not top:
        return None
    root = Path(os.path.realpath(top))
    remotes = (_text(root, "config", "--get-regexp", r"^remote\..*\.url$") or "").splitlines()
    matching = [line.split(" ", 1)[0][len("remote."):-len(".url")] for line in remotes
                if same_url(url, line.split(" ", 1)[-1])]
    if not same_url(url, str(root)) and not matching:
        return None
    head = _text(root, "rev-parse", "HEAD")
    if not head:
        return None
    branch = _text(root, "symbolic-ref", "--quiet", "--short", "HEAD") or ""
    code, names = _git(root, "diff", "HEAD", "--name-only", "-z", *DIFF_SPECS, raw=True)
    changed = sorted(n.decode(errors="replace") for n in names.split(b"\0") if n) if code == 0 else []
    config = _config_files(cfg, root)
    remote = "" if same_url(url, str(root)) else matching[0]
    return LocalTree(root, head, branch, [n for n in changed if n not in config], [n for n in changed if n in config],
                     remote)


def expected_commit(cfg: Config, tree: LocalTree) -> tuple[str | None, str]:
    """Without asking the remote: the commit the pod will check out as far as this checkout knows
    (EXPECT_GIT_SHA, else the branch as last fetched), and what it is."""
    if cfg.text("EXPECT_GIT_SHA"):
        return _text(tree.root, "rev-parse", "--verify", "--quiet", f"{cfg.text('EXPECT_GIT_SHA')}^{{commit}}"), \
            f"EXPECT_GIT_SHA {cfg.text('EXPECT_GIT_SHA')}"
    if cfg.text("CHECKOUT_PR"):
        return None, f"PR {cfg.text('CHECKOUT_PR')}"
    branch = cfg.text("CHECKOUT_BRANCH")
    if tree.remote:
        if not branch:
            default = _text(tree.root, "symbolic-ref", "--quiet", "--short", f"refs/remotes/{tree.remote}/HEAD") or ""
            branch = default.split("/", 1)[1] if "/" in default else ""
        ref = f"refs/remotes/{tree.remote}/{branch}"
        return (_text(tree.root, "rev-parse", "--verify", "--quiet", ref) if branch else None), \
            f"{tree.remote}/{branch or '(default)'} as last fetched"
    ref = f"refs/heads/{branch}" if branch else "HEAD"  # REPO_URL is this tree: its committed branch
    return _text(tree.root, "rev-parse", "--verify", "--quiet", ref), f"branch {branch or tree.branch or 'HEAD'}"


def make_patch(cfg: Config, tree: LocalTree) -> Patch | None:
    """The patch of the tree's tracked changes (None when there are none); refused when too big or when it
    holds a secret's value."""
    if not tree.changed:
        return None
    specs = [*DIFF_SPECS, *(f":(exclude,literal){name}" for name in tree.left_out)]
    code, data = _git(tree.root, "diff", "HEAD", "--binary", "--no-color", "--no-ext-diff", "--no-textconv",
                      *specs, raw=True)
    if code != 0:
        raise WorkflowError(f"checkout: CHECKOUT_PUSH_LOCAL=1: git diff failed in {tree.root}; check the tree with "
                            "git status", ExitCode.FAILED)
    if len(data) > PATCH_LIMIT:
        raise WorkflowError(f"checkout: CHECKOUT_PUSH_LOCAL=1: the local changes are {len(data) / 1e6:.1f} MB as a "
                            f"patch (limit {PATCH_LIMIT >> 20} MiB); commit and push them instead", ExitCode.USAGE)
    values = cfg.pod_values(include_secrets=True)
    for key, value in values.items():
        if is_secret(key) and len(value) >= 6 and value.encode() in data:
            where = _file_holding(data, value.encode())
            raise WorkflowError(f"checkout: CHECKOUT_PUSH_LOCAL=1: the local change to {where} holds the value of "
                                f"{key}; take the secret out of that file (the pod gets {key} from the config), "
                                "nothing was sent", ExitCode.USAGE)
    return Patch(tree.head, list(tree.changed), data)


def _file_holding(data: bytes, needle: bytes) -> str:
    for chunk in data.split(b"\ndiff --git "):
        if needle in chunk:
            header = chunk.split(b"\n", 1)[0].removeprefix(b"diff --git ")
            return header.split(b" b/", 1)[-1].decode(errors="replace")
    return "a file"


def relation(tree: LocalTree, pod_sha: str, target: str = "what the pod checked out") -> str | None:
    """How local HEAD relates to the commit the pod checked out (``target``); None when they are the same."""
    if tree.head == pod_sha:
        return None
    if _git(tree.root, "cat-file", "-e", f"{pod_sha}^{{commit}}")[0] != 0:
        return (f"local HEAD {tree.head[:12]} differs from {target} ({pod_sha[:12]}, a commit this checkout does "
                "not have: git fetch, then compare)")
    ahead = _text(tree.root, "rev-list", "--count", f"{pod_sha}..{tree.head}") or "0"
    behind = _text(tree.root, "rev-list", "--count", f"{tree.head}..{pod_sha}") or "0"
    if behind == "0":
        return (f"local HEAD {tree.head[:12]} is {ahead} commit(s) ahead of {target} ({pod_sha[:12]}): push "
                "them (git push) and run checkout again")
    return (f"local HEAD {tree.head[:12]} differs from {target} ({pod_sha[:12]}: {ahead} commit(s) only here, "
            f"{behind} only there)")

"""checkout: clone/update REPO_URL, make the run venv, install, verify torch/CUDA and the data.

Every failure names the check that failed and how to fix it. Nothing the tool did not create
is deleted: a dirty tree is refused (unless CHECKOUT_FORCE_CLEAN=1, or its changes are exactly the
local patch an earlier CHECKOUT_PUSH_LOCAL=1 checkout applied: see localpatch.py), a foreign directory
or venv is refused, and VENV_RECREATE only rebuilds a venv this tool made.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from typing import Any, Dict, List, Optional

from . import fsm, localpatch, procs, runs, shards
from .context import Context, expand, run_env
from .errors import ExitCode, WorkflowError
from .ticker import Ticker

VENV_MARKER = ".workflow-venv.json"
GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_SSH_COMMAND": "ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new",
           "LC_ALL": "C"}


class Git:
    def __init__(self, repo: str, timeout: int) -> None:
        self.repo = repo
        self.timeout = timeout

    def __call__(self, *args: str, what: str, fix: str) -> str:
        return procs.check(["git", "-C", self.repo, *args], what, fix, timeout=self.timeout, env=GIT_ENV).strip()

    def try_(self, *args: str) -> Optional[str]:
        code, out = procs.run(["git", "-C", self.repo, *args], timeout=self.timeout, env=GIT_ENV)
        return out.strip() if code == 0 else None


def same_url(a: str, b: str) -> bool:
    def norm(url: str) -> str:
        url = url.strip().rstrip("/")
        if url.startswith("file://"):
            url = url[len("file://"):]
        if url.startswith("/") or url.startswith("~"):
            url = os.path.realpath(os.path.expanduser(url))
        return url[:-4] if url.endswith(".git") else url

    return norm(a) == norm(b)


class RepoState:
    """What inspect_repo found: None for a fresh clone, else the dirty files and whether they are
    exactly the local patch an earlier CHECKOUT_PUSH_LOCAL=1 checkout applied (``ours``)."""

    def __init__(self, dirty: str, ours: Optional[Dict[str, Any]] = None) -> None:
        self.dirty = dirty
        self.ours = ours


def inspect_repo(ctx: Context) -> Optional[RepoState]:
    """Refuse a foreign directory, another origin, or uncommitted changes (unless forced, or they are the
    tool's own local patch) before any change; returns None for a fresh clone."""
    url, repo = ctx.get("REPO_URL"), ctx.path("OPS_REMOTE_REPO")
    if not os.path.exists(repo) or (os.path.isdir(repo) and not os.listdir(repo)):
        return None
    if not os.path.isdir(os.path.join(repo, ".git")):
        raise WorkflowError(f"checkout: OPS_REMOTE_REPO {repo} exists and is not a git checkout; it is left "
                            "alone: point OPS_REMOTE_REPO elsewhere or move it away", ExitCode.REFUSED)
    git = Git(repo, ctx.number("CHECKOUT_TIMEOUT_SECS", 1800))
    origin = git.try_("remote", "get-url", "origin") or ""
    if not same_url(origin, url):
        raise WorkflowError(f"checkout: {repo} is a clone of {origin!r}, not REPO_URL {url!r}; point "
                            "OPS_REMOTE_REPO elsewhere or fix REPO_URL", ExitCode.REFUSED)
    dirty = procs.check(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"], "git status",
                        "inspect the repo", timeout=git.timeout, env=GIT_ENV).rstrip("\n")
    mine = localpatch.ours(repo, git.try_("rev-parse", "HEAD"), git.timeout) if dirty else None
    if dirty and not mine and not ctx.flag("CHECKOUT_FORCE_CLEAN"):
        files = ", ".join(line[3:] for line in dirty.splitlines()[:5])
        since = (" (edited on the pod since an earlier CHECKOUT_PUSH_LOCAL=1 checkout applied the local patch)"
                 if localpatch.read_marker(repo) else "")
        raise WorkflowError(f"checkout: uncommitted changes on the pod in {repo} ({files}){since}; commit or stash "
                            "them there, or set CHECKOUT_FORCE_CLEAN=1 to discard them", ExitCode.REFUSED)
    return RepoState(dirty, mine)


def update_repo(ctx: Context, found: Optional[RepoState]) -> Dict[str, Any]:
    url = ctx.get("REPO_URL")
    repo = ctx.path("OPS_REMOTE_REPO")
    timeout = ctx.number("CHECKOUT_TIMEOUT_SECS", 1800)
    branch, pr = ctx.get("CHECKOUT_BRANCH"), ctx.get("CHECKOUT_PR")
    git = Git(repo, timeout)
    patch = localpatch.decode(ctx.args)
    reverted: Optional[Dict[str, Any]] = None
    if found is None:
        Context.progress(f"checkout: cloning {url} into {repo}")
        os.makedirs(os.path.dirname(repo), exist_ok=True)
        with Ticker(ctx, "checkout: git clone", folder=repo):
            procs.check(["git", "clone", "--quiet", "--", url, repo], "git clone",
                        "check REPO_URL and that the pod can reach it (deploy key / token)", timeout=timeout,
                        env=GIT_ENV)
    else:
        Context.progress(f"checkout: fetching {url}")
        with Ticker(ctx, "checkout: git fetch"):
            git("fetch", "--quiet", "--prune", "origin", what="git fetch", fix="check that the pod can reach REPO_URL")
    if pr:
        number = pr.split("/")[1] if "/" in pr else pr
        ref = f"refs/remotes/origin/pr/{number}"
        git("fetch", "--quiet", "origin", f"+pull/{number}/head:{ref}", what=f"fetching pull request {number}",
            fix="check CHECKOUT_PR and that the remote serves pull/N/head refs (GitHub does)")
        label = f"PR {number}"
    else:
        if not branch:
            head = git.try_("symbolic-ref", "--short", "refs/remotes/origin/HEAD") or ""
            branch = head.split("/", 1)[1] if "/" in head else (git.try_("rev-parse", "--abbrev-ref", "HEAD") or "")
        ref = f"refs/remotes/origin/{branch}"
        if not git.try_("rev-parse", "--verify", "--quiet", ref):
            raise WorkflowError(f"checkout: branch {branch!r} does not exist on {url}; fix CHECKOUT_BRANCH",
                                ExitCode.FAILED)
        label = f"branch {branch}"
    target = git("rev-parse", f"{ref}^{{commit}}", what="git rev-parse", fix="inspect the repo")
    check_target(ctx, label, target, patch, fresh=found is None)  # before the tree moves
    if found is not None and found.dirty:
        if found.ours:
            mine = found.ours
            Context.progress(f"checkout: reverting the local patch an earlier CHECKOUT_PUSH_LOCAL=1 checkout applied "
                             f"({len(mine.get('files') or [])} file(s), sha256 {str(mine.get('sha256'))[:12]})")
            reverted = localpatch.summary(mine)
        else:
            Context.progress("checkout: CHECKOUT_FORCE_CLEAN=1: discarding uncommitted changes (git reset --hard)")
        git("reset", "--hard", "--quiet", what="git reset", fix="inspect the repo")
    localpatch.forget(repo)
    if pr:
        git("checkout", "--quiet", "-B", f"pr-{number}", ref, what=f"checking out PR {number}", fix="inspect the repo")
    else:
        if git.try_("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"):
            git("checkout", "--quiet", branch, what=f"git checkout {branch}", fix="inspect the repo")
            git("merge", "--quiet", "--ff-only", f"origin/{branch}", what=f"updating {branch}",
                fix="the pod's branch has commits that are not on the remote: push them, or reset the branch")
        else:
            git("checkout", "--quiet", "-b", branch, f"origin/{branch}", what=f"git checkout {branch}",
                fix="inspect the repo")
    if os.path.exists(os.path.join(repo, ".gitmodules")):
        git("submodule", "update", "--init", "--recursive", "--quiet", what="git submodule update",
            fix="check the submodule URLs")
    sha = git("rev-parse", "HEAD", what="git rev-parse", fix="inspect the repo")
    check_target(ctx, label, sha, patch)
    applied = None
    if patch is not None:
        Context.progress(f"checkout: applying the local patch ({len(patch['files'])} file(s)) on top of {sha[:12]}")
        applied = localpatch.summary(localpatch.apply(repo, patch, timeout))
    Context.progress(f"checkout: {label} at {sha[:12]}" + (" + local patch" if applied else ""))
    return {"repo": repo, "sha": sha, "ref": label, "local_patch": applied, "reverted_patch": reverted}


def check_target(ctx: Context, label: str, sha: str, patch: Optional[Dict[str, Any]], fresh: bool = False) -> None:
    expected = ctx.get("EXPECT_GIT_SHA").lower()
    if expected and not sha.lower().startswith(expected):
        raise WorkflowError(f"checkout: HEAD of {label} is {sha[:12]}, but EXPECT_GIT_SHA is {expected}; push that "
                            "commit or fix EXPECT_GIT_SHA", ExitCode.FAILED)
    if patch is not None and patch["base"] != sha:
        raise WorkflowError(f"checkout: CHECKOUT_PUSH_LOCAL=1 sends your uncommitted changes on top of your HEAD "
                            f"{patch['base'][:12]}, but {label} is at {sha[:12]}; push your commits (or pick that "
                            "commit with CHECKOUT_BRANCH), then run checkout again; "
                            + ("nothing was applied to the fresh clone" if fresh else "the pod tree was not changed"),
                            ExitCode.FAILED)


_PY_INFO = ("import json, site, sys; print(json.dumps({'prefix': sys.prefix, 'base_prefix': sys.base_prefix, "
            "'executable': sys.executable, 'version': sys.version.split()[0], "
            "'site': [p for p in site.getsitepackages() if p.startswith(sys.prefix)]}))")


def python_info(python_bin: str) -> Dict[str, Any]:
    code, out = procs.run([python_bin, "-c", _PY_INFO], timeout=60)
    if code != 0:
        raise WorkflowError(f"checkout: REMOTE_PYTHON_BIN {python_bin!r} does not run ({procs.tail(out)}); set it to "
                            "the python that has torch (e.g. /opt/conda/bin/python)", ExitCode.FAILED)
    info: Dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return info


def ensure_venv(ctx: Context) -> Dict[str, Any]:
    venv = ctx.path("VENV_DIR")
    python_bin = ctx.get("REMOTE_PYTHON_BIN") or "python3"
    marker = os.path.join(venv, VENV_MARKER)
    info = python_info(python_bin)
    if os.path.exists(venv):
        if not os.path.exists(marker):
            raise WorkflowError(f"checkout: VENV_DIR {venv} exists but was not made by workflow.sh; it is left "
                                "alone: set VENV_DIR elsewhere or move it away", ExitCode.REFUSED)
        with open(marker) as handle:
            made_from = json.load(handle).get("python")
        if ctx.flag("VENV_RECREATE"):
            Context.progress(f"checkout: VENV_RECREATE=1: rebuilding {venv}")
            aside = f"{venv}.old-{int(time.time())}"
            os.rename(venv, aside)
            shutil.rmtree(aside, ignore_errors=True)
        elif made_from != info["executable"]:
            raise WorkflowError(f"checkout: {venv} was made from {made_from}, but REMOTE_PYTHON_BIN is now "
                                f"{info['executable']}; set VENV_RECREATE=1 once to rebuild it", ExitCode.FAILED)
        else:
            return {"venv": venv, "created": False, "python": info["executable"]}
    Context.progress(f"checkout: creating venv {venv} (--system-site-packages, from {info['executable']})")
    # --without-pip: ensurepip costs ~8 s; pip_install() brings pip in only if it is needed and missing
    procs.check([python_bin, "-m", "venv", "--system-site-packages", "--without-pip", venv], "creating the venv",
                "install python3-venv (bootstrap does with AUTO_INSTALL_PREREQS=1)", timeout=300)
    if info["prefix"] != info["base_prefix"] and info["site"]:
        # REMOTE_PYTHON_BIN is itself a venv: --system-site-packages would only reach its base python,
        # so expose the parent venv's packages (torch) the same way.
        venv_site = _venv_site(venv)
        with open(os.path.join(venv_site, "_workflow_parent_venv.pth"), "w") as handle:
            handle.write("\n".join(info["site"]) + "\n")
    with open(marker, "w") as handle:
        json.dump({"python": info["executable"], "version": info["version"]}, handle)
    return {"venv": venv, "created": True, "python": info["executable"]}


def _venv_site(venv: str) -> str:
    code, out = procs.run([os.path.join(venv, "bin", "python"), "-c",
                           "import site; print(site.getsitepackages()[0])"], timeout=60)
    if code != 0:
        raise WorkflowError(f"checkout: the new venv {venv} does not run: {procs.tail(out)}", ExitCode.FAILED)
    return out.strip().splitlines()[-1]


def pip_install(ctx: Context, repo: str, venv: str) -> List[str]:
    args = ctx.words("PIP_INSTALL_ARGS")
    if args == ["auto"]:
        if os.path.exists(os.path.join(repo, "requirements.txt")):
            args = ["-r", "requirements.txt"]
        elif os.path.exists(os.path.join(repo, "pyproject.toml")) or os.path.exists(os.path.join(repo, "setup.py")):
            args = ["-e", "."]
        else:
            args = []
    if not args or args == ["none"]:
        return []
    for flag, name in zip(args, args[1:]):
        if flag in ("-r", "--requirement") and not os.path.isfile(os.path.join(repo, name)):
            raise WorkflowError(f"checkout: PIP_INSTALL_ARGS names {name}, which the checkout of REPO_URL does not "
                                "have; set PIP_INSTALL_ARGS=auto (requirements.txt or the project itself) or none",
                                ExitCode.FAILED)
    python = os.path.join(venv, "bin", "python")
    if procs.run([python, "-m", "pip", "--version"], timeout=60)[0] != 0:
        procs.check([python, "-m", "ensurepip", "--default-pip"], "installing pip into the venv (ensurepip)",
                    "install python3-venv on the pod", timeout=300)
    Context.progress(f"checkout: pip install {' '.join(args)}")
    with Ticker(ctx, f"checkout: pip install {' '.join(args)}", folder=venv):
        procs.check([os.path.join(venv, "bin", "python"), "-m", "pip", "install", "--disable-pip-version-check",
                     "--quiet", *args], "pip install " + " ".join(args),
                    "fix PIP_INSTALL_ARGS or the requirements (the pod must reach the package index)", cwd=repo,
                    timeout=ctx.number("CHECKOUT_TIMEOUT_SECS", 1800))
    return args


_TORCH_PROBE = ("import json, torch; print(json.dumps({'torch': torch.__version__, 'cuda': torch.cuda.is_available(), "
                "'cuda_version': torch.version.cuda, 'devices': torch.cuda.device_count()}))")


def check_torch(ctx: Context, venv: str) -> Dict[str, Any]:
    code, out = procs.run([os.path.join(venv, "bin", "python"), "-c", _TORCH_PROBE], timeout=300)
    if code != 0:
        raise WorkflowError(
            f"checkout: torch check: the venv's python cannot import torch ({procs.tail(out, 1)}); the pod image "
            "should ship torch: set REMOTE_PYTHON_BIN to the python that has it, then VENV_RECREATE=1", ExitCode.FAILED)
    info: Dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    if ctx.flag("REQUIRE_CUDA") and not info["cuda"]:
        raise WorkflowError(f"checkout: CUDA check: torch {info['torch']} sees no CUDA device (cuda "
                            f"{info['cuda_version']}); on a CPU host set REQUIRE_CUDA=0, else fix the driver/image",
                            ExitCode.FAILED)
    Context.progress(f"checkout: torch {info['torch']}, CUDA {'yes' if info['cuda'] else 'no'}"
                     f" ({info['devices']} device(s))")
    return info


def ensure_data(ctx: Context, repo: str, venv: str) -> Dict[str, Any]:
    data_dir = ctx.path("DATA_DIR")
    if not ctx.flag("CHECK_DATA"):
        return {"checked": False}
    timeout = ctx.number("CHECKOUT_TIMEOUT_SECS", 1800)
    workdir = os.path.join(repo, ctx.get("TRAIN_WORKDIR") or "examples/nanogpt")
    python = os.path.join(venv, "bin", "python")
    if not shards.present(data_dir) and ctx.flag("DOWNLOAD_FINEWEB"):
        script = os.path.join(workdir, "data", "fineweb10B", "download.py")
        if not os.path.exists(script):
            raise WorkflowError(f"checkout: DOWNLOAD_FINEWEB=1 needs {script} in the repo; copy the shards into "
                                "DATA_DIR yourself", ExitCode.FAILED)
        from .probes import is_fuse

        staging = data_dir
        if is_fuse(data_dir):  # s3fs and friends break on append/resume: download on local disk first
            staging = expand("~/.cache/workflow/fineweb-staging")
            Context.progress(f"checkout: DATA_DIR is on a FUSE mount; staging the download in {staging}")
        Context.progress(f"checkout: downloading a FineWeb shard pair into {staging}")
        with Ticker(ctx, "checkout: FineWeb download", folder=staging):
            procs.check([python, script, "--out", staging], "FineWeb download",
                        "check the pod's network (huggingface.co)", cwd=workdir, timeout=timeout,
                        env=run_env(ctx))  # HF_TOKEN, HF_ENDPOINT, ... as for runs
        if staging != data_dir:
            os.makedirs(data_dir, exist_ok=True)
            for split_paths in shards.find_shards(staging).values():
                for path in split_paths:
                    target = os.path.join(data_dir, os.path.basename(path))
                    if not os.path.exists(target):
                        shutil.copyfile(path, target + ".partial")
                        os.replace(target + ".partial", target)
    if not shards.present(data_dir) and ctx.flag("DATA_BUILD_OFFLINE"):
        script = os.path.join(workdir, "data", "build_offline_shards.py")
        if not os.path.exists(script):
            raise WorkflowError(f"checkout: DATA_BUILD_OFFLINE=1 needs {script} in the repo", ExitCode.FAILED)
        Context.progress(f"checkout: building offline shards from Python's own source into {data_dir}")
        procs.check([python, script, "--out", data_dir], "building offline shards", "see the script's error",
                    cwd=workdir, timeout=timeout)
    result = shards.validate(data_dir)
    Context.progress(f"checkout: data OK in {data_dir}: {result['train_shards']} train + {result['val_shards']} val "
                     f"shards, {result['tokens']:,} tokens")
    return {"checked": True, "data_dir": data_dir, **result}


def preflight(ctx: Context) -> Optional[RepoState]:
    """Refusals that need no change on the pod come first, so a refused checkout changed nothing."""
    if not ctx.get("REPO_URL"):
        raise WorkflowError("checkout needs REPO_URL (the git URL to clone); set it in workflow.env", ExitCode.USAGE)
    if ctx.get("REPO_URL").startswith("-"):
        raise WorkflowError(f"REPO_URL {ctx.get('REPO_URL')[:60]!r} starts with '-'; give a git URL or a path",
                            ExitCode.USAGE)
    found = inspect_repo(ctx)
    venv = ctx.path("VENV_DIR")
    if os.path.exists(venv) and not os.path.exists(os.path.join(venv, VENV_MARKER)):
        raise WorkflowError(f"checkout: VENV_DIR {venv} exists but was not made by workflow.sh; it is left "
                            "alone: set VENV_DIR elsewhere or move it away", ExitCode.REFUSED)
    python_info(ctx.get("REMOTE_PYTHON_BIN") or "python3")
    return found


def checkout(ctx: Context) -> Dict[str, Any]:
    record = fsm.read_state(ctx.state_file)
    fsm.check_allowed(record, "checkout", ctx.enforce)
    if ctx.get("SWEEP_EXECUTOR") == "slurm":  # the login node must have the Slurm client commands
        from .executors.slurm_state import require_commands

        require_commands()
    found = preflight(ctx)
    ctx.sync_env()
    repo_info = update_repo(ctx, found)
    venv_info = ensure_venv(ctx)
    installed = pip_install(ctx, repo_info["repo"], venv_info["venv"])
    torch_info = check_torch(ctx, venv_info["venv"])
    from .tracking.setup import ensure_client

    tracking_info = ensure_client(ctx, venv_info["venv"])  # mlflow in the run venv when tracking is on
    data_info = ensure_data(ctx, repo_info["repo"], venv_info["venv"])
    runs.environment_provenance(venv_info["venv"])  # recorded now, so a sweep starts without that cost
    patched = " + local patch" if repo_info["local_patch"] else ""
    record = fsm.transition(ctx.state_file, "checkout",
                            f"checkout {repo_info['ref']} at {repo_info['sha'][:12]}{patched}", ctx.enforce)
    return {**repo_info, **venv_info, "pip": installed, **torch_info, "data": data_info, "state": record.state,
            **tracking_info,
            "agent_python": sys.version.split()[0]}

"""pod-status, bootstrap, checkout, fsm-status, fsm-reset, validate, print-resolved-env: on the
`local` target and over the real loopback sshd."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from conftest import REPO_ROOT, Pod, git, one_line_error, wait_until

from helpers.pod.shards import HEADER_INTS, MAGIC


def write_shard(path: Path, tokens: int = 1000) -> None:
    import struct

    header = [0] * HEADER_INTS
    header[0], header[1], header[2] = MAGIC, 1, tokens
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack(f"<{HEADER_INTS}i", *header) + bytes(2 * tokens))


def test_fresh_pod_status_and_state(pod: Pod):
    status = pod.wf("pod-status", "--json")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["tools"]["tmux"].startswith("tmux") and data["tools"]["git"].startswith("git version")
    assert data["gpus"] == [] and "nvidia-smi" in data["gpu_note"]
    assert data["workflow"]["state"] == "INIT"
    assert data["disks"]["outputs"]["free_gb"] > 0
    fsm_status = pod.wf("fsm-status", "--json")
    assert json.loads(fsm_status.stdout)["state"] == "INIT"
    assert not (pod.outputs / "_control" / "workflow_state.json").exists()  # read-only: no state written
    text = pod.wf("pod-status")
    assert "tmux" in text.stdout and "gpus:" in text.stdout and len(text.stdout.splitlines()) < 25


def test_bootstrap_checkout_to_checked_out(pod: Pod, source_repo: Path):
    pod.set(CHECK_DATA="1")
    write_shard(pod.root / "data" / "fineweb_train_000001.bin")
    write_shard(pod.root / "data" / "fineweb_val_000000.bin")
    boot = pod.wf("bootstrap")
    assert boot.returncode == 0, boot.stderr
    assert "bootstrap OK" in boot.stdout
    assert pod.wf("bootstrap").returncode == 0  # idempotent
    env_file = pod.root / "project.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert env_file.read_text().startswith("# written by workflow.sh")
    done = pod.wf("checkout")
    assert done.returncode == 0, done.stderr
    assert "checkout OK" in done.stdout and "torch" in done.stdout and "1+1 shards" in done.stdout
    sha = git(source_repo, "rev-parse", "HEAD")
    assert git(pod.root / "repo", "rev-parse", "HEAD") == sha
    venv_python = pod.root / "repo" / ".venv" / "bin" / "python"
    probe = subprocess.run([str(venv_python), "-c", "import torch; print(torch.__version__)"], text=True,
                           stdout=subprocess.PIPE)
    assert probe.returncode == 0 and probe.stdout.strip()
    fsm_status = json.loads(pod.wf("fsm-status", "--json").stdout)
    assert fsm_status["state"] == "CHECKED_OUT"
    assert [h["to"] for h in fsm_status["history"]] == ["BOOTSTRAPPED", "BOOTSTRAPPED", "CHECKED_OUT"]
    again = pod.wf("checkout", "--set", f"EXPECT_GIT_SHA={sha[:10]}")  # twice works; sha verified
    assert again.returncode == 0, again.stderr


def test_checkout_pull_request_ref_twice(local_pod: Pod, tmp_path: Path, source_repo: Path):
    upstream = tmp_path / "upstream"
    subprocess.run(["git", "clone", "-q", "--bare", str(source_repo), str(upstream)], check=True)
    work = tmp_path / "work"
    subprocess.run(["git", "clone", "-q", str(upstream), str(work)], check=True)
    (work / "feature.txt").write_text("pr\n")
    git(work, "add", "feature.txt")
    git(work, "commit", "-q", "-m", "feature")
    pr_sha = git(work, "rev-parse", "HEAD")
    git(work, "push", "-q", "origin", "HEAD:refs/pull/7/head")
    local_pod.set(REPO_URL=str(upstream), CHECKOUT_PR="pull/7/head", WF_FSM_ENFORCE="0")
    for _ in range(2):
        result = local_pod.wf("checkout")
        assert result.returncode == 0, result.stderr
        assert git(local_pod.root / "repo", "rev-parse", "HEAD") == pr_sha
    assert "PR 7" in result.stdout


def test_checkout_refuses_dirty_tree_unless_forced(local_pod: Pod):
    local_pod.set(WF_FSM_ENFORCE="0")
    assert local_pod.wf("checkout").returncode == 0
    readme = local_pod.root / "repo" / "README.md"
    readme.write_text("local edit\n")
    refused = local_pod.wf("checkout")
    assert refused.returncode == 7
    assert "uncommitted changes on the pod" in one_line_error(refused) and "README.md" in refused.stderr
    assert readme.read_text() == "local edit\n"  # nothing lost
    forced = local_pod.wf("checkout", "--set", "CHECKOUT_FORCE_CLEAN=1")
    assert forced.returncode == 0, forced.stderr
    assert readme.read_text() != "local edit\n"


def test_checkout_builds_offline_data_and_installs_requirements(local_pod: Pod):
    local_pod.set(WF_FSM_ENFORCE="0", CHECK_DATA="1", DATA_BUILD_OFFLINE="1",
                  PIP_INSTALL_ARGS="-r examples/nanogpt/requirements.txt")
    result = local_pod.wf("checkout", timeout=600)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (local_pod.root / "data").glob("*.bin")) == [
        "fineweb_train_000000.bin", "fineweb_val_000000.bin"]
    assert "pip install -r examples/nanogpt/requirements.txt" in result.stderr


def test_venv_recreate_only_rebuilds_our_own_venv(local_pod: Pod):
    local_pod.set(WF_FSM_ENFORCE="0")
    assert local_pod.wf("checkout").returncode == 0
    sentinel = local_pod.root / "repo" / ".venv" / "left-by-the-old-venv"
    sentinel.write_text("old")
    assert local_pod.wf("checkout", "--set", "VENV_RECREATE=1").returncode == 0
    assert not sentinel.exists() and (local_pod.root / "repo" / ".venv" / "pyvenv.cfg").is_file()
    foreign = local_pod.root / "foreign-venv"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    refused = local_pod.wf("checkout", "--set", f"VENV_DIR={foreign}", "--set", "VENV_RECREATE=1")
    assert refused.returncode == 7 and "not made by workflow.sh" in one_line_error(refused)  # before any change
    assert (foreign / "keep.txt").read_text() == "mine"


def test_fsm_reset_and_status_history(pod: Pod):
    reset = pod.wf("fsm-reset", "CHECKED_OUT", "--reason", "restored by hand")
    assert reset.returncode == 0, reset.stderr
    status = pod.wf("fsm-status")
    assert "state:    CHECKED_OUT" in status.stdout and "restored by hand" in status.stdout
    assert "sweep-start" in status.stdout  # what it allows next


def test_twenty_concurrent_cli_transitions(local_pod: Pod):
    def one(index: int) -> tuple[int, str]:
        result = local_pod.wf("fsm-reset", ["BOOTSTRAPPED", "CHECKED_OUT"][index % 2], "--reason", f"p{index}",
                              timeout=300)
        return result.returncode, result.stderr

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(20)))
    assert [code for code, _ in results] == [0] * 20, [err for _, err in results if err]
    data = json.loads((local_pod.outputs / "_control" / "workflow_state.json").read_text())
    assert sorted(h["reason"] for h in data["history"]) == sorted(f"p{i}" for i in range(20))


def test_validate_and_print_resolved_env(pod: Pod):
    pod.set(WANDB_API_KEY="super-secret-value", NCCL_DEBUG="INFO")
    valid = pod.wf("validate")
    assert valid.returncode == 0, valid.stderr
    assert "config OK" in valid.stdout and "sweep CSV OK" in valid.stdout
    shown = pod.wf("print-resolved-env")
    assert shown.returncode == 0
    assert "super-secret-value" not in shown.stdout + shown.stderr
    assert "WANDB_API_KEY=<set, hidden>" in shown.stdout
    assert "NCCL_DEBUG=INFO" in shown.stdout and "passed to runs" in shown.stdout
    data = json.loads(pod.wf("print-resolved-env", "--json").stdout)
    assert data["keys"]["TMUX_SOCKET"]["value"] == pod.socket
    assert data["keys"]["RUN_RETRIES"]["source"] == "default"
    assert not pod.root.joinpath("outputs").exists()  # validate/print touch nothing


def test_secrets_synced_to_pod_env_file_only(pod: Pod):
    pod.set(WANDB_API_KEY="super-secret-value")
    result = pod.wf("bootstrap", "--debug")
    assert result.returncode == 0, result.stderr
    assert "super-secret-value" not in result.stdout + result.stderr
    env_text = (pod.root / "project.env").read_text()
    assert "WANDB_API_KEY=super-secret-value" in env_text
    state_text = (pod.outputs / "_control" / "workflow_state.json").read_text()
    assert "super-secret-value" not in state_text
    mtime = (pod.root / "project.env").stat().st_mtime_ns
    assert pod.wf("bootstrap").returncode == 0
    assert (pod.root / "project.env").stat().st_mtime_ns == mtime  # unchanged: not rewritten


def test_dry_run_changes_nothing(pod: Pod):
    for args in (["bootstrap"], ["checkout"], ["fsm-reset", "CHECKED_OUT"]):
        result = pod.wf("--dry-run", *args)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip()
    assert not pod.root.joinpath("outputs").exists() and not (pod.root / "repo").exists()
    assert "git clone/fetch" in pod.wf("checkout", "--dry-run").stdout


def test_help_lists_every_command_and_command_help():
    from conftest import WORKFLOW

    env = {**os.environ, "WORKFLOW_VENV": os.environ.get("VIRTUAL_ENV", "") or __import__("sys").prefix}
    out = subprocess.run([str(WORKFLOW), "help"], text=True, stdout=subprocess.PIPE, env=env).stdout
    from helpers.cli import COMMANDS

    for command in COMMANDS:
        assert f"  {command.name}" in out
    one = subprocess.run([str(WORKFLOW), "task-run", "--help"], text=True, stdout=subprocess.PIPE, env=env)
    assert one.returncode == 0 and "--timeout-secs" in one.stdout


def test_checkout_file_url_and_a_non_default_branch(pod: Pod, tmp_path: Path, source_repo: Path):
    upstream = tmp_path / "upstream.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(source_repo), str(upstream)], check=True)
    work = tmp_path / "work"
    subprocess.run(["git", "clone", "-q", str(upstream), str(work)], check=True)
    git(work, "checkout", "-q", "-b", "exp")
    (work / "exp.txt").write_text("one\n")
    git(work, "add", "exp.txt")
    git(work, "commit", "-q", "-m", "exp one")
    git(work, "push", "-q", "origin", "exp")
    pod.set(REPO_URL=f"file://{upstream}", CHECKOUT_BRANCH="exp", WF_FSM_ENFORCE="0")
    first = pod.wf("checkout")
    assert first.returncode == 0, first.stderr
    pod_repo = pod.root / "repo"
    assert git(pod_repo, "rev-parse", "HEAD") == git(work, "rev-parse", "HEAD")
    assert (pod_repo / "exp.txt").read_text() == "one\n"
    (work / "exp.txt").write_text("two\n")
    git(work, "commit", "-q", "-am", "exp two")
    git(work, "push", "-q", "origin", "exp")
    second = pod.wf("checkout")  # an existing clone moves to the branch's new head
    assert second.returncode == 0, second.stderr
    assert git(pod_repo, "rev-parse", "HEAD") == git(work, "rev-parse", "HEAD")
    assert (pod_repo / "exp.txt").read_text() == "two\n"
    wrong = pod.wf("checkout", "--set", "CHECKOUT_BRANCH=no-such-branch")
    assert wrong.returncode != 0 and "no-such-branch" in wrong.stderr.splitlines()[-1]
    assert git(pod_repo, "rev-parse", "HEAD") == git(work, "rev-parse", "HEAD")  # nothing lost


def test_repo_url_that_looks_like_an_option_is_refused(local_pod: Pod):
    local_pod.set(REPO_URL="--upload-pack=touch /tmp/x", WF_FSM_ENFORCE="0")
    result = local_pod.wf("checkout")
    assert result.returncode == 2 and "starts with '-'" in one_line_error(result)
    assert not (local_pod.root / "repo").exists()


def test_pip_install_args_naming_a_missing_requirements_file(local_pod: Pod):
    local_pod.set(WF_FSM_ENFORCE="0", PIP_INSTALL_ARGS="-r nope/requirements.txt")  # not in this repo
    result = local_pod.wf("checkout")
    assert result.returncode == 1
    line = result.stderr.splitlines()[-1]
    assert "PIP_INSTALL_ARGS names nope/requirements.txt" in line and "PIP_INSTALL_ARGS=auto" in line


@contextlib.contextmanager
def fake_hub(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server speaking the hub's resolve URLs for a FineWeb shard pair: (HF_ENDPOINT, files)."""
    import functools
    import http.server
    import threading

    hub = tmp_path / "hub"
    served = hub / "datasets" / "kjj0" / "fineweb10B-gpt2" / "resolve" / "main"
    write_shard(served / "fineweb_val_000000.bin", tokens=500)
    write_shard(served / "fineweb_train_000001.bin", tokens=700)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(hub))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served
    finally:
        server.shutdown()
        server.server_close()


SHARD_PAIR = ["fineweb_train_000001.bin", "fineweb_val_000000.bin"]


def test_checkout_downloads_a_fineweb_pair_when_data_dir_is_empty(pod: Pod, tmp_path: Path):
    """DOWNLOAD_FINEWEB=1 against a local server speaking the hub's resolve URLs (HF_ENDPOINT, as for runs)."""
    with fake_hub(tmp_path) as (endpoint, served):
        pod.set(WF_FSM_ENFORCE="0", CHECK_DATA="1", DOWNLOAD_FINEWEB="1", HF_ENDPOINT=endpoint)
        result = pod.wf("checkout", timeout=300)
    assert result.returncode == 0, result.stderr
    assert "downloading a FineWeb shard pair" in result.stderr and "1+1 shards" in result.stdout
    assert "FUSE" not in result.stderr
    data = pod.root / "data"
    assert sorted(p.name for p in data.glob("*.bin")) == SHARD_PAIR
    assert (data / "fineweb_train_000001.bin").read_bytes() == (served / "fineweb_train_000001.bin").read_bytes()


def test_download_onto_a_fuse_data_dir_is_staged_on_local_disk(local_pod: Pod, tmp_path: Path):
    """DATA_DIR on a real FUSE mount (bindfs): the download goes to local disk first, then is copied over."""
    bindfs = shutil.which("bindfs")
    assert bindfs, "bindfs is required by this test (apt-get install bindfs); tests never skip"
    backing, mount = tmp_path / "bucket", local_pod.root / "data"
    backing.mkdir()
    mount.mkdir()
    subprocess.run([bindfs, str(backing), str(mount)], check=True)
    home = tmp_path / "home"
    home.mkdir()
    try:
        with fake_hub(tmp_path) as (endpoint, _):
            local_pod.set(WF_FSM_ENFORCE="0", CHECK_DATA="1", DOWNLOAD_FINEWEB="1", HF_ENDPOINT=endpoint)
            result = local_pod.wf("checkout", timeout=300, env={"HOME": str(home)})
        assert result.returncode == 0, result.stderr
        staging = home / ".cache" / "workflow" / "fineweb-staging"
        assert f"DATA_DIR is on a FUSE mount; staging the download in {staging}" in result.stderr
        assert sorted(p.name for p in staging.glob("*.bin")) == SHARD_PAIR
        assert sorted(p.name for p in backing.glob("*.bin")) == SHARD_PAIR  # copied through the mount
        assert not list(backing.glob("*.partial"))
    finally:
        subprocess.run(["umount", str(mount)], check=False)


# ----------------------------------------------------------------------------- local changes (issue 10)


def wf_from(tree: Path, pod: Pod, *args: str, timeout: float = 300,
            env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """workflow.sh run from the checkout ``tree`` (its project root), as a user who cloned the project there."""
    env = {**os.environ, **pod.extra_env, "WORKFLOW_ROOT": str(tree), "PYTHONPATH": str(REPO_ROOT),
           **(env_extra or {})}
    env.pop("WORKFLOW_PROFILE", None)
    return subprocess.run([sys.executable, "-m", "helpers.cli", "--env", str(pod.env_file), *args], env=env,
                          text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _executor_state(pod: Pod) -> str | None:
    campaigns = pod.outputs / "_campaigns"
    for campaign in campaigns.iterdir() if campaigns.is_dir() else []:
        with contextlib.suppress(OSError, ValueError):
            return str(json.loads((campaign / "executor.json").read_text()).get("state"))
    return None


def test_checkout_warns_about_local_changes_and_pushes_them_as_a_patch(pod: Pod, tmp_path: Path, source_repo: Path):
    work = tmp_path / "work"
    subprocess.run(["git", "clone", "-q", str(source_repo), str(work)], check=True)
    config = "tests/sweep_fixture/config/ok.py"
    original = (work / config).read_text()
    (work / config).write_text(original.replace("steps = 3", "steps = 2") + 'edited = "locally"\n')
    pod.set(WF_FSM_ENFORCE="0", TRAIN_WORKDIR="tests/sweep_fixture", SWEEP_CPU_SLOTS="1", RUN_STALL_SECS="60")
    pod_file = pod.root / "repo" / config

    plain = wf_from(work, pod, "checkout")  # the pod runs the commit: warned, with the file
    assert plain.returncode == 0, plain.stderr
    assert f"warning: the pod will not run your local changes to {config}" in plain.stderr
    assert "CHECKOUT_PUSH_LOCAL=1" in plain.stderr and pod_file.read_text() == original

    before = pod.snapshot()
    dry = wf_from(work, pod, "--set", "CHECKOUT_PUSH_LOCAL=1", "--dry-run", "checkout")
    assert dry.returncode == 0, dry.stderr
    planned = [line for line in dry.stdout.splitlines() if line.startswith("apply the local patch")]
    assert len(planned) == 1 and f"1 file(s) [{config}]" in planned[0], dry.stdout
    digest = planned[0].split("sha256 ")[1].split(";")[0]
    assert len(digest) == 64 and pod.snapshot() == before  # a dry run changes nothing

    pushed = wf_from(work, pod, "--set", "CHECKOUT_PUSH_LOCAL=1", "checkout")
    assert pushed.returncode == 0, pushed.stderr
    assert f"+ local patch (1 file(s), sha256 {digest})" in pushed.stdout
    assert "warning" not in pushed.stderr and pod_file.read_text() == (work / config).read_text()

    csv = tmp_path / "one.csv"
    csv.write_text("run_id,config,seed,overrides,notes,gpus\nlp-1,config/ok.py,1,,edited locally,1\n")
    started = wf_from(work, pod, "sweep-start", "--csv", str(csv))
    assert started.returncode == 0, started.stderr
    try:
        wait_until(lambda: _executor_state(pod) in ("finished", "stopped", "lost"), 300, interval=0.5,
                   what="the sweep to end")
    finally:
        pod.tmux("kill-server")
    run = pod.outputs / "lp-1"
    assert json.loads((run / "config.json").read_text())["edited"] == "locally"  # the pod ran the edited file
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    git_info = json.loads((run / "run_manifest.json").read_text())["git"]
    assert git_info["dirty"] is True and git_info["diff_sha256"] == digest
    assert git_info["git_sha"] == git(source_repo, "rev-parse", "HEAD")

    # a later checkout without the flag reverts the tool's own patch (the edit lives on locally) and warns again
    later = wf_from(work, pod, "checkout")
    assert later.returncode == 0, later.stderr
    assert "reverting the local patch an earlier CHECKOUT_PUSH_LOCAL=1 checkout applied" in later.stderr
    assert f"warning: the pod will not run your local changes to {config}" in later.stderr
    assert pod_file.read_text() == original and git(pod.root / "repo", "status", "--porcelain",
                                                    "--untracked-files=no") == ""


def test_local_patch_edited_on_the_pod_is_refused_and_an_ahead_head_is_named(local_pod: Pod, tmp_path: Path,
                                                                              source_repo: Path):
    work = tmp_path / "work"
    subprocess.run(["git", "clone", "-q", str(source_repo), str(work)], check=True)
    (work / "README.md").write_text("local edit\n")
    (work / "workflow.env").write_text(local_pod.env_file.read_text())  # the config file in the tree: never sent
    git(work, "add", "workflow.env")
    local_pod.env_file = work / "workflow.env"
    local_pod.set(WF_FSM_ENFORCE="0")
    pushed = wf_from(work, local_pod, "--set", "CHECKOUT_PUSH_LOCAL=1", "checkout")
    assert pushed.returncode == 0, pushed.stderr
    assert "+ local patch (1 file(s)" in pushed.stdout  # README.md only
    readme = local_pod.root / "repo" / "README.md"
    assert readme.read_text() == "local edit\n" and not (local_pod.root / "repo" / "workflow.env").exists()

    readme.write_text("edited on the pod\n")  # not the tool's patch any more: refused, nothing lost
    refused = wf_from(work, local_pod, "checkout")
    errors = [line for line in refused.stderr.splitlines() if line.startswith("workflow.sh checkout:")]
    assert refused.returncode == 7 and len(errors) == 1 and "edited on the pod since" in errors[0], refused.stderr
    assert readme.read_text() == "edited on the pod\n"
    assert wf_from(work, local_pod, "--set", "CHECKOUT_FORCE_CLEAN=1", "checkout").returncode == 0

    git(work, "commit", "-q", "-am", "not pushed")  # local HEAD is now ahead of REPO_URL
    planned = wf_from(work, local_pod, "--dry-run", "checkout")
    assert "is 1 commit(s) ahead of what the pod will check out, origin/main as last fetched" in planned.stdout
    ahead = wf_from(work, local_pod, "checkout")
    assert ahead.returncode == 0, ahead.stderr
    assert "is 1 commit(s) ahead of what the pod checked out" in ahead.stderr
    (work / "README.md").write_text("again\n")
    pod_head = git(local_pod.root / "repo", "rev-parse", "HEAD")
    stale = wf_from(work, local_pod, "--set", "CHECKOUT_PUSH_LOCAL=1", "checkout")
    assert stale.returncode == 1 and "push your commits" in stale.stderr.splitlines()[-1]
    assert "the pod tree was not changed" in stale.stderr.splitlines()[-1]
    assert git(local_pod.root / "repo", "rev-parse", "HEAD") == pod_head and readme.read_text() != "again\n"
    assert git(local_pod.root / "repo", "status", "--porcelain", "--untracked-files=no") == ""


def test_local_patch_holding_a_secret_is_refused(local_pod: Pod, tmp_path: Path, source_repo: Path):
    work = tmp_path / "work"
    subprocess.run(["git", "clone", "-q", str(source_repo), str(work)], check=True)
    secret = "hf_sekrit_value_1234567890"
    (work / "README.md").write_text(f"token {secret}\n")
    local_pod.set(WF_FSM_ENFORCE="0")
    for extra in ((), ("--dry-run",)):
        result = wf_from(work, local_pod, "--set", "CHECKOUT_PUSH_LOCAL=1", *extra, "checkout",
                         env_extra={"HF_TOKEN": secret})
        assert result.returncode == 2, result.stderr
        assert "README.md holds the value of HF_TOKEN" in one_line_error(result)
        assert secret not in result.stdout + result.stderr
    assert not (local_pod.root / "repo").exists()  # nothing happened on the pod

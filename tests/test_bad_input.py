"""Bad input through the real CLI: every case asserts the exit code, the one error line on stderr
and that nothing changed on the pod (every file and directory under the pod root, and the local
files beside the config: known_hosts, profiles, ssh_config).

Each case is one row of CASES: the state the pod is brought to first (a successful bootstrap, or
a fresh pod that only has the agent), config lines appended after that, files written, an extra
setup step, the command, the exit code and distinctive fragments of the error line. Most rows run
on the `local` target; the transport rows and a handful of pod-side ones run over the real sshd.

Failures that come only after checkout has cloned (missing torch, missing data, a corrupt shard,
REQUIRE_CUDA on this CPU host, EXPECT_GIT_SHA mismatch) are in test_checkout_failures_after_clone:
there the workflow state, the data and the config-independent files must stay as they were.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Pod, cleanup_pod, free_port, git, make_pod, one_line_error

from helpers.cli import COMMANDS_BY_NAME
from helpers.pod.shards import HEADER_INTS, MAGIC

# ----------------------------------------------------------------------------- helpers


def write_shard(path: Path, tokens: int = 1000, magic: int = MAGIC) -> None:
    import struct

    header = [0] * HEADER_INTS
    header[0], header[1], header[2] = magic, 1, tokens
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack(f"<{HEADER_INTS}i", *header) + bytes(2 * tokens))


def base_of(pod: Pod) -> Path:
    """The test's directory: the pod root, its workflow.env, known_hosts, ssh_config, profiles/."""
    return pod.env_file.parent


def tree(pod: Pod) -> dict[str, object]:
    """Everything under the test's directory (the pod root included), agent files excluded:
    files with size, mtime and content, directories by name."""
    found: dict[str, object] = {}
    for path in sorted(base_of(pod).rglob("*")):
        rel = str(path.relative_to(base_of(pod)))
        if "/_control/agent-" in f"/{rel}":
            continue
        if path.is_dir():
            found[rel + "/"] = "dir"
        elif path.is_file():
            st = path.stat()
            found[rel] = (st.st_size, st.st_mtime_ns, path.read_bytes())
    return found


def tmux_running(pod: Pod) -> bool:
    return pod.tmux("list-sessions").returncode == 0


def keygen(path: Path, passphrase: str = "") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", "other", "-f", str(path)],
                   check=True)
    return path


def state_file(pod: Pod) -> Path:
    return pod.outputs / "_control" / "workflow_state.json"


# -- setup steps, run after the baseline and before the "before" snapshot


def garbage_state(pod: Pod) -> None:
    state_file(pod).write_text('{"state": "BOOTSTRAPPED", oops this is not json\n')


def bogus_state_value(pod: Pod) -> None:
    state_file(pod).write_text(json.dumps({"state": "FLYING", "history": []}) + "\n")


def newer_schema_state(pod: Pod) -> None:
    data = json.loads(state_file(pod).read_text())
    data["schema_version"] = 99
    state_file(pod).write_text(json.dumps(data) + "\n")


def foreign_env_file(pod: Pod) -> None:
    (pod.root / "mine.env").write_text("MY_OWN=settings\n")


def non_git_repo(pod: Pod) -> None:
    (pod.root / "repo").mkdir()
    (pod.root / "repo" / "notes.txt").write_text("my notes, not a checkout\n")


def clone_of_other_repo(pod: Pod) -> None:
    repo = pod.root / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "remote", "add", "origin", "/elsewhere/other-project.git")


def foreign_venv(pod: Pod) -> None:
    (pod.root / "myvenv").mkdir()
    (pod.root / "myvenv" / "keep.txt").write_text("mine\n")


def sweep_running(pod: Pod) -> None:
    assert pod.wf("fsm-reset", "SWEEP_RUNNING", "--reason", "a sweep").returncode == 0


def wrong_host_key(pod: Pod) -> None:
    """Pin a different ed25519 key for the sshd's [host]:port (the pod was re-created, or a MITM)."""
    assert pod.sshd is not None
    key_type, key = keygen(base_of(pod) / "impostor_hostkey").with_suffix(".pub").read_text().split()[:2]
    (base_of(pod) / "known_hosts").write_text(f"[127.0.0.1]:{pod.sshd.port} {key_type} {key}\n")


def unauthorized_client_key(pod: Pod) -> None:
    keygen(base_of(pod) / "stranger_key")


# ----------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    name: str
    args: tuple[str, ...]
    code: int
    fragments: tuple[str, ...]
    config: tuple[str, ...] = ()  # lines appended to the pod's workflow.env after the baseline
    files: tuple[tuple[str, str], ...] = ()  # (path relative to the test's directory, content)
    setup: Callable[[Pod], None] | None = None
    # the pod before the case: "bootstrap" (after a successful bootstrap: state file, pod env file, agent),
    # "fresh" (the agent only: state INIT), "none" (an empty pod root: a config error must not reach the pod)
    baseline: str = "bootstrap"
    targets: tuple[str, ...] = ("local",)


BOTH = ("local", "ssh")
SSH = ("ssh",)
LOOP_PROFILES = (("profiles/a.env", "_BASE=b\nRUN_RETRIES=1\n"), ("profiles/b.env", "_BASE=a\n"))

CASES: tuple[Case, ...] = (
    # --- config: keys and values (workflow.env:<LINE> is the first appended line)
    Case("unknown-key-in-file", ("bootstrap",), 2,
         ("workflow.env:<LINE>: unknown key REQUIRE_CUDE; did you mean REQUIRE_CUDA?",),
         config=("REQUIRE_CUDE=1",)),
    Case("unknown-key-in-set", ("--set", "RUN_RETRYS=3", "bootstrap"), 2,
         ("--set: unknown key RUN_RETRYS; did you mean RUN_RETRIES?",), baseline="none"),
    Case("bad-bool", ("bootstrap",), 2,
         ("workflow.env:<LINE>: REQUIRE_CUDA='maybe' is not a boolean", "use 1 or 0"),
         config=("REQUIRE_CUDA=maybe",), baseline="none"),
    Case("bad-enum", ("--set", "RUN_OUT_MODE=fast", "bootstrap"), 2,
         ("RUN_OUT_MODE='fast' is not allowed; use one of: durable, local_sync",), baseline="none"),
    Case("bad-int", ("bootstrap",), 2, ("workflow.env:<LINE>: RUN_RETRIES='many' is not a whole number",),
         config=("RUN_RETRIES=many",), baseline="none"),
    Case("int-above-maximum", ("--set", "RUN_RETRIES=99", "bootstrap"), 2,
         ("RUN_RETRIES='99' is above the maximum 10",), baseline="none"),
    Case("int-below-minimum", ("fsm-status",), 2,
         ("workflow.env:<LINE>: SSH_CONNECT_TIMEOUT_SECS='0' is below the minimum 1",),
         config=("SSH_CONNECT_TIMEOUT_SECS=0",), baseline="none"),
    Case("float-not-positive", ("--set", "LIUM_TTL_HOURS=-1", "validate"), 2,
         ("LIUM_TTL_HOURS='-1' must be positive",), baseline="none"),
    Case("words-unbalanced-quote", ("checkout",), 2,
         ("PIP_INSTALL_ARGS=", "cannot be split into words", "balance the quotes"),
         config=("PIP_INSTALL_ARGS=\"-r 'req.txt\"",), baseline="none"),
    Case("malformed-line", ("bootstrap",), 2, ("workflow.env:<LINE>: cannot parse", "write KEY=VALUE"),
         config=("this line is not a binding",), baseline="none"),
    Case("bad-key-name-in-file", ("bootstrap",), 2, ("workflow.env:<LINE>: 'lower' is not a KEY name",),
         config=("lower=1",), baseline="none"),
    Case("reference-loop", ("bootstrap",), 2,
         ("${...} references form a loop: OPS_REMOTE_REPO -> DATA_DIR -> OPS_REMOTE_REPO",),
         config=("DATA_DIR=${OPS_REMOTE_REPO}/data", "OPS_REMOTE_REPO=${DATA_DIR}/repo"), baseline="none"),
    Case("set-without-equals", ("--set", "RUN_RETRIES", "bootstrap"), 2,
         ("--set 'RUN_RETRIES': expected KEY=VALUE",), baseline="none"),
    Case("set-bad-key-name", ("--set", "run-retries=3", "bootstrap"), 2, ("is not a KEY name",), baseline="none"),
    Case("outputs-dir-is-root", ("bootstrap",), 2,
         ("OPS_REMOTE_OUTPUTS_DIR='/' must be a directory of its own",), config=("OPS_REMOTE_OUTPUTS_DIR=/",),
         baseline="none"),
    Case("bad-tmux-socket", ("--set", "TMUX_SOCKET=a/b", "task-list"), 2, ("is not a socket name",), baseline="none"),
    Case("missing-config-file", ("fsm-status", "--env", "<BASE>/nope.env"), 2,
         ("config file <BASE>/nope.env not found",), baseline="none"),
    Case("fatal-patterns-file-missing", ("validate",), 2, ("cannot read TASK_FATAL_PATTERNS_FILE",),
         config=("TASK_FATAL_PATTERNS_FILE=<BASE>/no-such-patterns.txt",), baseline="none"),
    # --- profiles
    Case("profile-loop", ("--profile", "a", "bootstrap"), 2,
         ("profile loop: a -> b -> a", "remove one _BASE= line"), files=LOOP_PROFILES),
    Case("unknown-profile", ("--profile", "nope", "bootstrap"), 2,
         ("unknown profile 'nope'", "known profiles: a, b"), files=LOOP_PROFILES, baseline="none"),
    Case("unknown-key-in-profile", ("--profile", "typo", "bootstrap"), 2,
         ("profile typo (profiles/typo.env:2): unknown key RUN_RETRIS; did you mean RUN_RETRIES?",),
         files=(("profiles/typo.env", "SWEEP_CPU_SLOTS=2\nRUN_RETRIS=1\n"),), baseline="none"),
    Case("profile-base-missing", ("--profile", "child", "bootstrap"), 2,
         ("unknown profile 'ghost'", "profiles/ghost.env"),
         files=(("profiles/child.env", "_BASE=ghost\nRUN_RETRIES=1\n"),), baseline="none"),
    Case("profile-name-with-slash", ("--profile", "../etc", "bootstrap"), 2, ("invalid profile name '../etc'",),
         baseline="none"),
    # --- where the pod is
    Case("lium-target-and-host", ("pod-status",), 2,
         ("both LIUM_TARGET (workflow.env:<LINE>) and OPS_DEFAULT_HOST", "set only one"),
         config=("LIUM_TARGET=my-pod", "OPS_DEFAULT_HOST=root@127.0.0.1:2222"), baseline="none"),
    Case("host-port-out-of-range", ("pod-status",), 2,
         ("OPS_DEFAULT_HOST='root@127.0.0.1:70000' has a port outside 1-65535",),
         config=("OPS_DEFAULT_HOST=root@127.0.0.1:70000",), baseline="none"),
    Case("host-not-a-host", ("--set", "OPS_DEFAULT_HOST=root@bad host", "pod-status"), 2,
         ("is not a host; use local, an ~/.ssh/config alias or [user@]host[:port]",), baseline="none"),
    Case("proxyjump-alias", ("pod-status",), 2, ("ProxyJump for jumpy is not supported", "ProxyCommand"),
         config=("OPS_DEFAULT_HOST=jumpy", "SSH_CLIENT=paramiko"),
         files=(("ssh_config", "Host jumpy\n  HostName 127.0.0.1\n  ProxyJump bastion\n"),), baseline="none"),
    # --- checkout settings (refused before anything is touched)
    Case("missing-repo-url", ("checkout",), 2, ("checkout needs REPO_URL", "--set REPO_URL="),
         config=("REPO_URL=",), targets=SSH, baseline="none"),
    Case("branch-and-pr", ("checkout",), 2, ("CHECKOUT_PR='7' and CHECKOUT_BRANCH (workflow.env:<LINE>)",
                                             "are both set; set one"),
         config=("CHECKOUT_BRANCH=main", "CHECKOUT_PR=7")),
    Case("pr-garbage", ("--set", "CHECKOUT_PR=feature-x", "checkout"), 2,
         ("CHECKOUT_PR='feature-x' is not a pull request; use a number like 42 or pull/42/head",), baseline="none"),
    Case("sha-not-hex", ("--set", "EXPECT_GIT_SHA=not-a-sha", "checkout"), 2,
         ("EXPECT_GIT_SHA='not-a-sha' is not a commit sha; use 7-40 hex digits",), baseline="none"),
    # --- command line
    Case("json-unsupported", ("--json", "bootstrap"), 2, ("bootstrap has no --json output",)),
    Case("dry-run-read-only", ("--dry-run", "pod-status"), 2,
         ("pod-status changes nothing; --dry-run is for commands that do",), baseline="none"),
    Case("fsm-reset-unknown-state", ("fsm-reset", "NOPE"), 2,
         ("fsm-reset: unknown state 'NOPE'; use one of: INIT, POD_READY, BOOTSTRAPPED",)),
    Case("help-unknown-command", ("help", "nope"), 2, ("help: unknown command 'nope'; run workflow.sh help",),
         baseline="none"),
    Case("unknown-command", ("nope",), 2, ("unknown command 'nope'; workflow.sh help lists the commands",),
         baseline="none"),
    Case("task-id-with-slash", ("task-status", "a/b"), 2, ("invalid task id 'a/b'",), baseline="none"),
    Case("task-run-id-dotdot", ("task-run", "--id", "x..y", "--cmd", "touch <BASE>/ran"), 2,
         ("invalid task id 'x..y'", "without '..'")),
    Case("task-run-bad-env", ("task-run", "--id", "t1", "--env", "1BAD=x", "--cmd", "touch <BASE>/ran"), 2,
         ("--env '1BAD=x': expected NAME=VALUE",), baseline="none"),
    Case("task-logs-negative-lines", ("task-logs", "--id", "t1", "--lines", "-1"), 2,
         ("argument --lines: must be >= 0, got '-1'",), baseline="none"),
    Case("task-not-found", ("task-status", "ghost"), 5, ("no task 'ghost' on the pod",), targets=BOTH),
    Case("task-logs-not-found", ("task-logs", "--id", "ghost"), 5, ("no task 'ghost' on the pod",)),
    # --- workflow state
    Case("illegal-state-checkout-in-init", ("checkout",), 4,
         ("checkout is not allowed in state INIT", "allowed in: BOOTSTRAPPED, CHECKED_OUT",
          "next run: workflow.sh bootstrap"), baseline="fresh", targets=BOTH),
    Case("illegal-state-bootstrap-while-sweeping", ("bootstrap",), 4,
         ("bootstrap is not allowed in state SWEEP_RUNNING", "next run: workflow.sh sweep-status"),
         setup=sweep_running),
    Case("state-file-garbage-fsm-status", ("fsm-status",), 6,
         ("workflow state file <ROOT>/outputs/_control/workflow_state.json is corrupt",),
         setup=garbage_state, targets=BOTH),
    Case("state-file-garbage-bootstrap", ("bootstrap",), 6, ("workflow_state.json is corrupt",),
         setup=garbage_state),
    Case("state-file-bad-state-checkout", ("checkout",), 6,
         ("workflow_state.json is corrupt: state 'FLYING' is not one of", "fsm-reset STATE"),
         setup=bogus_state_value),
    Case("state-file-newer-schema", ("fsm-status",), 6, ("schema_version 99, newer than this tool's 1",),
         setup=newer_schema_state),
    # --- things on the pod the tool did not make
    Case("foreign-remote-env-file", ("bootstrap",), 7,
         ("REMOTE_ENV_PATH <ROOT>/mine.env exists and was not written by workflow.sh; it is left alone",),
         config=("REMOTE_ENV_PATH=<ROOT>/mine.env",), setup=foreign_env_file, targets=BOTH),
    Case("repo-dir-not-git", ("checkout",), 7,
         ("OPS_REMOTE_REPO <ROOT>/repo exists and is not a git checkout; it is left alone",),
         setup=non_git_repo, targets=BOTH),
    Case("repo-is-clone-of-other-url", ("checkout",), 7,
         ("is a clone of '/elsewhere/other-project.git', not REPO_URL",), setup=clone_of_other_repo),
    Case("foreign-venv-dir", ("checkout",), 7, ("VENV_DIR <ROOT>/myvenv exists but was not made by workflow.sh",),
         config=("VENV_DIR=<ROOT>/myvenv",), setup=foreign_venv),
    # --- the pod lacks something
    Case("remote-python-does-not-run", ("checkout",), 1, ("REMOTE_PYTHON_BIN '/nonexistent/python3' does not run",),
         config=("REMOTE_PYTHON_BIN=/nonexistent/python3",)),
    Case("bootstrap-script-missing", ("bootstrap",), 1,
         ("BOOTSTRAP_SCRIPT=<ROOT>/setup-pod.sh does not exist on the pod",),
         config=("BOOTSTRAP_SCRIPT=<ROOT>/setup-pod.sh",)),
    # --- transport
    Case("unreachable-host", ("fsm-status",), 3, ("cannot reach root@127.0.0.1:<CLOSED_PORT>",),
         config=("OPS_DEFAULT_HOST=root@127.0.0.1:<CLOSED_PORT>",), targets=SSH),
    Case("wrong-host-key", ("fsm-status",), 3,
         ("host key of root@127.0.0.1:<PORT> does not match the one pinned in <BASE>/known_hosts",
          "remove the old key: ssh-keygen -R '[127.0.0.1]:<PORT>' -f <BASE>/known_hosts"),
         setup=wrong_host_key, targets=SSH),
    Case("client-key-not-authorized", ("pod-status",), 3, ("cannot log in to root@127.0.0.1:<PORT>",
                                                           "check OPS_SSH_KEY"),
         config=("OPS_SSH_KEY=<BASE>/stranger_key",), setup=unauthorized_client_key, targets=SSH),
)


# issue 9 / issue 10: more config keys, command-line arguments and ids (each refused before the pod is touched)
MORE_CASES: tuple[Case, ...] = (
    # --- config keys
    Case("host-starts-with-dash-set", ("--set", "OPS_DEFAULT_HOST=-oProxyCommand=touch <BASE>/ran", "pod-status"), 2,
         ("--set: OPS_DEFAULT_HOST='-oProxyCommand=touch <BASE>/ran' cannot start with '-'",), baseline="none"),
    Case("host-starts-with-dash-file", ("pod-status",), 2,
         ("workflow.env:<LINE>: OPS_DEFAULT_HOST='-oProxyCommand' cannot start with '-'",),
         config=("OPS_DEFAULT_HOST=-oProxyCommand",), baseline="none"),
    Case("host-dash-validate", ("--set", "OPS_DEFAULT_HOST=-x", "validate"), 2, ("cannot start with '-'",),
         baseline="none"),
    Case("outputs-dir-dotdot-to-root", ("bootstrap",), 2,
         ("workflow.env:<LINE>: OPS_REMOTE_OUTPUTS_DIR='/tmp/..' resolves to '/'",),
         config=("OPS_REMOTE_OUTPUTS_DIR=/tmp/..",), baseline="none"),
    Case("outputs-dir-deep-dotdot", ("--set", "OPS_REMOTE_OUTPUTS_DIR=/tmp/a/b/../../..", "task-list"), 2,
         ("resolves to '/'", "must be a directory of its own"), baseline="none"),
    Case("outputs-dir-home-on-pod", ("--set", "OPS_DEFAULT_HOST=gpu-box", "--set", "OPS_REMOTE_OUTPUTS_DIR=~/",
                                     "validate"), 2, ("OPS_REMOTE_OUTPUTS_DIR='~/' resolves to '~'",),
         baseline="none"),
    Case("outputs-dir-above-home", ("--set", "OPS_DEFAULT_HOST=gpu-box", "--set", "OPS_REMOTE_OUTPUTS_DIR=~/x/../..",
                                    "validate"), 2, ("resolves to '~/..'",), baseline="none"),
    Case("sweep-csv-missing-set", ("--set", "SWEEP_CSV=<BASE>/nope.csv", "validate"), 2,
         ("--set: SWEEP_CSV <BASE>/nope.csv does not exist",), baseline="none"),
    Case("sweep-csv-missing-file", ("validate",), 2, ("workflow.env:<LINE>: SWEEP_CSV <BASE>/gone.csv does not exist",),
         config=("SWEEP_CSV=<BASE>/gone.csv",), baseline="none"),
    Case("validate-csv-missing", ("validate", "--csv", "<BASE>/nope.csv"), 2,
         ("<BASE>/nope.csv: cannot read it",), baseline="none"),
    Case("sweep-csv-bad-row-via-config", ("validate",), 2, ("bad.csv", "row 2"),
         config=("SWEEP_CSV=<BASE>/bad.csv",), files=(("bad.csv", "run_id,config,seed\na/b,c.py,1\n"),),
         baseline="none"),
    Case("bool-lium-yes", ("--set", "LIUM_YES=perhaps", "validate"), 2, ("LIUM_YES='perhaps' is not a boolean",),
         baseline="none"),
    Case("bool-fsm-enforce", ("task-list",), 2, ("workflow.env:<LINE>: WF_FSM_ENFORCE='2' is not a boolean",),
         config=("WF_FSM_ENFORCE=2",), baseline="none"),
    Case("int-with-unit", ("--set", "TASK_TIMEOUT_SECS=1h", "task-list"), 2,
         ("TASK_TIMEOUT_SECS='1h' is not a whole number",), baseline="none"),
    Case("int-float", ("--set", "RUN_RETRIES=1.5", "validate"), 2, ("RUN_RETRIES='1.5' is not a whole number",),
         baseline="none"),
    Case("kill-grace-above-maximum", ("--set", "TASK_KILL_GRACE_SECS=601", "task-list"), 2,
         ("TASK_KILL_GRACE_SECS='601' is above the maximum 600",), baseline="none"),
    Case("lost-after-below-minimum", ("task-list",), 2,
         ("workflow.env:<LINE>: TASK_LOST_AFTER_SECS='5' is below the minimum 10",),
         config=("TASK_LOST_AFTER_SECS=5",), baseline="none"),
    Case("backoff-negative", ("--set", "RUN_RETRY_BACKOFF_SECS=-1", "validate"), 2,
         ("RUN_RETRY_BACKOFF_SECS='-1' is below the minimum 0",), baseline="none"),
    Case("cpu-slots-zero", ("--set", "SWEEP_CPU_SLOTS=0", "validate"), 2,
         ("SWEEP_CPU_SLOTS='0' is below the minimum 1",), baseline="none"),
    Case("sweep-limit-zero", ("--set", "SWEEP_LIMIT=0", "validate"), 2, ("SWEEP_LIMIT='0' is below the minimum 1",),
         baseline="none"),
    Case("gpu-count-too-many", ("--set", "LIUM_GPU_COUNT=65", "validate"), 2,
         ("LIUM_GPU_COUNT='65' is above the maximum 64",), baseline="none"),
    Case("keepalive-too-long", ("--set", "SSH_KEEPALIVE_SECS=3601", "validate"), 2,
         ("SSH_KEEPALIVE_SECS='3601' is above the maximum 3600",), baseline="none"),
    Case("ttl-not-a-number", ("--set", "LIUM_TTL_HOURS=soon", "validate"), 2,
         ("LIUM_TTL_HOURS='soon' is not a number",), baseline="none"),
    Case("enum-wrong-case", ("--set", "RUN_OUT_MODE=Durable", "validate"), 2,
         ("RUN_OUT_MODE='Durable' is not allowed; use one of: durable, local_sync",), baseline="none"),
    Case("sweep-match-bad-regex", ("--set", "SWEEP_MATCH=(", "validate"), 2,
         ("SWEEP_MATCH='(' is not a regular expression",), baseline="none"),
    Case("train-workdir-absolute", ("--set", "TRAIN_WORKDIR=/srv/train", "validate"), 2,
         ("TRAIN_WORKDIR='/srv/train' must be a relative path inside the repo",), baseline="none"),
    Case("train-workdir-escapes", ("validate",), 2,
         ("workflow.env:<LINE>: TRAIN_WORKDIR='../elsewhere' must be a relative path inside the repo",),
         config=("TRAIN_WORKDIR=../elsewhere",), baseline="none"),
    Case("entrypoint-escapes", ("--set", "TRAIN_ENTRYPOINT=../../x.py", "validate"), 2,
         ("TRAIN_ENTRYPOINT='../../x.py' must be a relative path inside the repo",), baseline="none"),
    Case("tmux-session-colon", ("--set", "WF_TMUX_SESSION=a:b", "task-list"), 2,
         ("WF_TMUX_SESSION='a:b' is not a tmux session name",), baseline="none"),
    Case("tmux-sessions-equal", ("--set", "SWEEP_TMUX_SESSION=wf-tasks", "validate"), 2,
         ("SWEEP_TMUX_SESSION='wf-tasks' must differ from WF_TMUX_SESSION",), baseline="none"),
    Case("branch-starts-with-dash", ("--set", "CHECKOUT_BRANCH=--upload-pack=x", "checkout"), 2,
         ("CHECKOUT_BRANCH='--upload-pack=x' cannot start with '-'",), baseline="none"),
    Case("sha-too-short", ("--set", "EXPECT_GIT_SHA=abc", "checkout"), 2,
         ("EXPECT_GIT_SHA='abc' is not a commit sha",), baseline="none"),
    Case("pr-not-a-number", ("--set", "CHECKOUT_PR=pull/x/head", "checkout"), 2,
         ("CHECKOUT_PR='pull/x/head' is not a pull request",), baseline="none"),
    Case("host-port-zero", ("--set", "OPS_DEFAULT_HOST=root@127.0.0.1:0", "pod-status"), 2,
         ("has a port outside 1-65535",), baseline="none"),
    Case("pod-path-two-lines", ("--set", "DATA_DIR=<ROOT>/a\n<ROOT>/b", "validate"), 2,
         ("must be a single-line path",), baseline="none"),
    Case("unknown-secret-like-key", ("--set", "MY_SECRET=x", "validate"), 2,
         ("--set: unknown key MY_SECRET; workflow.env lists every key", "RUNENV_"), baseline="none"),
    Case("lowercase-key-in-file", ("validate",), 2, ("workflow.env:<LINE>: 'wandb_api_key' is not a KEY name",),
         config=("wandb_api_key=abc",), baseline="none"),
    Case("self-reference", ("validate",), 2, ("references form a loop: DATA_DIR -> DATA_DIR",),
         config=("DATA_DIR=${DATA_DIR}/x",), baseline="none"),
    Case("lium-volume-garbage", ("--set", "LIUM_VOLUME=garbage", "validate"), 2,
         ("LIUM_VOLUME must be 'id:<HUID or UUID>' or 'new:name=<NAME>",), baseline="none"),
    Case("fatal-patterns-unknown-class", ("validate",), 2, ("patterns.txt line 1: unknown failure class 'vm'",),
         config=("TASK_FATAL_PATTERNS_FILE=<BASE>/patterns.txt",), files=(("patterns.txt", "vm oops\n"),),
         baseline="none"),
    Case("ssh-key-missing", ("--set", "OPS_DEFAULT_HOST=gpu-box", "--set", "OPS_SSH_KEY=<BASE>/no-key", "validate"), 2,
         ("OPS_SSH_KEY <BASE>/no-key does not exist",), baseline="none"),
    Case("profiles-dir-from-set", ("--set", "WORKFLOW_PROFILES_DIR=<BASE>/myprofiles", "--profile", "gpu", "validate"),
         2, ("profile gpu (myprofiles/gpu.env:1): unknown key RUN_RETRYS; did you mean RUN_RETRIES?",),
         files=(("myprofiles/gpu.env", "RUN_RETRYS=1\n"),), baseline="none"),
    Case("profile-dot", ("--profile", ".", "validate"), 2, ("invalid profile name '.'",), baseline="none"),
    # --- command-line arguments
    Case("task-status-negative-lines", ("task-status", "--lines", "-3"), 2,
         ("argument --lines: must be >= 0, got '-3'",), baseline="none"),
    Case("task-logs-lines-not-a-number", ("task-logs", "--id", "t1", "--lines", "ten"), 2,
         ("argument --lines: expected a whole number >= 0, got 'ten'",), baseline="none"),
    Case("sweep-watch-negative-interval", ("sweep-watch", "--interval", "-5"), 2,
         ("argument --interval: must be a number of seconds > 0, got '-5'",), baseline="none"),
    Case("sweep-watch-zero-interval", ("sweep-watch", "--interval", "0"), 2, ("must be a number of seconds > 0",),
         baseline="none"),
    Case("sweep-watch-nan-interval", ("sweep-watch", "--interval", "nan"), 2, ("must be a number of seconds > 0",),
         baseline="none"),
    Case("task-run-negative-timeout", ("task-run", "--id", "t1", "--timeout-secs", "-1", "--cmd", "touch <BASE>/ran"),
         2, ("argument --timeout-secs: must be >= 0, got '-1'",), baseline="none"),
    Case("task-run-stall-not-a-number", ("task-run", "--id", "t1", "--stall-secs", "x", "--cmd", "touch <BASE>/ran"),
         2, ("argument --stall-secs: expected a whole number >= 0",), baseline="none"),
    Case("task-wait-negative-timeout", ("task-wait", "--id", "t1", "--timeout-secs", "-5"), 2,
         ("argument --timeout-secs: must be >= 0",), baseline="none"),
    Case("unknown-command-typo", ("sweep-statsu",), 2, ("unknown command 'sweep-statsu'; did you mean sweep-status",),
         baseline="none"),
    Case("unknown-option", ("task-list", "--bogus"), 2, ("unrecognized arguments: --bogus",), baseline="none"),
    Case("unknown-option-hides-value", ("task-list", "--sett", "WANDB_API_KEY=hunter2"), 2,
         ("unrecognized arguments: --sett WANDB_API_KEY=...",), baseline="none"),
    Case("task-run-without-cmd", ("task-run", "--id", "t1"), 2, ("the following arguments are required: --cmd",),
         baseline="none"),
    Case("fetch-run-without-run-id", ("fetch-run",), 2, ("the following arguments are required: run_id",),
         baseline="none"),
    Case("fsm-reset-without-state", ("fsm-reset",), 2, ("the following arguments are required: state",),
         baseline="none"),
    Case("json-unsupported-task-logs", ("--json", "task-logs", "--id", "t1"), 2, ("task-logs has no --json output",),
         baseline="none"),
    Case("dry-run-validate", ("--dry-run", "validate"), 2, ("validate changes nothing",), baseline="none"),
    Case("template-exists", ("sweep-csv-template", "--out", "<BASE>/workflow.env"), 7,
         ("<BASE>/workflow.env already exists; will not overwrite it",), baseline="none"),
    # --- ids
    Case("fetch-run-id-dotdot", ("fetch-run", "../x"), 2, ("invalid run id '../x'",), baseline="none"),
    Case("sweep-status-campaign-dotdot", ("sweep-status", "--campaign", "../x"), 2, ("invalid campaign id '../x'",),
         baseline="none"),
    Case("sweep-resume-campaign-slash", ("sweep-resume", "--campaign", "a/b"), 2, ("invalid campaign id 'a/b'",),
         baseline="none"),
    Case("fetch-all-campaign-dotdot", ("fetch-all", "--campaign", ".."), 2, ("invalid campaign id '..'",),
         baseline="none"),
    Case("fetch-all-artifacts-dir-is-a-file", ("fetch-all",), 2, ("LOCAL_ARTIFACTS_DIR=", "is a file, not a folder"),
         config=("LOCAL_ARTIFACTS_DIR=<BASE>/afile",), files=(("afile", "not a folder\n"),)),
    Case("sweep-stop-campaign-space", ("sweep-stop", "--campaign", "a b"), 2, ("invalid campaign id 'a b'",),
         baseline="none"),
    Case("task-kill-id-percent", ("task-kill", "--id", "a%20b"), 2, ("invalid task id 'a%20b'",), baseline="none"),
    Case("task-wait-id-dotdot", ("task-wait", "--id", ".."), 2, ("invalid task id '..'",), baseline="none"),
    Case("task-status-id-dash", ("task-status", "--id=-x"), 2, ("invalid task id '-x'",), baseline="none"),
    Case("task-status-empty-id", ("task-status", "--id="), 2, ("invalid task id ''",), baseline="none"),
    Case("task-logs-id-too-long", ("task-logs", "--id", "x" * 200), 2, ("invalid task id", "use 1-128 characters"),
         baseline="none"),
    Case("task-run-id-newline", ("task-run", "--id", "a\nb", "--cmd", "touch <BASE>/ran"), 2, ("invalid task id",),
         baseline="none"),
)
CASES = CASES + MORE_CASES


def _params() -> list[object]:
    return [pytest.param(case, target, id=f"{case.name}-{target}") for case in CASES for target in case.targets]


def test_table_is_big_enough():
    assert len(CASES) >= 100
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.fixture
def new_pod(tmp_path: Path, source_repo: Path, request: pytest.FixtureRequest) -> Iterator[Callable[[str], Pod]]:
    """conftest's local_pod/ssh_pod, chosen by a parameter, without their fixed 0.2 s teardown wait
    (these cases start no tmux server: run_case asserts that; a stray one is still killed)."""
    made: list[Pod] = []

    def make(kind: str) -> Pod:
        made.append(make_pod(kind, tmp_path, source_repo, request.getfixturevalue("sshd") if kind == "ssh" else None))
        return made[-1]

    yield make
    for pod in made:
        if tmux_running(pod):
            cleanup_pod(pod)


def run_case(case: Case, pod: Pod) -> None:
    """Set the case up, run it, check the exit code, the one line, and that nothing changed."""
    base = base_of(pod)
    if case.baseline == "bootstrap":
        ready = pod.wf("bootstrap")
        assert ready.returncode == 0, ready.stderr
        assert state_file(pod).is_file() and (pod.root / "project.env").is_file()
    elif case.baseline == "fresh":  # only the agent is uploaded
        ready = pod.wf("fsm-status")
        assert ready.returncode == 0 and "INIT" in ready.stdout, ready.stderr
    else:
        assert case.baseline == "none" and not any(pod.root.iterdir())
    assert not tmux_running(pod)

    words = {"<BASE>": str(base), "<ROOT>": str(pod.root), "<CLOSED_PORT>": str(free_port()),
             "<PORT>": str(pod.sshd.port) if pod.sshd else "?",
             "<LINE>": str(len(pod.env_file.read_text().splitlines()) + 1)}

    def fill(text: str) -> str:
        for word, value in words.items():
            text = text.replace(word, value)
        return text

    if case.config:
        with pod.env_file.open("a") as handle:
            handle.writelines(fill(line) + "\n" for line in case.config)
    for rel, content in case.files:
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_text(content)
    if case.setup is not None:
        case.setup(pod)

    before, before_tree = pod.snapshot(), tree(pod)
    started = time.monotonic()
    result = pod.wf(*[fill(arg) for arg in case.args], timeout=120)
    elapsed = time.monotonic() - started

    assert result.returncode == case.code, (result.returncode, result.stdout, result.stderr)
    line = one_line_error(result)
    command = next((arg for arg in case.args if arg in COMMANDS_BY_NAME), "")  # "workflow.sh COMMAND: ..."
    assert line.startswith(f"workflow.sh {command}: " if command else "workflow.sh"), line
    for fragment in case.fragments:
        assert fill(fragment) in line, (fill(fragment), line)
    assert "Traceback" not in result.stdout + result.stderr
    after, after_tree = pod.snapshot(), tree(pod)
    assert after == before
    assert after_tree == before_tree, sorted(set(after_tree.items()) ^ set(before_tree.items()), key=str)[:6]
    assert not tmux_running(pod)
    assert not (base / "ran").exists()
    if case.code == 3:
        assert elapsed < 20, f"a transport failure took {elapsed:.1f}s"


@pytest.mark.parametrize("case,target", _params())
def test_bad_input(case: Case, target: str, new_pod: Callable[[str], Pod]):
    run_case(case, new_pod(target))



# ----------------------------------------------------------------------------- after the clone


def python_without_torch(tmp_path: Path) -> str:
    """A python that has venv but no torch: the system python3 if it qualifies, else a bare venv."""
    probe = "import venv, ensurepip, importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"
    system = "/usr/bin/python3"
    if os.access(system, os.X_OK) and subprocess.run([system, "-c", probe]).returncode == 0:
        return system
    bare = tmp_path / "bare-venv"
    subprocess.run([os.path.realpath(sys.executable), "-m", "venv", "--without-pip", str(bare)],
                   check=True)
    python = str(bare / "bin" / "python")
    assert subprocess.run([python, "-c", "import torch"], stderr=subprocess.DEVNULL).returncode != 0
    return python


def test_checkout_failures_after_clone(local_pod: Pod, source_repo: Path, tmp_path: Path):
    """Checks that can only run after the clone fail with exit 1 and one line naming the check; the
    workflow state does not advance (state file byte-identical) and DATA_DIR is left as it was."""
    pod = local_pod
    pod.set(PIP_INSTALL_ARGS="auto")  # the fixture repo has no requirements.txt at its root: no pip run
    assert pod.wf("bootstrap").returncode == 0
    state_before = state_file(pod).read_bytes()
    data = pod.root / "data"
    data.mkdir()
    sha = git(source_repo, "rev-parse", "HEAD")
    wrong_sha = ("0" if sha[0] != "0" else "1") * 12
    no_torch = python_without_torch(tmp_path)

    def data_files() -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(data.iterdir())}

    def corrupt_shards() -> None:
        write_shard(data / "fineweb_train_000001.bin", magic=12345)
        write_shard(data / "fineweb_val_000000.bin")

    cases: list[tuple[str, tuple[str, ...], tuple[str, ...], Callable[[], None] | None]] = [
        ("sha mismatch", ("--set", f"EXPECT_GIT_SHA={wrong_sha}"),
         (f"HEAD of branch main is {sha[:12]}, but EXPECT_GIT_SHA is {wrong_sha}",), None),
        ("missing torch", ("--set", f"REMOTE_PYTHON_BIN={no_torch}", "--set", f"VENV_DIR={tmp_path}/notorch-venv"),
         ("torch check: the venv's python cannot import torch", "REMOTE_PYTHON_BIN"), None),
        ("cuda required", ("--set", "REQUIRE_CUDA=1"),
         ("CUDA check: torch", "sees no CUDA device", "set REQUIRE_CUDA=0"), None),
        ("missing data", ("--set", "CHECK_DATA=1", "--set", "DATA_BUILD_OFFLINE=0"),
         (f"data check: no fineweb_train_*.bin shard in DATA_DIR {data}", "CHECK_DATA=0 to skip"), None),
        ("corrupt shard", ("--set", "CHECK_DATA=1", "--set", "DATA_BUILD_OFFLINE=0"),
         ("fineweb_train_000001.bin: bad magic 12345 (expected 20240520): not a FineWeb shard",), corrupt_shards),
    ]
    for what, args, fragments, prepare in cases:
        if prepare is not None:
            prepare()
        shards = data_files()
        result = pod.wf(*args, "checkout", timeout=300)
        assert result.returncode == 1, (what, result.stderr)
        line = error_line(result.stderr)
        assert line.startswith("workflow.sh checkout: ") and not line.startswith(
            "workflow.sh checkout: checkout: "), (what, line)  # the command is named once
        for fragment in fragments:
            assert fragment in line, (what, fragment, line)
        assert state_file(pod).read_bytes() == state_before, what
        assert data_files() == shards, what
        assert git(pod.root / "repo", "rev-parse", "HEAD") == sha
    assert json.loads(pod.wf("fsm-status", "--json").stdout)["state"] == "BOOTSTRAPPED"


def error_line(stderr: str) -> str:
    """checkout reports progress lines first ("checkout: cloning ..."); the error is one line, the
    last one, and the only one that starts with 'workflow.sh'."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("workflow.sh")]
    assert errors == lines[-1:], lines
    return lines[-1]


# ----------------------------------------------------------------------------- more


def test_unreachable_host_fails_fast_without_touching_known_hosts(ssh_pod: Pod):
    """A closed port with a long connect timeout: refused at once, not after the timeout."""
    port = free_port()
    ssh_pod.set(SSH_CONNECT_TIMEOUT_SECS="60")
    started = time.monotonic()
    result = ssh_pod.wf("--set", f"OPS_DEFAULT_HOST=root@127.0.0.1:{port}", "pod-status", timeout=60)
    assert time.monotonic() - started < 20
    assert result.returncode == 3 and f"cannot reach root@127.0.0.1:{port}" in one_line_error(result)
    assert not (base_of(ssh_pod) / "known_hosts").exists()


def test_pip_install_args_none_means_nothing(local_pod: Pod):
    """Empty means the default (like every key); `none` installs nothing."""
    local_pod.set(PIP_INSTALL_ARGS="")
    data = json.loads(local_pod.wf("print-resolved-env", "--json").stdout)
    assert data["keys"]["PIP_INSTALL_ARGS"]["value"] == "-r examples/nanogpt/requirements.txt"
    local_pod.set(PIP_INSTALL_ARGS="none")
    assert "no pip install (PIP_INSTALL_ARGS=none)" in local_pod.wf("checkout", "--dry-run").stdout

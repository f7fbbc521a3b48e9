"""Config: workflow.env parsing, ${VAR} references, profiles with inheritance, --set, typing, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.config import ConfigRequest, load_config, redact
from helpers.errors import ExitCode, WorkflowError
from helpers.keys import KEYS

REPO_ROOT = Path(__file__).resolve().parents[1]


def load(tmp_path: Path, text: str, *overrides: str, profile: str | None = None, environ: dict | None = None):
    env_file = tmp_path / "workflow.env"
    env_file.write_text(text)
    return load_config(ConfigRequest(project_root=REPO_ROOT, env_file=env_file, profile=profile,
                                     overrides=tuple(overrides)), environ=environ or {})


def error_of(tmp_path: Path, text: str, *overrides: str, **kw) -> WorkflowError:
    with pytest.raises(WorkflowError) as info:
        load(tmp_path, text, *overrides, **kw)
    assert info.value.code == ExitCode.USAGE
    assert "\n" not in info.value.message
    return info.value


def test_tracked_workflow_env_lists_every_key_with_a_comment():
    text = (REPO_ROOT / "workflow.env").read_text()
    lines = text.splitlines()
    for key in KEYS:
        matching = [i for i, line in enumerate(lines) if line.startswith(f"{key.name}=")]
        assert len(matching) == 1, key.name
        assert lines[matching[0] - 1].startswith("# "), f"{key.name} has no one-line comment"


def test_fresh_clone_defaults_run_on_local_inside_the_checkout():
    cfg = load_config(ConfigRequest(project_root=REPO_ROOT), environ={})
    assert cfg.target == "local"
    for key in ("OPS_REMOTE_OUTPUTS_DIR", "OPS_REMOTE_REPO", "REMOTE_ENV_PATH", "DATA_DIR", "WF_STATE_FILE"):
        assert cfg.text(key).startswith(str(REPO_ROOT / ".workflow")), key
    assert cfg["REQUIRE_CUDA"] is False
    assert cfg.text("REPO_URL") == str(REPO_ROOT)
    assert cfg.source("REQUIRE_CUDA").startswith("default (local target)")


def test_pod_defaults_on_ssh_target(tmp_path):
    cfg = load(tmp_path, "OPS_DEFAULT_HOST=gpu-box\n")
    assert cfg.target == "ssh"
    assert cfg.text("OPS_REMOTE_OUTPUTS_DIR") == "~/workflow/outputs"
    assert cfg.text("REMOTE_ENV_PATH") == "/mnt/project.env"
    assert cfg["REQUIRE_CUDA"] is True
    assert cfg.text("WF_STATE_FILE") == "~/workflow/outputs/_control/workflow_state.json"


def test_references_types_and_sources(tmp_path):
    cfg = load(tmp_path, "OPS_DEFAULT_HOST=root@10.0.0.5:2200\nOPS_REMOTE_REPO=/srv/code\n"
                         "DATA_DIR=${OPS_REMOTE_REPO}/data\nRUN_RETRIES=5\nSWEEP_FAIL_FAST=yes\n"
                         "OPS_REMOTE_OUTPUTS_DIR='${LITERAL}'\nLOCAL_ARTIFACTS_DIR=${MY_ROOT:-/tmp/a}/art\n")
    assert cfg.text("DATA_DIR") == "/srv/code/data"
    assert cfg["RUN_RETRIES"] == 5 and cfg["SWEEP_FAIL_FAST"] is True
    assert cfg.text("OPS_REMOTE_OUTPUTS_DIR") == "${LITERAL}"
    assert cfg.text("LOCAL_ARTIFACTS_DIR") == "/tmp/a/art"
    assert cfg.source("RUN_RETRIES") == "workflow.env:4"


def test_environment_feeds_references_but_does_not_override_keys(tmp_path):
    cfg = load(tmp_path, "DATA_DIR=${SCRATCH}/data\n", environ={"SCRATCH": "/scratch", "RUN_RETRIES": "9"})
    assert cfg.text("DATA_DIR") == "/scratch/data"
    assert cfg["RUN_RETRIES"] == 2


def test_set_overrides_everything_and_is_typed(tmp_path):
    cfg = load(tmp_path, "RUN_RETRIES=3\n", "RUN_RETRIES=7", "RUN_OUT_MODE=local_sync")
    assert cfg["RUN_RETRIES"] == 7 and cfg.source("RUN_RETRIES") == "--set"
    assert cfg["RUN_OUT_MODE"] == "local_sync"


def test_profile_chain_base_first(tmp_path):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "base.env").write_text("RUN_RETRIES=4\nSWEEP_CPU_SLOTS=2\n")
    (profiles / "gpu8.env").write_text("_BASE=base\nSWEEP_CPU_SLOTS=8\n")
    cfg = load(tmp_path, "RUN_RETRIES=1\nSWEEP_CPU_SLOTS=1\n", profile="gpu8")
    assert cfg["RUN_RETRIES"] == 4 and cfg["SWEEP_CPU_SLOTS"] == 8
    assert cfg.source("SWEEP_CPU_SLOTS").startswith("profile gpu8 (profiles/gpu8.env:2)")
    assert cfg.source("RUN_RETRIES").startswith("profile base")


def test_profile_from_environment_variable(tmp_path):
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "fast.env").write_text("RUN_RETRIES=0\n")
    cfg = load(tmp_path, "", environ={"WORKFLOW_PROFILE": "fast"})
    assert cfg.profile == "fast" and cfg["RUN_RETRIES"] == 0


def test_secrets_come_from_environment_and_are_redacted(tmp_path):
    cfg = load(tmp_path, "", environ={"WANDB_API_KEY": "sekrit-123"})
    assert cfg.text("WANDB_API_KEY") == "sekrit-123" and cfg.source("WANDB_API_KEY") == "environment"
    assert "WANDB_API_KEY" not in cfg.pod_values(include_secrets=False)
    assert cfg.pod_values(include_secrets=True)["WANDB_API_KEY"] == "sekrit-123"
    assert redact("WANDB_API_KEY", "sekrit-123") == "<set, hidden>"
    assert redact("HF_TOKEN", "") == ""


def test_run_variables_are_accepted_and_reach_the_pod_env_file(tmp_path):
    from helpers.pod.context import Context, run_env

    cfg = load(tmp_path, "NCCL_DEBUG=INFO\nWANDB_PROJECT=demo\nRUNENV_MY_FLAG=on\n", environ={"HF_TOKEN": "t0k"})
    values = cfg.pod_values(include_secrets=True)
    assert values["NCCL_DEBUG"] == "INFO" and values["WANDB_PROJECT"] == "demo"
    env_file = tmp_path / "pod.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items() if "\n" not in v and " " not in v))
    env = run_env(Context({**values, "REMOTE_ENV_PATH": str(env_file)}))
    assert env["NCCL_DEBUG"] == "INFO" and env["MY_FLAG"] == "on" and env["HF_TOKEN"] == "t0k"
    assert "RUNENV_MY_FLAG" not in env and "OPS_DEFAULT_HOST" not in env


@pytest.mark.parametrize("text,overrides,fragment", [
    ("REQUIRE_CUDE=1\n", (), "unknown key REQUIRE_CUDE; did you mean REQUIRE_CUDA?"),
    ("REQUIRE_CUDA=maybe\n", (), "workflow.env:1: REQUIRE_CUDA='maybe' is not a boolean"),
    ("RUN_OUT_MODE=sync\n", (), "use one of: durable, local_sync"),
    ("RUN_RETRIES=many\n", (), "RUN_RETRIES='many' is not a whole number"),
    ("RUN_RETRIES=99\n", (), "above the maximum 10"),
    ("", ("RUN_RETRIES",), "expected KEY=VALUE"),
    ("", ("lower=1",), "is not a KEY name"),
    ("OPS_DEFAULT_HOST=bad host!\n", (), "is not a host"),
    ("OPS_DEFAULT_HOST=h:99999\n", (), "port outside 1-65535"),
    ("LIUM_TARGET=pod1\nOPS_DEFAULT_HOST=other\n", (), "set only one"),
    ("CHECKOUT_BRANCH=main\nCHECKOUT_PR=3\n", (), "are both set"),
    ("CHECKOUT_PR=abc\n", (), "is not a pull request"),
    ("EXPECT_GIT_SHA=xyz\n", (), "is not a commit sha"),
    ("WF_TMUX_SESSION=a:b\n", (), "is not a tmux session name"),
    ("SWEEP_MATCH=((\n", (), "is not a regular expression"),
    ("TRAIN_WORKDIR=../x\n", (), "must be a relative path inside the repo"),
    ("A=${B}\nB=${A}\n", (), "unknown key A"),
    ("DATA_DIR=${OPS_REMOTE_REPO}\nOPS_REMOTE_REPO=${DATA_DIR}\n", (), "references form a loop"),
    ("this is not a binding\n", (), "workflow.env:1: cannot parse"),
])
def test_bad_values_name_key_file_and_allowed_values(tmp_path, text, overrides, fragment):
    error = error_of(tmp_path, text, *overrides)
    assert fragment in error.message


def test_profile_errors(tmp_path):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "a.env").write_text("_BASE=b\n")
    (profiles / "b.env").write_text("_BASE=a\n")
    assert "profile loop: a -> b -> a" in error_of(tmp_path, "", profile="a").message
    message = error_of(tmp_path, "", profile="nope").message
    assert "unknown profile 'nope'" in message and "known profiles: a, b" in message
    (profiles / "c.env").write_text("RUN_RETRIS=1\n")
    assert "(profiles/c.env:1): unknown key RUN_RETRIS" in error_of(tmp_path, "", profile="c").message


def test_missing_config_file(tmp_path):
    with pytest.raises(WorkflowError) as info:
        load_config(ConfigRequest(project_root=REPO_ROOT, env_file=tmp_path / "nope.env"), environ={})
    assert info.value.code == ExitCode.USAGE and "not found" in info.value.message


def test_require_names_the_key(tmp_path):
    cfg = load(tmp_path, "OPS_DEFAULT_HOST=gpu\n")
    with pytest.raises(WorkflowError) as info:
        cfg.require("checkout", "REPO_URL")
    assert "checkout needs REPO_URL" in info.value.message and info.value.code == ExitCode.USAGE


def test_keys_that_only_look_secret_are_sent(tmp_path):
    cfg = load(tmp_path, "MY_API_KEY=x\n".replace("MY_API_KEY", "WANDB_ENTITY_KEY"))
    values = cfg.pod_values(include_secrets=False)
    assert values["OOM_BATCH_KEY"] == "batch_size" and values["OOM_ACCUM_KEY"] == "gradient_accumulation_steps"
    assert "WANDB_ENTITY_KEY" not in values  # a run variable named like a secret stays one


def test_profile_with_a_misspelt_base_line_is_an_error(tmp_path):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "a.env").write_text("_BAES=b\n")  # must not be silently dropped
    message = error_of(tmp_path, "", profile="a").message
    assert "profiles/a.env:1" in message and "'_BAES' is not a KEY name" in message


def test_set_with_a_bad_key_never_echoes_the_value(tmp_path):
    message = error_of(tmp_path, "", "bad-key=hunter2-secret").message
    assert "'bad-key' is not a KEY name" in message and "hunter2-secret" not in message


def test_set_before_and_after_the_command_both_count():
    from helpers.cli import build_parser, main

    parser = build_parser()
    options = parser.parse_args(["--set", "RUN_RETRIES=5", "print-resolved-env", "--set", "SWEEP_LIMIT=3"])
    assert options.overrides == ["RUN_RETRIES=5"] and options.sub_overrides == ["SWEEP_LIMIT=3"]
    import contextlib
    import io
    import json

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["--set", "RUN_RETRIES=5", "print-resolved-env", "--json", "--set", "SWEEP_LIMIT=3",
                     "--env", str(REPO_ROOT / "workflow.env")])
    assert code == 0
    keys = json.loads(out.getvalue())["keys"]
    assert keys["RUN_RETRIES"]["value"] == "5" and keys["RUN_RETRIES"]["source"] == "--set"
    assert keys["SWEEP_LIMIT"]["value"] == "3" and keys["SWEEP_LIMIT"]["source"] == "--set"


def test_whole_number_error_names_the_allowed_range(tmp_path):
    message = error_of(tmp_path, "SWEEP_CPU_SLOTS=two\n").message
    assert "SWEEP_CPU_SLOTS='two' is not a whole number; use one >= 1" in message


def test_validate_checks_the_lium_volume_grammar(tmp_path):
    import subprocess
    import sys

    from conftest import WORKFLOW

    env_file = tmp_path / "workflow.env"
    env_file.write_text("LIUM_VOLUME=size:100G\n")
    env = {"PATH": "/usr/bin:/bin", "WORKFLOW_VENV": sys.prefix, "HOME": str(tmp_path)}
    result = subprocess.run([str(WORKFLOW), "--env", str(env_file), "validate"], text=True, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert "workflow.env:1: LIUM_VOLUME must be 'id:<HUID or UUID>'" in result.stderr.strip().splitlines()[-1]


def test_public_names_stay_importable_from_helpers_config():
    import helpers.config as config
    import helpers.config_layers as layers

    for name in ("Config", "ConfigRequest", "Setting", "TargetKind", "is_secret", "load_config", "redact"):
        assert hasattr(config, name), name
    assert config.Setting is layers.Setting


def test_set_without_equals_never_echoes_what_may_be_a_secret(tmp_path):
    message = error_of(tmp_path, "", "WANDB_API_KEY:hunter2-secret").message
    assert "expected KEY=VALUE" in message and "hunter2-secret" not in message


def test_empty_secret_in_file_never_hides_the_exported_one(tmp_path):
    """The shipped workflow.env has `WANDB_API_KEY=` and `HF_TOKEN=`: the shell's export wins."""
    cfg = load(tmp_path, "WANDB_API_KEY=\nHF_TOKEN=\nHF_HUB_TOKEN=\n",
               environ={"WANDB_API_KEY": "sekrit-123", "HF_TOKEN": "t0k", "HF_HUB_TOKEN": "hub"})
    values = cfg.pod_values(include_secrets=True)
    assert values["WANDB_API_KEY"] == "sekrit-123" and values["HF_TOKEN"] == "t0k" and values["HF_HUB_TOKEN"] == "hub"
    assert cfg.source("WANDB_API_KEY") == "environment, workflow.env:1 left empty"
    assert cfg.source("HF_HUB_TOKEN") == "environment, workflow.env:3 left empty"


def test_shipped_workflow_env_passes_exported_secrets():
    cfg = load_config(ConfigRequest(project_root=REPO_ROOT), environ={"WANDB_API_KEY": "k", "HF_TOKEN": "t"})
    assert cfg.text("WANDB_API_KEY") == "k" and cfg.text("HF_TOKEN") == "t"
    assert cfg.source("WANDB_API_KEY").startswith("environment, workflow.env:")


def test_empty_keys_are_credited_the_same_way(tmp_path):
    """Every key left empty in a file: 'default, FILE:N left empty'; keys not in the file: 'default'."""
    cfg = load(tmp_path, "OPS_SSH_KEY=\nWANDB_API_KEY=\nNCCL_DEBUG=\n")
    assert cfg.source("OPS_SSH_KEY") == "default, workflow.env:1 left empty"
    assert cfg.source("WANDB_API_KEY") == "default, workflow.env:2 left empty"
    assert cfg.source("NCCL_DEBUG") == "default, workflow.env:3 left empty"
    assert cfg.source("LIUM_TARGET") == "default"
    assert cfg.source("WANDB_API_KEY") != "environment"


def test_a_task_on_the_pod_sees_the_exported_secret(local_pod):
    """End to end: `WANDB_API_KEY=` in the file, the key exported in the shell, a task prints its hash."""
    import hashlib

    local_pod.set(WANDB_API_KEY="", HF_TOKEN="")
    env = {"WANDB_API_KEY": "sekrit-wandb-42", "HF_TOKEN": "hf-tok-7"}
    assert local_pod.wf("bootstrap", env=env).returncode == 0
    cmd = 'printf %s "$WANDB_API_KEY" | sha256sum; printf %s "$HF_TOKEN" | sha256sum'
    started = local_pod.wf("task-run", "--id", "secret-seen", "--cmd", cmd, env=env)
    assert started.returncode == 0, started.stderr
    assert local_pod.wf("task-wait", "--id", "secret-seen", env=env).returncode == 0
    out = local_pod.wf("task-logs", "--id", "secret-seen", env=env).stdout
    for secret in env.values():
        assert hashlib.sha256(secret.encode()).hexdigest() in out
    shown = local_pod.wf("print-resolved-env", env=env)
    assert "sekrit-wandb-42" not in shown.stdout + shown.stderr
    line = next(x for x in shown.stdout.splitlines() if x.startswith("WANDB_API_KEY="))
    assert "<set, hidden>" in line and "# environment, workflow.env:" in line and "left empty" in line


# ----------------------------------------------------------------------------- through the CLI

WORKFLOW = REPO_ROOT / "infra_scripts" / "workflow.sh"


def cli(*args: str, cwd: Path | None = None, env: dict | None = None):
    import os
    import subprocess
    import sys

    full = {**os.environ, "WORKFLOW_VENV": sys.prefix, **(env or {})}
    full.pop("WORKFLOW_PROFILE", None)
    return subprocess.run([str(WORKFLOW), *args], cwd=cwd, env=full, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=60)


def test_rsync_ssh_ends_options_before_the_host(ssh_pod, tmp_path):
    """rsync appends the host to `-e` ssh argv: after "--" a host is never an option (and it still works)."""
    import shlex
    import subprocess

    from helpers.session import make_transport

    cfg = load_config(ConfigRequest(project_root=REPO_ROOT, env_file=ssh_pod.env_file), environ={})
    transport = make_transport(cfg)
    shell = transport.rsync_shell()
    assert shell is not None and shell[-1] == "--"
    (ssh_pod.root / "f.txt").write_text("hello\n")
    known = cfg.local_path("OPS_KNOWN_HOSTS")
    assert known is not None
    assert ssh_pod.sshd is not None
    ssh_pod.sshd.pinned_known_hosts(known)
    done = subprocess.run(["rsync", "-a", "-e", shlex.join(shell), f"{transport.rsync_host()}:{ssh_pod.root}/f.txt",
                           str(tmp_path / "copy.txt")], text=True, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "copy.txt").read_text() == "hello\n"


def test_profile_that_leaves_the_target_empty_warns(tmp_path):
    (tmp_path / "workflow.env").write_text(f"WORKFLOW_PROFILES_DIR={REPO_ROOT}/profiles\n")
    result = cli("--env", str(tmp_path / "workflow.env"), "--profile", "lium-h100", "validate")
    assert result.returncode == 0, result.stderr
    assert "target: local" in result.stdout
    assert "warning: profile lium-h100 leaves the target empty" in result.stderr
    quiet = cli("--env", str(tmp_path / "workflow.env"), "--profile", "lium-h100", "--set", "LIUM_TARGET=my-pod",
                "--set", "LIUM_API_KEY=k", "validate")
    assert "warning" not in quiet.stderr


def test_validate_says_where_the_csv_came_from_and_checks_it(tmp_path):
    (tmp_path / "workflow.env").write_text("")
    result = cli("--env", str(tmp_path / "workflow.env"), "validate")
    assert result.returncode == 0 and "sweep CSV OK:" in result.stdout and "SWEEP_CSV, default" in result.stdout
    missing = cli("--env", str(tmp_path / "workflow.env"), "--set", "SWEEP_CSV=/nonexistent.csv", "validate")
    assert missing.returncode == 2 and "SWEEP_CSV /nonexistent.csv does not exist" in missing.stderr
    assert "config OK" not in missing.stdout


def test_close_key_suggestions_only(tmp_path):
    message = error_of(tmp_path, "", "MY_SECRET=x").message
    assert "did you mean" not in message and "TMUX_SOCKET" not in message
    assert "did you mean RUN_RETRIES?" in error_of(tmp_path, "", "RUN_RETRYS=1").message


def test_set_profiles_dir_is_honoured_by_profile(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "fast.env").write_text("RUN_RETRIES=7\n")
    cfg = load(tmp_path, "", f"WORKFLOW_PROFILES_DIR={mine}", profile="fast")
    assert cfg["RUN_RETRIES"] == 7 and cfg.source("RUN_RETRIES").startswith("profile fast")


def test_unknown_command_suggests_close_ones_only():
    result = cli("sweep-stauts")
    assert result.returncode == 2
    line = result.stderr.strip()
    assert line.startswith("workflow.sh: unknown command 'sweep-stauts'; did you mean sweep-status"), line
    assert "fetch-all" not in line and "\n" not in line


def test_pod_paths_are_normalised(tmp_path):
    cfg = load(tmp_path, "OPS_DEFAULT_HOST=gpu-box\nOPS_REMOTE_OUTPUTS_DIR=~/a/./b/../out/\nDATA_DIR=/x//y/../d\n")
    assert cfg.text("OPS_REMOTE_OUTPUTS_DIR") == "~/a/out" and cfg.text("DATA_DIR") == "/x/d"
    assert cfg.text("WF_STATE_FILE") == "~/a/out/_control/workflow_state.json"


def test_sweep_csv_template_without_out_writes_a_new_file(tmp_path):
    env_file = tmp_path / "workflow.env"
    env_file.write_text("")
    demo = REPO_ROOT / "examples" / "sweeps" / "demo_tiny_cpu.csv"
    before = demo.read_bytes()
    first = cli("--env", str(env_file), "sweep-csv-template", cwd=tmp_path)
    second = cli("--env", str(env_file), "sweep-csv-template", cwd=tmp_path)
    assert first.returncode == 0 and second.returncode == 0, (first.stderr, second.stderr)
    assert f"wrote {tmp_path / 'sweep.csv'}" in first.stdout and f"wrote {tmp_path / 'sweep-2.csv'}" in second.stdout
    assert (tmp_path / "sweep.csv").read_text() == (tmp_path / "sweep-2.csv").read_text()
    assert demo.read_bytes() == before


def test_demo_writes_no_escape_codes_off_a_terminal():
    import subprocess

    step = subprocess.run(["bash", "-c", "set -euo pipefail; source <(sed -n '/^step() {/,/^}/p' \"$1\"); step x",
                           "_", str(REPO_ROOT / "examples" / "demo.sh")], text=True, capture_output=True, timeout=30)
    assert step.returncode == 0, step.stderr
    assert "== workflow.sh x" in step.stdout and "\033" not in step.stdout

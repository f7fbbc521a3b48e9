"""bootstrap: missing tools named before any change, BOOTSTRAP_SCRIPT, WANDB_SETUP_SCRIPT only when asked,
W&B credentials verified; on `local` and over the loopback sshd."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from conftest import Pod, one_line_error


def path_without(tmp_path: Path, *hidden: str) -> str:
    """A PATH that has every tool of this machine's PATH except ``hidden`` (links in one directory)."""
    bin_dir = tmp_path / ('bin-without-' + '-'.join(hidden))
    bin_dir.mkdir()
    for directory in [str(Path(sys.executable).parent), *os.environ.get("PATH", "").split(os.pathsep)]:
        if not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            source = os.path.join(directory, name)
            if name in hidden or (bin_dir / name).exists() or not os.access(source, os.X_OK):
                continue
            if os.path.isfile(source):
                (bin_dir / name).symlink_to(source)
    for name in hidden:
        assert shutil.which(name, path=str(bin_dir)) is None
    return str(bin_dir)


def test_missing_tool_is_named_and_nothing_changes(local_pod: Pod, tmp_path: Path):
    before = local_pod.snapshot()
    result = local_pod.wf("bootstrap", env={"PATH": path_without(tmp_path, "tmux")})
    assert result.returncode == 1, result.stderr
    line = one_line_error(result)
    assert "missing on the pod: tmux" in line and "AUTO_INSTALL_PREREQS=1" in line
    assert local_pod.snapshot() == before  # no env file, no state file
    assert not (local_pod.outputs / "_control" / "workflow_state.json").exists()


def test_auto_install_without_apt_get_says_what_to_do(local_pod: Pod, tmp_path: Path):
    local_pod.set(AUTO_INSTALL_PREREQS="1")
    result = local_pod.wf("bootstrap", env={"PATH": path_without(tmp_path, "rsync", "apt-get")})
    assert result.returncode == 1
    line = one_line_error(result)
    assert "missing on the pod: rsync" in line and "no apt-get" in line
    assert not (local_pod.outputs / "_control" / "workflow_state.json").exists()


def test_bootstrap_script_runs_and_its_failure_is_reported(pod: Pod, tmp_path: Path):
    marker = pod.root / "bootstrap-ran"
    script = pod.root / "setup.sh"
    script.write_text(f"echo preparing the pod\necho ran >> {marker}\n")
    pod.set(BOOTSTRAP_SCRIPT=str(script))
    first = pod.wf("bootstrap")
    assert first.returncode == 0, first.stderr
    assert marker.read_text() == "ran\n" and "preparing the pod" in first.stdout + first.stderr
    assert pod.wf("bootstrap").returncode == 0  # idempotent: it simply runs again
    assert marker.read_text() == "ran\nran\n"
    script.write_text("echo cannot reach the mirror >&2\nexit 3\n")
    failed = pod.wf("bootstrap")
    assert failed.returncode == 1
    line = failed.stderr.splitlines()[-1]  # after the script's own output, shown as progress
    assert line.startswith("workflow.sh bootstrap: BOOTSTRAP_SCRIPT")
    assert "exited 3" in line and "cannot reach the mirror" in line


def test_wandb_setup_script_runs_only_when_asked(pod: Pod):
    marker = pod.root / "wandb-ran"
    script = pod.root / "wandb.sh"
    script.write_text(f"touch {marker}\n")
    pod.set(WANDB_SETUP_SCRIPT=str(script))
    assert pod.wf("bootstrap").returncode == 0
    assert not marker.exists()  # neither SWEEP_WANDB nor RUN_WANDB_SETUP
    asked = pod.wf("bootstrap", "--set", "RUN_WANDB_SETUP=1")
    assert asked.returncode == 0, asked.stderr
    assert marker.exists()


def test_sweep_wandb_without_credentials_fails_naming_the_fix(local_pod: Pod, tmp_path: Path):
    home = tmp_path / "home"
    home.mkdir()  # no ~/.netrc here
    env = {"HOME": str(home)}
    env_without_key = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    result = local_pod.wf("bootstrap", "--set", "SWEEP_WANDB=1", env={**env_without_key, **env})
    assert result.returncode == 1
    line = one_line_error(result)
    assert "SWEEP_WANDB=1" in line and "no W&B credentials" in line and "WANDB_API_KEY" in line
    ok = local_pod.wf("bootstrap", "--set", "SWEEP_WANDB=1", env={**env, "WANDB_API_KEY": "k-123456"})
    assert ok.returncode == 0, ok.stderr
    assert "k-123456" not in ok.stdout + ok.stderr

"""Tracking keys on the client: MLflow credentials from ~/.mlflow/credentials are secrets (hidden in
print-resolved-env, absent from --dry-run), and `track` is refused with one line when tracking is off."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT, WORKFLOW, one_line_error

from helpers.config import ConfigRequest, load_config

SECRET = "mlflow-cred-9a8b7c6d5e4f"


def _env_file(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "workflow.env"
    path.write_text("\n".join(["OPS_REMOTE_OUTPUTS_DIR=" + str(tmp_path / "out"), *lines]) + "\n")
    return path


def _home_with_credentials(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    (home / ".mlflow").mkdir(parents=True)
    (home / ".mlflow" / "credentials").write_text(
        f"[mlflow]\nmlflow_tracking_username = alice\nmlflow_tracking_password = {SECRET}\n")
    return home


def test_credentials_file_fills_empty_keys_only_when_tracking_is_on(tmp_path: Path):
    home = _home_with_credentials(tmp_path)
    on = _env_file(tmp_path, "MLFLOW_TRACKING_URI=http://127.0.0.1:5000")
    cfg = load_config(ConfigRequest(project_root=REPO_ROOT, env_file=on), environ={"HOME": str(home)})
    assert cfg.text("MLFLOW_TRACKING_PASSWORD") == SECRET and cfg.text("MLFLOW_TRACKING_USERNAME") == "alice"
    assert "credentials" in cfg.source("MLFLOW_TRACKING_PASSWORD")
    assert SECRET not in str(cfg.pod_values(include_secrets=False))
    cfg = load_config(ConfigRequest(project_root=REPO_ROOT, env_file=on),
                      environ={"HOME": str(home), "MLFLOW_TRACKING_PASSWORD": "from-env"})
    assert cfg.text("MLFLOW_TRACKING_PASSWORD") == "from-env"  # the environment wins over the file
    off = _env_file(tmp_path, "MLFLOW_TRACKING_URI=")
    cfg = load_config(ConfigRequest(project_root=REPO_ROOT, env_file=off), environ={"HOME": str(home)})
    assert cfg.text("MLFLOW_TRACKING_PASSWORD") == ""


def _wf(env_file: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "WORKFLOW_VENV": sys.prefix}
    return subprocess.run([str(WORKFLOW), "--env", str(env_file), *args], env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120, stdin=subprocess.DEVNULL)


def test_print_resolved_env_and_dry_run_never_show_the_credentials(tmp_path: Path):
    home = _home_with_credentials(tmp_path)
    env_file = _env_file(tmp_path, "MLFLOW_TRACKING_URI=http://bob:pw-in-uri@127.0.0.1:5000")
    shown = _wf(env_file, home, "print-resolved-env")
    assert shown.returncode == 0, shown.stderr
    assert "MLFLOW_TRACKING_PASSWORD" in shown.stdout and SECRET not in shown.stdout + shown.stderr
    dry = _wf(env_file, home, "--dry-run", "track", "--campaign", "20260101-000000-abcdef")
    assert dry.returncode == 0, dry.stderr
    assert "would send campaign 20260101-000000-abcdef" in dry.stdout
    assert SECRET not in dry.stdout + dry.stderr and "pw-in-uri" not in dry.stdout + dry.stderr


def test_track_with_tracking_off_is_one_line_exit_2(tmp_path: Path):
    env_file = _env_file(tmp_path, "OPS_REMOTE_REPO=" + str(tmp_path / "repo"), "REMOTE_ENV_PATH=" +
                         str(tmp_path / "p.env"), "WF_STATE_FILE=" + str(tmp_path / "state.json"))
    result = _wf(env_file, tmp_path, "track")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "MLFLOW_TRACKING_URI is empty" in one_line_error(result)

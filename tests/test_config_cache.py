"""The cached resolved config of read-only commands (helpers/config_cache.py): used while current,
reloaded after any change to workflow.env, a profile, an environment variable it read or --set,
never holding a secret; and the import budget of a warm read-only command (no paramiko, no
python-dotenv, no key table, no dataclasses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, Pod

from helpers import config_cache
from helpers.resolved import Config, ConfigRequest

SECRET = "sekrit-value-8c1f"


def load(root: Path, env_file: Path, profile: str | None = None, overrides: tuple[str, ...] = ()) -> Config:
    request = ConfigRequest(project_root=root, env_file=env_file, profile=profile, overrides=overrides)
    return config_cache.load(request, cacheable=True)


def from_cache(cfg: Config) -> bool:
    return cfg.secret_keys is not None  # only a config rebuilt from the cache file carries them


@pytest.fixture
def env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("WORKFLOW_CONFIG_CACHE", raising=False)
    monkeypatch.delenv("WORKFLOW_ENV", raising=False)
    monkeypatch.delenv("WORKFLOW_PROFILE", raising=False)
    path = tmp_path / "workflow.env"
    path.write_text(f"OPS_REMOTE_OUTPUTS_DIR=/srv/out-a\nWANDB_API_KEY={SECRET}\n")
    return path


def cache_files(root: Path) -> list[Path]:
    return sorted((root / ".workflow" / "cache").glob("config-*.json"))


def test_second_load_comes_from_the_cache_without_secrets(tmp_path: Path, env_file: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf-exported-token-77")
    first = load(tmp_path, env_file)
    assert not from_cache(first)
    second = load(tmp_path, env_file)
    assert from_cache(second)
    assert second.text("OPS_REMOTE_OUTPUTS_DIR") == "/srv/out-a"
    assert second.pod_values() == first.pod_values()
    [cached] = cache_files(tmp_path)
    text = cached.read_text()
    assert SECRET not in text and "hf-exported-token-77" not in text
    assert oct(cached.stat().st_mode & 0o777) != "" and json.loads(text)["schema_version"] == 1
    # a secret asked for is read from the files and the environment there and then
    assert second.text("WANDB_API_KEY") == SECRET
    assert second.text("HF_TOKEN") == "hf-exported-token-77"


def test_a_change_to_workflow_env_is_seen_at_once(tmp_path: Path, env_file: Path) -> None:
    load(tmp_path, env_file)
    assert from_cache(load(tmp_path, env_file))
    env_file.write_text(env_file.read_text().replace("out-a", "out-b"))  # same size, same second
    cfg = load(tmp_path, env_file)
    assert not from_cache(cfg) and cfg.text("OPS_REMOTE_OUTPUTS_DIR") == "/srv/out-b"
    assert load(tmp_path, env_file).text("OPS_REMOTE_OUTPUTS_DIR") == "/srv/out-b"


def test_a_change_to_a_profile_of_the_chain_is_seen(tmp_path: Path, env_file: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "base.env").write_text("OPS_REMOTE_REPO=/srv/repo-1\n")
    (profiles / "gpu.env").write_text("_BASE=base\nOPS_REMOTE_OUTPUTS_DIR=/srv/gpu\n")
    load(tmp_path, env_file, "gpu")
    cfg = load(tmp_path, env_file, "gpu")
    assert from_cache(cfg) and cfg.text("OPS_REMOTE_REPO") == "/srv/repo-1"
    (profiles / "base.env").write_text("OPS_REMOTE_REPO=/srv/repo-2\n")  # the base, not the named one
    cfg = load(tmp_path, env_file, "gpu")
    assert not from_cache(cfg) and cfg.text("OPS_REMOTE_REPO") == "/srv/repo-2"
    assert load(tmp_path, env_file).text("OPS_REMOTE_OUTPUTS_DIR") == "/srv/out-a"  # no profile: its own entry


def test_a_change_to_an_environment_variable_it_read_is_seen(tmp_path: Path, env_file: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    env_file.write_text("OPS_REMOTE_OUTPUTS_DIR=/srv/${WF_CACHE_TEST_DIR}\n")
    monkeypatch.setenv("WF_CACHE_TEST_DIR", "one")
    load(tmp_path, env_file)
    assert load(tmp_path, env_file).text("OPS_REMOTE_OUTPUTS_DIR") == "/srv/one"
    monkeypatch.setenv("WF_CACHE_TEST_DIR", "two")
    cfg = load(tmp_path, env_file)
    assert not from_cache(cfg) and cfg.text("OPS_REMOTE_OUTPUTS_DIR") == "/srv/two"
    monkeypatch.setenv("UNRELATED_VARIABLE_XYZ", "1")  # not read by the config: the cache stays current
    assert from_cache(load(tmp_path, env_file))
    monkeypatch.setenv("WANDB_API_KEY", "exported-later")  # a secret exported now: read in full
    assert not from_cache(load(tmp_path, env_file))


def test_set_values_are_part_of_the_key(tmp_path: Path, env_file: Path) -> None:
    load(tmp_path, env_file, overrides=("OPS_REMOTE_OUTPUTS_DIR=/srv/s1",))
    cfg = load(tmp_path, env_file, overrides=("OPS_REMOTE_OUTPUTS_DIR=/srv/s1",))
    assert from_cache(cfg) and cfg.text("OPS_REMOTE_OUTPUTS_DIR") == "/srv/s1"
    cfg = load(tmp_path, env_file, overrides=("OPS_REMOTE_OUTPUTS_DIR=/srv/s2",))
    assert not from_cache(cfg) and cfg.text("OPS_REMOTE_OUTPUTS_DIR") == "/srv/s2"
    assert load(tmp_path, env_file).text("OPS_REMOTE_OUTPUTS_DIR") == "/srv/out-a"


def test_no_cache_when_a_secret_is_given_with_set_or_referenced(tmp_path: Path, env_file: Path) -> None:
    load(tmp_path, env_file, overrides=(f"HF_TOKEN={SECRET}x",))
    assert not from_cache(load(tmp_path, env_file, overrides=(f"HF_TOKEN={SECRET}x",)))
    assert cache_files(tmp_path) == []
    env_file.write_text(f"WANDB_API_KEY={SECRET}\nWANDB_PROJECT=p-${{WANDB_API_KEY}}\n")  # a leak by reference
    load(tmp_path, env_file)
    assert not from_cache(load(tmp_path, env_file))
    assert all(SECRET not in path.read_text() for path in cache_files(tmp_path))


def test_a_damaged_cache_file_is_reloaded_and_rewritten(tmp_path: Path, env_file: Path) -> None:
    load(tmp_path, env_file)
    [cached] = cache_files(tmp_path)
    cached.write_text("{not json")
    cfg = load(tmp_path, env_file)
    assert not from_cache(cfg) and cfg.text("OPS_REMOTE_OUTPUTS_DIR") == "/srv/out-a"
    assert from_cache(load(tmp_path, env_file))


# ----------------------------------------------------------------------------- end to end

HEAVY = ("paramiko", "dotenv", "helpers.keys", "helpers.config", "helpers.config_layers", "dataclasses",
         "inspect", "helpers.localtree", "helpers.paramiko_ssh")


def imported(pod: Pod, *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run workflow.sh's python line with -X importtime; the modules it imported."""
    env = {**os.environ, **pod.extra_env, "WORKFLOW_ROOT": str(REPO_ROOT), "PYTHONPATH": str(REPO_ROOT)}
    env.pop("WORKFLOW_PROFILE", None)
    result = subprocess.run([sys.executable, "-S", "-X", "importtime", "-c", "import helpers.launch", "--env",
                             str(pod.env_file), *args], env=env, text=True, capture_output=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    names = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    return result, names


@pytest.mark.parametrize("command", [["fsm-status"], ["task-status"], ["sweep-list"], ["pod-status"]])
def test_warm_read_only_commands_import_no_config_layer_and_no_paramiko(pod: Pod, command: list[str]) -> None:
    first, _ = imported(pod, *command)
    assert first.returncode == 0, first.stderr[-2000:]
    second, names = imported(pod, *command)
    assert second.returncode == 0, second.stderr[-2000:]
    assert first.stdout.replace("\n", " ").split()[:2] == second.stdout.replace("\n", " ").split()[:2]
    assert sorted(names & set(HEAVY)) == []
    assert not any(name.startswith(("paramiko.", "dotenv.", "cryptography")) for name in names)


def test_workflow_sh_sees_an_edit_of_workflow_env_between_two_commands(local_pod: Pod) -> None:
    first = local_pod.wf("fsm-status")
    assert first.returncode == 0 and str(local_pod.outputs / "_control") in first.stdout
    other = local_pod.root / "elsewhere" / "state.json"
    local_pod.set(WF_STATE_FILE=str(other))
    second = local_pod.wf("fsm-status")
    assert second.returncode == 0 and f"file:     {other}" in second.stdout
    third = local_pod.wf("fsm-status", "--set", f"WF_STATE_FILE={other}.2")
    assert f"file:     {other}.2" in third.stdout
    assert f"file:     {other}\n" in local_pod.wf("fsm-status").stdout


@pytest.mark.parametrize("where", ["relative", "dot-slash", "dot-dot", "symlink"])
def test_workflow_sh_finds_its_checkout_however_it_is_called(tmp_path: Path, where: str) -> None:
    env_file = tmp_path / "workflow.env"
    env_file.write_text(f"OPS_REMOTE_OUTPUTS_DIR={tmp_path / 'out'}\n")
    script, cwd = {
        "relative": ("infra_scripts/workflow.sh", REPO_ROOT),
        "dot-slash": ("./workflow.sh", REPO_ROOT / "infra_scripts"),
        "dot-dot": ("../infra_scripts/workflow.sh", REPO_ROOT / "tests"),
        "symlink": (str(tmp_path / "wf"), tmp_path),
    }[where]
    if where == "symlink":
        (tmp_path / "wf").symlink_to(REPO_ROOT / "infra_scripts" / "workflow.sh")
    env = {**os.environ, "WORKFLOW_VENV": sys.prefix}
    env.pop("WORKFLOW_PROFILE", None)
    shown = subprocess.run([script, "--env", str(env_file), "print-resolved-env", "--json"], cwd=cwd, env=env,
                           text=True, capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["keys"]["REPO_URL"]["value"] == str(REPO_ROOT)  # the checkout, resolved

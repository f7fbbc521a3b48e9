"""The first run of workflow.sh in a fresh checkout makes its own venv: on a terminal pip's progress shows
(what it collects, its bars), in a pipe the install stays quiet; either way the command then runs."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from test_dashboard import Pty

REPO = Path(__file__).resolve().parents[1]


def _fresh_checkout(target: Path) -> Path:
    """The repository's tracked files (as a clean checkout has them, with this tree's edits) in ``target``."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


@pytest.mark.slow
def test_first_run_venv_install_shows_progress_on_a_terminal_only(tmp_path: Path) -> None:
    checkout = _fresh_checkout(tmp_path / "checkout")
    env = {k: v for k, v in os.environ.items() if k not in ("WORKFLOW_VENV", "NO_COLOR", "VIRTUAL_ENV")}
    env["TERM"] = "xterm-256color"
    script = str(checkout / "infra_scripts" / "workflow.sh")
    term = Pty([script, "--help"], env, 120, 30)
    try:
        code = term.wait(600)
    finally:
        term.kill()
    text = term.text
    assert code == 0, text
    assert "setting up" in text and "first run" in text
    assert "Collecting " in text, text[-2000:]  # pip says what it installs...
    assert "\u2501" in text, text[-2000:]  # ...with its download bars
    assert "usage" in text.lower()  # and then the command itself ran
    venv = checkout / ".workflow" / "venv"
    assert (venv / ".workflow-stamp").is_file()

    # a reinstall (the stamp gone, as when pyproject.toml changes) in a pipe: no pip chatter, only the one line
    (venv / ".workflow-stamp").unlink()
    piped = subprocess.run([script, "--help"], env=env, capture_output=True, text=True, timeout=600)
    assert piped.returncode == 0, piped.stderr
    assert "setting up" in piped.stderr
    assert "Collecting" not in piped.stderr and "Requirement already" not in piped.stderr, piped.stderr
    assert "\u2501" not in piped.stderr and "\x1b[" not in piped.stderr
    assert (venv / ".workflow-stamp").is_file()

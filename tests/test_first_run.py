"""The first run of workflow.sh in a fresh checkout makes its own venv: on a terminal pip's progress shows
(what it collects, its bars), in a pipe the install stays quiet; either way the command then runs."""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

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


def _on_a_terminal(argv: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    master, slave = os.openpty()
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True)
    os.close(slave)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    os.close(master)
    return code, b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.slow
def test_first_run_venv_install_shows_progress_on_a_terminal_only(tmp_path: Path) -> None:
    checkout = _fresh_checkout(tmp_path / "checkout")
    env = {k: v for k, v in os.environ.items() if k not in ("WORKFLOW_VENV", "NO_COLOR", "VIRTUAL_ENV")}
    env["TERM"] = "xterm-256color"
    script = str(checkout / "infra_scripts" / "workflow.sh")
    code, text = _on_a_terminal([script, "--help"], env, timeout=600)
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

"""Starting supervisors in tmux windows (so `tmux attach` shows their live output)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from typing import List, Sequence

from .errors import ExitCode, WorkflowError


def _tmux(base: Sequence[str], *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([*base, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
    except FileNotFoundError:
        raise WorkflowError("tmux is not installed on the pod; run bootstrap (AUTO_INSTALL_PREREQS=1 installs it)",
                            ExitCode.FAILED) from None


def agent_command(*args: str) -> List[str]:
    """argv that runs this very agent file with the pod's python."""
    archive = os.path.abspath(sys.argv[0])
    if os.path.basename(archive) == "entry.py" and os.path.dirname(archive).endswith(".d"):
        return [sys.executable, "-I", "-S", archive, *args]  # the unpacked bundle: complete on its own
    if not archive.endswith(".pyz"):
        raise WorkflowError("the pod agent must run from its .pyz file to start supervisors", ExitCode.FAILED)
    return [sys.executable, "-I", "-S", archive, *args]


def open_window(base: Sequence[str], session: str, name: str, argv: Sequence[str], cwd: str) -> str:
    """Run ``argv`` in a new window of ``session`` (created if needed); returns the window id."""
    command = "exec " + shlex.join(argv)  # the one string tmux needs; every word quoted
    window_args = ["-d", "-P", "-F", "#{window_id}", "-n", name[:60], "-c", cwd]
    result = _tmux(base, "new-window", *window_args, "-t", f"={session}:", command)
    if result.returncode != 0:
        created = _tmux(base, "new-session", "-d", "-s", session, "-x", "200", "-y", "50", "-P", "-F",
                        "#{window_id}", "-n", name[:60], "-c", cwd, command)
        if created.returncode == 0:
            return created.stdout.strip()
        result = _tmux(base, "new-window", *window_args, "-t", f"={session}:", command)  # lost a creation race
        if result.returncode != 0:
            raise WorkflowError(f"cannot open a tmux window in session {session}: "
                                f"{(result.stderr or created.stderr).strip()}", ExitCode.FAILED)
    return result.stdout.strip()


def has_session(base: Sequence[str], session: str) -> bool:
    return _tmux(base, "has-session", "-t", f"={session}").returncode == 0


def kill_window(base: Sequence[str], window_id: str) -> None:
    _tmux(base, "kill-window", "-t", window_id)

"""Running helper commands on the pod with bounded time, never through a shell."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Dict, List, Optional, Sequence, Tuple

from .errors import ExitCode, WorkflowError


def run(argv: Sequence[str], cwd: Optional[str] = None, timeout: float = 60, env: Optional[Dict[str, str]] = None,
        input_text: Optional[str] = None) -> Tuple[int, str]:
    """(exit code, combined output); 127 if the program is missing, 124 on timeout."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    try:
        proc = subprocess.run(list(argv), cwd=cwd, env=full_env, input=input_text, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, errors="replace", timeout=timeout,
                              start_new_session=True)
    except FileNotFoundError:
        return 127, f"{argv[0]}: not found"
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout if isinstance(exc.stdout, str) else (exc.stdout or b"").decode(errors="replace")
        return 124, (out or "") + f"\n(timed out after {timeout:.0f}s)"
    except OSError as exc:
        return 126, f"{argv[0]}: {exc.strerror}"
    return proc.returncode, proc.stdout


def check(argv: Sequence[str], what: str, fix: str, cwd: Optional[str] = None, timeout: float = 60,
          env: Optional[Dict[str, str]] = None) -> str:
    """Run a step; on failure raise one line naming the step, the tail of its output, and the fix."""
    code, output = run(argv, cwd=cwd, timeout=timeout, env=env)
    if code != 0:
        raise WorkflowError(f"{what} failed (exit {code}): {tail(output)}; {fix}", ExitCode.FAILED)
    return output


def tail(output: str, lines: int = 3, width: int = 300) -> str:
    kept = [line.strip() for line in output.strip().splitlines() if line.strip()][-lines:]
    text = " | ".join(kept)
    return text[-width:] if text else "(no output)"


def which(name: str) -> Optional[str]:
    return shutil.which(name)


def first_line(argv: List[str], timeout: float = 10) -> Optional[str]:
    code, output = run(argv, timeout=timeout)
    if code != 0:
        return None
    lines = output.strip().splitlines()
    return lines[0].strip() if lines else ""

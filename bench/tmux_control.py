#!/usr/bin/env python3
"""The pod-side tmux control: helpers/pod/tmuxctl.py (the tmux binary by argv) vs libtmux shipped in the agent.

Run: WORKFLOW_VENV=.workflow/venv python bench/tmux_control.py [-n 15]

In one run, on a throwaway tmux socket: (1) the import a fresh agent process pays, in the agent's own
`python -I -S` with the package on sys.path from an unpacked copy (bytecode cached by a first run):
tmuxctl's imports (subprocess, shlex) vs `import libtmux`; (2) the hot ops, interleaved: open a window
in a session (the executor's row launch, task-run), ask whether the session exists, kill the window,
through tmuxctl and through libtmux's Server/Session/Window; (3) what the agent bundle would carry:
the deflated size of libtmux's .py files against the bundle as built today. Also prints what libtmux
itself requires (its Python and tmux minimums), against the agent's python3 >= 3.9.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path

import benchpods

from helpers.agent import build_bundle
from helpers.pod import tmuxctl


def _import_secs(python: str, path: Path, statement: str, n: int) -> list[float]:
    code = f"import sys; sys.path.insert(0, {str(path)!r}); {statement}"
    subprocess.run([python, "-I", "-S", "-c", code], check=True)  # writes the bytecode
    out = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run([python, "-I", "-S", "-c", code], check=True)
        out.append(time.perf_counter() - start)
    return out


def _ms(values: list[float]) -> str:
    return f"median {statistics.median(values) * 1000:6.1f} ms (min {min(values) * 1000:.1f}, n={len(values)})"


def _per_op(run: Callable[[int], object], n: int) -> list[float]:
    out = []
    for number in range(n):
        start = time.perf_counter()
        run(number)
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=15)
    args = parser.parse_args()
    import libtmux

    source = Path(libtmux.__file__).parent
    python = shutil.which("python3") or sys.executable
    with benchpods.workspace("tmux") as base:
        shipped = base / "bundle"
        shutil.copytree(source, shipped / "libtmux", ignore=shutil.ignore_patterns("__pycache__"))
        plain = _import_secs(python, shipped, "import subprocess, shlex", args.n)
        with_lib = _import_secs(python, shipped, "import libtmux", args.n)
        socket = f"wfb-{uuid.uuid4().hex[:8]}"
        tmux = ["tmux", "-L", socket]
        subprocess.run([*tmux, "new-session", "-d", "-s", "keep"], check=True)
        try:
            server = libtmux.Server(socket_name=socket)
            ours_open, lib_open, ours_has, lib_has, ours_kill, lib_kill = [], [], [], [], [], []
            windows: list[str] = []
            lib_windows: list[libtmux.Window] = []
            argv = ["sleep", "600"]
            for _ in range(2):  # interleaved rounds
                ours_open += _per_op(lambda i: windows.append(
                    tmuxctl.open_window(tmux, "bench-a", f"w{i}", argv, str(base))), args.n)

                def lib_one(i: int) -> None:
                    found = server.sessions.get(session_name="bench-b", default=None)
                    session = found or server.new_session("bench-b", window_name=f"w{i}", start_directory=str(base),
                                                          window_command="exec " + " ".join(argv), x=200, y=50)
                    if found is None:
                        lib_windows.append(session.active_window)
                    else:
                        lib_windows.append(session.new_window(window_name=f"w{i}", start_directory=str(base),
                                                              window_shell="exec " + " ".join(argv), attach=False))
                lib_open += _per_op(lib_one, args.n)
                ours_has += _per_op(lambda i: tmuxctl.has_session(tmux, "bench-a"), args.n)
                lib_has += _per_op(lambda i: server.has_session("bench-b"), args.n)
                ours_kill += _per_op(lambda i: tmuxctl.kill_window(tmux, windows.pop()), args.n)
                lib_kill += _per_op(lambda i: lib_windows.pop().kill(), args.n)
        finally:
            subprocess.run([*tmux, "kill-server"], check=False)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(source.rglob("*.py")):
            archive.write(path, str(path.relative_to(source.parent)))
    bundle = len(build_bundle())
    metadata = next(source.parent.glob("libtmux-*.dist-info"), None)
    needs = ""
    if metadata is not None:
        needs = next((line.split(":", 1)[1].strip() for line in (metadata / "METADATA").read_text().splitlines()
                      if line.startswith("Requires-Python:")), "")
    tmux_min = getattr(getattr(libtmux, "common", None), "TMUX_MIN_VERSION", "?")
    print(f"pod-side tmux control: tmuxctl (tmux by argv) vs libtmux {libtmux.__version__} in the agent bundle")
    print(f"  import, fresh python -I -S   tmuxctl's {_ms(plain)}   libtmux {_ms(with_lib)}   "
          f"ratio {statistics.median(with_lib) / statistics.median(plain):.2f}x")
    for name, ours, lib in (("open a window", ours_open, lib_open), ("has-session", ours_has, lib_has),
                            ("kill a window", ours_kill, lib_kill)):
        print(f"  {name:<14} tmuxctl {_ms(ours)}   libtmux {_ms(lib)}   "
              f"ratio {statistics.median(lib) / statistics.median(ours):.2f}x")
        benchpods.record("tmux_control", f"libtmux / tmuxctl: {name}", statistics.median(lib) / statistics.median(ours))
    benchpods.record("tmux_control", "import libtmux / tmuxctl's imports",
                     statistics.median(with_lib) / statistics.median(plain))
    print(f"  bundle: {bundle / 1000:.0f} KB today; libtmux's .py files add {len(buffer.getvalue()) / 1000:.0f} KB "
          f"deflated ({os.path.basename(str(source))}: Requires-Python {needs or '?'}, tmux >= {tmux_min}; the agent "
          "runs on python3 >= 3.9)")


if __name__ == "__main__":
    main()

"""A progress line every few seconds while a long pod step runs (clone, pip install, a download).

Only when the caller asked for it (``args.progress``: the local stderr is a terminal), so piped and CI
output keeps its lines as before. A line says the step, the time so far and, for a download, the bytes
under its folder and the rate; a last line when the step ends says how long it took. Stdlib only (runs
inside the agent).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Optional

from .context import Context

EVERY_SECS = 5.0


def folder_bytes(path: str) -> int:
    total = 0
    for top, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(top, name)).st_size
            except OSError:
                continue
    return total


def _size(size: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size:.0f} B"


class Ticker:
    """``with Ticker(ctx, "checkout: pip install", folder=None): ...``"""

    def __init__(self, ctx: Context, label: str, folder: Optional[str] = None, every: float = EVERY_SECS) -> None:
        self.on = bool(ctx.args.get("progress"))
        self.label = label
        self.folder = folder
        self.every = every
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._start = time.monotonic()
        self._base = 0

    def line(self, lead: str = "") -> str:
        elapsed = time.monotonic() - self._start
        text = f"{self.label}: {lead}{int(elapsed // 60)}m{int(elapsed % 60):02d}s"
        if self.folder:
            got = max(0, folder_bytes(self.folder) - self._base)
            text += f", {_size(got)}, {_size(got / max(elapsed, 1e-6))}/s"
        return text

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            Context.progress(self.line())

    def __enter__(self) -> Ticker:
        if self.on:
            self._base = folder_bytes(self.folder) if self.folder and os.path.isdir(self.folder) else 0
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, failed: object, *_: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(2)
            if failed is None:  # how long the step took (and what it wrote), however short it was
                Context.progress(self.line("done in "))

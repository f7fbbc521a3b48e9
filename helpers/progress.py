"""One self-rewriting progress line on stderr while a person waits (fetch files/bytes, task-wait).

Only on a terminal: off a TTY (a pipe, CI, a log file) nothing is written, so captured output stays
what it was. The line carries counts, bytes, the rate and an ETA where they can be known, is cut to the
terminal's width and is cleared when the step ends (its result is printed by the command as before).
"""

from __future__ import annotations

import re
import shutil
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Optional

from helpers.render import duration


def human_bytes(size: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size:.0f} B"


_RSYNC_LINE = re.compile(r"^\s*([\d,]+)\s+\d+%")
_RSYNC_FILES = re.compile(r"xfr#(\d+)")


def rsync_counts(line: str) -> Optional[tuple[int, int]]:
    """(bytes so far, files done) from one line of rsync's ``--info=progress2`` output; None for other lines."""
    found = _RSYNC_LINE.match(line)
    if found is None:
        return None
    files = _RSYNC_FILES.search(line)
    return int(found.group(1).replace(",", "")), int(files.group(1)) if files else 0


class Progress:
    def __init__(self, label: str, stream: Optional[IO[str]] = None, every: float = 0.1) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        try:
            self.on = self.stream.isatty()
        except (AttributeError, ValueError):
            self.on = False
        self.started = time.monotonic()
        self.every = every
        self._last = 0.0
        self._shown = False

    def show(self, text: str, force: bool = False) -> None:
        """Rewrite the line (at most every ``every`` seconds unless ``force``)."""
        if not self.on:
            return
        now = time.monotonic()
        if not force and now - self._last < self.every:
            return
        self._last = now
        width = shutil.get_terminal_size((100, 24)).columns - 1
        line = f"{self.label}: {text}"
        self.stream.write("\r\x1b[2K" + (line if len(line) <= width else line[:max(0, width - 1)] + "…"))
        self.stream.flush()
        self._shown = True

    def counts(self, done: int, total: int, done_bytes: int, total_bytes: int, unit: str = "files",
               force: bool = False) -> None:
        """``done/total`` items and bytes, the byte rate so far and the ETA from it."""
        elapsed = max(1e-6, time.monotonic() - self.started)
        rate = done_bytes / elapsed
        eta = (total_bytes - done_bytes) / rate if rate > 0 and total_bytes > done_bytes else None
        parts = [f"{done}/{total} {unit}", f"{human_bytes(done_bytes)}/{human_bytes(total_bytes)}"]
        if done_bytes:
            parts.append(f"{human_bytes(rate)}/s")
        if eta is not None:
            parts.append(f"ETA {duration(eta)}")
        self.show(", ".join(parts), force=force)

    def elapsed(self) -> str:
        return duration(time.monotonic() - self.started)

    def ticking(self, text: str, every: float = 1.0) -> Ticking:
        """A background line ``text, <elapsed>`` rewritten every ``every`` seconds until the block ends;
        ``note`` prints a permanent line above it (a pod's status change)."""
        return Ticking(self, text, every)

    def done(self) -> None:
        """Clear the line (the command prints its own result)."""
        if self._shown:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
            self._shown = False


class Ticking:
    def __init__(self, progress: Progress, text: str, every: float) -> None:
        self.progress = progress
        self.text = text
        self.every = every
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self.paused = True  # until the wait begins: a prompt answered, or the first note

    def quiet(self, ask: Callable[[str], bool]) -> Callable[[str], bool]:
        """``ask`` (a y/N prompt) with the line cleared and held while it waits for an answer."""
        def asking(question: str) -> bool:
            with self._lock:
                self.paused = True
                self.progress.done()
            try:
                return ask(question)
            finally:
                self.paused = False
                self.progress.started = time.monotonic()  # the wait starts once the answer is in
        return asking

    def note(self, line: str) -> None:
        with self._lock:
            self.progress.done()
            self.progress.stream.write(line + "\n")
            self.progress.stream.flush()
            self.paused = False

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            with self._lock:
                if not self.paused:
                    self.progress.show(f"{self.text}, {self.progress.elapsed()}", force=True)

    def __enter__(self) -> Ticking:
        if self.progress.on:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(2)
        with self._lock:
            self.progress.done()

"""Single key presses from the terminal while the live view waits between refreshes (POSIX termios)."""

from __future__ import annotations

import os
import select
import sys
import time
from types import TracebackType


class Keys:
    """In a ``with`` block stdin is in cbreak mode (keys arrive unbuffered, unechoed); restored after.
    Without a terminal on stdin no key ever arrives and ``wait`` only sleeps."""

    def __init__(self) -> None:
        self.fd = sys.stdin.fileno() if sys.stdin and sys.stdin.isatty() else -1
        self._saved: list | None = None

    def __enter__(self) -> Keys:
        if self.fd >= 0:
            import termios
            import tty

            self._saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._saved is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)

    def wait(self, seconds: float) -> str:
        """The next key within ``seconds`` ("" when none came)."""
        if self.fd < 0:
            time.sleep(seconds)
            return ""
        ready, _, _ = select.select([self.fd], [], [], max(0.0, seconds))
        if not ready:
            return ""
        data = os.read(self.fd, 16).decode("utf-8", "replace")
        if data.startswith("\x1b["):  # arrows: up/down scroll like k/j
            return {"A": "k", "B": "j", "5": "u", "6": "d"}.get(data[2:3], "")
        return data[:1]

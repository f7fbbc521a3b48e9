"""Plain-text tables and bars for status commands (one screen; colour only through ``paint``, on a TTY)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional

Paint = Callable[[int, str, str], str]  # (column index, padded cell, raw cell) -> what is printed


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], paint: Optional[Paint] = None) -> list[str]:
    columns = zip(*rows) if rows else [() for _ in headers]  # max(map(len)): 10,000 rows without a genexpr each
    widths = [max(len(h), max(map(len, column), default=0)) for h, column in zip(headers, columns)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    if paint is None:
        return [fmt.format(*headers).rstrip(), *(fmt.format(*row).rstrip() for row in rows)]
    shown = [fmt.format(*headers).rstrip()]
    for row in rows:
        cells = [paint(i, f"{cell:<{w}}", cell) for i, (cell, w) in enumerate(zip(row, widths))]
        shown.append("  ".join(cells).rstrip())
    return shown


def age(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def bar(done: int, total: int, width: int = 30) -> str:
    filled = 0 if total == 0 else round(width * done / total)
    return "[" + "#" * filled + "." * (width - filled) + f"] {done}/{total}"

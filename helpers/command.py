"""One row of the command table (helpers/cli.py COMMANDS): a plain class, no argparse, no dataclasses,
so helpers/fastpath.py can name a row without importing the command line."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse


class Command:
    """One row of the command table (a plain class: no dataclasses/inspect when a command starts)."""

    __slots__ = ("name", "summary", "module", "handler", "setup", "changes", "json")

    def __init__(self, name: str, summary: str, module: str, handler: str,
                 setup: Callable[[argparse.ArgumentParser], None] | None = None, changes: bool = False,
                 json: bool = False) -> None:
        self.name = name
        self.summary = summary
        self.module = module  # helpers.<module> holds the handler
        self.handler = handler
        self.setup = setup
        self.changes = changes  # changes something: supports --dry-run
        self.json = json  # supports --json

    def __repr__(self) -> str:
        return f"Command({self.name!r})"

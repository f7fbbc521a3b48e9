"""The lean start of the short read-only commands: their command line read by hand, no argparse.

helpers/launch.py calls ``run`` before it imports helpers.cli. For a plain command line of
fsm-status, task-status, task-list, pod-status, sweep-status or sweep-list (the global flags
before the command, that command's own options spelled out in full, --json/--debug anywhere) it
builds the very options argparse would and runs the command as helpers/cli.py main does
(helpers/session.py run_command: cached config, the one ssh call, the same output). Anything else
(--help, an abbreviated or unknown option, --env/--profile/--set or --dry-run after the command,
a value argparse would refuse, ``--``) returns None and the full command line handles it, so its
messages and exit codes are argparse's own. WORKFLOW_FASTPATH=0 turns it off.
"""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

from helpers.command import Command
from helpers.prelaunch import PLAIN_FLAGS, VALUE_FLAGS, command_index

# kinds of an option's value: "flag" (store_true), "count" (cli.whole_number), "task" (a task id),
# "campaign" (cli.campaign_id)
_OPTIONS: dict[str, dict[str, tuple[str, str]]] = {
    "fsm-status": {}, "task-list": {}, "pod-status": {}, "sweep-list": {},
    "task-status": {"--id": ("task_id", "task"), "--lines": ("lines", "count")},
    "sweep-status": {"--campaign": ("campaign", "campaign"), "--attempts": ("attempts", "flag")},
}
_DEFAULTS: dict[str, dict[str, object]] = {
    "task-status": {"positional_id": None, "task_id": None, "lines": 10},
    "sweep-status": {"campaign": None, "attempts": False},
}
# the rows of helpers/cli.py COMMANDS for prelaunch.COMMANDS (tests/test_fastpath.py checks they agree)
ROWS = {
    "fsm-status": Command("fsm-status", "", "cmd_setup", "cmd_fsm_status", json=True),
    "pod-status": Command("pod-status", "", "cmd_setup", "cmd_pod_status", json=True),
    "task-status": Command("task-status", "", "cmd_tasks", "cmd_task_status", json=True),
    "task-list": Command("task-list", "", "cmd_tasks", "cmd_task_list", json=True),
    "sweep-status": Command("sweep-status", "", "cmd_sweeps", "cmd_sweep_status", changes=True, json=True),
    "sweep-list": Command("sweep-list", "", "cmd_sweepinfo", "cmd_sweep_list", json=True),
}


def parse(argv: list[str]) -> SimpleNamespace | None:
    """The options argparse (helpers/cli.py main) would make of ``argv``, or None: not a plain line."""
    index = command_index(argv)
    if index >= len(argv) or argv[index] not in _OPTIONS or "--" in argv:
        return None
    command = argv[index]
    options = SimpleNamespace(top_help=False, env_file=None, profile=None, overrides=[], dry_run=False, json=False,
                              debug=False, command=command, **_DEFAULTS.get(command, {}))
    if not _globals(argv[:index], options):
        return None
    spec, words, at = _OPTIONS[command], argv[index + 1:], 0
    while at < len(words):
        word = words[at]
        name, equals, value = word.partition("=")
        if word in ("--json", "--debug"):
            setattr(options, word[2:], True)
        elif name in spec and spec[name][1] == "flag":
            if equals:
                return None
            setattr(options, spec[name][0], True)
        elif name in spec:
            if not equals:
                at += 1
                if at >= len(words):
                    return None
                value = words[at]
            checked = _value(spec[name][1], value)
            if checked is None:
                return None
            setattr(options, spec[name][0], checked)
        elif command == "task-status" and word and not word.startswith("-") and options.positional_id is None:
            options.positional_id = word
        else:
            return None  # an option argparse may read another way, an error, --help: the full command line
        at += 1
    return options


def _globals(words: list[str], options: SimpleNamespace) -> bool:
    at = 0
    while at < len(words):
        word = words[at]
        if word in PLAIN_FLAGS:
            setattr(options, word[2:].replace("-", "_"), True)
            at += 1
            continue
        name, equals, value = word.partition("=")
        if not equals:
            if at + 1 >= len(words):
                return False
            at += 1
            value = words[at]
        if value.startswith("-") and not equals:
            return False  # argparse: "expected one argument"
        if name == "--env":
            options.env_file = value
        elif name == "--profile":
            options.profile = value
        elif name in VALUE_FLAGS:
            options.overrides.append(value)
        else:
            return False
        at += 1
    return True


def _value(kind: str, text: str) -> object:
    """An option's value as argparse's type would make it; None where argparse would refuse it (or might)."""
    if text.startswith("-") or not text:
        return None
    if kind == "count":
        try:
            number = int(text)
        except ValueError:
            return None
        return number if number >= 0 else None
    if kind == "campaign":
        from helpers.pod.errors import WorkflowError
        from helpers.pod.ids import check_id

        try:
            return check_id(text, "campaign id")
        except WorkflowError:
            return None
    return text


def run(argv: list[str]) -> int | None:
    """The command's exit code, or None: the full command line (helpers/cli.py) handles this one."""
    if os.environ.get("WORKFLOW_FASTPATH", "1") == "0":
        return None
    options = parse(argv)
    if options is None:
        return None
    from helpers.session import run_command

    root = os.environ.get("WORKFLOW_ROOT")
    from pathlib import Path

    project = Path(root).resolve() if root else Path(__file__).resolve().parent.parent
    return run_command(ROWS[options.command], options, project)  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]) or 0)

"""The lean start of the short read-only commands (helpers/fastpath.py): the options it reads by hand
are argparse's own, anything it does not handle goes to the full command line, and a real pod over
the test sshd shows byte-identical output, exit codes and one-line errors either way
(WORKFLOW_FASTPATH=0: the full command line only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Pod, one_line_error
from test_status_cache import CAMPAIGN, build

from helpers import cli, fastpath, prelaunch
from helpers.session import SHORT_CALLS

HANDLED = [
    ["fsm-status"], ["--json", "fsm-status"], ["fsm-status", "--json", "--debug"], ["pod-status"],
    ["task-list"], ["task-status"], ["task-status", "t1"], ["task-status", "--id", "t1"], ["task-status", "--id=t1"],
    ["task-status", "t1", "--lines", "3"], ["task-status", "--lines=0", "t1"], ["task-status", "--lines", "+2"],
    ["sweep-status"], ["sweep-status", "--attempts"], ["sweep-status", "--campaign", CAMPAIGN],
    ["sweep-status", f"--campaign={CAMPAIGN}", "--json"], ["sweep-list"],
    ["--env", "x.env", "--profile", "p", "--set", "A=1", "--set=B=2", "--debug", "fsm-status"],
    ["--env=x.env", "--dry-run", "task-list"],
]
FALLBACK = [
    [], ["help"], ["fsm-status", "--help"], ["-h"], ["task-status", "-h"], ["fsm-status", "--bogus"],
    ["task-status", "a", "b"], ["task-status", "--lines", "-1"], ["task-status", "--lines", "x"],
    ["task-status", "--lines"], ["task-status", "--lin", "3"], ["task-status", "--id"], ["task-status", "--id="],
    ["sweep-status", "--campaign", "../x"], ["sweep-status", "--attempts=1"], ["sweep-status", "--att"],
    ["fsm-status", "--env", "other.env"], ["fsm-status", "--set", "A=1"], ["fsm-status", "--dry-run"],
    ["--env", "--json", "fsm-status"], ["--env"], ["task-status", "--", "t1"], ["fsm-status", "extra"],
    ["task-run", "--id", "x", "--cmd", "true"], ["--pro", "p", "fsm-status"],
]


def argparse_options(argv: list[str]) -> dict[str, object]:
    """What helpers/cli.py main hands run_command for ``argv``."""
    options, extra = cli.build_parser(only=cli.command_named(argv)).parse_known_args(argv)
    assert not extra
    options.overrides = list(options.overrides or []) + list(getattr(options, "sub_overrides", None) or [])
    found = vars(options)
    found.pop("sub_overrides", None)
    return found


@pytest.mark.parametrize("argv", HANDLED, ids=" ".join)
def test_options_are_argparse_own(argv: list[str]) -> None:
    parsed = fastpath.parse(argv)
    assert parsed is not None, "the fast path should handle this command line"
    assert vars(parsed) == argparse_options(argv)


@pytest.mark.parametrize("argv", FALLBACK, ids=lambda a: " ".join(a) or "(none)")
def test_anything_else_goes_to_the_full_command_line(argv: list[str]) -> None:
    assert fastpath.parse(argv) is None


def test_rows_are_the_command_table_rows() -> None:
    assert set(fastpath.ROWS) == prelaunch.COMMANDS == SHORT_CALLS  # the short read-only calls, all of them
    for name, row in fastpath.ROWS.items():
        full = cli.COMMANDS_BY_NAME[name]
        assert (row.name, row.module, row.handler, row.changes, row.json) == (
            full.name, full.module, full.handler, full.changes, full.json)


LINES = [
    ["fsm-status"], ["fsm-status", "--json"], ["task-status"], ["task-status", "t1"], ["task-status", "--id=t1",
                                                                                        "--lines", "1"],
    ["task-status", "nope"], ["task-list"], ["task-list", "--json"], ["sweep-status"], ["sweep-status", "--json"],
    ["sweep-status", "--attempts"], ["sweep-status", "--campaign", "20990101-000000-none"], ["sweep-list"],
]
BAD = [["task-status", "--lines", "-1"], ["task-status", "--id", "../x"], ["sweep-status", "--campaign", "../x"],
       ["task-status", "a", "b"], ["fsm-status", "--bogus"], ["sweep-list", "--dry-run"], ["task-status", "--id="]]


def same_both_ways(pod: Pod, argv: list[str]) -> tuple[int, str, str]:
    fast = pod.wf(*argv)
    full = pod.wf(*argv, env={"WORKFLOW_FASTPATH": "0"})
    assert (fast.returncode, fast.stdout, fast.stderr) == (full.returncode, full.stdout, full.stderr), argv
    return fast.returncode, fast.stdout, fast.stderr


def test_byte_identical_output_over_ssh(ssh_pod: Pod, tmp_path: Path) -> None:
    assert ssh_pod.wf("task-run", "--id", "t1", "--cmd", "echo hello").returncode == 0
    assert ssh_pod.wf("task-wait", "--id", "t1").returncode == 0
    no_sweep = same_both_ways(ssh_pod, ["sweep-status"])
    assert no_sweep[0] != 0 and "no sweep has been started" in no_sweep[2]
    build(ssh_pod, 6, 3)
    for argv in LINES:
        same_both_ways(ssh_pod, argv)
    code, out, _ = same_both_ways(ssh_pod, ["task-status", "t1"])
    assert code == 0 and "hello" in out
    code, out, _ = same_both_ways(ssh_pod, ["sweep-status"])
    assert "r-005" in out and code == 1  # every 4th row failed: exit 1
    fast, full = ssh_pod.wf("pod-status", "--json"), ssh_pod.wf("pod-status", "--json", env={"WORKFLOW_FASTPATH": "0"})
    assert (fast.returncode, fast.stderr) == (full.returncode, full.stderr) == (0, "")  # its figures move: the keys
    assert json.loads(fast.stdout).keys() == json.loads(full.stdout).keys()
    for argv in BAD:
        code, _, _ = same_both_ways(ssh_pod, argv)
        assert code != 0
        shown = pod_error(ssh_pod, argv)
        assert shown.startswith("workflow.sh "), shown


def pod_error(pod: Pod, argv: list[str]) -> str:
    return one_line_error(pod.wf(*argv))

"""The README cannot drift: every command in `workflow.sh help` is in it and every command it names
exists; `CMD --help` runs for each, and every option the README gives a command is one of that
command's options (and every option a command has is documented); keys, the state table, exit
codes, the layout and the Python versions it quotes match the code."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest

from helpers.errors import ExitCode
from helpers.keys import KEYS_BY_NAME, is_passthrough
from helpers.pod import fsm

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = REPO_ROOT / "infra_scripts" / "workflow.sh"
README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
NOT_OURS = {"--system-site-packages", "--standalone"}  # options of venv and torchrun the README mentions
GLOBAL_OPTIONS = {"--env", "--profile", "--set", "--dry-run", "--json", "--debug", "--help", "-h"}
# environment variables of the entrypoint, the Makefile and the demo (not workflow.env keys)
ENVIRONMENT = {"WORKFLOW_PROFILE", "WORKFLOW_VENV", "WORKFLOW_PYTHON", "WORKFLOW_VENV_EXTRAS", "WORKFLOW_ENV",
               "WORKFLOW_ROOT", "WORKFLOW_SSH_CONTROL_DIR", "WORKFLOW_CONFIG_CACHE", "TORCH_INDEX_URL", "DEMO_TORCH",
               "PYTEST_WORKERS", "NO_COLOR", "MAX_TRAIN_SAMPLES", "WF_TEST_SLURM_MAX_ARRAY",
               "WORKFLOW_PRELAUNCH", "WORKFLOW_FASTPATH"}
ENVIRONMENT |= {"WF_CKPT", "WF_RUN_DIR", "WF_OUT_DIR", "WF_EVAL_JSON", "WF_STAGE", "WF_STAGE_DIR"}  # stages.py


def wf(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WORKFLOW_VENV": sys.prefix}
    return subprocess.run([str(WORKFLOW), *args], env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL, timeout=60, cwd=REPO_ROOT)


@functools.cache
def help_commands() -> tuple[str, ...]:
    result = wf("help")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    start = lines.index("commands:") + 1
    names = []
    for line in lines[start:]:
        if not line.strip():
            break
        names.append(line.split()[0])
    assert len(names) >= 20, names
    return tuple(names)


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.S | re.M)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def table_rows(text: str) -> list[list[str]]:
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith("|")]
    return [row for row in rows[2:]]  # header and --- line


def commands_in(cell: str) -> list[str]:
    """Command names a README cell names: the first word of each `code span`."""
    known = set(help_commands())
    return [w for span in re.findall(r"`([^`]+)`", cell) for w in span.split()[:1] if w in known]


def command_rows() -> list[tuple[list[str], str]]:
    return [(commands_in(row[0]), " | ".join(row)) for row in table_rows(section("Commands"))]


@functools.cache
def options_of(command: str) -> frozenset[str]:
    result = wf(command, "--help")
    assert result.returncode == 0, (command, result.stderr)
    assert result.stdout.startswith(f"usage: workflow.sh {command}"), result.stdout[:80]
    return frozenset(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", result.stdout))


def test_every_command_in_help_is_in_the_readme_and_vice_versa():
    documented = {name for names, _ in command_rows() for name in names}
    missing = [name for name in help_commands() if name not in documented]
    assert not missing, f"commands in `workflow.sh help` without a row in the README's Commands table: {missing}"
    for row in table_rows(section("Commands")):
        spans = re.findall(r"`([^`]+)`", row[0])
        unknown = [s.split()[0] for s in spans if s.split()[0] not in help_commands()]
        assert not unknown, f"the README's Commands table names commands that do not exist: {unknown}"
    named = set(re.findall(r"workflow\.sh (?:--\S+ \S+ )*([a-z][a-z-]+)", README))
    assert named - set(help_commands()) <= {"help"}, named - set(help_commands())


@pytest.mark.parametrize("command", help_commands())
def test_every_command_runs_help_and_its_options_are_documented(command: str):
    own = options_of(command) - GLOBAL_OPTIONS
    rows = [text for names, text in command_rows() if command in names]
    assert rows, command
    text = " ".join(rows)
    undocumented = sorted(option for option in own if option not in text)
    assert not undocumented, f"{command} has options the README's Commands table does not name: {undocumented}"


def test_every_option_the_readme_gives_a_command_exists():
    for names, text in command_rows():
        flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", text))
        known = set().union(*(options_of(name) for name in names)) | GLOBAL_OPTIONS | NOT_OURS
        assert flags <= known, f"README row for {names} names options they do not have: {sorted(flags - known)}"
    global_line = re.search(r"Global flags.*?\.\s", section("Commands"), re.S)
    assert global_line
    for flag in re.findall(r"`(--[a-z-]+)", global_line.group(0)):
        assert flag in options_of("validate") and flag in GLOBAL_OPTIONS, flag


def test_every_key_the_readme_names_exists():
    states = {state.value for state in fsm.State}
    words = set(re.findall(r"`([A-Z][A-Z0-9]*_[A-Z0-9_]*[A-Z0-9])(?:=[^`]*)?`", README))
    words |= set(re.findall(r"(?<![\w$*])([A-Z][A-Z0-9]*_[A-Z0-9_]*[A-Z0-9])=", README))
    unknown = sorted(w for w in words - states - ENVIRONMENT
                     if w not in KEYS_BY_NAME and not is_passthrough(w) and not w.startswith("RUNENV_"))
    assert not unknown, f"README names keys that workflow.env does not have: {unknown}"


def test_state_table_matches_the_transition_table():
    states = {state.value for state in fsm.State}
    from_states: dict[str, set[str]] = {}
    for row in table_rows(section("The workflow state machine")):
        names = re.findall(r"`([a-z-]+)", row[0])
        if not names or row[1].startswith(("any", "(")):
            continue
        listed = set(re.findall(r"\b[A-Z][A-Z_]+\b", row[1])) & states
        for name in names:
            from_states.setdefault(name, set()).update(listed)
            if row[2] != "(unchanged)":
                to = set(re.findall(r"\b[A-Z][A-Z_]+\b", row[2])) & states
                assert {fsm.TRANSITIONS[name][fsm.State(s)].value for s in listed} <= to, (name, row)
    for name, listed in from_states.items():
        assert listed == {s.value for s in fsm.TRANSITIONS[name]}, (name, sorted(listed))
    assert set(fsm.USER_COMMANDS) <= set(from_states), set(fsm.USER_COMMANDS) - set(from_states)


def test_exit_code_table_names_every_code():
    table = section("Exit codes")
    for code in ExitCode:
        if code < 100:
            assert re.search(rf"^\| {int(code)} \|", table, re.M), code
        else:
            assert "123-126, 130" in table
    assert int(ExitCode.REFUSED) == 7


def test_layout_names_every_module():
    layout = section("Layout")
    client = re.search(r"^helpers/ +(.*?)(?=^helpers/pod/)", layout, re.S | re.M)
    pod = re.search(r"^helpers/pod/ +(.*?)(?=^\S)", layout, re.S | re.M)
    assert client and pod
    patterns = client.group(1).split()
    for module in sorted((REPO_ROOT / "helpers").glob("*.py")):
        if module.name != "__init__.py":
            assert any(fnmatch(module.name, p) for p in patterns), f"README Layout misses helpers/{module.name}"
    pod_words = set(re.findall(r"[a-z_]+", pod.group(1)))
    for module in sorted((REPO_ROOT / "helpers" / "pod").glob("*.py")):
        if module.name != "__init__.py":
            assert module.stem in pod_words, f"README Layout misses helpers/pod/{module.name}"


def test_python_versions_match():
    requires = re.search(r'^requires-python\s*=\s*"([^"]+)"', (REPO_ROOT / "pyproject.toml").read_text(), re.M)
    assert requires and requires.group(1).replace(" ", "") == ">=3.10"
    assert "Python 3.10+" in README and "`python3` (3.9+)" in README


def test_readme_quotes_no_unmeasured_figures():
    assert "70 s" not in README and "(CPU), runs" not in README
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in README
    assert "DEMO_TIME_FIGURE" not in README and "INSTALL_TIME_FIGURE" not in README
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "TORCH_INDEX_URL ?=" in makefile and "TORCH_INDEX_URL" in (REPO_ROOT / "examples" / "demo.sh").read_text()

"""Sweep CSV: parse and validate a sweep file locally, before anything is sent to the pod.

Every problem raises ``WorkflowError(..., ExitCode.USAGE)`` with one line naming the file, the
row (its line number in the file) and the column, and saying what to do. The first problem in
file order is reported.
"""

from __future__ import annotations

import csv
import difflib
import io
import posixpath
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from helpers.errors import ExitCode, WorkflowError
from helpers.pod.ids import is_valid_id

REQUIRED_COLUMNS = ("run_id", "config", "seed")
KNOWN_COLUMNS = ("run_id", "config", "seed", "overrides", "notes", "gpus", "timeout", "retries", "nodes",
                 "eval_small_cmd", "gate_small", "eval_full_cmd", "gate_full")  # (the last four: stage_keys.py)
STAGE_COLUMNS = ("eval_small_cmd", "gate_small", "eval_full_cmd", "gate_full")
MAX_RUN_ID_LEN = 128
SEED_LIMIT = 2**31  # seeds are 0 <= seed < SEED_LIMIT
MAX_GPUS = 64
MAX_NODES = 64
MAX_RETRIES = 10
OVERRIDE_KEY_RE = re.compile(r"\A[A-Za-z_][A-Za-z0-9_.]*\Z")
RESERVED_KEYS = {
    "seed": "the runner sets seed from the seed column; put the seed in the seed column instead",
    "out_dir": "the runner sets out_dir for every run; remove this override",
}
_INT_RE = re.compile(r"\A[+-]?[0-9]+\Z")


@dataclass(frozen=True)
class SweepRow:
    """One validated row of a sweep CSV."""

    row_number: int  # 1-based line number in the file where this row starts
    run_id: str
    config: str
    seed: int
    overrides: tuple[str, ...]  # argv words, normalised to key=value
    notes: str
    gpus: int | None
    timeout_secs: int | None
    retries: int | None
    stages: tuple[tuple[str, str], ...] = ()  # (column, cell) of the stage columns given (issue 14)
    nodes: int | None = None  # Slurm nodes of the run (srun + torchrun, c10d rendezvous); SWEEP_EXECUTOR=slurm

    def spec(self) -> dict[str, object]:
        """The JSON-able fields that define what runs (two rows with equal specs are the same run)."""
        return {
            "config": self.config,
            "seed": self.seed,
            "overrides": list(self.overrides),
            "gpus": self.gpus,
            "timeout_secs": self.timeout_secs,
            "retries": self.retries,
            **dict(self.stages),
            **({"nodes": self.nodes} if self.nodes and self.nodes > 1 else {}),
        }


def _usage(message: str) -> WorkflowError:
    return WorkflowError(message.replace("\r", "\\r").replace("\n", "\\n"), ExitCode.USAGE)


def _show(value: str) -> str:
    return repr(value if len(value) <= 60 else value[:57] + "...")


def _records(text: str) -> list[tuple[int, str, bool]]:
    """Split text into (first line number, record text, quote left open) records.

    Comment and blank lines outside quoted fields are dropped. Mirrors the csv dialect used
    (double quotes, doubled-quote escape, skipinitialspace) to see where a record ends.
    """
    records: list[tuple[int, str, bool]] = []
    lines: list[str] = []
    start, quoted = 0, False
    for number, line in enumerate(io.StringIO(text, newline=""), 1):
        if not quoted and (not line.strip() or line.lstrip().startswith("#")):
            continue
        start = start if lines else number
        lines.append(line)
        quoted = _ends_inside_quotes(line, quoted)
        if not quoted:
            records.append((start, "".join(lines), False))
            lines = []
    if lines:
        records.append((start, "".join(lines), True))
    return records


def _ends_inside_quotes(line: str, in_quotes: bool) -> bool:
    state = "quoted" if in_quotes else "start"
    for ch in line:
        if state == "start":
            if ch == '"':
                state = "quoted"
            elif ch not in " ,\r\n":
                state = "plain"
        elif state == "plain":
            if ch == ",":
                state = "start"
        elif state == "quoted":
            if ch == '"':
                state = "quote"
        else:  # a quote seen inside a quoted field: escaped quote, end of field, or literal text
            state = "quoted" if ch == '"' else ("start" if ch == "," else "plain")
    return state == "quoted"


def _read_text(path: Path) -> str:
    name = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _usage(f"{name}: cannot read it ({exc.strerror}); check the path to the sweep CSV") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        bad = data[exc.start : exc.start + 1].hex()
        raise _usage(f"{name} line {line}: not valid UTF-8 (byte 0x{bad}); save the file as UTF-8") from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise _usage(f"{name} line {line}: contains a NUL byte; save the sweep as a plain-text CSV")
    return text


def _check_header(name: str, line: int, header: list[str]) -> list[str]:
    columns = [c.strip() for c in header]
    where = f"{name} row {line} (header)"
    if not any(c in KNOWN_COLUMNS for c in columns):
        raise _usage(
            f"{name} row {line}: no header found (this row has no column names: {_show(','.join(header))}); "
            f"start the file with the header {','.join(KNOWN_COLUMNS[:5])}"
        )
    seen: set[str] = set()
    for col in columns:
        if col in seen:
            raise _usage(f"{where}, column {col}: column {col!r} appears twice; keep one of them")
        seen.add(col)
        if col not in KNOWN_COLUMNS:
            close = difflib.get_close_matches(col.lower(), KNOWN_COLUMNS, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else "remove it"
            raise _usage(
                f"{where}, column {col}: unknown column {col!r}; {hint} "
                f"(known columns: {', '.join(KNOWN_COLUMNS)})"
            )
    for col in REQUIRED_COLUMNS:
        if col not in seen:
            raise _usage(f"{where}, column {col}: required column {col!r} is missing; add it to the header")
    return columns


class _RowChecker:
    def __init__(self, name: str, train_workdir: Path | None) -> None:
        self.name = name
        self.workdir = train_workdir
        self.run_ids: dict[str, int] = {}

    def fail(self, line: int, column: str, problem: str) -> WorkflowError:
        return _usage(f"{self.name} row {line}, column {column}: {problem}")

    def run_id(self, line: int, raw: str) -> str:
        fix = "use 1-128 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit"
        if not raw:
            problem = "run_id is empty; give every row a unique run_id like lr3e-4"
        elif len(raw) > MAX_RUN_ID_LEN:
            problem = f"run_id {_show(raw)} is {len(raw)} characters long; use at most {MAX_RUN_ID_LEN}"
        elif "/" in raw or "\\" in raw:
            problem = f"run_id {_show(raw)} contains a slash; run ids name directories, use - or _ instead"
        elif ".." in raw:
            problem = f"run_id {_show(raw)} contains '..'; {fix}, without '..'"
        elif any(ch.isspace() for ch in raw):
            problem = f"run_id {_show(raw)} contains a space; use - or _ instead"
        elif not is_valid_id(raw):
            problem = f"run_id {_show(raw)} is not a valid id; {fix}"
        elif raw in self.run_ids:
            problem = f"run_id {raw!r} is already used by row {self.run_ids[raw]}; make every run_id unique"
        else:
            self.run_ids[raw] = line
            return raw
        raise self.fail(line, "run_id", problem)

    def config(self, line: int, raw: str) -> str:
        fix = "give a path relative to the training workdir, like config/train_tiny_cpu.py"
        if not raw:
            raise self.fail(line, "config", f"config is empty; {fix}")
        if any(ord(ch) < 32 for ch in raw):
            raise self.fail(line, "config", f"{_show(raw)} contains control characters; {fix}")
        if raw.startswith(("/", "\\")) or re.match(r"[A-Za-z]:[\\/]", raw):
            raise self.fail(line, "config", f"{_show(raw)} is an absolute path; {fix}")
        norm = posixpath.normpath(raw)
        if norm == ".." or norm.startswith("../"):
            raise self.fail(line, "config", f"{_show(raw)} escapes the training workdir; {fix}")
        if self.workdir is not None:
            target = self.workdir / norm
            if not target.exists():
                raise self.fail(
                    line, "config", f"{_show(raw)} does not exist in {self.workdir}; check the path ({fix})"
                )
            if not target.is_file():
                raise self.fail(line, "config", f"{_show(raw)} in {self.workdir} is not a file; {fix}")
        return norm

    def integer(self, line: int, column: str, raw: str, lo: int, hi: int | None, what: str) -> int:
        if not _INT_RE.match(raw):
            raise self.fail(line, column, f"{_show(raw)} is not an integer; write {what}")
        value = int(raw)
        if value < lo or (hi is not None and value > hi):
            raise self.fail(line, column, f"{value} is out of range; write {what}")
        return value

    def overrides(self, line: int, raw: str) -> tuple[str, ...]:
        try:
            words = shlex.split(raw)
        except ValueError as exc:
            raise self.fail(
                line, "overrides", f"cannot split {_show(raw)} into words ({exc}); close or escape the quote"
            ) from None
        keys: set[str] = set()
        result: list[str] = []
        for word in words:
            body = word[2:] if word.startswith("--") else word
            key, eq, value = body.partition("=")
            if not eq:
                raise self.fail(
                    line, "overrides", f"{_show(word)} is not key=value; write each override as key=value"
                )
            if not OVERRIDE_KEY_RE.match(key):
                raise self.fail(
                    line,
                    "overrides",
                    f"key {_show(key)} is not a valid name; start with a letter or _ and use "
                    "letters, digits, _ and .",
                )
            if key in RESERVED_KEYS:
                raise self.fail(line, "overrides", f"key {key!r} is reserved: {RESERVED_KEYS[key]}")
            if key in keys:
                raise self.fail(line, "overrides", f"key {key!r} is given twice; keep one of them")
            keys.add(key)
            result.append(f"{key}={value}")
        return tuple(result)


def parse_sweep_csv(path: Path, train_workdir: Path | None) -> list[SweepRow]:
    """Read and validate a sweep CSV; raise a one-line usage error at the first problem."""
    name = str(path)
    checker = _RowChecker(name, train_workdir)
    columns: list[str] | None = None
    header_line = 0
    rows: list[SweepRow] = []
    for line, record, unclosed in _records(_read_text(path)):
        if unclosed:
            raise _usage(
                f"{name} row {line}: a quoted field opened on this row is never closed; "
                'add the closing " (write "" for a quote inside a quoted field)'
            )
        try:
            parsed = list(csv.reader(io.StringIO(record, newline=""), skipinitialspace=True))
        except csv.Error as exc:
            raise _usage(f"{name} row {line}: cannot read this row as CSV ({exc}); fix it") from None
        if len(parsed) != 1:  # cannot happen while _ends_inside_quotes mirrors the csv dialect
            raise _usage(f"{name} row {line}: cannot split this row as CSV; check its quotes")
        fields = parsed[0]
        if columns is None:
            columns = _check_header(name, line, fields)
            header_line = line
            continue
        if len(fields) != len(columns):
            more = "more" if len(fields) > len(columns) else "fewer"
            raise _usage(
                f"{name} row {line}: {len(fields)} fields but the header has {len(columns)} columns "
                f"({more} than expected); quote fields that contain commas and give every column a value"
            )
        rows.append(_check_row(checker, line, dict(zip(columns, (f.strip() for f in fields)))))
    if columns is None:
        raise _usage(
            f"{name}: the file has no header and no rows; start it with the header "
            f"{','.join(KNOWN_COLUMNS[:5])} and add one row per run"
        )
    if not rows:
        raise _usage(f"{name}: only a header (line {header_line}) and no rows; add at least one run below it")
    return rows


def _check_row(checker: _RowChecker, line: int, cells: dict[str, str]) -> SweepRow:
    run_id = config = notes = ""
    seed = 0
    overrides: tuple[str, ...] = ()
    gpus: int | None = None
    timeout: int | None = None
    retries: int | None = None
    stages = tuple((c, raw) for c, raw in cells.items() if c in STAGE_COLUMNS and raw)  # checked by stage_keys
    nodes: int | None = None
    for column, raw in cells.items():  # header order, so the first problem in the row is reported
        if column == "run_id":
            run_id = checker.run_id(line, raw)
        elif column == "config":
            config = checker.config(line, raw)
        elif column == "seed":
            what = f"a whole number from 0 to {SEED_LIMIT - 1}, like 1337"
            if not raw:
                raise checker.fail(line, column, f"seed is empty; write {what}")
            seed = checker.integer(line, column, raw, 0, SEED_LIMIT - 1, what)
        elif column == "overrides":
            overrides = checker.overrides(line, raw)
        elif column == "notes":
            notes = raw.replace("\r\n", "\n")
        elif raw and column == "gpus":
            what = f"a whole number of GPUs from 1 to {MAX_GPUS}, or leave it empty for all visible GPUs"
            gpus = checker.integer(line, column, raw, 1, MAX_GPUS, what)
        elif raw and column == "timeout":
            what = "a whole number of seconds >= 0 (0 = no timeout), or leave it empty for the default"
            timeout = checker.integer(line, column, raw, 0, None, what)
        elif raw and column == "retries":
            what = f"a whole number from 0 to {MAX_RETRIES}, or leave it empty for the default"
            retries = checker.integer(line, column, raw, 0, MAX_RETRIES, what)
        elif raw and column == "nodes":
            what = f"a whole number of Slurm nodes from 1 to {MAX_NODES}, or leave it empty for one node"
            nodes = checker.integer(line, column, raw, 1, MAX_NODES, what)
    return SweepRow(line, run_id, config, seed, overrides, notes, gpus, timeout, retries, stages, nodes)


def select_rows(
    rows: Sequence[SweepRow], match: str | None, start_at: str | None, limit: int | None
) -> list[SweepRow]:
    """Apply SWEEP_MATCH (regex searched in run_id), SWEEP_START_AT (run_id) and SWEEP_LIMIT (first N)."""
    if not rows:
        raise _usage("the sweep has no rows; add at least one run to the CSV")
    selected = list(rows)
    if match:
        try:
            pattern = re.compile(match)
        except re.error as exc:
            raise _usage(f"SWEEP_MATCH {_show(match)} is not a valid regular expression ({exc})") from None
        selected = [r for r in selected if pattern.search(r.run_id)]
        if not selected:
            raise _usage(
                f"SWEEP_MATCH {_show(match)} matches no run_id (run ids: {_some_ids(rows)}); "
                "change or unset SWEEP_MATCH"
            )
    if start_at:
        ids = [r.run_id for r in rows]
        if start_at not in ids:
            close = difflib.get_close_matches(start_at, ids, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise _usage(
                f"SWEEP_START_AT {_show(start_at)} is not a run_id of this sweep; {hint}"
                f"use one of: {_some_ids(rows)}"
            )
        later = {r.run_id for r in rows[ids.index(start_at) :]}
        selected = [r for r in selected if r.run_id in later]
        if not selected:
            raise _usage(
                f"no row at or after SWEEP_START_AT {start_at!r} matches SWEEP_MATCH {_show(match or '')}; "
                "change SWEEP_START_AT or SWEEP_MATCH"
            )
    if limit is not None:
        if limit <= 0:
            raise _usage(f"SWEEP_LIMIT is {limit}; set it to a positive number of rows, or unset it")
        selected = selected[:limit]
    return selected


def select_part(
    rows: Sequence[SweepRow], match: str | None, start_at: str | None, limit: int | None
) -> tuple[list[SweepRow], int | None, int | None]:
    """SWEEP_START_AT / SWEEP_LIMIT as a part of the sweep (like --index-offset / --num-jobs): the rows
    SWEEP_MATCH selects (the whole sweep, the campaign's manifest), the part's offset in them (None: from
    row 0 unless --index-offset says otherwise) and its count (None: to the last row). Checked as
    :func:`select_rows` checks them, with the same one-line errors."""
    chosen = select_rows(rows, match, start_at, limit)
    whole = select_rows(rows, match, None, None)
    return whole, (whole.index(chosen[0]) if start_at else None), limit


def _some_ids(rows: Sequence[SweepRow], n: int = 5) -> str:
    shown = ", ".join(r.run_id for r in rows[:n])
    return shown + (f", ... ({len(rows)} in all)" if len(rows) > n else "")


TEMPLATE_CSV = """\
# Sweep CSV for workflow.sh: one training run per row.
# Lines whose first non-space character is # are comments; blank lines are ignored.
# Columns:
#   run_id     unique name of the run: 1-128 characters from A-Z a-z 0-9 . _ - (names its directory)
#   config     trainer config file, relative to the training workdir (default examples/nanogpt)
#   seed       whole number from 0 to 2147483647; the runner passes it to the trainer as seed=N
#   overrides  space-separated key=value words for the trainer, shell-style quoting ('key=a b');
#              seed and out_dir are set by the runner and cannot be overridden here
#   notes      free text for you; quote the field if it contains commas
# Optional columns (add them to the header to use them; an empty cell means the default):
#   gpus       GPUs this run needs, 1-64 (empty = all visible GPUs)
#   timeout    wall-clock limit in seconds (0 = no timeout)
#   retries    how many times to retry a failed run, 0-10
#   nodes      Slurm nodes for the run, 1-64 (SWEEP_EXECUTOR=slurm: srun + torchrun, c10d rendezvous)
#   eval_small_cmd, gate_small, eval_full_cmd, gate_full
#              this row's evaluation stages and gates (override EVAL_SMALL_CMD, GATE_SMALL, ...)
run_id,config,seed,overrides,notes
lr3e-4-s1,config/train_tiny_cpu.py,1,learning_rate=3e-4,baseline
lr3e-4-s2,config/train_tiny_cpu.py,2,learning_rate=3e-4,"baseline, second seed"
lr1e-3-s1,config/train_tiny_cpu.py,1,learning_rate=1e-3,higher learning rate
lr1e-3-s2,config/train_tiny_cpu.py,2,"learning_rate=1e-3 max_iters=200","higher learning rate, longer"
"""


def write_template(out: Path) -> None:
    """Write TEMPLATE_CSV to ``out``, creating parent directories; never overwrite anything."""
    message = f"{out} already exists; will not overwrite it, choose another path"
    refused = WorkflowError(message, ExitCode.REFUSED)
    if out.exists() or out.is_symlink():
        raise refused
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with out.open("x", encoding="utf-8", newline="") as handle:
            handle.write(TEMPLATE_CSV)
    except FileExistsError:
        raise refused from None

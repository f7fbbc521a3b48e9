"""Tests of helpers/sweep_csv.py: parsing, validation, row selection and the template."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from helpers.errors import ExitCode, WorkflowError
from helpers.sweep_csv import TEMPLATE_CSV, SweepRow, parse_sweep_csv, select_part, select_rows, write_template

DATA = Path(__file__).resolve().parent / "data"
BAD = DATA / "csv_bad"
GOOD = DATA / "csv_good"
WORKDIR = DATA / "csv_workdir"
EXPECTED: dict[str, dict[str, object]] = json.loads((BAD / "EXPECTED.json").read_text(encoding="utf-8"))
HEADER = "run_id,config,seed,overrides,notes\n"
CFG = "config/train_tiny_cpu.py"


def write(tmp_path: Path, text: str | bytes, name: str = "sweep.csv") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_bytes(text.encode("utf-8"))
    return path


def parse(tmp_path: Path, text: str | bytes, workdir: Path | None = WORKDIR) -> list[SweepRow]:
    return parse_sweep_csv(write(tmp_path, text), workdir)


def usage_error(tmp_path: Path, text: str | bytes, workdir: Path | None = WORKDIR) -> str:
    with pytest.raises(WorkflowError) as info:
        parse(tmp_path, text, workdir)
    assert info.value.code == ExitCode.USAGE == 2
    message = info.value.message
    assert "\n" not in message and "\r" not in message
    assert "sweep.csv" in message
    return message


def rows_of(*specs: tuple[str, int]) -> list[SweepRow]:
    return [SweepRow(i + 2, rid, CFG, seed, (), "", None, None, None) for i, (rid, seed) in enumerate(specs)]


# --- the corpus of malformed files ------------------------------------------------------------------


def test_corpus_is_complete() -> None:
    files = {p.name for p in BAD.glob("*.csv")}
    assert len(files) >= 24
    assert files == set(EXPECTED), "every corpus file needs an EXPECTED.json entry and vice versa"
    for entry in EXPECTED.values():
        assert set(entry) == {"row", "column", "contains"}
        assert entry["row"] is None or isinstance(entry["row"], int)
        assert entry["column"] is None or isinstance(entry["column"], str)
        assert isinstance(entry["contains"], str) and entry["contains"]
    assert (WORKDIR / CFG).is_file()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_csv_corpus(name: str) -> None:
    expected = EXPECTED[name]
    with pytest.raises(WorkflowError) as info:
        parse_sweep_csv(BAD / name, WORKDIR)
    err = info.value
    assert err.code == ExitCode.USAGE == 2
    message = err.message
    assert "\n" not in message and "\r" not in message, message
    assert name in message
    if expected["row"] is not None:
        assert re.search(rf"\brow {expected['row']}\b", message), message
    if expected["column"] is not None:
        assert f"column {expected['column']}" in message, message
    assert str(expected["contains"]) in message, message


WORKDIR_ONLY = {"config_missing.csv", "config_is_directory.csv"}


@pytest.mark.parametrize("name", sorted(set(EXPECTED) - WORKDIR_ONLY))
def test_bad_csv_corpus_without_workdir(name: str) -> None:
    """Problems that do not need the workdir are found without one too."""
    with pytest.raises(WorkflowError) as info:
        parse_sweep_csv(BAD / name, None)
    assert str(EXPECTED[name]["contains"]) in info.value.message


# --- valid files --------------------------------------------------------------------------------------


def test_good_quoting() -> None:
    rows = parse_sweep_csv(GOOD / "quoting.csv", WORKDIR)
    assert [r.run_id for r in rows] == ["lr3e-4", "lr1e-3", "multi", "last"]
    assert [r.row_number for r in rows] == [4, 6, 8, 11]
    assert rows[0].overrides == ("learning_rate=3e-4", "batch_size=8")
    assert rows[1].overrides == ("learning_rate=1e-3", "note_text=a b")
    assert rows[1].notes == "quoted, with comma"
    assert rows[2].config == CFG  # ./ normalised away
    assert rows[2].overrides == ("max_iters=5",)
    assert rows[2].notes == 'first line\n# not a comment: inside quotes\nthird line with "quotes"'
    assert rows[3] == SweepRow(11, "last", CFG, 0, (), "no newline at the end", None, None, None)


def test_good_bom_crlf() -> None:
    rows = parse_sweep_csv(GOOD / "bom_crlf.csv", WORKDIR)
    assert [(r.row_number, r.run_id, r.seed) for r in rows] == [(3, "a1", 1), (6, "a2", 2**31 - 1)]
    assert rows[0].notes == "crlf, quoted"
    assert rows[1].notes == "two\nlines"


def test_good_optional_columns() -> None:
    rows = parse_sweep_csv(GOOD / "optional_columns.csv", WORKDIR)
    assert rows[0] == SweepRow(3, "g1", CFG, 7, ("dropout=0.1", "model.n_layer=2"), "a, b", 1, 0, 3)
    assert rows[1] == SweepRow(4, "g2", CFG, 8, (), "", None, None, None)
    assert rows[2] == SweepRow(5, "g3", CFG, 9, ("empty_value=",), "", 64, 3600, 10)


def test_good_minimal_keeps_last_row_without_newline() -> None:
    rows = parse_sweep_csv(GOOD / "minimal.csv", WORKDIR)
    assert [(r.row_number, r.run_id, r.overrides, r.notes) for r in rows] == [
        (2, "m1", (), ""),
        (3, "m2", (), ""),
    ]


@pytest.mark.parametrize("name", ["quoting.csv", "bom_crlf.csv", "optional_columns.csv", "minimal.csv"])
def test_good_files_parse_without_workdir(name: str) -> None:
    assert parse_sweep_csv(GOOD / name, WORKDIR) == parse_sweep_csv(GOOD / name, None)


def test_brief_example(tmp_path: Path) -> None:
    text = (
        "# my sweep (comment lines start with '#')\n"
        + HEADER
        + f'lr3e-4,{CFG},1,"learning_rate=3e-4 batch_size=8",baseline\n'
        + f'lr1e-3,{CFG},2,"learning_rate=1e-3 \'note_text=a b\'","quoted, with comma"\n'
    )
    rows = parse(tmp_path, text)
    assert rows == [
        SweepRow(3, "lr3e-4", CFG, 1, ("learning_rate=3e-4", "batch_size=8"), "baseline", None, None, None),
        SweepRow(
            4,
            "lr1e-3",
            CFG,
            2,
            ("learning_rate=1e-3", "note_text=a b"),
            "quoted, with comma",
            None,
            None,
            None,
        ),
    ]


def test_no_trailing_newline_keeps_last_row(tmp_path: Path) -> None:
    rows = parse(tmp_path, HEADER + f"a,{CFG},1,,\nb,{CFG},2,x=1,last")
    assert [r.run_id for r in rows] == ["a", "b"]
    assert rows[-1].notes == "last" and rows[-1].overrides == ("x=1",)


def test_quoted_last_field_without_newline(tmp_path: Path) -> None:
    rows = parse(tmp_path, HEADER + f'a,{CFG},1,,"multi\nline, notes"')
    assert rows[0].notes == "multi\nline, notes"


def test_bom_crlf_and_comments_everywhere(tmp_path: Path) -> None:
    text = "\ufeff# c\r\n\r\n   # c2\r\n" + HEADER.replace("\n", "\r\n") + f"#x\r\na,{CFG},1,,n\r\n\r\n#end"
    rows = parse(tmp_path, text)
    assert [(r.row_number, r.run_id, r.notes) for r in rows] == [(6, "a", "n")]


def test_bom_before_header(tmp_path: Path) -> None:
    assert parse(tmp_path, ("\ufeff" + HEADER + f"a,{CFG},1,,\n").encode())[0].run_id == "a"


def test_hash_inside_fields_and_quotes_is_data(tmp_path: Path) -> None:
    text = HEADER + f'a,{CFG},1,"x=#1",note # not a comment\nb,{CFG},2,,"\n# inside quotes\n"\n'
    rows = parse(tmp_path, text)
    assert rows[0].overrides == ("x=#1",) and rows[0].notes == "note # not a comment"
    assert rows[1].notes == "# inside quotes"  # surrounding whitespace of a field is stripped


def test_comment_with_quote_does_not_open_a_field(tmp_path: Path) -> None:
    text = '# a, "comment with an open quote\n' + HEADER + f"a,{CFG},1,,\n"
    assert [r.run_id for r in parse(tmp_path, text)] == ["a"]


def test_escaped_quotes_and_text_after_closing_quote(tmp_path: Path) -> None:
    rows = parse(tmp_path, HEADER + f'a,{CFG},1,,"say ""hi"", ok"\nb,{CFG},2,,"x"y\n')
    assert rows[0].notes == 'say "hi", ok'
    assert rows[1].notes == "xy"


def test_overrides_normalised(tmp_path: Path) -> None:
    rows = parse(tmp_path, HEADER + f"a,{CFG},1,\"--lr=1 b.c=2 'd=e f' g='h i' --j=\",\n")
    assert rows[0].overrides == ("lr=1", "b.c=2", "d=e f", "g=h i", "j=")


def test_spec_is_json_and_defines_the_run(tmp_path: Path) -> None:
    text = "run_id,config,seed,overrides,notes,gpus,timeout,retries\n"
    text += f"a,{CFG},1,lr=1,first,2,60,1\nb,./{CFG},1,--lr=1,other notes,2,60,1\nc,{CFG},1,lr=1,,2,60,\n"
    a, b, c = parse(tmp_path, text)
    assert a.spec() == {
        "config": CFG,
        "seed": 1,
        "overrides": ["lr=1"],
        "gpus": 2,
        "timeout_secs": 60,
        "retries": 1,
    }
    assert json.loads(json.dumps(a.spec())) == a.spec()
    assert a.spec() == b.spec()  # run_id and notes do not change what runs
    assert a.spec() != c.spec()


def test_frozen_row() -> None:
    row = rows_of(("a", 1))[0]
    with pytest.raises(AttributeError):
        row.seed = 2  # type: ignore[misc]


def test_without_workdir_config_is_not_checked_for_existence(tmp_path: Path) -> None:
    rows = parse(tmp_path, HEADER + "a,config/elsewhere.py,1,,\nb,config,2,,\n", workdir=None)
    assert [r.config for r in rows] == ["config/elsewhere.py", "config"]
    for name in WORKDIR_ONLY:
        assert parse_sweep_csv(BAD / name, None)


def test_config_inside_workdir_via_dotdot_is_fine(tmp_path: Path) -> None:
    rows = parse(tmp_path, HEADER + "a,config/../config/train_tiny_cpu.py,1,,\n")
    assert rows[0].config == CFG


def test_seed_bounds_and_plus_sign(tmp_path: Path) -> None:
    rows = parse(tmp_path, HEADER + f"a,{CFG},0,,\nb,{CFG},2147483647,,\nc,{CFG},+5,,\n")
    assert [r.seed for r in rows] == [0, 2**31 - 1, 5]


def test_header_without_optional_columns(tmp_path: Path) -> None:
    rows = parse(tmp_path, f"config,seed,run_id\n{CFG},3,x\n")
    assert rows == [SweepRow(2, "x", CFG, 3, (), "", None, None, None)]


# --- errors not in the corpus ---------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(WorkflowError) as info:
        parse_sweep_csv(tmp_path / "nope.csv", WORKDIR)
    assert info.value.code == 2 and "nope.csv" in info.value.message
    assert "no such file" in info.value.message.lower()


def test_directory_instead_of_file(tmp_path: Path) -> None:
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(WorkflowError) as info:
        parse_sweep_csv(tmp_path / "dir.csv", WORKDIR)
    assert info.value.code == 2 and "is a directory" in info.value.message.lower()


def test_first_error_in_file_order(tmp_path: Path) -> None:
    text = HEADER + f"a,{CFG},x,,\nb/c,{CFG},1,,\n"
    assert "row 2, column seed" in usage_error(tmp_path, text)
    # within a row, columns are checked in header order
    text = f"seed,run_id,config\nx,a/b,{CFG}\n"
    assert "row 2, column seed" in usage_error(tmp_path, text)


def test_row_errors_come_before_a_later_unclosed_quote(tmp_path: Path) -> None:
    text = HEADER + f'a,{CFG},x,,\nb,{CFG},1,,"open\n'
    assert "row 2, column seed" in usage_error(tmp_path, text)


def test_row_numbers_count_multiline_records(tmp_path: Path) -> None:
    text = HEADER + f'a,{CFG},1,,"one\ntwo\nthree"\n# comment\n\nb,{CFG},zz,,\n'
    assert "row 7, column seed" in usage_error(tmp_path, text)


def test_nul_byte(tmp_path: Path) -> None:
    message = usage_error(tmp_path, HEADER + f"a,{CFG},1,,x\x00y\n")
    assert "line 2" in message and "NUL" in message


def test_not_utf8_names_line(tmp_path: Path) -> None:
    message = usage_error(tmp_path, HEADER.encode() + b"a,x,1,,\xff\xfe\n")
    assert "line 2" in message and "UTF-8" in message


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("'a b", "No closing quotation"),
        ("x", "'x' is not key=value"),
        ("-x=1", "key '-x' is not a valid name"),
        ("=1", "key '' is not a valid name"),
        ("a-b=1", "key 'a-b' is not a valid name"),
        ("--seed=3", "key 'seed' is reserved"),
        ("out_dir=o", "key 'out_dir' is reserved"),
        ("a=1 --a=2", "key 'a' is given twice"),
    ],
)
def test_override_errors(tmp_path: Path, value: str, needle: str) -> None:
    message = usage_error(tmp_path, HEADER + f'r,{CFG},1,"{value}",\n')
    assert "row 2, column overrides" in message and needle in message


def test_seed_message_says_use_seed_column(tmp_path: Path) -> None:
    assert "seed column" in usage_error(tmp_path, HEADER + f"r,{CFG},1,seed=2,\n")


@pytest.mark.parametrize(
    ("column", "value", "needle"),
    [
        ("gpus", "-1", "-1 is out of range"),
        ("gpus", "1.0", "'1.0' is not an integer"),
        ("timeout", "2.5", "'2.5' is not an integer"),
        ("retries", "-1", "-1 is out of range"),
        ("retries", "x", "'x' is not an integer"),
    ],
)
def test_optional_column_errors(tmp_path: Path, column: str, value: str, needle: str) -> None:
    message = usage_error(tmp_path, f"run_id,config,seed,{column}\nr,{CFG},1,{value}\n")
    assert f"row 2, column {column}" in message and needle in message


def test_unknown_column_without_close_match(tmp_path: Path) -> None:
    message = usage_error(tmp_path, f"run_id,config,seed,zzzzzz\nr,{CFG},1,x\n")
    assert "unknown column 'zzzzzz'; remove it" in message


def test_run_id_newline_is_shown_escaped(tmp_path: Path) -> None:
    message = usage_error(tmp_path, HEADER + f'"a\nb",{CFG},1,,\n')
    assert "row 2, column run_id" in message


def test_run_id_128_is_fine(tmp_path: Path) -> None:
    assert parse(tmp_path, HEADER + f"{'r' * 128},{CFG},1,,\n")[0].run_id == "r" * 128


def test_config_absolute_and_escape_rejected_without_workdir(tmp_path: Path) -> None:
    assert "absolute path" in usage_error(tmp_path, HEADER + "a,/abs/x.py,1,,\n", workdir=None)
    assert "escapes the training workdir" in usage_error(tmp_path, HEADER + "a,../x.py,1,,\n", workdir=None)


def test_whitespace_only_required_field(tmp_path: Path) -> None:
    assert "run_id is empty" in usage_error(tmp_path, HEADER + f"  ,{CFG},1,,\n")


# --- select_rows ------------------------------------------------------------------------------------------


ROWS = rows_of(("lr1", 1), ("lr2", 2), ("wd1", 3), ("lr3", 4), ("wd2", 5), ("lr4", 6))


def ids(rows: list[SweepRow]) -> list[str]:
    return [r.run_id for r in rows]


def test_select_all() -> None:
    assert select_rows(ROWS, None, None, None) == ROWS
    assert select_rows(ROWS, "", "", None) == ROWS


def test_select_match_start_limit() -> None:
    assert ids(select_rows(ROWS, "^lr", None, None)) == ["lr1", "lr2", "lr3", "lr4"]
    assert ids(select_rows(ROWS, "d", None, None)) == ["wd1", "wd2"]  # search, not fullmatch
    assert ids(select_rows(ROWS, None, "wd1", None)) == ["wd1", "lr3", "wd2", "lr4"]
    assert ids(select_rows(ROWS, "^lr", "wd1", None)) == ["lr3", "lr4"]  # start_at need not match
    assert ids(select_rows(ROWS, "^lr", "lr2", 2)) == ["lr2", "lr3"]
    assert ids(select_rows(ROWS, None, None, 100)) == ids(ROWS)


def test_start_at_and_limit_are_a_part_of_the_matched_rows() -> None:
    """SWEEP_START_AT / SWEEP_LIMIT as a part (like --index-offset / --num-jobs): the campaign is every row
    SWEEP_MATCH selects, the part starts at the matched row at or after SWEEP_START_AT."""
    whole, offset, count = select_part(ROWS, "^lr", "wd1", 1)
    assert ids(whole) == ["lr1", "lr2", "lr3", "lr4"] and (offset, count) == (2, 1)  # lr3: first match after wd1
    assert select_part(ROWS, None, None, None) == (ROWS, None, None)
    assert select_part(ROWS, None, None, 2) == (ROWS, None, 2)
    with pytest.raises(WorkflowError) as info:
        select_part(ROWS, None, "lr9", None)  # the same one-line errors as the selection
    assert "SWEEP_START_AT 'lr9'" in info.value.message and info.value.code == ExitCode.USAGE


def selection_error(match: str | None, start_at: str | None, limit: int | None) -> str:
    with pytest.raises(WorkflowError) as info:
        select_rows(ROWS, match, start_at, limit)
    assert info.value.code == ExitCode.USAGE
    assert "\n" not in info.value.message
    return info.value.message


def test_select_errors() -> None:
    assert "SWEEP_MATCH" in selection_error("(", None, None)
    message = selection_error("^zz", None, None)
    assert "SWEEP_MATCH" in message and "matches no run_id" in message
    message = selection_error(None, "lr9", None)
    assert "SWEEP_START_AT 'lr9'" in message and "lr1, lr2" in message and "(6 in all)" in message
    message = selection_error("^wd", "lr4", None)
    assert "SWEEP_START_AT" in message and "SWEEP_MATCH" in message
    assert "SWEEP_LIMIT" in selection_error(None, None, 0)
    assert "SWEEP_LIMIT" in selection_error(None, None, -3)
    with pytest.raises(WorkflowError):
        select_rows([], None, None, None)


# --- template ---------------------------------------------------------------------------------------


def test_template_parses(tmp_path: Path) -> None:
    assert TEMPLATE_CSV.endswith("\n")
    assert TEMPLATE_CSV.lstrip().startswith("#")
    rows = parse(tmp_path, TEMPLATE_CSV)
    assert len(rows) == 4
    assert {r.config for r in rows} == {CFG}
    assert len({(r.seed, r.overrides) for r in rows}) == 4
    assert len({r.overrides[0] for r in rows}) >= 2  # different learning rates
    for column in ("run_id", "config", "seed", "overrides", "notes", "gpus", "timeout", "retries"):
        assert re.search(rf"^#\s+{column}\b", TEMPLATE_CSV, re.M), column


def test_write_template(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "sweep.csv"
    write_template(out)
    assert out.read_text(encoding="utf-8") == TEMPLATE_CSV
    assert len(parse_sweep_csv(out, WORKDIR)) == 4


def test_write_template_never_overwrites(tmp_path: Path) -> None:
    out = tmp_path / "sweep.csv"
    out.write_text("mine\n")
    with pytest.raises(WorkflowError) as info:
        write_template(out)
    assert info.value.code == ExitCode.REFUSED
    assert str(out) in info.value.message
    assert out.read_text() == "mine\n"


def test_write_template_refuses_dangling_symlink(tmp_path: Path) -> None:
    out = tmp_path / "link.csv"
    out.symlink_to(tmp_path / "missing-target")
    with pytest.raises(WorkflowError) as info:
        write_template(out)
    assert info.value.code == ExitCode.REFUSED
    assert not (tmp_path / "missing-target").exists()

"""Progress where a person waits, and state colours in the status tables: present on a terminal (a real
pseudo-terminal), absent in a pipe, none with NO_COLOR."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from conftest import Pod
from test_dashboard import COLOUR, ESCAPE, Terminal

from helpers.colour import painter
from helpers.render import table


def test_painted_table_keeps_its_columns():
    rows = [["a", "failed", "1"], ["bb", "ok", "2"], ["c", "running", "3"]]
    plain = table(["ID", "STATE", "N"], rows)
    painted = table(["ID", "STATE", "N"], rows, painter(1, True))
    assert [COLOUR.sub("", line).replace("\x1b[0m", "").rstrip() for line in painted] == plain
    assert "\x1b[31mfailed" in painted[1] and "\x1b[32mok" in painted[2] and "\x1b[36mrunning" in painted[3]
    assert painter(1, False) is None


def _run_dir(pod: Pod, run_id: str, files: int) -> Path:
    path = pod.outputs / run_id
    path.mkdir(parents=True)
    for number in range(files):
        (path / f"part-{number}.bin").write_bytes(b"x" * 200_000)
    return path


def test_fetch_shows_files_and_bytes_on_a_terminal_only(local_pod: Pod):
    _run_dir(local_pod, "fx-run", 5)
    term = Terminal(local_pod, ["fetch-run", "fx-run"], 120, 30)
    try:
        assert term.wait(120) == 0, term.text
    finally:
        term.kill()
    assert "fetch: 5/5 files, 1.0 MB/1.0 MB" in term.text, term.text
    assert "\r\x1b[2K" in term.text and "fetched 5 " in term.text
    _run_dir(local_pod, "fx-two", 2)
    piped = local_pod.wf("fetch-run", "fx-two")
    assert piped.returncode == 0, piped.stderr
    assert not ESCAPE.search(piped.stdout + piped.stderr) and "fetch:" not in piped.stderr


def test_task_wait_shows_elapsed_and_last_line_and_task_list_is_coloured(local_pod: Pod):
    started = local_pod.wf("task-run", "--id", "slowtask", "--cmd",
                           "for i in 1 2 3 4 5 6; do echo step-$i; sleep 1; done")
    assert started.returncode == 0, started.stderr
    term = Terminal(local_pod, ["task-wait", "--id", "slowtask"], 120, 30)
    try:
        assert term.wait(120) == 0, term.text
    finally:
        term.kill()
    assert "task slowtask: running" in term.text and "| step-" in term.text, term.text
    assert "task slowtask: success" in term.text
    piped = local_pod.wf("task-wait", "--id", "slowtask")
    assert piped.returncode == 0 and not ESCAPE.search(piped.stdout + piped.stderr)
    listed = Terminal(local_pod, ["task-list"], 120, 30)
    assert listed.wait(60) == 0
    assert "\x1b[32msuccess" in listed.text, listed.text
    plain = Terminal(local_pod, ["task-list"], 120, 30, env={"NO_COLOR": "1"})
    assert plain.wait(60) == 0
    assert "success" in plain.text and not COLOUR.search(plain.text)
    assert not ESCAPE.search(local_pod.wf("task-list").stdout)


def test_pod_steps_tick_only_when_asked(tmp_path: Path, capsys):
    import time

    from helpers.pod.context import Context
    from helpers.pod.ticker import Ticker

    folder = tmp_path / "download"
    folder.mkdir()
    with Ticker(Context({}, {"progress": True}), "checkout: FineWeb download", folder=str(folder), every=0.2):
        (folder / "shard.bin").write_bytes(b"x" * 3_000_000)
        time.sleep(0.7)
    lines = capsys.readouterr().err.splitlines()
    assert lines[:-1] and all(line.startswith("checkout: FineWeb download: 0m00s") for line in lines[:-1]), lines
    assert lines[-1].startswith("checkout: FineWeb download: done in 0m00s, 3.0 MB, ") and "/s" in lines[-1]
    with Ticker(Context({}, {}), "checkout: pip install", every=0.1):
        time.sleep(0.4)
    assert capsys.readouterr().err == ""  # a pipe: no ticks


def test_a_wait_ticks_below_its_notes_on_a_terminal_only(tmp_path: Path):
    import io
    import time

    from helpers.progress import Progress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    with Progress("pod-up", stream=out).ticking("waiting for SSH", every=0.1) as waiting:
        time.sleep(0.3)
        assert out.getvalue() == ""  # nothing before the wait begins
        waiting.note("lium pod p1: PENDING after 1 s")
        time.sleep(0.35)
    text = out.getvalue()
    assert text.startswith("lium pod p1: PENDING after 1 s\n") and "pod-up: waiting for SSH, 0." in text
    assert text.endswith("\r\x1b[2K")  # the line is gone at the end
    piped = io.StringIO()
    with Progress("pod-up", stream=piped).ticking("waiting for SSH", every=0.1) as waiting:
        waiting.note("lium pod p1: RUNNING after 9 s")
        time.sleep(0.3)
    assert piped.getvalue() == "lium pod p1: RUNNING after 9 s\n"


def test_rsync_progress2_lines_give_bytes_and_files():
    from helpers.progress import rsync_counts

    assert rsync_counts("      6,000,000  66%   87.55MB/s    0:00:00 (xfr#2, to-chk=1/4)") == (6_000_000, 2)
    assert rsync_counts("         32,768   0%    0.00kB/s    0:00:00  ") == (32_768, 0)
    assert rsync_counts("sent 1,234 bytes  received 9,000,000 bytes") is None
    assert rsync_counts("") is None


def test_checkout_shows_each_steps_time_on_a_terminal_only(pod: Pod):
    """A real checkout, local and over SSH (clone, then a fetch; pip install each time): on a terminal every long step
    ends with a line saying how long it took (and, for the clone and pip, the bytes written); in a pipe
    none of those lines and no escape codes."""
    pod.set(PIP_INSTALL_ARGS="--no-index pip")  # a real pip run that needs no package index
    assert pod.wf("bootstrap", timeout=600).returncode == 0
    term = Terminal(pod, ["checkout"], 120, 30)
    try:
        assert term.wait(600) == 0, term.text
    finally:
        term.kill()
    assert "checkout: git clone: done in 0m" in term.text and "checkout OK" in term.text, term.text
    assert "checkout: pip install --no-index pip: done in 0m" in term.text, term.text
    clone_line = next(line for line in term.text.splitlines() if "git clone: done in" in line)
    assert re.search(r"done in 0m\d\ds, [\d.]+ [KMG]?B, [\d.]+ [KMG]?B/s", clone_line), clone_line  # bytes, rate
    piped = pod.wf("checkout", timeout=600)
    assert piped.returncode == 0, piped.stderr
    assert "checkout: fetching" in piped.stderr  # the step's own line stays
    assert "done in" not in piped.stderr and not ESCAPE.search(piped.stdout + piped.stderr), piped.stderr
    again = Terminal(pod, ["checkout"], 120, 30)
    try:
        assert again.wait(600) == 0, again.text
    finally:
        again.kill()
    assert "checkout: git fetch: done in 0m" in again.text, again.text


def _finished_campaign(pod: Pod, runs: int, files: int, size: int) -> None:
    """A campaign's runs on the pod, each with `files` files of `size` bytes (and its campaign.json, summary.json)."""
    campaign = "20261203-000000-prog0"
    rows = []
    for number in range(runs):
        run_id = f"pg-{number}"
        run = _run_dir(pod, run_id, 0)
        for part in range(files):
            (run / f"part-{part}.bin").write_bytes(os.urandom(size))
        stamp = {"campaign_id": campaign, "spec_hash": f"{number:016x}"}
        (run / "campaign.json").write_text(json.dumps(stamp))
        (run / "summary.json").write_text(json.dumps({"ok": True, "state": "success", **stamp}))
        rows.append({"run_id": run_id, "spec_hash": stamp["spec_hash"]})
    cdir = pod.outputs / "_campaigns" / campaign
    cdir.mkdir(parents=True)
    (cdir / "manifest.json").write_text(json.dumps({"campaign_id": campaign, "rows": rows, "config": {}}))
    (pod.outputs / "_control").mkdir(exist_ok=True)
    (pod.outputs / "_control" / "latest_campaign").write_text(campaign + "\n")


def test_fetch_all_over_ssh_shows_its_own_files_and_bytes_on_a_terminal_only(ssh_pod: Pod, tmp_path: Path):
    _finished_campaign(ssh_pod, 2, 5, 100_000)
    term = Terminal(ssh_pod, ["fetch-all"], 120, 30)
    try:
        assert term.wait(300) == 0, term.text
    finally:
        term.kill()
    assert "fetch: 14/14 files, 1.0 MB/1.0 MB, " in term.text, term.text  # the tool's line, not rsync's
    assert "xfr#" not in term.text and "to-chk" not in term.text, term.text
    assert "\r\x1b[2K" in term.text and "fetched 14 " in term.text, term.text
    shutil.rmtree(tmp_path / "artifacts")
    piped = ssh_pod.wf("fetch-all", timeout=300)
    assert piped.returncode == 0, piped.stderr
    assert "fetched 14 " in piped.stdout, piped.stdout
    assert not ESCAPE.search(piped.stdout + piped.stderr) and "fetch:" not in piped.stderr, piped.stderr

"""sweep-watch's live view (helpers/dashboard/) and the sweep-watch-data pod op.

The live view runs under a real pseudo-terminal (and in a real tmux pane, driven with libtmux): rows
appear with their state coloured, a failed row is shown failed, `q` quits while the sweep goes on, the
screen fits 80x24 and 200x50; NO_COLOR has no colour codes; --plain and a pipe have no escape codes at
all; when the sweep ends the final table stays and the exit code is sweep-status's. The pod op is
checked for reading metrics.jsonl from the offset it was given, not from the start.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import WORKFLOW, Pod, cleanup_pod, make_pod, wait_until
from test_sweeps import setup_pod, start, status_json, wait_campaign, write_csv

from helpers.dashboard.model import WatchModel, sparkline
from helpers.pod.watchdata import read_points

COLOUR = re.compile(r"\x1b\[[0-9;]*3[0-7](;[0-9]+)*m|\x1b\[[0-9;]*38;[25];")
ESCAPE = re.compile(r"\x1b[\[\]()=>78]")


# ----------------------------------------------------------------------------- no pod needed


def test_sparkline_runs_low_to_high():
    assert sparkline([3.0, 2.0, 1.0]) == "█▄▁"
    assert sparkline([1.0, 1.0]) == "▄▄"
    assert sparkline([]) == ""
    assert len(sparkline([float(i) for i in range(100)], width=12)) == 12


def test_metrics_are_read_from_the_remembered_offset(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"iter": i, "train_loss": 10.0 - i}) + "\n" for i in range(5)))
    first = read_points(str(path), None, 60)
    assert [p["iter"] for p in first["points"]] == [0, 1, 2, 3, 4] and first["reset"]
    assert first["offset"] == path.stat().st_size
    with path.open("a") as handle:  # two more lines, the second one half-written
        handle.write(json.dumps({"iter": 5, "train_loss": 5.0, "val_loss": 4.5}) + "\n" + '{"iter": 6, "tra')
    second = read_points(str(path), first["offset"], 60)
    assert second["points"] == [{"iter": 5, "train_loss": 5.0, "val_loss": 4.5}] and not second["reset"]
    assert read_points(str(path), second["offset"], 60)["points"] == []  # the partial line waits
    path.write_text(json.dumps({"iter": 0, "train_loss": 9.0}) + "\n")  # replaced (a resumed run trims it)
    third = read_points(str(path), second["offset"], 60)
    assert third["reset"] and [p["iter"] for p in third["points"]] == [0]


def test_model_keeps_history_and_restarts_it_on_reset():
    model = WatchModel(None)
    reply = {"campaign_id": "c1", "executor": {"state": "running"}, "columns": ["run_id", "state", "duration_s"],
             "rows": [["r1", "running", 10.0]], "totals": {"running": 1}, "total": 1}
    points = [{"iter": i, "train_loss": 5.0 - i} for i in range(1, 4)]
    model.merge({**reply, "metrics": {"r1": {"offset": 90, "points": points, "reset": True, "max_steps": 6}}})
    assert model.request()["cursors"] == {"r1": 90}
    more = {"offset": 120, "points": [{"iter": 4, "train_loss": 1.0, "val_loss": 1.5}], "reset": False}
    model.merge({**reply, "rows": [["r1", "running", 20.0]], "metrics": {"r1": more}})
    row = model.rows()[0]
    assert (row["step"], row["max_steps"], row["train_loss"], row["val_loss"]) == (4, 6, 1.0, 1.5)
    assert row["train_spark"] == "█▆▃▁" and row["eta_s"] == pytest.approx(10.0) and row["stage"] == "train"
    model.merge({**reply, "metrics": {"r1": {"offset": 10, "points": [{"iter": 0}], "reset": True}}})
    assert model.rows()[0]["step"] == 0 and model.request()["cursors"] == {"r1": 10}


def _thousand_rows() -> WatchModel:
    model = WatchModel(None)
    states = ["ok", "running", "failed", "queued"]
    rows = [[f"row-{i:04d}", states[i % 4], 1, 30.0 if i % 4 == 1 else None, "oom" if i % 4 == 2 else None]
            for i in range(1000)]
    metrics = {f"row-{i:04d}": {"offset": 10, "reset": True, "max_steps": 100,
                                "points": [{"iter": s, "train_loss": 5.0 - s / 10, "val_loss": 5.1 - s / 10,
                                            "tokens_per_sec": 12345.0} for s in range(1, 40)]}
               for i in range(1, 1000, 4)}
    model.merge({"campaign_id": "20261203-000000-abcdef", "created_utc": "x", "total": 1000,
                 "executor": {"state": "running"}, "columns": ["run_id", "state", "attempts", "duration_s",
                                                               "failure_class"],
                 "rows": rows, "totals": {"ok": 250, "running": 250, "failed": 250, "queued": 250},
                 "gpus": [{"index": 0, "util": 97.0, "mem_used": 40000.0, "mem_total": 81920.0}],
                 "heartbeat_age_s": 1.0, "metrics": metrics})
    return model


@pytest.mark.parametrize("cols,lines", [(80, 24), (200, 50)])
def test_a_thousand_rows_fit_the_screen_and_scroll(cols: int, lines: int):
    import io

    from rich.console import Console

    from helpers.dashboard.live import View, render

    model, view = _thousand_rows(), View()

    def screen() -> list[str]:
        out = io.StringIO()
        console = Console(file=out, width=cols, height=lines, force_terminal=True, color_system="standard")
        console.print(render(model, view, cols, lines, 2.0))
        return [re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", line) for line in out.getvalue().splitlines()]

    first = screen()
    assert len(first) <= lines and max(len(line) for line in first) <= cols
    assert "GPU0" in first[1] and "97%" in first[1]
    assert any(line.startswith("row-0000") for line in first) and "1000" in first[-1]
    view.key("j", lines)
    assert not any(line.startswith("row-0000") for line in screen())
    view.key("r", lines)  # running only: every shown row runs, with its step bar and sparkline
    shown = [line for line in screen() if line.startswith("row-")]
    assert shown and all("running" in line and "39/100" in line for line in shown)
    view.key("f", lines)
    assert "failed" in next(line for line in screen() if line.startswith("row-"))


def test_spend_so_far_is_shown_only_when_the_price_is_known():
    import io

    from rich.console import Console

    from helpers.dashboard.live import View, render

    def screen(cost: dict[str, Any]) -> str:
        model = _thousand_rows()
        assert model.status is not None
        model.status["cost"] = cost
        out = io.StringIO()
        Console(file=out, width=200, height=50, force_terminal=True, color_system=None).print(
            render(model, View(), 200, 50, 2.0))
        return out.getvalue()

    known = screen({"price_per_hour": 2.0, "price_source": "POD_PRICE_PER_HOUR", "spent_usd": 1.25, "rows_left": 500,
                    "projected_usd": 3.5, "projected_from_rows": 250, "idle_slot_seconds": 12.0, "budget_usd": None})
    assert "spent $1.25 so far" in known and "$3.50 more for 500 row(s) left" in known, known[:600]
    unknown = screen({"price_per_hour": None, "spent_usd": None, "rows_left": 500})
    assert "spent" not in unknown and "$0" not in unknown


# ----------------------------------------------------------------------------- a real sweep


class Pty:
    """A command on a pseudo-terminal of a given size; everything it writes is collected."""

    def __init__(self, argv: list[str], env: dict[str, str], cols: int, rows: int) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True)
        os.close(slave)
        self.master = master
        self.data = b""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.data += chunk

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "replace")

    def send(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        os.close(self.master)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Terminal(Pty):
    """workflow.sh with this pod's config on a pseudo-terminal (NO_COLOR only when ``env`` sets it)."""

    def __init__(self, pod: Pod, args: list[str], cols: int, rows: int, env: dict[str, str] | None = None) -> None:
        full = {**os.environ, "WORKFLOW_VENV": sys.prefix, "TERM": "xterm-256color", **(env or {})}
        full.pop("NO_COLOR", None) if "NO_COLOR" not in (env or {}) else None
        super().__init__([str(WORKFLOW), "--env", str(pod.env_file), *args], full, cols, rows)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, source_repo: Path) -> Iterator[dict[str, Any]]:
    """A local pod running a sweep: a failing row and two long slow rows side by side on 2 CPU slots."""
    base = tmp_path_factory.mktemp("dash")
    pod = make_pod("local", base, source_repo, None)
    try:
        setup_pod(pod)
        csv = write_csv(base / "dash.csv", "d-fail,config/fail.py,1,,fails at step 1,1",
                        "d-slow1,config/slow.py,1,steps=150 sleep=0.4,long,1",
                        "d-slow2,config/slow.py,2,steps=150 sleep=0.4,long,1")
        started = start(pod, csv)
        yield {"pod": pod, "campaign": started["campaign_id"]}
    finally:
        cleanup_pod(pod)


def _screen_shows(term: Terminal, *words: str) -> bool:
    return all(word in term.text for word in words)


def _wait_screen(term: Terminal, *words: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not _screen_shows(term, *words):
        if time.monotonic() > deadline or term.proc.poll() is not None:
            missing = [w for w in words if w not in term.text]
            pytest.fail(f"the screen never showed {missing}; it ends with: {term.text[-3000:]!r}")
        time.sleep(0.2)


def test_live_view_in_80x24_shows_rows_coloured_and_q_quits(sweep: dict[str, Any]):
    pod = sweep["pod"]
    term = Terminal(pod, ["sweep-watch", "--interval", "0.5"], 80, 24)
    try:
        _wait_screen(term, "d-fail", "\x1b[31mfailed", "d-slow1", "train", "q quit", "RUN_ID")
        screen = term.text
        assert "\x1b[?1049h" in screen  # the alternate screen: the view is full-screen
        assert "\x1b[31mfailed" in screen and COLOUR.search(screen), screen[-3000:]  # failed in red
        assert "GPU" not in screen  # no nvidia-smi here: no GPU line
        assert re.search(r"[▁▂▃▄▅▆▇█]", screen)  # a loss sparkline
        assert re.search(r"\d+/150", screen)  # step/max
        term.send("q")
        assert term.wait(20) == 0, term.text[-2000:]
    finally:
        term.kill()
    tail = term.text.split("\x1b[?1049l")[-1]  # after leaving the alternate screen: the table stays
    assert "d-fail" in tail and "sweep goes on" in tail, tail
    code, status = status_json(pod)
    assert status["executor"]["state"] == "running", status["executor"]  # q left the sweep running


def test_no_color_has_no_colour_codes(sweep: dict[str, Any]):
    term = Terminal(sweep["pod"], ["sweep-watch", "--interval", "0.5"], 120, 30, env={"NO_COLOR": "1"})
    try:
        _wait_screen(term, "d-fail", "d-slow1", "q quit")
        term.send("f")  # failed first: still shown
        time.sleep(1.0)
        term.send("q")
        assert term.wait(20) == 0
    finally:
        term.kill()
    assert "failed first" in term.text
    assert not COLOUR.search(term.text), repr(COLOUR.search(term.text))


def test_plain_on_a_terminal_prints_lines_without_escapes(sweep: dict[str, Any]):
    term = Terminal(sweep["pod"], ["sweep-watch", "--plain", "--interval", "0.5"], 120, 30)
    try:
        _wait_screen(term, "d-fail", "d-slow1", "RUN_ID")
    finally:
        term.kill()
    assert not ESCAPE.search(term.text), repr(term.text[:300])
    assert term.text.count("RUN_ID") == 1  # printed once, then only what changed


def test_tmux_pane_200x50_and_final_table_with_sweep_status_exit_code(sweep: dict[str, Any]):
    """In a real tmux pane (libtmux): the view fills 200x50; it is left running until the sweep ends; then
    the final table stays on the pane and the command's exit code is sweep-status's (1: a failed row)."""
    import libtmux

    pod = sweep["pod"]
    socket = f"dash-{os.getpid()}-{time.monotonic_ns()}"
    server = libtmux.Server(socket_name=socket)
    done = Path(str(pod.env_file) + ".rc")
    command = (f"env WORKFLOW_VENV={sys.prefix} TERM=xterm-256color {WORKFLOW} --env {pod.env_file} sweep-watch "
               f"--interval 0.5; echo $? > {done}; sleep 600")
    try:
        session = server.new_session(session_name="dash", window_command=command, x=200, y=50)
        pane = session.active_window.active_pane
        assert pane is not None

        def screen() -> str:
            return "\n".join(pane.capture_pane())

        wait_until(lambda: "d-slow2" in screen() and "q quit" in screen(), 120, interval=0.3,
                   what="the live view in the tmux pane")
        shown = pane.capture_pane()
        assert max(len(line) for line in shown) <= 200 and len(shown) <= 50
        assert any("RUN_ID" in line for line in shown) and any("q quit" in line for line in shown)
        assert any("d-slow2" in line and "running" in line for line in shown), shown  # the states as they run
        wait_campaign(pod, sweep["campaign"])
        wait_until(done.exists, 60, interval=0.3, what="sweep-watch to end with the sweep")
        assert done.read_text().strip() == "1"  # sweep-status's code: a row failed
        final = screen()
        assert "d-fail" in final and "failed" in final and "ok 2" in final, final
    finally:
        server.kill()


def test_pipe_after_the_end_prints_the_table_without_escapes(sweep: dict[str, Any]):
    pod = sweep["pod"]
    wait_campaign(pod, sweep["campaign"])
    watch = pod.wf("sweep-watch", "--interval", "0.5")
    assert watch.returncode == 1, watch.stderr
    assert "d-fail" in watch.stdout and not ESCAPE.search(watch.stdout)
    status = Terminal(pod, ["sweep-status"], 160, 40)  # the status table: STATE coloured on a terminal
    assert status.wait(60) == 1
    assert "\x1b[31mfailed" in status.text and "\x1b[32mok" in status.text, status.text
    assert not ESCAPE.search(pod.wf("sweep-status").stdout)

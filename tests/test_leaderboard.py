"""Results of a finished campaign: leaderboard (order, tie-break, failed rows last, files on the pod), compare
(config difference + metrics), promote (written, refused again, --force, a name with a path refused), on the
local target with the stand-in trainer, and over the loopback sshd."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Pod, SSHServer, cleanup_pod, make_pod, one_line_error, require_tool, wait_until

from helpers.pod.results import rank

SETTINGS = {"TRAIN_WORKDIR": "tests/sweep_fixture", "SWEEP_CPU_SLOTS": "2", "RUN_STALL_SECS": "60",
            "RUN_RETRIES": "0", "RUN_RETRY_BACKOFF_SECS": "1", "TASK_KILL_GRACE_SECS": "2"}
HEADER = "run_id,config,seed,overrides,notes,gpus"
ENDED = ("finished", "stopped", "lost")


def setup_pod(pod: Pod, tmp: Path) -> None:
    pod.set(**SETTINGS, PROMOTE_DIR=str(tmp / "promoted"))
    for command in ("bootstrap", "checkout"):
        result = pod.wf(command, timeout=600)
        assert result.returncode == 0, f"{command}: {result.stderr}"


def run_campaign(pod: Pod, tmp: Path, *rows: str) -> str:
    sheet = tmp / "lb.csv"
    sheet.write_text("\n".join([HEADER, *rows]) + "\n")
    result = pod.wf("sweep-start", "--csv", str(sheet), "--json")
    assert result.returncode == 0, result.stderr
    campaign = str(json.loads(result.stdout)["campaign_id"])
    record = pod.outputs / "_campaigns" / campaign / "executor.json"

    def ended() -> bool:
        try:
            return json.loads(record.read_text()).get("state") in ENDED
        except (OSError, ValueError):
            return False

    wait_until(ended, 300, interval=0.5, what=f"campaign {campaign} to end")
    return campaign


@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory, source_repo: Path) -> Iterator[tuple[Pod, str, Path]]:
    """A finished campaign: lb-b best (5 steps), lb-a and lb-c tied (3 steps each), lb-fail failed."""
    tmp = tmp_path_factory.mktemp("lb")
    pod = make_pod("local", tmp, source_repo, None)
    try:
        setup_pod(pod, tmp)
        campaign = run_campaign(pod, tmp, "lb-c,config/ok.py,3,,tied with lb-a,1",
                                "lb-fail,config/fail.py,4,,fails,1", "lb-a,config/ok.py,1,,three steps,1",
                                "lb-b,config/ok.py,2,steps=5 batch_size=4,five steps,1")
        yield pod, campaign, tmp
    finally:
        cleanup_pod(pod)


def leaderboard(pod: Pod, *extra: str) -> dict[str, Any]:
    result = pod.wf("leaderboard", "--json", *extra)
    assert result.returncode == 0, result.stderr
    reply: dict[str, Any] = json.loads(result.stdout)
    return reply


def test_leaderboard_ranks_best_first_ties_by_run_id_failed_last(done: tuple[Pod, str, Path]) -> None:
    pod, campaign, _ = done
    reply = leaderboard(pod)
    assert [r["run_id"] for r in reply["rows"]] == ["lb-b", "lb-a", "lb-c", "lb-fail"]
    assert [r["rank"] for r in reply["rows"]] == [1, 2, 3, 4]
    best = reply["rows"][0]
    assert best["value"] == pytest.approx(1.0) and best["iter"] == 4
    assert best["overrides"] == ["steps=5", "batch_size=4"]
    assert reply["rows"][-1]["state"] == "failed"
    folder = pod.outputs / "_campaigns" / campaign
    table = list(csv.DictReader(io.StringIO((folder / "leaderboard.csv").read_text())))
    assert [r["run_id"] for r in table] == ["lb-b", "lb-a", "lb-c", "lb-fail"]
    assert table[0]["overrides"] == "steps=5 batch_size=4" and table[0]["metric"] == "val_loss"
    markdown = (folder / "leaderboard.md").read_text()
    assert f"# Leaderboard: campaign {campaign}" in markdown and "| 1 | lb-b | ok | 1 | 4 |" in markdown
    text = pod.wf("leaderboard")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].startswith(f"leaderboard of campaign {campaign}: best val_loss")
    assert lines[2].split()[:3] == ["1", "lb-b", "ok"]
    assert "leaderboard.csv" in text.stdout


def test_leaderboard_other_metric_and_all(done: tuple[Pod, str, Path]) -> None:
    pod, _, _ = done
    reply = leaderboard(pod, "--metric", "batch_size", "--higher-is-better")
    assert [r["run_id"] for r in reply["rows"]][:3] == ["lb-a", "lb-c", "lb-b"]  # 8, 8, 4
    dry = pod.wf("leaderboard", "--all", "--dry-run")
    assert dry.returncode == 0 and "not written" in dry.stdout, dry.stderr
    assert not (pod.outputs / "_leaderboard").exists()
    everything = leaderboard(pod, "--all")
    assert [r["run_id"] for r in everything["rows"]] == ["lb-b", "lb-a", "lb-c", "lb-fail"]
    assert (pod.outputs / "_leaderboard" / "leaderboard.md").is_file()


def test_leaderboard_bad_input_one_line(done: tuple[Pod, str, Path]) -> None:
    pod, campaign, _ = done
    before = pod.snapshot()
    result = pod.wf("leaderboard", "--metric", "bleu")
    assert result.returncode == 2
    assert "metric 'bleu'" in one_line_error(result)
    result = pod.wf("leaderboard", "--campaign", "20990101-000000-abcdef")
    assert result.returncode == 5 and "no campaign" in one_line_error(result)
    result = pod.wf("leaderboard", "--campaign", campaign, "--all")
    assert result.returncode == 2 and "not both" in one_line_error(result)
    assert pod.snapshot() == before


def test_rank_puts_nan_and_missing_after_numbers_and_failed_last() -> None:
    rows = [{"run_id": "f", "campaign_id": "c", "ok": False, "value": 0.1},
            {"run_id": "n", "campaign_id": "c", "ok": True, "value": math.nan},
            {"run_id": "m", "campaign_id": "c", "ok": True, "value": None},
            {"run_id": "b", "campaign_id": "c", "ok": True, "value": 2.0},
            {"run_id": "a", "campaign_id": "c", "ok": True, "value": 2.0},
            {"run_id": "z", "campaign_id": "c", "ok": True, "value": 1.5}]
    assert [r["run_id"] for r in rank(rows, higher=False)] == ["z", "a", "b", "m", "n", "f"]
    assert [r["run_id"] for r in rank(rows, higher=True)] == ["a", "b", "z", "m", "n", "f"]


def test_compare_shows_only_differing_keys_and_metrics(done: tuple[Pod, str, Path]) -> None:
    pod, _, _ = done
    result = pod.wf("compare", "lb-a", "lb-b", "--json")
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert set(reply["config_diff"]) == {"seed", "steps", "batch_size"}
    assert reply["config_diff"]["steps"] == ["3", "5"]
    assert reply["metrics"]["best_val_loss"] == [pytest.approx(5 / 3), pytest.approx(1.0)]
    text = pod.wf("compare", "lb-a", "lb-b")
    assert text.returncode == 0, text.stderr
    assert "config difference" in text.stdout and "mode" not in text.stdout.split("metrics:")[0]
    assert "best_val_loss" in text.stdout
    for args, code, words in ((("lb-a", "nope"), 5, "no finished sweep run 'nope'"),
                              (("lb-a",), 2, "at least two"), (("lb-a", "../x"), 2, "run id")):
        bad = pod.wf("compare", *args)
        assert bad.returncode == code and words in one_line_error(bad), bad.stderr


def test_promote_writes_refuses_again_then_force(done: tuple[Pod, str, Path]) -> None:
    pod, campaign, tmp = done
    target = tmp / "promoted" / "best.py"
    result = pod.wf("promote", "lb-b", "--as", "best")
    assert result.returncode == 0, result.stderr
    text = target.read_text()
    assert f"# campaign: {campaign}   run: lb-b" in text and "# git sha: " in text and "unknown" not in text
    assert "best_val_loss=1" in text and "steps = '5'" in text and "batch_size = 4" in text
    assert "out_dir" not in text.split("\n\n", 1)[1]
    config: dict[str, Any] = {}
    exec(text, {}, config)  # noqa: S102 - the promoted file is a valid config file
    assert config["mode"] == "ok" and config["steps"] == "5"
    again = pod.wf("promote", "lb-b", "--as", "best")
    assert again.returncode == 7 and "--force" in one_line_error(again)
    assert target.read_text() == text
    forced = pod.wf("promote", "lb-a", "--as", "best.py", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "run: lb-a" in target.read_text()
    board = (pod.outputs / "_campaigns" / campaign / "leaderboard.csv").read_text()  # redrawn by promote itself
    assert {r["run_id"]: r["promoted_as"] for r in csv.DictReader(io.StringIO(board))}["lb-a"] == "best.py"
    rows = {r["run_id"]: r for r in leaderboard(pod)["rows"]}
    assert rows["lb-a"]["promoted_as"] == "best.py" and rows["lb-b"]["promoted_as"] == "best.py"
    assert "best.py" in (pod.outputs / "_campaigns" / campaign / "leaderboard.md").read_text()


def test_promote_bad_input_writes_nothing(done: tuple[Pod, str, Path]) -> None:
    pod, _, tmp = done
    before = sorted(os.listdir(tmp / "promoted")) if (tmp / "promoted").is_dir() else []
    for args, code, words in ((("lb-a", "--as", "../evil"), 2, "not a plain file name"),
                              (("lb-a", "--as", "sub/x"), 2, "not a plain file name"),
                              (("lb-a", "--as", ".."), 2, "not a plain file name"),
                              (("nope",), 5, "no finished sweep run"),
                              (("lb-fail",), 7, "did not succeed")):
        result = pod.wf("promote", *args)
        assert result.returncode == code and words in one_line_error(result), result.stderr
        assert "Traceback" not in result.stderr
    dry = pod.wf("promote", "lb-a", "--dry-run")
    assert dry.returncode == 0 and "would write" in dry.stdout, dry.stderr
    after = sorted(os.listdir(tmp / "promoted")) if (tmp / "promoted").is_dir() else []
    assert after == before and not (tmp.parent / "evil.py").exists()


def test_leaderboard_and_promote_over_ssh(tmp_path: Path, source_repo: Path, sshd: SSHServer) -> None:
    pod = make_pod("ssh", tmp_path, source_repo, sshd)
    try:
        setup_pod(pod, tmp_path)
        run_campaign(pod, tmp_path, "s-fail,config/fail.py,1,,fails,1", "s-ok,config/ok.py,2,,ok,1")
        reply = leaderboard(pod)
        assert [(r["run_id"], r["state"]) for r in reply["rows"]] == [("s-ok", "ok"), ("s-fail", "failed")]
        result = pod.wf("promote", "s-ok")
        assert result.returncode == 0, result.stderr
        assert "run: s-ok" in (tmp_path / "promoted" / "s-ok.py").read_text()
        compared = pod.wf("compare", "s-ok", "s-fail", "--json")
        assert compared.returncode == 0, compared.stderr
        assert json.loads(compared.stdout)["states"] == ["success", "failed"]
    finally:
        cleanup_pod(pod)


# ----------------------------------------------------------------------------- report


def _png_ok(path: Path) -> None:
    import matplotlib.image

    pixels = matplotlib.image.imread(str(path))
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert float(pixels.std()) > 0.05, f"{path} is blank"


def _screenshot_shows_plots(page: Path, shot: Path, plots: int) -> None:
    """Headless Chromium renders the page; the screenshot holds the curves' own colours (a broken image
    shows none), about as much of them as ``plots`` PNGs draw."""
    import subprocess

    import matplotlib.image
    import numpy as np

    chromium = require_tool("chromium")
    result = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                             f"--user-data-dir={shot.parent / 'chromium-profile'}", "--window-size=1280,2400",
                             f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    pixels = matplotlib.image.imread(str(shot))[:, :, :3]
    for colour in ((0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)):  # tab:blue (train), tab:orange (val)
        near = (np.abs(pixels - np.array(colour) / 255.0).max(axis=2) < 0.08).sum()
        assert near > 150 * plots, f"the screenshot shows too little of colour {colour}: {near} pixels"


def test_report_of_a_fetched_campaign(done: tuple[Pod, str, Path]) -> None:
    import base64
    import re

    pod, campaign, tmp = done
    missing = pod.wf("report", "--campaign", campaign)
    assert missing.returncode == 5 and "not fetched" in one_line_error(missing)
    assert not (tmp / "artifacts" / "_reports").exists()
    fetched = pod.wf("fetch-all", "--campaign", campaign)
    assert fetched.returncode == 0, fetched.stderr
    out = tmp / "report"
    result = pod.wf("report", "--out", str(out))
    assert result.returncode == 0, result.stderr
    page = (out / "report.html").read_text()
    assert f"Campaign {campaign}" in page
    assert not re.search(r"<(script|link|iframe)|src=(?!['\"]?data:)", page)  # nothing to fetch: self-contained
    board = page.split("<table id='leaderboard'>")[1].split("</table>")[0]
    assert [m for m in re.findall(r"<tr><td>\d+</td><td>([\w-]+)</td>", board)] == ["lb-b", "lb-a", "lb-c",
                                                                                      "lb-fail"]
    assert "id='fail-lb-fail'" in page and "giving up on purpose" in page
    local = list(csv.DictReader(io.StringIO((out / "leaderboard.csv").read_text())))
    assert [r["run_id"] for r in local] == ["lb-b", "lb-a", "lb-c", "lb-fail"]  # the leaderboard, locally
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["loss-lb-a.png", "loss-lb-b.png", "loss-lb-c.png", "loss-lb-fail.png"]
    for name in pngs:
        _png_ok(out / name)
    embedded = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(embedded) == 4 and base64.b64decode(embedded[0])[:8] == b"\x89PNG\r\n\x1a\n"
    _screenshot_shows_plots(out / "report.html", tmp / "shot.png", 4)
    again = pod.wf("report", "--out", str(out))  # its own folder: rewritten
    assert again.returncode == 0, again.stderr
    foreign = tmp / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    refused = pod.wf("report", "--out", str(foreign))
    assert refused.returncode == 7 and "not made by workflow.sh report" in one_line_error(refused)
    assert sorted(os.listdir(foreign)) == ["keep.txt"]


def test_report_of_100_runs(tmp_path: Path) -> None:
    """100 fetched runs: one PNG each, failed rows last (its speed is measured in bench/report_100.py)."""
    import resource
    import subprocess
    import sys
    import time

    from conftest import REPO_ROOT

    artifacts = tmp_path / "artifacts"
    for n in range(100):
        run = artifacts / f"r{n:03d}"
        run.mkdir(parents=True)
        ok = n % 10 != 0
        (run / "summary.json").write_text(json.dumps({
            "run_id": run.name, "campaign_id": "20260101-000000-aaaaaa", "ok": ok, "state": "success" if ok else
            "failed", "failure_class": None if ok else "crash", "reason_line": None if ok else "boom",
            "attempt": 1, "attempts": 1, "duration_s": 60.0 + n, "spec_hash": "x", "attempt_history": []}))
        (run / "metrics.jsonl").write_text("".join(json.dumps({"iter": i, "train_loss": 4 - i / 10 + n / 1000,
                                                               "val_loss": 4.1 - i / 10 + n / 1000}) + "\n"
                                                   for i in range(20)))
        (run / "run.log").write_text("step\nboom\n")
    env_file = tmp_path / "workflow.env"
    env_file.write_text(f"LOCAL_ARTIFACTS_DIR={artifacts}\n")
    began, cpu = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run([str(REPO_ROOT / "infra_scripts" / "workflow.sh"), "--env", str(env_file), "report",
                             "--json"], env={**os.environ, "WORKFLOW_VENV": sys.prefix}, text=True,
                            capture_output=True, timeout=120)
    took = time.monotonic() - began
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["runs"] == 100 and len(reply["pngs"]) == 100
    print(f"report of 100 runs: {took:.1f}s wall, {cpu_s:.1f}s CPU")  # measured properly by bench/report_100.py
    page = Path(reply["html"]).read_text()
    assert page.index("<td>r001</td>") < page.index("<td>r099</td>") < page.index("<td>r000</td>")  # failed last


def test_compare_from_fetched_artifacts_needs_no_pod(done: tuple[Pod, str, Path]) -> None:
    pod, campaign, tmp = done
    fetched = pod.wf("fetch-all", "--campaign", campaign)
    assert fetched.returncode == 0, fetched.stderr
    nowhere = ("--set", f"OPS_REMOTE_OUTPUTS_DIR={tmp}/no-such-outputs")  # a pod call could not find the runs now
    local = pod.wf(*nowhere, "compare", "lb-a", "lb-b", "--json")
    assert local.returncode == 0, local.stderr
    reply = json.loads(local.stdout)
    assert reply["source"] == "fetched artifacts"
    assert set(reply["config_diff"]) == {"seed", "steps", "batch_size"} and reply["config_diff"]["steps"] == ["3", "5"]
    assert reply["metrics"]["best_val_loss"] == [pytest.approx(5 / 3), pytest.approx(1.0)]
    text = pod.wf(*nowhere, "compare", "lb-a", "lb-b")
    assert text.returncode == 0 and text.stdout.startswith("from fetched artifacts"), text.stdout
    partly = pod.wf("compare", "lb-a", "lb-missing")  # one run not fetched: the pod is asked (and has no such run)
    assert partly.returncode == 5 and "no finished sweep run 'lb-missing'" in one_line_error(partly)

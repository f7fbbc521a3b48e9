"""Cost and budget with the real tmux executor on the local target: each row's cost in its
summary.json, sweep-status's spend line, BUDGET_USD stopping new rows (state `budget`), BUDGET_HARD
stopping running ones, an unknown price shown as unknown (never $0), bad BUDGET_USD values."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import Pod, one_line_error, wait_until

SETTINGS = {"TRAIN_WORKDIR": "tests/sweep_fixture", "SWEEP_CPU_SLOTS": "1", "RUN_STALL_SECS": "60",
            "RUN_RETRY_BACKOFF_SECS": "1", "TASK_KILL_GRACE_SECS": "2"}
ENDED = ("finished", "stopped", "lost")


def write_csv(path: Path, *rows: str) -> Path:
    path.write_text("\n".join(["run_id,config,seed,overrides,notes,gpus", *rows]) + "\n")
    return path


@pytest.fixture(scope="module")
def ready(tmp_path_factory: pytest.TempPathFactory, source_repo: Path) -> Any:
    """One bootstrapped, checked-out local pod for the module (checkout costs seconds)."""
    from conftest import cleanup_pod, make_pod

    pod = make_pod("local", tmp_path_factory.mktemp("budget"), source_repo, None)
    pod.set(**SETTINGS)
    for command in ("bootstrap", "checkout"):
        result = pod.wf(command, timeout=600)
        assert result.returncode == 0, result.stderr
    yield pod
    cleanup_pod(pod)


def run_to_end(pod: Pod, csv: Path, *settings: str) -> dict[str, Any]:
    start = pod.wf(*settings, "sweep-start", "--csv", str(csv), "--json")
    assert start.returncode == 0, start.stderr
    campaign = json.loads(start.stdout)["campaign_id"]
    path = pod.outputs / "_campaigns" / campaign / "executor.json"

    def ended() -> bool:
        try:
            return json.loads(path.read_text()).get("state") in ENDED
        except (OSError, ValueError):
            return False

    wait_until(ended, timeout=300, interval=0.5, what=f"campaign {campaign} ends")
    status = pod.wf(*settings, "sweep-status", "--campaign", campaign, "--json")
    data = json.loads(status.stdout)
    data["returncode"], data["text"] = status.returncode, pod.wf(*settings, "sweep-status", "--campaign",
                                                                 campaign).stdout
    data["rows"] = {row["run_id"]: row for row in data["rows"]}
    return data


def test_budget_stops_new_rows_and_says_so(ready: Pod, tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "b.csv", "bu-1,config/ok.py,1,,,1", "bu-2,config/ok.py,2,,,1",
                    "bu-3,config/ok.py,3,,,1")
    # $3600/h on one slot: a second of a row costs $1; the first row alone passes a $2 budget
    status = run_to_end(ready, csv, "--set", "POD_PRICE_PER_HOUR=3600", "--set", "BUDGET_USD=2")
    rows = status["rows"]
    assert rows["bu-1"]["state"] == "ok"
    assert rows["bu-2"]["state"] == "budget" and rows["bu-3"]["state"] == "budget"
    assert "BUDGET_USD=2" in (rows["bu-2"]["reason_line"] or "")
    assert not (ready.outputs / "bu-2").exists() and not (ready.outputs / "bu-3").exists()  # never started
    assert status["returncode"] == 1  # rows left unrun: sweep-status says so
    log = (ready.outputs / "_campaigns" / status["campaign_id"] / "executor.log").read_text()
    assert "BUDGET_USD=2" in log and "not starting 2 row(s)" in log
    summary = json.loads((ready.outputs / "bu-1" / "summary.json").read_text())
    assert summary["cost"]["price_per_hour"] == 3600.0 and summary["cost"]["usd"] >= 1.0
    # slot_seconds is kept to 0.1 s; busy_usd to the microdollar
    assert summary["cost"]["busy_usd"] == pytest.approx(summary["cost"]["slot_seconds"], abs=0.051), summary
    assert summary["cost"]["usd"] == pytest.approx(summary["cost"]["busy_usd"] + summary["cost"]["idle_share_usd"])
    assert re.search(r"cost: spent \$\d+\.\d\d so far", status["text"]), status["text"]
    assert "budget $2.00" in status["text"]
    assert status["cost"]["spent_usd"] >= summary["cost"]["usd"]
    # a resume with a higher budget runs the rows the budget held back
    resumed = ready.wf("--set", "POD_PRICE_PER_HOUR=3600", "--set", "BUDGET_USD=100000", "sweep-resume",
                       "--campaign", status["campaign_id"], "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(json.loads(resumed.stdout)["rerun"]) == ["bu-2", "bu-3"]
    path = ready.outputs / "_campaigns" / status["campaign_id"] / "executor.json"
    wait_until(lambda: json.loads(path.read_text()).get("state") in ENDED and json.loads(
        path.read_text()).get("generation", 1) > 1, timeout=300, interval=0.5, what="the resume ends")
    again = ready.wf("sweep-status", "--campaign", status["campaign_id"], "--json")
    assert again.returncode == 0, again.stdout + again.stderr


def test_idle_time_is_split_over_the_rows_by_their_slot_seconds(ready: Pod, tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "i.csv", "id-1,config/ok.py,1,,,1", "id-2,config/ok.py,2,,,1")
    status = run_to_end(ready, csv, "--set", "POD_PRICE_PER_HOUR=3600")  # $1 per slot-second
    costs = {run_id: json.loads((ready.outputs / run_id / "summary.json").read_text())["cost"]
             for run_id in ("id-1", "id-2")}
    executor = json.loads((ready.outputs / "_campaigns" / status["campaign_id"] / "executor.json").read_text())
    from helpers.pod.jsonio import parse_utc

    wall = parse_utc(executor["ended_utc"]) - parse_utc(executor["started_utc"])
    # the rows' costs (their own time + their idle shares) add up to the pod's bill for the campaign
    assert sum(c["usd"] for c in costs.values()) == pytest.approx(wall, abs=2.0), (costs, wall)
    for c in costs.values():
        assert c["idle_share_usd"] > 0 and c["usd"] == pytest.approx(c["busy_usd"] + c["idle_share_usd"])
        # in proportion to each row's slot time (the dollar figures: the seconds are kept to 0.1 s only)
        share = c["idle_share_usd"] / c["busy_usd"]
        assert share == pytest.approx(costs["id-1"]["idle_share_usd"] / costs["id-1"]["busy_usd"], rel=0.01)
    index = json.loads((ready.outputs / "_campaigns" / status["campaign_id"] / "index.json").read_text())
    assert index["id-1"]["cost_usd"] == pytest.approx(costs["id-1"]["usd"], abs=1e-4)
    # sweep-status --json gives each row its cost (the row's own time and its idle share)
    assert {r: status["rows"][r].get("cost_usd") for r in costs} == pytest.approx(
        {r: c["usd"] for r, c in costs.items()}, abs=1e-4), status["rows"]


def test_idle_shares_split_by_weight_or_evenly() -> None:
    from helpers.pod.cost import idle_shares

    assert idle_shares(30.0, {"a": 10.0, "b": 20.0}) == {"a": 10.0, "b": 20.0}
    assert idle_shares(10.0, {"a": 0.0, "b": 0.0}) == {"a": 5.0, "b": 5.0}
    assert idle_shares(10.0, {}) == {}


def test_budget_hard_stops_running_rows(ready: Pod, tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "h.csv", "bh-1,config/slow.py,1,,,1", "bh-2,config/ok.py,2,,,1")
    status = run_to_end(ready, csv, "--set", "POD_PRICE_PER_HOUR=3600", "--set", "BUDGET_USD=3",
                        "--set", "BUDGET_HARD=1")
    rows = status["rows"]
    log = (ready.outputs / "_campaigns" / status["campaign_id"] / "executor.log").read_text()
    assert rows["bh-1"]["state"] == "cancelled", (rows["bh-1"], log)
    assert rows["bh-2"]["state"] == "budget", (rows["bh-2"], log)
    assert "BUDGET_HARD=1" in log
    summary = json.loads((ready.outputs / "bh-1" / "summary.json").read_text())
    assert summary["cost"]["usd"] < 20  # stopped near the cap, not after the whole slow row (>= 10 s)


def test_unknown_price_is_unknown_never_zero(ready: Pod, tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "u.csv", "un-1,config/ok.py,1,,,1")
    status = run_to_end(ready, csv)
    assert status["rows"]["un-1"]["state"] == "ok"
    assert "cost: unknown (no price: set POD_PRICE_PER_HOUR)" in status["text"]
    assert "$0" not in status["text"]
    assert status["cost"]["spent_usd"] is None and status["cost"]["price_per_hour"] is None
    summary = json.loads((ready.outputs / "un-1" / "summary.json").read_text())
    assert summary["cost"]["usd"] is None and summary["cost"]["slot_seconds"] > 0


@pytest.mark.parametrize("value", ["-5", "0", "abc", "nan", "inf"])
def test_budget_must_be_a_positive_number(ready: Pod, value: str) -> None:
    before = ready.snapshot()
    for command in ("validate", "sweep-start"):
        result = ready.wf("--set", f"BUDGET_USD={value}", command)
        assert result.returncode == 2
        line = one_line_error(result)
        assert "BUDGET_USD" in line and "positive" in line, line
    assert ready.snapshot() == before

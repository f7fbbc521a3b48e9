"""Sweep behaviour an audit found untested or wrong: SWEEP_FAIL_FAST, the CSV's timeout and retries
columns, a read-only sweep-status, sweep-csv-template through the CLI, the repo's example CSVs,
dirty-tree provenance, an executor that is lost (SIGKILL) or hung up (its tmux window closed), a
sweep-stop that comes while the executor is still starting, and the one scheduling rule that the
executor and --dry-run share (no row starts ahead of an earlier one waiting for slots).

Everything runs on one bootstrapped and checked-out `local` pod (module scope), one sweep at a time,
with the stand-in trainer of tests/sweep_fixture/.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO_ROOT, Pod, git, make_pod, one_line_error, wait_until
from test_sweeps import (
    campaign_ids,
    campaigns_dir,
    executor_record,
    fsm_state,
    marker_of,
    pids_with_marker,
    read_json,
    reap,
    run_dir,
    run_state,
    setup_pod,
    start,
    status_json,
    summary,
    utc,
    wait_campaign,
    write_csv,
)

from helpers.pod.jsonio import utc_now
from helpers.pod.runs import git_provenance
from helpers.pod.scheduling import plan_schedule, schedule_step

HEADER = "run_id,config,seed,overrides,notes,gpus,timeout,retries"


@pytest.fixture(scope="module")
def audit(tmp_path_factory: pytest.TempPathFactory, source_repo: Path) -> Iterator[Pod]:
    pod = make_pod("local", tmp_path_factory.mktemp("audit"), source_repo, None)
    try:
        setup_pod(pod)
        yield pod
    finally:
        reap(pod)


@pytest.fixture(autouse=True)
def _no_sweep_left_running(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "audit" in request.fixturenames:
        pod: Pod = request.getfixturevalue("audit")
        for campaign in campaign_ids(pod):
            if executor_record(pod, campaign).get("state") in ("running", "starting"):
                pod.wf("sweep-stop", "--campaign", campaign, timeout=300)


def fsm_record(pod: Pod) -> dict[str, Any]:
    result = pod.wf("fsm-status", "--json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def events(pod: Pod, campaign: str) -> list[dict[str, Any]]:
    path = campaigns_dir(pod) / campaign / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


# ----------------------------------------------------------------------------- scheduling (pure)


def test_a_wide_row_is_never_starved_by_later_narrow_rows():
    """The executor's rule: the first ready row that does not fit waits, and nothing behind it starts."""
    queue = [("wide", 2, True), ("n1", 1, True), ("n2", 1, True)]
    assert schedule_step(queue, ["cpu1"], 2) == ([], ["cpu1"])  # one slot free: the wide row waits, n1 too
    assert schedule_step(queue, ["cpu0", "cpu1"], 2) == ([("wide", ["cpu0", "cpu1"])], [])
    # a row waiting out a retry backoff does not hold the queue
    assert schedule_step([("r", 1, False), ("n1", 1, True)], ["cpu0"], 2) == ([("n1", ["cpu0"])], [])
    # a row that can never fit is not started and does not block the others
    assert schedule_step([("huge", 3, True), ("n1", 1, True)], ["cpu0", "cpu1"], 2)[0] == [("n1", ["cpu0"])]
    assert plan_schedule([("a", 1), ("w", 2), ("b", 1), ("c", 1), ("d", 1)], ["g0", "g1"]) == [
        ("a", ["g0"], 1), ("w", ["g0", "g1"], 2), ("b", ["g0"], 3), ("c", ["g1"], 3), ("d", ["g0"], 4)]


def test_dry_run_order_is_the_executed_order(audit: Pod, tmp_path: Path):
    """--dry-run's plan (same rule as the executor) matches the order the runs really started in, and a
    full-width row waits for both slots while the 1-slot row after it waits behind it."""
    pod = audit
    csv = write_csv(tmp_path / "order.csv", "or-a,config/slow.py,1,steps=4,,1,,", "or-b,config/ok.py,2,,,1,,",
                    "or-wide,config/ok.py,3,,,,,", "or-c,config/ok.py,4,,,1,,", header=HEADER)
    dry = pod.wf("sweep-start", "--dry-run", "--csv", str(csv))
    assert dry.returncode == 0, dry.stderr
    planned = [line.split()[2].rstrip(":") for line in dry.stdout.splitlines()[1:] if line.startswith("row ")]
    assert planned == ["or-a", "or-b", "or-wide", "or-c"]
    assert "CPU slot(s) cpu0,cpu1 (wave 2)" in dry.stdout and "or-c: CPU slot(s) cpu0 (wave 3)" in dry.stdout
    gpus = pod.wf("--set", "CUDA_VISIBLE_DEVICES=3,5", "sweep-start", "--dry-run", "--csv", str(csv))
    assert gpus.returncode == 0, gpus.stderr  # the executor's detection: CUDA_VISIBLE_DEVICES first
    assert "slots: 3, 5;" in gpus.stdout and "or-b: GPU(s) 5 (wave 1)" in gpus.stdout
    assert "CUDA_VISIBLE_DEVICES=3,5 " in gpus.stdout
    cid = start(pod, csv)["campaign_id"]
    wait_campaign(pod, cid)
    started = [e["run_id"] for e in events(pod, cid) if e["event"] == "run-start"]
    assert started == planned
    done = {r: summary(pod, r) for r in planned}
    assert all(d["ok"] for d in done.values())
    assert utc(done["or-wide"]["started_utc"]) >= max(utc(done[r]["ended_utc"]) for r in ("or-a", "or-b"))
    assert utc(done["or-c"]["started_utc"]) >= utc(done["or-wide"]["ended_utc"])


# ----------------------------------------------------------------------------- fail fast, timeout, retries


def test_fail_fast_stops_at_the_first_failed_row(audit: Pod, tmp_path: Path):
    pod = audit
    csv = write_csv(tmp_path / "ff.csv", "ff-fail,config/fail.py,1,,,,,", "ff-next,config/ok.py,2,,,,,",
                    header=HEADER)
    cid = start(pod, csv, "--set", "SWEEP_FAIL_FAST=1")["campaign_id"]
    executor = wait_campaign(pod, cid)
    assert executor["state"] == "finished" and executor["failed"] == 1
    assert summary(pod, "ff-fail")["state"] == "failed"
    assert not run_dir(pod, "ff-next").exists()  # never started
    assert [e["run_id"] for e in events(pod, cid) if e["event"] == "run-start"] == ["ff-fail"]
    assert fsm_state(pod) == "SWEEP_FAILED"
    text = pod.wf("sweep-status")
    assert text.returncode == 1
    assert "ff-next" in text.stdout.splitlines()[-1] and f"sweep-resume --campaign {cid}" in text.stdout


@pytest.fixture(scope="module")
def retries_campaign(audit: Pod, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A `timeout` column that times a hanging row out; `retries=0` on an nccl row; retries=1 exhausted."""
    csv = write_csv(tmp_path_factory.mktemp("retries") / "rt.csv",
                    "rt-timeout,config/hang.py,1,,times out,1,6,",
                    "rt-noretry,config/flaky.py,2,,nccl once but no retries,1,,0",
                    "rt-exhaust,config/ok.py,3,mode=nccl_always,nccl every time,1,,1", header=HEADER)
    cid = start(audit, csv, "--set", "RUN_RETRIES=3")["campaign_id"]
    wait_campaign(audit, cid)
    return cid


def test_timeout_column_and_retries(audit: Pod, retries_campaign: str):
    pod = audit
    timed = summary(pod, "rt-timeout")
    assert (timed["state"], timed["ok"], timed["attempts"]) == ("timed_out", False, 1)
    assert "timeout after 6s" in (timed["reason"] or "")
    noretry = summary(pod, "rt-noretry")
    assert (noretry["state"], noretry["failure_class"], noretry["attempts"]) == ("failed", "nccl", 1)
    exhausted = summary(pod, "rt-exhaust")
    assert (exhausted["state"], exhausted["failure_class"], exhausted["attempts"]) == ("failed", "nccl", 2)
    first, second = exhausted["attempt_history"]
    assert first["note"] == "" and second["note"] == "retry 1/1 after nccl, backoff 1s"
    assert "resume=1" in second["overrides"]
    code, status = status_json(pod, "--campaign", retries_campaign)
    rows = {row["run_id"]: row for row in status["rows"]}
    assert code == 1
    assert {r: (v["state"], v["attempts"], v["failure_class"]) for r, v in rows.items()} == {
        "rt-timeout": ("timed_out", 1, "timeout"), "rt-noretry": ("failed", 1, "nccl"),
        "rt-exhaust": ("failed", 2, "nccl")}


def test_sweep_status_is_read_only(audit: Pod, retries_campaign: str):
    pod = audit
    before, fsm_before = pod.snapshot(), fsm_record(pod)
    for extra in ((), ("--json",), ("--campaign", retries_campaign)):
        assert pod.wf("sweep-status", *extra).returncode == 1
    assert pod.snapshot() == before
    assert fsm_record(pod) == fsm_before


def test_stop_while_the_executor_is_starting(audit: Pod, retries_campaign: str):
    """sweep-stop while the executor is `starting`: an executor that starts afterwards runs nothing and
    leaves the campaign stopped (it never overwrites the stop with `running`)."""
    pod = audit
    cdir = campaigns_dir(pod) / retries_campaign
    record = read_json(cdir / "executor.json")
    generation = int(record.get("generation", 1)) + 1
    # what sweep-resume writes before tmux runs the executor
    (cdir / "executor.json").write_text(json.dumps({"state": "starting", "created_utc": utc_now(),
                                                    "generation": generation}))
    summaries = {r: (run_dir(pod, r) / "summary.json").read_bytes() for r in ("rt-timeout", "rt-noretry")}
    stopped = pod.wf("sweep-stop", "--campaign", retries_campaign, "--json")
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(stopped.stdout)["executor_was"] == "starting"
    assert executor_record(pod, retries_campaign)["state"] == "stopped"
    agent = sorted((pod.outputs / "_control").glob("agent-*.pyz"))[-1]
    late = subprocess.run([sys.executable, "-I", "-S", str(agent), "sweep-exec", str(cdir)], text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    assert late.returncode == 0, late.stdout
    assert "running nothing" in late.stdout
    final = executor_record(pod, retries_campaign)
    assert (final["state"], final["generation"], final["stop_reason"]) == ("stopped", generation, "stop")
    assert not any(e["event"] == "run-start" and e["utc"] > record["ended_utc"] for e in events(pod, retries_campaign))
    assert {r: (run_dir(pod, r) / "summary.json").read_bytes() for r in summaries} == summaries


# ----------------------------------------------------------------------------- CLI without a pod


def test_sweep_csv_template_writes_then_never_overwrites(local_pod: Pod, tmp_path: Path):
    out = tmp_path / "new" / "sweep.csv"
    first = local_pod.wf("sweep-csv-template", "--out", str(out))
    assert first.returncode == 0, first.stderr
    assert str(out) in first.stdout and out.read_text().count("\n") > 3
    assert local_pod.wf("validate", "--csv", str(out)).returncode == 0  # the template itself is valid
    out.write_text("run_id,config,seed,overrides,notes\nmine,config/train_tiny_cpu.py,1,,\n")
    before = (out.read_bytes(), out.stat().st_mtime_ns)
    again = local_pod.wf("sweep-csv-template", "--out", str(out))
    assert again.returncode == 7, again.stderr
    assert "already exists" in one_line_error(again)
    assert (out.read_bytes(), out.stat().st_mtime_ns) == before


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO_ROOT / "examples" / "sweeps").glob("*.csv")))
def test_example_sweep_csvs_validate(local_pod: Pod, name: str):
    result = local_pod.wf("validate", "--csv", str(REPO_ROOT / "examples" / "sweeps" / name))
    assert result.returncode == 0, result.stderr
    assert f"sweep CSV OK: {REPO_ROOT / 'examples' / 'sweeps' / name}" in result.stdout


# ----------------------------------------------------------------------------- provenance


def test_git_provenance_sees_untracked_files(tmp_path: Path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "a.py").write_text("x = 1\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "a")
    (repo / ".venv" / "lib").mkdir(parents=True)
    (repo / ".venv" / "lib" / "site.py").write_text("tool's own\n")
    (repo / "__pycache__").mkdir()
    (repo / "__pycache__" / "a.cpython-312.pyc").write_bytes(b"\0")
    clean = git_provenance(str(repo), [str(repo / ".venv")])
    assert (clean["dirty"], clean["diff_sha256"]) == (False, None)
    (repo / "new.txt").write_text("one\n")
    first = git_provenance(str(repo), [str(repo / ".venv")])
    assert first["dirty"] is True and first["untracked_files"] == 1 and first["changed_files"] == 0
    assert git_provenance(str(repo), [str(repo / ".venv")])["diff_sha256"] == first["diff_sha256"]
    (repo / "new.txt").write_text("two\n")
    assert git_provenance(str(repo), [str(repo / ".venv")])["diff_sha256"] != first["diff_sha256"]
    assert git_provenance(str(repo))["untracked_files"] == 2  # the venv counts when not the tool's


def test_dirty_tree_is_recorded(audit: Pod, tmp_path: Path):
    pod = audit
    repo = pod.root / "repo"
    tracked = repo / "tests" / "sweep_fixture" / "config" / "ok.py"
    original = tracked.read_bytes()
    try:
        tracked.write_bytes(original + b"# edited on the pod\n")
        (repo / "scratch.txt").write_text("not committed\n")
        csv = write_csv(tmp_path / "dirty.csv", "dt-1,config/ok.py,1,,,1,,", header=HEADER)
        wait_campaign(pod, start(pod, csv)["campaign_id"])
    finally:
        tracked.write_bytes(original)
        (repo / "scratch.txt").unlink(missing_ok=True)
    recorded = read_json(run_dir(pod, "dt-1") / "run_manifest.json")["git"]
    assert recorded["dirty"] is True and len(recorded["diff_sha256"]) == 64
    assert (recorded["changed_files"], recorded["untracked_files"]) == (1, 1)  # the venv is not counted
    assert summary(pod, "dt-1")["ok"]


# ----------------------------------------------------------------------------- a lost executor


def test_lost_executor_status_and_resume(audit: Pod, tmp_path: Path):
    """The executor is SIGKILLed while a run is running: sweep-status exits non-zero and says how to resume;
    sweep-resume refuses while that run's supervisor is alive (no double launch); after sweep-stop it
    resumes and completes."""
    pod = audit
    csv = write_csv(tmp_path / "lost.csv", "lx-1,config/slow.py,1,steps=40,,,,", "lx-2,config/ok.py,2,,,,,",
                    header=HEADER)
    cid = start(pod, csv)["campaign_id"]
    wait_until(lambda: run_state(pod, "lx-1") == "running", 120, interval=0.2, what="lx-1 running")
    marker = marker_of(pod, "lx-1")
    os.kill(int(executor_record(pod, cid)["pid"]), signal.SIGKILL)

    def lost() -> dict[str, Any] | None:
        code, status = status_json(pod)
        return status if status["executor"]["state"] == "lost" else None

    status = wait_until(lost, 60, interval=0.3, what="the executor seen as lost")
    assert {row["run_id"]: row["state"] for row in status["rows"]} == {"lx-1": "running", "lx-2": "missing"}
    assert status["unfinished"] == ["lx-1", "lx-2"]
    text = pod.wf("sweep-status")
    assert text.returncode == 1, text.stdout
    assert "executor is gone" in text.stdout and f"sweep-resume --campaign {cid}" in text.stdout

    # a fetch of the running run says it is not final (never a plain "fetched and verified")
    fetched = pod.wf("--set", f"LOCAL_ARTIFACTS_DIR={tmp_path / 'artifacts'}", "fetch-run", "lx-1")
    assert fetched.returncode == 0, fetched.stderr
    last = fetched.stdout.splitlines()[-1]
    assert "NOT FINAL" in last and "lx-1" in last and not last.startswith("fetched and verified"), last

    before = executor_record(pod, cid)
    refused = pod.wf("sweep-resume")
    assert refused.returncode == 7, refused.stderr
    line = one_line_error(refused)
    assert "lx-1" in line and "still running" in line and "sweep-stop" in line
    assert executor_record(pod, cid) == before and marker_of(pod, "lx-1") == marker

    assert pod.wf("sweep-stop").returncode == 0
    assert pids_with_marker(marker) == set()
    resumed = pod.wf("sweep-resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["rerun"] == ["lx-1", "lx-2"]
    end = wait_campaign(pod, cid)
    assert (end["state"], end["failed"], end["generation"]) == ("finished", 0, 2)
    assert status_json(pod)[0] == 0 and fsm_state(pod) == "SWEEP_COMPLETED"


def test_hangup_ends_the_sweep_truthfully(audit: Pod, tmp_path: Path):
    """Closing the executor's tmux window (SIGHUP): runs cancelled, nothing left, executor lost with the
    reason, and the workflow state SWEEP_FAILED (not SWEEP_RUNNING) saying why."""
    pod = audit
    csv = write_csv(tmp_path / "hup.csv", "hu-1,config/slow.py,1,steps=40,,,,", "hu-2,config/ok.py,2,,,,,",
                    header=HEADER)
    started = start(pod, csv)
    cid = started["campaign_id"]
    wait_until(lambda: run_state(pod, "hu-1") == "running", 120, interval=0.2, what="hu-1 running")
    marker = marker_of(pod, "hu-1")
    assert pod.tmux("kill-window", "-t", f"{started['session']}:sweep").returncode == 0
    end = wait_campaign(pod, cid, timeout=120)
    assert (end["state"], end["stop_reason"]) == ("lost", "hangup") and "SIGHUP" in end["reason"]
    assert summary(pod, "hu-1")["state"] == "cancelled" and not run_dir(pod, "hu-2").exists()
    assert pids_with_marker(marker) == set()
    record = fsm_record(pod)
    assert record["state"] == "SWEEP_FAILED" and "SIGHUP" in record["reason"] and "sweep-resume" in record["reason"]
    code, status = status_json(pod)
    assert code == 1 and status["executor"]["reason"] == end["reason"]

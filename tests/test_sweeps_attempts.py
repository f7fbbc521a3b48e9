"""Sweep truth: every attempt keeps its own files, a trainer's own summary.json survives, a failed row
says why in one line (sweep-status, --json, sweep-logs), a recovered OOM row says so, dry runs plan
exactly what the real command does, resume concludes what finished after the executor died (an ok row
never runs twice), sweep-stop names what it stopped, sweep-watch off a TTY prints only changes, and
sweep-list lists the campaigns. Real tmux executors and supervisors, the stand-in trainer of
tests/sweep_fixture/, on the local target (and the reasons scenario also over the loopback sshd).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import Pod, SSHServer, make_pod, wait_until
from test_sweeps import (
    _alive,
    campaign_ids,
    campaigns_dir,
    executor_record,
    read_json,
    reap,
    run_dir,
    run_state,
    setup_pod,
    sha256,
    start,
    status_json,
    summary,
    wait_campaign,
    write_csv,
)

from helpers.cmd_sweeps import progress_line, render_status
from helpers.pod.attempts import reason_line

CONFIG_ERROR = "train.py: config error: learning_rate expects float, got 'fast'"

TORCHRUN_LOG = """
===== attempt 1 of run r1 (campaign c) on cpu0 (2026-12-02T12:00:00Z) =====
W1202 12:00:01.123000 4242 torch/distributed/run.py:793] Setting OMP_NUM_THREADS environment variable ...
W1202 12:00:01.123000 4242 torch/distributed/run.py:793] *****************************************
loading config ...
train.py: config error: learning_rate expects float, got 'fast'
E1202 12:00:02.000000 4242 torch/distributed/elastic/multiprocessing/api.py:869] failed (exitcode: 2) local_rank: 0
Traceback (most recent call last):
  File "/venv/lib/python3.12/site-packages/torch/distributed/run.py", line 905, in main
    run(args)
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
train.py FAILED
------------------------------------------------------------
Failures:
  <NO_OTHER_FAILURES>
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-02_12:00:02
  exitcode  : 2 (pid: 4243)
============================================================
"""


# ----------------------------------------------------------------------------- no pod needed


def test_reason_is_the_childs_first_error_line_not_torchruns_wrapper():
    assert reason_line(TORCHRUN_LOG, {"reason": "exit 1"}) == CONFIG_ERROR
    crash = ("iter 0 | loss 5.0\n[rank0]: Traceback (most recent call last):\n[rank0]:   File \"train.py\", line 9\n"
             "[rank0]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
             "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\n")
    assert reason_line(crash, {}) == "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert reason_line("iter 0\ngiving up on purpose\n", {}) == "giving up on purpose"
    wrapped = ("iter 1\ngiving up on purpose\nE1202 12:00:02.000 42 torch/distributed/elastic/api.py:1] failed\n"
               "Traceback (most recent call last):\n  File \"/venv/bin/torchrun\", line 8, in <module>\n"
               "    sys.exit(main())\n             ^^^^^^\n"
               "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\n")
    assert reason_line(wrapped, {}) == "giving up on purpose"
    assert reason_line("iter 1\nSignalException: got signal 15\n", {"failure_class": "stalled",
                                                                       "reason": "no output for 20s"}) == (
        "no output for 20s")
    assert reason_line("", {"reason": "exit 3"}) == "exit 3"


def _status(rows: list[dict[str, Any]], executor: str) -> dict[str, Any]:
    totals: dict[str, int] = {}
    for row in rows:
        totals[row["state"]] = totals.get(row["state"], 0) + 1
    return {"campaign_id": "c1", "created_utc": "t", "executor": {"state": executor}, "rows": rows,
            "totals": totals, "total": len(rows)}


def test_progress_bar_shows_lost_work_as_unfinished():
    """A lost row under a dead executor is work left to do: never a full bar."""
    line = progress_line(_status([{"run_id": "a", "state": "lost"}], "lost"))
    assert "] 0/1" in line and "#" not in line and "unfinished 1" in line, line
    done = progress_line(_status([{"run_id": "a", "state": "ok"}, {"run_id": "b", "state": "failed"}], "finished"))
    assert "] 2/2" in done, done
    text = "\n".join(render_status(_status([{"run_id": "a", "state": "ok", "recovered_from": ["oom"]}],
                                            "finished")))
    assert "ok (oom→retry)" in text


# ----------------------------------------------------------------------------- one campaign, both targets


@pytest.fixture(scope="module", params=["local", "ssh"])
def reasons(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, source_repo: Path
            ) -> Iterator[dict[str, Any]]:
    """A finished campaign: at-ok (whose trainer writes its own summary.json), at-bad (a config error,
    exit 2 under torchrun) and at-oom (oom, recovered by the batch retry)."""
    sshd: SSHServer | None = request.getfixturevalue("sshd") if request.param == "ssh" else None
    base = tmp_path_factory.mktemp(f"reasons-{request.param}")
    pod = make_pod(request.param, base, source_repo, sshd)
    try:
        setup_pod(pod)
        csv = write_csv(base / "reasons.csv", "at-ok,config/ok.py,1,own_summary=1,,1",
                        "at-bad,config/badcfg.py,2,,,1", "at-oom,config/oom.py,3,,,1")
        cid = start(pod, csv)["campaign_id"]
        wait_campaign(pod, cid)
        yield {"pod": pod, "cid": cid, "csv": csv}
    finally:
        for campaign in campaign_ids(pod):
            if executor_record(pod, campaign).get("state") in ("running", "starting"):
                pod.wf("sweep-stop", "--campaign", campaign, timeout=300)
        reap(pod)


def test_failed_row_says_why_and_attempts_keep_their_files(reasons: dict[str, Any]):
    pod, cid = reasons["pod"], reasons["cid"]
    code, status = status_json(pod)
    assert code == 1
    rows = {row["run_id"]: row for row in status["rows"]}
    bad = rows["at-bad"]
    assert bad["state"] == "failed" and bad["reason_line"] == CONFIG_ERROR, bad
    assert bad["log"] == str(run_dir(pod, "at-bad") / "attempts" / "1" / "run.log")
    assert CONFIG_ERROR in Path(bad["log"]).read_text()
    assert summary(pod, "at-bad")["reason_line"] == CONFIG_ERROR
    text = pod.wf("sweep-status")
    assert text.returncode == 1 and CONFIG_ERROR in text.stdout and "ChildFailedError" not in text.stdout

    # the oom row recovered and says so; each of its attempts has its own log and verdict
    oom = rows["at-oom"]
    assert oom["state"] == "ok" and oom["recovered_from"] == ["oom"] and oom["attempts"] == 2, oom
    assert "ok (oom→retry)" in text.stdout
    first = read_json(run_dir(pod, "at-oom") / "attempts" / "1" / "summary.json")
    assert (first["state"], first["failure_class"]) == ("failed", "oom")
    assert "CUDA out of memory" in (run_dir(pod, "at-oom") / "attempts" / "1" / "run.log").read_text()
    assert "CUDA out of memory" not in (run_dir(pod, "at-oom") / "attempts" / "2" / "run.log").read_text()
    assert read_json(run_dir(pod, "at-oom") / "attempts" / "2" / "summary.json")["ok"] is True

    # the trainer's own summary.json is kept under its own name beside the runner's
    assert read_json(run_dir(pod, "at-ok") / "trainer_summary.json") == {"trainer": "own", "iters": 3}
    assert summary(pod, "at-ok")["ok"] is True

    # sweep-logs: the latest attempt by default, any attempt by number, a missing one is exit 5
    logs = pod.wf("sweep-logs", "at-bad")
    assert logs.returncode == 0 and CONFIG_ERROR in logs.stdout, logs.stderr
    one = pod.wf("sweep-logs", "at-oom", "--attempt", "1")
    assert one.returncode == 0 and "CUDA out of memory" in one.stdout, one.stderr
    missing = pod.wf("sweep-logs", "at-oom", "--attempt", "9")
    assert missing.returncode == 5 and "no attempt 9" in missing.stderr
    assert pod.wf("sweep-logs", "nope").returncode == 5

    listed = pod.wf("sweep-list", "--json")
    assert listed.returncode == 0, listed.stderr
    (entry,) = [c for c in json.loads(listed.stdout)["campaigns"] if c["campaign_id"] == cid]
    assert (entry["state"], entry["rows"], entry["ok"], entry["failed"]) == ("finished", 3, 2, 1)
    assert cid in pod.wf("sweep-list").stdout


def test_dry_runs_plan_what_the_real_commands_do(reasons: dict[str, Any]):
    """After two rows were ok, sweep-start --dry-run plans only the third, with the env command.sh has;
    resume and stop dry runs name the campaign and the rows."""
    pod, cid, csv = reasons["pod"], reasons["cid"], reasons["csv"]
    before = sorted(os.listdir(campaigns_dir(pod)))
    plan = pod.wf("sweep-start", "--csv", str(csv), "--dry-run")
    assert plan.returncode == 0, plan.stderr
    commands = [line for line in plan.stdout.splitlines() if line.startswith("  cd ")]
    assert len(commands) == 1 and "at-bad" in commands[0], plan.stdout
    assert "2 already ok" in plan.stdout
    replay = (run_dir(pod, "at-bad") / "command.sh").read_text()
    omp = [w for w in replay.split() if w.startswith("OMP_NUM_THREADS=")]
    assert omp and omp[0] in commands[0].split(), (omp, commands[0])
    resume = pod.wf("sweep-resume", "--dry-run")
    assert resume.returncode == 0 and cid in resume.stdout and "would rerun at-bad" in resume.stdout, resume.stdout
    assert "at-ok" not in resume.stdout
    stop = pod.wf("sweep-stop", "--dry-run")
    assert stop.returncode == 0 and cid in stop.stdout and "no row is running" in stop.stdout, stop.stdout
    assert sorted(os.listdir(campaigns_dir(pod))) == before


def test_resume_never_rewrites_a_past_attempt(reasons: dict[str, Any]):
    pod, cid = reasons["pod"], reasons["cid"]
    past = run_dir(pod, "at-bad") / "attempts" / "1"
    hashes = {name: sha256(past / name) for name in ("run.log", "summary.json", "attempt.json")}
    resumed = pod.wf("sweep-resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["rerun"] == ["at-bad"]
    wait_campaign(pod, cid)
    assert {name: sha256(past / name) for name in hashes} == hashes
    lines = (run_dir(pod, "at-bad") / "attempts.jsonl").read_text().splitlines()
    assert [json.loads(line)["attempt"] for line in lines] == [1, 2]
    assert summary(pod, "at-bad")["attempts"] == 2
    code, status = status_json(pod, "--attempts")
    row = next(r for r in status["rows"] if r["run_id"] == "at-bad")
    assert [(a["attempt"], a["state"], a["reason_line"]) for a in row["attempt_list"]] == [
        (1, "failed", CONFIG_ERROR), (2, "failed", CONFIG_ERROR)]
    assert "at-bad attempt 1" in pod.wf("sweep-status", "--attempts").stdout


# ----------------------------------------------------------------------------- executor killed, stop, watch


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory, source_repo: Path) -> Iterator[Pod]:
    pod = make_pod("local", tmp_path_factory.mktemp("attempts-local"), source_repo, None)
    try:
        setup_pod(pod)
        yield pod
    finally:
        for campaign in campaign_ids(pod):
            if executor_record(pod, campaign).get("state") in ("running", "starting"):
                pod.wf("sweep-stop", "--campaign", campaign, timeout=300)
        reap(pod)


def _run_starts(pod: Pod, cid: str, run_id: str) -> int:
    lines = (campaigns_dir(pod) / cid / "events.jsonl").read_text().splitlines()
    return sum(1 for line in lines if json.loads(line).get("event") == "run-start"
               and json.loads(line).get("run_id") == run_id)


def test_resume_concludes_what_finished_after_the_executor_died(local: Pod, tmp_path: Path):
    """The executor is SIGKILLed while c-slow runs; its supervisor then finishes ok. sweep-resume first
    concludes c-slow (never run again) and runs only c-next; sweep-watch off a TTY prints changes only."""
    pod = local
    csv = write_csv(tmp_path / "c.csv", "c-slow,config/slow.py,1,steps=8,,2", "c-next,config/slow.py,2,steps=6,,2")
    cid = start(pod, csv)["campaign_id"]
    wait_until(lambda: run_state(pod, "c-slow") == "running", 120, interval=0.2, what="c-slow running")
    pid = int(executor_record(pod, cid)["pid"])
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not _alive(pid), 10, what="the executor to die")
    # the very first read after its death tells the truth (pid + start time checked on every read)
    assert json.loads(pod.wf("sweep-status", "--json").stdout)["executor"]["state"] == "lost"
    wait_until(lambda: run_state(pod, "c-slow") == "success", 120, interval=0.3, what="c-slow to finish")
    dry = pod.wf("sweep-resume", "--dry-run")
    assert "would first conclude c-slow" in dry.stdout and "would rerun c-next" in dry.stdout, dry.stdout
    assert "would rerun c-slow" not in dry.stdout
    resumed = pod.wf("sweep-resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    reply = json.loads(resumed.stdout)
    assert reply["rerun"] == ["c-next"] and reply["concluded"] == [["c-slow", True]], reply
    watch = pod.wf("sweep-watch", "--interval", "0.5", timeout=300)
    assert watch.returncode == 0, watch.stderr
    printed = watch.stdout.splitlines()
    assert sum(1 for line in printed if line.startswith(f"campaign {cid}")) <= 2, watch.stdout  # running, finished
    running = [" ".join(line.split()[:2] + line.split()[4:]) for line in printed if line.startswith("c-next  running")]
    assert len(running) == len(set(running)), watch.stdout  # a row is printed again only when it changed
    wait_campaign(pod, cid)
    assert _run_starts(pod, cid, "c-slow") == 1 and _run_starts(pod, cid, "c-next") == 1
    assert sorted(os.listdir(run_dir(pod, "c-slow") / "attempts")) == ["1"]
    assert summary(pod, "c-slow")["ok"] is True and summary(pod, "c-slow")["attempts"] == 1
    code, status = status_json(pod)
    assert code == 0 and {r["state"] for r in status["rows"]} == {"ok"}


def test_stop_names_each_row_and_keeps_its_attempts(local: Pod, tmp_path: Path):
    pod = local
    csv = write_csv(tmp_path / "s.csv", "st-1,config/slow.py,1,steps=60,,1", "st-2,config/slow.py,2,steps=60,,1")
    cid = start(pod, csv)["campaign_id"]
    wait_until(lambda: run_state(pod, "st-1") == "running" and run_state(pod, "st-2") == "running", 120,
               interval=0.2, what="both rows running")
    with ThreadPoolExecutor(1) as pool:  # sweep-logs --follow streams the live attempt until it ends
        follow = pool.submit(pod.wf, "sweep-logs", "st-1", "--follow", timeout=300)
        wait_until(lambda: "iter 1 " in (run_dir(pod, "st-1") / "run.log").read_text(), 120, interval=0.2,
                   what="st-1 output")
        began = time.monotonic()
        stopped = pod.wf("sweep-stop", timeout=300)
        took = time.monotonic() - began
        followed = follow.result(timeout=120)
    assert followed.returncode == 0 and "iter 0 " in followed.stdout and "iter 1 " in followed.stdout, followed
    assert stopped.returncode == 0, stopped.stderr
    assert "st-1: cancelled" in stopped.stdout and "st-2: cancelled" in stopped.stdout, stopped.stdout
    assert "none left running" not in stopped.stdout and "2 run(s) cancelled" in stopped.stdout
    assert took < 2 + 20, took  # TASK_KILL_GRACE_SECS=2, plus the tool's own start-up on a loaded machine
    for run_id in ("st-1", "st-2"):
        record = read_json(run_dir(pod, run_id) / "attempts" / "1" / "summary.json")
        assert record["state"] == "cancelled", record
        assert len((run_dir(pod, run_id) / "attempts.jsonl").read_text().splitlines()) == 1
    assert executor_record(pod, cid)["state"] == "stopped"

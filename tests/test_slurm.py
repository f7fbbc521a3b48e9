"""SWEEP_EXECUTOR=slurm against a real one-node Slurm cluster (tests/slurm_cluster.py: munge, slurmdbd +
MariaDB, slurmctld, slurmd, 4 fake GPUs, MaxArraySize 5): the same CSV and run-directory contract as the
tmux executor, rows as job arrays, status from one sacct + one squeue merged with the run files.

The rows use the stand-in trainer in tests/sweep_fixture/ (a second each). One checked-out local pod
(the login node) serves every test; each test waits for its campaign to leave Slurm's queue.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Pod, one_line_error, slurm_login, squeue, wait_until
from test_sweeps import FIXTURE_SETTINGS, campaign_ids, campaigns_dir, fsm_state, read_json, rows_by_id, write_csv

from helpers.pod.executors import slurm_state
from helpers.slurm_keys import extra_args_problem

TIMEOUT = 240


@pytest.fixture(scope="module")
def login(tmp_path_factory: pytest.TempPathFactory, source_repo: Path, slurm_cluster: Any) -> Iterator[Pod]:
    yield from slurm_login(tmp_path_factory.mktemp("slurm-login"), source_repo, slurm_cluster, FIXTURE_SETTINGS)



def start(pod: Pod, csv: Path, *settings: str) -> dict[str, Any]:
    result = pod.wf(*settings, "sweep-start", "--csv", str(csv), "--json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def status(pod: Pod, campaign: str) -> dict[str, Any]:
    result = pod.wf("sweep-status", "--campaign", campaign, "--json")
    assert result.returncode in (0, 1), result.stderr
    return dict(json.loads(result.stdout))


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _row_if(view: dict[str, Any], run_id: str, state: str) -> dict[str, Any] | None:
    row = rows_by_id(view)[run_id]
    return row if row["state"] == state else None


def wait_done(pod: Pod, cluster: Any, campaign: str) -> dict[str, Any]:
    wait_until(lambda: not squeue(cluster, campaign), TIMEOUT, interval=0.5, what=f"{campaign} to leave squeue")
    return status(pod, campaign)


def test_mixed_csv_runs_as_a_job_array_with_per_row_status(login: Pod, slurm_cluster: Any, tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "mixed.csv", "sl-ok,config/ok.py,1,,,1", "sl-fail,config/fail.py,2,,,",
                    "sl-nccl,config/ok.py,3,mode=nccl_always,,2")
    started = start(login, csv)
    campaign = started["campaign_id"]
    assert started["executor"] == "slurm" and len(started["job_ids"]) == 3  # gpus 1, none, 2: one array each
    final = wait_done(login, slurm_cluster, campaign)
    rows = rows_by_id(final)
    assert rows["sl-ok"]["state"] == "ok"
    assert rows["sl-fail"]["state"] == "failed" and rows["sl-fail"]["failure_class"] == "nonzero_exit"
    assert rows["sl-nccl"]["state"] == "failed" and rows["sl-nccl"]["failure_class"] == "nccl"  # the fatal line
    manifest = read_json(login.outputs / "sl-ok" / "run_manifest.json")
    assert manifest["slurm"]["node"] == "localhost" and manifest["slurm"]["job_id"] in started["job_ids"]
    assert (login.outputs / "sl-ok" / "summary.json").is_file() and (login.outputs / "sl-ok" / "run.log").is_file()
    assert re.search(r"cuda=\d\b", (login.outputs / "sl-ok" / "run.log").read_text())  # the allocation's GPU
    assert re.search(r"cuda=\d,\d\b", (login.outputs / "sl-nccl" / "run.log").read_text())  # both of its GPUs
    wait_until(lambda: fsm_state(login) == "SWEEP_FAILED", 30, what="the last array task to record SWEEP_FAILED")
    text = login.wf("sweep-status", "--campaign", campaign)
    assert text.returncode == 1 and "SLURM" in text.stdout and "COMPLETED" in text.stdout


def test_chunks_respect_max_array_size_and_the_throttle_holds(login: Pod, slurm_cluster: Any, tmp_path: Path
                                                              ) -> None:
    rows = [f"ch-{i:02d},config/ok.py,{i},sleep=0.6,," for i in range(12)]
    csv = write_csv(tmp_path / "chunks.csv", *rows)
    started = start(login, csv, "--set", "SLURM_ARRAY_PARALLELISM=2")
    campaign = started["campaign_id"]
    assert len(started["job_ids"]) == 3  # 12 rows, MaxArraySize 5: 5 + 5 + 2, every chunk from index 0
    chunks = slurm_state.chunks(str(campaigns_dir(login) / campaign))
    assert [len(c["rows"]) for c in chunks] == [5, 5, 2]
    assert all(any(w.startswith("--array=0-") and w.endswith("%2") for w in c["argv"]) for c in chunks)
    early = [row.get("slurm") or "" for row in status(login, campaign)["rows"]]
    assert any("PENDING (" in shown for shown in early), early  # pending rows show Slurm's reason
    most = 0
    deadline = time.monotonic() + TIMEOUT
    while squeue(slurm_cluster, campaign) and time.monotonic() < deadline:
        running = [line for line in squeue(slurm_cluster, campaign) if line.endswith("|RUNNING")]
        most = max(most, len(running))
        time.sleep(0.2)
    assert 1 <= most <= 2  # the % throttle holds for the whole campaign, across chunks
    final = wait_done(login, slurm_cluster, campaign)
    assert final["totals"] == {"ok": 12}


def test_stop_cancels_exactly_the_campaign_and_resume_reruns_the_rest(login: Pod, slurm_cluster: Any,
                                                                       tmp_path: Path) -> None:
    other = slurm_cluster.run("sbatch", "--parsable", "--job-name=not-ours", "--wrap=sleep 60").stdout.strip()
    csv = write_csv(tmp_path / "stop.csv", "st-a,config/ok.py,1,steps=40 sleep=1,,",
                    "st-b,config/ok.py,2,steps=40 sleep=1,,", "st-c,config/ok.py,3,,,")
    started = start(login, csv, "--set", "SLURM_ARRAY_PARALLELISM=1")
    campaign = started["campaign_id"]
    wait_until(lambda: (login.outputs / "st-a" / "status.json").is_file(), 60, what="st-a to start")
    stopped = login.wf("sweep-stop", "--campaign", campaign, timeout=180)
    assert stopped.returncode == 0, stopped.stderr
    assert not squeue(slurm_cluster, campaign)
    assert slurm_cluster.run("squeue", "-h", "-j", other).stdout.strip()  # the user's other job is untouched
    slurm_cluster.run("scancel", other)
    view = rows_by_id(status(login, campaign))
    assert {view[r]["state"] for r in ("st-a", "st-b", "st-c")} <= {"cancelled", "failed"}, view
    assert fsm_state(login) == "SWEEP_STOPPED"
    resumed = login.wf("--set", "SLURM_ARRAY_PARALLELISM=3", "sweep-resume", "--campaign", campaign, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(json.loads(resumed.stdout)["rerun"]) == ["st-a", "st-b", "st-c"]
    stopped = login.wf("sweep-stop", "--campaign", campaign, timeout=180)
    assert stopped.returncode == 0 and not squeue(slurm_cluster, campaign)


def test_scancel_outside_the_tool_shows_cancelled_also_after_the_job_left_slurmctld(login: Pod, slurm_cluster: Any,
                                                                                    tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "ext.csv", "ex-a,config/ok.py,1,steps=60 sleep=1,,")
    started = start(login, csv)
    campaign = started["campaign_id"]
    wait_until(lambda: "iter 2" in _text(login.outputs / "ex-a" / "run.log"), 90, what="ex-a to train")
    slurm_cluster.run("scancel", f"--name={campaign}")
    wait_done(login, slurm_cluster, campaign)
    # the end record reaches slurmdbd asynchronously: the row shows cancelled once sacct has it
    seen: list[dict[str, Any]] = []

    def cancelled() -> dict[str, Any] | None:
        seen[:] = [rows_by_id(status(login, campaign))["ex-a"]]
        return seen[0] if seen[0]["state"] == "cancelled" else None
    try:
        row = wait_until(cancelled, 60, interval=1, what="ex-a to show cancelled")
    except BaseException as exc:  # (pytest's Failed is not an Exception)
        raise AssertionError(f"{exc}; last seen: {seen}") from None
    assert "CANCELLED" in (row.get("slurm") or ""), row
    job = started["job_ids"][0]
    wait_until(lambda: not slurm_cluster.ok("scontrol", "show", "job", job), 90, interval=1,
               what="the job to be purged from slurmctld (MinJobAge)")
    row = rows_by_id(status(login, campaign))["ex-a"]  # from sacct alone now
    assert row["state"] == "cancelled" and "CANCELLED" in (row.get("slurm") or ""), row


def test_refused_partition_and_bad_input_submit_nothing(login: Pod, slurm_cluster: Any, tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "bad.csv", "bad-a,config/ok.py,1,,,1")
    before = campaign_ids(login)
    result = login.wf("--set", "SLURM_PARTITION=nope", "sweep-start", "--csv", str(csv))
    assert result.returncode == 2 and "SLURM_PARTITION" in one_line_error(result)
    assert "invalid partition" in result.stderr.lower()
    wide = write_csv(tmp_path / "wide.csv", "bad-w,config/ok.py,1,,,8")
    result = login.wf("sweep-start", "--csv", str(wide))
    assert result.returncode == 2 and "needs 8 GPU(s)" in one_line_error(result)
    result = login.wf("--set", "SLURM_EXTRA_ARGS=--array=0-3", "sweep-start", "--csv", str(csv))
    assert result.returncode == 2 and "SLURM_EXTRA_ARGS" in one_line_error(result)
    no_slurm = tmp_path / "bin"  # this PATH has everything of /usr/bin but the Slurm commands
    no_slurm.mkdir()
    for tool in Path("/usr/bin").iterdir():
        if tool.name not in slurm_state.COMMANDS:
            (no_slurm / tool.name).symlink_to(tool)
    result = login.wf("sweep-start", "--csv", str(csv), env={"PATH": str(no_slurm)})
    assert result.returncode == 1 and "sbatch, squeue, sacct, scontrol, scancel are not on PATH" in one_line_error(
        result), result.stderr
    # checkout says so too (the FSM check aside: an earlier test's campaign may still read SWEEP_RUNNING)
    result = login.wf("--set", "WF_FSM_ENFORCE=0", "checkout", env={"PATH": str(no_slurm)}, timeout=300)
    assert result.returncode == 1 and "sbatch, squeue, sacct, scontrol, scancel are not on PATH" in one_line_error(
        result), result.stderr
    assert campaign_ids(login) == before
    assert not slurm_cluster.run("squeue", "-h").stdout.strip()


def test_dry_run_prints_every_sbatch_line_and_the_job_script(login: Pod, tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "dry.csv", *[f"dr-{i},config/ok.py,{i},,,1" for i in range(7)])
    result = login.wf("--dry-run", "--set", "SLURM_ARRAY_PARALLELISM=3", "sweep-start", "--csv", str(csv))
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "sbatch --parsable" in line]
    assert len(lines) == 2 and "--array=0-4%3" in lines[0] and "--array=0-1%3" in lines[1]
    assert "--signal=B:USR2@120" in lines[0] and "--requeue" in lines[0] and "--gpus-per-node=1" in lines[0]
    assert "slurm-task" in result.stdout  # the rendered job script
    template = tmp_path / "job.tmpl"
    template.write_text("#!/bin/bash\n# site template\nexec apptainer exec img.sif @WF_RUN_ROW@\n")
    result = login.wf("--dry-run", "--set", f"SLURM_JOB_TEMPLATE={template}", "sweep-start", "--csv", str(csv))
    assert result.returncode == 0, result.stderr
    assert re.search(r"\| exec apptainer exec img\.sif \S+ -I -S \S+(\.pyz|entry\.py) slurm-task ", result.stdout), \
        result.stdout
    template.write_text("#!/bin/bash\necho no placeholder\n")
    result = login.wf("--dry-run", "--set", f"SLURM_JOB_TEMPLATE={template}", "sweep-start", "--csv", str(csv))
    assert result.returncode == 2 and "@WF_RUN_ROW@" in one_line_error(result)
    assert not list(campaigns_dir(login).glob("*")) or all("dr-" not in p.name for p in login.outputs.iterdir())


def test_extra_args_are_checked_as_sbatch_options() -> None:
    assert extra_args_problem(["--exclusive", "--nice=10"]) == ""
    assert "not an sbatch option" in extra_args_problem(["exclusive"])
    assert "set by workflow.sh" in extra_args_problem(["--job-name=x"])
    assert "not an sbatch option workflow.sh passes on" in extra_args_problem(["--frobnicate"])
    assert slurm_state.row_state("UNKNOWN") == ("failed", "unknown")
    assert slurm_state.row_state("CANCELLED by 0") == ("cancelled", "killed")
    assert slurm_state.exit_code("3:15") == (3, 15)


def test_status_is_one_sacct_and_one_squeue(login: Pod, slurm_cluster: Any, tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "calls.csv", *[f"ca-{i},config/ok.py,{i},,," for i in range(3)])
    campaign = start(login, csv)["campaign_id"]
    wait_done(login, slurm_cluster, campaign)
    shims, calls = tmp_path / "bin", tmp_path / "calls.log"
    shims.mkdir()
    for tool in Path("/usr/bin").iterdir():
        if tool.name not in ("sacct", "squeue"):
            (shims / tool.name).symlink_to(tool)
    for name in ("sacct", "squeue"):
        (shims / name).write_text(f'#!/bin/sh\necho {name} >> {calls}\nexec /usr/bin/{name} "$@"\n')
        (shims / name).chmod(0o755)
    (campaigns_dir(login) / campaign / "slurm" / "sacct-cache.json").unlink(missing_ok=True)  # as if never asked
    result = login.wf("sweep-status", "--campaign", campaign, env={"PATH": str(shims)})
    assert result.returncode == 0, result.stderr
    assert sorted(calls.read_text().split()) == ["sacct", "squeue"]  # never one call per row
    calls.unlink()
    again = login.wf("sweep-status", "--campaign", campaign, env={"PATH": str(shims)})
    assert again.returncode == 0 and again.stdout == result.stdout, again.stderr
    assert calls.read_text().split() == ["squeue"]  # the ended jobs' sacct records are cached in the campaign
    # every job's end cached: the concluded campaign's table is kept too (statuscache.py), no row file re-read
    cache = campaigns_dir(login) / campaign / "status-cache.json"
    assert cache.is_file()
    table_file = cache.with_name(f"status-table-{json.loads(cache.read_text())['table_hash'][:16]}.json")
    stored = json.loads(table_file.read_text())
    stored["rows"][0][stored["columns"].index("state")] = "from-the-cache"
    table_file.write_text(json.dumps(stored))
    calls.unlink()
    shown = login.wf("sweep-status", "--campaign", campaign, "--json", env={"PATH": str(shims)})
    assert rows_by_id(json.loads(shown.stdout))["ca-0"]["state"] == "from-the-cache", shown.stderr
    assert calls.read_text().split() == ["squeue"]  # still one squeue: a requeued job makes it live again
    (campaigns_dir(login) / campaign / "slurm" / "sacct-cache.json").unlink()  # Slurm's part changed: rebuilt
    assert rows_by_id(status(login, campaign))["ca-0"]["state"] == "ok"


def test_scontrol_requeue_resumes_the_row_from_its_checkpoint(login: Pod, slurm_cluster: Any, tmp_path: Path
                                                              ) -> None:
    csv = write_csv(tmp_path / "rq.csv", "rq-a,config/ok.py,1,steps=30 sleep=0.5,,")
    started = start(login, csv)
    campaign = started["campaign_id"]
    wait_until(lambda: "iter 3" in _text(login.outputs / "rq-a" / "run.log"), 120, what="rq-a to train")
    slurm_cluster.run("scontrol", "requeue", f"{started['job_ids'][0]}_0")
    wait_until(lambda: "resumed from iter" in _text(login.outputs / "rq-a" / "run.log"), 240, interval=1,
               what="the requeued row to resume from its checkpoint")
    final = wait_done(login, slurm_cluster, campaign)
    assert rows_by_id(final)["rq-a"]["state"] == "ok"
    assert rows_by_id(final)["rq-a"]["attempts"] == 2  # the requeue is the row's second attempt
    manifest = read_json(login.outputs / "rq-a" / "run_manifest.json")
    assert manifest["slurm"]["restart_count"] >= 1


def test_scancel_before_the_rows_start_ends_the_campaign(login: Pod, slurm_cluster: Any, tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "held.csv", "hd-a,config/ok.py,1,,,", "hd-b,config/ok.py,2,,,")
    started = start(login, csv, "--set", "SLURM_EXTRA_ARGS=--hold")  # held: no row ever starts
    campaign = started["campaign_id"]
    wait_until(lambda: squeue(slurm_cluster, campaign), 30, what="the held array in squeue")
    assert fsm_state(login) == "SWEEP_RUNNING"
    slurm_cluster.run("scancel", f"--name={campaign}")
    wait_done(login, slurm_cluster, campaign)
    def all_cancelled() -> list[dict[str, Any]] | None:
        rows = status(login, campaign)["rows"]
        return rows if {r["state"] for r in rows} == {"cancelled"} else None

    rows = wait_until(all_cancelled, 60, interval=1, what="both rows to show cancelled (from sacct)")
    assert all("CANCELLED" in (r.get("slurm") or "") for r in rows), rows
    assert fsm_state(login) == "SWEEP_FAILED"  # concluded by the first status that saw every row end
    assert not (login.outputs / "hd-a" / "summary.json").exists()



def _path_without(tmp_path: Path, *names: str, shims: dict[str, str] | None = None) -> str:
    """A PATH with everything of /usr/bin but ``names`` (and ``shims``: name -> sh script body)."""
    folder = tmp_path / f"bin-{len(list(tmp_path.glob('bin-*')))}"
    folder.mkdir()
    for tool in Path("/usr/bin").iterdir():
        if tool.name not in names and tool.name not in (shims or {}) and not (folder / tool.name).exists():
            (folder / tool.name).symlink_to(tool)
    for name, body in (shims or {}).items():
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
        (folder / name).chmod(0o755)
    return str(folder)


def test_without_sacct_status_falls_back_to_squeue_and_the_run_files(login: Pod, slurm_cluster: Any,
                                                                     tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "nodb.csv", "nd-ok,config/ok.py,1,,,", "nd-fail,config/fail.py,2,,,")
    started = start(login, csv)
    campaign = started["campaign_id"]
    wait_done(login, slurm_cluster, campaign)
    missing = _path_without(tmp_path, "sacct")
    (campaigns_dir(login) / campaign / "slurm" / "sacct-cache.json").unlink(missing_ok=True)  # sacct never answered
    result = login.wf("sweep-status", "--campaign", campaign, "--json", env={"PATH": missing})
    assert result.returncode == 1, result.stderr  # a row failed; no traceback, no exit 1 for the missing sacct
    view = json.loads(result.stdout)
    assert "no Slurm accounting" in (view["executor"]["note"] or "") and "not on PATH" in view["executor"]["note"]
    rows = rows_by_id(view)
    assert rows["nd-ok"]["state"] == "ok" and rows["nd-fail"]["state"] == "failed"  # from their own files
    text = login.wf("sweep-status", "--campaign", campaign, env={"PATH": missing})
    assert "note: no Slurm accounting" in text.stdout, text.stdout
    # slurmdbd down: sacct there but refusing; a row still queued shows Slurm's pending reason from squeue
    refusing = _path_without(tmp_path, shims={"sacct": "echo 'sacct: error: Problem talking to the database: "
                                                        "Connection refused' >&2; exit 1"})
    held = start(login, write_csv(tmp_path / "held.csv", "nd-h,config/ok.py,4,,,"), "--set",
                 "SLURM_EXTRA_ARGS=--hold")["campaign_id"]
    try:
        view = json.loads(login.wf("sweep-status", "--campaign", held, "--json", env={"PATH": refusing}).stdout)
        assert "Connection refused" in view["executor"]["note"], view["executor"]
        row = rows_by_id(view)["nd-h"]
        assert row["state"] == "queued" and "PENDING (JobHeldUser)" in (row.get("slurm") or ""), row
    finally:
        login.wf("sweep-stop", "--campaign", held, timeout=120)


def test_a_row_that_reaches_the_time_limit_is_timeout_and_the_trainer_got_usr2(login: Pod, slurm_cluster: Any,
                                                                               tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "limit.csv", "tl-a,config/hang.py,1,,,")
    started = start(login, csv, "--set", "SLURM_TIME=2", "--set", "RUN_STALL_SECS=600")  # USR2@120: due at once
    campaign = started["campaign_id"]
    final = wait_done(login, slurm_cluster, campaign)
    row = rows_by_id(final)["tl-a"]
    assert row["failure_class"] == "timeout", row  # the row's own stop, before Slurm's limit kills it
    log = _text(login.outputs / "tl-a" / "run.log")
    assert "SIGUSR2 forwarded to the trainer" in log, log  # by the supervisor, to torchrun's workers
    assert re.search(r"^SIGUSR2: checkpoint at iter \d+$", log, re.MULTILINE), log  # the trainer's handler
    assert "TIMEOUT" not in (row.get("slurm") or ""), row  # it ended before the limit, so Slurm says so


def test_chunks_over_the_qos_submit_limit_are_deferred_and_every_row_runs(login: Pod, slurm_cluster: Any,
                                                                         tmp_path: Path) -> None:
    slurm_cluster.run("sacctmgr", "-i", "add", "qos", "wfsix", "MaxSubmitJobsPerUser=6")
    slurm_cluster.run("sacctmgr", "-i", "modify", "user", "root", "set", "qos+=wfsix")
    wait_until(lambda: "QOS=wfsix(" in slurm_cluster.run("scontrol", "show", "assoc_mgr", "flags=qos", "qos=wfsix",
                                                         check=False).stdout, 30, interval=0.5,
               what="slurmctld to know the QOS")
    csv = write_csv(tmp_path / "qos.csv", *[f"qs-{i:02d},config/ok.py,{i},sleep=0.5,," for i in range(12)])
    started = start(login, csv, "--set", "SLURM_QOS=wfsix")
    campaign = started["campaign_id"]
    assert len(started["job_ids"]) == 1  # 5 + 5 > 6 array tasks: the 2nd and 3rd chunks wait, nothing failed
    folder = campaigns_dir(login) / campaign / "slurm"
    waiting = [read_json(p) for p in sorted(folder.glob("chunk-*.json"))]
    assert [bool(c.get("deferred")) for c in waiting] == [False, True, True], waiting
    assert "QOSMaxSubmitJobPerUserLimit" in waiting[1]["deferred"]
    shown = [r.get("slurm") or "" for r in status(login, campaign)["rows"]]
    assert any(s.startswith("deferred (QOSMaxSubmitJobPerUserLimit)") for s in shown), shown
    most = 0

    def all_ok() -> bool:
        nonlocal most
        most = max(most, len(squeue(slurm_cluster, campaign)))
        return status(login, campaign)["totals"] == {"ok": 12}  # a status also submits what fits now

    wait_until(all_ok, TIMEOUT, interval=0.5, what="every row, deferred chunks included, to end ok")
    assert most <= 6
    assert all(c.get("job_id") for c in (read_json(p) for p in sorted(folder.glob("chunk-*.json"))))
    wait_until(lambda: fsm_state(login) == "SWEEP_COMPLETED", 30, what="the campaign's end state")


def test_retries_are_new_array_tasks_oom_then_ok_flaky_then_ok_stall_then_ok(login: Pod, slurm_cluster: Any,
                                                                          tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "retry.csv", "rt-oom,config/oom.py,1,,,", "rt-flaky,config/ok.py,2,mode=flaky_nccl,,",
                    "rt-stall,config/hang.py,3,,,")
    started = start(login, csv, "--set", "RUN_RETRIES=1", "--set", "RUN_STALL_SECS=20")
    campaign = started["campaign_id"]
    assert len(started["job_ids"]) == 1

    def ended() -> dict[str, Any] | None:
        view = status(login, campaign)
        live = {"queued", "pending", "running", "retrying", "missing"}
        return view if not {r["state"] for r in view["rows"]} & live else None

    rows = rows_by_id(wait_until(ended, TIMEOUT, interval=1, what="every row to end, retries included"))
    assert rows["rt-oom"]["state"] == "ok" and rows["rt-oom"]["attempts"] == 2, rows["rt-oom"]
    assert rows["rt-flaky"]["state"] == "ok" and rows["rt-flaky"]["attempts"] == 2, rows["rt-flaky"]
    # the stall (a transient class) is retried once (RUN_RETRIES=1), resumed past the step that hung
    assert rows["rt-stall"]["state"] == "ok" and rows["rt-stall"]["attempts"] == 2, rows["rt-stall"]
    first = json.loads(_text(login.outputs / "rt-stall" / "attempts.jsonl").splitlines()[0])
    assert first.get("failure_class") == "stalled", first
    assert "resumed from iter 1" in _text(login.outputs / "rt-stall" / "run.log")
    for run_id in ("rt-oom", "rt-flaky", "rt-stall"):  # every attempt its own Slurm job: none looped in one
        history = read_json(login.outputs / run_id / "run_manifest.json")["slurm_history"]
        assert len({h["job_id"] for h in history}) == len(history) == 2, history
    assert "batch_size=8" in _text(login.outputs / "rt-oom" / "run.log")  # the half batch
    wait_until(lambda: fsm_state(login) == "SWEEP_COMPLETED", 30, what="the campaign's end state")

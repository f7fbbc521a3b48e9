"""Sweeps end to end (sweep-start, sweep-status, sweep-watch, sweep-stop, sweep-resume, fetch-run,
fetch-all) with real tmux executors and supervisors and the stand-in trainer in tests/sweep_fixture/.

The core scenario (ok, failing, stalling, oom and nccl-once rows) runs on both targets through the
parametrized ``pod`` fixture. Everything else shares one bootstrapped and checked-out `local` pod
(``shared``, module scope: checkout costs seconds each); those tests never overlap their sweeps:
each one waits until its campaign's executor has ended. Every pod's tmux server is killed at the
end and any process still carrying a run's WF_TASK_MARKER is SIGKILLed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO_ROOT, Pod, SSHServer, cleanup_pod, git, make_pod, one_line_error, wait_until

# RUN_STALL_SECS: torchrun prints nothing while it starts (~4 s here, far more when other jobs load the
# machine), so a window of 12 s sometimes stalls a healthy run: 20 s where a row must stall, 60 s elsewhere.
FIXTURE_SETTINGS = {"TRAIN_WORKDIR": "tests/sweep_fixture", "SWEEP_CPU_SLOTS": "2", "RUN_STALL_SECS": "60",
                    "RUN_RETRY_BACKOFF_SECS": "1", "TASK_KILL_GRACE_SECS": "2"}
SECRET = "wandb-sekrit-7f3c9a1e55d24b08"
HEADER = "run_id,config,seed,overrides,notes,gpus"
ENDED = ("finished", "stopped", "lost")
SWEEP_TIMEOUT = 300  # generous: the machine is small and shared


# ----------------------------------------------------------------------------- helpers


def setup_pod(pod: Pod, **extra: str) -> None:
    """Sweep settings for the stand-in trainer, then bootstrap + checkout."""
    pod.set(**{**FIXTURE_SETTINGS, **extra})
    for command in ("bootstrap", "checkout"):
        result = pod.wf(command, timeout=600)
        assert result.returncode == 0, f"{command}: {result.stderr}"


def write_csv(path: Path, *rows: str, header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def start(pod: Pod, csv: Path, *settings: str, options: tuple[str, ...] = ()) -> dict[str, Any]:
    """sweep-start --json with global ``settings`` (--set K=V ...) and command ``options``."""
    result = pod.wf(*settings, "sweep-start", "--csv", str(csv), "--json", *options)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def campaigns_dir(pod: Pod) -> Path:
    return pod.outputs / "_campaigns"


def campaign_ids(pod: Pod) -> list[str]:
    return sorted(os.listdir(campaigns_dir(pod))) if campaigns_dir(pod).is_dir() else []


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def executor_record(pod: Pod, campaign: str) -> dict[str, Any]:
    try:
        return read_json(campaigns_dir(pod) / campaign / "executor.json")
    except (OSError, ValueError):
        return {}


def wait_campaign(pod: Pod, campaign: str, timeout: float = SWEEP_TIMEOUT) -> dict[str, Any]:
    """Until the campaign's executor has ended (finished, stopped or lost); its executor.json."""
    wait_until(lambda: executor_record(pod, campaign).get("state") in ENDED, timeout, interval=0.5,
               what=f"campaign {campaign} to end")
    return executor_record(pod, campaign)


def run_dir(pod: Pod, run_id: str) -> Path:
    return pod.outputs / run_id


def summary(pod: Pod, run_id: str) -> dict[str, Any]:
    return read_json(run_dir(pod, run_id) / "summary.json")


def run_state(pod: Pod, run_id: str) -> str | None:
    """The supervisor's state of the run's current attempt (status.json)."""
    try:
        return read_json(run_dir(pod, run_id) / "status.json").get("state")
    except (OSError, ValueError):
        return None


def status_json(pod: Pod, *extra: str) -> tuple[int, dict[str, Any]]:
    result = pod.wf("sweep-status", "--json", *extra)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def rows_by_id(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["run_id"]: row for row in status["rows"]}


def fsm_state(pod: Pod) -> str:
    result = pod.wf("fsm-status", "--json")
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["state"])


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pod_files(path: Path, checkpoints: bool = False) -> dict[str, str]:
    """Relative path -> sha256 of the files a fetch must bring (the tool's own bookkeeping left out)."""
    found = {}
    for file in sorted(path.rglob("*")):
        name = file.name
        if not file.is_file() or file.is_symlink() or name in (".env.json", ".wf-checksums.json") \
                or name.endswith(".lock") or (name.startswith(".") and name.endswith(".tmp")):
            continue
        if not checkpoints and file.suffix in (".pt", ".pth", ".ckpt", ".safetensors"):
            continue
        found[str(file.relative_to(path))] = sha256(file)
    return found


def local_files(path: Path) -> dict[str, str]:
    return {rel: digest for rel, digest in pod_files(path, checkpoints=True).items()
            if rel != ".wf-fetch-checksums.json"}


def _proc_read(pid: int, name: str) -> bytes:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    text = _proc_read(pid, "stat").decode(errors="replace")
    return bool(text) and text[text.rfind(")") + 2:][:1] not in ("Z", "X", "")


def pids_with_marker(marker: str) -> set[int]:
    """Live processes whose environment holds WF_TASK_MARKER=<marker>."""
    needle = b"\0WF_TASK_MARKER=" + marker.encode() + b"\0"
    return {int(name) for name in os.listdir("/proc") if name.isdigit() and int(name) != os.getpid()
            and needle in b"\0" + _proc_read(int(name), "environ") + b"\0" and _alive(int(name))}


def marker_of(pod: Pod, run_id: str) -> str:
    return str(read_json(run_dir(pod, run_id) / "spec.json")["marker"])


def reap(pod: Pod) -> None:
    """Kill the pod's tmux server, then SIGKILL anything still carrying one of its runs' markers."""
    cleanup_pod(pod)
    for spec in pod.outputs.glob("*/spec.json") if pod.outputs.is_dir() else []:
        with contextlib.suppress(OSError, ValueError, KeyError):
            for pid in pids_with_marker(read_json(spec)["marker"]):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def windows_overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return utc(a["started_utc"]) < utc(b["ended_utc"]) and utc(b["started_utc"]) < utc(a["ended_utc"])


# ----------------------------------------------------------------------------- fixtures


@contextlib.contextmanager
def _pod_with_secret(kind: str, base: Path, source_repo: Path, sshd: SSHServer | None) -> Iterator[Pod]:
    """A set-up pod of ``kind`` whose config holds a W&B key (so every test on it also feeds the
    secret checks); reaped afterwards."""
    pod = make_pod(kind, base, source_repo, sshd)
    try:
        setup_pod(pod, WANDB_API_KEY=SECRET)
        yield pod
    finally:
        reap(pod)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, source_repo: Path) -> Iterator[Pod]:
    """One checked-out local pod for the tests below the core scenario (they run one sweep at a time).
    Its config holds a W&B key, so every test on it also feeds the secret checks."""
    with _pod_with_secret("local", tmp_path_factory.mktemp("shared"), source_repo, None) as pod:
        yield pod


@pytest.fixture(scope="module")
def shared_ssh(tmp_path_factory: pytest.TempPathFactory, source_repo: Path, sshd: SSHServer) -> Iterator[Pod]:
    """The same as ``shared``, reached over the loopback sshd, for the scenarios that run on both."""
    with _pod_with_secret("ssh", tmp_path_factory.mktemp("shared-ssh"), source_repo, sshd) as pod:
        yield pod


def shared_pod(request: pytest.FixtureRequest) -> Pod:
    """``shared`` or ``shared_ssh``, after the parameter (local / ssh) of a scenario fixture."""
    pod: Pod = request.getfixturevalue("shared" if request.param == "local" else "shared_ssh")
    return pod


@pytest.fixture(autouse=True)
def _no_sweep_left_running(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test on a shared pod that failed half-way leaves no running sweep to the next one."""
    yield
    for name in ("shared", "shared_ssh"):
        if name not in request.fixturenames:
            continue
        pod: Pod = request.getfixturevalue(name)
        for campaign in campaign_ids(pod):
            if executor_record(pod, campaign).get("state") in ("running", "starting"):
                pod.wf("sweep-stop", "--campaign", campaign, timeout=300)


@pytest.fixture(scope="module")
def finished(shared: Pod, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A finished campaign on the shared pod, started with SWEEP_MATCH + SWEEP_LIMIT: fin-ok (ok) and
    fin-fail (failed) ran; other-1 (no match) was never selected, fin-x (past the limit: part 1 of the
    sweep is its first 2 rows) is in the campaign, not submitted."""
    csv = write_csv(tmp_path_factory.mktemp("finished") / "fin.csv",
                    "fin-ok,config/ok.py,11,,succeeds,1", "other-1,config/ok.py,12,,not matched,1",
                    "fin-fail,config/fail.py,13,,fails,1", "fin-x,config/ok.py,14,,after the limit,1")
    started = start(shared, csv, "--set", "SWEEP_MATCH=^fin-", "--set", "SWEEP_LIMIT=2")
    wait_campaign(shared, started["campaign_id"])
    return {**started, "csv": csv}


def test_core_scenario(pod: Pod, tmp_path: Path):
    """ok, failing, stalling, oom and nccl-once rows: the truth in summaries, sweep-status and the FSM,
    then fetch-all of the whole campaign, verified file by file."""
    setup_pod(pod, RUN_RETRIES="1", RUN_STALL_SECS="20")
    csv = write_csv(tmp_path / "core.csv",
                    "c-ok,config/ok.py,1,,succeeds,1",
                    "c-fail,config/fail.py,2,,exits 3 at step 1,1",
                    "c-hang,config/hang.py,3,,stalls at step 1,1",
                    "c-oom,config/oom.py,4,,oom while batch > 8,1",
                    "c-nccl,config/flaky.py,5,,nccl error on the first attempt,1")
    try:
        _core_scenario(pod, csv)
    finally:
        reap(pod)


def _core_scenario(pod: Pod, csv: Path) -> None:
    started = start(pod, csv)
    cid = started["campaign_id"]
    assert (started["rows"], started["already_ok"], started["slots"]) == (5, 0, ["cpu0", "cpu1"])
    assert fsm_state(pod) == "SWEEP_RUNNING"
    executor = wait_campaign(pod, cid)
    assert executor["state"] == "finished" and executor["failed"] == 1, executor

    # -- the campaign's files
    cdir = campaigns_dir(pod) / cid
    for name in ("manifest.json", "sweep.csv", "executor.json", "events.jsonl", "executor.log", "index.json"):
        assert (cdir / name).is_file(), name
    assert (cdir / "sweep.csv").read_bytes() == csv.read_bytes()
    assert (pod.outputs / "_manifests" / "sweep-latest.csv").read_bytes() == csv.read_bytes()
    assert (pod.outputs / "_manifests" / f"sweep-{cid}.csv").read_bytes() == csv.read_bytes()
    manifest = read_json(cdir / "manifest.json")
    assert [row["run_id"] for row in manifest["rows"]] == ["c-ok", "c-fail", "c-hang", "c-oom", "c-nccl"]
    events = [json.loads(line) for line in (cdir / "events.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "executor-end" and events[-1]["failed"] == 1

    # -- per run: the directory contract
    for run_id in ("c-ok", "c-fail", "c-hang", "c-oom", "c-nccl"):
        rdir = run_dir(pod, run_id)
        for name in ("summary.json", "run_manifest.json", "command.sh", "run.log", "campaign.json"):
            assert (rdir / name).is_file(), f"{run_id}/{name}"
        assert read_json(rdir / "campaign.json")["campaign_id"] == cid
        done = summary(pod, run_id)
        assert done["campaign_id"] == cid and done["run_id"] == run_id
        assert utc(done["started_utc"]) <= utc(done["ended_utc"])
        assert done["duration_s"] > 0 and len(done["attempt_history"]) == done["attempts"]

    ok = summary(pod, "c-ok")
    assert (ok["ok"], ok["state"], ok["exit_code"], ok["attempts"], ok["failure_class"]) == (
        True, "success", 0, 1, None)
    assert ok["final_metrics"] == {"iter": 2, "train_loss": pytest.approx(6 / 3), "val_loss": pytest.approx(5 / 3),
                                    "batch_size": 8}
    assert ok["best_metrics"]["val_loss"] == pytest.approx(5 / 3)
    assert ok["trainer_results"] == {"status": "completed", "iters": 3}

    fail = summary(pod, "c-fail")  # the worker exits 3; torchrun (the run's process) then exits 1
    assert (fail["ok"], fail["state"], fail["failure_class"], fail["exit_code"], fail["attempts"]) == (
        False, "failed", "nonzero_exit", 1, 1)
    fail_log = (run_dir(pod, "c-fail") / "run.log").read_text()
    assert "giving up on purpose" in fail_log and "exitcode: 3" in fail_log

    hang = summary(pod, "c-hang")  # stalled, retried RUN_RETRIES=1 time with resume=1 (past the hang)
    first, second = hang["attempt_history"]
    assert (first["state"], first["failure_class"]) == ("stalled", "stalled")
    assert hang["attempts"] == 2 and "resume=1" in second["overrides"]
    assert hang["ok"] is True and "resumed from iter 1" in (run_dir(pod, "c-hang") / "run.log").read_text()

    oom = summary(pod, "c-oom")
    first, second = oom["attempt_history"]
    assert (first["state"], first["failure_class"]) == ("failed", "oom")
    assert second["overrides"] == ["batch_size=8", "gradient_accumulation_steps=2", "resume=1"]
    assert (second["state"], oom["ok"], oom["attempts"]) == ("success", True, 2)
    oom_log = (run_dir(pod, "c-oom") / "run.log").read_text()
    assert "resumed from iter" in oom_log and oom_log.count("===== attempt ") == 2
    assert oom["final_metrics"]["batch_size"] == 8

    nccl = summary(pod, "c-nccl")
    assert [a["failure_class"] for a in nccl["attempt_history"]] == ["nccl", None]
    assert (nccl["ok"], nccl["attempts"]) == (True, 2)

    # -- sweep-status: the table, then --json; exit 1 because a row failed
    table = pod.wf("sweep-status")
    assert table.returncode == 1, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith(f"campaign {cid}") and "executor finished" in lines[0]
    expected = {"c-ok": ("ok", "1"), "c-fail": ("failed", "1"), "c-hang": ("ok", "2"), "c-oom": ("ok", "2"),
                "c-nccl": ("ok", "2")}
    shown = {"c-hang": "ok (stalled→retry)", "c-oom": "ok (oom→retry)", "c-nccl": "ok (nccl→retry)"}
    for run_id, (state, attempts) in expected.items():
        words = next(line.split() for line in lines if line.startswith(run_id + " "))
        cell = shown.get(run_id, state).split()
        assert words[1:2 + len(cell)] == [*cell, attempts], words
    assert "nonzero_exit" in next(line for line in lines if line.startswith("c-fail "))
    assert "5/5" in lines[-1] and "failed 1" in lines[-1] and "ok 4" in lines[-1]
    code, status = status_json(pod)
    assert code == 1
    assert {r: (v["state"], v["attempts"]) for r, v in rows_by_id(status).items()} == {
        r: (s, int(a)) for r, (s, a) in expected.items()}
    assert rows_by_id(status)["c-fail"]["failure_class"] == "nonzero_exit"
    assert status["totals"] == {"ok": 4, "failed": 1} and status["total"] == 5
    assert status["executor"]["state"] == "finished"
    assert fsm_state(pod) == "SWEEP_FAILED"
    if pod.kind == "ssh":  # sweep-status is one round trip
        debug = pod.wf("sweep-status", "--debug")
        # at most one connection (none when it rides the shared one, SSH_CLIENT=auto with OpenSSH)
        assert re.search(r" [01] connection\(s\), 1 remote command\(s\)", debug.stderr), debug.stderr

    # -- fetch-all: every file listed on the pod arrives intact
    fetched = pod.wf("fetch-all", "--json", timeout=300)
    assert fetched.returncode == 0, fetched.stderr
    report = json.loads(fetched.stdout)
    assert report["campaign_id"] == cid and report["mismatched"] == [] and report["missing"] == []
    artifacts = pod.root.parent / "artifacts"
    assert sorted(p.name for p in artifacts.iterdir()) == sorted(expected)
    for run_id in expected:
        assert local_files(artifacts / run_id) == pod_files(run_dir(pod, run_id)), run_id


def test_packing_full_width_row_and_watch(shared: Pod, tmp_path: Path):
    """Two 1-slot rows run side by side on 2 CPU slots; a row without `gpus` takes both and overlaps no
    other run; sweep-watch returns when the sweep ends; every row ok -> SWEEP_COMPLETED, status exit 0."""
    pod = shared
    csv = write_csv(tmp_path / "pack.csv",
                    "pk-a,config/slow.py,1,steps=6,one slot,1",
                    "pk-b,config/slow.py,2,steps=6,one slot,1",
                    "pk-wide,config/ok.py,3,,every slot,",
                    "pk-c,config/ok.py,4,,one slot,1")
    started = start(pod, csv)
    watch = pod.wf("sweep-watch", "--interval", "1", timeout=SWEEP_TIMEOUT)
    assert watch.returncode == 0, watch.stderr
    assert executor_record(pod, started["campaign_id"])["state"] == "finished"
    bars = [line for line in watch.stdout.splitlines() if "/4" in line and "[" in line]  # off a TTY: changes only
    assert bars and "4/4" in bars[-1] and "ok 4" in bars[-1], watch.stdout

    runs = {run_id: summary(pod, run_id) for run_id in ("pk-a", "pk-b", "pk-wide", "pk-c")}
    assert all(done["ok"] for done in runs.values()), {r: d["state"] for r, d in runs.items()}
    slots = {run_id: done["attempt_history"][0]["slots"] for run_id, done in runs.items()}
    assert sorted(slots["pk-a"] + slots["pk-b"]) == ["cpu0", "cpu1"]
    assert sorted(slots["pk-wide"]) == ["cpu0", "cpu1"] and len(slots["pk-c"]) == 1
    assert windows_overlap(runs["pk-a"], runs["pk-b"]), (runs["pk-a"], runs["pk-b"])
    for other in ("pk-a", "pk-b", "pk-c"):
        assert not windows_overlap(runs["pk-wide"], runs[other]), other
    # no backfill past the waiting wide row: pk-c (1 slot) starts only after it, as --dry-run says
    assert utc(runs["pk-c"]["started_utc"]) >= utc(runs["pk-wide"]["ended_utc"])
    wide_argv = read_json(run_dir(pod, "pk-wide") / "run_manifest.json")["argv"]
    assert "--nproc_per_node=2" in wide_argv
    assert "--nproc_per_node=1" in read_json(run_dir(pod, "pk-a") / "run_manifest.json")["argv"]
    assert "cuda=-" not in (run_dir(pod, "pk-a") / "run.log").read_text()  # CPU slots: CUDA hidden ("")
    assert fsm_state(pod) == "SWEEP_COMPLETED"
    code, status = status_json(pod)
    assert code == 0 and status["totals"] == {"ok": 4}


@pytest.fixture(scope="module", params=["local", "ssh"])
def stop_resume(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A sweep of slow rows stopped mid-way, then resumed to the end; what each step showed, on the
    local pod and over SSH.

    st-quick ends before the stop; st-s1 and st-s2 are running when sweep-stop comes; st-s3 has not
    started. The tests below judge the record."""
    pod = shared_pod(request)
    seen: dict[str, Any] = {"pod": pod}
    csv = write_csv(tmp_path_factory.mktemp("stop") / "stop.csv",
                    "st-quick,config/ok.py,1,,done before the stop,1",
                    "st-s1,config/slow.py,1,steps=14,stopped,1",
                    "st-s2,config/slow.py,2,steps=14,stopped,1",
                    "st-s3,config/slow.py,3,steps=14,never started before the stop,1")
    cid = seen["campaign_id"] = start(pod, csv)["campaign_id"]
    try:
        # a running sweep is never replaced, nor resumed
        seen["campaigns_before"] = campaign_ids(pod)
        latest = (pod.outputs / "_manifests" / "sweep-latest.csv").read_bytes()
        seen["refused"] = [pod.wf(*command) for command in (("sweep-start", "--csv", str(csv)), ("sweep-resume",))]
        seen["campaigns_after_refusal"] = campaign_ids(pod)
        seen["latest_csv_unchanged"] = (pod.outputs / "_manifests" / "sweep-latest.csv").read_bytes() == latest

        wait_until(lambda: (run_dir(pod, "st-quick") / "summary.json").exists(), 120, interval=0.2,
                   what="st-quick to finish")
        wait_until(lambda: run_state(pod, "st-s2") == "running", 120, interval=0.2, what="st-s2 running")
        seen["running_before_stop"] = {r: run_state(pod, r) for r in ("st-s1", "st-s2")}
        markers = seen["markers"] = [marker_of(pod, "st-s1"), marker_of(pod, "st-s2")]
        seen["marked_before_stop"] = [bool(pids_with_marker(m)) for m in markers]
        seen["executor_pid"] = executor_record(pod, cid)["pid"]
        seen["stop"] = pod.wf("sweep-stop", "--json", timeout=300)
        seen["executor_after_stop"] = executor_record(pod, cid)
        seen["executor_alive_after_stop"] = _alive(seen["executor_pid"])
        seen["marked_after_stop"] = {m: pids_with_marker(m) for m in markers}
        seen["status_after_stop"] = status_json(pod)
        seen["summaries_after_stop"] = {r: summary(pod, r) for r in ("st-quick", "st-s1", "st-s2")}
        seen["s3_dir_after_stop"] = run_dir(pod, "st-s3").exists()
        seen["fsm_after_stop"] = fsm_state(pod)

        quick_summary = (run_dir(pod, "st-quick") / "summary.json").read_bytes()
        seen["resume"] = pod.wf("sweep-resume", "--json")
        wait_until(lambda: marker_of(pod, "st-s1") != markers[0] and run_state(pod, "st-s1") == "running", 120,
                   interval=0.2, what="st-s1 running again")
        seen["status_during_resume"] = status_json(pod)
        seen["executor_end"] = wait_campaign(pod, cid)
        seen["quick_unchanged"] = (run_dir(pod, "st-quick") / "summary.json").read_bytes() == quick_summary
        seen["status_at_end"] = status_json(pod)
        seen["fsm_at_end"] = fsm_state(pod)
        seen["campaigns_at_end"] = campaign_ids(pod)
    finally:
        if executor_record(pod, cid).get("state") not in ENDED:
            pod.wf("sweep-stop", timeout=300)
    return seen


def test_stop_then_resume(stop_resume: dict[str, Any]):
    """sweep-start is refused while a sweep runs; sweep-stop stops the executor and every run (cancelled,
    no process left); sweep-resume reruns only the rows that are not ok, and the sweep completes."""
    seen = stop_resume
    cid = seen["campaign_id"]
    assert seen["running_before_stop"] == {"st-s1": "running", "st-s2": "running"}
    assert seen["marked_before_stop"] == [True, True], "a running run's processes carry its marker"

    for refused in seen["refused"]:
        assert refused.returncode == 7, refused.stderr
        assert f"sweep-stop --campaign {cid}" in one_line_error(refused)
    assert seen["campaigns_after_refusal"] == seen["campaigns_before"] and seen["latest_csv_unchanged"]

    stopped = seen["stop"]
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(stopped.stdout)["executor_was"] == "running"
    assert json.loads(stopped.stdout)["state"] == "SWEEP_STOPPED"
    assert seen["executor_after_stop"]["state"] == "stopped" and not seen["executor_alive_after_stop"]
    assert seen["marked_after_stop"] == {m: set() for m in seen["markers"]}, "processes survived sweep-stop"
    code, status = seen["status_after_stop"]
    states = {r: v["state"] for r, v in rows_by_id(status).items()}
    assert states == {"st-quick": "ok", "st-s1": "cancelled", "st-s2": "cancelled", "st-s3": "missing"}
    assert code == 1 and status["executor"]["state"] == "stopped"
    assert [seen["summaries_after_stop"][r]["state"] for r in ("st-quick", "st-s1", "st-s2")] == [
        "success", "cancelled", "cancelled"]
    assert seen["s3_dir_after_stop"] is False
    assert seen["fsm_after_stop"] == "SWEEP_STOPPED"

    resumed = seen["resume"]
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout)
    assert result["campaign_id"] == cid and result["rerun"] == ["st-s1", "st-s2", "st-s3"]
    assert seen["executor_end"]["state"] == "finished" and seen["executor_end"]["failed"] == 0
    assert seen["executor_end"]["generation"] == 2
    assert seen["quick_unchanged"]  # not rerun
    code, status = seen["status_at_end"]
    assert code == 0 and {r: v["state"] for r, v in rows_by_id(status).items()} == dict.fromkeys(states, "ok")
    assert seen["fsm_at_end"] == "SWEEP_COMPLETED"
    assert seen["campaigns_at_end"] == seen["campaigns_before"]  # resume never makes a new campaign
    pod = seen["pod"]
    for run_id in ("st-s1", "st-s2"):  # the cancelled attempt and the resumed one: both kept, both counted
        assert sorted(os.listdir(run_dir(pod, run_id) / "attempts")) == ["1", "2"]
        assert read_json(run_dir(pod, run_id) / "attempts" / "1" / "summary.json")["state"] == "cancelled"
        assert summary(pod, run_id)["attempts"] == 2 and rows_by_id(status)[run_id]["attempts"] == 2


def test_status_of_a_resumed_row_while_it_runs(stop_resume: dict[str, Any]):
    _, status = stop_resume["status_during_resume"]
    assert rows_by_id(status)["st-s1"]["state"] == "running"


def test_same_csv_again_isolation_and_reuse(shared: Pod, tmp_path: Path):
    """Campaigns stay apart (status and fetch-all per campaign); the same CSV again skips ok rows in a new
    campaign; a run_id of another campaign with another spec is refused unless --reuse-run-ids."""
    pod = shared
    csv_a = write_csv(tmp_path / "a.csv", "iso-a1,config/ok.py,1,,,1", "iso-a2,config/fail.py,2,,,1")
    csv_b = write_csv(tmp_path / "b.csv", "iso-b1,config/ok.py,3,,,1")
    a = start(pod, csv_a)["campaign_id"]
    wait_campaign(pod, a)
    b = start(pod, csv_b)["campaign_id"]
    wait_campaign(pod, b)
    assert a != b

    code, status = status_json(pod, "--campaign", a)
    assert (code, status["campaign_id"], [r["run_id"] for r in status["rows"]]) == (1, a, ["iso-a1", "iso-a2"])
    code, status = status_json(pod)  # the latest: B
    assert (code, status["campaign_id"], [r["run_id"] for r in status["rows"]]) == (0, b, ["iso-b1"])
    text = pod.wf("sweep-status", "--campaign", a).stdout
    assert "iso-a1" in text and "iso-b1" not in text

    artifacts = tmp_path / "artifacts-a"
    fetched = pod.wf("--set", f"LOCAL_ARTIFACTS_DIR={artifacts}", "fetch-all", "--campaign", a)
    assert fetched.returncode == 0, fetched.stderr
    assert sorted(p.name for p in artifacts.iterdir()) == ["iso-a1", "iso-a2"]

    # the same CSV again: a new campaign; the ok row is skipped, the failed one runs again
    again = start(pod, csv_a)
    a2 = again["campaign_id"]
    assert a2 not in (a, b) and again["already_ok"] == 1 and again["rows"] == 2
    wait_campaign(pod, a2)
    assert summary(pod, "iso-a1")["campaign_id"] == a
    assert summary(pod, "iso-a2")["campaign_id"] == a2
    _, status = status_json(pod)
    assert status["campaign_id"] == a2
    assert rows_by_id(status)["iso-a1"]["state"] == "ok"
    assert rows_by_id(status)["iso-a2"]["state"] == "failed"
    assert (pod.outputs / "_manifests" / f"sweep-{a}.csv").exists()
    assert (pod.outputs / "_manifests" / f"sweep-{a2}.csv").exists()

    # iso-b1 with another seed: refused (nothing changes) unless --reuse-run-ids
    csv_c = write_csv(tmp_path / "c.csv", "iso-b1,config/ok.py,9,,another seed,1")
    before, snapshot = campaign_ids(pod), pod.snapshot()
    refused = pod.wf("sweep-start", "--csv", str(csv_c))
    assert refused.returncode == 7, refused.stderr
    line = one_line_error(refused)
    assert "iso-b1" in line and b in line and "--reuse-run-ids" in line
    assert campaign_ids(pod) == before and pod.snapshot() == snapshot
    taken = start(pod, csv_c, options=("--reuse-run-ids",))
    assert taken["superseded"] == [["iso-b1", b]]
    old = pod.outputs / "_superseded" / f"iso-b1.{b}"
    assert read_json(old / "summary.json")["campaign_id"] == b
    assert read_json(old / "run_manifest.json")["csv_row"]["seed"] == 3
    wait_campaign(pod, taken["campaign_id"])
    assert summary(pod, "iso-b1")["campaign_id"] == taken["campaign_id"]
    assert read_json(run_dir(pod, "iso-b1") / "run_manifest.json")["csv_row"]["seed"] == 9


def _place(path: Path, content: bytes, mtime_ns: int) -> None:
    """Put ``content`` at ``path`` atomically with its mtime already set (a sync never sees it half done)."""
    staging = path.parent.parent / f".staging-{path.name}"
    staging.write_bytes(content)
    os.utime(staging, ns=(mtime_ns, mtime_ns))
    os.replace(staging, path)


@pytest.fixture(scope="module", params=["local", "ssh"])
def local_sync(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A slow run with RUN_OUT_MODE=local_sync, SYNC_INTERVAL_SECS=1, on the local pod and over SSH.
    While it runs, a probe file in its fast dir is synced, then replaced by content of the same size
    whose mtime falls in the same second (as when a trainer rewrites a checkpoint right after a sync)."""
    pod = shared_pod(request)
    fast = pod.root / "fast"
    settings = ["--set", "RUN_OUT_MODE=local_sync", "--set", f"RUN_OUT_LOCAL_ROOT={fast}",
                "--set", "SYNC_INTERVAL_SECS=1"]
    csv = write_csv(tmp_path_factory.mktemp("sync") / "sync.csv", "sy-slow,config/slow.py,1,steps=16,,1")
    seen: dict[str, Any] = {"fast": fast / "sy-slow", "durable": run_dir(pod, "sy-slow"), "pod": pod}
    cid = start(pod, csv, *settings)["campaign_id"]
    durable = seen["durable"] / "metrics.jsonl"

    def synced_while_running() -> bool:
        lines = durable.read_text().splitlines() if durable.exists() else []
        return bool(lines) and run_state(pod, "sy-slow") == "running"

    wait_until(synced_while_running, 120, interval=0.2, what="metrics.jsonl synced while the run runs")
    seen["lines_while_running"] = len(durable.read_text().splitlines())
    second = (time.time_ns() // 10**9 - 5) * 10**9
    _place(seen["fast"] / "probe.bin", b"A" * 64, second + 100_000_000)
    wait_until(lambda: (seen["durable"] / "probe.bin").exists()
               and (seen["durable"] / "probe.bin").read_bytes() == b"A" * 64, 60, interval=0.1,
               what="the probe synced")
    _place(seen["fast"] / "probe.bin", b"B" * 64, second + 600_000_000)
    seen["running_after_probe"] = run_state(pod, "sy-slow") == "running"
    seen["executor"] = wait_campaign(pod, cid)
    return seen


def test_local_sync(local_sync: dict[str, Any]):
    """RUN_OUT_MODE=local_sync: the trainer writes to RUN_OUT_LOCAL_ROOT/<run_id>/, the durable run dir
    gets its files while it runs (every SYNC_INTERVAL_SECS) and identical copies at the end."""
    seen = local_sync
    assert 1 <= seen["lines_while_running"] < 16
    assert seen["executor"]["state"] == "finished" and seen["running_after_probe"]
    done = summary(seen["pod"], "sy-slow")
    assert done["ok"] and done["out_dir"] == str(seen["fast"])
    for name in ("metrics.jsonl", "results.json", "config.json"):
        assert (seen["durable"] / name).read_bytes() == (seen["fast"] / name).read_bytes(), name
    assert len((seen["durable"] / "metrics.jsonl").read_text().splitlines()) == 16
    assert done["final_metrics"]["iter"] == 15 and done["trainer_results"]["iters"] == 16
    assert not (seen["fast"] / "summary.json").exists()  # the tool's own files stay in the durable dir


def test_local_sync_final_copy_is_exact(local_sync: dict[str, Any]):
    assert (local_sync["durable"] / "probe.bin").read_bytes() == b"B" * 64


def test_selection_rows_and_manifest(shared: Pod, finished: dict[str, Any], source_repo: Path):
    """SWEEP_MATCH chose the sweep's rows, SWEEP_LIMIT its first part; run_manifest.json records what ran."""
    pod = shared
    manifest = read_json(campaigns_dir(pod) / finished["campaign_id"] / "manifest.json")
    assert [row["run_id"] for row in manifest["rows"]] == ["fin-ok", "fin-fail", "fin-x"]
    parts = read_json(campaigns_dir(pod) / finished["campaign_id"] / "parts.json")
    assert [p["rows"] for p in parts["parts"]] == [[0, 1]]
    assert manifest["selection"] == {"match": "^fin-", "start_at": "", "limit": 2}
    assert not run_dir(pod, "other-1").exists() and not run_dir(pod, "fin-x").exists()
    assert summary(pod, "fin-ok")["ok"] and summary(pod, "fin-fail")["state"] == "failed"

    run_manifest = read_json(run_dir(pod, "fin-ok") / "run_manifest.json")
    assert run_manifest["csv_row"]["run_id"] == "fin-ok" and run_manifest["csv_row"]["seed"] == 11
    assert run_manifest["config"]["TRAIN_WORKDIR"] == "tests/sweep_fixture"
    assert run_manifest["git"]["git_sha"] == git(source_repo, "rev-parse", "HEAD")
    assert run_manifest["git"]["dirty"] is False
    assert run_manifest["slots"] == ["cpu0"] or run_manifest["slots"] == ["cpu1"]
    env = run_manifest["environment"]
    assert env["torch"] and env["host"] and any(line.startswith("torch") for line in env["pip_freeze"])
    project_env = pod.root / "project.env"
    assert SECRET in project_env.read_text() and stat.S_IMODE(project_env.stat().st_mode) == 0o600
    for name in ("summary.json", "command.sh", "run.log", "status.json", "spec.json"):
        assert SECRET not in (run_dir(pod, "fin-ok") / name).read_text(), name


def test_no_secret_outside_the_env_files(shared: Pod, finished: dict[str, Any], tmp_path: Path):
    """Only project.env (and the supervisor's per-run .env.json), both mode 0600, hold the key; nothing
    fetched does."""
    pod = shared
    artifacts = tmp_path / "artifacts"
    assert pod.wf("--set", f"LOCAL_ARTIFACTS_DIR={artifacts}", "fetch-all").returncode == 0
    leaks = []
    for root in (pod.root, artifacts):
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink() and SECRET.encode() in path.read_bytes():
                allowed = path == pod.root / "project.env" or (path.name == ".env.json" and pod.root in path.parents)
                if not (allowed and stat.S_IMODE(path.stat().st_mode) == 0o600):
                    leaks.append(str(path))
    assert leaks == []


def test_command_sh_replays_the_run(shared: Pod, finished: dict[str, Any], tmp_path: Path):
    pod = shared
    rdir = run_dir(pod, "fin-ok")
    script = rdir / "command.sh"
    assert stat.S_IMODE(script.stat().st_mode) & 0o111
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    argv = read_json(rdir / "run_manifest.json")["argv"]
    exec_line = next(line for line in text.splitlines() if line.startswith("exec "))
    words = shlex.split(exec_line)
    assert words[-len(argv):] == argv
    assert argv[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "train.py"]
    assert argv[6:] == ["config/ok.py", "seed=11", f"out_dir={rdir}"]
    assert summary(pod, "fin-ok")["command"] == text

    replay_out = tmp_path / "replay"
    replay = tmp_path / "replay.sh"
    replay.write_text(text.replace(shlex.quote(f"out_dir={rdir}"), shlex.quote(f"out_dir={replay_out}")))
    assert f"out_dir={replay_out}" in replay.read_text()
    result = subprocess.run(["bash", str(replay)], text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            timeout=180)
    assert result.returncode == 0, result.stdout
    assert read_json(replay_out / "results.json") == {"status": "completed", "iters": 3}
    assert (replay_out / "metrics.jsonl").read_bytes() == (rdir / "metrics.jsonl").read_bytes()


def test_fetch_checkpoints_incremental_and_repair(shared: Pod, finished: dict[str, Any], tmp_path: Path):
    pod = shared
    artifacts = tmp_path / "artifacts"
    fetch = ("--set", f"LOCAL_ARTIFACTS_DIR={artifacts}")
    ckpt = run_dir(pod, "fin-ok") / "ckpt.pt"
    if not ckpt.exists():
        ckpt.write_bytes(os.urandom(200_000))

    result = pod.wf(*fetch, "fetch-all", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["campaign_id"] == finished["campaign_id"] and report["mismatched"] == []
    assert sorted(p.name for p in artifacts.iterdir()) == ["fin-fail", "fin-ok"]
    for run_id in ("fin-ok", "fin-fail"):
        assert local_files(artifacts / run_id) == pod_files(run_dir(pod, run_id)), run_id
    assert not (artifacts / "fin-ok" / "ckpt.pt").exists()  # checkpoints only when asked for
    assert not (artifacts / "fin-ok" / ".env.json").exists()

    # a second fetch copies nothing: every file keeps its inode and ctime
    def identity() -> dict[str, tuple[int, int]]:
        return {str(p.relative_to(artifacts)): (p.stat().st_ino, p.stat().st_ctime_ns)
                for p in artifacts.rglob("*") if p.is_file() and p.name != ".wf-fetch-checksums.json"}

    before = identity()
    assert pod.wf(*fetch, "fetch-all").returncode == 0
    assert identity() == before

    # a corrupted local copy (same size, new content) and a truncated one are fetched again
    metrics = artifacts / "fin-ok" / "metrics.jsonl"
    metrics.write_bytes(b"x" * metrics.stat().st_size)
    (artifacts / "fin-ok" / "summary.json").write_text("{}")
    repaired = pod.wf(*fetch, "fetch-run", "fin-ok")
    assert repaired.returncode == 0, repaired.stderr
    assert local_files(artifacts / "fin-ok") == pod_files(run_dir(pod, "fin-ok"))

    # FETCH_INCLUDE_CHECKPOINTS=1 brings the checkpoint, verified
    with_ckpt = pod.wf(*fetch, "--set", "FETCH_INCLUDE_CHECKPOINTS=1", "fetch-run", "fin-ok")
    assert with_ckpt.returncode == 0, with_ckpt.stderr
    assert sha256(artifacts / "fin-ok" / "ckpt.pt") == sha256(ckpt)
    assert local_files(artifacts / "fin-ok") == pod_files(run_dir(pod, "fin-ok"), checkpoints=True)


@pytest.mark.parametrize("bad", ["../escape", "a/b", "a b", "..", "/etc/passwd", "fin-ok/../../x"])
def test_fetch_run_refuses_bad_ids(shared: Pod, tmp_path: Path, bad: str):
    pod = shared
    parent = tmp_path / "place"
    parent.mkdir()
    artifacts = parent / "artifacts"
    snapshot = pod.snapshot()
    result = pod.wf("--set", f"LOCAL_ARTIFACTS_DIR={artifacts}", "fetch-run", bad)
    assert result.returncode == 2, result.stderr
    assert "invalid run id" in one_line_error(result)
    assert result.stdout == ""
    assert pod.snapshot() == snapshot
    assert list(parent.iterdir()) == [] and list(tmp_path.iterdir()) == [parent]


def test_fetch_run_unknown_run(shared: Pod, tmp_path: Path):
    artifacts = tmp_path / "artifacts"
    result = shared.wf("--set", f"LOCAL_ARTIFACTS_DIR={artifacts}", "fetch-run", "no-such-run")
    assert result.returncode == 5, result.stderr
    assert "no run 'no-such-run'" in one_line_error(result)
    assert not artifacts.exists() or list(artifacts.iterdir()) == []


def test_dry_run_prints_the_plan_and_changes_nothing(shared: Pod, tmp_path: Path):
    pod = shared
    csv = write_csv(tmp_path / "dry.csv",
                    "dr-1,config/ok.py,1,lr=0.1,,1",
                    "dr-2,config/ok.py,2,,,1",
                    "dr-3,config/ok.py,3,,every slot,",
                    "dr-4,config/fail.py,4,steps=2,,1")
    snapshot = pod.snapshot()

    def plan(*extra: str) -> dict[str, tuple[str, list[str]]]:
        result = pod.wf(*extra, "sweep-start", "--dry-run", "--csv", str(csv))
        assert result.returncode == 0, result.stderr
        lines = [line for line in result.stdout.splitlines() if not line.startswith(("price: ", "cost estimate"))]
        if lines[0].startswith("part 1 would submit rows "):  # SWEEP_START_AT / SWEEP_LIMIT: a part of the sweep
            lines = lines[1:]
        assert lines[0].startswith("would start a campaign of ")
        found: dict[str, tuple[str, list[str]]] = {}
        for head, command in zip(lines[1::2], lines[2::2], strict=True):
            match = re.fullmatch(r"row (\d+) (\S+): (.*)", head)
            assert match, head
            assert command.startswith(f"  cd {pod.root / 'repo' / 'tests' / 'sweep_fixture'} && "), command
            found[match.group(2)] = (match.group(3), shlex.split(command.split(" && ", 1)[1]))
        return found

    full = plan()
    assert list(full) == ["dr-1", "dr-2", "dr-3", "dr-4"]
    assert [where for where, _ in full.values()] == [
        "CPU slot(s) cpu0 (wave 1)", "CPU slot(s) cpu1 (wave 1)", "CPU slot(s) cpu0,cpu1 (wave 2)",
        "CPU slot(s) cpu0 (wave 3)"]
    outputs = pod.outputs
    assert full["dr-1"][1][-5:] == ["train.py", "config/ok.py", "seed=1", f"out_dir={outputs}/dr-1", "lr=0.1"]
    assert full["dr-4"][1][-5:] == ["train.py", "config/fail.py", "seed=4", f"out_dir={outputs}/dr-4", "steps=2"]
    assert full["dr-1"][1][0] == "CUDA_VISIBLE_DEVICES="
    assert "--nproc_per_node=1" in full["dr-1"][1] and "--nproc_per_node=2" in full["dr-3"][1]
    assert list(plan("--set", "SWEEP_MATCH=dr-[24]")) == ["dr-2", "dr-4"]
    assert list(plan("--set", "SWEEP_LIMIT=1")) == ["dr-1"]
    assert list(plan("--set", "SWEEP_START_AT=dr-3")) == ["dr-3", "dr-4"]
    assert list(plan("--set", "SWEEP_START_AT=dr-2", "--set", "SWEEP_LIMIT=2")) == ["dr-2", "dr-3"]
    assert pod.snapshot() == snapshot
    assert not any((outputs / run_id).exists() for run_id in full)


def test_sweep_fixture_is_what_the_pods_clone(source_repo: Path):
    """The pods run the committed copy of tests/sweep_fixture: the CSVs above are validated against
    this checkout's copy, so the two must agree."""
    for path in (REPO_ROOT / "tests" / "sweep_fixture").rglob("*.py"):
        rel = path.relative_to(REPO_ROOT)
        assert (source_repo / rel).read_bytes() == path.read_bytes(), rel

"""Helpers for the chaos suite (tests/test_chaos.py): an independent ledger of every trainer start and
end, fault injection by pid, recovery by sweep-resume, and the final invariants.

The ledger: a ``sitecustomize.py`` on the runs' PYTHONPATH (RUNENV_PYTHONPATH, the tool passes RUNENV_X to
runs as X) appends one JSON line per start of the stand-in trainer (train.py, rank 0) and one per exit
(``sys.exit`` patched) to CHAOS_LEDGER. It is written by the trainer's own process, so it counts what
really ran, whatever the tool's own bookkeeping says.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from conftest import Pod, wait_until

SITECUSTOMIZE = r'''
import json as _json
import os as _os
import sys as _sys


def _chaos_note(event, **fields):
    path = _os.environ.get("CHAOS_LEDGER")
    if not path:
        return
    record = {"event": event, "run": _os.environ.get("WF_RUN_ID"), "attempt": _os.environ.get("WF_ATTEMPT"),
              "campaign": _os.environ.get("WF_CAMPAIGN_ID"), "marker": _os.environ.get("WF_TASK_MARKER"),
              "pid": _os.getpid(), "resume": any(a in ("resume=1", "--resume=1") for a in _sys.argv), **fields}
    fd = _os.open(path, _os.O_WRONLY | _os.O_APPEND | _os.O_CREAT, 0o644)
    try:
        _os.write(fd, (_json.dumps(record) + "\n").encode())
    finally:
        _os.close(fd)


if _sys.argv and _os.path.basename(_sys.argv[0]) == "train.py" and _os.environ.get("RANK", "0") == "0":
    _chaos_note("start")
    _chaos_exit = _sys.exit

    def _chaos_sys_exit(code=0):
        _chaos_note("end", code=code)
        _chaos_exit(code)

    _sys.exit = _chaos_sys_exit
'''

FIXTURE = {"TRAIN_WORKDIR": "tests/sweep_fixture", "SWEEP_CPU_SLOTS": "2", "RUN_STALL_SECS": "60",
           "RUN_RETRY_BACKOFF_SECS": "1", "TASK_KILL_GRACE_SECS": "2", "RUN_RETRIES": "2"}
HEADER = "run_id,config,seed,overrides,notes,gpus"
ENDED = ("finished", "stopped", "lost")
TRACEBACK = "Traceback (most recent call last)"


def setup_chaos_pod(pod: Pod, base: Path) -> Path:
    """Fixture settings + the ledger hook, then bootstrap + checkout; the ledger file's path."""
    hook = base / "chaos_hook"
    hook.mkdir(parents=True, exist_ok=True)
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    ledger = base / "ledger.jsonl"
    pod.set(**FIXTURE, RUNENV_PYTHONPATH=str(hook), RUNENV_CHAOS_LEDGER=str(ledger))
    for command in ("bootstrap", "checkout"):
        result = wf(pod, command, timeout=600)
        assert result.returncode == 0, f"{command}: {result.stderr}"
    return ledger


def wf(pod: Pod, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """pod.wf, asserting that no Python traceback reaches the user."""
    result = pod.wf(*args, timeout=timeout)
    for stream in (result.stdout, result.stderr):
        assert TRACEBACK not in stream, f"traceback from {args}: {stream[-2000:]}"
    return result


def write_csv(path: Path, rows: Iterable[str]) -> Path:
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    return path


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def start_sweep(pod: Pod, csv: Path, *settings: str) -> str:
    result = wf(pod, *settings, "sweep-start", "--csv", str(csv), "--json")
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["campaign_id"])


def executor_record(pod: Pod, cid: str) -> dict[str, Any]:
    record = read_json(pod.outputs / "_campaigns" / cid / "executor.json")
    return record if isinstance(record, dict) else {}


def run_status(pod: Pod, run_id: str) -> dict[str, Any]:
    record = read_json(pod.outputs / run_id / "status.json")
    return record if isinstance(record, dict) else {}


def status_json(pod: Pod, cid: str) -> tuple[int, dict[str, Any]]:
    result = wf(pod, "sweep-status", "--campaign", cid, "--json")
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def row_states(status: dict[str, Any]) -> dict[str, str]:
    return {row["run_id"]: row["state"] for row in status["rows"]}


def executor_ended(pod: Pod, cid: str) -> bool:
    """The executor ended, as sweep-status tells it (a dead executor is 'lost')."""
    return status_json(pod, cid)[1]["executor"]["state"] in ENDED


def wait_executor_end(pod: Pod, cid: str, timeout: float = 240) -> None:
    wait_until(lambda: executor_ended(pod, cid), timeout, interval=1.0, what=f"campaign {cid} to end")


def wait_running(pod: Pod, run_id: str, timeout: float = 120) -> dict[str, Any]:
    """Until the row's current attempt runs with a live trainer (its pid known); its status.json."""
    def ready() -> dict[str, Any]:
        record = run_status(pod, run_id)
        return record if record.get("state") == "running" and record.get("pid") and record.get(
            "supervisor_pid") else {}
    return dict(wait_until(ready, timeout, interval=0.1, what=f"{run_id} running"))


def kill(pid: int | None, sig: int = signal.SIGKILL) -> None:
    assert pid, "no pid to signal"
    with contextlib.suppress(ProcessLookupError):
        os.kill(int(pid), sig)


def _proc(pid: int, name: str) -> bytes:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def alive(pid: int) -> bool:
    text = _proc(pid, "stat").decode(errors="replace")
    return bool(text) and text[text.rfind(")") + 2:][:1] not in ("Z", "X", "")


def pids_with_marker(markers: Iterable[str]) -> set[int]:
    """Live processes whose environment holds WF_TASK_MARKER=<one of markers>."""
    needles = [b"\0WF_TASK_MARKER=" + m.encode() + b"\0" for m in markers if m]
    found = set()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        environ = b"\0" + _proc(int(name), "environ") + b"\0"
        if any(n in environ for n in needles) and alive(int(name)):
            found.add(int(name))
    return found


def trainer_pid(ledger: Path, run_id: str, timeout: float = 120) -> int:
    """The pid of the row's latest trainer start that is still alive."""
    def find() -> int:
        for record in reversed(ledger_records(ledger)):
            if record["run"] == run_id and record["event"] == "start" and alive(record["pid"]):
                return int(record["pid"])
        return 0
    return int(wait_until(find, timeout, interval=0.1, what=f"{run_id}'s trainer"))


def ledger_records(ledger: Path) -> list[dict[str, Any]]:
    if not ledger.exists():
        return []
    return [json.loads(line) for line in ledger.read_text().splitlines() if line.strip()]


def ok_ends(ledger: Path, run_ids: Iterable[str]) -> dict[str, int]:
    """How many times each row's trainer exited 0."""
    counts = dict.fromkeys(run_ids, 0)
    for record in ledger_records(ledger):
        if record["event"] == "end" and record["code"] in (0, None) and record["run"] in counts:
            counts[record["run"]] += 1
    return counts


def recover(pod: Pod, cid: str, run_ids: list[str], max_resumes: int = 6, timeout: float = 240) -> int:
    """sweep-resume (waiting out supervisors still running: exit 7) until every row is ok; the number of
    resumes it took. sweep-status must tell the truth on the way: exit 1 while a row is not ok."""
    resumes = 0
    while True:
        wait_executor_end(pod, cid, timeout)
        code, status = status_json(pod, cid)
        states = row_states(status)
        if all(states.get(r) == "ok" for r in run_ids):
            assert code == 0, status
            return resumes
        assert code == 1, status
        assert resumes < max_resumes, f"campaign {cid} not done after {resumes} resumes: {states}"
        deadline = time.monotonic() + timeout
        while True:
            result = wf(pod, "sweep-resume", "--campaign", cid, "--json")
            if result.returncode == 0:
                break
            assert result.returncode == 7 and "still running" in result.stderr, result.stderr
            assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1, result.stderr
            assert time.monotonic() < deadline, result.stderr
            time.sleep(1.0)
        resumes += 1


def assert_campaign_done(pod: Pod, cid: str, ledger: Path, run_ids: list[str], markers: set[str]) -> None:
    """Every row ok in sweep-status and in its summary, each trained to the end exactly once (the
    ledger), and no process of any of its runs left."""
    code, status = status_json(pod, cid)
    assert code == 0 and set(row_states(status).values()) == {"ok"}, status
    for run_id in run_ids:
        done = read_json(pod.outputs / run_id / "summary.json")
        assert done.get("ok") is True, (run_id, done)
    markers = markers | {r["marker"] for r in ledger_records(ledger) if r.get("marker") and r["run"] in run_ids}
    for run_id in run_ids:
        spec = read_json(pod.outputs / run_id / "spec.json")
        if spec.get("marker"):
            markers.add(spec["marker"])
    wait_until(lambda: not pids_with_marker(markers), 30, interval=0.5, what="no process of the runs left")
    assert ok_ends(ledger, run_ids) == dict.fromkeys(run_ids, 1), "a row ran to success twice (or never)"


def reap(pod: Pod, markers: Iterable[str] = ()) -> None:
    """Kill the pod's tmux server, then SIGKILL anything still carrying one of its runs' markers."""
    pod.tmux("kill-server")
    found = set(markers)
    for spec in pod.outputs.glob("*/spec.json") if pod.outputs.is_dir() else []:
        marker = read_json(spec).get("marker")
        if marker:
            found.add(marker)
    for pid in pids_with_marker(found):
        kill(pid)


def fail(message: str) -> None:
    pytest.fail(message)


def _children(pid: int) -> list[int]:
    text = _proc(pid, f"task/{pid}/children").decode()
    return [int(child) for child in text.split()]


def kill_pod_connections(listener: int, pod_marker: str) -> int:
    """SIGKILL sshd's per-connection processes (children of the ``listener``) that carry a call of this
    pod right now (a process below them whose command line names ``pod_marker``); how many."""
    killed = 0
    for connection in _children(listener):
        stack, ours = [connection], False
        while stack and not ours:
            pid = stack.pop()
            ours = pod_marker.encode() in _proc(pid, "cmdline")
            stack.extend(_children(pid))
        if ours:
            kill(connection)
            killed += 1
    return killed

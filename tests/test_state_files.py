"""State files on the pod: checked against their schema when read, kept aside (never overwritten)
when replaced, creation of a task atomic under concurrency, and a full filesystem survived.

The corrupt-state corpus damages one state file of each kind in one of many ways and runs a
read-only command: exit 6, one line naming the file, no traceback, and nothing on the pod changed
(the pod tree hashed before and after).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Pod, SSHServer, cleanup_pod, fill, make_pod, one_line_error, wait_until

STATE = "_control/workflow_state.json"
TASK_STATUS = "_tasks/t1/status.json"
MANIFEST = "_campaigns/c1/manifest.json"
INDEX = "_campaigns/c1/index.json"
EXECUTOR = "_campaigns/c1/executor.json"
SUMMARY = "r2/summary.json"
RUN_STATUS = "r2/status.json"


def pod_hash(pod: Pod) -> dict[str, str]:
    """Every file under the pod root with the sha256 of its content (the agent upload excluded)."""
    found = {}
    for path in sorted(pod.root.rglob("*")):
        if path.is_file() and "/_control/agent-" not in str(path):
            found[str(path.relative_to(pod.root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def _write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def fake_campaign(outputs: Path) -> None:
    """A finished campaign c1 as the executor leaves it: r1 concluded in the index, r2 by its summary."""
    rows = [{"run_id": "r1", "row_number": 1, "spec_hash": "h1"}, {"run_id": "r2", "row_number": 2, "spec_hash": "h2"}]
    _write(outputs / MANIFEST, {"schema_version": 1, "campaign_id": "c1", "created_utc": "2026-01-01T00:00:00.000Z",
                                "rows": rows, "config": {}})
    _write(outputs / EXECUTOR, {"state": "finished", "generation": 1, "heartbeat_utc": "2026-01-01T00:10:00.000Z"})
    _write(outputs / INDEX, {"r1": {"ok": True, "state": "success", "attempts": 1}})
    _write(outputs / "r2/campaign.json", {"schema_version": 1, "campaign_id": "c1", "spec_hash": "h2", "history": []})
    _write(outputs / SUMMARY, {"schema_version": 1, "run_id": "r2", "campaign_id": "c1", "ok": True,
                               "state": "success", "failure_class": None, "attempts": 1, "spec_hash": "h2",
                               "attempt_history": [],
                               "ended_utc": "2026-01-01T00:09:00.000Z"})
    _write(outputs / RUN_STATUS, {"schema_version": 1, "id": "r2", "state": "success", "exit_code": 0,
                                  "created_utc": "2026-01-01T00:01:00.000Z", "cleanup": "done"})
    (outputs / "_campaigns" / "latest").write_text("c1\n")


def setup_pod(kind: str, base: Path, server: SSHServer | None) -> Pod:
    pod = make_pod(kind, base, None, server)
    assert pod.wf("fsm-reset", "BOOTSTRAPPED", "--reason", "test").returncode == 0
    assert pod.wf("task-run", "--id", "t1", "--cmd", "echo hello").returncode == 0
    assert pod.wf("task-wait", "--id", "t1").returncode == 0
    fake_campaign(pod.outputs)
    assert pod.wf("sweep-status", "--campaign", "c1").returncode == 0
    return pod


@pytest.fixture(scope="module")
def corpus_pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pod]:
    pod = setup_pod("local", tmp_path_factory.mktemp("corpus"), None)
    yield pod
    cleanup_pod(pod)


@pytest.fixture(scope="module")
def corpus_ssh_pod(tmp_path_factory: pytest.TempPathFactory, sshd: SSHServer) -> Iterator[Pod]:
    pod = setup_pod("ssh", tmp_path_factory.mktemp("corpus-ssh"), sshd)
    yield pod
    cleanup_pod(pod)


@dataclass(frozen=True)
class Bad:
    name: str
    file: str
    content: bytes
    command: tuple[str, ...]
    says: str = ""  # part of the message that tells what is wrong


def j(data: Any) -> bytes:
    return json.dumps(data).encode()


FSM = ("fsm-status",)
TASK = ("task-status", "t1")
SWEEP = ("sweep-status", "--campaign", "c1")
OK_STATE = {"state": "BOOTSTRAPPED", "history": []}
OK_TASK = {"schema_version": 1, "id": "t1", "state": "success", "exit_code": 0, "cleanup": "done"}
OK_MANIFEST = {"campaign_id": "c1", "rows": [], "config": {}}
CORPUS = [
    # the workflow state file
    Bad("state-null", STATE, b"null", FSM, "null, not a JSON object"),
    Bad("state-list", STATE, b"[]", FSM, "a list, not a JSON object"),
    Bad("state-string", STATE, b'"INIT"', FSM, "a string, not a JSON object"),
    Bad("state-number", STATE, b"42", FSM, "a number, not a JSON object"),
    Bad("state-empty", STATE, b"", FSM, "it is empty"),
    Bad("state-truncated", STATE, b'{"state": "BOOTST', FSM, "not JSON"),
    Bad("state-binary", STATE, b"\xff\xfe\x00garbage", FSM, "not JSON"),
    Bad("state-missing-state", STATE, j({"history": []}), FSM, "'state' is missing"),
    Bad("state-state-number", STATE, j({"state": 3}), FSM, "'state' is a number"),
    Bad("state-unknown-state", STATE, j({"state": "DANCING"}), FSM, "state 'DANCING' is not one of"),
    Bad("state-state-null", STATE, j({"state": None}), FSM, "'state' is null"),
    Bad("state-history-numbers", STATE, j({**OK_STATE, "history": [1, 2]}), FSM, "history entry 1 is a number"),
    Bad("state-history-not-list", STATE, j({**OK_STATE, "history": "abc"}), FSM, "'history' is a string"),
    Bad("state-history-missing-fields", STATE, j({**OK_STATE, "history": [{"utc": "x"}]}), FSM,
        "history entry 1: 'command' is missing"),
    Bad("state-history-entry-null", STATE, j({**OK_STATE, "history": [None]}), FSM, "history entry 1 is null"),
    Bad("state-previous-unknown", STATE, j({**OK_STATE, "previous_state": "NOPE"}), FSM, "previous_state 'NOPE'"),
    Bad("state-reason-number", STATE, j({**OK_STATE, "reason": 5}), FSM, "'reason' is a number"),
    Bad("state-schema-version-string", STATE, j({**OK_STATE, "schema_version": "1"}), FSM, "'schema_version'"),
    Bad("state-newer-schema", STATE, j({**OK_STATE, "schema_version": 99}), FSM, "newer than this tool's 1"),
    Bad("state-null-bootstrap", STATE, b"null", ("bootstrap",), "null, not a JSON object"),  # no silent overwrite
    Bad("state-history-numbers-checkout", STATE, j({**OK_STATE, "history": [7]}), ("checkout",), "history entry 1"),
    # a task's status.json
    Bad("task-null", TASK_STATUS, b"null", TASK, "null, not a JSON object"),
    Bad("task-list", TASK_STATUS, b"[]", TASK, "a list"),
    Bad("task-truncated", TASK_STATUS, b'{"state": "succ', TASK, "not JSON"),
    Bad("task-empty", TASK_STATUS, b"", TASK, "it is empty"),
    Bad("task-missing-state", TASK_STATUS, j({"id": "t1"}), TASK, "'state' is missing"),
    Bad("task-unknown-state", TASK_STATUS, j({**OK_TASK, "state": "weird"}), TASK, "state 'weird' is not one of"),
    Bad("task-state-null", TASK_STATUS, j({**OK_TASK, "state": None}), TASK, "'state' is null"),
    Bad("task-exit-code-string", TASK_STATUS, j({**OK_TASK, "exit_code": "0"}), TASK, "'exit_code' is a string"),
    Bad("task-timeouts-list", TASK_STATUS, j({**OK_TASK, "timeouts": [1]}), TASK, "'timeouts' is a list"),
    Bad("task-timeout-string", TASK_STATUS, j({**OK_TASK, "timeouts": {"timeout_secs": "x"}}), TASK,
        "timeouts.timeout_secs is a string"),
    Bad("task-cleanup-unknown", TASK_STATUS, j({**OK_TASK, "cleanup": "maybe"}), TASK, "cleanup 'maybe'"),
    Bad("task-pid-string", TASK_STATUS, j({**OK_TASK, "supervisor_pid": "12"}), TASK, "'supervisor_pid'"),
    Bad("task-wait-unknown-state", TASK_STATUS, j({**OK_TASK, "state": "weird"}), ("task-wait", "--id", "t1"),
        "state 'weird'"),
    Bad("task-wait-null", TASK_STATUS, b"null", ("task-wait", "--id", "t1"), "null"),
    Bad("task-logs-follow-null", TASK_STATUS, b"null", ("task-logs", "--id", "t1", "--follow"), "null"),
    # a campaign's manifest, index and executor status; a run's summary and status
    Bad("manifest-null", MANIFEST, b"null", SWEEP, "null, not a JSON object"),
    Bad("manifest-truncated", MANIFEST, b'{"campaign_id": "c', SWEEP, "not JSON"),
    Bad("manifest-rows-string", MANIFEST, j({**OK_MANIFEST, "rows": "x"}), SWEEP, "'rows' is a string"),
    Bad("manifest-row-number", MANIFEST, j({**OK_MANIFEST, "rows": [1]}), SWEEP, "rows entry 1 is a number"),
    Bad("manifest-row-no-run-id", MANIFEST, j({**OK_MANIFEST, "rows": [{}]}), SWEEP, "'run_id' is missing"),
    Bad("manifest-no-config", MANIFEST, j({"campaign_id": "c1", "rows": []}), SWEEP, "'config' is missing"),
    Bad("index-null", INDEX, b"null", SWEEP, "null, not a JSON object"),
    Bad("index-list", INDEX, b"[1]", SWEEP, "a list"),
    Bad("index-entry-number", INDEX, j({"r1": 5}), SWEEP, "entry 'r1' is a number"),
    Bad("index-ok-string", INDEX, j({"r1": {"ok": "yes"}}), SWEEP, "'ok' is a string"),
    Bad("executor-null", EXECUTOR, b"null", SWEEP, "null"),
    Bad("executor-state-number", EXECUTOR, j({"state": 5}), SWEEP, "'state' is a number"),
    Bad("executor-missing-state", EXECUTOR, j({"generation": 1}), SWEEP, "'state' is missing"),
    # a summary.json without the runner's marks (spec_hash, attempt_history) is a trainer's own, not a verdict
    Bad("summary-ok-string", SUMMARY, j({"run_id": "r2", "ok": "no", "spec_hash": "h2", "attempt_history": []}),
        SWEEP, "'ok' is a string"),
    Bad("summary-attempts-string", SUMMARY, j({"run_id": "r2", "ok": False, "attempts": "1", "spec_hash": "h2",
                                                "attempt_history": []}), SWEEP,
        "'attempts' is a string"),
    Bad("run-status-unknown-state", RUN_STATUS, j({"state": "bogus", "created_utc": "2027-01-01T00:00:00.000Z"}),
        SWEEP, "state 'bogus'"),
]
SSH_CASES = {"state-null", "state-history-numbers", "task-unknown-state", "task-wait-null", "task-logs-follow-null",
             "manifest-row-number", "index-null", "summary-ok-string"}


def check_refused(pod: Pod, case: Bad) -> None:
    target = pod.outputs / case.file
    original = target.read_bytes()
    target.write_bytes(case.content)
    try:
        before = pod_hash(pod)
        result = pod.wf(*case.command, timeout=60)
        after = pod_hash(pod)
    finally:
        target.write_bytes(original)
    assert result.returncode == 6, (case.name, result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    line = one_line_error(result)
    assert str(target) in line and case.says in line, line
    assert after == before, f"{case.name}: a read-only command changed the pod"


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_corrupt_state_file_is_exit_6_naming_it(corpus_pod: Pod, case: Bad):
    check_refused(corpus_pod, case)


@pytest.mark.parametrize("case", [c for c in CORPUS if c.name in SSH_CASES], ids=sorted(SSH_CASES))
def test_corrupt_state_file_over_ssh(corpus_ssh_pod: Pod, case: Bad):
    check_refused(corpus_ssh_pod, case)


def test_corpus_is_at_least_30_cases():
    assert len(CORPUS) >= 30 and len({c.name for c in CORPUS}) == len(CORPUS)


def test_the_intact_files_read_fine(corpus_pod: Pod):
    for command in (FSM, TASK, SWEEP, ("task-wait", "--id", "t1")):
        result = corpus_pod.wf(*command)
        assert result.returncode == 0, (command, result.stderr)


# ----------------------------------------------------------------------------- a later write keeps the bad file


def test_fsm_reset_keeps_a_null_state_file(corpus_pod: Pod):
    state = corpus_pod.outputs / STATE
    original = state.read_bytes()
    state.write_bytes(b"null")
    try:
        result = corpus_pod.wf("fsm-reset", "BOOTSTRAPPED", "--reason", "recovered")
        assert result.returncode == 0, result.stderr
        kept = list(state.parent.glob("workflow_state.json.corrupt-*"))
        assert [p.read_bytes() for p in kept] == [b"null"]
        assert json.loads(state.read_text())["state"] == "BOOTSTRAPPED"
    finally:
        for path in state.parent.glob("workflow_state.json.corrupt-*"):
            path.unlink()
        state.write_bytes(original)


def test_task_run_force_keeps_a_corrupt_status(corpus_pod: Pod):
    assert corpus_pod.wf("task-run", "--id", "t2", "--cmd", "echo one").returncode == 0
    assert corpus_pod.wf("task-wait", "--id", "t2").returncode == 0
    (corpus_pod.outputs / "_tasks/t2/status.json").write_bytes(b'{"state": "weird"}')
    refused = corpus_pod.wf("task-run", "--id", "t2", "--cmd", "echo two")
    assert refused.returncode == 6 and "status.json is corrupt" in one_line_error(refused)
    result = corpus_pod.wf("task-run", "--id", "t2", "--force", "--cmd", "echo two")
    assert result.returncode == 0, result.stderr
    kept = list((corpus_pod.outputs / "_tasks/_replaced").glob("t2.*/status.json.corrupt-*"))
    assert [p.read_bytes() for p in kept] == [b'{"state": "weird"}']
    assert corpus_pod.wf("task-wait", "--id", "t2").returncode == 0


# ----------------------------------------------------------------------------- concurrent task-run of one id


def race_task_runs(pod: Pod, task_id: str, count: int) -> list[subprocess.CompletedProcess[str]]:
    results: list[subprocess.CompletedProcess[str]] = []
    lock = threading.Lock()

    def one(n: int) -> None:
        result = pod.wf("task-run", "--id", task_id, "--cmd", f"echo run{n}", timeout=120)
        with lock:
            results.append(result)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@pytest.mark.parametrize("where", ["local", "ssh"])
def test_concurrent_task_runs_of_one_id_one_wins(where: str, request: pytest.FixtureRequest):
    pod: Pod = request.getfixturevalue("corpus_pod" if where == "local" else "corpus_ssh_pod")
    task_id = f"race-{uuid.uuid4().hex[:6]}"
    results = race_task_runs(pod, task_id, 5)
    codes = sorted(r.returncode for r in results)
    assert codes == [0, 7, 7, 7, 7], [(r.returncode, r.stderr) for r in results]
    for result in results:
        assert "Traceback" not in result.stderr and "FileNotFoundError" not in result.stderr, result.stderr
        if result.returncode == 7:
            assert f"task {task_id!r}" in one_line_error(result)
    assert not list((pod.outputs / "_tasks" / "_replaced").glob(f"{task_id}.*"))
    assert pod.wf("task-wait", "--id", task_id).returncode == 0
    winner = next(r for r in results if r.returncode == 0)
    log = (pod.outputs / "_tasks" / task_id / "stdout.log").read_text()
    assert log.strip().startswith("run") and log.strip() in winner.stdout + winner.stderr + log


# ----------------------------------------------------------------------------- a full filesystem


@pytest.fixture
def tmpfs_pod(tmp_path: Path) -> Iterator[Pod]:
    """A local pod whose outputs are on a 3 MiB tmpfs (needs root), unmounted after."""
    pod = make_pod("local", tmp_path, None, None)
    pod.outputs.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(pod.outputs)],
                             stderr=subprocess.PIPE, text=True)
    if mounted.returncode != 0:
        pytest.fail(f"this test mounts a tmpfs (run as root): {mounted.stderr.strip()}")
    try:
        yield pod
    finally:
        cleanup_pod(pod)
        subprocess.run(["umount", "-l", str(pod.outputs)], check=False)


def test_a_heartbeat_never_spends_the_reserve_a_verdict_needs(tmpfs_pod: Pod):
    """On a full filesystem a heartbeat write fails and keeps the reserve; the verdict gives it up and lands
    (found by the chaos suite: heartbeats had spent the reserve, and the verdict waited for space)."""
    from helpers.pod.jsonio import write_json
    from helpers.pod.statuswriter import RESERVE_FILE, StatusWriter
    from helpers.pod.taskstate import new_record

    task = tmpfs_pod.outputs / "_tasks" / "t"
    task.mkdir(parents=True)
    write_json(str(task / "status.json"), new_record("t", "true", {"marker": "m"}))
    writer = StatusWriter(str(task))
    writer.make_reserve()
    fill(tmpfs_pod.outputs / "fill")
    assert writer.update(durable=False, heartbeat_utc="2026-01-01T00:00:00Z") == {}
    assert (task / RESERVE_FILE).exists()
    record = writer.update(state="failed", failure_class="disk_full")
    assert record["state"] == "failed" and record["heartbeat_utc"] == "2026-01-01T00:00:00Z", record
    assert not (task / RESERVE_FILE).exists()


def test_disk_full_task_is_classed_and_readers_say_so(tmpfs_pod: Pod):
    pod = tmpfs_pod
    assert pod.wf("fsm-reset", "BOOTSTRAPPED", "--reason", "test").returncode == 0
    # the task fills the filesystem, then prints a lot (its log cannot take it) and fails
    cmd = ('head -c 8000000 /dev/zero > "$WF_TASK_DIR/fill"; '
           'for i in $(seq 2000); do echo "line $i of output the full disk cannot take"; done; exit 3')
    assert pod.wf("task-run", "--id", "full", "--cmd", cmd).returncode == 0
    waited = pod.wf("task-wait", "--id", "full", "--json", timeout=120)
    assert "Traceback" not in waited.stderr, waited.stderr
    record = json.loads(waited.stdout)
    verdict = record.get("record", record)
    assert verdict["state"] == "failed" and verdict["failure_class"] == "disk_full", verdict
    status = pod.wf("task-status", "full")
    assert status.returncode == 0 and "disk_full" in status.stdout, status.stderr
    assert not (pod.outputs / "_tasks/full/.wf-reserve.tmp").exists()
    # a reading command that has to write (a task whose supervisor vanished) names the full filesystem
    assert pod.wf("task-run", "--id", "sleeper", "--cmd", "sleep 60").returncode == 0
    sup = wait_until(lambda: json.loads((pod.outputs / "_tasks/sleeper/status.json").read_text()).get(
        "supervisor_pid"), 30, what="the supervisor")
    fill(pod.outputs / "more-fill")
    os.kill(int(sup), 9)
    wait_until(lambda: not Path(f"/proc/{sup}").exists(), 10, what="the supervisor to die")
    result = pod.wf("task-status", "sleeper")
    assert result.returncode == 6, (result.stdout, result.stderr)
    line = one_line_error(result)
    assert f"the filesystem {pod.outputs} on the pod is full" in line and "Traceback" not in result.stdout, line
    (pod.outputs / "more-fill").unlink()
    (pod.outputs / "_tasks/full/fill").unlink()
    after = pod.wf("task-status", "sleeper", "--json")
    assert after.returncode == 0 and '"lost"' in after.stdout, after.stderr
    assert sys.executable  # the pod's python ran the agent from the tmpfs throughout


def test_task_runs_released_at_once_on_the_pod_one_wins(corpus_pod: Pod):
    """Eight pod agents, all waiting on their request, released together: the tightest race."""
    pod = corpus_pod
    agent = next((pod.outputs / "_control").glob("agent-*.pyz"))
    task_id = f"burst-{uuid.uuid4().hex[:6]}"
    config = {"OPS_REMOTE_OUTPUTS_DIR": str(pod.outputs), "OPS_REMOTE_REPO": str(pod.root / "repo"),
              "TMUX_SOCKET": pod.socket, "WF_TMUX_SESSION": "wf-tasks", "TASK_KILL_GRACE_SECS": "2"}
    args = {"id": task_id, "cmd": "echo burst", "timeout_secs": 60, "stall_secs": 60}
    procs = [subprocess.Popen([sys.executable, "-I", "-S", str(agent), "task-run"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(8)]
    for number, proc in enumerate(procs):
        assert proc.stdin is not None  # each brings its own pod env file (as a changed workflow.env does)
        env_file = {"path": str(pod.root / "project.env"), "content": f"# written by workflow.sh\nRUNENV_N={number}\n"}
        proc.stdin.write(json.dumps({"config": config, "args": args, "env_file": env_file}).encode())
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.close()
    outcomes = []
    for proc in procs:
        assert proc.stdout is not None and proc.stderr is not None
        out, err = proc.stdout.read(), proc.stderr.read()
        proc.wait(timeout=60)
        reply = json.loads(out.decode().strip().splitlines()[-1])
        outcomes.append((proc.returncode, reply, err.decode()))
    assert sorted(code for code, _, _ in outcomes) == [0] + [7] * 7, outcomes
    for _code, reply, err in outcomes:
        assert "Traceback" not in err and "FileNotFoundError" not in json.dumps(reply), (reply, err)
    assert not list((pod.outputs / "_tasks" / "_replaced").glob(f"{task_id}.*"))
    assert pod.wf("task-wait", "--id", task_id).returncode == 0

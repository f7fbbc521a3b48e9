"""sweep-watch --manage: a lost pod is recovered, a status blip is not.

The Lium API is the project's fake (tests/fake_lium_api.py) driven by the real Lium SDK; each "pod" is a
real sshd of its own on loopback. The pods share this machine's filesystem, which stands for the
persistent volume (LIUM_VOLUME) the outputs live on: what a replacement sees of its lost predecessor.
A pod is lost the way a machine dies: its sshd and every process of its tmux server get SIGKILL at once
(nothing gets to write a verdict), and the API stops listing it. The trainer ledger (chaos_helpers)
counts what really ran, whatever the tool's bookkeeping says.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest
from chaos_helpers import (
    executor_record,
    ledger_records,
    ok_ends,
    read_json,
    reap,
    run_status,
    setup_chaos_pod,
    start_sweep,
    wait_running,
    write_csv,
)
from conftest import WORKFLOW, Pod, SSHServer, free_port, make_pod, start_sshd, wait_until
from fake_lium_api import FakeLiumAPI

API_KEY = "lium-test-key-manage-5e8d1c"
STEPS = 14  # slow.py: 0.5 s a step


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def tree(pid: int) -> list[int]:
    found, stack = [], [pid]
    while stack:
        top = stack.pop()
        found.append(top)
        stack.extend(_children(top))
    return found


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def new_sshd(base: Path, client_key: Path) -> SSHServer:
    """An sshd of its own (a pod) that accepts ``client_key``."""
    base.mkdir(parents=True)
    for suffix in ("", ".pub"):
        shutil.copy(f"{client_key}{suffix}", base / f"id_ed25519{suffix}")
    return start_sshd(base, free_port())


@dataclass
class World:
    api: FakeLiumAPI
    pod: Pod
    ledger: Path
    first: SSHServer
    base: Path
    lium_pod: dict[str, Any]
    servers: list[SSHServer]

    def tmux_server(self) -> int:
        out = self.pod.tmux("display-message", "-p", "#{pid}").stdout.strip()
        return int(out) if out.isdigit() else 0

    def kill_pod(self, server: SSHServer) -> None:
        """The machine dies: sshd and everything of the tmux server (executor, supervisors, trainers)
        frozen, then SIGKILLed; nothing writes a verdict."""
        victims = tree(server.pid)
        root = self.tmux_server()
        if root:
            victims += tree(root)
        signal_all(victims, signal.SIGSTOP)
        signal_all(victims, signal.SIGKILL)

    def watch(self, *args: str, log: str = "watch.log") -> tuple[subprocess.Popen[str], Path]:
        path = self.base / log
        handle: IO[str] = path.open("w")
        env = {**os.environ, "WORKFLOW_VENV": sys.prefix, **self.pod.extra_env}
        env.pop("WORKFLOW_PROFILE", None)
        proc = subprocess.Popen([str(WORKFLOW), "--env", str(self.pod.env_file), *args, "sweep-watch", "--manage",
                                 "--interval", "0.5"], env=env, stdout=handle, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True)
        handle.close()
        return proc, path


@pytest.fixture
def on_volume(request: pytest.FixtureRequest) -> bool:
    """The world's outputs: OPS_REMOTE_OUTPUTS_DIR set (False), or left empty with LIUM_VOLUME set (True)."""
    return bool(getattr(request, "param", False))


@pytest.fixture
def world(tmp_path: Path, source_repo: Path, on_volume: bool) -> Iterator[World]:
    home = tmp_path / "home"
    home.mkdir()
    first = start_sshd(tmp_path / "sshd-a", free_port())
    servers = [first]
    with FakeLiumAPI(api_key=API_KEY) as api:
        pod = make_pod("local", tmp_path, source_repo, None)
        mount = tmp_path / "volume"
        if on_volume:  # the volume's mount, as the API reports it; pod.outputs reads the campaign through a link
            (mount / "workflow" / "outputs").mkdir(parents=True)
            pod.outputs.symlink_to(mount / "workflow" / "outputs")
            api.volume_mount = str(mount)
            pod.set(OPS_REMOTE_OUTPUTS_DIR="", LIUM_VOLUME=f"id:{api.add_volume('campaign')['id']}")
        lium_pod = api.add_pod("trainer", host="127.0.0.1", port=first.port,
                               volume_path=str(mount) if on_volume else None)
        pod.set(LIUM_BASE_URL=api.base_url, LIUM_SSH_KEY_PATH=str(first.key), LIUM_TARGET=lium_pod["id"],
                LIUM_GPU_TYPE="H100", LIUM_GPU_COUNT="1", LIUM_READY_TIMEOUT_SECS="60",
                CONNECTION_PERSIST_SECS="0", SSH_CONNECT_TIMEOUT_SECS="2", RECONNECT_SECS="0")
        pod.extra_env.update(HOME=str(home), LIUM_API_KEY=API_KEY, NO_PROXY="127.0.0.1,localhost")
        ledger = setup_chaos_pod(pod, tmp_path)
        world = World(api, pod, ledger, first, tmp_path, lium_pod, servers)
        try:
            yield world
        finally:
            reap(pod)
            for server in servers:
                signal_all(tree(server.pid), signal.SIGCONT)
                signal_all([server.pid], signal.SIGTERM)
    for path in tmp_path.rglob("*"):  # the API key is in no file (the pod env file holds the config)
        if path.is_file() and path.name != "project.env" and path.stat().st_size < 1 << 20:
            assert API_KEY.encode() not in path.read_bytes(), path


def rows(prefix: str, count: int) -> tuple[list[str], list[str]]:
    ids = [f"{prefix}-{n}" for n in range(count)]
    return ids, [f"{run_id},config/slow.py,{n},steps={STEPS},managed,1" for n, run_id in enumerate(ids)]


def wait_text(path: Path, text: str, timeout: float, proc: subprocess.Popen[str]) -> str:
    def seen() -> str:
        body = path.read_text() if path.exists() else ""
        if text in body:
            return body
        assert proc.poll() is None or text in body, f"the watcher ended ({proc.returncode}): {body[-3000:]}"
        return ""
    return str(wait_until(seen, timeout, interval=0.2, what=f"{text!r} in the watcher's output"))


def finish(proc: subprocess.Popen[str], log: Path, timeout: float = 240) -> tuple[int, str]:
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"the watcher did not end: {log.read_text()[-4000:]}")
    return code, log.read_text()


def ckpt_iter(pod: Pod, run_id: str) -> int:
    return int((read_json(pod.outputs / run_id / "ckpt.json") or {}).get("iter", -1))


@pytest.mark.parametrize("on_volume", [pytest.param(False, id="outputs-dir"), pytest.param(True, id="on-volume")],
                         indirect=True)
def test_lost_pod_is_replaced_and_rows_resume_from_their_checkpoints(world: World, on_volume: bool) -> None:
    """on-volume: OPS_REMOTE_OUTPUTS_DIR left empty with LIUM_VOLUME set puts the outputs (the run dirs and
    their checkpoints) on the volume, <mount>/workflow/outputs; the replacement attaches the same volume."""
    pod, api = world.pod, world.api
    ids, csv_rows = rows("lost", 3)
    cid = start_sweep(pod, write_csv(world.base / "lost.csv", csv_rows))
    proc, log = world.watch()
    wait_text(log, f"manage: watching campaign {cid}", 60, proc)
    record = json.loads((world.base / ".workflow" / "manage" / cid / "record.json").read_text())
    assert record["pod_uuid"] == world.lium_pod["id"] and record["git_sha"] and record["epoch"] == 1
    for run_id in ids[:2]:
        wait_running(pod, run_id)
    wait_until(lambda: min(ckpt_iter(pod, r) for r in ids[:2]) >= 3, 60, what="checkpoints of the running rows")

    second = new_sshd(world.base / "sshd-b", world.first.key)
    world.servers.append(second)
    api.rent_ssh = ("127.0.0.1", second.port)
    api.add_executor(gpu_count=1, price_per_gpu=2.0)
    cut = {run_id: ckpt_iter(pod, run_id) for run_id in ids[:2]}
    world.kill_pod(world.first)
    with api._lock:  # the provider says the pod is gone
        api.pods[:] = [p for p in api.pods if p["id"] != world.lium_pod["id"]]

    code, out = finish(proc, log)
    assert code == 0, out
    assert "manage: LOST: the provider says the pod is gone" in out, out
    assert "manage: recovered in" in out, out
    assert API_KEY not in out
    rents = api.calls("POST", r"/executors/.*/rent")
    assert len(rents) == 1 and rents[0].body["pod_name"] == "trainer-r2", out
    new_uuid = next(p["id"] for p in api.pods if p["pod_name"] == "trainer-r2")
    assert f"LIUM_TARGET={new_uuid}" in out
    assert api.calls("DELETE", ".*") == []  # nothing deleted: the lost pod was gone already
    if on_volume:  # the campaign and the checkpoints were on the volume, and the replacement has it
        volume_id = next(v["id"] for v in api.volumes)
        assert rents[0].body["volume_id"] == volume_id, rents[0].body
        on_disk = world.base / "volume" / "workflow" / "outputs"
        assert pod.outputs.is_symlink() and all((on_disk / r / "ckpt.json").is_file() for r in ids)
        assert (on_disk / "_control" / "workflow_state.json").is_file()

    # results complete: every row ok, trained to its last step; the cut-off rows resumed from their checkpoints
    for run_id in ids:
        done = read_json(pod.outputs / run_id / "summary.json")
        assert done.get("ok") is True, (run_id, done)
        assert read_json(pod.outputs / run_id / "results.json") == {"status": "completed", "iters": STEPS}
    starts = [r for r in ledger_records(world.ledger) if r["event"] == "start"]
    for run_id in ids[:2]:
        mine = [r for r in starts if r["run"] == run_id]
        assert len(mine) == 2 and not mine[0]["resume"] and mine[1]["resume"], mine
        log_text = (pod.outputs / run_id / "run.log").read_text()
        resumed = re.findall(r"resumed from iter (\d+)", log_text)
        assert len(resumed) == 1 and int(resumed[0]) >= cut[run_id], log_text[-2000:]  # its newest checkpoint
        iters = [json.loads(x)["iter"] for x in (pod.outputs / run_id / "metrics.jsonl").read_text().splitlines()]
        assert iters[-1] == STEPS - 1 and iters.count(0) == 1  # trained on from the checkpoint, not from 0
    assert ok_ends(world.ledger, ids) == dict.fromkeys(ids, 1)  # each row trained to the end exactly once

    # the superseded attempt is fenced: its executor generation is told to stop, and the record moved on
    campaign = pod.outputs / "_campaigns" / cid
    fence = read_json(campaign / "manage_fence.json")
    assert fence["epoch"] == 2 and fence["pod"] == new_uuid
    assert read_json(campaign / "stop-request.json")["generation"] == 1
    assert executor_record(pod, cid)["generation"] == 2
    record = json.loads((world.base / ".workflow" / "manage" / cid / "record.json").read_text())
    assert record["epoch"] == 2 and record["pod_uuid"] == new_uuid and len(record["recoveries"]) == 1
    assert record["recoveries"][0]["replaced"] is True
    status = pod.wf("--set", f"LIUM_TARGET={new_uuid}", "sweep-status", "--campaign", cid, "--json")
    assert status.returncode == 0, status.stderr
    assert {r["state"] for r in json.loads(status.stdout)["rows"]} == {"ok"}


def test_paused_sshd_is_suspect_then_back_and_nothing_reruns(world: World) -> None:
    pod, api = world.pod, world.api
    ids, csv_rows = rows("blip", 2)
    cid = start_sweep(pod, write_csv(world.base / "blip.csv", csv_rows))
    proc, log = world.watch()
    wait_text(log, f"manage: watching campaign {cid}", 60, proc)
    for run_id in ids:
        wait_running(pod, run_id)
    frozen = tree(world.first.pid)
    signal_all(frozen, signal.SIGSTOP)  # a network blip: the API still says the pod is fine
    try:
        wait_text(log, "manage: SUSPECT", 30, proc)
        time.sleep(3)
    finally:
        signal_all(frozen, signal.SIGCONT)
    code, out = finish(proc, log)
    assert code == 0, out
    assert "manage: HEALTHY again" in out and "nothing was run again" in out, out
    assert "LOST" not in out and "recovery" not in out, out
    assert api.calls("POST", r"/executors/.*/rent") == []
    starts = [r for r in ledger_records(world.ledger) if r["event"] == "start"]
    assert sorted(r["run"] for r in starts) == sorted(ids)  # one start per row: nothing run again
    assert ok_ends(world.ledger, ids) == dict.fromkeys(ids, 1)
    for run_id in ids:
        assert run_status(pod, run_id)["state"] == "success"
    assert executor_record(pod, cid)["generation"] == 1
    record = json.loads((world.base / ".workflow" / "manage" / cid / "record.json").read_text())
    assert record["recoveries"] == [] and record["epoch"] == 1


def test_max_recoveries_is_respected(world: World) -> None:
    """MANAGE_MAX_RECOVERIES=1: the executor killed (SSH works: LOST, resumed on the same pod), then
    killed again: the watcher stops with one line, and resumes nothing more."""
    pod = world.pod
    pod.set(MANAGE_MAX_RECOVERIES="1")
    ids, csv_rows = rows("max", 3)  # two slots: the third row waits
    cid = start_sweep(pod, write_csv(world.base / "max.csv", csv_rows))
    proc, log = world.watch()
    wait_text(log, f"manage: watching campaign {cid}", 60, proc)
    wait_running(pod, ids[0])
    os.kill(int(executor_record(pod, cid)["pid"]), signal.SIGKILL)
    wait_text(log, "manage: recovered in", 120, proc)
    assert "SSH works and the executor is dead" in log.read_text()
    wait_until(lambda: executor_record(pod, cid).get("generation") == 2 and executor_record(pod, cid).get("pid")
               and executor_record(pod, cid).get("state") == "running", 60, what="the resumed executor")
    os.kill(int(executor_record(pod, cid)["pid"]), signal.SIGKILL)
    code, out = finish(proc, log)
    assert code == 1, out
    last = [line for line in out.splitlines() if line.strip()][-1]
    assert "MANAGE_MAX_RECOVERIES=1" in last and "not recovering" in last, out
    assert out.count("manage: recovered in") == 1
    assert executor_record(pod, cid)["generation"] == 2  # no second resume
    assert world.api.calls("POST", r"/executors/.*/rent") == []


# ----------------------------------------------------------------------------- the rules, one by one


def test_classify_loses_a_pod_only_on_evidence() -> None:
    from helpers.manage.health import GONE, LOST, NO_PROVIDER, PRESENT, SUSPECT, UNKNOWN, ProviderView, classify

    running = {"executor": {"state": "running"}, "rows": [{"run_id": "a", "state": "running"}]}
    dead = {"executor": {"state": "lost", "reason": "the executor process is gone"},
            "rows": [{"run_id": "a", "state": "lost"}, {"run_id": "b", "state": "ok"}]}
    dead_but_done = {"executor": {"state": "lost"}, "rows": [{"run_id": "a", "state": "ok"}]}
    gone = classify(ProviderView(GONE, "pod x is no longer listed"), None, None)
    assert gone.health == LOST and gone.replace
    for provider in (ProviderView(PRESENT), ProviderView(UNKNOWN, "its API did not answer"),
                     ProviderView(PRESENT, "pod x is REBOOT_PENDING"), ProviderView(NO_PROVIDER)):
        blip = classify(provider, None, "ssh: connect timed out")
        assert blip.health == SUSPECT and not blip.replace and "connect timed out" in blip.reason
        assert classify(provider, running, None).health == "HEALTHY"
        executor_dead = classify(provider, dead, None)
        assert executor_dead.health == LOST and not executor_dead.replace  # resumed on the same pod
        assert classify(provider, dead_but_done, None).health == "HEALTHY"  # nothing left to run


def test_replacement_names() -> None:
    from helpers.manage.recover import replacement_name

    assert replacement_name("trainer", 2) == "trainer-r2"
    assert replacement_name("trainer-r2", 3) == "trainer-r3"
    assert replacement_name("my-run-pod", 2) == "my-run-pod-r2"
    assert replacement_name(None, 2) == "wf-pod-r2"
    assert len(replacement_name("x" * 64, 12)) == 64


def test_pod_that_vanishes_between_the_api_look_and_the_reconnect_is_suspect(
        tmp_path: Path, source_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The API lists the pod at the look; by the reconnect (a stale endpoint is looked up again) it is
    gone: unreachable, so SUSPECT (the next look, API first, can say LOST); never LOST on that race."""
    import argparse

    from helpers.cli import COMMANDS_BY_NAME
    from helpers.config import load_config
    from helpers.manage.health import SUSPECT, check
    from helpers.resolved import ConfigRequest
    from helpers.session import Session

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("LIUM_API_KEY", API_KEY)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    with FakeLiumAPI(api_key=API_KEY) as api:
        lium_pod = api.add_pod("trainer", host="127.0.0.1", port=free_port())  # nothing answers there
        listings = {"n": 0}
        real = api._list_pods

        def vanishing() -> list[dict[str, Any]]:
            listings["n"] += 1
            if listings["n"] > 1:
                api.pods[:] = []
            return real()

        monkeypatch.setattr(api, "_list_pods", vanishing)
        pod = make_pod("local", tmp_path, source_repo, None)
        pod.set(LIUM_BASE_URL=api.base_url, LIUM_SSH_KEY_PATH=str(key), LIUM_TARGET=lium_pod["id"],
                SSH_CONNECT_TIMEOUT_SECS="2", CONNECTION_PERSIST_SECS="0")
        cfg = load_config(ConfigRequest(Path(__file__).resolve().parents[1], pod.env_file))
        options = argparse.Namespace(campaign=None, interval=0.5, overrides=[], manage=True)
        session = Session(cfg, options, COMMANDS_BY_NAME["sweep-watch"])
        verdict = check(session, None, lium_pod["id"])
        assert verdict.health == SUSPECT, verdict
        assert listings["n"] >= 2  # the look, then the reconnect's lookup that found it gone
        assert API_KEY not in verdict.reason


def test_a_superseded_watcher_is_refused_by_the_fence(tmp_path: Path) -> None:
    from helpers.pod.context import Context
    from helpers.pod.errors import ExitCode, WorkflowError
    from helpers.pod.manage_ops import manage_prepare

    outputs = tmp_path / "outputs"
    campaign = outputs / "_campaigns" / "c1"
    campaign.mkdir(parents=True)
    (campaign / "manifest.json").write_text(json.dumps({"campaign_id": "c1", "rows": []}))
    (campaign / "executor.json").write_text(json.dumps({"state": "running", "generation": 3}))
    (outputs / "_control").mkdir()
    config = {"OPS_REMOTE_OUTPUTS_DIR": str(outputs), "OPS_REMOTE_REPO": str(tmp_path / "repo")}
    done = manage_prepare(Context(config, {"campaign": "c1", "epoch": 4, "pod": "new-pod"}))
    assert done["fenced_generation"] == 3 and not done["restored"]
    assert json.loads((campaign / "stop-request.json").read_text())["generation"] == 3
    assert json.loads((campaign / "manage_fence.json").read_text())["epoch"] == 4
    with pytest.raises(WorkflowError) as info:  # a watcher that only knows epoch 3 comes back
        manage_prepare(Context(config, {"campaign": "c1", "epoch": 3, "pod": "old-pod"}))
    assert info.value.code == ExitCode.REFUSED and "superseded" in info.value.message
    assert json.loads((campaign / "manage_fence.json").read_text())["pod"] == "new-pod"


def test_a_campaign_missing_from_a_fresh_disk_is_put_back_from_the_kept_manifest(tmp_path: Path) -> None:
    from helpers.pod.context import Context
    from helpers.pod.errors import WorkflowError
    from helpers.pod.manage_ops import manage_prepare

    outputs = tmp_path / "outputs"
    (outputs / "_control").mkdir(parents=True)
    config = {"OPS_REMOTE_OUTPUTS_DIR": str(outputs), "OPS_REMOTE_REPO": str(tmp_path / "repo")}
    with pytest.raises(WorkflowError, match="no manifest of it was kept"):
        manage_prepare(Context(config, {"campaign": "c2", "epoch": 2}))
    manifest = {"campaign_id": "c2", "rows": [{"run_id": "r1"}]}
    done = manage_prepare(Context(config, {"campaign": "c2", "epoch": 2, "manifest": manifest}))
    assert done["restored"]
    assert json.loads((outputs / "_campaigns" / "c2" / "manifest.json").read_text()) == manifest
    assert (outputs / "_control" / "latest_campaign").read_text().strip() == "c2"


def test_max_recoveries_zero_rents_nothing(world: World) -> None:
    """MANAGE_MAX_RECOVERIES=0 (watch only): the API says the pod is gone, the watcher says so in one last
    line and exits 1; nothing is rented."""
    pod = world.pod
    pod.set(MANAGE_MAX_RECOVERIES="0")
    ids, csv_rows = rows("zero", 1)
    cid = start_sweep(pod, write_csv(world.base / "zero.csv", csv_rows))
    proc, log = world.watch()
    wait_text(log, f"manage: watching campaign {cid}", 60, proc)
    assert "no LIUM_VOLUME" in log.read_text()
    wait_running(pod, ids[0])
    world.api.add_executor(gpu_count=1, price_per_gpu=2.0)
    world.kill_pod(world.first)
    with world.api._lock:
        world.api.pods[:] = []
    code, out = finish(proc, log)
    assert code == 1, out
    last = [line for line in out.splitlines() if line.strip()][-1]
    assert "MANAGE_MAX_RECOVERIES=0" in last and "the provider says the pod is gone" in last, out
    assert world.api.calls("POST", r"/executors/.*/rent") == []

"""The Lium target end to end through workflow.sh: the real Lium SDK against the local fake of the
Lium API (tests/fake_lium_api.py), whose pods' SSH endpoint is the real loopback sshd."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Pod, SSHServer, free_port, make_pod, one_line_error
from fake_lium_api import FakeLiumAPI

API_KEY = "lium-test-key-4f9c2b7e1d"


@dataclass
class LiumWorld:
    api: FakeLiumAPI
    pod: Pod
    home: Path


@pytest.fixture
def lium(tmp_path: Path, sshd: SSHServer, source_repo: Path) -> Iterator[LiumWorld]:
    home = tmp_path / "home"
    home.mkdir()
    with FakeLiumAPI(api_key=API_KEY) as api:
        pod = make_pod("local", tmp_path, source_repo, None)
        pod.set(LIUM_BASE_URL=api.base_url, LIUM_SSH_KEY_PATH=str(sshd.key), LIUM_YES="0")
        pod.extra_env.update(HOME=str(home), LIUM_API_KEY=API_KEY, NO_PROXY="127.0.0.1,localhost")
        world = LiumWorld(api, pod, home)
        yield world
        pod.tmux("kill-server")
    for path in tmp_path.rglob("*"):  # the key is in no file: caches, pins, pod env file
        if path.is_file() and path.name != "project.env":
            assert API_KEY.encode() not in path.read_bytes(), path


def no_key(*results) -> None:  # type: ignore[no-untyped-def]
    for result in results:
        assert API_KEY not in result.stdout + result.stderr


def test_lium_target_resolves_once_then_plain_ssh(lium: LiumWorld, sshd: SSHServer) -> None:
    lium.api.add_pod("trainer-a", host="127.0.0.1", port=sshd.port)
    lium.api.add_pod("other", host="127.0.0.1", port=1)
    lium.pod.set(LIUM_TARGET="trainer-a")
    first = lium.pod.wf("pod-status", "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["target"].startswith("lium pod trainer-a")
    listings = len(lium.api.calls("GET", "/pods"))
    again = lium.pod.wf("fsm-status")
    assert again.returncode == 0, again.stderr
    assert len(lium.api.calls("GET", "/pods")) == listings  # cached: no API call, just SSH
    pins = list((lium.home / ".lium" / "known_hosts").iterdir())
    assert len(pins) == 1 and f"[127.0.0.1]:{sshd.port}" in pins[0].read_text()  # pinned per pod UUID
    no_key(first, again)


def test_stale_cached_endpoint_is_resolved_again(lium: LiumWorld, sshd: SSHServer) -> None:
    pod = lium.api.add_pod("moving", host="127.0.0.1", port=free_port())  # nothing listens there
    lium.pod.set(LIUM_TARGET="moving", SSH_CONNECT_TIMEOUT_SECS="3")
    assert lium.pod.wf("fsm-status").returncode == 3  # cached now, and unreachable
    pod["ports_mapping"] = {"22": sshd.port}
    pod["ssh_connect_cmd"] = f"ssh root@127.0.0.1 -p {sshd.port}"  # the pod came back elsewhere
    result = lium.pod.wf("fsm-status")
    assert result.returncode == 0, result.stderr


def test_pod_up_then_bootstrap_then_pod_delete(lium: LiumWorld, sshd: SSHServer) -> None:
    lium.api.add_executor(gpu_count=8, price_per_gpu=2.0)
    keep = lium.api.add_pod("someone-else", host="127.0.0.1", port=1)
    lium.api.rent_ssh = ("127.0.0.1", sshd.port)
    lium.pod.set(LIUM_GPU_TYPE="H100", LIUM_GPU_COUNT="8", LIUM_POD_NAME="wf-test-pod")
    dry = lium.pod.wf("pod-up", "--dry-run")
    assert dry.returncode == 0 and "would rent" in dry.stdout and not lium.api.calls("POST", r"/executors/.*/rent")
    assert "auto-delete 24 h after the rent" in dry.stdout, dry.stdout  # LIUM_TTL_HOURS=24 by default
    never = lium.pod.wf("--set", "LIUM_TTL_HOURS=off", "pod-up", "--dry-run")
    assert never.returncode == 0 and "would rent" in never.stdout and "auto-delete" not in never.stdout, never.stdout
    up = lium.pod.wf("pod-up", "--yes", timeout=300)
    assert up.returncode == 0, up.stderr
    rents = lium.api.calls("POST", r"/executors/.*/rent")
    assert len(rents) == 1 and rents[0].body["pod_name"] == "wf-test-pod"
    assert rents[0].body["termination_hours"] == 24  # the dead-man switch is on by default (LIUM_TTL_HOURS=24)
    line = [x for x in up.stdout.splitlines() if x.startswith("LIUM_TARGET=")]
    assert len(line) == 1
    uuid = line[0].split("=", 1)[1]
    assert uuid in lium.api.pod_ids()
    state = json.loads((lium.pod.outputs / "_control" / "workflow_state.json").read_text())
    assert state["state"] == "POD_READY"  # set on the new pod, over SSH
    lium.pod.set(LIUM_TARGET=uuid)
    boot = lium.pod.wf("bootstrap")
    assert boot.returncode == 0, boot.stderr
    refused = lium.pod.wf("pod-delete")  # no terminal to confirm on, no --yes
    assert refused.returncode == 7 and not lium.api.calls("DELETE", ".*")
    gone = lium.pod.wf("pod-delete", "--yes")
    assert gone.returncode == 0, gone.stderr
    deletes = lium.api.calls("DELETE", ".*")
    assert [d.path for d in deletes] == [f"/pods/{uuid}"]  # exactly the configured pod
    assert keep["id"] in lium.api.pod_ids()
    no_key(dry, up, boot, refused, gone)


@pytest.mark.parametrize("setup,code,fragment", [
    ("no-key", 2, "LIUM_API_KEY"),
    ("not-found", 5, "no-such-pod"),
    ("pending", 1, "wait"),
    ("wrong-key", 2, "API key"),
])
def test_lium_errors_through_the_cli(lium: LiumWorld, setup: str, code: int, fragment: str) -> None:
    lium.api.add_pod("exists")
    lium.api.add_pod("booting", status="PENDING", pending_polls=None)
    target = {"not-found": "no-such-pod", "pending": "booting"}.get(setup, "exists")
    lium.pod.set(LIUM_TARGET=target)
    env = {}
    if setup == "no-key":
        env["LIUM_API_KEY"] = ""
    if setup == "wrong-key":
        env["LIUM_API_KEY"] = "not-the-right-key"
    before = lium.pod.snapshot()
    result = lium.pod.wf("pod-status", env=env)
    assert result.returncode == code, result.stderr
    message = one_line_error(result)
    assert fragment.lower() in message.lower()
    assert lium.pod.snapshot() == before
    no_key(result)
    assert "not-the-right-key" not in result.stdout + result.stderr

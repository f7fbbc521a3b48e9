"""One set-up for the tests that run flow / teardown against a fake Lium pod: the real Lium SDK talks
to tests/fake_lium_api.py, whose rented pods' SSH endpoint is the loopback sshd, and the client is a
local-target pod whose LIUM_* keys make flow rent one (used by test_flow.py and test_teardown.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from conftest import Pod, SSHServer, make_pod
from fake_lium_api import FakeLiumAPI

SETTINGS = {"TRAIN_WORKDIR": "tests/sweep_fixture", "SWEEP_CPU_SLOTS": "2", "RUN_STALL_SECS": "60",
            "RUN_RETRY_BACKOFF_SECS": "1", "TASK_KILL_GRACE_SECS": "2", "CONNECTION_PERSIST_SECS": "0"}


def write_csv(path: Path, *rows: str) -> Path:
    path.write_text("\n".join(["run_id,config,seed,overrides,notes,gpus", *rows]) + "\n")
    return path


@contextlib.contextmanager
def fake_lium_pod(tmp_path: Path, sshd: SSHServer, source_repo: Path, *, api_key: str, pod_name: str,
                  rows: tuple[str, ...]) -> Iterator[tuple[FakeLiumAPI, Pod]]:
    """(the fake Lium API with one 1-GPU executor at $3/GPU-h to rent, the client pod with SWEEP_CSV of
    ``rows``); the pod's tmux server is killed afterwards."""
    home = tmp_path / "home"
    home.mkdir()
    with FakeLiumAPI(api_key=api_key) as api:
        pod = make_pod("local", tmp_path, source_repo, None)
        csv = write_csv(tmp_path / f"{pod_name}.csv", *rows)
        pod.set(**SETTINGS, SWEEP_CSV=str(csv), LIUM_BASE_URL=api.base_url, LIUM_SSH_KEY_PATH=str(sshd.key),
                LIUM_GPU_TYPE="H100", LIUM_GPU_COUNT="1", LIUM_POD_NAME=pod_name)
        pod.extra_env.update(HOME=str(home), LIUM_API_KEY=api_key, NO_PROXY="127.0.0.1,localhost")
        api.add_executor(gpu_count=1, price_per_gpu=3.0)
        api.rent_ssh = ("127.0.0.1", sshd.port)
        try:
            yield api, pod
        finally:
            pod.tmux("kill-server")

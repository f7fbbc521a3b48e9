"""Set-up shared by the evaluation-stage tests (test_stages*.py): the stand-in trainer's settings, the CSV
header with the stage columns, a CSV writer, a pod made ready (bootstrap + checkout) and a wait for a
campaign's executor to end."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from conftest import Pod, cleanup_pod, make_pod, wait_until

FIXTURE_SETTINGS = {"TRAIN_WORKDIR": "tests/sweep_fixture", "SWEEP_CPU_SLOTS": "2", "RUN_STALL_SECS": "60",
                    "RUN_RETRY_BACKOFF_SECS": "1", "TASK_KILL_GRACE_SECS": "2"}
HEADER = "run_id,config,seed,overrides,notes,gpus,eval_small_cmd,gate_small"


def write_csv(path: Path, *rows: str, header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def ready(pod: Pod) -> Pod:
    """The pod with the fixture's settings, bootstrapped and checked out (a failure names the step)."""
    pod.set(**FIXTURE_SETTINGS)
    for command in ("bootstrap", "checkout"):
        result = pod.wf(command, timeout=600)
        assert result.returncode == 0, f"{command}: {result.stderr}"
    return pod


def ready_local_pod(base: Path, source_repo: Path) -> Iterator[Pod]:
    """For a module-scoped fixture: a ready local pod under base, cleaned up after."""
    pod = make_pod("local", base, source_repo, None)
    try:
        yield ready(pod)
    finally:
        cleanup_pod(pod)


def wait_campaign(pod: Pod, campaign: str) -> None:
    """Until the campaign's executor has ended (finished, stopped or lost)."""
    def ended() -> bool:
        try:
            record = json.loads((pod.outputs / "_campaigns" / campaign / "executor.json").read_text())
        except (OSError, ValueError):
            return False
        return record.get("state") in ("finished", "stopped", "lost")

    wait_until(ended, 300, interval=0.3, what=f"campaign {campaign} to end")

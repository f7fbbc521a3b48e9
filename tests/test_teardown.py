"""TEARDOWN_ON_FINISH when nobody is watching: after the campaign has ended, the next sweep-status
(or sweep-watch) fetches the results, verifies them and only then deletes exactly the Lium pod this
tool rented. The real Lium SDK talks to tests/fake_lium_api.py, whose pods' SSH endpoint is the
loopback sshd (so a second, foreign pod can point at the same files)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Pod, SSHServer, one_line_error
from fake_lium_api import FakeLiumAPI
from lium_pod import fake_lium_pod

API_KEY = "lium-teardown-key-5c7a1e93f0"


def teardown_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("teardown: ")]


@pytest.fixture
def lium_pod(tmp_path: Path, sshd: SSHServer, source_repo: Path) -> Iterator[tuple[FakeLiumAPI, Pod]]:
    with fake_lium_pod(tmp_path, sshd, source_repo, api_key=API_KEY, pod_name="wf-td-pod",
                       rows=("td-a,config/ok.py,1,,,1",)) as made:
        yield made


def test_campaign_end_deletes_only_the_rented_pod_after_a_verified_fetch(lium_pod: tuple[FakeLiumAPI, Pod],
                                                                         sshd: SSHServer) -> None:
    api, pod = lium_pod
    theirs = api.add_pod("theirs", host="127.0.0.1", port=sshd.port)  # same files, not rented by this tool
    started = pod.wf("flow", "--yes", "--no-wait", timeout=900)  # rents, bootstraps, starts; nobody waits
    assert started.returncode == 0, started.stdout + started.stderr
    uuid = next(p for p in api.pod_ids() if p != theirs["id"])
    pod.set(LIUM_TARGET=uuid, TEARDOWN_ON_FINISH="delete")
    # keep: the campaign ends under sweep-watch, nothing happens
    kept = pod.wf("--set", "TEARDOWN_ON_FINISH=keep", "sweep-watch", "--plain", timeout=600)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert not teardown_lines(kept) and not api.calls("DELETE", ".*")
    artifacts = pod.env_file.parent / "artifacts"
    assert not (artifacts / "td-a").exists()
    # stop: nothing is left to stop once concluded, said only with --debug
    quiet = pod.wf("--set", "TEARDOWN_ON_FINISH=stop", "sweep-status", timeout=300)
    loud = pod.wf("--debug", "--set", "TEARDOWN_ON_FINISH=stop", "sweep-status", timeout=300)
    assert quiet.returncode == 0 and loud.returncode == 0, loud.stdout + loud.stderr
    assert not teardown_lines(quiet)
    assert [line for line in teardown_lines(loud) if "nothing is left to stop" in line]
    assert not api.calls("DELETE", ".*")
    # a pod this tool did not rent: never deleted, one warning line
    foreign = pod.wf("--set", "LIUM_TARGET=theirs", "sweep-status", timeout=300)
    assert foreign.returncode == 0, foreign.stdout + foreign.stderr
    lines = teardown_lines(foreign)
    assert len(lines) == 1 and f"Lium pod {theirs['id']} was not rented by this tool: never deleted" in lines[0]
    assert not api.calls("DELETE", ".*") and not (artifacts / "td-a").exists()
    # --dry-run says what it would do and changes nothing
    dry = pod.wf("sweep-status", "--dry-run", timeout=300)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    plan = teardown_lines(dry)
    assert len(plan) == 1 and "would run" in plan[0] and "fetch-all" in plan[0] and "pod-delete --yes" in plan[0]
    assert uuid in plan[0] and "nothing is changed" in plan[0]
    assert not api.calls("DELETE", ".*") and not (artifacts / "td-a").exists()
    # another campaign still running on the pod: the pod is kept
    ended = json.loads(pod.wf("--set", "TEARDOWN_ON_FINISH=keep", "sweep-status", "--json").stdout)["campaign_id"]
    hang_csv = pod.env_file.parent / "hang.csv"
    hang_csv.write_text("run_id,config,seed,overrides,notes,gpus\ntd-h,config/hang.py,1,,,1\n")
    second = pod.wf("--set", f"SWEEP_CSV={hang_csv}", "sweep-start", timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    busy = pod.wf("sweep-status", "--campaign", ended, timeout=300)
    assert busy.returncode == 0, busy.stdout + busy.stderr
    assert [line for line in teardown_lines(busy) if "still runs on" in line and "the pod is kept" in line]
    stopped = pod.wf("--set", "TEARDOWN_ON_FINISH=keep", "sweep-stop", timeout=300)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert not api.calls("DELETE", ".*")
    # the fetch fails (its destination is a file): the pod is kept and the commands to run are shown
    blocker = pod.env_file.parent / "not-a-dir"
    blocker.write_text("x")
    failed = pod.wf("--set", f"LOCAL_ARTIFACTS_DIR={blocker}", "sweep-status", "--campaign", ended, timeout=300)
    assert failed.returncode == 0, failed.stdout + failed.stderr
    said = " ".join(teardown_lines(failed))
    assert "fetch-all FAILED" in said and "the pod is kept" in said and "pod-delete --yes" in said, said
    assert not api.calls("DELETE", ".*") and uuid in api.pod_ids()
    # the next sweep-status after the end: fetch, verify, then delete exactly the rented pod
    gone = pod.wf("sweep-status", "--json", "--campaign", ended, timeout=600)
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert json.loads(gone.stdout)["campaign_id"]  # stdout stays one JSON document
    lines = teardown_lines(gone)
    verified = next(i for i, line in enumerate(lines) if "fetched and verified 1 run(s)" in line)
    deleting = next(i for i, line in enumerate(lines) if f"deleting Lium pod {uuid}" in line)
    assert verified < deleting and f"Lium pod {uuid} deleted" in lines[-1]
    assert [d.path for d in api.calls("DELETE", ".*")] == [f"/pods/{uuid}"]
    assert api.pod_ids() == [theirs["id"]]
    summary = json.loads((artifacts / "td-a" / "summary.json").read_text())
    assert summary["ok"] is True
    record = json.loads((pod.env_file.parent / ".workflow" / "rented-pods.json").read_text())
    assert uuid not in record["pods"]
    # recorded as done: the same campaign seen again (here through the other pod) does nothing more
    again = pod.wf("--set", "LIUM_TARGET=theirs", "sweep-status", "--campaign", ended, timeout=300)
    assert again.returncode == 0 and not teardown_lines(again)
    assert len(api.calls("DELETE", ".*")) == 1
    for result in (started, kept, foreign, dry, busy, failed, gone):
        assert API_KEY not in result.stdout + result.stderr


def test_flow_no_wait_leaves_the_delete_to_the_first_status_after_the_end(lium_pod: tuple[FakeLiumAPI, Pod]) -> None:
    api, pod = lium_pod
    # --teardown delete with --no-wait and nobody set to delete later: refused up front, nothing rented
    refused = pod.wf("flow", "--yes", "--no-wait", "--teardown", "delete", timeout=300)
    assert refused.returncode == 7, refused.stdout + refused.stderr
    assert "drop --no-wait, or set TEARDOWN_ON_FINISH=delete" in one_line_error(refused)
    assert not api.calls("POST", r"/executors/.*/rent")
    pod.set(TEARDOWN_ON_FINISH="delete")  # flow's teardown default, and what sweep-status does at the end
    plan = pod.wf("flow", "--yes", "--no-wait", "--dry-run", timeout=300)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "deleted later, not now" in plan.stdout and "first sweep-status" in plan.stdout, plan.stdout
    assert not api.calls("POST", r"/executors/.*/rent")
    started = pod.wf("flow", "--yes", "--no-wait", timeout=900)
    assert started.returncode == 0, started.stdout + started.stderr
    [uuid] = api.pod_ids()
    teardown = [line for line in started.stdout.splitlines() if "] teardown: skipped" in line]
    assert teardown and "deleted later, not now" in teardown[0] and "the Lium pod this flow rents" in teardown[0]
    assert not api.calls("DELETE", ".*")  # the campaign may still run: nothing deleted by flow itself
    pod.set(LIUM_TARGET=uuid)
    watched = pod.wf("sweep-watch", "--plain", timeout=600)  # the campaign ends under it: fetch, verify, delete
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert [d.path for d in api.calls("DELETE", ".*")] == [f"/pods/{uuid}"], teardown_lines(watched)
    said = " ".join(teardown_lines(watched))
    assert "fetched and verified 1 run(s)" in said and f"Lium pod {uuid} deleted" in said, said
    assert json.loads((pod.env_file.parent / "artifacts" / "td-a" / "summary.json").read_text())["ok"] is True
    for result in (refused, plan, started, watched):
        assert API_KEY not in result.stdout + result.stderr

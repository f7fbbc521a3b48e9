"""A real two-node Slurm cluster (tests/slurm_nodes_cluster.py: slurmd n1 and n2 in network namespaces of
their own, slurmctld on the bridge between them).

Rows with ``nodes`` > 1: one allocation of two nodes, ``srun`` starts one torchrun per node, c10d
rendezvous on the first node, and a gloo DDP trainer (tests/sweep_fixture/ddp.py) trains with world size 2
across both nodes. And the login node reached over SSH (a loopback sshd whose sessions get SLURM_CONF, as a
login node has its slurm.conf): checkout, sweep-start, sweep-status and fetch-all of a small campaign."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Pod, free_port, slurm_login, squeue, start_sshd, wait_until, with_signal
from test_slurm import start
from test_sweeps import FIXTURE_SETTINGS, fsm_state, read_json, rows_by_id, write_csv

TIMEOUT = 300
NODES_HEADER = "run_id,config,seed,overrides,notes,gpus,nodes"


def _run_to_end(pod: Pod, cluster: Any, csv: Path) -> subprocess.CompletedProcess[str]:
    """sweep-start of ``csv``, then its sweep-status --json once every array job has left squeue."""
    campaign = start(pod, csv)["campaign_id"]
    wait_until(lambda: not squeue(cluster, campaign), TIMEOUT, interval=0.5, what=f"{campaign} to leave squeue")
    return pod.wf("sweep-status", "--campaign", campaign, "--json")


@pytest.fixture(scope="module")
def login(tmp_path_factory: pytest.TempPathFactory, source_repo: Path, slurm_nodes_cluster: Any) -> Iterator[Pod]:
    settings = {**FIXTURE_SETTINGS, "TRAIN_ENTRYPOINT": "ddp.py", "SWEEP_CPU_SLOTS": "1"}
    yield from slurm_login(tmp_path_factory.mktemp("slurm-nodes-login"), source_repo, slurm_nodes_cluster, settings)


@pytest.mark.slow
def test_a_two_node_row_trains_across_both_nodes_with_world_size_2(login: Pod, slurm_nodes_cluster: Any,
                                                                  tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "nodes.csv", "mn-ddp,config/ok.py,1,steps=3,,,2", header=NODES_HEADER)
    view = _run_to_end(login, slurm_nodes_cluster, csv)
    assert view.returncode == 0, view.stderr
    row = rows_by_id(json.loads(view.stdout))["mn-ddp"]
    assert (row["state"], row["attempts"]) == ("ok", 1), row
    assert fsm_state(login) == "SWEEP_COMPLETED"
    run = login.outputs / "mn-ddp"
    log = (run / "run.log").read_text()
    # world size 2 across both nodes: one torchrun per node, the ranks found each other through c10d on n1
    # (n1 and n2 are Slurm's NodeNames; their hostnames, which torchrun and gloo resolve, are node1 and node2)
    assert "rank 0 of 2 on node1" in log and "rank 1 of 2 on node2" in log, log
    assert "done world=2 hosts=node1,node2" in log, log
    summary = read_json(run / "summary.json")
    assert summary["ok"] and summary["trainer_results"] == {"status": "completed", "world_size": 2,
                                                            "hosts": ["node1", "node2"]}, summary
    manifest = read_json(run / "run_manifest.json")
    assert manifest["slurm"]["node"] == "n1" and manifest["slurm"]["nodes"] == ["n1", "n2"], manifest["slurm"]
    # what ran is what command.sh replays and the manifest records: srun + torchrun c10d on the first node
    job = manifest["slurm"]["job_id_raw"]
    want = ["srun", "--nodes=2", "--ntasks-per-node=1", "--nnodes=2", "--rdzv_backend=c10d",
            "--rdzv_endpoint=node1:29500", f"--rdzv_id={job}", "--nproc_per_node=1"]
    assert all(word in manifest["argv"] for word in want) and "--standalone" not in manifest["argv"], manifest["argv"]
    command = (run / "command.sh").read_text()
    assert all(word in command.split() for word in want) and "--standalone" not in command, command


@pytest.fixture(scope="module")
def ssh_login(tmp_path_factory: pytest.TempPathFactory, source_repo: Path, slurm_nodes_cluster: Any) -> Iterator[Pod]:
    server = start_sshd(tmp_path_factory.mktemp("slurm-sshd"), free_port(),
                        extra_config=(f"SetEnv SLURM_CONF={slurm_nodes_cluster.conf}",))
    try:
        yield from slurm_login(tmp_path_factory.mktemp("slurm-ssh-login"), source_repo, slurm_nodes_cluster,
                               FIXTURE_SETTINGS, server)
    finally:
        with_signal(server.pid, signal.SIGTERM)


@pytest.mark.slow
def test_the_login_node_over_ssh_runs_checks_starts_reports_and_fetches_a_campaign(ssh_login: Pod,
                                                                                    slurm_nodes_cluster: Any) -> None:
    # the fixture's bootstrap + checkout ran over SSH, where checkout found sbatch, squeue, sacct and scontrol
    assert ssh_login.kind == "ssh" and (ssh_login.root / "repo" / ".venv").is_dir()
    csv = write_csv(ssh_login.root.parent / "ssh.csv", "ssh-ok,config/ok.py,1,,,", "ssh-fail,config/fail.py,2,,,")
    view = _run_to_end(ssh_login, slurm_nodes_cluster, csv)
    assert view.returncode == 1, view.stderr  # a failed row: non-zero, as on a pod
    status = json.loads(view.stdout)
    rows = rows_by_id(status)
    assert (rows["ssh-ok"]["state"], rows["ssh-fail"]["state"]) == ("ok", "failed"), rows
    assert status["executor"]["kind"] == "slurm" and "no Slurm accounting" in status["executor"]["note"]
    fetched = ssh_login.wf("fetch-all", "--json", timeout=300)
    assert fetched.returncode == 0, fetched.stderr
    report = {row["run_id"]: row for row in json.loads(fetched.stdout)["runs"]}
    assert sorted(report) == ["ssh-fail", "ssh-ok"] and all(row["final"] for row in report.values()), report
    artifacts = ssh_login.root.parent / "artifacts"
    assert read_json(artifacts / "ssh-ok" / "summary.json")["ok"] is True
    assert read_json(artifacts / "ssh-ok" / "run_manifest.json")["slurm"]["node"] in ("n1", "n2")
    assert "giving up on purpose" in (artifacts / "ssh-fail" / "run.log").read_text()

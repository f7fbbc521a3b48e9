"""Parts of one sweep in one campaign: ``sweep-start --index-offset N --num-jobs M``, on the real one-node
Slurm cluster (tests/slurm_cluster.py, MaxArraySize 5) and on the tmux executor of a local pod.

A later part joins the campaign of the earlier ones (while they still run, on Slurm), the rows no part
submitted show ``unsubmitted``, sweep-status / fetch-all / sweep-resume cover every part, the
campaign's ``%`` throttle holds across parts, and a QOS's submit limit counts the jobs already queued
(a part's first chunk that does not fit is deferred, never refused).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Pod, cleanup_pod, make_pod, one_line_error, slurm_login, squeue, wait_until
from test_sweeps import (
    FIXTURE_SETTINGS,
    campaign_ids,
    campaigns_dir,
    fsm_state,
    read_json,
    rows_by_id,
    setup_pod,
    wait_campaign,
    write_csv,
)

TIMEOUT = 240


@pytest.fixture(scope="module")
def login(tmp_path_factory: pytest.TempPathFactory, source_repo: Path, slurm_cluster: Any) -> Iterator[Pod]:
    yield from slurm_login(tmp_path_factory.mktemp("parts-login"), source_repo, slurm_cluster, FIXTURE_SETTINGS)



def part(pod: Pod, csv: Path, offset: int | None, count: int | None, *settings: str) -> dict[str, Any]:
    options = [*(["--index-offset", str(offset)] if offset is not None else []),
               *(["--num-jobs", str(count)] if count is not None else [])]
    result = pod.wf(*settings, "sweep-start", "--csv", str(csv), "--json", *options)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def status(pod: Pod, campaign: str) -> tuple[int, dict[str, Any]]:
    result = pod.wf("sweep-status", "--campaign", campaign, "--json")
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, dict(json.loads(result.stdout))


def states(pod: Pod, campaign: str) -> dict[str, str]:
    return {run_id: row["state"] for run_id, row in rows_by_id(status(pod, campaign)[1]).items()}


def rows(prefix: str, n: int, extra: str = "sleep=0.3") -> list[str]:
    return [f"{prefix}-{i:02d},config/ok.py,{i},{extra},," for i in range(n)]


def test_later_parts_join_the_campaign_while_earlier_ones_run(login: Pod, slurm_cluster: Any, tmp_path: Path
                                                              ) -> None:
    csv = write_csv(tmp_path / "parts.csv", *rows("pa", 12, "steps=6 sleep=0.5"))
    first = part(login, csv, 0, 5)
    campaign = first["campaign_id"]
    assert first["part"]["part"] == 1 and first["part"]["join"] is None and first["rows"] == 5
    assert len(first["job_ids"]) == 1  # 5 rows: one array (MaxArraySize 5)
    code, view = status(login, campaign)
    assert view["parts"]["unsubmitted"] == 7 and view["parts"]["next_offset"] == 5
    assert [r["state"] for r in view["rows"][5:]] == ["unsubmitted"] * 7
    assert squeue(slurm_cluster, campaign)  # part 1 still queued or running: part 2 joins beside it
    second = part(login, csv, 5, 4)
    assert second["campaign_id"] == campaign and second["part"]["part"] == 2 and second["rows"] == 4
    assert second["part"]["join"] == campaign
    assert campaign_ids(login).count(campaign) == 1 and len(campaign_ids(login)) >= 1
    # a part whose rows were all submitted already: refused in one line, naming the next offset
    again = login.wf("sweep-start", "--csv", str(csv), "--index-offset", "2", "--num-jobs", "3")
    assert again.returncode == 7 and "--index-offset 9" in one_line_error(again), again.stderr
    text = login.wf("sweep-status", "--campaign", campaign)
    assert "parts: part 1: rows 1-5; part 2: rows 6-9" in text.stdout, text.stdout
    assert "3 row(s) not submitted yet" in text.stdout and "--index-offset 9" in text.stdout
    wait_until(lambda: not squeue(slurm_cluster, campaign), TIMEOUT, interval=0.5, what="parts 1-2 to end")
    wait_until(lambda: fsm_state(login) == "SWEEP_COMPLETED", 60, what="the parts submitted to conclude")
    code, view = status(login, campaign)
    assert code == 0 and view["totals"] == {"ok": 9, "unsubmitted": 3}, view["totals"]
    assert "incomplete" not in login.wf("sweep-status", "--campaign", campaign).stdout  # not a failure
    fetched = login.wf("fetch-all", "--campaign", campaign, "--json", timeout=300)
    assert fetched.returncode == 0, fetched.stderr
    report = json.loads(fetched.stdout)  # the parts submitted so far; the rest is not "missing"
    assert len(report["runs"]) == 9 and report["unsubmitted"] == ["pa-09", "pa-10", "pa-11"], report
    assert not report["missing"]
    third = part(login, csv, 9, None)  # --index-offset alone: to the last row
    assert third["campaign_id"] == campaign and third["rows"] == 3 and fsm_state(login) == "SWEEP_RUNNING"
    wait_until(lambda: status(login, campaign)[1]["totals"] == {"ok": 12}, TIMEOUT, interval=1,
               what="every part's rows to end ok")
    wait_until(lambda: fsm_state(login) == "SWEEP_COMPLETED", 60, what="the last part to conclude")
    record = read_json(campaigns_dir(login) / campaign / "parts.json")
    assert [p["rows"] for p in record["parts"]] == [[0, 1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11]]
    assert [p["generation"] for p in record["parts"]] == [1, 2, 3]
    manifest = read_json(campaigns_dir(login) / campaign / "manifest.json")
    assert len(manifest["rows"]) == 12  # the campaign is the whole sweep
    # fetch-all of the campaign brings every part's runs
    fetched = login.wf("fetch-all", "--campaign", campaign, "--json", timeout=300)
    assert fetched.returncode == 0, fetched.stderr
    report = json.loads(fetched.stdout)
    assert sorted(r["run_id"] for r in report["runs"]) == [f"pa-{i:02d}" for i in range(12)]
    assert not report["missing"]
    # every part's rows done: the sweep starts anew in parts as a new campaign
    fresh = part(login, csv, 0, 2)
    assert fresh["campaign_id"] != campaign and fresh["part"]["part"] == 1 and fresh["already_ok"] == 2
    wait_until(lambda: not squeue(slurm_cluster, fresh["campaign_id"]), TIMEOUT, interval=0.5,
               what="the fresh campaign to leave Slurm")


def test_the_throttle_holds_across_parts(login: Pod, slurm_cluster: Any, tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "thr.csv", *rows("th", 8, "steps=4 sleep=0.5"))
    settings = ("--set", "SLURM_ARRAY_PARALLELISM=2")
    campaign = part(login, csv, 0, 4, *settings)["campaign_id"]
    joined = part(login, csv, 4, 4, *settings)
    assert joined["campaign_id"] == campaign
    chunk = read_json(sorted((campaigns_dir(login) / campaign / "slurm").glob("chunk-002-*.json"))[0])
    assert any(w.startswith("--dependency=afterany:") for w in chunk["argv"]), chunk["argv"]  # chained to part 1
    most = 0
    deadline = time.monotonic() + TIMEOUT
    while squeue(slurm_cluster, campaign) and time.monotonic() < deadline:
        running = [line for line in squeue(slurm_cluster, campaign) if line.endswith("|RUNNING")]
        most = max(most, len(running))
        time.sleep(0.2)
    assert 1 <= most <= 2
    wait_until(lambda: status(login, campaign)[1]["totals"] == {"ok": 8}, 60, interval=1, what="all 8 ok")


def test_the_qos_submit_limit_counts_the_jobs_already_queued(login: Pod, slurm_cluster: Any, tmp_path: Path
                                                             ) -> None:
    slurm_cluster.run("sacctmgr", "-i", "add", "qos", "wfpart6", "MaxSubmitJobsPerUser=6")
    slurm_cluster.run("sacctmgr", "-i", "modify", "user", "root", "set", "qos+=wfpart6")
    wait_until(lambda: "QOS=wfpart6(" in slurm_cluster.run("scontrol", "show", "assoc_mgr", "flags=qos",
                                                           "qos=wfpart6", check=False).stdout, 30, interval=0.5,
               what="slurmctld to know the QOS")
    csv = write_csv(tmp_path / "qos.csv", *rows("qp", 9))
    held = ("--set", "SLURM_QOS=wfpart6", "--set", "SLURM_EXTRA_ARGS=--hold")
    first = part(login, csv, 0, 5, *held)  # 5 array tasks held in the queue: room for 1 more
    campaign = first["campaign_id"]
    second = part(login, csv, 5, 4, "--set", "SLURM_QOS=wfpart6")  # 4 > 6 - 5: deferred, not refused
    assert second["campaign_id"] == campaign and second["job_ids"] == []
    chunk = read_json(sorted((campaigns_dir(login) / campaign / "slurm").glob("chunk-002-*.json"))[0])
    assert chunk["deferred"] == "QOSMaxSubmitJobPerUserLimit" and not chunk["job_id"], chunk
    shown = [r.get("slurm") or "" for r in status(login, campaign)[1]["rows"][5:]]
    assert all(s.startswith("deferred (QOSMaxSubmitJobPerUserLimit)") for s in shown), shown
    slurm_cluster.run("scontrol", "release", first["job_ids"][0])
    wait_until(lambda: status(login, campaign)[1]["totals"] == {"ok": 9}, TIMEOUT, interval=1,
               what="part 1, then the deferred part 2, to end ok")
    assert read_json(sorted((campaigns_dir(login) / campaign / "slurm").glob("chunk-002-*.json"))[0])["job_id"]


def test_dry_run_of_a_part_and_bad_offsets(login: Pod, slurm_cluster: Any, tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "dry.csv", *[f"pd-{i},config/ok.py,{i},,,1" for i in range(8)])
    before = campaign_ids(login)
    result = login.wf("--dry-run", "sweep-start", "--csv", str(csv), "--index-offset", "2", "--num-jobs", "6")
    assert result.returncode == 0, result.stderr
    assert "part 1 would submit rows 3-8 of 8 and starts a new campaign" in result.stdout, result.stdout
    lines = [line for line in result.stdout.splitlines() if "sbatch --parsable" in line]
    assert len(lines) == 2 and "--array=0-4" in lines[0] and "--array=0-0" in lines[1], lines
    assert "would submit 6 row(s)" in result.stdout
    for options, words in ((("--index-offset", "8"), "--index-offset 8 is past the sweep's last row"),
                           (("--num-jobs", "0"), "--num-jobs 0 submits nothing"),
                           (("--index-offset", "-1"), "--index-offset")):
        bad = login.wf("sweep-start", "--csv", str(csv), *options)
        assert bad.returncode == 2 and words in bad.stderr, bad.stderr
    assert campaign_ids(login) == before
    assert not slurm_cluster.run("squeue", "-h", "--name=pd-0").stdout.strip()


def test_sweep_start_at_and_sweep_limit_are_parts_like_the_options(login: Pod, slurm_cluster: Any, tmp_path: Path
                                                                    ) -> None:
    """SWEEP_START_AT / SWEEP_LIMIT (keys) submit a part exactly as --index-offset / --num-jobs; an option
    given wins over its key; bad values get one line and submit nothing."""
    csv = write_csv(tmp_path / "keys.csv", *rows("pk", 7))
    first = part(login, csv, None, None, "--set", "SWEEP_LIMIT=3")
    campaign = first["campaign_id"]
    assert first["part"]["part"] == 1 and first["part"]["rows"] == [0, 1, 2] and first["rows"] == 3
    text = login.wf("sweep-status", "--campaign", campaign).stdout
    assert "4 row(s) not submitted yet" in text and "--index-offset 3 (or SWEEP_START_AT=pk-03)" in text, text
    second = part(login, csv, None, None, "--set", "SWEEP_START_AT=pk-03", "--set", "SWEEP_LIMIT=2")
    assert second["campaign_id"] == campaign and second["part"]["part"] == 2 and second["part"]["rows"] == [3, 4]
    # a part already submitted: refused in one line naming the next offset and its run_id
    again = login.wf("--set", "SWEEP_START_AT=pk-01", "--set", "SWEEP_LIMIT=2", "sweep-start", "--csv", str(csv))
    assert again.returncode == 7 and "--index-offset 5 (SWEEP_START_AT=pk-05" in one_line_error(again), again.stderr
    before = campaign_ids(login)
    for settings, words in ((("--set", "SWEEP_START_AT=pk-99"), "SWEEP_START_AT 'pk-99' is not a run_id"),
                            (("--set", "SWEEP_LIMIT=0"), "SWEEP_LIMIT='0' is below the minimum 1"),
                            (("--set", "SWEEP_LIMIT=many"), "SWEEP_LIMIT")):
        bad = login.wf(*settings, "sweep-start", "--csv", str(csv))
        assert bad.returncode == 2 and words in one_line_error(bad), bad.stderr
    assert campaign_ids(login) == before
    # --index-offset wins over SWEEP_START_AT; SWEEP_LIMIT still counts the part's rows
    third = part(login, csv, 5, None, "--set", "SWEEP_START_AT=pk-00", "--set", "SWEEP_LIMIT=1")
    assert third["campaign_id"] == campaign and third["part"]["rows"] == [5]
    last = part(login, csv, None, None, "--set", "SWEEP_START_AT=pk-06")
    assert last["campaign_id"] == campaign and last["part"]["part"] == 4 and last["part"]["rows"] == [6]
    wait_until(lambda: status(login, campaign)[1]["totals"] == {"ok": 7}, TIMEOUT, interval=1,
               what="every key-form part's rows to end ok")
    manifest = read_json(campaigns_dir(login) / campaign / "manifest.json")
    assert len(manifest["rows"]) == 7  # the campaign is the whole sweep, not the first part's rows
    wait_until(lambda: fsm_state(login) == "SWEEP_COMPLETED", 60, what="the last part to conclude")


# ----------------------------------------------------------------------------- the tmux executor


@pytest.fixture
def tmux_pod(tmp_path: Path, source_repo: Path) -> Iterator[Pod]:
    pod = make_pod("local", tmp_path / "tmux", source_repo, None)
    try:
        setup_pod(pod, RUN_RETRIES="0")
        yield pod
    finally:
        cleanup_pod(pod)


def test_tmux_executor_takes_parts_one_after_another(tmux_pod: Pod, tmp_path: Path) -> None:
    pod = tmux_pod
    csv = write_csv(tmp_path / "tp.csv", "tp-0,config/ok.py,1,steps=20 sleep=0.3,,", "tp-1,config/ok.py,2,,,",
                    "tp-2,config/fail.py,3,,,", "tp-3,config/ok.py,4,,,")
    first = part(pod, csv, None, 2)  # --num-jobs alone: from row 0
    campaign = first["campaign_id"]
    assert first["rows"] == 2 and first["part"]["rows"] == [0, 1]
    refused = pod.wf("sweep-start", "--csv", str(csv), "--index-offset", "2")
    assert refused.returncode == 7 and "still running its earlier part in tmux" in one_line_error(refused)
    wait_campaign(pod, campaign)
    assert states(pod, campaign) == {"tp-0": "ok", "tp-1": "ok", "tp-2": "unsubmitted", "tp-3": "unsubmitted"}
    assert fsm_state(pod) == "SWEEP_COMPLETED"
    dry = pod.wf("--dry-run", "sweep-start", "--csv", str(csv), "--index-offset", "2")
    assert dry.returncode == 0 and f"part 2 would submit rows 3-4 of 4 and joins campaign {campaign}" in dry.stdout
    assert "would start a campaign of 2 row(s)" in dry.stdout and "row 4 tp-2" in dry.stdout, dry.stdout
    assert "tp-0" not in dry.stdout.split("would start", 1)[1]  # only the part's rows are planned
    second = part(pod, csv, 2, None)
    assert second["campaign_id"] == campaign and second["part"]["part"] == 2
    wait_until(lambda: read_json(campaigns_dir(pod) / campaign / "executor.json").get("generation") == 2
               and read_json(campaigns_dir(pod) / campaign / "executor.json").get("state") == "finished", 120,
               interval=0.5, what="part 2's executor to end")
    code, view = status(pod, campaign)
    assert code == 1 and {r: v["state"] for r, v in rows_by_id(view).items()} == {
        "tp-0": "ok", "tp-1": "ok", "tp-2": "failed", "tp-3": "ok"}
    assert rows_by_id(view)["tp-0"]["attempts"] == 1  # part 2 ran its own rows only
    assert fsm_state(pod) == "SWEEP_FAILED"
    resumed = pod.wf("sweep-resume", "--campaign", campaign, "--json")
    assert resumed.returncode == 0 and json.loads(resumed.stdout)["rerun"] == ["tp-2"], resumed.stderr


def test_tmux_executor_takes_key_form_parts(tmux_pod: Pod, tmp_path: Path) -> None:
    pod = tmux_pod
    csv = write_csv(tmp_path / "tk.csv", "tk-0,config/ok.py,1,,,", "tk-1,config/ok.py,2,,,", "tk-2,config/ok.py,3,,,")
    first = part(pod, csv, None, None, "--set", "SWEEP_LIMIT=1")
    campaign = first["campaign_id"]
    assert first["rows"] == 1 and first["part"]["rows"] == [0]
    wait_campaign(pod, campaign)
    assert states(pod, campaign) == {"tk-0": "ok", "tk-1": "unsubmitted", "tk-2": "unsubmitted"}
    second = part(pod, csv, None, None, "--set", "SWEEP_START_AT=tk-1")
    assert second["campaign_id"] == campaign and second["part"]["part"] == 2 and second["part"]["rows"] == [1, 2]
    wait_until(lambda: states(pod, campaign) == {"tk-0": "ok", "tk-1": "ok", "tk-2": "ok"}, 120, interval=0.5,
               what="part 2's rows to end ok")


# ----------------------------------------------------------------------------- rows with nodes > 1


NODES_HEADER = "run_id,config,seed,overrides,notes,gpus,nodes"


def test_multinode_rows_dry_run_renders_srun_torchrun_c10d_and_the_start_refuses(login: Pod, slurm_cluster: Any,
                                                                                   tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "mn.csv", "mn-a,config/ok.py,1,lr=0.1,,2,2", "mn-b,config/ok.py,2,,,2,2",
                    "mn-c,config/ok.py,3,,,1,", header=NODES_HEADER)
    result = login.wf("--dry-run", "sweep-start", "--csv", str(csv))
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "sbatch --parsable" in line]
    assert len(lines) == 2, lines  # 2 two-node rows, then the one-node row: two arrays
    assert "--nodes=2 --ntasks-per-node=1" in lines[0] and "--gpus-per-node=2" in lines[0]
    assert "--nodes=" not in lines[1]
    run = next(line for line in result.stdout.splitlines() if "on 2 nodes each" in line)
    assert "srun --nodes=2 --ntasks-per-node=1 --kill-on-bad-exit=1 " in run, run
    for word in ("-m torch.distributed.run", "--nnodes=2", "--rdzv_backend=c10d", "'--rdzv_endpoint=$FIRST_NODE:29500'",
                 "--nproc_per_node=2", "seed=1", "lr=0.1"):
        assert word in run, (word, run)
    assert "--standalone" not in run
    assert "sweep-start will refuse this: row 2 (mn-a) needs 2 nodes but the default partition has 1" in result.stdout
    assert "slurm-task" in result.stdout  # the rendered job script
    before = campaign_ids(login)
    refused = login.wf("sweep-start", "--csv", str(csv))
    assert refused.returncode == 2 and "needs 2 nodes but the default partition has 1" in one_line_error(refused)
    assert campaign_ids(login) == before
    bad = write_csv(tmp_path / "bad-nodes.csv", "mn-x,config/ok.py,1,,,1,0", header=NODES_HEADER)
    result = login.wf("validate", "--csv", str(bad))
    assert result.returncode == 2 and "nodes" in one_line_error(result), result.stderr


def test_multinode_argv_and_a_tmux_pod_refuses_multinode_rows(tmux_pod: Pod, tmp_path: Path) -> None:
    from helpers.pod.executors.slurm_nodes import multinode_argv

    argv = ["py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "train.py", "c.py", "seed=1"]
    assert multinode_argv(argv, 1, "n1", "7") == argv
    assert multinode_argv(argv, 3, "n1", "7") == [
        "srun", "--nodes=3", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "py", "-m", "torch.distributed.run",
        "--nnodes=3", "--rdzv_backend=c10d", "--rdzv_endpoint=n1:29500", "--rdzv_id=7", "--nproc_per_node=4",
        "train.py", "c.py", "seed=1"]
    csv = write_csv(tmp_path / "tm.csv", "tm-a,config/ok.py,1,,,1,2", header=NODES_HEADER)
    result = tmux_pod.wf("sweep-start", "--csv", str(csv))
    assert result.returncode == 2 and "rows with nodes > 1 run on Slurm only" in one_line_error(result)
    assert not campaign_ids(tmux_pod)


def test_the_nodes_column_keeps_the_spec_hash_of_one_node_rows(tmp_path: Path) -> None:
    from helpers.pod.runs import spec_hash
    from helpers.sweep_csv import parse_sweep_csv

    (tmp_path / "c.py").write_text("")
    csv = write_csv(tmp_path / "n.csv", "a,c.py,1,,,1,", "b,c.py,1,,,1,1", "c,c.py,1,,,1,4", header=NODES_HEADER)
    rows = {row.run_id: row for row in parse_sweep_csv(csv, tmp_path)}
    assert rows["a"].nodes is None and rows["b"].nodes == 1 and rows["c"].nodes == 4
    assert "nodes" not in rows["b"].spec() and rows["c"].spec()["nodes"] == 4
    assert spec_hash(rows["a"].spec()) == spec_hash(rows["b"].spec()) != spec_hash(rows["c"].spec())
    old = write_csv(tmp_path / "o.csv", "a,c.py,1,,,1")  # the same row before the column existed
    assert spec_hash(parse_sweep_csv(old, tmp_path)[0].spec()) == spec_hash(rows["a"].spec())

"""archive: lifecycle states (--list-only), a finished campaign moved under _archive/ next to a running one
(which is untouched, as is a directory the tool did not create), --dry-run and filters move nothing,
--restore moves it back; bad input is one line."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from conftest import Pod, cleanup_pod, make_pod, one_line_error, wait_until
from test_leaderboard import run_campaign, setup_pod


def listing(pod: Pod) -> dict[str, Any]:
    result = pod.wf("archive", "--list-only", "--json")
    assert result.returncode == 0, result.stderr
    reply: dict[str, Any] = json.loads(result.stdout)
    return reply


def states(reply: dict[str, Any]) -> dict[str, str]:
    found = {c["campaign_id"]: c["lifecycle"] for c in reply["campaigns"]}
    found.update({c["campaign_id"]: "archived" for c in reply["archived"]})
    return found


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_archive_finished_next_to_running_then_restore(tmp_path: Path, source_repo: Path) -> None:
    pod = make_pod("local", tmp_path, source_repo, None)
    try:
        setup_pod(pod, tmp_path)
        old = run_campaign(pod, tmp_path, "ar-ok,config/ok.py,1,,ok,1", "ar-fail,config/fail.py,2,,fails,1")
        foreign = pod.outputs / "mine"
        foreign.mkdir()
        (foreign / "notes.txt").write_text("not the tool's\n")
        campaigns = pod.outputs / "_campaigns"
        before = {"campaign": tree(campaigns / old), "ar-ok": tree(pod.outputs / "ar-ok"),
                  "ar-fail": tree(pod.outputs / "ar-fail")}
        sheet = tmp_path / "live.csv"
        sheet.write_text("run_id,config,seed,overrides,notes,gpus\nar-live,config/slow.py,3,steps=400,runs,1\n")
        started = pod.wf("sweep-start", "--csv", str(sheet), "--json")
        assert started.returncode == 0, started.stderr
        live = json.loads(started.stdout)["campaign_id"]
        wait_until(lambda: (pod.outputs / "ar-live" / "metrics.jsonl").exists(), 120, interval=0.5,
                   what="the live row to train")
        assert states(listing(pod)) == {old: "failed", live: "active"}

        for args in (("--dry-run",), ("--status", "success"), ("--older-than", "3")):
            result = pod.wf("archive", *args)
            assert result.returncode == 0, result.stderr
            assert (campaigns / old / "manifest.json").is_file() and (pod.outputs / "ar-ok").is_dir()
        assert "would archive 1 campaign(s)" in pod.wf("archive", "--dry-run").stdout

        record = campaigns / old / "executor.json"  # as if it ended a month ago
        data = json.loads(record.read_text())
        data["ended_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 30 * 86400))
        record.write_text(json.dumps(data))
        before["campaign"] = tree(campaigns / old)
        reply = listing(pod)
        assert states(reply)[old] == "stale"
        assert next(c for c in reply["campaigns"] if c["campaign_id"] == old)["outcome"] == "failed"

        live_files = set(tree(campaigns / live))
        result = pod.wf("archive", "--older-than", "20", "--status", "failed")
        assert result.returncode == 0, result.stderr
        assert f"archived 1 campaign(s) under {pod.outputs / '_archive'}" in result.stdout
        home = pod.outputs / "_archive" / old
        assert tree(home / "campaign") == before["campaign"]
        assert tree(home / "runs" / "ar-ok") == before["ar-ok"] and tree(home / "runs" / "ar-fail") == before["ar-fail"]
        assert not (campaigns / old).exists() and not (pod.outputs / "ar-ok").exists()
        assert (foreign / "notes.txt").read_text() == "not the tool's\n"
        assert live_files <= set(tree(campaigns / live)) and (pod.outputs / "ar-live" / "run.log").is_file()
        assert json.loads((pod.outputs / "ar-live" / "status.json").read_text())["state"] == "running"
        index = json.loads((pod.outputs / "_archive" / "index.json").read_text())
        assert index["campaigns"][old]["runs"] == ["ar-ok", "ar-fail"]
        assert states(listing(pod)) == {old: "archived", live: "active"}
        gone = pod.wf("sweep-status", "--campaign", old)
        assert gone.returncode == 5

        restored = pod.wf("archive", "--restore", old)
        assert restored.returncode == 0, restored.stderr
        assert tree(campaigns / old) == before["campaign"]
        assert tree(pod.outputs / "ar-ok") == before["ar-ok"] and not home.exists()
        assert states(listing(pod))[old] == "stale"
        for args, code, words in ((("--restore", old), 5, "no archived campaign"),
                                  (("--restore", "../x"), 2, "campaign id"),
                                  (("--restore", old, "--list-only"), 2, "takes no")):
            bad = pod.wf("archive", *args)
            assert bad.returncode == code and words in one_line_error(bad), bad.stderr
        stop = pod.wf("sweep-stop", "--campaign", live)
        assert stop.returncode == 0, stop.stderr

        # a later campaign with ar-ok's row (same spec: ok already, not run again) keeps ar-ok where it is
        later = run_campaign(pod, tmp_path, "ar-ok,config/ok.py,1,,ok,1")
        result = pod.wf("archive", "--status", "failed", "--json")
        assert result.returncode == 0, result.stderr
        moved = {c["campaign_id"]: c for c in json.loads(result.stdout)["moved"]}
        assert set(moved) == {old, live} and moved[old]["runs"] == ["ar-fail"]
        assert moved[old]["left"] == [{"run_id": "ar-ok", "why": f"also a row of campaign {later}"}]
        assert tree(pod.outputs / "ar-ok") == before["ar-ok"] and not (pod.outputs / "ar-fail").exists()
        assert states(listing(pod)) == {old: "archived", live: "archived", later: "success"}
        archived_latest = pod.wf("archive", "--status", "success")  # the latest campaign archived too
        assert archived_latest.returncode == 0, archived_latest.stderr
        latest = pod.wf("sweep-status")  # the latest pointer names an archived campaign: it says so, and how back
        assert latest.returncode == 5, latest.stderr
        assert f"the latest campaign {later} was archived; restore it with workflow.sh archive --restore {later}" in (
            one_line_error(latest))
    finally:
        cleanup_pod(pod)

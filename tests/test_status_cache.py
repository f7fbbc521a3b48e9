"""sweep-status of a concluded campaign served from <campaign dir>/status-cache.json until a file its
table came from changes, and the compact wire format undone on the client (--json as before).

Campaigns are laid out as the executor leaves them (manifest.json, executor.json, index.json, each
run's summary.json and campaign.json); the real pod agent reads them through workflow.sh."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import Pod

CAMPAIGN = "20261122-000000-cache0"
COLUMNS = ("run_id", "state", "attempts", "duration_s", "failure_class", "val_loss", "from_campaign",
           "reason_line", "log", "recovered_from")


def build(pod: Pod, count: int, indexed: int, executor: dict[str, Any] | None = None) -> Path:
    """A finished campaign of ``count`` runs (every 4th failed); the first ``indexed`` in index.json, the
    rest answered by their own run files only."""
    cdir = pod.outputs / "_campaigns" / CAMPAIGN
    cdir.mkdir(parents=True)
    rows, index = [], {}
    for i in range(count):
        run_id = f"r-{i:03d}"
        rows.append({"run_id": run_id, "row_number": i + 2, "config": "c.py", "seed": i, "overrides": [],
                     "gpus": 1, "spec_hash": f"{i:016x}"})
        rdir = pod.outputs / run_id
        rdir.mkdir(parents=True)
        ok = i % 4 != 3
        summary = {"schema_version": 1, "run_id": run_id, "campaign_id": CAMPAIGN, "ok": ok,
                   "state": "success" if ok else "failed", "failure_class": None if ok else "nonzero_exit",
                   "attempts": 1, "attempt_history": [], "duration_s": 3.5, "spec_hash": f"{i:016x}",
                   "reason_line": None if ok else "exit 1", "log": str(rdir / "run.log"),
                   "final_metrics": {"val_loss": 2.5 + i}}
        (rdir / "summary.json").write_text(json.dumps(summary))
        (rdir / "campaign.json").write_text(json.dumps({"schema_version": 1, "campaign_id": CAMPAIGN,
                                                        "spec_hash": f"{i:016x}", "history": []}))
        if i < indexed:
            index[run_id] = {"ok": ok, "state": summary["state"], "failure_class": summary["failure_class"],
                             "attempts": 1, "duration_s": 3.5, "reason_line": summary["reason_line"],
                             "log": summary["log"], "val_loss": 2.5 + i}
    (cdir / "manifest.json").write_text(json.dumps({"schema_version": 1, "campaign_id": CAMPAIGN,
                                                    "created_utc": "2026-11-22T00:00:00.000Z", "rows": rows,
                                                    "config": {}}))
    (cdir / "executor.json").write_text(json.dumps(executor or {"state": "finished", "slots": ["0"],
                                                               "ended_utc": "2026-11-22T01:00:00.000Z"}))
    (cdir / "index.json").write_text(json.dumps(index))
    (pod.outputs / "_control").mkdir(parents=True, exist_ok=True)
    (pod.outputs / "_control" / "latest_campaign").write_text(CAMPAIGN + "\n")
    return cdir


def status(pod: Pod) -> dict[str, Any]:
    shown = pod.wf("sweep-status", "--json")
    assert shown.returncode in (0, 1), shown.stderr  # 1: the campaign has failed rows
    assert "Traceback" not in shown.stderr
    found: dict[str, Any] = json.loads(shown.stdout)
    return found


def stored(cdir: Path) -> tuple[Path, dict[str, Any]]:
    """The stored table's file (named in status-cache.json by its hash) and the table."""
    digest = json.loads((cdir / "status-cache.json").read_text())["table_hash"]
    path = cdir / f"status-table-{digest[:16]}.json"
    return path, json.loads(path.read_text())


def states(reply: dict[str, Any]) -> dict[str, str]:
    return {row["run_id"]: row["state"] for row in reply["rows"]}


def test_finished_campaign_is_served_from_the_cache_until_a_row_file_changes(local_pod: Pod):
    cdir = build(local_pod, 8, indexed=4)
    first = status(local_pod)
    cache = cdir / "status-cache.json"
    assert cache.is_file()
    assert first == status(local_pod)  # the same answer from the cache
    assert states(first) == {f"r-{i:03d}": ("failed" if i % 4 == 3 else "ok") for i in range(8)}

    # served from the cache, not re-read: a (tampered) stored table is what the next call shows
    table_file, table = stored(cdir)
    table["rows"][0][table["columns"].index("state")] = "from-the-cache"
    table_file.write_text(json.dumps(table))
    assert states(status(local_pod))["r-000"] == "from-the-cache"

    # a row the index does not answer: its run files are watched (here its summary turns failed)
    summary_file = local_pod.outputs / "r-005" / "summary.json"
    summary = json.loads(summary_file.read_text())
    summary.update(ok=False, state="failed", failure_class="oom", reason_line="CUDA out of memory")
    summary_file.write_text(json.dumps(summary))
    again = status(local_pod)
    assert states(again)["r-000"] == "ok"  # rebuilt from the files
    row = next(r for r in again["rows"] if r["run_id"] == "r-005")
    assert (row["state"], row["failure_class"], row["reason_line"]) == ("failed", "oom", "CUDA out of memory")

    # a run directory that disappears is seen too (the row becomes missing, the campaign incomplete)
    for name in ("summary.json", "campaign.json"):
        (local_pod.outputs / "r-006" / name).unlink()
    shown = local_pod.wf("sweep-status")
    assert shown.returncode == 1 and "incomplete" in shown.stdout
    assert states(status(local_pod))["r-006"] == "missing"

    # and the index: a row concluded again there
    index = json.loads((cdir / "index.json").read_text())
    index["r-001"]["state"], index["r-001"]["ok"] = "failed", False
    (cdir / "index.json").write_text(json.dumps(index))
    assert states(status(local_pod))["r-001"] == "failed"


def test_a_live_campaign_is_never_cached(local_pod: Pod):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        from_proc = Path(f"/proc/{sleeper.pid}/stat").read_text().rsplit(")", 1)[1].split()
        cdir = build(local_pod, 3, indexed=3, executor={
            "state": "running", "pid": sleeper.pid, "start_time": int(from_proc[19]), "slots": ["0"],
            "heartbeat_utc": "2026-11-22T00:30:00.000Z", "generation": 1})
        reply = status(local_pod)
        assert reply["executor"]["state"] == "running", reply["executor"]
        assert not (cdir / "status-cache.json").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    reply = status(local_pod)  # the executor is gone: lost, told as ever, and now it may be cached
    assert reply["executor"]["state"] == "lost"
    assert (cdir / "status-cache.json").exists()


def test_json_rows_keep_every_column_while_the_wire_is_compact(local_pod: Pod):
    cdir = build(local_pod, 40, indexed=40)
    reply = status(local_pod)
    assert all(tuple(row) == ("run_id", *COLUMNS[1:]) or set(COLUMNS) <= set(row) for row in reply["rows"])
    first = next(row for row in reply["rows"] if row["run_id"] == "r-000")
    assert first["log"] == str(local_pod.outputs / "r-000" / "run.log")
    assert first["from_campaign"] is None and first["recovered_from"] is None
    assert "empty_columns" not in reply and "columns" not in reply
    table_file, table = stored(cdir)
    assert "from_campaign" in table["empty_columns"] and "from_campaign" not in table["columns"]
    assert all(row[table["columns"].index("log")] == "" for row in table["rows"])  # the default path
    assert os.path.getsize(table_file) < 40 * 80


def test_an_unchanged_campaign_is_answered_unchanged_and_its_text_printed_again(local_pod: Pod):
    """The text a concluded campaign's status printed is kept on the client with the reply's hashes; the
    next call sends them and the pod, finding both the same, answers `unchanged` without reading the
    stored table: the same text and exit code again. A change on the pod gives the new table."""
    cdir = build(local_pod, 12, indexed=6)
    first = local_pod.wf("sweep-status")
    assert first.returncode == 1 and "r-003" in first.stdout, first.stderr  # every 4th row failed
    assert first.stdout == local_pod.wf("sweep-status").stdout  # (the table is stored now)
    table_file, _ = stored(cdir)
    table_file.unlink()  # not read when the client has it: the answer is `unchanged`, the text the kept one
    again = local_pod.wf("sweep-status")
    assert (again.returncode, again.stdout) == (1, first.stdout), again.stderr
    assert not table_file.exists()  # nothing was rebuilt (a rebuild stores the same table again)
    reply = json.loads(local_pod.wf("sweep-status", "--json").stdout)  # --json: the whole table, rebuilt
    assert len(reply["rows"]) == 12 and table_file.exists() and "Traceback" not in again.stderr
    # a row changed on the pod: a new table and a new text (and the kept text follows it)
    summary_file = local_pod.outputs / "r-007" / "summary.json"
    summary = json.loads(summary_file.read_text())
    summary.update(ok=True, state="success", failure_class=None, reason_line=None)
    summary_file.write_text(json.dumps(summary))
    changed = local_pod.wf("sweep-status")
    assert changed.returncode == 1 and changed.stdout != first.stdout
    assert [line.split()[1] for line in changed.stdout.splitlines() if line.startswith("r-007")] == ["ok"]
    assert local_pod.wf("sweep-status").stdout == changed.stdout


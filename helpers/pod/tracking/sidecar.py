"""The campaign's tracking sidecar: ``<run venv>/bin/python -I agent.pyz tracking-sidecar CAMPAIGN_DIR [--once]``.

Runs in the run venv (mlflow is imported here and only here). It creates the campaign's parent run
(or attaches to MLFLOW_PARENT_RUN_ID) and one child run per row before the executor starts the row,
then tails each row's metrics.jsonl into its child with log_batch from a byte cursor, sets the final
status from summary.json (FINISHED ok, FAILED + failure_class, KILLED cancelled or never run), logs
summary.json and run_manifest.json as artifacts and the campaign totals on the parent. Any error of
the server leaves the cursors where they are: the next pass sends the same lines again. It exits
once the executor has ended and everything is sent, or TRACKING_FLUSH_SECS after the executor ended
(``workflow.sh track`` resends the rest). ``--once``: one pass over a finished campaign, a JSON line.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import sys
import time
from typing import Any, Dict, List, Optional

from .. import attempts
from ..jsonio import read_json, utc_now, write_json
from ..taskstate import is_terminal, read_status
from . import LOCK, LOG, RECORD, campaign_config, enabled, record
from . import mlflow_ops as ops
from .cursor import batches, read_new
from .mlflow_ops import redact_uri
from .params import row_params

SCHEMA_VERSION = 1
POLL_SECS = 1.0
DEFAULT_FLUSH_SECS = 600
CREATE_WORKERS = 8  # child runs created at once on the sidecar's first pass


def experiment_name(config: Dict[str, str]) -> str:
    name = config.get("MLFLOW_EXPERIMENT", "").strip()
    if name:
        return name
    source = config.get("REPO_URL", "").rstrip("/") or config.get("OPS_REMOTE_REPO", "").rstrip("/") or "workflow"
    base = re.split(r"[/:]", source)[-1]
    return base[:-4] if base.endswith(".git") else base or "workflow"


def row_record_path(campaign_path: str, run_id: str) -> str:
    return os.path.join(campaign_path, "tracking", f"{run_id}.json")


def _read(path: str) -> Dict[str, Any]:
    found = read_json(path, "tracking record") if os.path.exists(path) else None
    return found if isinstance(found, dict) else {}


def final_status(state: str) -> str:
    return {"success": "FINISHED", "cancelled": "KILLED"}.get(state, "FAILED")


def _ms(utc: Optional[str]) -> Optional[int]:
    from ..jsonio import parse_utc

    seconds = parse_utc(utc) if utc else None
    return int(seconds * 1000) if seconds else None


class Sidecar:
    def __init__(self, campaign_path: str, once: bool) -> None:
        from mlflow.tracking import MlflowClient

        self.dir = os.path.abspath(campaign_path)
        self.once = once
        manifest = read_json(os.path.join(self.dir, "manifest.json"), "campaign manifest") or {}
        self.manifest: Dict[str, Any] = manifest if isinstance(manifest, dict) else {}
        self.campaign_id = str(self.manifest.get("campaign_id"))
        self.config: Dict[str, str] = campaign_config(self.dir, self.manifest)
        self.uri = self.config.get("MLFLOW_TRACKING_URI", "").strip()
        self.outputs = os.path.abspath(os.path.expanduser(self.config.get("OPS_REMOTE_OUTPUTS_DIR", "")))
        self.client = MlflowClient(tracking_uri=self.uri)
        self.stop = False
        self.git: Optional[Dict[str, Any]] = None

    # -- records
    def say(self, text: str) -> None:
        sys.stderr.write(f"[{utc_now()[11:19]}] {redact_uri(text)}\n")
        sys.stderr.flush()

    def top(self) -> Dict[str, Any]:
        return record(self.dir)

    def save_top(self, **fields: Any) -> None:
        write_json(os.path.join(self.dir, RECORD), {**self.top(), "schema_version": SCHEMA_VERSION, **fields},
                   durable=False)

    def save_row(self, run_id: str, rec: Dict[str, Any]) -> None:
        path = row_record_path(self.dir, run_id)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_json(path, rec, durable=False)

    # -- the tree
    def ensure_parent(self) -> Dict[str, Any]:
        top = self.top()
        if top.get("parent_run_id") and top.get("uri") == redact_uri(self.uri):
            return top
        attach = self.config.get("MLFLOW_PARENT_RUN_ID", "").strip()
        if attach:
            run = self.client.get_run(attach)
            parent, experiment = attach, run.info.experiment_id
            self.client.set_tag(parent, f"workflow.campaign.{self.campaign_id}", "attached")
        else:
            name = experiment_name(self.config)
            found = self.client.get_experiment_by_name(name)
            experiment = found.experiment_id if found else self.client.create_experiment(name)
            mine = {"workflow.campaign_id": self.campaign_id, "workflow.kind": "campaign"}
            # a create whose reply was lost made the run anyway: adopt it (mlflow_ops.py)
            adopted = ops.find_run(self.client, experiment, mine) if top.get("creating_parent") else None
            if not adopted:
                self.save_top(creating_parent=utc_now())
            parent = adopted or self.client.create_run(experiment, run_name=f"campaign {self.campaign_id}", tags={
                **mine, **self.common_tags()}).info.run_id
        self.say(f"parent run {parent} in experiment {experiment}" + (" (attached)" if attach else ""))
        self.save_top(parent_run_id=parent, experiment_id=experiment, uri=redact_uri(self.uri), attached=bool(attach),
                      campaign_id=self.campaign_id, status="RUNNING", creating_parent=None)
        return self.top()

    def common_tags(self) -> Dict[str, str]:
        from ..executors import kind_of
        from ..runs import git_provenance

        if self.git is None:
            self.git = git_provenance(os.path.expanduser(self.config.get("OPS_REMOTE_REPO", ""))) or {}
        target = self.config.get("LIUM_TARGET") or self.config.get("OPS_DEFAULT_HOST") or "local"
        tags = {"workflow.target": target, "workflow.executor": kind_of(self.config)}
        if self.git.get("git_sha"):
            tags["mlflow.source.git.commit"] = str(self.git["git_sha"])
            tags["git.sha"] = str(self.git["git_sha"])
        if self.git.get("dirty") is not None:
            tags["git.dirty"] = "1" if self.git["dirty"] else "0"
        return tags

    def ensure_child(self, row: Dict[str, Any], top: Dict[str, Any]) -> Dict[str, Any]:
        run_id = str(row["run_id"])
        rec = _read(row_record_path(self.dir, run_id))
        if rec.get("mlflow_run_id") and rec.get("parent_run_id") == top["parent_run_id"]:
            return rec
        mine = {"mlflow.parentRunId": top["parent_run_id"], "workflow.campaign_id": self.campaign_id,
                "workflow.run_id": run_id}
        creating = rec.get("creating") and rec.get("parent_run_id") == top["parent_run_id"]
        adopted = ops.find_run(self.client, top["experiment_id"], mine) if creating else None  # a lost reply's run
        if not adopted:
            self.save_row(run_id, {"run_id": run_id, "parent_run_id": top["parent_run_id"], "creating": utc_now()})
        child = adopted or self.client.create_run(top["experiment_id"], run_name=run_id, tags={
            **mine, "workflow.attempt": "0", **self.common_tags()}).info.run_id
        ops.log_params(self.client, child, row_params(row))  # the same again is a no-op for MLflow
        rec = {"schema_version": SCHEMA_VERSION, "run_id": run_id, "mlflow_run_id": child,
               "parent_run_id": top["parent_run_id"], "experiment_id": top["experiment_id"],
               "campaign_id": self.campaign_id, "cursor": 0, "lines": 0, "points": 0, "attempt": 0,
               "status": "RUNNING", "final_ended_utc": None, "created_utc": utc_now()}
        self.save_row(run_id, rec)
        return rec

    def ensure_children(self, rows: List[Dict[str, Any]], top: Dict[str, Any]) -> List[Dict[str, Any]]:
        """Every row's child run, the missing ones created side by side (CREATE_WORKERS requests at a time),
        so a campaign's children all exist a few round trips after the sidecar starts: the executor waits
        for them once, before its first row, and no row waits (tracking/__init__.py wait_children)."""
        from concurrent.futures import ThreadPoolExecutor

        known = [_read(row_record_path(self.dir, str(row["run_id"]))) for row in rows]
        missing = [row for row, rec in zip(rows, known) if not (rec.get("mlflow_run_id") and rec.get(
            "parent_run_id") == top["parent_run_id"])]
        if len(missing) > 1:
            self.common_tags()  # git provenance once, before the threads
            with ThreadPoolExecutor(max_workers=min(CREATE_WORKERS, len(missing))) as pool:
                list(pool.map(lambda row: self.ensure_child(row, top), missing))  # an error is raised here
        return [self.ensure_child(row, top) for row in rows]  # each a record read, now that all exist

    # -- one row
    def ok_elsewhere(self, row: Dict[str, Any]) -> bool:
        if os.path.exists(row_record_path(self.dir, str(row["run_id"]))):
            return False
        done = _read(os.path.join(self.run_path(str(row["run_id"])), "summary.json"))
        return bool(done.get("ok")) and done.get("campaign_id") != self.campaign_id and done.get(
            "spec_hash") == row.get("spec_hash")

    def run_path(self, run_id: str) -> str:
        return os.path.join(self.outputs, run_id)

    def out_dir(self, run_id: str) -> str:
        manifest = _read(os.path.join(self.run_path(run_id), "run_manifest.json"))
        out_dir = manifest.get("out_dir") if manifest.get("campaign_id") == self.campaign_id else None
        return str(out_dir or self.run_path(run_id))

    def metrics_file(self, run_id: str) -> str:
        return os.path.join(self.out_dir(run_id), "metrics.jsonl")

    def pump(self, run_id: str, rec: Dict[str, Any]) -> int:
        """Send the new complete lines; the cursor moves after each accepted batch. Lines left behind."""
        from mlflow.entities import Metric

        path = self.metrics_file(run_id)
        cursor = int(rec.get("cursor") or 0)
        data, size = read_new(path, cursor)
        if cursor > size:  # the file was replaced: start over
            rec.update(cursor=0, lines=0)
            cursor = 0
        if not data:
            return 0
        stamp = ops.metric_stamp(rec, int(time.time() * 1000))  # a resend repeats the same points (mlflow_ops.py)
        self.save_row(run_id, rec)
        for batch in batches(data, cursor, int(rec.get("lines") or 0), stamp):
            if batch.points:
                self.client.log_batch(rec["mlflow_run_id"], metrics=[
                    Metric(p.key, p.value, p.timestamp_ms, p.step) for p in batch.points])
            rec.update(cursor=batch.end_offset, lines=int(rec.get("lines") or 0) + batch.lines,
                       points=int(rec.get("points") or 0) + len(batch.points), pending={"from": batch.end_offset,
                                                                                         "ms": stamp})
            self.save_row(run_id, rec)
        rec.pop("pending", None)
        self.save_row(run_id, rec)
        return len(read_new(path, int(rec["cursor"]))[0])

    def desired(self, run_id: str, executor_live: bool) -> Optional[Dict[str, Any]]:
        path = self.run_path(run_id)
        done = _read(os.path.join(path, "summary.json"))
        status = read_status(path) or {}
        numbers = attempts.numbers(path) if os.path.isdir(path) else []
        latest = max(numbers) if numbers else 0
        if done.get("campaign_id") == self.campaign_id and done.get("ended_utc") and (
                not status.get("state") or is_terminal(status["state"])) and int(done.get("attempt") or 0) >= latest:
            return {"status": final_status(str(done.get("state"))), "ended_utc": done["ended_utc"], "summary": done,
                    "attempt": latest}
        if status.get("state") and not is_terminal(status["state"]) and latest:
            return {"status": "RUNNING", "attempt": latest}
        if not executor_live:
            return {"status": "KILLED", "ended_utc": "not run", "attempt": latest}
        return {"status": "RUNNING", "attempt": latest} if latest else None

    def settle(self, run_id: str, rec: Dict[str, Any], want: Optional[Dict[str, Any]], left: int) -> None:
        if not want:
            return
        child = rec["mlflow_run_id"]
        if want["attempt"] and want["attempt"] != rec.get("attempt"):
            self.client.set_tag(child, "workflow.attempt", str(want["attempt"]))
            rec["attempt"] = want["attempt"]
            self.save_row(run_id, rec)
        if want["status"] == "RUNNING":
            if rec.get("status") != "RUNNING":
                self.client.update_run(child, status="RUNNING")
                rec.update(status="RUNNING", final_ended_utc=None)
                self.save_row(run_id, rec)
            return
        if left or rec.get("final_ended_utc") == want["ended_utc"]:
            return  # lines still to send come first; or this end is already told
        done = want.get("summary") or {}
        if done:
            ops.upload_artifacts(self.client, child, self.run_path(run_id), ["summary.json", "run_manifest.json"])
            self.client.set_tag(child, "workflow.state", str(done.get("state")))
            if want["status"] == "FAILED":
                self.client.set_tag(child, "failure_class", str(done.get("failure_class") or "unknown"))
        else:
            self.client.set_tag(child, "workflow.state", "not run")
        self.client.set_terminated(child, want["status"], end_time=_ms(done.get("ended_utc")))
        rec.update(status=want["status"], final_ended_utc=want["ended_utc"])
        self.save_row(run_id, rec)
        self.say(f"{run_id}: {want['status']} ({rec.get('points')} point(s) from {rec.get('lines')} line(s))")

    def settle_parent(self, top: Dict[str, Any], recs: List[Dict[str, Any]], executor_state: str) -> bool:
        from mlflow.entities import Metric

        if executor_state in ("running", "starting", "stopping"):
            if top.get("status") != "RUNNING":
                self.client.update_run(top["parent_run_id"], status="RUNNING")
                self.save_top(status="RUNNING")
            return False
        if any(r.get("status") == "RUNNING" or r.get("final_ended_utc") is None for r in recs):
            return False
        counts = {"rows_total": len(recs), "rows_ok": sum(r["status"] == "FINISHED" for r in recs),
                  "rows_failed": sum(r["status"] == "FAILED" for r in recs),
                  "rows_cancelled": sum(r["status"] == "KILLED" for r in recs)}
        key = json.dumps(counts, sort_keys=True)
        if top.get("totals") == key and top.get("status") != "RUNNING":
            return True
        now = int(top.get("totals_ms") or 0) if top.get("totals_pending") == key else 0
        if not now:  # the same timestamp if the reply is lost and this is sent again
            now = int(time.time() * 1000)
            self.save_top(totals_pending=key, totals_ms=now)
        generation = int((_read(os.path.join(self.dir, "executor.json")).get("generation")) or 1)
        self.client.log_batch(top["parent_run_id"], metrics=[Metric(k, float(v), now, generation)
                                                             for k, v in counts.items()])
        status = "FINISHED" if counts["rows_ok"] == counts["rows_total"] else (
            "KILLED" if executor_state == "stopped" else "FAILED")
        self.client.set_terminated(top["parent_run_id"], status)
        self.save_top(totals=key, status=status)
        self.say(f"parent {top['parent_run_id']}: {status} {counts}")
        return True

    # -- passes
    def one_pass(self) -> bool:
        """True when everything is sent and settled (the executor has ended)."""
        from ..campaigns import LIVE, executor_state
        from ..executors.slurm_tracking import new_pass

        new_pass()  # a long-lived process: Slurm's queue is asked afresh each pass (once per pass)
        state = executor_state(self.dir)[0]
        live = state in LIVE
        top = self.ensure_parent()
        # ok in an earlier campaign: this one does not run it, and tracks nothing of it
        recs = self.ensure_children([row for row in self.manifest.get("rows") or [] if not self.ok_elsewhere(row)],
                                    top)
        for rec in recs:
            if self.stop:
                return False
            left = self.pump(rec["run_id"], rec)
            want = self.desired(rec["run_id"], live)
            if want and ops.sync_trainer_params(self.client, self.run_path(rec["run_id"]), self.out_dir(rec["run_id"]),
                                            rec, int(want["attempt"])):
                self.save_row(rec["run_id"], rec)
            self.settle(rec["run_id"], rec, want, left)
        if top.get("last_error"):
            self.save_top(last_error=None)
        return self.settle_parent(self.top(), recs, state)

    def loop(self) -> int:
        ended_at: Optional[float] = None
        backoff = POLL_SECS
        flush = float(self.config.get("TRACKING_FLUSH_SECS") or DEFAULT_FLUSH_SECS)
        from ..campaigns import LIVE, executor_state

        while not self.stop:
            try:
                settled = self.one_pass()
                backoff = POLL_SECS
            except Exception as exc:  # the server is down, slow or refusing: keep the cursors, try again
                settled = False
                message = ops.short_error(exc)
                self.say(f"tracking server: {message}")
                self.save_top(last_error=message, last_error_utc=utc_now())
                backoff = min(backoff * 2, 10.0)
                if self.once:
                    print(json.dumps({"ok": False, "error": message}))
                    return 1
            if self.once:
                print(json.dumps({"ok": True, "settled": settled, "rows": self.report()}))
                return 0
            if settled:
                return 0
            if executor_state(self.dir)[0] not in LIVE:
                ended_at = ended_at or time.monotonic()
                if time.monotonic() - ended_at > flush:
                    self.say(f"the executor ended {flush:.0f}s ago and tracking is still behind; giving up "
                             f"(send the rest with workflow.sh track --campaign {self.campaign_id})")
                    return 1
            else:
                ended_at = None
            time.sleep(backoff)
        return 0

    def report(self) -> Dict[str, Any]:
        rows = {}
        for row in self.manifest.get("rows") or []:
            rec = _read(row_record_path(self.dir, str(row["run_id"])))
            rows[str(row["run_id"])] = {k: rec.get(k) for k in ("mlflow_run_id", "status", "points", "lines")}
        return rows


def sidecar_main(argv: List[str]) -> int:
    if not argv or len(argv) > 2 or (len(argv) == 2 and argv[1] != "--once"):
        sys.stderr.write("usage: agent tracking-sidecar CAMPAIGN_DIR [--once]\n")
        return 2
    path, once = argv[0], len(argv) == 2
    manifest = read_json(os.path.join(path, "manifest.json"), "campaign manifest") or {}
    if not enabled(campaign_config(path, manifest if isinstance(manifest, dict) else {})):
        sys.stderr.write("tracking is off for this campaign (MLFLOW_TRACKING_URI was empty)\n")
        return 2
    lock = open(os.path.join(path, LOCK), "a")  # noqa: SIM115 - held for the process's life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        message = "a tracking sidecar is already running for this campaign"
        if once:
            print(json.dumps({"ok": False, "busy": True, "error": message}))
            return 7
        sys.stderr.write(message + "; this one exits\n")
        return 0
    try:
        sidecar = Sidecar(path, once)
    except ImportError as exc:
        message = f"mlflow is not importable in the run venv ({exc}); run workflow.sh checkout with tracking on"
        print(json.dumps({"ok": False, "error": message})) if once else sys.stderr.write(message + "\n")
        return 1

    def _stop(_signum: int, _frame: Any) -> None:
        sidecar.stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if not once:
        sidecar.save_top(sidecar_pid=os.getpid())
    sidecar.say(f"tracking sidecar pid {os.getpid()} for campaign {sidecar.campaign_id} (log {LOG})")
    return sidecar.loop()

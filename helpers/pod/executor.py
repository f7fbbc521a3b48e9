"""The sweep executor: runs a campaign's rows on the pod, each under the task supervisor.

``python3 -I -S agent.pyz sweep-exec CAMPAIGN_DIR`` in the `sweep` window of SWEEP_TMUX_SESSION.
Rows that need fewer GPUs (or CPU slots) than the pod has are packed onto free ones in parallel
with CUDA_VISIBLE_DEVICES set per run; a row without a `gpus` column takes them all. Failures do
not stop the sweep (unless SWEEP_FAIL_FAST=1). Transient failures (nccl, lost, stalled) are
retried with backoff up to RUN_RETRIES; an oom run is retried at most twice with half the batch
and double the gradient accumulation, resuming from its checkpoint. Rows already ok are skipped,
so starting again resumes. At the end the workflow state becomes SWEEP_COMPLETED or SWEEP_FAILED.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import time
from typing import Any, Dict, List, Optional

from . import attempts, cost, fence, fsm, proctree, resume_ckpt, runs, stages, tracking
from .context import Context, run_env
from .executor_records import FINAL_RETRY_SECS, ExecutorRecords, RowRun, stop_requested
from .executors import slurm_parts
from .jsonio import append_jsonl, is_disk_full, mount_point, read_json, utc_now, write_bytes, write_json
from .scheduling import detect_slots, schedule_step, slot_env
from .statuswriter import FULL_BELOW_BYTES, free_bytes
from .tasks import launch_supervised
from .taskstate import is_terminal, read_status
from .tracking import wandb as tracking_wandb

TRANSIENT = ("nccl", "lost", "stalled")
MAX_OOM_RETRIES = 2
HEARTBEAT_SECS = 2.0
DISK_FULL_RETRY_SECS = 5.0  # a row that could not start for want of space waits this long before trying again


class Executor(ExecutorRecords):
    def __init__(self, campaign_dir: str) -> None:
        self.dir = os.path.abspath(campaign_dir)
        manifest = read_json(os.path.join(self.dir, "manifest.json"), "campaign manifest")
        if not isinstance(manifest, dict):
            raise SystemExit(f"sweep-exec: no manifest.json in {self.dir}")
        self.manifest = manifest
        self.campaign_id = str(manifest["campaign_id"])
        self.ctx = Context(manifest["config"])
        self.outputs = self.ctx.outputs
        self.stop_reason: Optional[str] = None
        self.slots: List[str] = []
        self.log_handle = open(os.path.join(self.dir, "executor.log"), "a", encoding="utf-8")  # noqa: SIM115
        self.index: Dict[str, Any] = read_json(os.path.join(self.dir, "index.json"), "campaign index") or {}
        record = read_json(os.path.join(self.dir, "executor.json"), "executor status") or {}
        self.generation = int(record.get("generation") or 1)
        self.pending_events: List[Dict[str, Any]] = []
        self.pending_beat: Dict[str, Any] = {}
        self.full_said = -1e9
        self.tracking_until = 0.0  # rows wait for their MLflow child run until then (monotonic)
        self.tracking_since = ""  # when this executor started its tracking sidecar (utc)

    def _check_stop_request(self) -> bool:
        """True (and stopping) once sweep-stop has asked this executor's generation to stop."""
        if self.stop_reason is None and stop_requested(self.dir, self.generation):
            self.stop_reason = "stop"
        return self.stop_reason is not None

    @staticmethod
    def _need(rr: RowRun, slots: List[str]) -> int:
        return int(rr.row.get("gpus") or len(slots))

    def _unschedulable(self, rr: RowRun, slots: List[str]) -> None:
        need = self._need(rr, slots)
        reason = f"needs {need} slot(s); the pod has {len(slots)} ({','.join(slots)})"
        self.index[rr.run_id] = {"ok": False, "state": "failed", "failure_class": "unschedulable", "attempts": 0,
                                 "duration_s": None, "started_utc": None, "ended_utc": None, "val_loss": None}
        self.event("run-end", run_id=rr.run_id, ok=False, state="failed", failure_class="unschedulable",
                   reason=reason)
        self.say(f"{rr.run_id}: not run: {reason}")

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.stop_reason is None:
            self.stop_reason = "hangup" if signum == signal.SIGHUP else "stop"

    # -- hooks: the Slurm array task (executors/slurm_task.py) runs one row in its allocation
    def tracking_dir(self) -> str:
        return self.dir  # the campaign dir, where the sidecar keeps the rows' child runs

    def _start_tracking(self) -> bool:
        return bool(tracking.start_sidecar(self.ctx, self.dir))

    def _slots(self, env_base: Dict[str, str]) -> List[str]:
        return detect_slots(self.ctx, env_base)

    def _row_argv(self, rr: RowRun, argv: List[str]) -> List[str]:
        return argv  # the row's torchrun as it runs (command.sh, run_manifest.json and the supervisor's spec)

    def _launch(self, path: str, spec: Dict[str, Any], env: Dict[str, str], command: str) -> None:
        launch_supervised(path, spec, env, command, self.ctx.tmux_base(), self.ctx.get("SWEEP_TMUX_SESSION"))

    # -- runs
    def _start(self, rr: RowRun, slots: List[str], env_base: Dict[str, str], cpu_mode: bool, threads: int) -> None:
        row, ctx = rr.row, self.ctx
        free = free_bytes(self.outputs)
        if free is not None and free < FULL_BELOW_BYTES:  # what is left is for verdicts: a row would fail at once
            raise OSError(errno.ENOSPC, f"no room for a row ({free // 1024} KiB free)", mount_point(self.outputs))
        path = runs.run_dir(self.outputs, rr.run_id)
        os.makedirs(path, exist_ok=True)
        attempt = attempts.next_number(path)
        local_sync = ctx.get("RUN_OUT_MODE") == "local_sync"
        rr.out_dir = os.path.join(ctx.path("RUN_OUT_LOCAL_ROOT"), rr.run_id) if local_sync else path
        overrides = list(rr.extra or row["overrides"])
        if not rr.extra and not rr.attempts:  # cut off under an earlier executor (or pod): from its checkpoint
            overrides, note = resume_ckpt.resume_overrides(ctx, path, self.campaign_id, overrides)
            rr.retry_note = rr.retry_note or note
        workdir = os.path.join(ctx.path("OPS_REMOTE_REPO"), ctx.get("TRAIN_WORKDIR"))
        python = os.path.join(ctx.path("VENV_DIR"), "bin", "python")
        argv = runs.build_argv(python, ctx.get("TRAIN_ENTRYPOINT"), row["config"], int(row["seed"]), rr.out_dir,
                               overrides, len(slots))
        argv = self._row_argv(rr, argv)
        env = dict(env_base)
        shown_env = slot_env(env_base, self.slots, slots)
        env.update(WF_RUN_ID=rr.run_id, WF_CAMPAIGN_ID=self.campaign_id, WF_ATTEMPT=str(attempt), **shown_env)
        tracking.row_env(ctx.config, self.tracking_dir(), rr.run_id, env, self.tracking_until,  # MLflow, W&B
                         rr.out_dir)
        rr.command = runs.replay_script(argv, workdir, shown_env, ctx.path("REMOTE_ENV_PATH"),
                                        f"run {rr.run_id}, campaign {self.campaign_id}, attempt {attempt}")
        write_bytes(os.path.join(path, "command.sh"), rr.command.encode(), 0o755)
        if not rr.attempts:
            runs.claim(path, self.campaign_id, row)
            manifest = {"schema_version": runs.SCHEMA_VERSION, "run_id": rr.run_id, "campaign_id": self.campaign_id,
                        "created_utc": utc_now(), "csv_row": row, "config": self.manifest["config"],
                        "argv": argv, "workdir": workdir, "out_dir": rr.out_dir, "slots": slots,
                        "cpu_mode": cpu_mode, **self.provenance}
            write_json(os.path.join(path, "run_manifest.json"), manifest)
        spec = {
            "id": rr.run_id, "argv": argv, "workdir": workdir, "log": "run.log",
            "timeout_secs": row.get("timeout_secs") if row.get("timeout_secs") is not None else ctx.number(
                "RUN_TIMEOUT_SECS", 43200),
            "stall_secs": ctx.number("RUN_STALL_SECS", 1800), "kill_grace_secs": ctx.number("TASK_KILL_GRACE_SECS", 10),
            "lost_after_secs": ctx.number("TASK_LOST_AFTER_SECS", 60),
            "log_banner": f"attempt {attempt} of run {rr.run_id} (campaign {self.campaign_id}) on {','.join(slots)}",
            "command_display": " ".join(argv[1:]),
            "user_patterns": self.manifest.get("user_patterns", ""),
            "user_patterns_source": self.manifest.get("user_patterns_source", ""),
            "sync": {"from": rr.out_dir, "to": path, "interval": ctx.number("SYNC_INTERVAL_SECS", 60)}
            if local_sync else None,
        }
        attempts.begin(path, attempt, {"campaign_id": self.campaign_id, "slots": slots, "overrides": overrides,
                                       "note": rr.retry_note, "out_dir": rr.out_dir})
        rr.number = attempt
        self._launch(path, spec, env, rr.command)
        rr.slots = slots
        if self.index.pop(rr.run_id, None) is not None:  # running again: its old verdict no longer holds
            self._write_index()
        rr.attempts.append({"attempt": attempt, "started_utc": utc_now(), "slots": slots,
                            "overrides": overrides, "note": rr.retry_note})
        self.event("run-start", run_id=rr.run_id, attempt=attempt, slots=slots)
        self.say(f"start {rr.run_id} attempt {attempt} on {','.join(slots)}"
                 + (f" ({rr.retry_note})" if rr.retry_note else ""))

    def _finished(self, rr: RowRun) -> Optional[Dict[str, Any]]:
        path = runs.run_dir(self.outputs, rr.run_id)
        status = read_status(path) or {}
        if not is_terminal(status.get("state", "pending")) or status.get("cleanup") not in ("done", None):
            if not status.get("state"):
                return None
            from .tasks import refresh

            # a vanished supervisor is lost, and told; one that died while stopping its tree is finished
            status = refresh(path, status)
            if not (is_terminal(status["state"]) and status.get("cleanup") == "done"):
                return None
        return status

    def _decide(self, rr: RowRun, status: Dict[str, Any]) -> str:
        """'ok', 'retry' (requeued) or 'failed' (final) for an attempt that ended."""
        self._check_fence()
        path = runs.run_dir(self.outputs, rr.run_id)
        record = runs.attempt_record(path, rr.number, {"slots": rr.slots, "note": rr.retry_note})
        rr.attempts[-1].update(attempts.finish(path, rr.number, {"campaign_id": self.campaign_id, **record}))
        if rr.logged_attempt != rr.number:  # once, even when a full filesystem makes this run again
            append_jsonl(os.path.join(runs.run_dir(self.outputs, rr.run_id), "attempts.jsonl"),
                         {"campaign_id": self.campaign_id, **rr.attempts[-1]})
            rr.logged_attempt = rr.number
        if status["state"] == "success":
            return "ok"
        if self.stop_reason:
            return "failed"
        klass = status.get("failure_class")
        ctx = self.ctx
        resume = ctx.words("RUN_RESUME_OVERRIDE")
        overrides = list(rr.extra or rr.row["overrides"])
        if klass == "oom" and ctx.flag("AUTO_BATCH_RETRY_ON_OOM") and rr.oom_retries < MAX_OOM_RETRIES:
            new, why = runs.oom_retry_overrides(overrides, rr.out_dir, ctx.get("OOM_BATCH_KEY"),
                                                ctx.get("OOM_ACCUM_KEY"), resume)
            if new is not None:
                rr.oom_retries += 1
                rr.extra, rr.retry_note, rr.not_before = new, f"oom retry {rr.oom_retries}: {why}", 0.0
                return "retry"
            self.say(f"{rr.run_id}: oom, but {why}")
        retries = rr.row.get("retries")
        limit = int(retries) if retries is not None else ctx.number("RUN_RETRIES", 2)
        if klass in TRANSIENT and rr.transient_retries < limit:
            rr.transient_retries += 1
            delay = ctx.number("RUN_RETRY_BACKOFF_SECS", 30) * 2 ** (rr.transient_retries - 1)
            new = overrides
            for word in resume:
                new = runs.set_override(new, word.partition("=")[0].lstrip("-"), word.partition("=")[2])
            rr.extra, rr.not_before = new, time.monotonic() + delay
            rr.retry_note = f"retry {rr.transient_retries}/{limit} after {klass}, backoff {delay}s"
            return "retry"
        return "failed"

    def _verdict(self, rr: RowRun) -> Any:
        """(status, verdict) of a row whose training attempt or evaluation stage ended, (None, "") while it
        runs; a training attempt or stage that passed starts the row's next stage (stages.py) without waiting."""
        if rr.stage is not None:
            status = stages.poll(rr, self)
            if status is None:
                return None, ""
            verdict = stages.after(self, rr, status)
            if verdict == "retry":  # a transient stage failure: it runs again after the backoff
                return None, ""
        else:
            status = self._finished(rr)
            if status is None:
                return None, ""
            verdict = self._decide(rr, status)
            if verdict == "ok":
                stages.reset(rr)
        if verdict == "ok" and not self.stop_reason and stages.launch_next(self, rr):
            return None, ""
        return status, verdict

    def _conclude(self, rr: RowRun) -> Dict[str, Any]:
        self._check_fence()
        path = runs.run_dir(self.outputs, rr.run_id)  # summary.json is built whole, then written once (with_cost):
        done = runs.write_summary(path, self.campaign_id, rr.row, rr.attempts, rr.out_dir, rr.command, write=False)
        done = stages.apply(path, rr, done, write=False)  # the stages and their gates (a reader never sees a row
        done = tracking_wandb.check(self.ctx.config, path, rr.out_dir, done, write=False)  # ok before its gate)
        done = self._with_cost(rr, done)
        attempts.keep_final_summary(runs.run_dir(self.outputs, rr.run_id), rr.number, done)
        self.index[rr.run_id] = attempts.index_entry(done)
        self.event("run-end", run_id=rr.run_id, ok=done["ok"], state=done["state"],
                   failure_class=done.get("failure_class"))
        verdict = "ok" if done["ok"] else f"{done['state']} [{done.get('failure_class')}]"
        self.say(f"{rr.run_id}: {verdict} after {done['attempts']} attempt(s), {done.get('duration_s')}s")
        return done

    def _check_fence(self) -> None:
        """A newer epoch of managed recovery took the campaign over: raise fence.Superseded (no more writes)."""
        fence.check(getattr(self, "campaign_path", self.dir), self.generation)

    def _with_cost(self, rr: RowRun, done: Dict[str, Any]) -> Dict[str, Any]:
        return cost.with_cost(self, rr, done, runs.run_dir(self.outputs, rr.run_id))

    def _budget_hold(self, todo: List[RowRun], active: Dict[str, RowRun], why: Optional[str] = None) -> bool:
        return cost.budget_hold(self, todo, list(active.values()), why)

    def _stop_active(self, active: Dict[str, RowRun]) -> None:
        for rr in active.values():
            status = read_status(runs.run_dir(self.outputs, rr.run_id)) or {}
            pid = status.get("supervisor_pid")
            if pid and proctree.is_alive(pid, status.get("supervisor_start_time")):
                os.kill(int(pid), signal.SIGTERM)
            stages.stop(rr)
        deadline = time.monotonic() + self.ctx.number("TASK_KILL_GRACE_SECS", 10) + 20
        while active and time.monotonic() < deadline:
            for run_id in list(active):
                rr = active[run_id]
                if self._verdict(rr)[0] is None:
                    continue
                active.pop(run_id)
                self._conclude(rr)
            time.sleep(0.2)

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        ctx = self.ctx
        env_base = run_env(ctx)
        slots = self._slots(env_base)
        self.slots = slots
        cpu_mode = slots[0].startswith("cpu")
        threads = max(1, (os.cpu_count() or 1) // len(slots)) if cpu_mode else 1
        self.spend = cost.Spend(cost.price_per_hour(self.manifest), len(slots))
        self.held: List[RowRun] = []  # rows not started for BUDGET_USD
        self.budget_why = ""
        self.budget = cost.current_budget(ctx.config, ctx.get("REMOTE_ENV_PATH"))
        if self.budget[0] is not None and self.spend.price is None:
            self.say(f"BUDGET_USD={self.budget[0]:g} is not enforced: no price (set POD_PRICE_PER_HOUR)")
        self.beat("running", pid=os.getpid(), start_time=proctree.start_time(os.getpid()),
                  boot_id=proctree.boot_id(), started_utc=utc_now(), slots=slots, ended_utc=None, stop_reason=None,
                  reason=None)
        if self._check_stop_request():  # sweep-stop came while this executor was starting: run nothing
            self.say("sweep-stop was requested before this executor started: running nothing")
            return self._end(0, [RowRun(row) for row in self.manifest["rows"]])
        self.tracking_since = utc_now()
        if self._start_tracking():  # MLflow on: the campaign's tracking sidecar, beside us
            self.tracking_until = time.monotonic() + tracking.wait_secs(ctx.config)
        repo = ctx.path("OPS_REMOTE_REPO")
        own = [ctx.path("VENV_DIR"), ctx.path("DATA_DIR"), ctx.path("RUN_OUT_LOCAL_ROOT"), self.outputs]
        self.provenance = {"git": runs.git_provenance(repo, [p for p in own if p]),
                           "environment": runs.environment_provenance(ctx.path("VENV_DIR"))}
        allowed = slurm_parts.generation_rows(self.dir, self.generation)  # a campaign in parts: this part's rows
        todo = [RowRun(row) for i, row in enumerate(self.manifest["rows"]) if (allowed is None or i in allowed)
                and not runs.is_ok(runs.run_dir(self.outputs, str(row["run_id"])), row["spec_hash"])]
        if self.tracking_until:  # every row's MLflow child, created side by side: waited for once, here
            tracking.wait_children(self.tracking_dir(), [rr.run_id for rr in todo], self.tracking_until,
                                   self.tracking_since)
            self.tracking_until = 0.0  # no row waits (a row still without one starts without; the sidecar goes on)
        for rr in todo:  # rows to run (again): their old verdicts no longer hold
            self.index.pop(rr.run_id, None)
        self.spend.seed(self.index)  # what this campaign's concluded rows cost before (a resume)
        skipped = (len(self.manifest["rows"]) if allowed is None else len(allowed)) - len(todo)
        self.say(f"campaign {self.campaign_id}: {len(todo)} row(s) to run, {skipped} already ok; slots: "
                 f"{','.join(slots)}")
        free = list(slots)
        active: Dict[str, RowRun] = {}
        failed = 0
        last_beat = last_index = 0.0
        for rr in [r for r in todo if self._need(r, slots) > len(slots)]:
            todo.remove(rr)  # sweep-start refuses these; the pod's slots changed since
            failed += 1
            self._unschedulable(rr, slots)
        while (todo or active) and not self.stop_reason:
            now = time.monotonic()
            if self._check_stop_request():
                break
            for run_id in list(active):
                rr = active[run_id]
                try:
                    status, verdict = self._verdict(rr)
                    if status is None:
                        continue
                    done = None if verdict in ("retry", "handoff") else self._conclude(rr)
                except OSError as exc:  # concluded once there is room; the row stays active until then
                    if not is_disk_full(exc):  # (a DiskFullError, or a raw ENOSPC from a plain write)
                        raise
                    self._disk_full(exc)
                    continue
                del active[run_id]
                free = [slot for slot in slots if slot in free or slot in rr.slots]  # the pod's order: 0,1,2,3
                if verdict == "handoff":  # hook: its next attempt runs elsewhere (a new Slurm array task)
                    continue
                if done is None:
                    self.say(f"{rr.run_id}: {status['state']} [{status.get('failure_class')}] -> {rr.retry_note}")
                    todo.insert(0, rr)
                    continue
                if done["ok"] is False and done.get("state") != "gated":  # a gate not met is no failure
                    failed += 1
                    if ctx.flag("SWEEP_FAIL_FAST"):
                        self.say("SWEEP_FAIL_FAST=1: stopping after the first failed row")
                        self.stop_reason = "fail-fast"
            if self.stop_reason:
                break
            hard = self.spend.over(self.budget[0], list(active.values()), True) if self.budget[1] and active else None
            if hard:
                self.say(f"BUDGET_HARD=1: {hard}: stopping the running rows")
                self.stop_reason, self.budget_why = "budget", f"BUDGET_HARD=1: {hard}"
                break
            if self._budget_hold(todo, active):
                todo = []
            queue = [(rr.run_id, self._need(rr, slots), rr.not_before <= now) for rr in todo]
            started, _ = schedule_step(queue, free, len(slots))
            for run_id, take in started:
                if self._check_stop_request():
                    break  # sweep-stop came meanwhile: launch nothing more
                rr = next(r for r in todo if r.run_id == run_id)
                try:
                    self._start(rr, take, env_base, cpu_mode, threads)
                except OSError as exc:  # not started: it waits in the queue for room
                    if not is_disk_full(exc):  # (a DiskFullError, or a raw ENOSPC from a plain write)
                        raise
                    self._disk_full(exc)
                    rr.not_before = time.monotonic() + DISK_FULL_RETRY_SECS
                    break
                todo.remove(rr)
                free = [slot for slot in free if slot not in take]
                active[rr.run_id] = rr
            if now - last_beat >= HEARTBEAT_SECS:
                last_beat = now
                self.beat("running", active=sorted(active), queued=len(todo))
            if now - last_index >= 5.0:
                last_index = now
                self._write_index()
            time.sleep(0.2)
        if self.stop_reason:
            self.beat("stopping", stop_reason=self.stop_reason, active=sorted(active), queued=len(todo))
            self.say(f"stopping ({self.stop_reason}): cancelling {len(active)} active run(s)")
            failed += len(active)
            self._stop_active(active)
        if self.stop_reason == "budget" and self._budget_hold(todo, {}, self.budget_why):
            todo = []
        self._check_fence()
        cost.split_idle(self)  # the pod's idle time of this pass, split over its rows' summaries
        self._write_index(durable=True)
        return self._end(failed, todo + getattr(self, "held", []))

    def _end(self, failed: int, todo: List[RowRun]) -> int:
        ctx = self.ctx
        state = {"stop": "stopped", "hangup": "lost", "fail-fast": "finished"}.get(self.stop_reason or "", "finished")
        reason = None
        if self.stop_reason == "hangup":
            reason = (f"the executor got SIGHUP (its tmux window or session was closed) with {len(todo)} row(s) not "
                      f"run and {failed} cancelled; rerun them with workflow.sh sweep-resume --campaign "
                      f"{self.campaign_id}")
        # the end event and the workflow state first: executor.json's final beat, last, is what readers wait for
        self.event("executor-end", state=state, failed=failed)
        if self.stop_reason in (None, "fail-fast", "hangup", "budget"):
            command = "sweep-fail" if failed or todo else "sweep-complete"
            why = f"campaign {self.campaign_id}: {reason}" if reason else (
                f"campaign {self.campaign_id}: {failed} failed row(s)" + (f", {len(todo)} not run" if todo else ""))
            deadline = time.monotonic() + FINAL_RETRY_SECS
            while True:
                try:
                    fsm.transition(ctx.state_file, command, why, ctx.enforce)
                except Exception as exc:  # the state was changed by hand meanwhile, or its filesystem is full
                    if is_disk_full(exc) and time.monotonic() < deadline:
                        self._disk_full(exc)  # type: ignore[arg-type]
                        time.sleep(1.0)  # the verdict lands as soon as there is room
                        continue
                    self.say(f"workflow state not updated: {exc}")
                break
        self.beat(state, ended_utc=utc_now(), stop_reason=self.stop_reason, active=[], queued=len(todo),
                  failed=failed, reason=reason)
        self.say(f"campaign {self.campaign_id} {state}: {failed} failed row(s)")
        return 0


def executor_main(argv: List[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write("usage: agent sweep-exec CAMPAIGN_DIR\n")
        return 2
    executor = Executor(argv[0])
    try:
        return executor.run()
    except fence.Superseded as exc:  # a newer epoch owns the campaign: nothing more is written
        executor.say(str(exc))
        return 3


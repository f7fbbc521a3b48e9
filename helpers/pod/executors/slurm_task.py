"""One Slurm array task: ``agent slurm-task CAMPAIGN_DIR CHUNK_FILE`` runs the chunk's row
``SLURM_ARRAY_TASK_ID`` inside the allocation, exactly as the tmux executor runs a row (same
supervisor, fatal-line bail-out, stall window, timeout, retries, oom retry, the same ``<run_id>/``
files), plus the Slurm job id, array index and node in run_manifest.json.

Its executor bookkeeping (executor.json, events, log) lives in ``slurm/rows/<run_id>/`` so array
tasks never write the same file. The task that ends the last unfinished row of the campaign moves
the workflow state to SWEEP_COMPLETED / SWEEP_FAILED (under a lock: exactly once).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from .. import runs
from ..executor import Executor
from ..executor_records import RowRun
from ..fence import Superseded
from ..jsonio import read_json, utc_now, write_bytes, write_json
from ..scheduling import slots_from
from ..taskstate import new_record, update_status
from ..tmuxctl import agent_command
from . import slurm_budget, slurm_defer, slurm_nodes, slurm_parts, slurm_state, slurm_tracking

LIMIT_MARGIN_SECS = 15  # the supervisor's stop (grace included) ends this long before Slurm's time limit


def slurm_identity() -> Dict[str, Any]:
    env = os.environ
    return {"job_id": env.get("SLURM_ARRAY_JOB_ID") or env.get("SLURM_JOB_ID"),
            "array_index": int(env.get("SLURM_ARRAY_TASK_ID", "0")), "job_id_raw": env.get("SLURM_JOB_ID"),
            "node": env.get("SLURMD_NODENAME"), "nodes": slurm_nodes.allocation_nodes(),
            "restart_count": int(env.get("SLURM_RESTART_COUNT", "0") or 0),
            "gpus": env.get("SLURM_JOB_GPUS")}


def slurm_seconds(text: str) -> Optional[int]:
    """squeue's time ('[D-]HH:MM:SS', 'MM:SS', 'M') -> seconds; None for UNLIMITED / NOT_SET / garbage."""
    days, _, clock = text.strip().rpartition("-") if "-" in text else ("", "", text.strip())
    parts = clock.split(":")
    if not all(p.isdigit() for p in parts) or not 1 <= len(parts) <= 3 or (days and not days.isdigit()):
        return None
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + int(part)
    if len(parts) == 1:
        seconds *= 60  # a bare number is minutes
    return seconds + int(days or 0) * 86400


def time_left(job_id: Optional[str]) -> Optional[int]:
    """Seconds until Slurm's time limit of this job (one squeue per array task), None when unknown/unlimited."""
    if not job_id:
        return None
    try:
        result = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%L"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return slurm_seconds(result.stdout.splitlines()[0]) if result.returncode == 0 and result.stdout.strip() else None


class SlurmRowExecutor(Executor):
    def __init__(self, campaign_dir: str, chunk_file: str) -> None:
        super().__init__(campaign_dir)
        chunk = read_json(chunk_file, "slurm chunk") or {}
        self.chunk = chunk
        self.retry: Optional[Dict[str, Any]] = chunk.get("retry")  # this task is a row's retry (see resubmit)
        self.slurm = slurm_identity()
        self.row_index = int(chunk["rows"][self.slurm["array_index"]])
        self.full_rows: List[Dict[str, Any]] = list(self.manifest["rows"])
        row = self.full_rows[self.row_index]
        self.campaign_path = self.dir
        self.dir = os.path.join(self.campaign_path, "slurm", "rows", str(row["run_id"]))
        os.makedirs(self.dir, exist_ok=True)
        self.log_handle.close()
        self.log_handle = open(os.path.join(self.dir, "executor.log"), "a", encoding="utf-8")  # noqa: SIM115
        self.index = {}
        self.manifest = {**self.manifest, "rows": [row]}
        self.children: List[Tuple[subprocess.Popen, str]] = []  # (supervisor, its run dir)
        self.limit_at = None  # monotonic time of Slurm's time limit: the row's own timeout fires before it
        left = time_left(self.slurm["job_id_raw"])
        if left is not None:
            self.limit_at = time.monotonic() + left

    def forward_usr2(self) -> None:
        """--signal=B:USR2@N reached the batch shell (this process): on to the row's supervisor (which passes it
        to the trainer), once that supervisor has its handler (status running): a thread waits for that."""
        sys.stderr.write(f"[{utc_now()}] SIGUSR2: Slurm's time limit or preemption is near; forwarding\n")
        threading.Thread(target=self._deliver_usr2, daemon=True).start()

    def _deliver_usr2(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.children:
                child, path = self.children[-1]
                if child.poll() is not None:
                    return
                if (read_json(os.path.join(path, "status.json"), "task status") or {}).get("state") == "running":
                    child.send_signal(signal.SIGUSR2)
                    return
            time.sleep(0.2)

    def tracking_dir(self) -> str:
        return self.campaign_path  # the campaign's sidecar (on the login node) keeps the child runs there

    def _start_tracking(self) -> bool:
        return slurm_tracking.row_waits(self.ctx)  # no sidecar per array task: sweep-start runs the campaign's

    def _slots(self, env_base: Dict[str, str]) -> List[str]:
        # the allocation's GPUs (Slurm sets CUDA_VISIBLE_DEVICES); none allocated: CPU slots, never nvidia-smi
        return slots_from(os.environ.get("CUDA_VISIBLE_DEVICES", ""), [], self.ctx.number("SWEEP_CPU_SLOTS", 1))

    def _row_argv(self, rr: RowRun, argv: List[str]) -> List[str]:
        """A row with nodes > 1: srun over the allocation's nodes, one torchrun each, c10d on the first node;
        command.sh and run_manifest.json show this command, the one that runs."""
        nodes = slurm_nodes.nodes_of(rr.row)
        if nodes <= 1:
            return argv
        return slurm_nodes.multinode_argv(argv, nodes, slurm_nodes.rendezvous_host(),
                                          str(self.slurm["job_id_raw"] or self.slurm["job_id"]))

    def _launch(self, path: str, spec: Dict[str, Any], env: Dict[str, str], command: str) -> None:
        """As launch_supervised, but the supervisor is this task's child (inside the allocation)."""
        import json
        import uuid

        spec.setdefault("marker", f"{spec['id']}-{uuid.uuid4().hex[:12]}")
        if spec["argv"][:1] == ["srun"]:  # a multi-node row (see _row_argv): show srun too
            spec["command_display"] = " ".join(spec["argv"])
        spec["tmux"] = None
        spec["slurm"] = self.slurm
        spec["forward_usr2"] = True
        if self.limit_at is not None:  # stop (class timeout) before Slurm's limit kills the allocation
            grace = float(spec.get("kill_grace_secs") or 10)
            left = self.limit_at - time.monotonic() - grace - LIMIT_MARGIN_SECS
            own = float(spec.get("timeout_secs") or 0)
            if not own or left < own:
                spec["timeout_secs"] = max(5, int(left))
                spec["timeout_from"] = "slurm time limit"
        write_json(os.path.join(path, "spec.json"), spec)
        write_bytes(os.path.join(path, spec.get("env_file", ".env.json")), json.dumps(env).encode(), 0o600)
        write_json(os.path.join(path, "status.json"), new_record(str(spec["id"]), command, spec))
        with open(os.path.join(path, "supervisor.out"), "ab") as out:
            self.children.append((subprocess.Popen(agent_command("supervise", path), cwd=path, stdout=out,
                                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL), path))
        update_status(path, slurm=self.slurm)

    def _budget_hold(self, todo: List[RowRun], active: Dict[str, RowRun], why: Optional[str] = None) -> bool:
        """BUDGET_USD counts the whole campaign's spend (slurm_budget.py); a row held is marked in its index."""
        if todo and why is None and self.budget[0] is not None and not getattr(self, "others_counted", False):
            self.others_counted = True
            self.spend.others = slurm_budget.campaign_spent(self.outputs, self.campaign_id, self.full_rows,
                                                            self.row_index, self.spend.price, self.spend.pod_slots)
        if not super()._budget_hold(todo, active, why):
            return False
        slurm_budget.mark_held(self.campaign_path, {rr.run_id: self.index[rr.run_id] for rr in todo})
        return True

    def _start(self, rr: RowRun, slots: List[str], env_base: Dict[str, str], cpu_mode: bool, threads: int) -> None:
        slurm_budget.clear_held(self.campaign_path, rr.run_id)
        if self.retry is not None:  # the attempt an earlier array task decided on, with its counters
            retry, self.retry = self.retry, None
            rr.extra, rr.retry_note = list(retry.get("extra") or []), str(retry.get("note") or "")
            rr.oom_retries = int(retry.get("oom_retries", 0))
            rr.transient_retries = int(retry.get("transient_retries", 0))
            rr.attempts = [dict(a) for a in retry.get("attempts") or []]
        if self.slurm["restart_count"] and not rr.attempts and not rr.extra:  # requeued: resume its checkpoint
            overrides = list(rr.row["overrides"])
            for word in self.ctx.words("RUN_RESUME_OVERRIDE"):
                overrides = runs.set_override(overrides, word.partition("=")[0].lstrip("-"), word.partition("=")[2])
            rr.extra, rr.retry_note = overrides, f"requeued by Slurm ({self.slurm['restart_count']}): resuming"
        super()._start(rr, slots, env_base, cpu_mode, threads)
        manifest_path = os.path.join(runs.run_dir(self.outputs, rr.run_id), "run_manifest.json")
        manifest = read_json(manifest_path, "run manifest") or {}
        if manifest:
            history = list(manifest.get("slurm_history", []))
            history.append({**self.slurm, "attempt": len(rr.attempts), "utc": utc_now()})
            write_json(manifest_path, {**manifest, "slurm": self.slurm, "slurm_history": history})

    def _decide(self, rr: RowRun, status: Dict[str, Any]) -> str:
        """A retry (transient class, OOM with half the batch) is a new array task of the campaign, not a loop
        in this allocation; only when sbatch cannot take it at all does it run here."""
        verdict = super()._decide(rr, status)
        if verdict != "retry":
            return verdict
        job_id = resubmit(self, rr)
        if not job_id:
            return verdict
        self.event("run-handoff", run_id=rr.run_id, job_id=job_id, note=rr.retry_note)
        self.say(f"{rr.run_id}: {status['state']} [{status.get('failure_class')}] -> {rr.retry_note}: "
                 f"as Slurm job {job_id}")
        return "handoff"

    def _end(self, failed: int, todo: List[RowRun]) -> int:
        for child, _ in self.children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        state = "stopped" if self.stop_reason == "stop" else "finished"
        self.beat(state, ended_utc=utc_now(), stop_reason=self.stop_reason, active=[], queued=len(todo),
                  failed=failed)
        self.event("executor-end", state=state, failed=failed)
        self.say(f"array task {self.slurm['job_id']}_{self.slurm['array_index']} {state}: {failed} failed row(s)")
        if self.stop_reason is None:
            try:  # this task's slot frees: chunks a submit limit deferred go in now (the rest: a later task/status)
                slurm_defer.submit_deferred(self.campaign_path)
            except OSError as exc:
                self.say(f"deferred chunks not submitted: {exc}")
            finish_if_last(self)
        return 1 if failed or todo else 0


def resubmit(task: SlurmRowExecutor, rr: RowRun) -> str:
    """sbatch one array task (this chunk's options, --begin for the backoff) for the row's next attempt; its
    chunk file carries the retry's overrides and counters. The job id, 'deferred' (a submit limit: it goes in
    as others drain), or '' when sbatch refused it."""
    delay = max(0, int(rr.not_before - time.monotonic())) if rr.not_before else 0
    base = list(task.chunk.get("argv") or [])
    if len(base) < 3:
        return ""
    chunk_file = os.path.join(task.campaign_path, "slurm",
                              f"chunk-{task.generation:03d}-r{rr.number + 1:03d}-{rr.run_id}.json")
    argv = [base[0], "--parsable", "--array=0-0", *[w for w in base[1:-1] if not w.startswith((
        "--parsable", "--array=", "--dependency=", "--begin="))]]
    argv = [*argv[:-1], *([f"--begin=now+{delay}"] if delay else []), argv[-1], chunk_file]
    record = {"schema_version": runs.SCHEMA_VERSION, "campaign_id": task.campaign_id, "generation": task.generation,
              "rows": [task.row_index], "job_id": None, "argv": argv, "created_utc": utc_now(), "deferred": None,
              "retry": {"extra": rr.extra, "note": rr.retry_note, "oom_retries": rr.oom_retries,
                        "transient_retries": rr.transient_retries, "attempts": rr.attempts,
                        "after": f"{task.slurm['job_id']}_{task.slurm['array_index']}"}}
    write_json(chunk_file, record)
    result = slurm_defer.sbatch(argv)
    if result.returncode == 0:
        job_id = result.stdout.strip().split(";")[0]
        write_json(chunk_file, {**record, "job_id": job_id})
        return job_id
    if slurm_defer.deferrable(result.stderr):
        write_json(chunk_file, {**record, "deferred": slurm_defer.limit_reason(result.stderr)})
        return "deferred"
    os.unlink(chunk_file)
    task.say(f"{rr.run_id}: the retry could not be submitted ({' '.join(result.stderr.split())[:160]}); "
             "retrying in this allocation")
    return ""


def finish_if_last(task: SlurmRowExecutor) -> None:
    """SWEEP_COMPLETED / SWEEP_FAILED once every row of the campaign has its verdict (exactly once)."""
    verdicts = []
    allowed = slurm_parts.submitted(task.campaign_path)  # a campaign in parts: the rows submitted so far
    for number, row in enumerate(task.full_rows):
        if allowed is not None and number not in allowed:
            continue
        done = runs.summary(runs.run_dir(task.outputs, str(row["run_id"])))
        if (not done or done.get("spec_hash") != row.get("spec_hash")) and slurm_budget.held(task.campaign_path,
                                                                                            str(row["run_id"])):
            verdicts.append(False)  # not started for BUDGET_USD
            continue
        if not done or done.get("spec_hash") != row.get("spec_hash"):
            return  # a row still to come
        finished = bool(done.get("ok")) or done.get("state") == "gated"  # a gate not met is no failure
        if done.get("campaign_id") != task.campaign_id and not finished:
            return
        verdicts.append(finished)
    note = slurm_state.conclude(task.ctx.state_file, task.ctx.enforce, task.campaign_path, task.campaign_id,
                                verdicts.count(False), len(verdicts), task.slurm)
    if note:
        task.say(note)


def slurm_task_main(argv: List[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: agent slurm-task CAMPAIGN_DIR CHUNK_FILE\n")
        return 2
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # until the row's supervisor can take it
    task = SlurmRowExecutor(argv[0], argv[1])
    signal.signal(signal.SIGUSR2, lambda _s, _f: task.forward_usr2())
    try:
        return task.run()
    except Superseded as exc:  # a newer epoch of managed recovery owns the campaign: nothing more is written
        task.say(str(exc))
        return 3

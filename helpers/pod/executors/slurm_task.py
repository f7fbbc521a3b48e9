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
from typing import Any, Dict, List

from .. import fsm, runs
from ..executor import Executor, RowRun
from ..jsonio import locked, read_json, utc_now, write_bytes, write_json
from ..scheduling import slots_from
from ..taskstate import new_record, update_status
from ..tmuxctl import agent_command


def slurm_identity() -> Dict[str, Any]:
    env = os.environ
    return {"job_id": env.get("SLURM_ARRAY_JOB_ID") or env.get("SLURM_JOB_ID"),
            "array_index": int(env.get("SLURM_ARRAY_TASK_ID", "0")), "job_id_raw": env.get("SLURM_JOB_ID"),
            "node": env.get("SLURMD_NODENAME"), "restart_count": int(env.get("SLURM_RESTART_COUNT", "0") or 0),
            "gpus": env.get("SLURM_JOB_GPUS")}


class SlurmRowExecutor(Executor):
    def __init__(self, campaign_dir: str, chunk_file: str) -> None:
        super().__init__(campaign_dir)
        chunk = read_json(chunk_file, "slurm chunk") or {}
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
        self.children: List[subprocess.Popen] = []

    def _slots(self, env_base: Dict[str, str]) -> List[str]:
        # the allocation's GPUs (Slurm sets CUDA_VISIBLE_DEVICES); none allocated: CPU slots, never nvidia-smi
        return slots_from(os.environ.get("CUDA_VISIBLE_DEVICES", ""), [], self.ctx.number("SWEEP_CPU_SLOTS", 1))

    def _launch(self, path: str, spec: Dict[str, Any], env: Dict[str, str], command: str) -> None:
        """As launch_supervised, but the supervisor is this task's child (inside the allocation)."""
        import json
        import uuid

        spec.setdefault("marker", f"{spec['id']}-{uuid.uuid4().hex[:12]}")
        spec["tmux"] = None
        spec["slurm"] = self.slurm
        write_json(os.path.join(path, "spec.json"), spec)
        write_bytes(os.path.join(path, spec.get("env_file", ".env.json")), json.dumps(env).encode(), 0o600)
        write_json(os.path.join(path, "status.json"), new_record(str(spec["id"]), command, spec))
        with open(os.path.join(path, "supervisor.out"), "ab") as out:
            self.children.append(subprocess.Popen(agent_command("supervise", path), cwd=path, stdout=out,
                                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        update_status(path, slurm=self.slurm)

    def _start(self, rr: RowRun, slots: List[str], env_base: Dict[str, str], cpu_mode: bool, threads: int) -> None:
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

    def _end(self, failed: int, todo: List[RowRun]) -> int:
        for child in self.children:
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
            finish_if_last(self)
        return 1 if failed or todo else 0


def finish_if_last(task: SlurmRowExecutor) -> None:
    """SWEEP_COMPLETED / SWEEP_FAILED once every row of the campaign has its verdict (exactly once)."""
    path = task.campaign_path
    final = os.path.join(path, "slurm", "final.json")
    with locked(final):
        if os.path.exists(final):
            return
        verdicts = []
        for row in task.full_rows:
            done = runs.summary(runs.run_dir(task.outputs, str(row["run_id"])))
            if not done or done.get("spec_hash") != row.get("spec_hash"):
                return  # a row still to come
            if done.get("campaign_id") != task.campaign_id and not done.get("ok"):
                return
            verdicts.append(bool(done.get("ok")))
        failed = verdicts.count(False)
        command = "sweep-fail" if failed else "sweep-complete"
        try:
            fsm.transition(task.ctx.state_file, command, f"campaign {task.campaign_id}: {failed} failed row(s)",
                           task.ctx.enforce)
        except Exception as exc:  # the state was changed by hand meanwhile: say so
            task.say(f"workflow state not updated: {exc}")
        write_json(final, {"utc": utc_now(), "failed": failed, "rows": len(verdicts), "by": task.slurm})
        task.say(f"campaign {task.campaign_id}: the last row ended; {command}")


def slurm_task_main(argv: List[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: agent slurm-task CAMPAIGN_DIR CHUNK_FILE\n")
        return 2
    # --signal=B:USR2@120 (time limit near): noted; the supervisor's tree keeps running until Slurm stops it
    signal.signal(signal.SIGUSR2, lambda _s, _f: sys.stderr.write(f"[{utc_now()}] SIGUSR2: time limit near\n"))
    return SlurmRowExecutor(argv[0], argv[1]).run()

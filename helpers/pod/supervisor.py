"""The supervisor: the one place where a task's process is started, watched and stopped.

It runs on the pod (in a tmux window), one per task or run attempt:
``python3 -I -S agent.pyz supervise TASK_DIR``. It starts the command in its own session with
the task's env and workdir, copies its output to the log and the tmux pane as it arrives,
matches every line against the fatal-error patterns, keeps a heartbeat in status.json, and
enforces the wall-clock timeout and the stall window. Any stop is SIGTERM to the whole tree, a
grace period, then SIGKILL to every descendant, including processes that started their own
session (the supervisor is a child subreaper and marks the task's environment). The state it
leaves in status.json is always true: a non-zero exit is never success.

The heartbeat goes on while it stops a tree and during a run's final sync (a status read takes a
task without a heartbeat for TASK_LOST_AFTER_SECS for lost). A held traceback match is released
at most TRACEBACK_HOLD_SECS after its exception line, however much other output follows, so a
fatal error stops the task and marks it failed within a second. The kept context is the
matching lines and the CONTEXT_LINES lines before them. A failure is classified oom only on
corroborated evidence (``exitcause.oom_verdict``), matched against the task's processes seen during
the run (sampled at every heartbeat).
"""

from __future__ import annotations

import collections
import json
import os
import select
import signal
import subprocess
import sys
import time
from typing import Any, Deque, Dict, List, Optional, Set, Tuple

from . import exitcause, fatal, proctree
from .jsonio import read_json, utc_at, utc_now
from .statuswriter import StatusWriter
from .taskstate import TaskState, update_status


def heartbeat() -> Dict[str, Any]:
    """A heartbeat in wall-clock time (shown) and on the system-wide monotonic clock (judged: a step of the
    pod's clock neither ages a live supervisor into `lost` nor hides a hung one)."""
    return {"heartbeat_utc": utc_now(), "heartbeat_mono": round(time.monotonic(), 3)}

HEARTBEAT_SECS = 2.0
CONTEXT_LINES = 100  # kept before the first matching line
CONTEXT_KEEP = 2000  # recent lines kept to cut the context from
CONTEXT_BLOCK_MAX = 300  # a longer traceback keeps its first 50 and last 250 lines
QUIET_FLUSH_SECS = 0.3
TRACEBACK_HOLD_SECS = 0.5
FINAL_RETRY_SECS = 600.0  # how long the last status write is retried on a full filesystem
FINAL_RETRY_SLEEP = 1.0
WRAP_UP_SECS = 5.0  # a stop that comes while the launcher only wraps up (its workers done) waits this long
SEEN_SCAN_SECS = 0.5  # how often the task's processes are sampled
USR2_HANDLER_WAIT_SECS = 30.0  # how long a forwarded SIGUSR2 waits for the trainer to install its handler
_STOP_REASONS = {"cancel": "cancelled (task-kill / sweep-stop)",
                 "hangup": "the tmux window or server was closed (SIGHUP); the supervisor stopped the task"}
STOP_STATES = {"cancel": TaskState.CANCELLED, "timeout": TaskState.TIMED_OUT, "stall": TaskState.STALLED,
               "fatal": TaskState.FAILED, "hangup": TaskState.LOST}


class Supervisor:
    def __init__(self, task_dir: str) -> None:
        self.task_dir = os.path.abspath(task_dir)
        spec = read_json(os.path.join(self.task_dir, "spec.json"), "task spec")
        if not isinstance(spec, dict):
            raise SystemExit(f"supervise: no spec.json in {self.task_dir}")
        self.spec: Dict[str, Any] = spec
        self.grace = float(spec.get("kill_grace_secs") or 10)
        self.timeout = float(spec.get("timeout_secs") or 0)
        self.stall = float(spec.get("stall_secs") or 0)
        self.marker = str(spec["marker"])
        self.log_path = os.path.join(self.task_dir, spec.get("log", "stdout.log"))
        self.context: Deque[Tuple[int, str]] = collections.deque(maxlen=CONTEXT_KEEP)
        self.partial = b""
        self.stop_request: Optional[str] = None
        self.usr2_pending = False
        self.usr2_since = 0.0  # when the batch shell's SIGUSR2 came (monotonic; 0: none pending)
        self.stopped_by: Optional[str] = None
        self.pane_ok = True
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.matcher = fatal.FatalMatcher(
            fatal.parse_user_patterns(spec.get("user_patterns", ""), spec.get("user_patterns_source", "patterns")),
            python_exception=bool(spec.get("python_exception", True)), hold_secs=TRACEBACK_HOLD_SECS)
        self.seen_pids: Set[int] = set()  # the task's processes, sampled every SEEN_SCAN_SECS (OOM evidence)
        self.last_scan = 0.0
        self.stop_deferred_at: Optional[float] = None
        self.worker_sigkill = False  # the output reported a worker killed with -9
        self.last_beat = self.last_output = time.monotonic()
        sync = spec.get("sync") or {}
        self.sync_from, self.sync_to = sync.get("from"), sync.get("to")
        self.sync_interval = float(sync.get("interval") or 60)
        self.sync_proc: Optional[subprocess.Popen[bytes]] = None
        self.status = StatusWriter(self.task_dir)  # status writes that survive a full filesystem

    # -- signals: task-kill sends SIGTERM; a closing tmux window/server sends SIGHUP
    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.stop_request is None:
            self.stop_request = "hangup" if signum == signal.SIGHUP else "cancel"

    # -- hook (Slurm executor, spec "forward_usr2"): the batch shell's SIGUSR2 (--signal=B:USR2@N, time limit
    # or preemption near) goes on to the trainer so it checkpoints; under torchrun to its workers (torchrun
    # installs no USR2 handler: the signal would kill it)
    def _on_usr2(self, _signum: int, _frame: Any) -> None:
        self.usr2_pending = True
        self.usr2_since = self.usr2_since or time.monotonic()

    def _forward_usr2(self, proc: subprocess.Popen[bytes], log: Any) -> None:
        launcher = " ".join(str(w) for w in self.spec["argv"][:3])
        targets = proctree.children(proc.pid) if "torch.distributed.run" in launcher or "torchrun" in launcher \
            else {proc.pid}
        # a worker that has not installed its USR2 handler yet (still starting) would be killed by it: wait
        # for one, USR2_HANDLER_WAIT_SECS at most (a trainer with no handler at all is then ended by it)
        if not any(proctree.catches(pid, signal.SIGUSR2) for pid in targets) and \
                time.monotonic() - self.usr2_since < USR2_HANDLER_WAIT_SECS:
            return
        self.usr2_pending, self.usr2_since = False, 0.0
        proctree.signal_all(targets, signal.SIGUSR2)
        self.status.write_log(log, f"[workflow.sh] SIGUSR2 forwarded to the trainer ({len(targets)} process(es)): "
                                   f"Slurm's time limit or preemption is near ({utc_now()})\n".encode())

    def _env(self) -> Dict[str, str]:
        env = dict(os.environ)
        env.pop("TMUX", None)
        env.pop("TMUX_PANE", None)
        env_file = os.path.join(self.task_dir, self.spec.get("env_file", ".env.json"))
        try:
            with open(env_file, encoding="utf-8") as handle:
                env.update({str(k): str(v) for k, v in json.load(handle).items()})
            os.unlink(env_file)  # secrets live only in the process environment from here on
        except FileNotFoundError:
            pass
        env.update({proctree.MARKER_ENV: self.marker, "WF_TASK_ID": str(self.spec["id"]),
                    "WF_TASK_DIR": self.task_dir, "PYTHONUNBUFFERED": "1"})
        return env

    def _pane(self, data: bytes) -> None:
        if self.pane_ok:
            try:
                sys.stdout.buffer.write(data)
                sys.stdout.buffer.flush()
            except (OSError, ValueError):
                self.pane_ok = False  # the tmux pane is gone; keep supervising

    def _feed(self, line: bytes) -> Optional[fatal.FatalMatch]:
        text = line.decode("utf-8", "replace").rstrip("\r")
        found = None
        for segment in text.split("\r"):  # progress bars rewrite a line with \r
            if segment:
                match = self.matcher.feed(segment)  # every segment is fed, in order
                self.context.append((self.matcher.lines_fed, segment[:2000]))
                if not self.worker_sigkill and ("-9" in segment or "SIGKILL" in segment):
                    self.worker_sigkill = exitcause.WORKER_SIGKILL_RE.search(segment) is not None
                found = found or match
        return found

    def _consume(self, chunk: bytes, log: Any) -> Optional[fatal.FatalMatch]:
        self.status.write_log(log, chunk)
        self._pane(chunk)
        data = self.partial + chunk
        lines = data.split(b"\n")
        self.partial = lines.pop()
        if len(self.partial) > 65536:  # a huge line without newline: match what we have
            lines.append(self.partial)
            self.partial = b""
        found = None
        for line in lines:
            found = self._feed(line) or found
        return found

    def _context_of(self, match: fatal.FatalMatch) -> List[str]:
        """The matching lines (from the first to the last) and the CONTEXT_LINES lines before them."""
        first, last = match.first_line, match.line_number
        before = [text for n, text in self.context if first - CONTEXT_LINES <= n < first]
        block = [text for n, text in self.context if first <= n <= last]
        if len(block) > CONTEXT_BLOCK_MAX:
            omitted = len(block) - CONTEXT_BLOCK_MAX
            block = block[:50] + [f"[workflow.sh: {omitted} lines of the traceback omitted]"] + block[-250:]
        return before + block

    def _fatal(self, match: fatal.FatalMatch) -> None:
        if self.stop_request:  # a stop held while the launcher wraps up: the stop is the cause of what follows
            return
        self.stopped_by = "fatal"
        self.status.update(state=TaskState.FAILED.value, failure_class=match.failure_class,
                           reason=f"fatal error: {match.description}", ended_utc=utc_now(), cleanup="stopping",
                           **heartbeat(),
                           fatal={"pattern": match.pattern, "description": match.description,
                                  "lines": list(match.lines), "line_number": match.line_number,
                                  "context": self._context_of(match), "utc": utc_now()})

    def _request_stop(self, why: str, reason: str) -> None:
        self.stopped_by = why
        state = STOP_STATES[why]
        self.status.update(state=state.value, failure_class=_state_class(state), reason=reason,
                           ended_utc=utc_now(), cleanup="stopping", **heartbeat())

    def _scan(self, now: float) -> None:
        if now - self.last_scan >= SEEN_SCAN_SECS:
            self.last_scan = now
            self.seen_pids |= proctree.descendants(os.getpid())

    def _wrapping_up(self, proc: subprocess.Popen[bytes], now: float) -> bool:
        """The command's work is done and only its launcher is finishing (it exited, or torchrun's workers
        all ended and torchrun itself has not yet): a stop request that comes now waits for its exit code,
        up to WRAP_UP_SECS, so a tmux server closed after the trainer exited 0 does not fail a finished run."""
        if self.stop_deferred_at is not None and now - self.stop_deferred_at > WRAP_UP_SECS:
            return False
        if proc.poll() is not None:
            done = True
        else:
            sync = {self.sync_proc.pid} if self.sync_proc is not None else set()
            workers = self.seen_pids - {proc.pid} - sync
            done = bool(workers) and not (proctree.descendants(os.getpid()) - {proc.pid} - sync)
        if done and self.stop_deferred_at is None:
            self.stop_deferred_at = now
        return done

    def _beat(self, force: bool = False) -> Dict[str, Any]:
        """Write the heartbeat if HEARTBEAT_SECS passed (or ``force``); returns the record, or {}."""
        now = time.monotonic()
        if not force and now - self.last_beat < HEARTBEAT_SECS:
            return {}
        self.last_beat = now
        return self.status.update(durable=False, **heartbeat(),
                                  last_output_utc=utc_at(time.time() - (now - self.last_output)))

    def _on_stop_wait(self, fd: int, log: Any) -> None:
        self._drain(fd, log)
        self._beat()  # a tree that takes its grace period to stop is not a hung supervisor

    def _find(self) -> set:
        found = proctree.descendants(os.getpid()) | proctree.marked(self.marker)
        if self.sync_proc is not None:
            found.discard(self.sync_proc.pid)
        return found

    def _wait_beating(self, proc: subprocess.Popen[bytes], limit: float) -> Optional[bytes]:
        """Wait up to ``limit`` s for ``proc`` (its stderr collected), keeping the heartbeat going;
        its stderr, or None if it was killed for running too long."""
        deadline = time.monotonic() + limit
        while True:
            try:
                _, err = proc.communicate(timeout=0.5)
                return err or b""
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline:
                    proc.kill()
                    proc.communicate()
                    return None
                self._beat()

    def _sync(self, final: bool = False) -> Optional[str]:
        """local_sync: rsync the run's fast local dir into its durable dir (never blocks the loop;
        the final one waits for its copy, with the heartbeat going, so the run is not taken for lost)."""
        if not self.sync_from or not self.sync_to:
            return None
        if self.sync_proc is not None and self.sync_proc.poll() is None:
            if not final:
                return None
            self._wait_beating(self.sync_proc, 600)
        os.makedirs(self.sync_from, exist_ok=True)
        # the final copy compares content: rsync's quick check (size + whole-second mtime) misses a file
        # rewritten at the same size within the second of the previous sync
        exact = ["--checksum"] if final else []
        argv = ["rsync", "-a", "--partial", "--timeout=300", *exact, f"{self.sync_from.rstrip('/')}/",
                f"{self.sync_to.rstrip('/')}/"]
        self.sync_proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                          start_new_session=True)
        if final:
            err = self._wait_beating(self.sync_proc, 600)
            if err is None:
                return "final sync timed out after 600s"
            if self.sync_proc.returncode != 0:
                detail = err.decode(errors="replace")[-200:]
                return f"final sync failed (rsync exit {self.sync_proc.returncode}): {detail}"
        return None

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        if self.spec.get("forward_usr2"):
            signal.signal(signal.SIGUSR2, self._on_usr2)
        current = read_json(os.path.join(self.task_dir, "status.json"), "task status file") or {}
        if current.get("state") not in (None, TaskState.PENDING.value):
            return 0  # cancelled (or marked lost) before it started: do not run it
        proctree.become_subreaper()
        self.status.make_reserve()
        oom_before = exitcause.oom_kill_count()
        argv: List[str] = list(self.spec["argv"])
        workdir = self.spec.get("workdir") or self.task_dir
        log = open(self.log_path, "ab", buffering=0)  # noqa: SIM115 - lives as long as the loop
        if self.spec.get("log_banner"):
            self.status.write_log(log, f"\n===== {self.spec['log_banner']} ({utc_now()}) =====\n".encode(
                "utf-8", "replace"))
        self._pane(f"[workflow.sh] task {self.spec['id']}: {self.spec.get('command_display', ' '.join(argv))}\n"
                   .encode("utf-8", "replace"))
        try:
            self.proc = subprocess.Popen(argv, cwd=workdir, env=self._env(), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            self.status.update(state=TaskState.FAILED.value, failure_class="nonzero_exit",
                               reason=f"cannot start {argv[0]!r} in {workdir}: {exc.strerror}", ended_utc=utc_now(),
                               cleanup="done", supervisor_pid=os.getpid())
            return 1
        proc = self.proc
        started = time.monotonic()
        self.last_output = self.last_beat = last_sync = started
        self.seen_pids.add(proc.pid)
        self.status.update(state=TaskState.RUNNING.value, pid=proc.pid,
                           pid_start_time=proctree.start_time(proc.pid), supervisor_pid=os.getpid(),
                           supervisor_start_time=proctree.start_time(os.getpid()), boot_id=proctree.boot_id(),
                           started_utc=utc_now(), **heartbeat())
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        eof = False
        exited_at: Optional[float] = None
        while True:
            readable, _, _ = select.select([] if eof else [fd], [], [], 0.1 if not eof else 0.05)
            now = time.monotonic()
            if readable:
                chunk = os.read(fd, 65536)
                if chunk:
                    self.last_output = now
                    match = self._consume(chunk, log)
                    if match and self.stopped_by is None:
                        self._fatal(match)
                else:
                    eof = True
            if self.matcher.pending and self.stopped_by is None:
                # after a moment of quiet, or TRACEBACK_HOLD_SECS after the exception line at the latest
                match = self.matcher.flush() if now - self.last_output > QUIET_FLUSH_SECS else \
                    self.matcher.release_due()
                if match:
                    self._fatal(match)
            self._scan(now)
            if self.usr2_pending and self.stopped_by is None and self.matcher.lines_fed:  # past its imports
                self._forward_usr2(proc, log)
            if self.stopped_by is None:
                if self.stop_request and self._wrapping_up(proc, now):
                    pass  # its exit code decides (see _wrapping_up)
                elif self.stop_request:
                    self._request_stop(self.stop_request, _STOP_REASONS[self.stop_request])
                elif self.timeout and now - started > self.timeout:
                    self._request_stop("timeout", f"wall-clock timeout after {self.timeout:.0f}s")
                elif self.stall and now - self.last_output > self.stall:
                    self._request_stop("stall", f"no output for {self.stall:.0f}s (stall window)")
            if self.stopped_by is not None:
                proctree.stop_tree(self._find, self.grace, pgid=proc.pid, on_wait=lambda: self._on_stop_wait(fd, log),
                                   keep=proc.pid)
                self._drain(fd, log)
                break
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and (eof or now - exited_at > 1.0 or proc.returncode != 0):
                # the command is done; descendants it left behind do not outlive it. A command that failed
                # or was killed (torchrun's agent killed -9) leaves workers nobody coordinates: they are
                # stopped at once, not left a second to finish work that the attempt's verdict disowns
                proctree.stop_tree(self._find, min(self.grace, 2.0), on_wait=lambda: self._on_stop_wait(fd, log),
                                   keep=proc.pid)
                self._drain(fd, log)
                break
            if now - self.last_beat >= HEARTBEAT_SECS:
                self.status.retry()
                record = self._beat(force=True)
                if record and record.get("state") not in (TaskState.RUNNING.value, TaskState.PENDING.value):
                    self.stopped_by = "external"  # marked lost/cancelled by someone else: honour it
            if self.sync_from and now - last_sync >= self.sync_interval:
                last_sync = now
                self._sync()
        return self._finish(proc, log, oom_before)

    def _oom_killed(self, exit_code: Optional[int], sig: Optional[int], oom_before: Optional[int]) -> bool:
        pids = self.seen_pids - ({self.sync_proc.pid} if self.sync_proc is not None else set())
        return exitcause.oom_verdict(exit_code, sig, oom_before, exitcause.oom_kill_count(), pids, self.worker_sigkill)

    def _drain(self, fd: int, log: Any) -> None:
        while True:
            readable, _, _ = select.select([fd], [], [], 0)
            if not readable:
                return
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            self._consume(chunk, log)

    def _finish(self, proc: subprocess.Popen, log: Any, oom_before: Optional[int]) -> int:
        code = proc.wait()
        proctree.reap_children()
        if self.stop_request and self.stopped_by is None and code != 0:
            # held while the launcher wrapped up, but it did not succeed (e.g. scancel's SIGTERM reached the
            # workers too): the stop decides
            self._request_stop(self.stop_request, _STOP_REASONS[self.stop_request])
        if self.partial:
            match = self._feed(self.partial)
            self.partial = b""
            if match and self.stopped_by is None:
                self._fatal(match)
        match = self.matcher.flush() if self.stopped_by is None else None
        if match:
            self._fatal(match)
        log.close()
        sync_error = self._sync(final=True)
        exit_code, sig = (None, -code) if code < 0 else (code, None)
        changes: Dict[str, Any] = {"exit_code": exit_code, "signal": sig, "cleanup": "done",
                                   **heartbeat(), "sync_error": sync_error}
        full = self.status.verdict_note()  # the filesystem was (or is) full
        if self.status.dropped:
            changes["log_dropped_bytes"] = self.status.dropped
        if self.stopped_by is None:
            if code == 0:
                changes.update(state=TaskState.SUCCESS.value, reason="exit 0" + (f" ({full})" if full else ""))
            else:
                oom = self._oom_killed(exit_code, sig, oom_before)
                failure = exitcause.classify_exit(exit_code, sig, oom, None)
                reason = f"exit {exit_code}" if sig is None else f"killed by signal {sig}"
                if oom:
                    reason += " (the kernel's OOM killer killed a process of the task)"
                elif full:
                    failure, reason = "disk_full", f"{reason} ({full})"
                changes.update(state=TaskState.FAILED.value, failure_class=failure, reason=reason,
                               fatal={"context": [text for _, text in self.context][-20:]} if failure else None)
            changes["ended_utc"] = utc_now()
        record = self._final_write(changes)
        verdict = record["state"] + (f" ({record['failure_class']})" if record.get("failure_class") else "")
        self._pane(f"\n[workflow.sh] task {self.spec['id']} finished: {verdict}\n".encode())
        return 0

    def _final_write(self, changes: Dict[str, Any]) -> Dict[str, Any]:
        """The verdict, retried (every FINAL_RETRY_SLEEP s, up to FINAL_RETRY_SECS) while the filesystem is full."""
        deadline = time.monotonic() + FINAL_RETRY_SECS
        record = self.status.update(**changes)
        while not record and time.monotonic() < deadline:
            time.sleep(FINAL_RETRY_SLEEP)
            record = self.status.update(**heartbeat())  # alive, still trying
        self.status.release()
        return record or {"state": "unknown (the filesystem is full: the verdict could not be written)"}


def _state_class(state: TaskState) -> Optional[str]:
    from .taskstate import STATE_CLASS

    return STATE_CLASS.get(state)


def supervise_main(argv: List[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write("usage: agent supervise TASK_DIR\n")
        return 2
    try:
        return Supervisor(argv[0]).run()
    except Exception as exc:  # a bug must still leave a true status behind
        import traceback

        traceback.print_exc()
        update_status(argv[0], state=TaskState.FAILED.value, failure_class="nonzero_exit", ended_utc=utc_now(),
                      reason=f"the supervisor failed: {exc.__class__.__name__}: {exc} (a bug in workflow.sh)",
                      cleanup="done")
        return 1

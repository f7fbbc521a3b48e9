"""Recover a campaign whose pod is LOST.

Two cases, from health.Verdict:
- the provider says the pod is gone (Lium): rent a replacement with the same spec (GPU type and count,
  LIUM_VOLUME attached again), bootstrap it, check out the campaign's commit, then sweep-resume;
- SSH works but the executor is dead: sweep-resume on the same pod.
Before the resume, manage-prepare fences the superseded attempt (see helpers/pod/manage_ops.py) and,
on a replacement without the campaign on its disk, puts the manifest kept locally back. Rows cut off
by the loss resume from their newest checkpoint (helpers/pod/resume_ckpt.py): on LIUM_VOLUME when
OPS_REMOTE_OUTPUTS_DIR is on it, else there is none on the new disk and they start over.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from helpers.errors import ExitCode, WorkflowError
from helpers.lium_api import LiumPod
from helpers.manage import record as records
from helpers.manage.health import Verdict
from helpers.manage.record import ManageRecord
from helpers.session import Session

Say = Callable[[str], None]
NAME_LIMIT = 64


@dataclass
class Outcome:
    session: Session  # the session on the pod running the campaign now
    rerun: list[str]
    boot_secs: float  # renting and waiting for the replacement (the provider's boot time); 0 in place
    recovery_secs: float  # everything else, from the confirmed loss to the resume


def session_for_pod(session: Session, uuid: str) -> Session:
    """The same command line, with LIUM_TARGET set to ``uuid`` (a --set after the user's own)."""
    from helpers.config import load_config
    from helpers.resolved import ConfigRequest

    cfg = session.cfg
    overrides = (*(getattr(session.options, "overrides", None) or ()), f"LIUM_TARGET={uuid}")
    fresh = load_config(ConfigRequest(cfg.project_root, cfg.env_file, cfg.profile, tuple(overrides)))
    options = argparse.Namespace(**{**vars(session.options), "overrides": list(overrides)})
    return Session(fresh, options, session.command)


def replacement_name(name: str | None, epoch: int) -> str:
    """``<name>-r<epoch>``: the lost pod's name without its own ``-r<N>``, cut to the 64 characters allowed."""
    import re

    base = re.sub(r"-r\d+$", "", name or "") or "wf-pod"
    suffix = f"-r{epoch}"
    return base[:NAME_LIMIT - len(suffix)] + suffix


def _volume(settings: Any, client: Any) -> str | None:
    """LIUM_VOLUME for the replacement: an existing volume by id (a ``new:`` one exists by now)."""
    from helpers.lium_api import api_call
    from helpers.lium_up import parse_volume

    if not settings.volume:
        return None
    spec = parse_volume(settings.volume)
    if spec.existing:
        return str(settings.volume)
    with api_call(client, "listing your volumes"):
        hits = [v for v in client.volumes() if v.name == spec.new_name]
    if len(hits) != 1:
        raise WorkflowError(f"manage: LIUM_VOLUME {settings.volume}: {len(hits)} volume(s) named {spec.new_name!r} "
                            "on the account; set LIUM_VOLUME=id:<HUID> to the one holding the campaign",
                            ExitCode.USAGE)
    return f"id:{hits[0].id}"


def rent_replacement(session: Session, rec: ManageRecord, lost: LiumPod | None, say: Say) -> LiumPod:
    """A new pod like the lost one (LIUM_GPU_TYPE/COUNT, else the lost pod's own), waited for until it
    has SSH; its UUID is cached as a target. --manage is the consent to rent it (at most
    MANAGE_MAX_RECOVERIES times): the question is shown, not asked."""
    from helpers.cmd_lium import _cache_file, _known_hosts_dir, lium_settings
    from helpers.lium_api import client_for
    from helpers.lium_up import execute_pod_up, plan_pod_up

    settings = lium_settings(session.cfg)
    gpu_type = settings.gpu_type or (lost.gpu_type if lost else None) or rec.gpu_type
    gpu_count = settings.gpu_count or (lost.gpu_count if lost else None) or rec.gpu_count
    if not gpu_type:
        raise WorkflowError("manage: the lost pod's GPU type is unknown; set LIUM_GPU_TYPE so a replacement of the "
                            "same spec can be rented", ExitCode.USAGE)
    settings = replace(settings, target=None, executor_id=None, gpu_type=gpu_type, gpu_count=gpu_count, yes=True,
                       pod_name=replacement_name(rec.pod_name or (lost.name if lost else None), rec.epoch + 1))
    settings = replace(settings, volume=_volume(settings, client_for(settings)))
    plan = plan_pod_up(settings)
    say(f"manage: renting a replacement: {plan.describe()}")

    def shown(question: str) -> bool:
        say(f"manage: {question.removesuffix('?')} (--manage: yes)")
        return True

    pod, _endpoint = execute_pod_up(plan, settings, _known_hosts_dir(), shown, cache_file=_cache_file(session.cfg),
                                    on_progress=say)
    return pod


FIRST_CONTACT_SECS = 180.0


def _first_contact(session: Session, say: Say) -> str:
    """The replacement's workflow state, once its sshd answers: the API says RUNNING with an SSH command
    a little before the pod's sshd accepts connections; a dropped/refused connection is tried again."""
    from helpers.transport import ConnectionLost

    deadline = time.monotonic() + FIRST_CONTACT_SECS
    delay = 1.0
    while True:
        try:
            return str(session.call("fsm-status", timeout=60)["state"])
        except ConnectionLost as exc:
            if time.monotonic() + delay > deadline:
                raise
            say(f"manage: the replacement does not answer yet ({exc.message.split(';')[0]}); again in {delay:.0f} s")
            session.close()
            time.sleep(delay)
            delay = min(delay * 2, 15.0)


def _ready_for_bootstrap(session: Session, reason: str, say: Say) -> None:
    """The replacement's workflow state: POD_READY for a fresh disk; a SWEEP_RUNNING one read from the
    volume (the lost pod's) is reset, saying why, since bootstrap and checkout come first."""
    state = _first_contact(session, say)
    if state == "INIT":
        session.call("fsm-transition", {"command": "pod-up", "commit": True, "reason": reason}, timeout=60)
    elif state == "SWEEP_RUNNING":
        session.call("fsm-reset", {"state": "POD_READY", "reason": reason}, timeout=60)


def bring_up(session: Session, rec: ManageRecord, lost_uuid: str | None, say: Say) -> None:
    """bootstrap + checkout on the replacement (its commit is pinned by manage-prepare)."""
    _ready_for_bootstrap(session, f"managed recovery: replacement for lost pod {lost_uuid} (campaign "
                                  f"{rec.campaign_id})", say)
    limit = float((session.cfg.number("CHECKOUT_TIMEOUT_SECS") or 1800) * 3 + 120)
    done = session.call("bootstrap", sync_env=True, timeout=limit)
    say(f"manage: bootstrap OK on the replacement; state {done['state']}")
    done = session.call("checkout", None, sync_env=True, timeout=limit)
    say(f"manage: checkout OK: {done['ref']} at {str(done['sha'])[:12]}")


def resume(session: Session, rec: ManageRecord, epoch: int, pod_uuid: str | None, say: Say) -> list[str]:
    """manage-prepare (pin the commit, restore the campaign if missing, fence), then sweep-resume."""
    args: dict[str, Any] = {"campaign": rec.campaign_id, "epoch": epoch, "git_sha": rec.git_sha, "pod": pod_uuid}
    manifest = records.load_manifest(session.cfg, rec.campaign_id)
    if manifest is not None:
        args["manifest"] = manifest
    prepared = session.call("manage-prepare", args, timeout=600)
    if prepared.get("restored"):
        say(f"manage: campaign {rec.campaign_id} was not on the replacement's disk (no volume): its manifest was "
            "put back; rows start over there")
    result = _resume_when_runs_end(session, rec.campaign_id, say)
    rerun = [str(r) for r in result.get("rerun") or []]
    for run_id, ok in result.get("concluded") or []:
        say(f"manage: {run_id} had ended after the loss: concluded ({'ok: not run again' if ok else 'failed'})")
    say(f"manage: campaign {rec.campaign_id} resumed (epoch {epoch}): rerunning {', '.join(rerun) or 'nothing'}")
    return rerun


def _resume_when_runs_end(session: Session, campaign_id: str, say: Say) -> dict[str, Any]:
    """sweep-resume; while runs of the campaign still run under their supervisors (the executor died, they
    did not) it refuses, and is asked again once they may have ended (bounded by RUN_TIMEOUT_SECS)."""
    bound = (session.cfg.number("RUN_TIMEOUT_SECS") or 43200) + 300
    deadline = time.monotonic() + bound
    said = False
    while True:
        try:
            result: dict[str, Any] = session.call("sweep-resume", {"campaign": campaign_id}, sync_env=True,
                                                  timeout=180)
            return result
        except WorkflowError as exc:
            if exc.code != ExitCode.REFUSED or "still running under their supervisors" not in exc.message \
                    or time.monotonic() > deadline:
                raise
            if not said:
                say(f"manage: waiting for runs still going under their supervisors: {exc.message.split(';')[0]}")
                said = True
        time.sleep(2.0)


def recover(session: Session, rec: ManageRecord, verdict: Verdict, say: Say) -> Outcome:
    """Do the recovery; the record is saved with it (the epoch moves on first: a crash half-way through
    never lets an older epoch resume over a newer one)."""
    confirmed = time.monotonic()
    epoch = rec.epoch + 1
    boot = 0.0
    lost_uuid = rec.pod_uuid
    entry: dict[str, Any] = {"epoch": epoch, "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                             "reason": verdict.reason, "lost_pod": lost_uuid, "replaced": verdict.replace,
                             "state": "started"}
    rec.recoveries.append(entry)  # counted against MANAGE_MAX_RECOVERIES from its start (a rent costs money)
    records.save(session.cfg, rec)
    if verdict.replace:
        if session.cfg.target != "lium":
            raise WorkflowError("manage: the pod is gone and it is not a Lium pod: nothing to rent it again from",
                                ExitCode.FAILED)
        began = time.monotonic()
        pod = rent_replacement(session, rec, verdict.pod, say)
        boot = time.monotonic() - began
        rec.epoch, rec.pod_uuid, rec.pod_name = epoch, pod.uuid, pod.name
        rec.gpu_type, rec.gpu_count = pod.gpu_type or rec.gpu_type, pod.gpu_count or rec.gpu_count
        records.save(session.cfg, rec)
        say(f"manage: replacement {pod.label} is up after {boot:.0f} s; put LIUM_TARGET={pod.uuid} in "
            f"{session.cfg.env_file.name} (this watcher uses it already)")
        session.close()
        session = session_for_pod(session, pod.uuid)
        bring_up(session, rec, lost_uuid, say)
    else:
        rec.epoch = epoch
        records.save(session.cfg, rec)
    rerun = resume(session, rec, epoch, rec.pod_uuid, say)
    took = time.monotonic() - confirmed - boot
    entry.update(state="done", pod=rec.pod_uuid, rerun=rerun, boot_secs=round(boot, 2), recovery_secs=round(took, 2))
    records.save(session.cfg, rec)
    return Outcome(session, rerun, boot, took)

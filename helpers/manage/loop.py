"""sweep-watch --manage: watch a campaign and recover it when its pod is lost.

Every --interval seconds: one look at the provider's API (Lium targets) and one SSH round trip
(sweep-status). HEALTHY: the campaign's progress is printed when it changes, and the watch ends with
the campaign (exit 0 when every row is ok, else 1). SUSPECT: said, and looked at again with backoff
(doubling, at most BACKOFF_MAX_SECS); nothing is run again. LOST (see health.py): recovered
(recover.py), at most MANAGE_MAX_RECOVERIES times per campaign; past that, exit 1 with one line.
"""

from __future__ import annotations

import time
from typing import Any

from helpers.errors import ExitCode, WorkflowError
from helpers.manage import health
from helpers.manage import record as records
from helpers.manage.record import ManageRecord
from helpers.session import Session

BACKOFF_MAX_SECS = 60.0
FAILED_STATES = ("failed", "timed_out", "stalled", "lost", "cancelled")


def _summary(status: dict[str, Any]) -> str:
    ex = status.get("executor") or {}
    totals = ", ".join(f"{k} {v}" for k, v in sorted((status.get("totals") or {}).items()))
    return f"campaign {status.get('campaign_id')}: executor {ex.get('state')}; {totals}"


def _code(status: dict[str, Any]) -> int:
    rows = status.get("rows") or []
    return 0 if rows and all(row.get("state") == "ok" for row in rows) else int(ExitCode.FAILED)


class Watcher:
    def __init__(self, session: Session) -> None:
        self.session = session
        cfg = session.cfg
        limit = cfg.number("MANAGE_MAX_RECOVERIES")
        self.limit = 3 if limit is None else limit
        self.interval = max(0.5, float(session.options.interval if session.options.interval is not None else 5.0))
        self.campaign: str | None = getattr(session.options, "campaign", None)
        self.rec: ManageRecord | None = None
        self.last_health: str | None = None
        self.suspect_since = 0.0
        self.shown = ""

    def say(self, text: str) -> None:
        self.session.print(text)
        import sys

        sys.stdout.flush()

    # -- the record: made at the first good look, or read back (a restarted watcher)
    def _lium_pod(self) -> Any:
        if self.session.cfg.target != "lium":
            return None
        from helpers.cmd_lium import lium_settings
        from helpers.lium_api import client_for, list_pods, select_pod

        settings = lium_settings(self.session.cfg)
        pods = [p for p, _ in list_pods(client_for(settings), "looking up LIUM_TARGET")]
        return select_pod(pods, settings.target or "")

    def _use(self, rec: ManageRecord) -> None:
        """A record read back: watch the pod it names (LIUM_TARGET may still name the lost one)."""
        if rec.pod_uuid and self.session.cfg.target == "lium" and self.session.cfg.text("LIUM_TARGET") != rec.pod_uuid:
            from helpers.manage.recover import session_for_pod

            self.say(f"manage: campaign {rec.campaign_id} runs on {rec.pod_uuid} since recovery {rec.epoch - 1} "
                     f"(LIUM_TARGET says {self.session.cfg.text('LIUM_TARGET')}): watching that pod")
            self.session.close()
            self.session = session_for_pod(self.session, rec.pod_uuid)
        self.rec = rec
        self.campaign = rec.campaign_id
        self.say(f"manage: watching campaign {rec.campaign_id} (commit {str(rec.git_sha or '?')[:12]}, epoch "
                 f"{rec.epoch}, {len(rec.recoveries)} of MANAGE_MAX_RECOVERIES={self.limit} recoveries used)")
        if self.session.cfg.target == "lium" and not self.session.cfg.text("LIUM_VOLUME"):
            self.say("manage: no LIUM_VOLUME: a replacement pod starts with an empty disk, so its rows start over "
                     "(set LIUM_VOLUME: the outputs, checkpoints included, then live on it)")

    def _adopt(self, campaign_id: str) -> None:
        """The first good look: keep what a recovery needs (commit, manifest, the pod's spec)."""
        found = records.load(self.session.cfg, campaign_id)
        if found is not None:
            self._use(found)
            return
        probe = self.session.call("manage-probe", {"campaign": campaign_id, "manifest": True}, timeout=120)
        self.session.close()
        fence = probe.get("fence") or {}
        pod = self._lium_pod()
        rec = ManageRecord(campaign_id=campaign_id, git_sha=probe.get("git_sha"),
                           pod_uuid=pod.uuid if pod else None, pod_name=pod.name if pod else None,
                           gpu_type=pod.gpu_type if pod else None, gpu_count=pod.gpu_count if pod else None,
                           epoch=max(1, int(fence.get("epoch") or 1)))
        if isinstance(probe.get("manifest"), dict):
            records.save_manifest(self.session.cfg, campaign_id, probe["manifest"])
        records.save(self.session.cfg, rec)
        self._use(rec)

    # -- one look
    def _healthy(self, verdict: health.Verdict) -> int | None:
        status = verdict.status or {}
        if self.last_health == health.SUSPECT:
            self.say(f"manage: HEALTHY again after {time.monotonic() - self.suspect_since:.0f} s; nothing was run "
                     "again")
        line = _summary(status)
        if line != self.shown:
            self.say(line)
            self.shown = line
        if (status.get("executor") or {}).get("state") not in health.LIVE:
            return _code(status)
        return None

    def _lost(self, verdict: health.Verdict) -> None:
        from helpers.manage.recover import recover

        assert self.rec is not None
        self.say(f"manage: LOST: {verdict.reason}")
        used = len(self.rec.recoveries)
        if used >= self.limit:
            raise WorkflowError(f"manage: campaign {self.rec.campaign_id} lost its pod ({verdict.reason}) and "
                                f"MANAGE_MAX_RECOVERIES={self.limit} recoveries are used up ({used}): not recovering; "
                                "see sweep-status, then sweep-resume or pod-up by hand", ExitCode.FAILED)
        self.say(f"manage: recovery {used + 1} of {self.limit} ...")
        outcome = recover(self.session, self.rec, verdict, self.say)
        self.session = outcome.session
        self.say(f"manage: recovered in {outcome.recovery_secs:.1f} s after the loss was confirmed"
                 + (f" (plus {outcome.boot_secs:.0f} s for the replacement to boot)" if outcome.boot_secs else ""))
        self.shown = ""

    def _first_uuid(self) -> str | None:
        """Before the record exists: the UUID LIUM_TARGET names, from the API (None if it cannot say)."""
        if self.session.cfg.target != "lium":
            return None
        try:
            pod = self._lium_pod()
        except WorkflowError:
            return None
        return str(pod.uuid) if pod else None

    def run(self) -> int:
        delay = self.interval
        found = records.load(self.session.cfg, self.campaign) if self.campaign else None
        if found is not None:
            self._use(found)
        while True:
            uuid = self.rec.pod_uuid if self.rec else self._first_uuid()
            verdict = health.check(self.session, self.campaign, uuid)
            if self.rec is None and verdict.status is not None:
                self._adopt(str(verdict.status.get("campaign_id")))
                if verdict.health == health.LOST:
                    continue  # look again, now with the record
            if verdict.health == health.HEALTHY:
                code = self._healthy(verdict)
                if code is not None:
                    return code
                delay = self.interval
            elif verdict.health == health.SUSPECT:
                if self.last_health != health.SUSPECT:
                    self.suspect_since = time.monotonic()
                self.say(f"manage: SUSPECT: {verdict.reason}; looking again in {delay:.0f} s (nothing is run again "
                         "while only SSH fails)")
            elif self.rec is None:
                raise WorkflowError(f"manage: {verdict.reason}, and this watcher never saw the campaign running "
                                    "there (no record of it here): nothing to recover from; start sweep-watch "
                                    "--manage while the pod is up", ExitCode.FAILED)
            else:
                self._lost(verdict)
                delay = self.interval
            self.last_health = verdict.health
            time.sleep(delay)
            if verdict.health == health.SUSPECT:
                delay = min(delay * 2, BACKOFF_MAX_SECS)

def watch(session: Session) -> int:
    """The entry point from cmd_sweeps.cmd_sweep_watch."""
    watcher = Watcher(session)
    try:
        return watcher.run()
    finally:
        watcher.session.close()

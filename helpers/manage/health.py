"""Is the pod running the campaign healthy? HEALTHY, SUSPECT or LOST, with the reason.

LOST only on evidence: the provider's API says the pod is gone (not listed, or in a status it never
comes back from), or SSH works and the campaign's executor process is dead. Everything else that is
not a good answer (SSH refused or timing out, an API error, a pod rebooting, a pod that vanished
between the API look and the reconnect) is SUSPECT: shown and looked at again with backoff, and never
a reason to run a row again (a status-check blip is not a loss).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from helpers.errors import WorkflowError
from helpers.lium_api import LiumPod
from helpers.session import Session

HEALTHY, SUSPECT, LOST = "HEALTHY", "SUSPECT", "LOST"
PRESENT, GONE, UNKNOWN, NO_PROVIDER = "present", "gone", "unknown", "none"
LIVE = ("running", "starting", "stopping")  # executor states that may still change rows
PROBE_TIMEOUT_SECS = 60.0


@dataclass(frozen=True)
class ProviderView:
    """What the provider's API says about the pod."""

    verdict: str  # PRESENT | GONE | UNKNOWN | NO_PROVIDER
    detail: str = ""
    pod: LiumPod | None = None


@dataclass(frozen=True)
class Verdict:
    health: str  # HEALTHY | SUSPECT | LOST
    reason: str
    status: dict[str, Any] | None = None  # the sweep-status reply, when the pod answered
    replace: bool = False  # LOST because the provider says the pod is gone: rent a replacement
    pod: LiumPod | None = None


def classify(provider: ProviderView, status: dict[str, Any] | None, probe_error: str | None) -> Verdict:
    """The one rule (pure: no network)."""
    if provider.verdict == GONE:
        return Verdict(LOST, f"the provider says the pod is gone ({provider.detail})", replace=True,
                       pod=provider.pod)
    if status is None:
        said = f"; the provider says {provider.detail}" if provider.detail else ""
        return Verdict(SUSPECT, f"the pod does not answer over SSH ({probe_error or 'no answer'}){said}",
                       pod=provider.pod)
    executor = status.get("executor") or {}
    if executor.get("state") == "lost" and unfinished(status):
        return Verdict(LOST, f"SSH works and the executor is dead ({executor.get('reason') or 'process gone'})",
                       status=status, pod=provider.pod)
    return Verdict(HEALTHY, f"executor {executor.get('state')}", status=status, pod=provider.pod)


def unfinished(status: dict[str, Any]) -> list[str]:
    """Rows that neither succeeded nor failed for good (a lost row is unfinished)."""
    done = ("ok", "failed", "timed_out", "stalled", "cancelled")
    return [str(row.get("run_id")) for row in status.get("rows") or [] if row.get("state") not in done]


def provider_look(session: Session, uuid: str | None) -> ProviderView:
    """One fresh listing of the Lium pods (never the cache); NO_PROVIDER for ssh/local targets."""
    if session.cfg.target != "lium" or not uuid:
        return ProviderView(NO_PROVIDER)
    from helpers.cmd_lium import lium_settings
    from helpers.lium_api import client_for, list_pods, sdk

    try:
        client = client_for(lium_settings(session.cfg))
        pods = [p for p, _ in list_pods(client, f"looking up pod {uuid}") if p.uuid == uuid]
        terminal = sdk().Lium.TERMINAL_POD_STATUSES
    except WorkflowError as exc:
        return ProviderView(UNKNOWN, f"its API did not answer: {exc.message}")
    if not pods:
        return ProviderView(GONE, f"pod {uuid} is no longer listed")
    pod = pods[0]
    if pod.status in terminal:
        return ProviderView(GONE, f"{pod.label} is {pod.status}", pod)
    if not pod.has_ssh:
        return ProviderView(PRESENT, f"{pod.label} is {pod.status}", pod)
    return ProviderView(PRESENT, "", pod)


def probe(session: Session, campaign_id: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """(sweep-status reply, None), or (None, why) when the pod could not be asked. The connection is
    closed afterwards: the next look starts afresh (a stale endpoint is looked up again)."""
    from helpers.pod.errors import ExitCode

    try:
        status: dict[str, Any] = session.call("sweep-status", {"campaign": campaign_id}, timeout=PROBE_TIMEOUT_SECS)
    except WorkflowError as exc:
        if exc.code not in (ExitCode.TRANSPORT, ExitCode.NOT_FOUND, ExitCode.FAILED):
            raise  # a bad config, an unreadable state file: not something waiting fixes
        return None, exc.message
    finally:
        session.close()
    columns = status.get("columns")
    if columns:
        status["rows"] = [dict(zip(columns, row)) for row in status["rows"]]
        del status["columns"]
    return status, None


def check(session: Session, campaign_id: str | None, uuid: str | None) -> Verdict:
    """The API first (a pod it says is gone is not probed), then one SSH round trip."""
    provider = provider_look(session, uuid)
    if provider.verdict == GONE:
        return classify(provider, None, None)
    status, error = probe(session, campaign_id)
    return classify(provider, status, error)

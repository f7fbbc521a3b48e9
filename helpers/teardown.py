"""TEARDOWN_ON_FINISH when nobody watches: the next sweep-status / sweep-watch / flow acts on it.

There are no provider credentials on the pod, so the pod cannot delete itself when its campaign
ends. Instead, the first client command that sees the campaign concluded (its executor no longer
live and no row left unfinished) does it: with TEARDOWN_ON_FINISH=delete and a Lium pod THIS TOOL
rented (its UUID in .workflow/rented-pods.json, helpers/rented.py) it runs fetch-all of the
campaign, checks that every run was fetched and verified final, and only then pod-delete --yes of
exactly that pod (by UUID). Each step is printed; any failure keeps the pod and says what to run.
A pod not rented by the tool is never deleted (one warning line). `stop`: a concluded campaign has
nothing left to stop (said only with --debug); `keep`: nothing. Done-ness is recorded in
.workflow/teardown-done.json (campaign -> pod deleted) so it runs once. flow runs its own teardown
phase and suppresses this one for the commands it runs inside itself (``suppressed()``).
"""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import sys
from collections.abc import Iterator
from typing import Any

from helpers import rented
from helpers.session import Session

ENTRY = "infra_scripts/workflow.sh"
LIVE = ("running", "starting", "stopping")
_SUPPRESSED: list[bool] = []


@contextlib.contextmanager
def suppressed() -> Iterator[None]:
    """flow's inner commands (its own wait phase) leave the teardown to flow's teardown phase."""
    _SUPPRESSED.append(True)
    try:
        yield
    finally:
        _SUPPRESSED.pop()


def concluded(status: dict[str, Any]) -> bool:
    from helpers.cmd_sweeps import unfinished_rows

    executor = status.get("executor") or {}
    return bool(status.get("campaign_id")) and executor.get("state") not in LIVE and not unfinished_rows(status)


def _say(session: Session, text: str) -> None:
    stream = sys.stderr if session.as_json else sys.stdout  # --json: stdout stays one JSON document
    sys.stdout.flush()
    stream.write(f"teardown: {text}\n")
    stream.flush()


def _done_file(session: Session) -> Any:
    return rented.flow_file(session.cfg).parent / "teardown-done.json"


def _done(session: Session) -> dict[str, Any]:
    try:
        data = json.loads(_done_file(session).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data.get("done") or {} if isinstance(data, dict) else {}


def _mark_done(session: Session, campaign: str, uuid: str) -> None:
    path = _done_file(session)
    entries = {**_done(session), campaign: {"pod_uuid": uuid, "deleted_utc": rented.utc_now()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"version": 1, "done": entries}, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def _globals(session: Session, uuid: str) -> list[str]:
    cfg, o = session.cfg, session.options
    words = ["--env", str(cfg.env_file)]
    words += ["--profile", o.profile] if getattr(o, "profile", None) else []
    for item in getattr(o, "overrides", None) or []:
        words += ["--set", item]
    return [*words, "--set", f"LIUM_TARGET={uuid}", "--set", "TEARDOWN_ON_FINISH=keep"]


def _run(base: list[str], words: list[str]) -> tuple[int, Any]:
    from helpers.cli import main

    argv = [*base, *words]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            code = main(argv)
    except Exception as exc:  # noqa: BLE001 - any failure of the step keeps the pod (said by the caller)
        sys.stderr.write(f"teardown: {words[0]} raised {type(exc).__name__}: {str(exc)[:200]}\n")
        return 1, None
    try:
        return code, json.loads(out.getvalue()) if out.getvalue().strip() else None
    except ValueError:
        return code, None


def _rented_uuid(session: Session) -> tuple[str, str]:
    """(the Lium pod's UUID if this tool rented it, else "", a label of the pod for messages)."""
    cfg = session.cfg
    if cfg.target != "lium":
        return "", session.transport_label()
    from helpers.cmd_lium import lium_settings
    from helpers.lium import plan_pod_delete

    uuid = plan_pod_delete(lium_settings(cfg)).pod.uuid
    return (uuid if uuid in rented.rented_pods(cfg) else ""), f"Lium pod {uuid}"


def after_status(session: Session, status: dict[str, Any]) -> None:
    """Call once with the latest sweep-status of a campaign; acts only when it has concluded."""
    mode = session.cfg.text("TEARDOWN_ON_FINISH") or "keep"
    if mode == "keep" or _SUPPRESSED or not isinstance(status, dict) or not concluded(status):
        return
    debug = bool(getattr(session.options, "debug", False))
    campaign = str(status["campaign_id"])
    if mode == "stop":
        if debug:
            _say(session, f"TEARDOWN_ON_FINISH=stop: campaign {campaign} has ended, nothing is left to stop")
        return
    if mode != "delete" or campaign in _done(session):
        return
    from helpers.errors import WorkflowError

    try:
        uuid, label = _rented_uuid(session)
    except WorkflowError as exc:
        _say(session, f"TEARDOWN_ON_FINISH=delete: could not look up the pod ({exc}); the pod is kept")
        return
    if not uuid:
        _say(session, f"TEARDOWN_ON_FINISH=delete: {label} was not rented by this tool: never deleted; delete it "
                      "yourself with pod-delete if you mean to")
        return
    busy = _other_live(session, campaign)
    if busy:
        _say(session, f"TEARDOWN_ON_FINISH=delete: campaign {campaign} has ended but campaign {busy} still runs on "
                      f"Lium pod {uuid}; the pod is kept")
        return
    _delete(session, campaign, uuid)


def _other_live(session: Session, campaign: str) -> str:
    """Another campaign on the pod whose executor may still run (the pod must not go then), else ""."""
    from helpers.errors import WorkflowError

    try:
        reply = session.call("sweep-list", {}, timeout=120)
    except WorkflowError:
        return "(unknown: sweep-list failed)"
    for entry in reply.get("campaigns") or [] if isinstance(reply, dict) else []:
        if entry.get("campaign_id") != campaign and entry.get("state") in LIVE:
            return str(entry.get("campaign_id"))
    return ""


def _delete(session: Session, campaign: str, uuid: str) -> None:
    base = _globals(session, uuid)
    fetch = ["fetch-all", "--json", "--campaign", campaign]
    delete = ["pod-delete", "--yes"]
    fetch_line, delete_line = shlex.join([ENTRY, *base, *fetch[:1], *fetch[2:]]), shlex.join([ENTRY, *base, *delete])
    if session.dry_run:
        _say(session, f"TEARDOWN_ON_FINISH=delete: campaign {campaign} has ended; would run {fetch_line}, verify "
                      f"every run, then {delete_line} (Lium pod {uuid}, rented by this tool); nothing is changed")
        return
    _say(session, f"campaign {campaign} has ended and TEARDOWN_ON_FINISH=delete: fetching its results from Lium pod "
                  f"{uuid}: {fetch_line}")
    code, data = _run(base, fetch)
    keep = f"the pod is kept; fetch and verify with {fetch_line}, then delete it with {delete_line}"
    if code != 0 or not isinstance(data, dict):
        _say(session, f"fetch-all FAILED (exit {code}); {keep}")
        return
    if data.get("not_final") or data.get("changed_while_running") or data.get("mismatched"):
        _say(session, f"fetch NOT verified final ({len(data.get('not_final') or [])} run(s) not final); {keep}")
        return
    files = sum(int(r.get("files") or 0) for r in data.get("runs") or [])
    _say(session, f"fetched and verified {len(data.get('runs') or [])} run(s), {files} file(s) in {data.get('dest')}")
    _say(session, f"deleting Lium pod {uuid} (rented by this tool): {delete_line}")
    code, _ = _run(base, delete)
    if code != 0:
        _say(session, f"pod-delete FAILED (exit {code}); the pod may still bill: run {delete_line}")
        return
    rented.forget_rented(session.cfg, uuid)
    _mark_done(session, campaign, uuid)
    _say(session, f"Lium pod {uuid} deleted; billing stopped")

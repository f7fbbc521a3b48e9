"""archive: the lifecycle of campaigns (--list-only), moving finished ones under _archive/, --restore."""

from __future__ import annotations

from typing import Any

from helpers.errors import ExitCode, WorkflowError
from helpers.render import table
from helpers.session import Session


def _row(info: dict[str, Any], note: str = "") -> list[str]:
    return [info["campaign_id"], str(info.get("lifecycle")), str(info.get("outcome") or ""), str(info.get("rows")),
            str(info.get("ok")), str(info.get("failed")), str(info.get("ended_utc") or ""),
            str(len(info.get("runs") or [])), note]


HEADERS = ["CAMPAIGN", "LIFECYCLE", "OUTCOME", "ROWS", "OK", "FAILED", "ENDED", "RUN DIRS", "NOTE"]


def cmd_archive(session: Session) -> int:
    o = session.options
    if o.restore and (o.list_only or o.older_than is not None or o.status != "all"):
        raise WorkflowError("archive --restore CAMPAIGN takes no --list-only, --status or --older-than",
                            ExitCode.USAGE)
    args = {"restore": o.restore, "list_only": bool(o.list_only), "status": o.status, "older_than": o.older_than,
            "plan_only": session.dry_run}
    reply = session.call("archive", args, timeout=600)
    if session.as_json:
        session.emit_json(reply)
        return 0
    if o.restore:
        if session.dry_run:
            session.print(f"would restore campaign {o.restore} and {len(reply['plan']['runs'])} run dir(s)")
        else:
            session.print(f"restored campaign {reply['restored']} and its run dir(s): "
                          f"{', '.join(reply['runs']) or 'none'}")
        return 0
    if o.list_only:
        rows = [_row(c) for c in reply["campaigns"]] + [_row(c, f"archived {c.get('archived_utc')}")
                                                       for c in reply["archived"]]
        if not rows:
            session.print("no campaign on the pod yet")
            return 0
        for line in table(HEADERS, rows):
            session.print(line)
        session.print(f"(stale: finished more than STALE_DAYS={reply['stale_days']} days ago)")
        return 0
    verb = "would archive" if session.dry_run else "archived"
    done = reply["plan"] if session.dry_run else reply["moved"]
    rows = [_row(c, "; ".join(f"{x['run_id']} left: {x['why']}" for x in c.get("left") or [])) for c in done]
    rows += [_row(c, f"kept: {c['skipped']}") for c in reply["skipped"]]
    for line in table(HEADERS, rows) if rows else []:
        session.print(line)
    where = reply.get("archive") or "_archive/"
    session.print(f"{verb} {len(done)} campaign(s)" + (f" under {where}" if done else "")
                  + "; nothing deleted (workflow.sh archive --restore CAMPAIGN moves one back)")
    return 0

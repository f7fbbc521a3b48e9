"""Sweep commands that only read: sweep-logs (a row's log, by attempt) and sweep-list (campaigns)."""

from __future__ import annotations

import sys
import time

from helpers.render import table
from helpers.session import Session

FOLLOW_INTERVAL_SECS = 1.0


def cmd_sweep_logs(session: Session) -> int:
    o = session.options
    args = {"run_id": o.run_id, "attempt": o.attempt, "follow": bool(o.follow), "offset": 0}
    while True:
        reply = session.call("sweep-logs", args, timeout=120)
        if args["offset"] == 0:
            shown = ", ".join(map(str, reply["attempts"])) or "none"
            session.print(f"# run {reply['run_id']} attempt {reply['attempt']} (attempts: {shown}): {reply['log']}")
        if reply["text"]:
            sys.stdout.write(reply["text"])
            sys.stdout.flush()
        if not o.follow or reply["final"]:
            return 0
        args.update(offset=reply["offset"], attempt=reply["attempt"])
        time.sleep(FOLLOW_INTERVAL_SECS)


def cmd_sweep_list(session: Session) -> int:
    reply = session.call("sweep-list", {}, timeout=120)
    if session.as_json:
        session.emit_json(reply)
        return 0
    rows = [[c["campaign_id"] + (" *" if c.get("latest") else ""), c["state"], str(c["rows"]), str(c["ok"]),
             str(c["failed"]), c.get("created_utc") or "", c.get("ended_utc") or "", c.get("csv_name") or ""]
            for c in reply["campaigns"]]
    if not rows:
        session.print("no campaign on the pod yet; start one with infra_scripts/workflow.sh sweep-start")
        return 0
    from helpers.colour import enabled, painter

    for line in table(["CAMPAIGN", "STATE", "ROWS", "OK", "FAILED", "CREATED", "ENDED", "CSV"], rows,
                      painter(1, enabled())):
        session.print(line)
    session.print("(* the latest: what sweep-status shows by default)")
    return 0

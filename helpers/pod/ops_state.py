"""Agent ops on the workflow state machine: fsm-status (read-only), fsm-reset, fsm-transition."""

from __future__ import annotations

from typing import Any, Dict

from . import fsm
from .context import Context


def fsm_status(ctx: Context) -> Dict[str, Any]:
    record = fsm.read_state(ctx.state_file)
    data = record.to_json()
    data["exists"] = record.exists
    data["path"] = ctx.state_file
    data["next"] = {cmd: [s.value for s in table] for cmd, table in fsm.TRANSITIONS.items()
                    if fsm.State(record.state) in table and cmd in fsm.USER_COMMANDS}
    return data


def fsm_reset(ctx: Context) -> Dict[str, Any]:
    record = fsm.reset(ctx.state_file, str(ctx.args["state"]), str(ctx.args.get("reason") or ""))
    return {**record.to_json(), "path": ctx.state_file}


def fsm_transition(ctx: Context) -> Dict[str, Any]:
    """Check (and with commit=True apply) a command's transition."""
    command = str(ctx.args["command"])
    if not ctx.args.get("commit"):
        record = fsm.read_state(ctx.state_file)
        target = fsm.check_allowed(record, command, ctx.enforce)
        return {"state": record.state, "would_become": target.value}
    record = fsm.transition(ctx.state_file, command, str(ctx.args.get("reason", "")), ctx.enforce)
    return record.to_json()

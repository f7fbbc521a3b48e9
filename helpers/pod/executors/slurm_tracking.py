"""MLflow tracking on the Slurm executor (stdlib only).

The array tasks run on compute nodes that may not reach the tracking server and come and go with
the scheduler, so no array task runs a sidecar: ``sweep-start`` / ``sweep-resume`` start the
campaign's one tracking sidecar (tracking/sidecar.py) on the login node, beside the campaign dir on
the shared filesystem, as the tmux executor does beside itself. The sidecar sees the rows' run dirs
there, knows the campaign is live from squeue (executors/slurm_campaign.py ``executor_state``), and
exits once every row is settled. Its lock keeps it to one per campaign (a resume while it still
runs starts nothing new). Each array task waits up to TRACKING_WAIT_SECS for its child run id.
"""

from __future__ import annotations

from typing import Optional

from .. import tracking
from ..context import Context


def start(ctx: Context, campaign_dir: str) -> Optional[int]:
    """The campaign's sidecar on the login node (detached); None when tracking is off."""
    return tracking.start_sidecar(ctx, campaign_dir)


def row_waits(ctx: Context) -> bool:
    """True when the array task's row should wait for its MLflow child run (tracking on)."""
    return tracking.enabled(ctx.config)


def new_pass() -> None:
    """The sidecar lives for the whole campaign: forget the squeue lines slurm_state keeps for one agent
    call, so each pass sees the queue as it is now (the campaign's end included)."""
    from . import slurm_state

    slurm_state.forget_queue()

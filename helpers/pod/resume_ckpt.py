"""A row whose last attempt never ended (its executor or its whole pod died under it) resumes from its
checkpoint when it runs again: RUN_RESUME_OVERRIDE is added to the row's own overrides, as for a retry.

The checkpoint is wherever the trainer keeps it in its out_dir (the run directory), so it survives the
pod when OPS_REMOTE_OUTPUTS_DIR is on a persistent volume (LIUM_VOLUME); a trainer that finds none
starts from the beginning (examples/nanogpt/train.py does, with resume=1 and no checkpoint).
"""

from __future__ import annotations

from typing import List, Tuple

from . import attempts
from .context import Context


def resume_overrides(ctx: Context, run_path: str, campaign_id: str, overrides: List[str]) -> Tuple[List[str], str]:
    """(overrides, note): the row's overrides plus RUN_RESUME_OVERRIDE when its latest attempt, of this
    campaign, was cut off; else the overrides unchanged and no note."""
    found = attempts.pending(run_path)
    if found is None or found[1].get("campaign_id") != campaign_id:
        return overrides, ""
    words = ctx.words("RUN_RESUME_OVERRIDE")
    if not words:
        return overrides, ""
    keys = {word.split("=", 1)[0].lstrip("-") for word in words}
    kept = [word for word in overrides if word.split("=", 1)[0].lstrip("-") not in keys]
    return kept + words, f"resumed from its checkpoint: attempt {found[0]} was cut off"

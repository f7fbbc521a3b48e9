"""The managed-recovery fence, as the executor reads it (stdlib only).

manage-prepare (helpers/pod/manage_ops.py) writes ``manage_fence.json`` in the campaign directory when a
newer epoch takes the campaign over, naming the executor generation it superseded
(``fenced_generation``). An executor of that generation or an older one that is still alive (e.g. on a
shared volume, its pod only cut off) must not write results any more: before each write of a row's
attempt record or summary it calls ``check``, which raises ``Superseded``; the executor then exits
without writing (executor_main), leaving the rows to the newer epoch's executor.
"""

from __future__ import annotations

import os
from typing import Optional

from .jsonio import read_json

FENCE = "manage_fence.json"


class Superseded(Exception):
    """This executor's generation was fenced by a newer epoch: it must stop writing and exit."""


def superseded(campaign_path: str, generation: int) -> Optional[str]:
    """Why an executor of ``generation`` may no longer write results (None: it may)."""
    fence = read_json(os.path.join(campaign_path, FENCE), "manage fence")
    if not isinstance(fence, dict):
        return None
    try:
        fenced = int(fence.get("fenced_generation") or 0)
    except (TypeError, ValueError):
        return None
    if generation > fenced:
        return None
    return (f"superseded: epoch {fence.get('epoch')} (pod {fence.get('pod') or '?'}) took this campaign over at "
            f"{fence.get('utc')}, fencing executor generation {fenced} (this one is {generation}); exiting without "
            "writing results")


def check(campaign_path: str, generation: int) -> None:
    why = superseded(campaign_path, generation)
    if why is not None:
        raise Superseded(why)

"""Where a campaign's rows run, behind one small interface.

An executor offers ``submit(ctx, campaign_dir, row_indices, generation, plan_only)``,
``status(ctx, campaign_dir, manifest, views)`` (merges the scheduler's view into the per-row
views read from the run files), ``stop(ctx, campaign_dir, manifest)`` and resume (``submit`` of
exactly the unfinished rows). The tmux executor is ``pod/executor.py`` (driven from
campaigns.py); the Slurm executor is ``executors/slurm.py`` with its array task in
``executors/slurm_task.py`` and the scheduler's view in ``executors/slurm_state.py``. Either way
every row runs under the same supervisor and writes the same ``<run_id>/`` files. A campaign
submitted in parts (``sweep-start --index-offset/--num-jobs``, ``executors/slurm_parts.py``) runs each
part as one executor generation, on either executor.
"""

from __future__ import annotations

from typing import Any, Dict

SLURM = "slurm"


def kind_of(config: Dict[str, Any]) -> str:
    """The executor a campaign (its manifest's config) or a request uses: tmux or slurm."""
    return SLURM if str(config.get("SWEEP_EXECUTOR", "tmux")) == SLURM else "tmux"

#!/usr/bin/env bash
# The README's first command: on this machine (target `local`: it stands in for the pod, no SSH, CPU),
# set everything up and run a real sweep of the example trainer, then show the truth and fetch it.
#   bootstrap -> checkout (clone of this repo, venv, offline data) -> 4-row sweep (two rows evaluated and
#   gated after training) -> status -> leaderboard -> fetch-all
# Everything it writes stays inside this checkout (.workflow/ and artifacts/, both git-ignored).
# DEMO_TORCH=spec overrides the torch that is installed into .workflow/venv if it has none
# (default torch==2.13.0; TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu takes PyTorch's CPU build,
# which on Linux x86-64 avoids the multi-GB CUDA build and its nvidia-* packages).
set -euo pipefail

step() {
  if [[ -t 1 && -z "${NO_COLOR:-}" ]]; then  # bold on a terminal only: no escape codes in a file or pipe
    printf '\n\033[1m== workflow.sh %s\033[0m\n' "$*"
  else
    printf '\n== workflow.sh %s\n' "$*"
  fi
}

main() {
  local root
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  local wf=("${root}/infra_scripts/workflow.sh" --set SWEEP_CPU_SLOTS=2)
  "${root}/infra_scripts/workflow.sh" help >/dev/null  # creates .workflow/venv on first use
  local python="${WORKFLOW_VENV:-${root}/.workflow/venv}/bin/python"
  if ! "${python}" -c 'import torch, numpy' 2>/dev/null; then
    printf 'demo: installing %s and numpy into %s (the local "pod" trains with it)\n' "${DEMO_TORCH:-torch==2.13.0}" "${python}"
    # TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu takes torch from PyTorch's CPU wheel index
    if [[ -n "${TORCH_INDEX_URL:-}" ]]; then
      "${python}" -m pip install --quiet --disable-pip-version-check --index-url "${TORCH_INDEX_URL}" \
        "${DEMO_TORCH:-torch==2.13.0}"
    fi
    "${python}" -m pip install --quiet --disable-pip-version-check "${DEMO_TORCH:-torch==2.13.0}" numpy
  fi
  step validate && "${wf[@]}" validate
  step pod-status && "${wf[@]}" pod-status
  step bootstrap && "${wf[@]}" bootstrap
  step checkout && "${wf[@]}" checkout
  step sweep-start && "${wf[@]}" sweep-start
  step sweep-watch
  "${wf[@]}" sweep-watch --interval 5 || true
  step sweep-status
  if ! "${wf[@]}" sweep-status; then
    printf '(sweep-status exits 1 because a row failed, as planned: its REASON column says why)\n'
  fi
  step sweep-logs tiny-typo && "${wf[@]}" sweep-logs tiny-typo
  step leaderboard && "${wf[@]}" leaderboard
  step fetch-all && "${wf[@]}" fetch-all
  step fsm-status && "${wf[@]}" fsm-status
  printf '\nDone. Runs are in %s/artifacts/<run_id>/ (summary.json, run_manifest.json, metrics.jsonl, run.log).\n' "${root}"
}

main "$@"

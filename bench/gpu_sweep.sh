#!/usr/bin/env bash
# The example trainer, then a sweep through workflow.sh, on a real GPU machine (target local: this
# machine is the pod; tmux executor):
#   bench/gpu_sweep.sh [OUT_DIR]          (default /tmp/workflow-gpu-sweep)
# 1. the trainer alone: GPT-2 small (124M, bf16, eager) on the offline byte shards, 150 steps of
#    16 x 1024 tokens: the baseline tokens/s;
# 2. bootstrap -> checkout (REQUIRE_CUDA=1, nothing pip-installed) -> the 3 rows of bench/gpu_sweep.csv
#    (eager, torch.compile, a simulated CUDA OOM retried with half the batch) -> sweep-watch --plain ->
#    sweep-status -> leaderboard -> fetch-all;
# 3. one table: each row's state, attempts, tokens/s and MFU, and its tokens/s against the trainer alone.
# Needs python3 with torch and CUDA, tmux, rsync and git; WORKFLOW_VENV as for any workflow.sh command.
# POD_PRICE_PER_HOUR (default 3.50, an assumed H200 price) only feeds the cost columns.
set -euo pipefail

common_overrides() {
  sed -n 's/^gpu-eager,[^,]*,[^,]*,"\([^"]*\)".*/\1/p' "$1"
}

main() {
  local root out
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  out="${1:-/tmp/workflow-gpu-sweep}"
  mkdir -p "${out}"
  local csv="${root}/bench/gpu_sweep.csv"
  local wf=("${root}/infra_scripts/workflow.sh" --set OPS_DEFAULT_HOST=local --set REQUIRE_CUDA=1
    --set PIP_INSTALL_ARGS=none --set SWEEP_CSV="${csv}" --set RUN_RETRY_BACKOFF_SECS=2
    --set POD_PRICE_PER_HOUR="${POD_PRICE_PER_HOUR:-3.50}" --set WF_FSM_ENFORCE=0)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "${out}/gpu.txt"
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'

  printf '\n== the trainer alone\n'
  local data="${out}/data"
  (cd "${root}/examples/nanogpt" && python3 data/build_offline_shards.py --out "${data}")
  local overrides=()
  read -r -a overrides <<<"$(common_overrides "${csv}")"
  local began ended
  began="$(date +%s.%N)"
  (cd "${root}/examples/nanogpt" && python3 train.py config/train_gpt2s_fineweb10B.py "${overrides[@]}" \
    "data_dir=${data}" "out_dir=${out}/alone") 2>&1 | tee "${out}/alone.log" | grep -E '^(model|iter 1[0-4]0|done)'
  ended="$(date +%s.%N)"
  printf 'trainer alone: %.1f s wall\n' "$(python3 -c "print(${ended} - ${began})")"

  printf '\n== the sweep through workflow.sh\n'
  "${wf[@]}" bootstrap
  "${wf[@]}" checkout
  began="$(date +%s.%N)"
  "${wf[@]}" sweep-start
  "${wf[@]}" sweep-watch --plain --interval 2 | tee "${out}/watch.txt" || true
  ended="$(date +%s.%N)"
  printf 'sweep: %.1f s wall from sweep-start to its end\n' "$(python3 -c "print(${ended} - ${began})")"
  "${wf[@]}" sweep-status | tee "${out}/status.txt" || true
  "${wf[@]}" sweep-status --json >"${out}/status.json" || true
  "${wf[@]}" leaderboard | tee "${out}/leaderboard.txt" || true
  "${wf[@]}" fetch-all
  python3 - "${root}/artifacts" "${out}" <<'EOF' | tee "${out}/summary.txt"
import json, os, sys
artifacts, out = sys.argv[1:]
def load(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except OSError:
        return {}
alone = load(os.path.join(out, "alone", "results.json"))
base = alone.get("tokens_per_sec") or 0
def pct(v):
    return "-" if v is None else f"{100 * v:.1f}%"
print(f"{'run':16} {'state':8} {'att':>3} {'tok/s':>10} {'mfu':>7} {'vs alone':>8} {'val_loss':>8} {'cost':>8}")
print(f"{'(trainer alone)':16} {alone.get('status', '-'):8} {1:>3} {base:>10,.0f} {pct(alone.get('mfu')):>7} "
      f"{'1.00x':>8} {alone.get('final_val_loss') or 0:>8.3f} {'-':>8}")
for run in ("gpu-eager", "gpu-compiled", "gpu-oom-retry"):
    res = load(os.path.join(artifacts, run, "results.json"))
    summ = load(os.path.join(artifacts, run, "summary.json"))
    tps = res.get("tokens_per_sec") or 0
    cost = (summ.get("cost") or {}).get("usd")
    print(f"{run:16} {str(summ.get('state', '-')):8} {len(summ.get('attempt_history') or []):>3} {tps:>10,.0f} "
          f"{pct(res.get('mfu')):>7} {(tps / base if base else 0):>7.2f}x {res.get('final_val_loss') or 0:>8.3f} "
          f"{'-' if cost is None else f'${cost:.4f}':>8}")
EOF
}

main "$@"

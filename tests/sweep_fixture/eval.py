"""A stand-in evaluation stage for the stage tests (stdlib only, a second at most): reads the run's
metrics.jsonl in --out-dir (default $WF_OUT_DIR), writes eval.json (--eval-json, default $WF_EVAL_JSON)
with val_loss = the last val_loss * --scale and val_ppl. --sleep S waits first (prints while it waits);
--fail exits 1 with a traceback; --no-metric writes an eval.json without val_loss;
--nccl-once MARKER fails with an NCCL error while MARKER does not exist (and creates it): a
transient failure the next try gets past."""

import argparse
import json
import math
import os
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out-dir", default=os.environ.get("WF_OUT_DIR", ""))
    parser.add_argument("--eval-json", default=os.environ.get("WF_EVAL_JSON", ""))
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--fail", action="store_true")
    parser.add_argument("--no-metric", action="store_true")
    parser.add_argument("--nccl-once", default="")
    args = parser.parse_args()
    print(f"eval: stage {os.environ.get('WF_STAGE')} of {os.environ.get('WF_RUN_ID')} ckpt {os.environ.get('WF_CKPT')}",
          flush=True)
    deadline = time.monotonic() + args.sleep
    while time.monotonic() < deadline:
        print("eval: evaluating ...", flush=True)
        time.sleep(0.5)
    if args.nccl_once and not os.path.exists(args.nccl_once):
        open(args.nccl_once, "w").close()
        print("NCCL error: unhandled system error (on purpose)", flush=True)
        return 1
    if args.fail:
        raise RuntimeError("eval: the checkpoint cannot be read (on purpose)")
    last = None
    with open(os.path.join(args.out_dir, "metrics.jsonl")) as handle:
        for line in handle:
            last = json.loads(line)
    loss = float(last["val_loss"]) * args.scale
    metrics = {"acc": 0.5} if args.no_metric else {"val_loss": loss, "val_ppl": math.exp(loss)}
    with open(args.eval_json, "w") as handle:
        json.dump(metrics, handle)
    print(f"eval: {metrics}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

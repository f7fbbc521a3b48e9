"""A stand-in trainer for sweep tests, with the same command-line contract as examples/nanogpt/train.py
(config file, then key=value overrides; out_dir, seed, resume, batch_size, gradient_accumulation_steps)
but no torch in the worker, so a run takes a second. `mode` picks its behaviour: ok, fail, hang,
oom (fails while batch_size > oom_above, like CUDA running out of memory), flaky_nccl (an NCCL
error on the first attempt only), nccl_always (an NCCL error on every attempt, resumed or not),
badcfg (a config error on stderr, exit 2, as examples/nanogpt/train.py reports one). With
own_summary=1 the trainer writes its own <out_dir>/summary.json at the end; with ckpt_kb=N it writes an
N KiB weights-<step>.bin at every step."""

import json
import os
import signal
import sys
import time


def write_ckpt(path: str, step: int, tag: str = "step") -> None:
    """Atomically (a temp file, then rename), as a real trainer saves (examples/nanogpt/runtime.py): every
    rank reads ckpt.json on resume while rank 0 may already write the next one."""
    tmp = f"{path}.{tag}.tmp"  # the USR2 handler's own temp file: it may interrupt a step's write
    with open(tmp, "w") as handle:
        json.dump({"iter": step}, handle)
    os.replace(tmp, path)


def main() -> int:
    cfg: dict = {}
    with open(sys.argv[1]) as handle:
        exec(handle.read(), {}, cfg)  # noqa: S102 - a test fixture's own config file
    for word in sys.argv[2:]:
        key, _, value = word.lstrip("-").partition("=")
        cfg[key] = value
    out = cfg["out_dir"]
    if str(cfg.get("mode")) == "badcfg":
        print("loading config ...", flush=True)
        print(f"train.py: config error: learning_rate expects float, got {cfg.get('learning_rate')!r}",
              file=sys.stderr, flush=True)
        return 2
    rank = int(os.environ.get("RANK", "0"))
    os.makedirs(out, exist_ok=True)
    mode, steps, batch = str(cfg.get("mode", "ok")), int(cfg.get("steps", 3)), int(cfg.get("batch_size", 8))
    ckpt = os.path.join(out, "ckpt.json")
    start = 0
    if str(cfg.get("resume", "0")) in ("1", "True", "true") and os.path.exists(ckpt):
        with open(ckpt) as handle:
            start = json.load(handle)["iter"] + 1
        print(f"resumed from iter {start - 1}", flush=True)
    done = {"iter": start - 1}

    def on_usr2(_signum: int, _frame: object) -> None:  # Slurm's --signal=B:USR2@N, forwarded by the supervisor
        if rank == 0 and done["iter"] >= 0:
            write_ckpt(ckpt, done["iter"], "usr2")
        print(f"SIGUSR2: checkpoint at iter {done['iter']}", flush=True)

    signal.signal(signal.SIGUSR2, on_usr2)
    marker = os.path.join(out, "attempted")
    first_attempt = not os.path.exists(marker)
    if rank == 0:
        open(marker, "a").close()
        with open(os.path.join(out, "config.json"), "w") as handle:
            json.dump({**cfg, "batch_size": batch, "gradient_accumulation_steps": int(
                cfg.get("gradient_accumulation_steps", 1))}, handle)
    if rank == 0 and any(k.startswith("MLFLOW_") for k in os.environ):  # what tracking gave this run
        with open(os.path.join(out, "mlflow_env.json"), "w") as handle:
            json.dump({k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")
                       and not k.endswith(("PASSWORD", "TOKEN"))}, handle)
    print(f"config: mode={mode} batch_size={batch} seed={cfg.get('seed')} world={os.environ.get('WORLD_SIZE')}",
          flush=True)
    run = None
    if rank == 0 and str(cfg.get("wandb_log", "0")) in ("1", "True", "true"):  # W&B from the environment
        import wandb

        run = wandb.init(config={"mode": mode, "seed": cfg.get("seed")})
        with open(os.path.join(out, "wandb_run.json"), "w") as handle:
            json.dump({"id": run.id, "group": run.group, "name": run.name}, handle)
    for step in range(start, steps):
        if run is not None:
            run.log({"val_loss": 5.0 / (step + 1)}, step=step)
        print(f"iter {step} | loss {5.0 / (step + 1):.4f} | cuda={os.environ.get('CUDA_VISIBLE_DEVICES', '-')}",
              flush=True)
        if rank == 0:
            with open(os.path.join(out, "metrics.jsonl"), "a") as handle:
                handle.write(json.dumps({"iter": step, "train_loss": 6.0 / (step + 1), "val_loss": 5.0 / (step + 1),
                                         "batch_size": batch}) + "\n")
            if cfg.get("ckpt_kb"):  # a checkpoint of this size, as a real trainer writes one
                with open(os.path.join(out, f"weights-{step}.bin"), "wb") as handle:
                    handle.write(b"\0" * int(cfg["ckpt_kb"]) * 1024)
            write_ckpt(ckpt, step)
        done["iter"] = step
        if step == 1 and mode == "fail":
            print("giving up on purpose", file=sys.stderr, flush=True)
            return 3
        if step == 1 and mode == "hang":
            time.sleep(3600)
        if step == 1 and mode == "oom" and batch > int(cfg.get("oom_above", 8)):
            print("Traceback (most recent call last):\n  File \"train.py\", line 60, in <module>\n"
                  f"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB (batch {batch})",
                  file=sys.stderr, flush=True)
            return 1
        if (step == 1 and mode == "flaky_nccl" and first_attempt) or (step == start and mode == "nccl_always"):
            print("torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled "
                  "system error, NCCL version 2.21.5", file=sys.stderr, flush=True)
            return 1
        if cfg.get("busy"):  # CPU-bound step (bench/sweep_makespan.py): spin instead of sleeping
            until = time.monotonic() + float(cfg.get("sleep", 0.3))
            while time.monotonic() < until:
                sum(i * i for i in range(1000))
        else:
            time.sleep(float(cfg.get("sleep", 0.3)))
    if run is not None:
        run.finish()
    if rank == 0:
        with open(os.path.join(out, "results.json"), "w") as handle:
            json.dump({"status": "completed", "iters": steps}, handle)
        if str(cfg.get("own_summary", "0")) == "1":
            with open(os.path.join(out, "summary.json"), "w") as handle:
                json.dump({"trainer": "own", "iters": steps}, handle)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

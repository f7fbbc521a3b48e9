"""Training throughput (tokens/s) of the example trainer's tiny config on CPU.

    python bench/trainer_throughput.py [--iters 100]

Builds the offline byte-level shards in a temp dir, then runs (from examples/nanogpt)

    python train.py config/train_tiny_cpu.py data_dir=TMP/shards out_dir=TMP/out max_iters=100 \\
        eval_interval=0 eval_iters=1 log_interval=10 checkpoint_interval=0

and prints tokens_per_sec from its results.json (steady state: the first, warm-up step is not
counted) as one line, followed by the exact command. Threads: torch's default, or OMP_NUM_THREADS.

Baseline, measured in the same run: a bare loop of the same model and optimizer on random tokens
(forward, backward, clip, step; nothing else), so the ratio is what the trainer's data loading,
schedule, logging and bookkeeping cost (1.00x = nothing).

On a GPU pod, GPT-2 small (124M, bf16, torch.compile), from examples/nanogpt:

    python data/fineweb10B/download.py --out data/fineweb10B --train-shards 1
    python train.py config/train_gpt2s_fineweb10B.py out_dir=out/bench max_iters=50 \\
        eval_interval=0 eval_iters=1 log_interval=10 checkpoint_interval=0

then read tokens_per_sec and mfu in out/bench/results.json (MFU uses the peak FLOPs table in
runtime.py; pass peak_flops=... for GPUs it does not know). With 8 GPUs use
``torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2s_fineweb10B_8gpu.py ...``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

NANOGPT = Path(__file__).resolve().parents[1] / "examples" / "nanogpt"

# the baseline: the tiny config's model and optimizer, random tokens, no trainer (run from examples/nanogpt)
BARE_LOOP = """
import sys, time, torch
from model import GPT, GPTConfig
iters = int(sys.argv[1])
torch.manual_seed(0)
cfg = GPTConfig(vocab_size=256, block_size=64, n_layer=2, n_head=4, n_embd=128, dropout=0.0, bias=False)
model = GPT(cfg)
opt = model.make_optimizer(0.1, 2e-3, (0.9, 0.95), fused=False)
x = torch.randint(0, 256, (16, 64)); y = torch.randint(0, 256, (16, 64))
for it in range(iters + 1):
    if it == 1:
        start = time.perf_counter()
    _, loss = model(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
print(iters * 16 * 64 / (time.perf_counter() - start))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="tokens/s of examples/nanogpt's tiny config on CPU")
    parser.add_argument("--iters", type=int, default=100, help="training iterations (default: 100)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nanogpt-bench-") as tmp:
        shards, out = Path(tmp) / "shards", Path(tmp) / "out"
        subprocess.run([sys.executable, "data/build_offline_shards.py", "--out", str(shards)],
                       cwd=NANOGPT, check=True, stdout=subprocess.DEVNULL)
        cmd = [sys.executable, "train.py", "config/train_tiny_cpu.py", f"data_dir={shards}", f"out_dir={out}",
               f"max_iters={args.iters}", "eval_interval=0", "eval_iters=1", "log_interval=10",
               "checkpoint_interval=0", "device=cpu"]
        proc = subprocess.run(cmd, cwd=NANOGPT, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stdout + proc.stderr, file=sys.stderr)
            return proc.returncode
        res = json.loads((out / "results.json").read_text())
    bare = subprocess.run([sys.executable, "-c", BARE_LOOP, str(args.iters)], cwd=NANOGPT, capture_output=True,
                          text=True, check=True)
    bare_tps = float(bare.stdout.strip().splitlines()[-1])
    print(f"nanogpt tiny config on cpu: {res['tokens_per_sec']:,.0f} tokens/s ({args.iters} iters, "
          f"{res['params'] / 1e6:.2f}M params, final val loss {res['final_val_loss']:.3f})")
    print(f"bare loop, same model and optimizer: {bare_tps:,.0f} tokens/s; "
          f"trainer / bare loop = {res['tokens_per_sec'] / bare_tps:.2f}x")
    print(f"command: cd {NANOGPT} && {shlex.join(cmd)}")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import benchpods

    benchpods.record("trainer_throughput", "trainer / bare loop tokens/s", res["tokens_per_sec"] / bare_tps)
    return 0


if __name__ == "__main__":
    sys.exit(main())

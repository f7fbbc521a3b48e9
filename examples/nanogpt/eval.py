"""Evaluate a train.py checkpoint on the validation split and write eval.json.

    python eval.py --ckpt out/ckpt.pt --batches 4          # a small eval: the first 4 val batches
    python eval.py --ckpt out/ckpt.pt --batches 0          # the full eval: the whole val split

Standalone, or as a workflow.sh stage (EVAL_SMALL_CMD / EVAL_FULL_CMD): there --ckpt defaults to
$WF_CKPT and --out to $WF_EVAL_JSON. Writes {"metrics": {"val_loss", "val_ppl"}, "batches", "tokens",
"iter", "ckpt", "data_dir"} to --out (default: eval.json beside the checkpoint). The batches are the
val split from its start, batch_size x block_size tokens each (the checkpoint's own sizes unless
--batch-size is given), so two checkpoints evaluated with the same --batches see the same tokens.
Exit codes: 0 done, 2 bad arguments or checkpoint, 3 data error.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from data import DataError, TokenStream, open_split


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="eval.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", default=os.environ.get("WF_CKPT", ""), help="checkpoint (default $WF_CKPT)")
    parser.add_argument("--batches", type=int, default=4, help="val batches to evaluate; 0 = the whole split")
    parser.add_argument("--batch-size", type=int, default=0, help="rows per batch (default: the checkpoint's)")
    parser.add_argument("--data-dir", default="", help="token shards (default: $DATA_DIR, else the checkpoint's)")
    parser.add_argument("--out", default=os.environ.get("WF_EVAL_JSON", ""),
                        help="where eval.json goes (default $WF_EVAL_JSON, else beside the checkpoint)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    return parser.parse_args(argv)


def fail(kind: str, message: object, code: int) -> int:
    print(f"eval.py: {kind} error: {message}", file=sys.stderr, flush=True)
    return code


def data_dir_of(args: argparse.Namespace, config: dict[str, Any]) -> Path:
    path = Path(args.data_dir or os.environ.get("DATA_DIR") or str(config.get("data_dir") or "data/offline"))
    here = Path(__file__).resolve().parent
    return here / path if not path.is_absolute() and not path.exists() and (here / path).exists() else path


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from model import GPT, GPTConfig

    ckpt = torch.load(args.ckpt, map_location="cpu", weights_only=True)
    config: dict[str, Any] = ckpt.get("config") or {}
    model_args = dict(ckpt["model_args"])
    data_dir = data_dir_of(args, config)
    val = TokenStream(open_split(data_dir, "val", int(model_args["vocab_size"])), "val")
    batch, block = args.batch_size or int(config.get("batch_size") or 8), int(model_args["block_size"])
    val.check_fits(batch, block)
    tokens_total = sum(len(s) - 1 for s in val.shards)
    whole = sum((len(s) - 1) // (batch * block) for s in val.shards)  # every full batch of every shard
    count = whole if args.batches == 0 else args.batches
    device = torch.device("cuda" if args.device == "cuda" or (
        args.device == "auto" and torch.cuda.is_available()) else "cpu")
    model = GPT(GPTConfig(**model_args, dropout=0.0))
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    total = 0.0
    with torch.no_grad():
        for _ in range(count):
            x, y = val.next_batch(batch, block, 0, 1)
            _, loss = model(torch.from_numpy(x).to(device), torch.from_numpy(y).to(device))
            total += float(loss.item())
    loss = total / max(1, count)
    return {"metrics": {"val_loss": loss, "val_ppl": math.exp(min(loss, 80.0))}, "batches": count,
            "tokens": count * batch * block, "val_tokens": tokens_total, "iter": ckpt.get("iter"),
            "ckpt": str(Path(args.ckpt).resolve()), "data_dir": str(data_dir)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not args.ckpt:
        return fail("argument", "no checkpoint: pass --ckpt PATH (a stage gets $WF_CKPT)", 2)
    if not Path(args.ckpt).is_file():
        return fail("argument", f"--ckpt {args.ckpt} does not exist (train first; train.py writes out_dir/ckpt.pt)", 2)
    if args.batches < 0 or args.batch_size < 0:
        return fail("argument", "--batches and --batch-size must be >= 0", 2)
    try:
        result = evaluate(args)
    except DataError as exc:
        return fail("data", exc, 3)
    except (KeyError, RuntimeError) as exc:
        if "state_dict" in str(exc) or isinstance(exc, KeyError):
            return fail("checkpoint", f"{args.ckpt} is not a train.py checkpoint ({exc})", 2)
        raise
    out = Path(args.out) if args.out else Path(args.ckpt).resolve().parent / "eval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, out)
    metrics = result["metrics"]
    print(f"eval: {result['batches']} val batches ({result['tokens']} tokens) of {args.ckpt} at iter "
          f"{result['iter']}: val_loss {metrics['val_loss']:.4f}, val_ppl {metrics['val_ppl']:.2f} -> {out}",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

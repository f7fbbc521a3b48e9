"""Train a small GPT on FineWeb-format token shards, on one process or with DDP under torchrun.

    python train.py config/train_tiny_cpu.py learning_rate=1e-3 --max_iters=200
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2s_fineweb10B_8gpu.py

Writes config.json, metrics.jsonl, ckpt.pt and results.json into out_dir (see README.md).
Exit codes: 0 done, 1 crash (e.g. CUDA OOM), 2 config error, 3 data error, 143 stopped by SIGTERM
(checkpoint saved; continue with resume=1). SIGUSR2 saves a checkpoint and training goes on.

The config and the data are checked before torch is imported, so mistakes come back at once.
The training loop itself is trainer.py; the model is model.py.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from configurator import SCRIPT_DIR, Config, ConfigError, DistInfo, HelpRequested, load_config
from data import DataError, TokenStream, open_split, shard_paths


def resolve_data_dir(name: str) -> Path:
    """data_dir as given (relative to the cwd), else relative to this directory if it exists there."""
    path = Path(name)
    if not path.is_absolute() and not path.exists() and (SCRIPT_DIR / path).exists():
        return SCRIPT_DIR / path
    return path


def maybe_download(data_dir: Path, cfg: Config) -> None:
    """With DOWNLOAD_FINEWEB=1 and no shards yet, fetch FineWeb shards (GPT-2 vocabularies only)."""
    if os.environ.get("DOWNLOAD_FINEWEB", "").lower() not in ("1", "true", "yes") or cfg.vocab_size <= 256:
        return
    if data_dir.is_dir() and shard_paths(data_dir, "train") and shard_paths(data_dir, "val"):
        return
    spec = importlib.util.spec_from_file_location("fineweb_download",
                                                  SCRIPT_DIR / "data" / "fineweb10B" / "download.py")
    assert spec is not None and spec.loader is not None
    download = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(download)
    shards = int(os.environ.get("FINEWEB_TRAIN_SHARDS", "1"))
    try:
        download.fetch(data_dir, train_shards=shards)  # file-locked: safe with many ranks and runs
    except Exception as exc:  # noqa: BLE001 -- any download problem becomes a data error
        raise DataError(f"DOWNLOAD_FINEWEB=1 but downloading to {data_dir} failed: {exc}") from None


def open_data(cfg: Config, d: DistInfo) -> tuple[TokenStream, TokenStream]:
    data_dir = resolve_data_dir(cfg.data_dir)
    maybe_download(data_dir, cfg)
    train = TokenStream(open_split(data_dir, "train", cfg.vocab_size), "train")
    val = TokenStream(open_split(data_dir, "val", cfg.vocab_size), "val")
    for stream in (train, val):
        stream.check_fits(cfg.batch_size * d.world, cfg.block_size)
    return train, val


def fail(kind: str, message: object, d: DistInfo, code: int) -> int:
    if d.master:  # one line, from rank 0 only
        print(f"train.py: {kind} error: {message}", file=sys.stderr, flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    d = DistInfo.from_env()
    try:
        cfg = load_config(sys.argv[1:] if argv is None else argv)
    except HelpRequested as help_text:
        print(help_text)
        return 0
    except ConfigError as exc:
        return fail("config", exc, d, 2)
    try:
        train, val = open_data(cfg, d)
    except DataError as exc:
        return fail("data", exc, d, 3)

    from trainer import Trainer  # imports torch: only now that config and data are known to be good

    try:
        trainer = Trainer(cfg, d, train, val)
    except ConfigError as exc:  # a checkpoint that does not fit the config
        return fail("config", exc, d, 2)
    code = trainer.run()  # exceptions (e.g. CUDA OOM) propagate: traceback, exit code 1
    trainer.close()
    if d.world > 1:
        # Everything is written and the process group is gone. Skip interpreter teardown: there gloo's
        # worker threads can still be torn down after Python (std::terminate, SIGABRT), which would turn
        # a finished run into a failed one.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())

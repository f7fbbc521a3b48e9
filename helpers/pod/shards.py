"""FineWeb token shards: fineweb_{train,val}_NNNNNN.bin with a 256 x int32 header (magic 20240520)."""

from __future__ import annotations

import glob
import os
import struct
from typing import Dict, List

from .errors import ExitCode, WorkflowError

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4


def shard_problem(path: str) -> str:
    """"" if ``path`` is a well-formed shard, else what is wrong with it."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            header = handle.read(HEADER_BYTES)
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if len(header) < HEADER_BYTES:
        return f"too short for the {HEADER_BYTES}-byte header ({size} bytes)"
    magic, version, tokens = struct.unpack("<3i", header[:12])
    if magic != MAGIC:
        return f"bad magic {magic} (expected {MAGIC}): not a FineWeb shard"
    if version != VERSION:
        return f"unsupported version {version} (expected {VERSION})"
    expected = HEADER_BYTES + 2 * tokens
    if size != expected:
        return f"size {size} bytes but the header says {tokens} tokens ({expected} bytes): truncated or corrupt"
    return ""


def find_shards(data_dir: str) -> Dict[str, List[str]]:
    return {split: sorted(glob.glob(os.path.join(data_dir, f"fineweb_{split}_*.bin"))) for split in ("train", "val")}


def validate(data_dir: str) -> Dict[str, object]:
    """Check every shard under ``data_dir``; raise one line naming the first problem and the fix."""
    shards = find_shards(data_dir)
    for split, paths in shards.items():
        if not paths:
            raise WorkflowError(
                f"data check: no fineweb_{split}_*.bin shard in DATA_DIR {data_dir}; copy the shards there, or "
                "set DOWNLOAD_FINEWEB=1 (or DATA_BUILD_OFFLINE=1 for a CPU demo), or CHECK_DATA=0 to skip",
                ExitCode.FAILED)
        for path in paths:
            problem = shard_problem(path)
            if problem:
                raise WorkflowError(f"data check: {path}: {problem}; replace it (delete it and set "
                                    "DOWNLOAD_FINEWEB=1 to fetch a fresh pair)", ExitCode.FAILED)
    total = 0
    for paths in shards.values():
        for path in paths:
            total += (os.path.getsize(path) - HEADER_BYTES) // 2
    return {"train_shards": len(shards["train"]), "val_shards": len(shards["val"]), "tokens": total}


def present(data_dir: str) -> bool:
    shards = find_shards(data_dir)
    return bool(shards["train"]) and bool(shards["val"])

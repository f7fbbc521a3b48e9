"""FineWeb-format token shards: validation and a resumable, rank-aware sequential reader.

A shard ``fineweb_{train,val}_NNNNNN.bin`` is a header of 256 little-endian int32
(header[0] = 20240520 magic, header[1] = 1 version, header[2] = number of tokens)
followed by that many uint16 tokens. Shards are memory-mapped, never read whole.

The train stream is read in order. One "global micro batch" is world_size * batch_size rows of
block_size tokens taken contiguously from the current position; rank r gets rows
[r * batch_size, (r + 1) * batch_size). A global micro batch never straddles two shards: when
the rest of a shard is too short the reader moves on to the next one (wrapping to the first shard
after the last, which starts a new epoch). The position is (shard, offset in tokens), so a run
resumed with a different batch_size / gradient_accumulation_steps continues at the same token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
SAMPLE_CHUNKS = 16  # vocab check: this many evenly spaced chunks ...
SAMPLE_CHUNK_TOKENS = 4096  # ... of this many tokens each


class DataError(Exception):
    """Missing or unusable data; the message is one line naming the path and a fix."""


def fix_hint(data_dir: Path, vocab_size: int) -> str:
    if vocab_size <= 256:
        return f"build byte-level shards with: python data/build_offline_shards.py --out {data_dir}"
    return (f"fetch FineWeb shards with: python data/fineweb10B/download.py --out {data_dir} "
            "(or set DOWNLOAD_FINEWEB=1), or point data_dir / DATA_DIR at existing shards")


def shard_paths(data_dir: Path, split: str) -> list[Path]:
    return sorted(data_dir.glob(f"fineweb_{split}_*.bin"))


def read_header(path: Path) -> int:
    """Validate a shard's header and size; return its token count."""
    rebuild = "delete it and rebuild or re-download it"
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            raw = f.read(HEADER_BYTES)
    except OSError as exc:
        raise DataError(f"cannot read shard {path}: {exc.strerror}") from None
    if len(raw) < HEADER_BYTES:
        raise DataError(f"shard {path} is {size} bytes, shorter than the {HEADER_BYTES}-byte header "
                        f"(truncated); {rebuild}")
    header = np.frombuffer(raw, dtype="<i4")
    if header[0] != MAGIC:
        raise DataError(f"shard {path} has bad magic {header[0]} (expected {MAGIC}): not a FineWeb "
                        f"token shard; {rebuild}")
    if header[1] != VERSION:
        raise DataError(f"shard {path} has unsupported version {header[1]} (expected {VERSION}); {rebuild}")
    ntok = int(header[2])
    expected = HEADER_BYTES + 2 * ntok
    if ntok <= 0 or size != expected:
        raise DataError(f"shard {path} is {size} bytes but its header says {ntok} tokens "
                        f"({expected} bytes): truncated or corrupt; {rebuild}")
    return ntok


def open_shard(path: Path, vocab_size: int) -> np.memmap:
    """Memory-map a validated shard and spot-check that its tokens fit the vocabulary."""
    ntok = read_header(path)
    tokens = np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(ntok,))
    step = max(1, ntok // SAMPLE_CHUNKS)
    for start in range(0, ntok, step):
        top = int(tokens[start:start + SAMPLE_CHUNK_TOKENS].max())
        if top >= vocab_size:
            raise DataError(f"shard {path} has token id {top} >= vocab_size={vocab_size}; these shards "
                            f"need a larger vocab_size (GPT-2 tokens: vocab_size=50304)")
    return tokens


def open_split(data_dir: Path, split: str, vocab_size: int) -> list[np.memmap]:
    if not data_dir.is_dir():
        raise DataError(f"data dir {data_dir} does not exist; {fix_hint(data_dir, vocab_size)}")
    paths = shard_paths(data_dir, split)
    if not paths:
        raise DataError(f"no fineweb_{split}_*.bin shards in {data_dir}; {fix_hint(data_dir, vocab_size)}")
    return [open_shard(p, vocab_size) for p in paths]


class TokenStream:
    """Sequential reader over a list of shards; ``position`` is (shard index, token offset)."""

    def __init__(self, shards: list[np.memmap], name: str) -> None:
        self.shards = shards
        self.name = name
        self.shard = 0
        self.offset = 0
        self.epoch = 0
        self.tokens_read = 0  # all ranks together

    def check_fits(self, rows: int, block_size: int) -> None:
        need = rows * block_size + 1
        if max(len(s) for s in self.shards) < need:
            raise DataError(f"{self.name} shards are too small: one batch needs {need} tokens but the "
                            f"largest shard has {max(len(s) for s in self.shards)}; lower "
                            f"batch_size/block_size or build bigger shards")

    def next_batch(self, batch_size: int, block_size: int, rank: int, world: int) -> tuple[np.ndarray,
                                                                                          np.ndarray]:
        """This rank's (x, y) int64 arrays of shape (batch_size, block_size); advances all ranks' data."""
        span = world * batch_size * block_size
        while self.offset + span + 1 > len(self.shards[self.shard]):
            self.shard += 1
            self.offset = 0
            if self.shard == len(self.shards):
                self.shard = 0
                self.epoch += 1
        start = self.offset + rank * batch_size * block_size
        buf = np.asarray(self.shards[self.shard][start:start + batch_size * block_size + 1], dtype=np.int64)
        self.offset += span
        self.tokens_read += span
        return buf[:-1].reshape(batch_size, block_size), buf[1:].reshape(batch_size, block_size)

    def state_dict(self) -> dict[str, Any]:
        return {"shard": self.shard, "offset": self.offset, "epoch": self.epoch,
                "tokens_read": self.tokens_read}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        shard = int(state["shard"])
        if shard >= len(self.shards):  # fewer shards than when the checkpoint was written
            shard, state = 0, {**state, "offset": 0}
        self.shard = shard
        self.offset = int(state["offset"])
        self.epoch = int(state["epoch"])
        self.tokens_read = int(state["tokens_read"])

"""Build small FineWeb-format token shards offline, from text that every machine has: the source of
the Python standard library (``*.py`` files, sorted by path, site-packages excluded).

Tokens are bytes (vocab 256) stored as uint16, each file preceded by a 0 byte as a document
separator. Validation text comes from the end of the sorted file list and training text from the
start, so the two never share a file. The output is deterministic for a given Python install, and
the script is idempotent: if shards with the requested sizes already exist it leaves them alone.

    python data/build_offline_shards.py --out data/offline
    python train.py config/train_tiny_cpu.py data_dir=data/offline
"""

from __future__ import annotations

import argparse
import os
import sys
import sysconfig
from pathlib import Path

import numpy as np

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
VOCAB = 256  # also written to header[3], which marks a shard as built by this script
SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}


def source_files(root: Path) -> list[Path]:
    """All *.py files under ``root`` in a stable order, without third-party packages."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        found += [Path(dirpath, f) for f in filenames if f.endswith(".py")]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def take(files: list[Path], n_tokens: int) -> tuple[bytes, int]:
    """Concatenate files (0-byte separated) until n_tokens bytes; return the bytes and files used."""
    chunks: list[bytes] = []
    size = 0
    used = 0
    for path in files:
        if size >= n_tokens:
            break
        doc = b"\0" + path.read_bytes()
        chunks.append(doc)
        size += len(doc)
        used += 1
    return b"".join(chunks)[:n_tokens], used


def read_header(path: Path) -> np.ndarray | None:
    """The shard header if ``path`` is a complete, valid shard, else None."""
    try:
        with path.open("rb") as f:
            header = np.frombuffer(f.read(HEADER_BYTES), dtype="<i4")
        size = path.stat().st_size
    except OSError:
        return None
    if len(header) != HEADER_INTS or header[0] != MAGIC or header[1] != VERSION:
        return None
    return header if size == HEADER_BYTES + 2 * int(header[2]) else None


def write_shard(path: Path, data: bytes) -> None:
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:4] = (MAGIC, VERSION, len(data), VOCAB)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(header.tobytes())
        f.write(np.frombuffer(data, dtype=np.uint8).astype("<u2").tobytes())
    os.replace(tmp, path)


def build(out: Path, train_tokens: int, val_tokens: int, root: Path | None = None) -> bool:
    """Write the shard pair into ``out``; return False if matching shards were already there."""
    targets = {out / "fineweb_train_000000.bin": train_tokens, out / "fineweb_val_000000.bin": val_tokens}
    headers = {path: read_header(path) for path in targets}
    if all(h is not None and int(h[2]) == n and int(h[3]) == VOCAB
           for (path, n), h in zip(targets.items(), headers.values())):
        return False
    for path, header in headers.items():
        if header is not None and int(header[3]) != VOCAB:
            raise SystemExit(f"build_offline_shards.py: {path} is a token shard not built by this script "
                             f"(real FineWeb?); refusing to overwrite it, use another --out")
    files = source_files(root or Path(sysconfig.get_paths()["stdlib"]))
    val, n_val_files = take(files[::-1], val_tokens)
    train, _ = take(files[:len(files) - n_val_files], train_tokens)
    if len(val) < val_tokens or len(train) < train_tokens:
        raise SystemExit(f"build_offline_shards.py: the standard library has too little source for "
                         f"{train_tokens} + {val_tokens} tokens; ask for fewer")
    out.mkdir(parents=True, exist_ok=True)
    write_shard(out / "fineweb_train_000000.bin", train)
    write_shard(out / "fineweb_val_000000.bin", val)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "offline",
                        help="output directory (default: data/offline next to this script)")
    parser.add_argument("--train-tokens", type=int, default=4_000_000, help="default: %(default)s")
    parser.add_argument("--val-tokens", type=int, default=262_144, help="default: %(default)s")
    args = parser.parse_args(argv)
    if args.train_tokens <= 0 or args.val_tokens <= 0:
        parser.error("--train-tokens and --val-tokens must be > 0")
    if build(args.out, args.train_tokens, args.val_tokens):
        print(f"wrote {args.out}/fineweb_train_000000.bin ({args.train_tokens} tokens) and "
              f"fineweb_val_000000.bin ({args.val_tokens} tokens), byte-level, vocab_size=256")
    else:
        print(f"shards in {args.out} already exist with these sizes; nothing to do")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Download GPT-2-tokenized FineWeb10B shards from the Hugging Face hub (kjj0/fineweb10B-gpt2).

    python data/fineweb10B/download.py --out data/fineweb10B --train-shards 1

Fetches fineweb_val_000000.bin and fineweb_train_000001.bin ... fineweb_train_{N}.bin
(100M tokens, about 200 MB each; 103 train shards in all). Uses huggingface_hub if it is
installed, else plain urllib (HF_ENDPOINT and HF_TOKEN are honoured). Each file is downloaded
to a temporary name, its header and size are checked, and only then is it renamed into place;
files already present and valid are skipped. A lock file makes concurrent calls (several ranks,
several runs on one pod) safe: the first downloads, the others wait and then find the files.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import struct
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = "kjj0/fineweb10B-gpt2"
MAGIC = 20240520
VERSION = 1
HEADER_BYTES = 1024
MAX_TRAIN_SHARDS = 103
CHUNK = 1 << 20


def shard_names(train_shards: int) -> list[str]:
    return ["fineweb_val_000000.bin"] + [f"fineweb_train_{i:06d}.bin" for i in range(1, train_shards + 1)]


def check_shard(path: Path) -> str | None:
    """None if ``path`` is a complete shard, else what is wrong with it."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(12)
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"
    if len(head) < 12:
        return f"{path} is too short ({size} bytes)"
    magic, version, ntok = struct.unpack("<3i", head)
    if magic != MAGIC or version != VERSION:
        return f"{path} has magic {magic} / version {version}, expected {MAGIC} / {VERSION}"
    if size != HEADER_BYTES + 2 * ntok:
        return f"{path} is {size} bytes, expected {HEADER_BYTES + 2 * ntok} for {ntok} tokens"
    return None


def _via_urllib(name: str, dest: Path) -> None:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    url = f"{endpoint}/datasets/{REPO}/resolve/main/{name}"
    request = urllib.request.Request(url, headers={"User-Agent": "nanogpt-example/1.0"})
    token = os.environ.get("HF_TOKEN")
    if token:
        request.add_unredirected_header("Authorization", f"Bearer {token}")  # not sent on to the CDN
    with urllib.request.urlopen(request, timeout=60) as response, dest.open("wb") as f:
        total = int(response.headers.get("Content-Length") or 0)
        done, shown = 0, -1
        while chunk := response.read(CHUNK):
            f.write(chunk)
            done += len(chunk)
            percent = 100 * done // total if total else -1
            if percent >= 0 and percent // 10 != shown:
                shown = percent // 10
                print(f"  {name}: {percent}% of {total / 1e6:.0f} MB", flush=True)


def _via_hub(name: str, dest: Path) -> bool:
    """Download with huggingface_hub if installed (faster, resumable); False if it is not."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        return False
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".hub-") as tmp:
        got = hf_hub_download(repo_id=REPO, filename=name, repo_type="dataset", local_dir=tmp)
        shutil.move(got, dest)
    return True


def fetch_one(name: str, out: Path, retries: int = 3) -> None:
    final = out / name
    if check_shard(final) is None:
        print(f"{final}: present", flush=True)
        return
    part = out / f".{name}.part"
    for attempt in range(1, retries + 1):
        try:
            print(f"downloading {name} from {REPO} ...", flush=True)
            if not _via_hub(name, part):
                _via_urllib(name, part)
            problem = check_shard(part)
            if problem:
                raise OSError(f"downloaded file is not a valid shard: {problem}")
            os.replace(part, final)
            return
        except (OSError, ValueError) as exc:  # urllib's URLError / HTTPError are OSErrors
            part.unlink(missing_ok=True)
            if attempt == retries:
                raise OSError(f"{name}: {exc}") from None
            print(f"  attempt {attempt} failed ({exc}); retrying", flush=True)
            time.sleep(2 * attempt)


def fetch(out: Path, train_shards: int = 1) -> list[Path]:
    """Make sure the val shard and the first ``train_shards`` train shards are in ``out``."""
    if not 1 <= train_shards <= MAX_TRAIN_SHARDS:
        raise ValueError(f"train_shards must be in 1..{MAX_TRAIN_SHARDS}, got {train_shards}")
    out.mkdir(parents=True, exist_ok=True)
    with (out / ".download.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        for name in shard_names(train_shards):
            fetch_one(name, out)
    return [out / name for name in shard_names(train_shards)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="output directory (default: this script's directory)")
    parser.add_argument("--train-shards", type=int, default=1,
                        help=f"train shards of 100M tokens to fetch, 1..{MAX_TRAIN_SHARDS} (default: 1)")
    args = parser.parse_args(argv)
    try:
        paths = fetch(args.out, args.train_shards)
    except (OSError, ValueError) as exc:
        print(f"download.py: error: {exc}", file=sys.stderr)
        return 1
    print(f"ok: {len(paths)} shards in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

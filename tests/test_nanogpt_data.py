"""FineWeb-format shards for examples/nanogpt: offline builder, validation, reader, data errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from nanogpt_helpers import VAL_TOKENS, build_shards, explain, load_module, run_many, tiny_args

data = load_module("data.py")
builder = load_module("data/build_offline_shards.py")
download = load_module("data/fineweb10B/download.py")


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_shards(tmp_path_factory.getbasetemp())


def write_shard(path: Path, tokens: np.ndarray, magic: int = data.MAGIC) -> Path:
    header = np.zeros(256, dtype="<i4")
    header[:3] = (magic, 1, len(tokens))
    path.write_bytes(header.tobytes() + tokens.astype("<u2").tobytes())
    return path


def test_offline_shards_are_valid_byte_level_text(shards: Path) -> None:
    names = sorted(p.name for p in shards.iterdir())
    assert names == ["fineweb_train_000000.bin", "fineweb_val_000000.bin"]
    val = data.open_shard(shards / "fineweb_val_000000.bin", vocab_size=256)
    assert len(val) == VAL_TOKENS
    train = data.open_shard(shards / "fineweb_train_000000.bin", vocab_size=256)
    text = bytes(np.asarray(train[:20_000], dtype=np.uint8)).decode("utf-8", errors="replace")
    assert "def " in text and "import " in text  # it is Python source


def test_offline_build_is_deterministic_and_idempotent(tmp_path: Path, shards: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    train, val = 300_000, 65_536
    other = tmp_path / "again"
    assert builder.main(["--out", str(other), "--train-tokens", str(train), "--val-tokens", str(val)]) == 0
    assert "wrote" in capsys.readouterr().out
    reference = tmp_path / "ref"
    builder.build(reference, train, val)
    for name in ("fineweb_train_000000.bin", "fineweb_val_000000.bin"):
        assert (other / name).read_bytes() == (reference / name).read_bytes()
    before = (other / "fineweb_train_000000.bin").stat().st_mtime_ns
    assert builder.main(["--out", str(other), "--train-tokens", str(train), "--val-tokens", str(val)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert (other / "fineweb_train_000000.bin").stat().st_mtime_ns == before
    assert builder.build(other, train + 1, val) is True  # other parameters: rebuilt


def test_offline_builder_never_overwrites_foreign_shards(tmp_path: Path) -> None:
    write_shard(tmp_path / "fineweb_val_000000.bin", np.arange(1000))  # e.g. a real FineWeb shard
    with pytest.raises(SystemExit, match="refusing to overwrite"):
        builder.build(tmp_path, 10_000, 1000)


def test_train_and_val_text_do_not_overlap(tmp_path: Path) -> None:
    root = tmp_path / "lib"
    for i in range(6):
        (root / f"m{i}.py").parent.mkdir(parents=True, exist_ok=True)
        (root / f"m{i}.py").write_text(f"# module {i}\n" * 10)
    (root / "site-packages").mkdir()
    (root / "site-packages" / "x.py").write_text("# third party\n" * 100)
    out = tmp_path / "out"
    builder.build(out, 300, 200, root=root)
    train = bytes(data.open_shard(out / "fineweb_train_000000.bin", 256).astype(np.uint8))
    val = bytes(data.open_shard(out / "fineweb_val_000000.bin", 256).astype(np.uint8))
    assert b"module 0" in train and b"module 5" in val
    assert b"module 5" not in train and b"module 0" not in val
    assert b"third party" not in train + val


@pytest.mark.parametrize(("damage", "fragment"), [
    ("magic", "bad magic 12345"),
    ("truncate", "truncated or corrupt"),
    ("short", "shorter than the 1024-byte header"),
    ("vocab", "token id 300 >= vocab_size=256"),
])
def test_open_shard_rejects_broken_files(tmp_path: Path, damage: str, fragment: str) -> None:
    path = tmp_path / "fineweb_train_000000.bin"
    tokens = np.arange(5000) % 256
    if damage == "vocab":
        tokens[4000] = 300
    write_shard(path, tokens, magic=12345 if damage == "magic" else data.MAGIC)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-10])
    if damage == "short":
        path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(data.DataError, match=fragment) as err:
        data.open_shard(path, vocab_size=256)
    assert str(path) in str(err.value)


def test_ranks_read_disjoint_slices_and_batch_splits_keep_the_stream(tmp_path: Path) -> None:
    shard = data.open_shard(write_shard(tmp_path / "fineweb_train_000000.bin", np.arange(1000) % 256), 256)
    whole = data.TokenStream([shard], "train")
    x, y = whole.next_batch(batch_size=4, block_size=8, rank=0, world=1)
    assert x.shape == (4, 8) and x.dtype == np.int64
    assert np.array_equal(y[:, :-1], x[:, 1:])
    ranks = [data.TokenStream([shard], "train") for _ in range(2)]
    parts = [s.next_batch(batch_size=2, block_size=8, rank=r, world=2)[0] for r, s in enumerate(ranks)]
    assert np.array_equal(np.concatenate(parts), x)  # rank 0 gets rows 0-1, rank 1 rows 2-3
    halves = data.TokenStream([shard], "train")  # half batch, twice: the same tokens in the same order
    assert np.array_equal(np.concatenate([halves.next_batch(2, 8, 0, 1)[0] for _ in range(2)]), x)
    assert halves.state_dict() == whole.state_dict() == ranks[0].state_dict()
    assert whole.state_dict()["offset"] == 32


def test_stream_moves_to_the_next_shard_and_wraps(tmp_path: Path) -> None:
    paths = [write_shard(tmp_path / f"fineweb_train_00000{i}.bin", np.full(100, i)) for i in range(2)]
    stream = data.TokenStream([data.open_shard(p, 256) for p in paths], "train")
    firsts = [int(stream.next_batch(2, 20, 0, 1)[0][0, 0]) for _ in range(5)]
    assert firsts == [0, 0, 1, 1, 0]  # 2 batches of 40 (+1) tokens fit in each 100-token shard
    assert stream.epoch == 1
    restored = data.TokenStream(stream.shards, "train")
    restored.load_state_dict(stream.state_dict())
    assert np.array_equal(restored.next_batch(2, 20, 0, 1)[0], stream.next_batch(2, 20, 0, 1)[0])
    with pytest.raises(data.DataError, match="too small"):
        stream.check_fits(rows=8, block_size=20)


def test_missing_dir_and_missing_shards(tmp_path: Path) -> None:
    with pytest.raises(data.DataError, match="does not exist; build byte-level shards with"):
        data.open_split(tmp_path / "nope", "train", 256)
    with pytest.raises(data.DataError, match=r"no fineweb_val_\*.bin shards .*DOWNLOAD_FINEWEB=1"):
        data.open_split(tmp_path, "val", 50304)


def test_download_skips_valid_files_without_network(tmp_path: Path) -> None:
    assert download.shard_names(2) == ["fineweb_val_000000.bin", "fineweb_train_000001.bin",
                                       "fineweb_train_000002.bin"]
    for name in download.shard_names(1):
        write_shard(tmp_path / name, np.arange(50))
    assert download.check_shard(tmp_path / "fineweb_val_000000.bin") is None
    assert download.fetch(tmp_path, train_shards=1) == [tmp_path / n for n in download.shard_names(1)]
    broken = write_shard(tmp_path / "x.bin", np.arange(50), magic=7)
    assert "magic 7" in (download.check_shard(broken) or "")
    with pytest.raises(ValueError, match="train_shards must be in 1..103"):
        download.fetch(tmp_path, train_shards=0)


def test_train_py_data_errors_exit_3_with_one_line(tmp_path: Path, shards: Path) -> None:
    bad_magic, truncated = tmp_path / "bad_magic", tmp_path / "truncated"
    for target in (bad_magic, truncated):
        shutil.copytree(shards, target)
    shard = bad_magic / "fineweb_train_000000.bin"
    raw = bytearray(shard.read_bytes())
    raw[:4] = (123).to_bytes(4, "little")
    shard.write_bytes(bytes(raw))
    val = truncated / "fineweb_val_000000.bin"
    val.write_bytes(val.read_bytes()[:-1000])
    missing = tmp_path / "missing"
    runs = run_many([tiny_args(d, tmp_path / f"out_{d.name}") for d in (missing, bad_magic, truncated)])
    expected = [
        f"data dir {missing} does not exist; build byte-level shards with: "
        f"python data/build_offline_shards.py --out {missing}",
        f"shard {shard} has bad magic 123 (expected 20240520)",
        f"shard {val} is {val.stat().st_size} bytes but its header says {VAL_TOKENS} tokens",
    ]
    for proc, fragment in zip(runs, expected):
        assert proc.returncode == 3, explain(proc)
        assert proc.stderr.startswith("train.py: data error: "), explain(proc)
        assert proc.stderr.count("\n") == 1, explain(proc)
        assert fragment in proc.stderr, explain(proc)
        assert proc.stdout == ""
    assert not any(tmp_path.glob("out_*"))

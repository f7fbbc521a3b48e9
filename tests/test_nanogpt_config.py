"""Config files and overrides of examples/nanogpt/train.py (configurator.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from nanogpt_helpers import NANOGPT, TINY, load_module, run_many

cfgmod = load_module("configurator.py")
ConfigError = cfgmod.ConfigError
load_config = cfgmod.load_config


def test_defaults_and_both_override_spellings() -> None:
    cfg = load_config([TINY, "learning_rate=3e-4", "--max_iters=7", "--compile=True", "out_dir=runs/a b"])
    assert cfg.learning_rate == 3e-4
    assert cfg.max_iters == 7
    assert cfg.compile is True
    assert cfg.out_dir == "runs/a b"
    assert cfg.n_layer == 2  # from the config file
    assert load_config([]).n_layer == 12  # defaults: GPT-2 small


def test_overrides_win_over_files_and_later_files_win(tmp_path: Path) -> None:
    first = tmp_path / "a.py"
    first.write_text("batch_size = 4\nblock_size = 32\nimport math\n_private = 1\n")
    second = tmp_path / "b.py"
    second.write_text("batch_size = 6\n")
    cfg = load_config([str(first), str(second), "block_size=16"])
    assert (cfg.batch_size, cfg.block_size) == (6, 16)


@pytest.mark.parametrize(("text", "expected"), [
    ("True", True), ("False", False), ("1", True), ("0", False), ("true", True), ("false", False),
])
def test_bool_spellings(text: str, expected: bool) -> None:
    assert load_config([f"resume={text}"]).resume is expected


def test_type_conversions() -> None:
    cfg = load_config(["learning_rate=1", "max_iters=1e3", "out_dir=2024", "dtype='float32'"])
    assert cfg.learning_rate == 1.0 and isinstance(cfg.learning_rate, float)
    assert cfg.max_iters == 1000 and isinstance(cfg.max_iters, int)
    assert cfg.out_dir == "2024"
    assert cfg.dtype == "float32"


def test_data_dir_default_comes_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATA_DIR", raising=False)
    assert load_config([]).data_dir == "data/fineweb10B"
    monkeypatch.setenv("DATA_DIR", "/data/fw")
    assert load_config([]).data_dir == "/data/fw"
    assert load_config(["data_dir=/elsewhere"]).data_dir == "/elsewhere"
    assert load_config([TINY]).data_dir == "/data/fw"  # the tiny config honours DATA_DIR too
    monkeypatch.delenv("DATA_DIR")
    assert load_config([TINY]).data_dir == "data/offline"


def test_unknown_key_suggests_the_closest() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(["lerning_rate=0.1"])
    assert str(err.value) == "unknown key 'lerning_rate' (did you mean 'learning_rate'?)"
    with pytest.raises(ConfigError, match=r"unknown key 'zzz' \(python train.py --help lists the keys\)"):
        load_config(["--zzz=1"])


def test_unknown_key_in_a_config_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("n_layers = 4\n")
    with pytest.raises(ConfigError) as err:
        load_config([str(bad)])
    assert str(err.value) == f"unknown key 'n_layers' in {bad} (did you mean 'n_layer'?)"


@pytest.mark.parametrize(("override", "message"), [
    ("learning_rate=abc", "learning_rate expects float, got 'abc' (from override learning_rate=abc)"),
    ("--max_iters=1.5", "max_iters expects int, got '1.5' (from override --max_iters=1.5)"),
    ("compile=maybe", "compile expects bool, got 'maybe' (from override compile=maybe)"),
    ("batch_size=True", "batch_size expects int, got 'True' (from override batch_size=True)"),
    ("dropout=[0.1]", "dropout expects float, got '[0.1]' (from override dropout=[0.1])"),
])
def test_wrongly_typed_values(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config([override])
    assert str(err.value) == message


def test_wrongly_typed_value_in_a_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("max_iters = 'many'\n")
    with pytest.raises(ConfigError, match=rf"max_iters expects int, got 'many' \(from {bad}\)"):
        load_config([str(bad)])


@pytest.mark.parametrize(("args", "fragment"), [
    (["device=tpu"], "device must be one of auto, cpu, cuda, got 'tpu'"),
    (["n_embd=100", "n_head=3"], "n_embd=100 must be divisible by n_head=3"),
    (["batch_size=0"], "batch_size must be > 0, got 0"),
    (["dropout=1.5"], "dropout must be in [0, 1)"),
    (["--compile"], "override '--compile' needs a value"),
    (["config/nope.py"], "config file 'config/nope.py' not found"),
])
def test_invalid_values(args: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(args)
    assert fragment in str(err.value)


def test_config_file_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "broken.py"
    bad.write_text("max_iters = (\n")
    with pytest.raises(ConfigError, match=r"cannot run config file .*broken.py: SyntaxError"):
        load_config([str(bad)])


def test_shipped_configs_load() -> None:
    for path in sorted((NANOGPT / "config").glob("*.py")):
        cfg = load_config([str(path)])
        assert cfg.n_embd % cfg.n_head == 0
    gpt2 = load_config(["config/train_gpt2s_fineweb10B.py"])
    assert (gpt2.n_layer, gpt2.n_embd, gpt2.block_size, gpt2.dtype) == (12, 768, 1024, "bfloat16")


def test_config_echo_is_key_value_words() -> None:
    echo = cfgmod.config_echo(load_config(["batch_size=8", "out_dir=a b"]))
    assert echo.startswith("config: out_dir='a b' seed=1337 ")
    assert " batch_size=8 " in echo


def test_train_py_exits_2_with_one_line_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "out"
    unknown, typed = run_many([
        [TINY, f"out_dir={out}", "lerning_rate=0.1"],
        [TINY, f"out_dir={out}", "learning_rate=abc"],
    ])
    assert unknown.returncode == 2 and typed.returncode == 2
    assert unknown.stderr == ("train.py: config error: unknown key 'lerning_rate' "
                              "(did you mean 'learning_rate'?)\n")
    assert typed.stderr == ("train.py: config error: learning_rate expects float, got 'abc' "
                            "(from override learning_rate=abc)\n")
    assert unknown.stdout == typed.stdout == ""
    assert not out.exists()

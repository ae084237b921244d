"""Character-level text data and the text commands: the vocabulary is the file's characters,
the split is 90/10 in file order, windows are views of the one stream, unknown characters
are one clear error, and ``deepgen sample --prompt`` writes a continuation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import deepgen
from deepgen.cli import main
from deepgen.data.text import decode_text, encode_text
from deepgen.errors import UserError

TEXT = "".join(f"line {i}: to be or not to be, that is the question.\n" for i in range(60))


def write(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_text_file_becomes_token_windows(tmp_path):
    ds = deepgen.load_dataset(str(write(tmp_path)), block_size=16)
    vocab = ds.meta["vocab"]
    assert vocab == "".join(sorted(set(TEXT))) and ds.spec.vocab_size == len(vocab)
    assert ds.spec.kind == "tokens" and ds.spec.shape == (16,)
    cut = int(0.9 * len(TEXT))
    train_text, test_text = TEXT[:cut], TEXT[cut:]
    # Training windows start at every character; test windows do not overlap.
    assert len(ds.train) == len(train_text) - 16 + 1 and len(ds.test) == len(test_text) // 16
    assert decode_text(ds.convert(ds.train.x[5]), vocab) == train_text[5:21]
    assert decode_text(ds.convert(ds.test.x[1]), vocab) == test_text[16:32]
    assert ds.convert(ds.train.x[:3]).dtype == torch.int64
    assert ds.train.x.untyped_storage().nbytes() <= len(TEXT)  # a view: the stream is not copied


def test_unknown_characters_and_bad_sizes_are_user_errors(tmp_path):
    with pytest.raises(UserError, match=r"not in the model's vocabulary: '~'"):
        encode_text("to be~", "".join(sorted(set(TEXT))))
    with pytest.raises(UserError, match="too few for windows"):
        deepgen.load_dataset(str(write(tmp_path)), block_size=1000)
    with pytest.raises(UserError, match="block_size applies to text"):
        deepgen.load_dataset("digits", block_size=32)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1") * 100)
    with pytest.raises(UserError, match="not UTF-8"):
        deepgen.load_dataset(str(bad))


def test_tinyshakespeare_is_nanogpts_split(real_data_dir):
    ds = deepgen.load_dataset("tinyshakespeare", data_dir=str(real_data_dir))
    assert ds.spec.vocab_size == 65 and ds.meta["characters"] == 1115394
    assert ds.meta["train_characters"] == 1003854 and ds.meta["test_characters"] == 111540  # nanoGPT's prepare.py


def test_train_sample_prompt_and_eval_from_the_command_line(tmp_path, capsys):
    data = write(tmp_path)
    run = tmp_path / "run"
    args = ["train", "transformer", "--data", str(data), "--out", str(run), "--set", "block_size=16", "--set", "layers=1",
            "--set", "width=16", "--set", "heads=2", "--set", "max_steps=20", "--set", "progress=false", "--set", "tensorboard=false"]
    assert main(args) == 0
    assert (run / "samples.txt").is_file()
    out = tmp_path / "poem.txt"
    assert main(["sample", str(run), "--prompt", "to be", "--length", "40", "--n", "1", "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert text.startswith("to be") and len(text.rstrip("\n")) == 40
    assert main(["sample", str(run), "--n", "2", "--out", str(tmp_path / "two.txt")]) == 0
    assert (tmp_path / "two.txt").read_text().count("--- sample") == 2
    capsys.readouterr()
    assert main(["sample", str(run), "--prompt", "to be~", "--out", str(out)]) == 2
    assert "not in the model's vocabulary" in capsys.readouterr().err
    assert main(["eval", str(run), "--metrics", "nll", "--quiet"]) == 0
    assert "nll (bits/dim)" in capsys.readouterr().out  # bits per character


def test_image_completion_from_the_command_line(tmp_path):
    run = tmp_path / "pix"
    args = ["train", "pixelcnn", "--data", "digits", "--out", str(run), "--set", "channels=8", "--set", "layers=2",
            "--set", "out_hidden=8", "--set", "max_steps=5", "--set", "max_train=64", "--set", "progress=false", "--set", "tensorboard=false"]
    assert main(args) == 0
    assert (run / "completions.png").is_file()
    assert main(["sample", str(run), "--complete", "--n", "3", "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").is_file()
    assert main(["sample", str(run), "--complete", "--out", str(tmp_path / "c.txt")]) == 2

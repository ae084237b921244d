"""A run trained on data given in memory (``load_dataset(array)``) keeps its arrays in the
run folder, so it evaluates, samples and resumes from any working directory with nothing
but the folder, and a missing or corrupt arrays file is one clear error."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import deepgen
from deepgen import TrainConfig, Trainer
from deepgen.cli import main
from deepgen.errors import UserError
from deepgen.training import checkpoint as ckpt


def _train(folder, max_steps=6):
    x = np.random.default_rng(0).random((160, 6)).astype(np.float32)
    y = np.arange(160) % 4
    ds = deepgen.load_dataset((x, y), test_fraction=0.25)
    deepgen.seed_all(0)
    model = deepgen.create_model("vae", ds, hidden=(16,), latent_dim=2)
    cfg = TrainConfig(epochs=100, batch_size=32, device="cpu", progress=False, tensorboard=False, max_steps=max_steps, log_every=1)
    trainer = Trainer(model, ds, cfg, run_dir=folder)
    trainer.fit()
    return ds, trainer


def test_memory_data_is_kept_in_the_run_and_reloads_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ds, _ = _train("run")
    assert (tmp_path / "run" / ckpt.DATA_ARRAYS).is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run = deepgen.load_run(tmp_path / "run")
    again = run.load_dataset()
    assert torch.equal(again.train.x, ds.train.x) and torch.equal(again.test.y, ds.test.y)
    assert main(["eval", str(tmp_path / "run"), "--metrics", "recon", "--quiet"]) == 0
    assert main(["sample", str(tmp_path / "run"), "--n", "5", "--out", str(elsewhere / "s.csv")]) == 0
    # Resuming from another folder equals an uninterrupted run, bitwise.
    resumed = Trainer.resume(tmp_path / "run", max_steps=12)
    resumed.fit()
    monkeypatch.chdir(tmp_path)
    _, full = _train("full", max_steps=12)
    for (name, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_missing_or_corrupt_arrays_file_is_one_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _train("run")
    path = tmp_path / "run" / ckpt.DATA_ARRAYS
    path.write_bytes(b"not an npz")
    with pytest.raises(UserError, match="cannot read .*corrupt"):
        deepgen.load_run(tmp_path / "run").load_dataset()
    os.remove(path)
    with pytest.raises(UserError, match="given in memory, but data_arrays.npz is missing"):
        Trainer.resume(tmp_path / "run", max_steps=8)

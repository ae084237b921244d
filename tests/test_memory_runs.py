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


def _user_data(root):
    """A CSV with a label column, a .npy array and an image folder, under root/data."""
    from PIL import Image

    data = root / "data"
    (data / "imgs" / "cats").mkdir(parents=True)
    (data / "imgs" / "dogs").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["a,b,c,kind"] + [f"{rng.normal():.4f},{rng.normal():.4f},{rng.normal():.4f},{['x', 'y'][i % 2]}" for i in range(80)]
    (data / "t.csv").write_text("\n".join(rows) + "\n")
    np.save(data / "a.npy", rng.random((80, 5)).astype(np.float32))
    for i in range(12):
        Image.new("L", (6, 6), 10 + 19 * i).save(data / "imgs" / ("cats" if i % 2 else "dogs") / f"{i}.png")


@pytest.mark.parametrize(
    "source, options",
    [
        ("data/t.csv", {"label_column": "kind"}),  # CSV with labels, by a relative path
        ("data/a.npy", {}),
        ("data/imgs", {}),  # an image folder
        ("data/t.csv", {"label_column": "kind", "max_train": 30}),
    ],
    ids=["csv-labels", "npy", "image-folder", "max_train"],
)
def test_a_python_api_run_on_user_data_evaluates_samples_and_resumes_from_another_folder(tmp_path, monkeypatch, source, options):
    """Issue 16: Trainer(model, ds, ...) as the README's "From Python" shows, on each kind of
    user data loaded by a relative path; from another working directory the run folder
    evaluates, samples (to CSV for tables) and resumes to the uninterrupted run's weights."""
    _user_data(tmp_path)
    monkeypatch.chdir(tmp_path)

    def train(folder, max_steps):
        ds = deepgen.load_dataset(source, **options)
        deepgen.seed_all(0)
        model = deepgen.create_model("vae", ds, hidden=(16,), latent_dim=2)
        cfg = TrainConfig(epochs=100, batch_size=8, device="cpu", progress=False, tensorboard=False, max_steps=max_steps, log_every=1)
        Trainer(model, ds, cfg, run_dir=folder).fit()
        return model

    train("run", 4)  # stops mid-epoch
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run_dir = str(tmp_path / "run")
    table = source.endswith(".csv")
    assert main(["eval", run_dir, "--metrics", "recon", "--quiet"]) == 0
    assert main(["sample", run_dir, "--n", "4", "--out", str(elsewhere / ("s.csv" if table else "s.npy"))]) == 0
    if table:
        assert len((elsewhere / "s.csv").read_text().strip().splitlines()) == 5  # header and 4 rows, original units
    torch.set_num_threads(1)  # the CLI set its own thread count; compare both runs on the same one
    resumed = Trainer.resume(run_dir, max_steps=8)
    resumed.fit()
    assert len(resumed.dataset.train) == len(deepgen.load_run(run_dir).load_dataset().train)
    monkeypatch.chdir(tmp_path)
    full = train("full", 8)  # after the CLI calls, with the same CPU threads as the resumed run
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name

"""Image folders larger than ``max_resident_mb``: lazy splits, the streaming loader's
order and state, and training on them end to end (exact resume included)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from deepgen.cli import main
from deepgen.data import (
    DataConfig,
    ResidentLoader,
    StreamingLoader,
    iterate,
    load_dataset,
    make_loader,
)
from deepgen.data.images import ImageFiles
from deepgen.errors import UserError
from deepgen.metrics.features import data_sha256

N_PER_CLASS = 30


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 RGB 9x7 images in two class folders; pixel (0, 0, 0) of image i is i: its identity."""
    root = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    for c, name in enumerate(("a", "b")):
        (root / name).mkdir()
        for j in range(N_PER_CLASS):
            im = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
            im[0, 0, 0] = c * N_PER_CLASS + j
            Image.fromarray(im).save(root / name / f"{j:02d}.png")
    return root


def ids(x: torch.Tensor) -> list[int]:
    """Image identities of a uint8 (B, 3, 9, 7) batch or a [0, 1] model-space batch."""
    v = x[:, 0, 0, 0]
    return (v * 255).round().long().tolist() if v.is_floating_point() else v.long().tolist()


def test_a_streamed_folder_holds_the_same_data_as_a_resident_one(folder: Path) -> None:
    resident = load_dataset(str(folder))
    streamed = load_dataset(str(folder), max_resident_mb=0)
    assert resident.train.resident and not streamed.train.resident
    assert isinstance(streamed.train.x, ImageFiles) and streamed.meta["streamed"] is True
    assert "streamed" not in resident.meta and streamed.spec == resident.spec
    assert streamed.train.x.shape == tuple(resident.train.x.shape) and len(streamed.test) == len(resident.test)
    for split in ("train", "test"):
        a, b = resident.split(split), streamed.split(split)
        assert torch.equal(a.x, b.x[:]) and torch.equal(a.y, b.y)
        assert torch.equal(a.x[3], b.x[3]) and torch.equal(a.x[torch.tensor([5, 0, 2])], b.x[torch.tensor([5, 0, 2])])
        # Evaluation reads both the same way, batch by batch.
        for u, v in zip(iterate(resident, split, 7), iterate(streamed, split, 7)):
            assert torch.equal(u.x, v.x) and torch.equal(u.y, v.y)
    sub = load_dataset(str(folder), max_resident_mb=0, max_train=10)
    assert isinstance(sub.train.x, ImageFiles) and torch.equal(sub.train.x[:], resident.train.x[:10])


@pytest.mark.parametrize("workers", [0, 2])
def test_the_streaming_loader_visits_each_example_once_per_epoch(folder: Path, workers: int) -> None:
    ds = load_dataset(str(folder), max_resident_mb=0)
    loader = make_loader(ds, 16, seed=4, workers=workers)
    assert isinstance(loader, StreamingLoader) and loader.steps_per_epoch == len(ds.train) // 16
    train_ids = set(ids(ds.train.x[:]))
    for epoch in range(2):
        seen: list[int] = []
        for _ in range(loader.steps_per_epoch):
            batch = loader.next()
            assert batch.x.shape == (16, 3, 9, 7) and batch.x.dtype == torch.float32
            assert batch.y.tolist() == [i // N_PER_CLASS for i in ids(batch.x)]  # labels travel with their images
            seen += ids(batch.x)
        assert len(seen) == len(set(seen)) == 16 * loader.steps_per_epoch and set(seen) <= train_ids
        assert loader.at_epoch_end and loader.epochs_done == epoch + 1
    loader.close()
    # The order is the seed's, whatever the number of workers (two whole epochs), and the seed matters.
    steps = 2 * loader.steps_per_epoch

    def order(seed: int, w: int) -> list[list[int]]:
        lo = make_loader(ds, 16, seed=seed, workers=w)
        out = [ids(lo.next().x) for _ in range(steps)]
        lo.close()
        return out

    assert order(4, workers) == order(4, 0) != order(5, 0)


def test_the_streaming_loader_resumes_mid_epoch(folder: Path) -> None:
    ds = load_dataset(str(folder), max_resident_mb=0)
    loader = make_loader(ds, 12, seed=1, workers=1)
    for _ in range(3):
        loader.next()
    state = loader.state_dict()
    expected = [ids(loader.next().x) for _ in range(5)]  # runs into the next epoch
    restored = make_loader(ds, 12, seed=99, workers=1)
    restored.load_state_dict(state)
    assert [ids(restored.next().x) for _ in range(5)] == expected


def test_a_resident_folder_still_gets_the_resident_loader(folder: Path) -> None:
    assert isinstance(make_loader(load_dataset(str(folder)), 8), ResidentLoader)


def test_training_on_a_streamed_folder_resumes_exactly(folder: Path, tmp_path: Path) -> None:
    common = ["--data", str(folder), "--set", "max_resident_mb=0", "--set", "workers=1", "--set", "hidden=32",
              "--set", "latent_dim=4", "--set", "progress=false", "--set", "tensorboard=false", "--batch-size", "16"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main(["train", "vae", *common, "--epochs", "3", "--out", str(whole)]) == 0
    assert main(["train", "vae", *common, "--epochs", "1", "--out", str(split)]) == 0
    # Resumed with another number of workers (allowed: they change the speed, not the batches).
    assert main(["train", "--resume", str(split), "--epochs", "3", "--set", "workers=0"]) == 0
    assert json.loads((split / "config.json").read_text())["data"]["workers"] == 0
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(split / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (whole / "samples.png").is_file() and (whole / "reconstructions.png").is_file()


def test_the_fingerprint_follows_the_files(folder: Path, tmp_path: Path) -> None:
    import os

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    before = data_sha256(load_dataset(str(copy), max_resident_mb=0).train)
    assert data_sha256(load_dataset(str(copy), max_resident_mb=0).train) == before
    # Swap the contents of two files of one size and put their times back: the data changed.
    a, b = sorted((copy / "a").glob("*.png"))[:2]
    pa, pb = a.read_bytes(), b.read_bytes()
    assert len(pa) == len(pb)
    sa, sb = a.stat(), b.stat()
    a.write_bytes(pb)
    b.write_bytes(pa)
    os.utime(a, ns=(sa.st_atime_ns, sa.st_mtime_ns))
    os.utime(b, ns=(sb.st_atime_ns, sb.st_mtime_ns))
    assert data_sha256(load_dataset(str(copy), max_resident_mb=0).train) != before


def test_image_files_index_as_a_tensor_does(folder: Path) -> None:
    lazy, t = load_dataset(str(folder), max_resident_mb=0).train.x, load_dataset(str(folder)).train.x
    mask = torch.zeros(len(t), dtype=torch.bool)
    mask[[3, 7]] = True
    assert torch.equal(lazy[mask], t[mask]) and len(lazy.select(mask)) == 2
    assert torch.equal(lazy[torch.tensor(3)], t[3]) and torch.equal(lazy[np.int64(3)], t[3]) and torch.equal(lazy[-1], t[-1])
    assert torch.equal(lazy[2:9:3], t[2:9:3]) and lazy[5:5].shape == (0, 3, 9, 7)
    for bad in (1.5, torch.tensor([1.0]), len(t), True):
        with pytest.raises(IndexError):
            lazy[bad]


def test_an_unreadable_image_in_a_worker_is_one_line(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file that breaks after the folder was indexed (headers read) fails in a worker:
    the CLI prints the worker's message as one line, exits 2 and leaves no worker behind."""
    import multiprocessing

    import deepgen.data.images as images

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    real_list = images.list_images

    def list_then_break(path: Path) -> list[Path]:
        files = real_list(path)
        for f in files:
            f.write_bytes(b"not a png")
        return files

    monkeypatch.setattr(images, "list_images", list_then_break)
    monkeypatch.setattr(images, "_probe", lambda p: ((7, 9), False))  # as read before the damage
    argv = ["train", "ae", "--data", str(copy), "--set", "max_resident_mb=0", "--set", "workers=1", "--set", "progress=false",
            "--set", "tensorboard=false", "--batch-size", "8", "--epochs", "1", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "cannot read image" in lines[0] and "Traceback" not in err, err
    assert not multiprocessing.active_children()


def test_no_worker_outlives_a_run(folder: Path, tmp_path: Path) -> None:
    import multiprocessing

    argv = ["train", "ae", "--data", str(folder), "--set", "max_resident_mb=0", "--set", "workers=2", "--set", "progress=false",
            "--set", "tensorboard=false", "--batch-size", "8", "--epochs", "1", "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    assert not multiprocessing.active_children()
    ds = load_dataset(str(folder), max_resident_mb=0)
    for _ in range(3):  # dropped loaders take their workers with them (no reference cycle)
        loader = make_loader(ds, 8, workers=2)
        loader.next()
        del loader
    assert not multiprocessing.active_children()


def test_streaming_settings_are_refused_for_other_data() -> None:
    with pytest.raises(UserError, match="max_resident_mb applies to a folder of images only"):
        load_dataset("digits", max_resident_mb=0)


@pytest.mark.parametrize(("key", "value"), [("max_resident_mb", -1), ("workers", -2)])
def test_bad_streaming_settings_are_refused(key: str, value: int) -> None:
    with pytest.raises(UserError, match=key):
        DataConfig(**{key: value})

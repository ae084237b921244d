"""A dataset records how it was loaded (``Dataset.config``), and reloading from that record
gives the same data from any working directory; data given in memory round-trips through
``Dataset.memory_arrays`` and ``load_dataset_from_arrays``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepgen.data import MEMORY, DataConfig, Dataset, load_dataset, load_dataset_from_arrays
from deepgen.data.images import ImageFiles
from deepgen.errors import UserError


def _same_split(a, b) -> None:
    if isinstance(a.x, ImageFiles):
        assert isinstance(b.x, ImageFiles) and a.x.files == b.x.files and a.x.shape == b.x.shape
        assert torch.equal(a.x[:], b.x[:])
    else:
        assert a.x.dtype == b.x.dtype and torch.equal(a.x, b.x)
    assert (a.y is None) == (b.y is None)
    if a.y is not None:
        assert torch.equal(a.y, b.y)


def assert_same(a: Dataset, b: Dataset) -> None:
    """Identical datasets: name, spec, splits (tensors and labels), preprocessing, facts, record."""
    assert a.name == b.name and a.spec == b.spec
    _same_split(a.train, b.train)
    _same_split(a.test, b.test)
    assert a.scale == b.scale and a.binarize == b.binarize
    assert a.state.keys() == b.state.keys()
    for k in a.state:
        np.testing.assert_array_equal(a.state[k], b.state[k])
    assert a.meta == b.meta
    assert a.config == b.config
    ma, mb = a.memory_arrays(), b.memory_arrays()
    assert (ma is None) == (mb is None)
    if ma is not None:
        assert ma.keys() == mb.keys()
        for k in ma:
            assert ma[k].dtype == mb[k].dtype
            np.testing.assert_array_equal(ma[k], mb[k])


def _reloaded(ds: Dataset) -> Dataset:
    """Reload from the record, through JSON as a run folder stores it."""
    assert ds.config is not None
    return load_dataset(DataConfig.from_dict(ds.config.to_dict()))


def _csv(path: Path, n: int = 40) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = ["a,b,kind"] + [f"{rng.normal():.4f},{rng.normal() * 3 + 1:.4f},{['cat', 'dog', 'eel'][i % 3]}" for i in range(n)]
    path.write_text("\n".join(rows) + "\n")
    return path


def _images(root: Path) -> Path:
    for cls, base in (("cats", 10), ("dogs", 120)):
        for i in range(5):
            (root / cls).mkdir(parents=True, exist_ok=True)
            Image.new("L", (4, 3), base + 7 * i).save(root / cls / f"{i}.png")
    return root


# --------------------------------------------------------------------------- files


def test_csv_with_label_column_reloads_with_same_label_encoding(tmp_path: Path) -> None:
    ds = load_dataset(str(_csv(tmp_path / "t.csv")), label_column="kind", test_fraction=0.25, seed=3)
    assert ds.config == DataConfig(name=str(tmp_path / "t.csv"), label_column="kind", test_fraction=0.25, seed=3)
    assert ds.meta["label_values"] == ["cat", "dog", "eel"] and ds.spec.num_classes == 3
    again = _reloaded(ds)
    assert_same(ds, again)
    assert again.meta["label_values"] == ["cat", "dog", "eel"]


def test_npy_reloads(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.random.default_rng(1).normal(size=(30, 4)))
    ds = load_dataset(tmp_path / "a.npy")  # a Path is accepted too
    assert ds.config.name == str(tmp_path / "a.npy") and ds.spec.kind == "real"
    assert_same(ds, _reloaded(ds))


def test_npz_with_labels_reloads(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "b.npz", X=rng.integers(0, 256, (25, 5, 5, 3), dtype=np.uint8), labels=np.arange(25) % 4)
    ds = load_dataset(str(tmp_path / "b.npz"), test_fraction=0.2)
    assert ds.spec.shape == (3, 5, 5) and ds.spec.num_classes == 4 and ds.meta["key"] == "X"
    assert_same(ds, _reloaded(ds))


@pytest.mark.parametrize("max_resident_mb", [4096, 0], ids=["resident", "streamed"])
def test_image_folder_reloads(tmp_path: Path, max_resident_mb: int) -> None:
    root = _images(tmp_path / "imgs")
    ds = load_dataset(str(root), image_size=(3, 3), test_fraction=0.3, max_resident_mb=max_resident_mb)
    assert ds.spec.shape == (1, 3, 3) and ds.spec.num_classes == 2 and ds.train.resident == (max_resident_mb > 0)
    assert ds.config.image_size == (3, 3) and ds.config.max_resident_mb == max_resident_mb
    assert_same(ds, _reloaded(ds))


def test_max_train_reloads_the_same_examples(tmp_path: Path) -> None:
    path = _csv(tmp_path / "big.csv", n=300)
    ds = load_dataset(str(path), label_column="kind", max_train=100)
    assert len(ds.train) == 100 and len(ds.test) == 30 and ds.config.max_train == 100
    again = _reloaded(ds)
    assert_same(ds, again)
    full = load_dataset(str(path), label_column="kind")
    assert len(full.train) == 270 and torch.equal(full.train.x[:100], ds.train.x)


def test_relative_paths_are_recorded_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _csv(tmp_path / "data" / "t.csv")
    _images(tmp_path / "data" / "imgs")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(tmp_path)
    by_name = load_dataset("data/t.csv", label_column="kind", max_train=20)
    by_config = load_dataset(DataConfig(name="./data/../data/t.csv", label_column="kind", max_train=20))
    folder = load_dataset("data/imgs")
    digits = load_dataset("digits", data_dir="data")  # a relative data_dir too
    absolute = str(tmp_path / "data" / "t.csv")
    assert by_name.config.name == by_config.config.name == absolute
    assert by_name.name == by_name.spec.name == absolute
    assert folder.config.name == str(tmp_path / "data" / "imgs") and os.path.isabs(folder.name)
    assert digits.config.name == "digits" and digits.config.data_dir == str(tmp_path / "data")
    assert_same(by_name, by_config)
    monkeypatch.chdir(elsewhere)
    for ds in (by_name, by_config, folder, digits):
        assert_same(ds, _reloaded(ds))


def test_registered_datasets_record_their_config() -> None:
    ds = load_dataset("moons", num_samples=200, seed=5)
    assert ds.config == DataConfig(name="moons", num_samples=200, seed=5) and ds.memory_arrays() is None
    assert_same(ds, _reloaded(ds))
    again = load_dataset(ds.config, max_train=50)  # keywords still replace a config's fields
    assert len(again.train) == 50 and again.config.max_train == 50


# --------------------------------------------------------------------------- memory


def _round_trip(ds: Dataset, tmp_path: Path) -> Dataset:
    """Store memory_arrays as a run folder may (np.savez, read back without pickle), rebuild."""
    arrays = ds.memory_arrays()
    assert arrays is not None and set(arrays) <= {"x", "y"}
    assert all(isinstance(v, np.ndarray) and v.dtype.kind != "O" for v in arrays.values())
    np.savez(tmp_path / "mem.npz", **arrays)
    with np.load(tmp_path / "mem.npz", allow_pickle=False) as f:
        stored = {k: f[k] for k in f.files}
    config = DataConfig.from_dict(ds.config.to_dict())
    return load_dataset_from_arrays(stored, config)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda r: r.integers(0, 256, (30, 6, 5, 3), dtype=np.uint8), id="uint8-nhwc"),
        pytest.param(lambda r: r.random((30, 1, 4, 4)).astype(np.float32), id="float-images"),
        pytest.param(lambda r: r.random((30, 7)) > 0.5, id="bool-binary"),
        pytest.param(lambda r: r.normal(size=(30, 3)), id="real-table"),
        pytest.param(lambda r: r.normal(size=30), id="real-1d"),
    ],
)
def test_memory_arrays_read_as_the_file_would_be(tmp_path: Path, make) -> None:
    x = make(np.random.default_rng(4))
    y = np.arange(30) % 3
    np.savez(tmp_path / "f.npz", x=x, y=y)
    from_file = load_dataset(str(tmp_path / "f.npz"), test_fraction=0.2, seed=1)
    for given in ((x, y), {"x": x, "y": y}, (torch.from_numpy(np.asarray(x)), torch.from_numpy(y))):
        ds = load_dataset(given, test_fraction=0.2, seed=1)
        assert ds.name == ds.spec.name == MEMORY and ds.config == DataConfig(name=MEMORY, test_fraction=0.2, seed=1)
        assert ds.spec.shape == from_file.spec.shape and ds.spec.kind == from_file.spec.kind
        assert ds.spec.num_levels == from_file.spec.num_levels and ds.spec.num_classes == 3 and ds.scale == from_file.scale
        _same_split(ds.train, from_file.train)
        _same_split(ds.test, from_file.test)
        assert_same(ds, _round_trip(ds, tmp_path))


def test_memory_without_labels_options_and_max_train(tmp_path: Path) -> None:
    x = torch.randn(200, 5, requires_grad=True)
    ds = load_dataset(x, test_fraction=0.25, max_train=100)
    assert len(ds.train) == 100 and len(ds.test) == 50 and ds.train.y is None and ds.spec.num_classes is None
    assert set(ds.memory_arrays()) == {"x"} and len(ds.memory_arrays()["x"]) == 200  # before hold-out and max_train
    again = _round_trip(ds, tmp_path)
    assert_same(ds, again)
    assert len(again.train) == 100
    assert_same(load_dataset(x.detach().numpy(), test_fraction=0.25, max_train=100), ds)
    assert_same(load_dataset((x, None), test_fraction=0.25, max_train=100), ds)


def test_memory_text_labels_and_bfloat16(tmp_path: Path) -> None:
    x = torch.rand(24, 4, 4).to(torch.bfloat16)
    labels = np.array(["b", "a", "c"] * 8, dtype=object)  # e.g. a pandas column
    ds = load_dataset({"data": x, "labels": labels})
    assert ds.meta["label_values"] == ["a", "b", "c"] and ds.spec.kind == "continuous"
    assert ds.memory_arrays()["x"].dtype == np.float32 and ds.memory_arrays()["y"].dtype.kind == "U"
    assert_same(ds, _round_trip(ds, tmp_path))
    assert_same(ds, load_dataset({"data": x, "labels": list(labels)}))


def test_memory_config_does_not_reload_as_a_path() -> None:
    ds = load_dataset(np.zeros((10, 2)) + np.arange(10)[:, None])
    with pytest.raises(UserError, match="load_dataset_from_arrays"):
        load_dataset(ds.config)
    with pytest.raises(UserError, match="load_dataset_from_arrays"):
        load_dataset(MEMORY)
    with pytest.raises(UserError, match="reloads with load_dataset"):
        load_dataset_from_arrays({"x": np.zeros((10, 2))}, DataConfig(name="digits"))
    with pytest.raises(UserError, match=r"\{'x': x\}"):
        load_dataset_from_arrays({"x": np.zeros((10, 2)), "z": np.zeros(10)}, ds.config)


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(np.array([[0.5, np.nan], [0.1, 0.2], [np.inf, 0.3]]), id="numpy"),
        pytest.param(torch.tensor([[0.5, float("nan")], [0.1, 0.2], [float("inf"), 0.3]]), id="torch"),
    ],
)
def test_nan_in_memory_is_one_clear_error(bad) -> None:
    with pytest.raises(UserError) as e:
        load_dataset(bad)
    message = str(e.value)
    assert "\n" not in message
    assert message == (
        "the in-memory data has 2 NaN or infinite values; the first is at index (0, 1). Remove or fill them before training."
    )


@pytest.mark.parametrize(
    "source, match",
    [
        ([[1.0, 2.0], [3.0, 4.0]], "got list"),
        ({"features": np.zeros((4, 2))}, "keys features"),
        ({"x": np.zeros((4, 2)), "extra": 1}, "nothing else"),
        ((np.zeros((4, 2)), np.zeros(4), np.zeros(4)), "tuple of 3"),
        ((np.zeros((4, 2)), np.zeros(3)), r"expected \(4,\)"),
        (np.array(["a", "b"]), "only numbers"),
        (torch.zeros(4, 2, dtype=torch.complex64), "only real numbers"),
        (np.zeros((0, 3)), "no examples"),
    ],
)
def test_bad_memory_sources_are_user_errors(source, match: str) -> None:
    with pytest.raises(UserError, match=match):
        load_dataset(source)


def test_memory_refuses_name_and_folder_options() -> None:
    with pytest.raises(UserError, match="leave out name"):
        load_dataset(np.zeros((10, 2)), name="mine")
    with pytest.raises(UserError, match="data given in memory is not one"):
        load_dataset(np.zeros((10, 2)), image_size=(4, 4))

"""The data layer: built-in datasets, user files, every user-caused error, and the
resident loader."""

from __future__ import annotations

import copy
import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepgen.data import Dataset, DataSpec, ResidentLoader, Split, iterate, load_dataset
from deepgen.data.files import holdout
from deepgen.data.toy2d import grid_modes, ring_modes
from deepgen.errors import UserError

IDX_FILES = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]


def idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
    """An IDX file's bytes (uncompressed) for a uint8 array."""
    magic = (0x800 | arr.ndim) if magic is None else magic
    return struct.pack(f">I{arr.ndim}I", magic, *arr.shape) + arr.astype(np.uint8).tobytes()


def write_mnist(folder: Path, n_train: int = 12, n_test: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    """Small valid MNIST-format files in ``folder``; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        IDX_FILES[0]: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        IDX_FILES[1]: rng.integers(0, 10, n_train, dtype=np.uint8),
        IDX_FILES[2]: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        IDX_FILES[3]: rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        (folder / name).write_bytes(gzip.compress(idx_bytes(arr)))
    return arrays


@pytest.fixture
def no_data_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No $DEEPGEN_DATA and an empty cache folder, so only what a test writes is found."""
    monkeypatch.delenv("DEEPGEN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


# --------------------------------------------------------------------------- digits


def test_digits_spec_split_and_conversion() -> None:
    ds = load_dataset("digits")
    assert ds.name == "digits" and ds.spec.name == "digits"
    assert ds.spec == DataSpec(shape=(1, 8, 8), kind="continuous", num_levels=17, num_classes=10, name="digits")
    assert (len(ds.train), len(ds.test)) == (1797 - 180, 180)
    assert ds.train.x.dtype == torch.uint8 and ds.train.x.shape[1:] == (1, 8, 8)
    assert int(ds.train.x.max()) == 16 and int(ds.train.x.min()) == 0
    assert ds.scale == pytest.approx(1 / 16) and not ds.binarize
    assert set(ds.train.y.tolist()) == set(range(10)) and ds.train.y.dtype == torch.int64
    x = ds.convert(ds.train.x[:50])
    assert x.dtype == torch.float32 and float(x.min()) >= 0 and float(x.max()) == 1.0
    # Every example is in exactly one split, taken from scikit-learn's array by the seeded hold-out.
    train_idx, test_idx = holdout(1797, 0.1, 0)
    assert torch.equal(torch.cat([train_idx, test_idx]).sort().values, torch.arange(1797))
    from sklearn.datasets import load_digits

    ref = load_digits()
    assert torch.equal(ds.test.x[:, 0], torch.from_numpy(ref.images[test_idx.numpy()]).to(torch.uint8))
    assert torch.equal(ds.train.y, torch.from_numpy(ref.target[train_idx.numpy()]))


def test_digits_split_is_seeded_and_max_train() -> None:
    a, b = load_dataset("digits", seed=3), load_dataset("digits", seed=3)
    c = load_dataset("digits", seed=4)
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.test.x, c.test.x)
    small = load_dataset("digits", max_train=100, test_fraction=0.5)
    assert len(small.train) == 100 and len(small.test) == round(1797 * 0.5)


def test_loaded_tensors_are_private_copies() -> None:
    a = load_dataset("digits")
    a.train.x.zero_()
    assert int(load_dataset("digits").train.x.max()) == 16


# --------------------------------------------------------------------------- 2-D toys


@pytest.mark.parametrize(("name", "modes", "std"), [("ring8", ring_modes(), 0.01), ("grid25", grid_modes(), 0.05)])
def test_toy_mixture_labels_and_std(name: str, modes: np.ndarray, std: float) -> None:
    ds = load_dataset(name, num_samples=4000)
    assert ds.name == ds.spec.name == name
    assert ds.spec.shape == (2,) and ds.spec.kind == "real" and ds.spec.num_classes == len(modes)
    assert ds.scale is None and ds.train.x.dtype == torch.float32
    assert (len(ds.train), len(ds.test)) == (4000, 1000)
    np.testing.assert_allclose(np.array(ds.meta["modes"]), modes)
    assert ds.meta["mode_std"] == std
    x, y = ds.train.x.numpy(), ds.train.y.numpy()
    nearest = np.linalg.norm(x[:, None, :] - modes[None], axis=2).argmin(1)
    assert (nearest == y).mean() > 0.999
    assert set(y.tolist()) == set(range(len(modes)))
    residual = x - modes[y]
    assert residual.std(0) == pytest.approx([std, std], rel=0.06)
    if name == "ring8":
        np.testing.assert_allclose(np.linalg.norm(modes, axis=1), 1.0)
    else:
        assert sorted({v for m in ds.meta["modes"] for v in m}) == [-4, -2, 0, 2, 4]


def test_toys_are_deterministic_and_noise_overrides() -> None:
    a, b = load_dataset("ring8", num_samples=100, seed=5), load_dataset("ring8", num_samples=100, seed=5)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.x, b.test.x)
    assert not torch.equal(a.train.x[:25], a.test.x)  # test is a different stream
    assert not torch.equal(a.train.x, load_dataset("ring8", num_samples=100, seed=6).train.x)
    wide = load_dataset("grid25", num_samples=2000, toy_noise=0.3)
    assert wide.meta["mode_std"] == 0.3
    residual = wide.train.x.numpy() - grid_modes()[wide.train.y.numpy()]
    assert residual.std() == pytest.approx(0.3, rel=0.08)


def test_moons_and_swissroll() -> None:
    moons = load_dataset("moons", num_samples=400)
    assert moons.spec.shape == (2,) and moons.spec.num_classes == 2 and moons.meta["noise"] == 0.05
    assert (len(moons.train), len(moons.test)) == (400, 100)
    assert set(moons.train.y.tolist()) == {0, 1}
    assert torch.equal(moons.train.x, load_dataset("moons", num_samples=400).train.x)
    roll = load_dataset("swissroll", num_samples=400)
    assert roll.spec.num_classes is None and roll.train.y is None and roll.name == "swissroll"
    assert 0.5 < float(roll.train.x.abs().max()) < 3  # O(1) after the scaling
    assert roll.train.x.dtype == torch.float32


# --------------------------------------------------------------------------- real files


@pytest.mark.realdata
@pytest.mark.parametrize(
    ("name", "train_labels", "test_labels"),
    [("mnist", [5, 0, 4, 1, 9], [7, 2, 1, 0, 4]), ("fashion-mnist", [9, 0, 0, 3], [9, 2, 1, 1])],
)
def test_idx_datasets(real_data_dir: Path, name: str, train_labels: list, test_labels: list) -> None:
    ds = load_dataset(name, data_dir=str(real_data_dir))
    assert ds.name == ds.spec.name == name
    assert ds.spec == DataSpec(shape=(1, 28, 28), kind="continuous", num_levels=256, num_classes=10, name=name)
    assert (len(ds.train), len(ds.test)) == (60000, 10000)
    assert ds.train.y[: len(train_labels)].tolist() == train_labels
    assert ds.test.y[: len(test_labels)].tolist() == test_labels
    assert ds.train.x.dtype == torch.uint8 and ds.train.x.shape == (60000, 1, 28, 28)
    assert (int(ds.train.x.min()), int(ds.train.x.max())) == (0, 255)
    x = ds.convert(ds.test.x[:10])
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert len(ds.meta["classes"]) == 10
    assert len(load_dataset(name, max_train=500).train) == 500


@pytest.mark.realdata
def test_frey_faces(real_data_dir: Path) -> None:
    ds = load_dataset("frey-faces", data_dir=str(real_data_dir))
    assert ds.name == ds.spec.name == "frey-faces"
    assert ds.spec.shape == (1, 28, 20) and ds.spec.kind == "continuous" and ds.spec.num_levels == 256
    assert ds.spec.num_classes is None and ds.train.y is None
    assert len(ds.train) + len(ds.test) == 1965 and len(ds.test) == round(1965 * 0.1)
    assert (int(ds.train.x.min()), int(ds.train.x.max())) == (8, 238)
    assert ds.scale == pytest.approx(1 / 255)
    other = load_dataset("frey-faces", data_dir=str(real_data_dir), seed=1)
    assert not torch.equal(ds.test.x, other.test.x)


def test_mnist_binarization_dynamic_and_static(no_data_env: Path) -> None:
    write_mnist(no_data_env / "d" / "mnist", n_train=300, n_test=40)
    opts = {"data_dir": str(no_data_env / "d")}
    dyn = load_dataset("mnist-binarized", **opts)
    assert dyn.name == dyn.spec.name == "mnist-binarized"
    assert dyn.spec.kind == "binary" and dyn.binarize and dyn.scale == pytest.approx(1 / 255)
    assert dyn.train.x.dtype == torch.uint8 and int(dyn.train.x.max()) == 255  # raw grey levels kept
    raw = dyn.train.x[:100]
    a = dyn.convert(raw, torch.Generator().manual_seed(1))
    b = dyn.convert(raw, torch.Generator().manual_seed(2))
    assert set(a.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(a, b) and torch.equal(a, dyn.convert(raw, torch.Generator().manual_seed(1)))
    assert float(a.mean()) == pytest.approx(float(raw.float().mean() / 255), abs=0.01)

    s0 = load_dataset("mnist-binarized", binarization="static", seed=0, **opts)
    again = load_dataset("mnist-binarized", binarization="static", seed=0, **opts)
    s1 = load_dataset("mnist-binarized", binarization="static", seed=1, **opts)
    assert s0.spec.kind == "binary" and not s0.binarize and s0.scale == 1.0
    assert s0.train.x.dtype == torch.uint8 and set(s0.train.x.unique().tolist()) == {0, 1}
    assert torch.equal(s0.train.x, again.train.x) and torch.equal(s0.test.x, again.test.x)
    assert not torch.equal(s0.train.x, s1.train.x) and not torch.equal(s0.test.x, s1.test.x)
    gens = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    assert torch.equal(s0.convert(s0.test.x, gens[0]), s0.convert(s0.test.x, gens[1]))
    assert float(s0.train.x.float().mean()) == pytest.approx(float(raw.float().mean() / 255), abs=0.01)
    assert torch.equal(s0.train.y, dyn.train.y)
    # Pixels 0 and 255 are certain: the draw is Bernoulli(p / 255) exactly.
    grey = dyn.train.x
    assert bool((s0.train.x[grey == 0] == 0).all()) and bool((s0.train.x[grey == 255] == 1).all())


@pytest.mark.realdata
def test_mnist_binarized_real(real_data_dir: Path) -> None:
    static = load_dataset("mnist-binarized", data_dir=str(real_data_dir), binarization="static")
    grey = load_dataset("mnist", data_dir=str(real_data_dir))
    assert (len(static.train), len(static.test)) == (60000, 10000)
    assert static.test.y[:5].tolist() == [7, 2, 1, 0, 4]
    head = static.train.x[:10000]
    assert set(head[:100].unique().tolist()) == {0, 1}
    assert float(head.float().mean()) == pytest.approx(float(grey.train.x[:10000].float().mean() / 255), abs=0.002)
    dyn = load_dataset("mnist-binarized", data_dir=str(real_data_dir))
    assert dyn.binarize and torch.equal(dyn.train.x[:100], grey.train.x[:100])


# --------------------------------------------------------------------------- user images


def _png(path: Path, value, size_wh: tuple[int, int], mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size_wh, value).save(path)


def test_image_folder_grey_subfolder_labels_and_resize(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    for i in range(6):
        _png(root / "cats" / f"{i}.png", 10 * i, (5, 6))
        _png(root / "dogs" / f"{i}.png", 100 + 10 * i, (5, 6))
    _png(root / "dogs" / "big.PNG", 200, (10, 12))  # another size: resized to the first
    ds = load_dataset(str(root), test_fraction=0.25)
    assert ds.name == ds.spec.name == str(root)
    assert ds.spec.shape == (1, 6, 5) and ds.spec.kind == "continuous" and ds.spec.num_levels == 256
    assert ds.spec.num_classes == 2 and ds.meta["classes"] == ["cats", "dogs"]
    assert ds.train.x.dtype == torch.uint8 and ds.scale == pytest.approx(1 / 255)
    assert len(ds.train) + len(ds.test) == 13 and len(ds.test) == round(13 * 0.25)
    x = torch.cat([ds.train.x, ds.test.x])
    y = torch.cat([ds.train.y, ds.test.y])
    # Constant images stay constant through the resize; the label follows the folder.
    values = x.flatten(1)
    assert torch.equal(values.min(1).values, values.max(1).values)
    for v, label in zip(values[:, 0].tolist(), y.tolist()):
        assert label == (0 if v < 100 else 1)
    assert sorted(values[:, 0].tolist()) == sorted([10 * i for i in range(6)] + [100 + 10 * i for i in range(6)] + [200])


def test_image_folder_rgb_channels_and_size(tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    _png(root / "a.png", 50, (8, 8))
    _png(root / "b.jpg", (255, 0, 0), (8, 8), mode="RGB")
    _png(root / "c.bmp", (0, 0, 255), (16, 4), mode="RGB")
    ds = load_dataset(str(root), image_size=(4, 6), test_fraction=0.34)
    assert ds.spec.shape == (3, 4, 6) and ds.spec.num_classes is None and ds.train.y is None
    x = torch.cat([ds.train.x, ds.test.x])
    assert x.shape == (3, 3, 4, 6)
    reds = [im for im in x if int(im[0].float().mean()) > 200 and int(im[1].float().mean()) < 30]
    assert len(reds) == 1
    grey = load_dataset(str(root), image_channels=1, test_fraction=0.34)
    assert grey.spec.shape == (1, 8, 8)
    only_grey = tmp_path / "g"
    _png(only_grey / "a.png", 7, (3, 3))
    _png(only_grey / "b.png", 9, (3, 3))
    assert load_dataset(str(only_grey)).spec.shape == (1, 3, 3)


# --------------------------------------------------------------------------- user arrays


def test_npy_uint8_images_and_layouts(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    nhw = rng.integers(0, 256, (20, 5, 4), dtype=np.uint8)
    np.save(tmp_path / "a.npy", nhw)
    ds = load_dataset(str(tmp_path / "a.npy"))
    assert ds.name == ds.spec.name == str(tmp_path / "a.npy")
    assert ds.spec.shape == (1, 5, 4) and ds.spec.kind == "continuous" and ds.spec.num_levels == 256
    assert ds.scale == pytest.approx(1 / 255) and ds.train.x.dtype == torch.uint8
    nhwc = rng.integers(0, 256, (20, 5, 4, 3), dtype=np.uint8)
    np.save(tmp_path / "b.npy", nhwc)
    ds = load_dataset(str(tmp_path / "b.npy"))
    assert ds.spec.shape == (3, 5, 4)
    train_idx, _ = holdout(20, 0.1, 0)
    assert torch.equal(ds.train.x, torch.from_numpy(nhwc.transpose(0, 3, 1, 2))[train_idx])


def test_npz_labels_and_binary(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = (rng.random((30, 6, 6)) > 0.5).astype(np.float32)
    y = np.array(["odd", "even"] * 15)
    np.savez(tmp_path / "b.npz", data=x, labels=y)
    ds = load_dataset(str(tmp_path / "b.npz"))
    assert ds.spec.kind == "binary" and ds.spec.shape == (1, 6, 6) and ds.spec.num_classes == 2
    assert ds.meta["label_values"] == ["even", "odd"] and ds.meta["key"] == "data"
    assert set(ds.convert(ds.train.x).unique().tolist()) <= {0.0, 1.0}
    np.savez(tmp_path / "c.npz", x=rng.random((30, 3)), y=np.arange(30) % 3)
    ds = load_dataset(str(tmp_path / "c.npz"))
    assert ds.spec.kind == "real" and ds.spec.shape == (3,) and ds.spec.num_classes == 3


def test_npy_real_is_standardised(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x = rng.normal([5.0, -3.0, 0.0], [2.0, 0.5, 0.0], size=(200, 3))
    np.save(tmp_path / "t.npy", x)
    ds = load_dataset(str(tmp_path / "t.npy"))
    assert ds.spec.kind == "real" and ds.spec.shape == (3,) and ds.scale is None
    t = ds.train.x.numpy()
    np.testing.assert_allclose(t.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(t.std(0), [1, 1, 0], atol=1e-4)  # a constant column stays 0
    assert ds.state["std"][2] == 1.0
    train_idx, _ = holdout(200, 0.1, 0)
    np.testing.assert_allclose(ds.to_original(ds.train.x).numpy(), x[train_idx.numpy()], atol=1e-4)


# --------------------------------------------------------------------------- user tables


def test_csv_standardised_with_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 60
    a = np.arange(n, dtype=float)  # unique, to match rows back
    b = rng.normal(10, 3, n)
    c = rng.normal(-2, 0.1, n)
    labels = np.where(a % 2 == 0, "dog", "cat")
    lines = ["a,b,label,c"] + [f"{a[i]},{b[i]},{labels[i]},{c[i]}" for i in range(n)]
    path = tmp_path / "t.csv"
    path.write_text("\n".join(lines) + "\n")
    ds = load_dataset(str(path), label_column="label", test_fraction=0.2)
    assert ds.name == ds.spec.name == str(path)
    assert ds.spec.shape == (3,) and ds.spec.kind == "real" and ds.spec.num_classes == 2
    assert ds.meta["columns"] == ["a", "b", "c"] and ds.meta["label_values"] == ["cat", "dog"]
    assert (len(ds.train), len(ds.test)) == (48, 12)
    t = ds.train.x.numpy()
    np.testing.assert_allclose(t.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(t.std(0), 1, atol=1e-4)
    back = ds.to_original(torch.cat([ds.train.x, ds.test.x])).numpy().astype(np.float64)
    order = np.argsort(back[:, 0])
    np.testing.assert_allclose(back[order], np.stack([a, b, c], 1), rtol=1e-5, atol=1e-4)
    y = torch.cat([ds.train.y, ds.test.y]).numpy()[order]
    assert y.tolist() == [1 if i % 2 == 0 else 0 for i in range(n)]  # dog = 1, cat = 0


def test_csv_without_labels(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("x,y\n" + "".join(f"{i},{2 * i + 1}\n" for i in range(20)))
    ds = load_dataset(str(path))
    assert ds.spec.shape == (2,) and ds.spec.num_classes is None and ds.train.y is None
    assert ds.meta["columns"] == ["x", "y"]




@pytest.mark.parametrize("source", ["memory", "npy", "csv"])
def test_standardisation_is_fit_without_the_validation_rows(tmp_path: Path, source: str) -> None:
    """The validation hold-out is cut after the reader standardised the training split: the
    statistics must come from the rows that stay in training only, or model selection on
    the validation split sees its own mean and std."""
    rng = np.random.default_rng(4)
    x = rng.normal([3.0, -1.0], [2.0, 0.5], size=(100, 2))
    x[:, 0] += np.arange(100) // 10  # a drift, so that the split's statistics differ
    if source == "memory":
        ds = load_dataset(x, test_fraction=0.2, validation=30)
    elif source == "npy":
        np.save(tmp_path / "v.npy", x)
        ds = load_dataset(str(tmp_path / "v.npy"), test_fraction=0.2, validation=30)
    else:
        (tmp_path / "v.csv").write_text("a,b\n" + "".join(f"{float(r[0])!r},{float(r[1])!r}\n" for r in x))
        ds = load_dataset(str(tmp_path / "v.csv"), test_fraction=0.2, validation=30)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (50, 30, 20)
    t = ds.train.x.numpy().astype(np.float64)
    np.testing.assert_allclose(t.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(t.std(0), 1, atol=1e-4)
    train_idx, _ = holdout(100, 0.2, 0)
    raw_train = x[train_idx.numpy()[:50]]
    np.testing.assert_allclose(ds.state["mean"], raw_train.mean(0), rtol=1e-5)
    np.testing.assert_allclose(ds.state["std"], raw_train.std(0), rtol=1e-5)
    # The validation rows are mapped with the same statistics, and map back.
    raw_val = x[train_idx.numpy()[50:]]
    np.testing.assert_allclose(ds.to_original(ds.val.x).numpy(), raw_val, rtol=1e-4, atol=1e-4)
    assert abs(float(ds.val.x.numpy().mean())) > 0.05  # not standardised on its own statistics


@pytest.mark.parametrize("source", ["memory", "csv"])
def test_one_class_tables_are_standardised_on_the_normal_training_rows(tmp_path: Path, source: str) -> None:
    """normal_class filters before validation is cut: the statistics come from the normal
    class's training rows without its last ``validation`` ones (which become the
    validation split), never from the other classes or the validation rows."""
    rng = np.random.default_rng(5)
    y = np.arange(120) % 3
    x = rng.normal(0.0, 1.0, size=(120, 2)) + y[:, None] * np.array([5.0, -3.0])  # classes far apart
    x[:, 1] += np.arange(120) / 20  # a drift, so the last rows differ
    if source == "memory":
        ds = load_dataset((x, y), test_fraction=0.25, validation=6, normal_class=1)
    else:
        (tmp_path / "c.csv").write_text("a,b,label\n" + "".join(f"{float(r[0])!r},{float(r[1])!r},{k}\n" for r, k in zip(x, y)))
        ds = load_dataset(str(tmp_path / "c.csv"), test_fraction=0.25, validation=6, normal_class=1, label_column="label")
    train_idx, _ = holdout(120, 0.25, 0)
    normal = train_idx.numpy()[y[train_idx.numpy()] == 1]
    fit, val = normal[:-6], normal[-6:]
    assert (len(ds.train), len(ds.val)) == (len(fit), 6)
    assert set(ds.train.y.tolist()) == {1} and set(ds.val.y.tolist()) == {1}
    np.testing.assert_allclose(ds.state["mean"], x[fit].mean(0), rtol=1e-5)
    np.testing.assert_allclose(ds.state["std"], x[fit].std(0), rtol=1e-5)
    np.testing.assert_allclose(ds.to_original(ds.val.x).numpy(), x[val], rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- errors


def test_unknown_dataset() -> None:
    with pytest.raises(UserError, match=r"unknown dataset 'mnsit'.*Did you mean 'mnist'"):
        load_dataset("mnsit")


def test_missing_data_lists_folders_and_files(no_data_env: Path) -> None:
    where = no_data_env / "nowhere"
    with pytest.raises(UserError) as info:
        load_dataset("mnist", data_dir=str(where))
    msg = str(info.value)
    for folder in (where / "mnist", where, no_data_env / "cache" / "deepgen" / "data" / "mnist"):
        assert str(folder) in msg
    for name in IDX_FILES:
        assert name in msg
    assert "download=true" in msg


def test_missing_frey_says_no_download(no_data_env: Path) -> None:
    with pytest.raises(UserError, match=r"frey_rawface\.mat.*no public download"):
        load_dataset("frey-faces", download=True)


def test_local_idx_files_load_from_data_dir(no_data_env: Path) -> None:
    arrays = write_mnist(no_data_env / "d" / "mnist")
    ds = load_dataset("mnist", data_dir=str(no_data_env / "d"))
    assert len(ds.train) == 12 and torch.equal(ds.test.y, torch.from_numpy(arrays[IDX_FILES[3]]).long())
    assert torch.equal(ds.train.x[:, 0], torch.from_numpy(arrays[IDX_FILES[0]]))


def test_search_order_flat_folders_and_plain_idx(no_data_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_root, flat = no_data_env / "env", no_data_env / "flat"
    from_env = write_mnist(env_root / "mnist", n_train=7, seed=1)
    write_mnist(flat, n_train=9, seed=2)  # files directly in the folder, no mnist/ level
    monkeypatch.setenv("DEEPGEN_DATA", str(env_root))
    assert len(load_dataset("mnist").train) == 7  # $DEEPGEN_DATA
    assert len(load_dataset("mnist", data_dir=str(flat)).train) == 9  # --data-dir comes first
    # An IDX file stored decompressed is read as well.
    gz = env_root / "mnist" / IDX_FILES[0]
    (env_root / "mnist" / IDX_FILES[0][:-3]).write_bytes(gzip.decompress(gz.read_bytes()))
    gz.unlink()
    ds = load_dataset("mnist")
    assert torch.equal(ds.train.x[:, 0], torch.from_numpy(from_env[IDX_FILES[0]]))


def test_corrupt_frey_file(no_data_env: Path) -> None:
    import scipy.io

    folder = no_data_env / "d" / "frey-faces"
    folder.mkdir(parents=True)
    scipy.io.savemat(folder / "frey_rawface.mat", {"faces": np.zeros((560, 3), np.uint8)})
    with pytest.raises(UserError, match=r"frey_rawface\.mat has no variable 'ff'"):
        load_dataset("frey-faces", data_dir=str(no_data_env / "d"))
    (folder / "frey_rawface.mat").write_bytes(b"MATLAB 5.0 but then garbage")
    with pytest.raises(UserError, match=r"cannot read .*frey_rawface\.mat: not a readable MATLAB file"):
        load_dataset("frey-faces", data_dir=str(no_data_env / "d"))


def test_corrupt_idx_magic(no_data_env: Path) -> None:
    folder = no_data_env / "d" / "mnist"
    write_mnist(folder)
    (folder / IDX_FILES[0]).write_bytes(gzip.compress(idx_bytes(np.zeros((3, 28, 28), np.uint8), magic=0x801)))
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte\.gz has magic number 0x801, expected 0x803"):
        load_dataset("mnist", data_dir=str(no_data_env / "d"))


def test_truncated_idx(no_data_env: Path) -> None:
    folder = no_data_env / "d" / "mnist"
    write_mnist(folder)
    (folder / IDX_FILES[2]).write_bytes(gzip.compress(idx_bytes(np.zeros((5, 28, 28), np.uint8))[:-100]))
    with pytest.raises(UserError, match=r"t10k-images-idx3-ubyte\.gz is truncated.*3920 data bytes, found 3820"):
        load_dataset("mnist", data_dir=str(no_data_env / "d"))
    # A cut gzip stream is also named.
    good = gzip.compress(idx_bytes(np.zeros((5, 28, 28), np.uint8)))
    (folder / IDX_FILES[2]).write_bytes(good[: len(good) // 2])
    with pytest.raises(UserError, match=r"t10k-images-idx3-ubyte\.gz.*truncated or corrupt"):
        load_dataset("mnist", data_dir=str(no_data_env / "d"))


def test_image_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(UserError, match=r"no images found in folder .*\.png, \.jpg"):
        load_dataset(str(tmp_path))


def test_unreadable_image(tmp_path: Path) -> None:
    _png(tmp_path / "ok.png", 3, (4, 4))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(UserError, match=r"cannot read image .*broken\.png"):
        load_dataset(str(tmp_path))


def test_csv_with_text(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,2\n3,4\n5,hello\n")
    with pytest.raises(UserError, match=r"line 4, column 'b' holds 'hello', which is not a number"):
        load_dataset(str(path))


def test_csv_with_empty_and_nan_cells(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,2\n,4\n")
    with pytest.raises(UserError, match=r"line 3, column 'a' is empty"):
        load_dataset(str(path))
    path.write_text("a,b\n1,2\n3,4\n5,6\n7,NaN\n")
    with pytest.raises(UserError, match=r"line 5, column 'b' holds 'NaN' \(NaN or infinite\)"):
        load_dataset(str(path))


def test_csv_bad_label_column_and_header(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,2\n3,4\n")
    with pytest.raises(UserError, match=r"no column 'label' \(label_column\)\. Columns: a, b"):
        load_dataset(str(path), label_column="label")
    path.write_text("1,2\n3,4\n")
    with pytest.raises(UserError, match=r"header row of column names is required"):
        load_dataset(str(path))
    path.write_text("a,b\n1,2\n3\n")
    with pytest.raises(UserError, match=r"line 3 has 1 cells but the header has 2 columns"):
        load_dataset(str(path))


def test_npy_with_nan_and_objects(tmp_path: Path) -> None:
    x = np.zeros((10, 3))
    x[4, 1] = np.nan
    x[7, 2] = np.inf
    np.save(tmp_path / "n.npy", x)
    with pytest.raises(UserError, match=r"has 2 NaN or infinite values; the first is at index \(4, 1\)"):
        load_dataset(str(tmp_path / "n.npy"))
    np.save(tmp_path / "o.npy", np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(UserError, match=r"Python objects"):
        load_dataset(str(tmp_path / "o.npy"))
    np.save(tmp_path / "s.npy", np.array(["a", "b"]))
    with pytest.raises(UserError, match=r"only numbers are accepted"):
        load_dataset(str(tmp_path / "s.npy"))
    np.savez(tmp_path / "k.npz", foo=np.zeros(3))
    with pytest.raises(UserError, match=r"arrays foo, but the data must be under one of x, X, data, arr_0"):
        load_dataset(str(tmp_path / "k.npz"))


def test_unsupported_user_file(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("hi")
    with pytest.raises(UserError, match=r"accepted user data is"):
        load_dataset(str(tmp_path / "a.json"))


# --------------------------------------------------------------------------- resident loader


def _toy_dataset(n: int, binarize: bool = False) -> Dataset:
    x = torch.arange(n, dtype=torch.int64).unsqueeze(1)  # each example is its own index
    if binarize:  # raw grey levels; conversion draws per batch
        raw = torch.randint(0, 256, (n, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
        spec = DataSpec(shape=(4,), kind="binary")
        return Dataset("toy", spec, Split(raw, x[:, 0]), Split(raw[:10]), scale=1 / 255, binarize=True)
    spec = DataSpec(shape=(1,), kind="real")
    return Dataset("toy", spec, Split(x), Split(x[:10]))


def test_resident_loader_covers_an_epoch_without_repeats() -> None:
    loader = ResidentLoader(_toy_dataset(103), batch_size=10, seed=1)
    assert loader.steps_per_epoch == 10
    seen = torch.cat([loader.next().x[:, 0] for _ in range(10)]).long()
    assert len(seen) == 100 and len(seen.unique()) == 100
    assert loader.epochs_done == 1
    nxt = loader.next()
    assert len(nxt) == 10 and loader.epoch == 1


def test_resident_loader_state_dict_resumes_exactly() -> None:
    ds = _toy_dataset(57, binarize=True)
    loader = ResidentLoader(ds, batch_size=8, seed=3)
    for _ in range(5):  # part-way through the first epoch
        loader.next()
    state = copy.deepcopy(loader.state_dict())
    expected = [loader.next() for _ in range(6)]  # crosses into the second epoch
    resumed = ResidentLoader(ds, batch_size=8, seed=99)
    resumed.load_state_dict(state)
    for want in expected:
        got = resumed.next()
        assert torch.equal(got.x, want.x) and torch.equal(got.y, want.y)


def test_iterate_covers_the_split_in_order() -> None:
    ds = load_dataset("digits")
    batches = list(iterate(ds, "test", batch_size=64))
    assert sum(len(b) for b in batches) == len(ds.test)
    assert torch.equal(torch.cat([b.y for b in batches]), ds.test.y)
    assert len(list(iterate(ds, "test", batch_size=64, limit=70))[-1]) == 6


def test_loader_state_from_another_device_type_still_loads():
    """A GPU run's loader state (16-byte CUDA generator states) resumed on the CPU: the
    position is kept and the order goes on from a derived seed instead of failing."""
    ds = _toy_dataset(100)
    loader = ResidentLoader(ds, 32, "cpu", seed=3)
    loader.next()
    state = loader.state_dict()
    state["order_gen"] = state["convert_gen"] = torch.zeros(16, dtype=torch.uint8)  # a CUDA generator's state
    other = ResidentLoader(ds, 32, "cpu", seed=3)
    other.load_state_dict(state)
    assert (other.epoch, other.pos) == (loader.epoch, loader.pos)
    for _ in range(5):  # crosses an epoch: a new permutation from the derived seed
        assert other.next().x.shape == (32, *ds.spec.shape)

"""Mode coverage (VEEGAN / PacGAN protocol) on sample sets whose answers are known, the
``stacked-mnist`` dataset, and the ``modes`` metric through the evaluator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import deepgen
from deepgen.data import stacked
from deepgen.data.dataset import Dataset, DataSpec, Split
from deepgen.data.toy2d import GRID_STD, RING_STD, grid_modes, ring_modes
from deepgen.errors import UserError
from deepgen.metrics import evaluate, modes
from deepgen.metrics.modes import expected_hq_fraction, mode_coverage, stacked_mnist_modes
from deepgen.models.base import GenerativeModel, ModelConfig

MIXTURES = [("ring8", ring_modes(), RING_STD), ("grid25", grid_modes(), GRID_STD)]


def draw(centres: np.ndarray, std: float, n: int, seed: int = 0, which: list[int] | None = None) -> np.ndarray:
    """n points (n, 2): mode ``i % len(which)`` in turn (equal counts), plus N(0, std^2 I) noise."""
    rng = np.random.default_rng(seed)
    which = list(range(len(centres))) if which is None else which
    labels = np.array(which)[np.arange(n) % len(which)]
    return centres[labels] + std * rng.standard_normal((n, 2))


# -- 2-D mixtures: pure function --------------------------------------------------------------


def test_hq_fraction_closed_form() -> None:
    # Rayleigh radius: P(||e|| < 3) = 1 - exp(-9/2) for e ~ N(0, I_2).
    assert expected_hq_fraction() == pytest.approx(0.988891, abs=1e-6)


@pytest.mark.parametrize("name,centres,std", MIXTURES)
def test_true_samples_capture_every_mode(name: str, centres: np.ndarray, std: float) -> None:
    r = mode_coverage(draw(centres, std, 100_000), centres, std)
    m = len(centres)
    assert r["modes"] == m and r["modes_total"] == m
    # 100k draws: the binomial s.e. of the fraction is 0.033%; allow 0.3%.
    assert r["hq_percent"] == pytest.approx(100 * expected_hq_fraction(), abs=0.3)
    assert 0 <= r["reverse_kl"] < 1e-3
    assert sum(r["counts"]) == round(r["hq_percent"] * 1000)
    # The protocol's 2,500 samples: every mode, KL near 0.
    small = mode_coverage(draw(centres, std, 2500, seed=1), centres, std)
    assert small["modes"] == m and small["reverse_kl"] < 0.02


@pytest.mark.parametrize("name,centres,std", MIXTURES)
def test_one_mode_only(name: str, centres: np.ndarray, std: float) -> None:
    r = mode_coverage(draw(centres, std / 10, 2500, which=[3]), centres, std)
    assert r["modes"] == 1
    assert r["hq_percent"] == 100.0
    assert r["reverse_kl"] == pytest.approx(math.log(len(centres)), abs=1e-12)
    assert r["counts"][3] == 2500


def test_half_the_modes_gives_log_two() -> None:
    centres = ring_modes()
    r = mode_coverage(draw(centres, RING_STD / 10, 2000, which=[0, 2, 4, 6]), centres, RING_STD)
    assert r["modes"] == 4
    assert r["reverse_kl"] == pytest.approx(math.log(2), abs=1e-12)  # p = 1/4 on 4 of 8 modes


@pytest.mark.parametrize("name,centres,std", MIXTURES)
def test_off_mode_noise_is_not_high_quality(name: str, centres: np.ndarray, std: float) -> None:
    # Points between the modes: ring8 around (0.5, 0.5), 0.29 = 29 std from the nearest mode;
    # grid25 around (1, 1), 1.41 = 28 std from the nearest mode.
    middle = np.array([0.5, 0.5]) if name == "ring8" else np.array([1.0, 1.0])
    far = middle + 0.01 * np.random.default_rng(0).standard_normal((2500, 2))
    r = mode_coverage(far, centres, std)
    assert r["modes"] == 0 and r["hq_percent"] == 0.0
    assert math.isnan(r["reverse_kl"])  # no HQ sample: p_gen undefined


def test_only_high_quality_samples_enter_the_histogram() -> None:
    centres = ring_modes()
    good = draw(centres, RING_STD / 10, 800, which=[1])  # all at mode 1
    bad = np.zeros((800, 2))  # the centre: 100 std from every mode
    r = mode_coverage(np.concatenate([good, bad]), centres, RING_STD)
    assert r["hq_percent"] == 50.0
    assert r["modes"] == 1
    assert r["reverse_kl"] == pytest.approx(math.log(8), abs=1e-12)  # the bad half does not enter


def test_threshold_is_three_std_of_the_nearest_mode() -> None:
    centres = np.array([[0.0, 0.0], [10.0, 0.0]])
    x = np.array([[0.0, 2.9], [0.0, 3.1], [10.0, -2.99]])  # std 1
    r = mode_coverage(x, centres, 1.0)
    assert r["counts"] == [1, 1]
    assert r["hq_percent"] == pytest.approx(200 / 3)
    # Per-mode stds: distance is measured in each mode's own std (PacGAN's code).
    r2 = mode_coverage(torch.tensor(x), torch.tensor(centres), np.array([1.0, 0.5]))
    assert r2["counts"] == [1, 0]  # (10, -2.99) is 5.98 stds of mode 1 and 10.4 of mode 0


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="agree in D"):
        mode_coverage(np.zeros((3, 3)), ring_modes(), 0.1)
    with pytest.raises(ValueError, match="std"):
        mode_coverage(np.zeros((3, 2)), ring_modes(), 0.0)


# -- stacked MNIST: pure function --------------------------------------------------------------


def test_stacked_every_mode_equally() -> None:
    codes = torch.arange(1000).repeat(26)  # 26,000 samples, 26 per mode
    digits = torch.stack([codes // 100, codes // 10 % 10, codes % 10], dim=1)
    r = stacked_mnist_modes(digits)
    assert r == {"modes": 1000, "modes_total": 1000, "kl": pytest.approx(0.0, abs=1e-12)}
    assert stacked_mnist_modes(codes.numpy()) == r  # (N,) codes give the same


def test_stacked_one_mode_and_some() -> None:
    one = stacked_mnist_modes(np.tile([[7, 0, 3]], (26000, 1)))
    assert one["modes"] == 1
    assert one["kl"] == pytest.approx(math.log(1000), abs=1e-12)
    ten = stacked_mnist_modes(torch.arange(10).repeat(5))  # 10 modes equally: log(100)
    assert ten["modes"] == 10 and ten["kl"] == pytest.approx(math.log(100), abs=1e-12)


def test_stacked_bad_labels() -> None:
    with pytest.raises(ValueError, match="0..9"):
        stacked_mnist_modes(np.array([[1, 2, 10]]))
    with pytest.raises(ValueError, match="shape"):
        stacked_mnist_modes(np.zeros((4, 2), dtype=int))


# -- stacked-mnist dataset (real MNIST files) --------------------------------------------------


def test_stacked_mnist_dataset(real_data_dir) -> None:
    ds = deepgen.load_dataset("stacked-mnist", data_dir=str(real_data_dir))
    mnist = deepgen.load_dataset("mnist", data_dir=str(real_data_dir))
    assert ds.spec.shape == (3, 28, 28) and ds.spec.kind == "continuous" and ds.spec.num_levels == 256
    assert ds.spec.num_classes == 1000 and ds.meta["modes_total"] == 1000
    assert ds.train.x.shape == (60000, 3, 28, 28) and ds.train.x.dtype == torch.uint8
    assert ds.test.x.shape == (10000, 3, 28, 28)
    assert 0 <= int(ds.train.y.min()) and int(ds.train.y.max()) < 1000
    assert len(torch.unique(ds.train.y)) > 990  # 60k uniform draws of 1,000 modes cover ~all
    x = ds.convert(ds.test.x[:4])
    assert x.dtype == torch.float32 and float(x.max()) <= 1.0 and float(x.min()) >= 0.0

    # Each channel is an MNIST test image, and the label's digits are those images' labels:
    # found by exact pixel match, independently of how the loader drew them.
    pool = mnist.test.x[:, 0].reshape(len(mnist.test), -1)  # (10000, 784)
    for i in range(12):
        digits = [int(ds.test.y[i]) // 100, int(ds.test.y[i]) // 10 % 10, int(ds.test.y[i]) % 10]
        for c in range(3):
            hits = (pool == ds.test.x[i, c].reshape(1, -1)).all(dim=1).nonzero().flatten()
            assert len(hits) >= 1
            assert int(mnist.test.y[hits[0]]) == digits[c]
    # The draws are the seeded indices.
    idx = stacked.stack_indices(10000, 10000, 0, "test")
    assert torch.equal(ds.test.x[:5, 1], mnist.test.x[torch.from_numpy(idx[:5, 1]), 0])

    again = deepgen.load_dataset("stacked-mnist", data_dir=str(real_data_dir))
    other = deepgen.load_dataset("stacked-mnist", data_dir=str(real_data_dir), seed=1)
    assert torch.equal(again.test.y, ds.test.y)
    assert not torch.equal(other.test.y, ds.test.y)


def test_stacked_mnist_missing_files(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DEEPGEN_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(UserError, match="train-images-idx3-ubyte"):
        deepgen.load_dataset("stacked-mnist", data_dir=str(tmp_path))


# -- the `modes` metric through the evaluator --------------------------------------------------


class MixtureSampler(GenerativeModel):
    """Draws from a Gaussian mixture at ``centres`` with ``std`` (a perfect model when they
    are the data's), using the generator it is given."""

    def __init__(self, centres: np.ndarray, std: float, which: list[int] | None = None) -> None:
        super().__init__(ModelConfig(), DataSpec((2,), "real"))
        self.register_buffer("centres", torch.tensor(centres, dtype=torch.float32))
        self.std = std
        self.which = torch.tensor(which if which is not None else list(range(len(centres))))

    def sample(self, n, *, generator=None, cond=None, mean=False):  # type: ignore[override]
        k = self.which[torch.randint(len(self.which), (n,), generator=generator)]
        return self.centres[k] + self.std * torch.randn(n, 2, generator=generator)


@pytest.mark.parametrize("name", ["ring8", "grid25"])
def test_modes_metric_perfect_model(name: str) -> None:
    ds = deepgen.load_dataset(name, num_samples=100)
    centres, std = np.array(ds.meta["modes"]), ds.meta["mode_std"]
    model = MixtureSampler(centres, std)
    r = evaluate(model, ds, ["modes"], batch_size=512)
    assert r["modes"] == r["modes_total"] == len(centres)
    assert r["modes_samples"] == 2500
    assert r["hq_percent"] == pytest.approx(100 * expected_hq_fraction(), abs=1.0)  # 2,500 draws: s.e. 0.2%
    assert 0 <= r["reverse_kl"] < 0.03
    assert evaluate(model, ds, "modes", batch_size=512) == r  # seeded: the same draws every call


def test_modes_metric_collapsed_model_and_limit() -> None:
    ds = deepgen.load_dataset("ring8", num_samples=100)
    model = MixtureSampler(np.array(ds.meta["modes"]), ds.meta["mode_std"], which=[5])
    r = evaluate(model, ds, ["modes"], limit=300)
    assert r["modes"] == 1 and r["modes_samples"] == 300
    assert r["reverse_kl"] == pytest.approx(math.log(8), abs=1e-9)


def test_modes_metric_other_dataset() -> None:
    split = Split(torch.zeros(10, 2))
    ds = Dataset("points", DataSpec((2,), "real", name="points"), split, split)
    with pytest.raises(UserError, match="ring8 and grid25.*stacked-mnist"):
        evaluate(MixtureSampler(ring_modes(), 0.1), ds, ["modes"])


def test_modes_metric_wrong_sample_shape() -> None:
    ds = deepgen.load_dataset("ring8", num_samples=100)

    class ThreeD(MixtureSampler):
        def sample(self, n, *, generator=None, cond=None, mean=False):  # type: ignore[override]
            return torch.zeros(n, 3)

    with pytest.raises(ValueError, match="expected"):
        evaluate(ThreeD(ring_modes(), 0.1), ds, ["modes"])


class IntensityDigits:
    """Stand-in MNIST classifier: a channel of constant grey d / 9 is digit d."""

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1:] == (1, 28, 28)
        d = (x.mean(dim=(1, 2, 3)) * 9).round().long().clamp(0, 9)  # (N,)
        return torch.nn.functional.one_hot(d, 10).float()


class TripleSampler(GenerativeModel):
    """Stacked-MNIST stand-in: channel c of a sample is constant grey d_c / 9, with the
    triple drawn uniformly from ``codes``."""

    def __init__(self, codes: list[int] | None = None) -> None:
        super().__init__(ModelConfig(), DataSpec((3, 28, 28), "continuous", num_levels=256))
        self.codes = torch.tensor(codes if codes is not None else list(range(1000)))

    def sample(self, n, *, generator=None, cond=None, mean=False):  # type: ignore[override]
        c = self.codes[torch.randint(len(self.codes), (n,), generator=generator)]
        d = torch.stack([c // 100, c // 10 % 10, c % 10], dim=1).float() / 9  # (n, 3)
        return d[:, :, None, None].expand(n, 3, 28, 28)


def fake_stacked_dataset() -> Dataset:
    spec = DataSpec((3, 28, 28), "continuous", num_levels=256, num_classes=1000, name="stacked-mnist")
    split = Split(torch.zeros(4, 3, 28, 28, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64))
    return Dataset("stacked-mnist", spec, split, split, scale=1 / 255, meta={"modes_total": 1000, "stacked_mnist": True})


def test_modes_metric_stacked(monkeypatch) -> None:
    seen: list[str] = []

    def classifier(dataset, device):
        seen.append(str(device))
        return IntensityDigits()

    monkeypatch.setattr(modes, "digit_classifier", classifier)
    ds = fake_stacked_dataset()
    r = evaluate(TripleSampler(), ds, ["modes"], batch_size=2000)
    # 26,000 uniform draws over 1,000 modes: P(a mode is missed) = e^-26; E[KL] ~ 999 / 52,000.
    assert r["modes_samples"] == 26000
    assert r["modes"] == 1000 and r["modes_total"] == 1000
    assert 0 < r["kl"] < 0.05
    assert seen == ["cpu"]
    one = evaluate(TripleSampler([427]), ds, ["modes"], batch_size=5000)
    assert one["modes"] == 1 and one["kl"] == pytest.approx(math.log(1000), abs=1e-9)

"""2-D point sets: ``ring8``, ``grid25`` (the VEEGAN / PacGAN mode-collapse protocol),
``moons`` and ``swissroll``.

Every set holds float32 points (N, 2), kind ``real``, no scaling. ``num_samples``
training points and ``num_samples // 4`` test points are drawn from two streams derived
from ``config.seed``, so a dataset is the same on every load with the same seed.
For the mixtures, labels are the index of the mode each point was drawn from, and
``meta["modes"]`` / ``meta["mode_std"]`` give the true centres and spread for the
mode-coverage metrics.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import register_dataset
from .dataset import DataConfig, Dataset, DataSpec, Split

RING_STD = 0.01
GRID_STD = 0.05
MOONS_NOISE = 0.05
SWISSROLL_NOISE = 0.25
SWISSROLL_SCALE = 7.5  # make_swiss_roll spans about [-10, 13]; /7.5 makes it O(1)


def _seeds(seed: int) -> tuple[int, int]:
    """Independent 32-bit seeds for the train and test draws (not seed and seed + 1:
    those would make seed s's test set equal seed s + 1's training stream)."""
    a, b = np.random.SeedSequence([seed, 0x2D]).generate_state(2)
    return int(a), int(b)


def ring_modes() -> np.ndarray:
    """(8, 2) centres evenly on the unit circle, starting at (1, 0)."""
    angles = 2 * math.pi * np.arange(8) / 8
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def grid_modes() -> np.ndarray:
    """(25, 2) centres at {-4, -2, 0, 2, 4}^2, row-major in x then y."""
    values = np.arange(-4.0, 5.0, 2.0)
    return np.array([[a, b] for a in values for b in values])


def _mixture(name: str, modes: np.ndarray, std: float, config: DataConfig) -> Dataset:
    splits = []
    for seed, n in zip(_seeds(config.seed), (config.num_samples, max(1, config.num_samples // 4))):
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, len(modes), size=n)
        points = modes[labels] + std * rng.standard_normal((n, 2))
        splits.append(Split(torch.from_numpy(points.astype(np.float32)), torch.from_numpy(labels.astype(np.int64))))
    spec = DataSpec(shape=(2,), kind="real", num_classes=len(modes), name=name)
    meta = {"modes": modes.tolist(), "mode_std": std, "seed": config.seed}
    return Dataset(name, spec, splits[0], splits[1], meta=meta)


@register_dataset("ring8", "8 Gaussians on the unit circle, std 0.01 (VEEGAN/PacGAN), 2-D points, mode labels")
def load_ring8(config: DataConfig) -> Dataset:
    return _mixture("ring8", ring_modes(), RING_STD if config.toy_noise is None else config.toy_noise, config)


@register_dataset("grid25", "5x5 Gaussians at {-4,-2,0,2,4}^2, std 0.05 (VEEGAN/PacGAN), 2-D points, mode labels")
def load_grid25(config: DataConfig) -> Dataset:
    return _mixture("grid25", grid_modes(), GRID_STD if config.toy_noise is None else config.toy_noise, config)


@register_dataset("moons", "two interleaved half circles (scikit-learn make_moons, noise 0.05), 2-D points, 2 classes")
def load_moons(config: DataConfig) -> Dataset:
    from sklearn.datasets import make_moons  # imported here: sklearn.datasets is slow to import

    noise = MOONS_NOISE if config.toy_noise is None else config.toy_noise
    splits = []
    for seed, n in zip(_seeds(config.seed), (config.num_samples, max(1, config.num_samples // 4))):
        x, y = make_moons(n_samples=n, noise=noise, random_state=seed)
        splits.append(Split(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))))
    spec = DataSpec(shape=(2,), kind="real", num_classes=2, name="moons")
    return Dataset("moons", spec, splits[0], splits[1], meta={"noise": noise, "seed": config.seed})


@register_dataset("swissroll", "2-D swiss roll (scikit-learn make_swiss_roll x/z, noise 0.25, scaled by 1/7.5)")
def load_swissroll(config: DataConfig) -> Dataset:
    from sklearn.datasets import make_swiss_roll

    # The noise is in make_swiss_roll's units, before the division by SWISSROLL_SCALE.
    noise = SWISSROLL_NOISE if config.toy_noise is None else config.toy_noise
    splits = []
    for seed, n in zip(_seeds(config.seed), (config.num_samples, max(1, config.num_samples // 4))):
        x, _ = make_swiss_roll(n_samples=n, noise=noise, random_state=seed)
        points = x[:, [0, 2]] / SWISSROLL_SCALE
        splits.append(Split(torch.from_numpy(points.astype(np.float32))))
    spec = DataSpec(shape=(2,), kind="real", name="swissroll")
    meta = {"noise": noise, "scale": 1 / SWISSROLL_SCALE, "seed": config.seed}
    return Dataset("swissroll", spec, splits[0], splits[1], meta=meta)

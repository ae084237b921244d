"""``digits``: scikit-learn's bundled 8x8 handwritten digits (1797 images, 17 grey levels).

The built-in default dataset: no download, loads in milliseconds. The values 0..16 stay
uint8 and are scaled by 1/16 per batch.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import torch

from . import register_dataset
from .dataset import DataConfig, Dataset, DataSpec, Split
from .files import holdout


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 8, 8) uint8 pixels 0..16 and (1797,) int64 labels, read-only."""
    # Read the CSV that ships inside scikit-learn directly: importing sklearn.datasets
    # (what load_digits needs) costs about a second, reading the file 30 ms.
    spec = importlib.util.find_spec("sklearn")
    csv = None
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
        csv = candidate if candidate.is_file() else None
    if csv is not None:
        table = np.loadtxt(csv, delimiter=",")
        x, y = table[:, :-1], table[:, -1]
    else:  # a future layout: fall back to the public API
        from sklearn.datasets import load_digits

        d = load_digits()
        x, y = d.data, d.target
    xs = x.astype(np.uint8).reshape(-1, 8, 8)
    ys = y.astype(np.int64)
    xs.flags.writeable = False
    ys.flags.writeable = False
    return xs, ys


@register_dataset("digits", "scikit-learn 8x8 digits, 1797 images, 1x8x8 in [0, 1] (17 levels), 10 classes; built in")
def load_digits(config: DataConfig) -> Dataset:
    name = "digits"
    xs, ys = _digits_arrays()
    x = torch.tensor(xs).unsqueeze(1)  # (N, 1, 8, 8) uint8, a private copy
    y = torch.tensor(ys)
    train_idx, test_idx = holdout(len(x), config.test_fraction, config.seed)
    spec = DataSpec(shape=(1, 8, 8), kind="continuous", num_levels=17, num_classes=10, name=name)
    meta = {"source": "sklearn.datasets.load_digits", "test_fraction": config.test_fraction, "seed": config.seed}
    return Dataset(
        name,
        spec,
        Split(x[train_idx], y[train_idx]),
        Split(x[test_idx], y[test_idx]),
        scale=1 / 16,
        meta=meta,
    )

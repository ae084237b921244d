"""Stacked MNIST: ``stacked-mnist``, three MNIST digits as the three channels (1,000 modes).

The mode-collapse benchmark of Metz et al. 2017 ("Unrolled Generative Adversarial
Networks", sec. 3.3), used by VEEGAN (Srivastava et al. 2017, Table 2) and PacGAN (Lin
et al. 2018, Table 2): each example stacks three MNIST digits drawn uniformly at random,
so the data has 10^3 = 1,000 equally likely modes (digit triples). A generator's modes
are counted by labelling each channel of its samples with an MNIST classifier
(:mod:`deepgen.metrics.modes`).

Here: 60,000 training stacks drawn from the MNIST training images and 10,000 test stacks
drawn from the MNIST test images (with replacement, uniformly, from two streams seeded by
``DataConfig.seed``). Pixels stay uint8 (N, 3, 28, 28), scaled by 1/255 per batch;
channel order R, G, B; label = 100 d_R + 10 d_G + d_B (1,000 classes). The files are read
by the ``mnist`` loader (:mod:`deepgen.data.idx`), so ``--data-dir`` / ``$DEEPGEN_DATA``
apply and missing files give the same message. (PacGAN's code builds 25,600 stacks from
MNIST train and test together; the size does not change the 1,000 uniform modes.)
"""

from __future__ import annotations

import numpy as np
import torch

from . import register_dataset
from .dataset import DataConfig, Dataset, DataSpec, Split
from .idx import TRAIN_IMAGES, _load

TRAIN_STACKS = 60000
TEST_STACKS = 10000
NUM_MODES = 1000


def stack_indices(n: int, pool: int, seed: int, split: str) -> np.ndarray:
    """(n, 3) int64 indices into a pool of ``pool`` MNIST images, uniform with replacement.

    ``split`` ("train" / "test") picks an independent stream of ``seed`` (not seed and
    seed + 1, which would make one seed's test draw another seed's training draw).
    """
    tag = {"train": 0, "test": 1}[split]
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x57AC, tag]))
    return rng.integers(0, pool, size=(n, 3), dtype=np.int64)


def stack(images: torch.Tensor, labels: torch.Tensor, index: np.ndarray) -> Split:
    """Stack MNIST ``images`` (P, 1, 28, 28) uint8 with ``labels`` (P,) by ``index`` (n, 3).

    Returns x (n, 3, 28, 28) uint8 (channel c is ``images[index[:, c]]``) and
    y (n,) = 100 labels[index[:, 0]] + 10 labels[index[:, 1]] + labels[index[:, 2]].
    """
    idx = torch.from_numpy(index)  # (n, 3)
    x = images[:, 0][idx]  # (n, 3, 28, 28)
    d = labels[idx]  # (n, 3) digits
    y = d[:, 0] * 100 + d[:, 1] * 10 + d[:, 2]  # (n,)
    return Split(x.contiguous(), y.to(torch.int64))


@register_dataset(
    "stacked-mnist",
    "three random MNIST digits as RGB channels (Metz et al. 2017), 60k/10k, 3x28x28 in [0, 1], 1,000 modes (labels 100R+10G+B)",
)
def load_stacked_mnist(config: DataConfig) -> Dataset:
    name = "stacked-mnist"
    train, test, paths = _load("mnist", config, name)
    splits = []
    for split, base, n in (("train", train, TRAIN_STACKS), ("test", test, TEST_STACKS)):
        assert base.y is not None
        splits.append(stack(base.x, base.y, stack_indices(n, len(base), config.seed, split)))
    spec = DataSpec(shape=(3, 28, 28), kind="continuous", num_levels=256, num_classes=NUM_MODES, name=name)
    meta = {
        "source": str(paths[TRAIN_IMAGES].parent),
        "seed": config.seed,
        "modes_total": NUM_MODES,
        "stacked_mnist": True,  # the 'modes' metric labels each channel with the MNIST classifier
        "channels": ["R", "G", "B"],
    }
    return Dataset(name, spec, splits[0], splits[1], scale=1 / 255, meta=meta)

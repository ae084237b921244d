"""What a model sees (:class:`DataSpec`), what a dataset holds (:class:`Dataset`), and the
options every source accepts (:class:`DataConfig`).

Datasets keep raw values (uint8 pixels, float32 tables) and convert each batch to the
model's space on the device (:meth:`Dataset.convert`), so that a whole image dataset can
live on the GPU in its compact form.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from ..config import Config
from ..errors import UserError

Kind = Literal["binary", "continuous", "discrete", "tokens", "real"]
KINDS: tuple[Kind, ...] = ("binary", "continuous", "discrete", "tokens", "real")


@dataclass(frozen=True)
class DataSpec(Config):
    """The shape and kind of one example, as the model sees it.

    * ``binary``: values in {0, 1} (float tensors).
    * ``continuous``: values in [0, 1]; ``num_levels`` is the number of levels of the
      quantised source (256 for uint8 pixels, 17 for scikit-learn digits), None if none.
    * ``discrete``: integer values in [0, num_levels - 1] (float tensors holding integers).
    * ``tokens``: integer token ids below ``vocab_size`` (int64 tensors).
    * ``real``: unbounded floats (standardised tables, 2-D point sets).
    """

    shape: tuple[int, ...]
    kind: Kind
    num_levels: int | None = None
    vocab_size: int | None = None
    num_classes: int | None = None  # labels 0..num_classes-1 exist when set
    name: str = ""

    def validate(self) -> None:
        self.check(len(self.shape) >= 1 and all(s > 0 for s in self.shape), f"bad shape {self.shape}")
        if self.kind == "discrete":
            self.check(self.num_levels is not None and self.num_levels >= 2, "discrete data needs num_levels >= 2")
        if self.kind == "tokens":
            self.check(self.vocab_size is not None and self.vocab_size >= 2, "token data needs vocab_size >= 2")

    @property
    def dim(self) -> int:
        """Number of scalar dimensions D of one example (for bits per dimension)."""
        return math.prod(self.shape)

    @property
    def bin_width(self) -> float | None:
        """Width of one quantisation bin after :func:`deepgen.data.dequantize`: 1 / num_levels.

        Quantised data (``continuous`` or ``discrete`` with ``num_levels`` L) is dequantized
        to y = (k + u) / L in [0, 1), u ~ U[0, 1), the convention of the flow papers
        (BENCHMARKS.md); a density of y then gives bits/dim = (NLL / D - ln(1 / L)) / ln 2
        = (NLL / D + ln L) / ln 2. None for data without levels.
        """
        if self.kind in ("continuous", "discrete") and self.num_levels:
            return 1.0 / self.num_levels
        return None

    @property
    def is_image(self) -> bool:
        """True for (C, H, W) data with 1 or 3 channels."""
        return len(self.shape) == 3 and self.shape[0] in (1, 3)


@dataclass
class Split:
    """One split of raw examples: ``x`` (N, *raw_shape) and optional labels ``y`` (N,) int64.

    ``x`` is a tensor, or for image folders larger than ``DataConfig.max_resident_mb`` a
    lazy :class:`deepgen.data.images.ImageFiles` whose indexing decodes those images (a
    uint8 tensor) and whose ``select`` makes a lazy subset.
    """

    x: Any  # torch.Tensor | ImageFiles
    y: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.y is not None and len(self.y) != len(self.x):
            raise ValueError(f"{len(self.x)} examples but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, n: int) -> Split:
        """The first ``n`` examples (still lazy when ``x`` is)."""
        return self.slice(0, n)

    def slice(self, start: int, stop: int | None) -> Split:
        """Examples ``start:stop`` (still lazy when ``x`` is)."""
        part = slice(start, stop)
        x = self.x[part] if isinstance(self.x, torch.Tensor) else self.x.select(part)
        return Split(x, None if self.y is None else self.y[part])

    def take(self, index: torch.Tensor) -> Split:
        """The examples at ``index`` (an int64 tensor of positions), in that order (still lazy when ``x`` is)."""
        x = self.x[index] if isinstance(self.x, torch.Tensor) else self.x.select(index)
        return Split(x, None if self.y is None else self.y[index])

    @property
    def resident(self) -> bool:
        """True when ``x`` is a tensor in memory (False: decoded from files batch by batch)."""
        return isinstance(self.x, torch.Tensor)


@dataclass
class Batch:
    """A batch in model space: ``x`` (B, *spec.shape) and labels ``y`` (B,) or None."""

    x: torch.Tensor
    y: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class Dataset:
    """A named dataset: its spec, raw splits, and how raw values become model inputs.

    ``scale`` multiplies the raw values (1/255 for uint8 pixels); ``binarize`` draws
    Bernoulli pixels from the scaled values on every call (dynamic binarization, as in
    the IWAE paper). ``state`` holds arrays a run must keep to undo the preprocessing
    (a CSV table's mean and standard deviation); ``meta`` holds JSON-able facts
    (column names, the true modes of a 2-D toy, the source path).

    ``config`` is how the dataset was loaded: the full :class:`DataConfig`
    :func:`deepgen.data.load_dataset` used, with user paths (``name``, ``data_dir``) made
    absolute, so that ``load_dataset(ds.config)`` gives the same data (splits, spec,
    labels, ``max_train`` subset) from any working directory. None for a dataset built by
    hand. Data given in memory has ``config.name == MEMORY`` (``"<memory>"``): there is no
    file to reload, and :meth:`memory_arrays` gives what must be stored instead.
    """

    name: str
    spec: DataSpec
    train: Split
    test: Split
    scale: float | None = None
    binarize: bool = False
    state: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    config: DataConfig | None = None
    # The validation split (DataConfig.validation): the last training examples, held out.
    val: Split | None = None
    # The raw arrays of data given in memory (see memory_arrays); None for every other source.
    _arrays: dict[str, np.ndarray] | None = field(default=None, repr=False, compare=False)

    def memory_arrays(self) -> dict[str, np.ndarray] | None:
        """What a run folder must store to rebuild data given in memory; None for data with a
        source to reload from (a file, a folder, a registered name: ``config`` suffices).

        ``{"x": x}`` or ``{"x": x, "y": y}``: the raw data and labels as given to
        ``load_dataset`` (NumPy; a tensor's values on the CPU, bfloat16 as float32), before
        the hold-out and before ``max_train``. ``x`` is numeric; ``y`` is numeric or, for
        text labels, a unicode (``"U"``) array, so both store without pickle (``np.savez``
        / ``np.load(allow_pickle=False)``; ``x`` and numeric ``y`` also as safetensors).
        The split is not stored: it follows from ``len(x)``, ``config.test_fraction`` and
        ``config.seed``. The arrays are the caller's, not copies: store them before
        changing them. ``load_dataset_from_arrays(ds.memory_arrays(), ds.config)`` rebuilds
        this dataset exactly (same splits, spec, labels, state).
        """
        return None if self._arrays is None else dict(self._arrays)

    def convert(self, raw: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Raw values (B, *raw_shape) -> model space (B, *spec.shape) on ``raw``'s device."""
        if self.spec.kind == "tokens":
            return raw.long()
        x = raw.float()
        if self.scale is not None:
            x = x * self.scale
        if self.binarize:
            x = torch.bernoulli(x, generator=generator)
        return x

    def split(self, name: str) -> Split:
        if name == "val":
            if self.val is None:
                raise UserError(
                    f"{self.name!r} has no validation split: set the data setting validation=N to hold out the last N training examples."
                )
            return self.val
        if name not in ("train", "test"):
            raise UserError(f"unknown split {name!r}. Accepted: train, test{', val' if self.val is not None else ''}.")
        return self.train if name == "train" else self.test

    @property
    def validation_split(self) -> str:
        """The split that validation (the trainer's ``val_loss``, early stopping, the best
        checkpoint) reads: ``"val"`` when the data holds one out, else ``"test"``."""
        return "val" if self.val is not None else "test"

    def to_original(self, x: torch.Tensor) -> torch.Tensor:
        """Undo standardisation for tables (``state`` has ``mean`` and ``std``); else identity."""
        if "mean" in self.state and "std" in self.state:
            mean = torch.as_tensor(self.state["mean"], dtype=x.dtype, device=x.device)
            std = torch.as_tensor(self.state["std"], dtype=x.dtype, device=x.device)
            return x * std + mean
        return x


@dataclass(frozen=True)
class DataConfig(Config):
    """Which dataset to load and the options its source reads (others ignore them)."""

    name: str = "digits"  # a registered dataset name, or a path to a folder / .npy / .npz / .csv
    data_dir: str | None = None  # where to look first; then $DEEPGEN_DATA, then the user cache
    binarization: Literal["dynamic", "static"] = "dynamic"  # mnist-binarized
    seed: int = 0  # static binarization, toy sampling, user-data test split
    image_size: tuple[int, ...] = ()  # image folders: (H, W) to resize to; () = first image's size
    image_channels: int | None = None  # image folders: 1 or 3; None = 1 if every image is grayscale
    test_fraction: float = 0.1  # sources without a test split hold this fraction out
    num_samples: int = 20000  # 2-D toys: training points (the test set is a quarter of it)
    toy_noise: float | None = None  # 2-D toys: std / noise level; None = the dataset's published default
    label_column: str | None = None  # CSV tables: a column to use as labels, not as data
    max_train: int = 0  # 0 = all; otherwise keep the first N training examples (quick runs)
    validation: int = 0  # hold out the last N training examples (after normal_class, before max_train) for validation; 0 = validate on the test split
    normal_class: int | None = None  # one-class setups (anomaly detection): train and validate on this class only; the test split keeps every class
    max_resident_mb: int = 4096  # image folders: decoded pixels above this many MiB stream from disk (0 = always)
    workers: int = -1  # streamed folders: DataLoader worker processes; -1 = min(8, CPU cores - 1)
    download: bool = False  # allow fetching a missing dataset that has a public source
    block_size: int = 256  # text: characters per example (the Transformer's context)

    def validate(self) -> None:
        self.check(0.0 < self.test_fraction < 1.0, f"test_fraction must be in (0, 1), got {self.test_fraction}")
        self.check(self.num_samples >= 10, f"num_samples must be >= 10, got {self.num_samples}")
        self.check(self.max_train >= 0, f"max_train must be >= 0, got {self.max_train}")
        self.check(self.validation >= 0, f"validation must be >= 0 (0 = none), got {self.validation}")
        self.check(self.block_size >= 2, f"block_size must be >= 2, got {self.block_size}")
        self.check(self.max_resident_mb >= 0, f"max_resident_mb must be >= 0, got {self.max_resident_mb}")
        self.check(self.workers >= -1, f"workers must be >= 0, or -1 for one per CPU core but one (at most 8), got {self.workers}")
        self.check(self.image_channels in (None, 1, 3), f"image_channels must be 1, 3 or none, got {self.image_channels}")
        self.check(
            self.image_size == () or (len(self.image_size) == 2 and min(self.image_size) > 0),
            f"image_size must be (H, W) with positive sizes or empty, got {self.image_size}",
        )
        self.check(self.toy_noise is None or self.toy_noise >= 0, f"toy_noise must be >= 0, got {self.toy_noise}")


# DataConfig.name of data given in memory (load_dataset(array)): nothing to reload from a path.
MEMORY = "<memory>"

# Data settings a resumed run may change: they change how fast the data arrives, not
# which batches the run sees.
RESUMABLE_DATA = ("workers",)


def replace_splits(ds: Dataset, **changes: Any) -> Dataset:
    """A shallow copy of ``ds`` with some fields replaced."""
    return dataclasses.replace(ds, **changes)

"""The data layer: named datasets, user files, and resident batching.

A source registers a loader under a name with :func:`register_dataset`; the loader takes
a :class:`DataConfig` and returns a :class:`Dataset`. A name that is not registered but is
a path is read as user data (a folder of images, a ``.npy`` / ``.npz`` array, a ``.csv``
table) by the source that claims its suffix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError, did_you_mean
from ..registry import Registry
from .dataset import KINDS, RESUMABLE_DATA, Batch, DataConfig, Dataset, DataSpec, Kind, Split
from .dequantize import dequantize, levels_of, quantize
from .resident import ResidentLoader, ShuffledBatches, iterate
from .streaming import StreamingLoader

Loader = Callable[[DataConfig], Dataset]


@dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset: its loader and one line for ``deepgen datasets``."""

    name: str
    loader: Loader
    description: str


DATASETS: Registry[DatasetEntry] = Registry("dataset")
# User-file readers keyed by suffix ("" for folders): each takes (path, config).
PATH_READERS: dict[str, Callable[[Path, DataConfig], Dataset]] = {}


def register_dataset(name: str, description: str) -> Callable[[Loader], Loader]:
    """Decorator: make ``loader(config) -> Dataset`` available as dataset ``name``."""

    def add(loader: Loader) -> Loader:
        DATASETS.register(name)(DatasetEntry(name, loader, description))
        return loader

    return add


def register_path_reader(*suffixes: str) -> Callable:
    """Decorator: read user files with these suffixes (``""`` means a folder)."""

    def add(reader: Callable[[Path, DataConfig], Dataset]) -> Callable[[Path, DataConfig], Dataset]:
        for suffix in suffixes:
            PATH_READERS[suffix] = reader
        return reader

    return add


def load_dataset(name: str | DataConfig = "digits", **options: Any) -> Dataset:
    """Load a dataset by registered name or user path.

    >>> ds = load_dataset("digits")
    >>> ds.spec.shape
    (1, 8, 8)

    ``options`` are :class:`DataConfig` fields (``data_dir``, ``binarization``, ...).
    """
    config = name if isinstance(name, DataConfig) else DataConfig(name=name, **options)
    if isinstance(name, DataConfig) and options:
        config = config.replace(**options)
    _load_sources()
    _check_image_options(config)
    if config.name in DATASETS:
        ds = DATASETS.get(config.name).loader(config)
    else:
        path = Path(config.name).expanduser()
        if not path.exists():
            raise UserError(
                f"unknown dataset {config.name!r} (and no such file or folder). "
                f"{did_you_mean(config.name, DATASETS.names())} "
                f"User data: a folder of PNG/JPEG images, a .npy/.npz array or a .csv table."
            )
        suffix = "" if path.is_dir() else path.suffix.lower()
        if suffix not in PATH_READERS:
            accepted = ", ".join(s or "a folder" for s in sorted(PATH_READERS))
            raise UserError(f"cannot read {str(path)!r}: accepted user data is {accepted}.")
        ds = PATH_READERS[suffix](path, config)
    if config.max_train:
        ds.train = ds.train.subset(config.max_train)
    return ds


def _check_image_options(config: DataConfig) -> None:
    """Refuse image-folder options (resizing, streaming) where nothing reads them: they would be
    recorded in the run, not applied."""
    is_folder = config.name not in DATASETS and Path(config.name).expanduser().is_dir()
    defaults = DataConfig()
    set_here = [
        k for k in ("image_size", "image_channels", "max_resident_mb", "workers") if getattr(config, k) != getattr(defaults, k)
    ]
    if set_here and not is_folder:
        raise UserError(
            f"{' and '.join(set_here)} {'applies' if len(set_here) == 1 else 'apply'} to a folder of images only; "
            f"{config.name!r} is not one. Leave {'it' if len(set_here) == 1 else 'them'} unset for this dataset."
        )


def make_loader(
    dataset: Dataset,
    batch_size: int,
    device: torch.device | str = "cpu",
    seed: int = 0,
    shard: tuple[int, int] = (0, 1),
    workers: int = -1,
) -> ShuffledBatches:
    """The training loader for ``dataset``'s train split: :class:`ResidentLoader` when the
    split is in memory (it moves to the device once), :class:`StreamingLoader` (``workers``
    decoding processes) when it is read from files batch by batch."""
    if dataset.train.resident:
        return ResidentLoader(dataset, batch_size, device, seed=seed, shard=shard)
    return StreamingLoader(dataset, batch_size, device, seed=seed, shard=shard, workers=workers)


def dataset_descriptions() -> list[tuple[str, str]]:
    """(name, one-line description) for every registered dataset."""
    _load_sources()
    return [(n, DATASETS.get(n).description) for n in DATASETS.names()]


def _load_sources() -> None:
    # Importing a source module registers its datasets.
    from . import arrays, digits, idx, images, mat, stacked, tables, toy2d  # noqa: F401


__all__ = [
    "KINDS",
    "Kind",
    "dequantize",
    "levels_of",
    "quantize",
    "Batch",
    "RESUMABLE_DATA",
    "DATASETS",
    "DataConfig",
    "DataSpec",
    "Dataset",
    "ResidentLoader",
    "ShuffledBatches",
    "StreamingLoader",
    "Split",
    "dataset_descriptions",
    "iterate",
    "load_dataset",
    "make_loader",
    "register_dataset",
    "register_path_reader",
]

"""The data layer: named datasets, user files, and resident batching.

A source registers a loader under a name with :func:`register_dataset`; the loader takes
a :class:`DataConfig` and returns a :class:`Dataset`. A name that is not registered but is
a path is read as user data (a folder of images, a ``.npy`` / ``.npz`` array, a ``.csv``
table) by the source that claims its suffix. Data in memory (an array or tensor, ``(x, y)``,
``{"x": x, "y": y}``) is read as an ``.npy`` / ``.npz`` file would be.

Every dataset :func:`load_dataset` returns records how it was loaded (``Dataset.config``,
paths absolute), so that a run can reload it from any working directory; data from memory
is rebuilt from :meth:`Dataset.memory_arrays` with :func:`load_dataset_from_arrays`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError, did_you_mean
from ..registry import Registry
from .dataset import (
    KINDS,
    MEMORY,
    RESUMABLE_DATA,
    Batch,
    DataConfig,
    Dataset,
    DataSpec,
    Kind,
    Split,
)
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


def load_dataset(source: Any = "digits", **options: Any) -> Dataset:
    """Load a dataset by registered name, user path, :class:`DataConfig`, or from memory.

    >>> ds = load_dataset("digits")
    >>> ds.spec.shape
    (1, 8, 8)

    ``source`` is a registered name, a path (``str`` or ``os.PathLike``) to a folder of
    images / ``.npy`` / ``.npz`` / ``.csv``, a :class:`DataConfig`, or data in memory: a
    NumPy array or torch tensor ``x`` (N, ...), a pair ``(x, y)`` or a dict
    ``{"x": x, "y": y}`` (labels optional), read exactly as an ``.npy`` / ``.npz`` holding
    them would be (:mod:`deepgen.data.arrays`). ``options`` are :class:`DataConfig` fields
    (``data_dir``, ``test_fraction``, ``seed``, ``max_train``, ...); with a DataConfig they
    replace its fields.

    The dataset's ``config`` records how it was loaded (relative paths made absolute), so
    ``load_dataset(ds.config)`` reloads the same data from any working directory. Data from
    memory has ``config.name == "<memory>"``; rebuild it with
    ``load_dataset_from_arrays(ds.memory_arrays(), ds.config)``.
    """
    if isinstance(source, (DataConfig, str, os.PathLike)):
        if isinstance(source, DataConfig):
            config = source.replace(**options) if options else source
        else:
            config = DataConfig(name=os.fspath(source), **options)
        if config.name == MEMORY:
            raise UserError(
                f"dataset {MEMORY!r} was given in memory and has no file to reload; rebuild it with "
                f"load_dataset_from_arrays(arrays, config), the arrays from Dataset.memory_arrays()."
            )
        return _load(config)
    from .arrays import memory_source

    arrays = memory_source(source)
    if "name" in options:
        raise UserError(f"data given in memory is named {MEMORY!r}; leave out name={options['name']!r}.")
    return _load(DataConfig(name=MEMORY, **options), arrays)


def load_dataset_from_arrays(arrays: Mapping[str, Any], config: DataConfig) -> Dataset:
    """Rebuild a dataset that was given in memory, from what a run folder stored.

    ``arrays`` is :meth:`Dataset.memory_arrays`'s dict (``"x"``, optional ``"y"``; NumPy
    arrays or tensors) and ``config`` the dataset's ``config`` (its ``name`` is
    ``"<memory>"``). The result equals the original: the same splits (the hold-out follows
    from ``len(x)``, ``config.test_fraction`` and ``config.seed``), spec, labels and label
    values, state, ``max_train`` subset, ``config`` and ``memory_arrays()``.
    """
    if not isinstance(config, DataConfig):
        raise UserError(f"load_dataset_from_arrays needs the dataset's DataConfig, got {type(config).__name__}.")
    if config.name != MEMORY:
        raise UserError(
            f"load_dataset_from_arrays rebuilds data given in memory (config name {MEMORY!r}); "
            f"{config.name!r} reloads with load_dataset(config)."
        )
    from .arrays import memory_source

    if not isinstance(arrays, Mapping) or set(arrays) - {"x", "y"}:
        keys = ", ".join(map(str, arrays)) if isinstance(arrays, Mapping) else type(arrays).__name__
        raise UserError(f"load_dataset_from_arrays takes {{'x': x}} or {{'x': x, 'y': y}} (Dataset.memory_arrays()), got {keys}.")
    return _load(config, memory_source(dict(arrays)))


def _absolute(path: str) -> str:
    """``path`` with ``~`` expanded, made absolute against the working directory (symbolic
    links kept as written)."""
    return os.path.abspath(os.path.expanduser(path))


def _load(config: DataConfig, arrays: dict[str, Any] | None = None) -> Dataset:
    """The one loading path: every source, then the validation hold-out and ``max_train``,
    then the record of how."""
    _load_sources()
    _check_image_options(config)
    if config.data_dir:
        config = config.replace(data_dir=_absolute(config.data_dir))
    if arrays is not None:
        from .arrays import read_memory

        ds = read_memory(arrays, config)
        ds._arrays = arrays
    elif config.name in DATASETS:
        ds = DATASETS.get(config.name).loader(config)
    else:
        path = Path(config.name).expanduser()
        if not path.exists():
            raise UserError(
                f"unknown dataset {config.name!r} (and no such file or folder). "
                f"{did_you_mean(config.name, DATASETS.names())} "
                f"User data: a folder of PNG/JPEG images, a .npy/.npz array, a .csv table or a UTF-8 .txt file."
            )
        suffix = "" if path.is_dir() else path.suffix.lower()
        if suffix not in PATH_READERS:
            accepted = ", ".join(s or "a folder" for s in sorted(PATH_READERS))
            raise UserError(f"cannot read {str(path)!r}: accepted user data is {accepted}.")
        # Read from the absolute path, so the dataset's name and spec are those a reload of
        # its config (from any folder) gives.
        config = config.replace(name=_absolute(config.name))
        ds = PATH_READERS[suffix](Path(config.name), config)
    if config.block_size != DataConfig().block_size and ds.spec.kind != "tokens":
        raise UserError(
            f"block_size applies to text (token) data only; {config.name!r} holds {ds.spec.kind} data. Leave it unset for this dataset."
        )
    if config.normal_class is not None:
        # Filter first, then split: the validation examples are the last `validation` normal
        # ones, so that split has exactly that size and only normal examples.
        _keep_normal_class(ds, config.normal_class)
    if config.validation:
        n = len(ds.train)
        # Examples that share values with their neighbours (text windows at every offset)
        # leave a gap of that many between the two splits, so no value is in both.
        gap = int(ds.meta.get("train_overlap", 0))
        if config.validation + gap >= n:
            raise UserError(
                f"validation={config.validation} would hold out every training example: {config.name!r} has {n}"
                + (f" (and {gap} more are left out between the splits)" if gap else "") + ". Use fewer."
            )
        # The last examples, taken before max_train: the yardstick stays the same when
        # max_train changes. (Sources without a test split shuffled before splitting.)
        ds.val = ds.train.slice(n - config.validation, None)
        ds.train = ds.train.slice(0, n - config.validation - gap)
    if config.max_train:
        ds.train = ds.train.subset(config.max_train)
    ds.config = config
    return ds


def _keep_normal_class(ds: Dataset, c: int) -> None:
    """One-class data (Ruff et al. 2018's protocol): the training split (and so the validation
    split, held out of it afterwards) keeps the examples of class ``c`` only; the test split
    keeps every class, its labels telling normal (``c``) from anomalous for the ``auroc`` metric."""
    k = ds.spec.num_classes
    if not k or ds.train.y is None:
        raise UserError(f"normal_class={c} needs labelled data; {ds.name!r} has no class labels. Leave normal_class unset.")
    if not 0 <= c < k:
        raise UserError(f"normal_class must be one of the classes 0..{k - 1} of {ds.name!r}, got {c}.")
    ds.train = ds.train.take(torch.nonzero(ds.train.y == c).flatten())
    if ds.val is not None and ds.val.y is not None:
        ds.val = ds.val.take(torch.nonzero(ds.val.y == c).flatten())
    if len(ds.train) == 0:
        raise UserError(f"normal_class={c}: {ds.name!r} has no training examples of class {c}.")


def _check_image_options(config: DataConfig) -> None:
    """Refuse image-folder options (resizing, streaming) where nothing reads them: they would be
    recorded in the run, not applied."""
    is_folder = config.name not in DATASETS and config.name != MEMORY and Path(config.name).expanduser().is_dir()
    defaults = DataConfig()
    set_here = [
        k for k in ("image_size", "image_channels", "max_resident_mb", "workers") if getattr(config, k) != getattr(defaults, k)
    ]
    if set_here and not is_folder:
        raise UserError(
            f"{' and '.join(set_here)} {'applies' if len(set_here) == 1 else 'apply'} to a folder of images only; "
            f"{'data given in memory' if config.name == MEMORY else repr(config.name)} is not one. Leave {'it' if len(set_here) == 1 else 'them'} unset for this dataset."
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
    from . import arrays, digits, idx, images, mat, stacked, tables, text, toy2d  # noqa: F401


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
    "load_dataset_from_arrays",
    "MEMORY",
    "make_loader",
    "register_dataset",
    "register_path_reader",
]

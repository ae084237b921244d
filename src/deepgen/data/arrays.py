"""User arrays: ``.npy`` and ``.npz`` files, and arrays or tensors in memory.

Files and memory share one interpretation (:func:`dataset_from_arrays`).

What the array holds decides the kind:

* only 0 and 1 -> ``binary`` (stored uint8);
* integer images (N, H, W), (N, H, W, C) or (N, C, H, W) with C in {1, 3} and values
  0..255 -> ``continuous`` uint8 pixels, ``scale = 1/255``;
* float images in [0, 1] -> ``continuous`` float32;
* anything else of shape (N, D) (or (N,)) -> ``real``, standardised with the training
  split's mean and std (kept in ``Dataset.state``).

An ``.npz`` holds the data under ``x``, ``X``, ``data`` or ``arr_0`` and optional labels
under ``y``, ``Y`` or ``labels``; in memory, ``load_dataset(x)``, ``load_dataset((x, y))``
or ``load_dataset({"x": x, "y": y})`` (NumPy arrays or torch tensors) read the same way.
There is no official split: a seeded ``test_fraction`` is held out.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from . import register_path_reader
from .dataset import DataConfig, Dataset, DataSpec, Split
from .files import holdout
from .tables import encode_labels, standardise, statistics_rows

DATA_KEYS = ("x", "X", "data", "arr_0")
LABEL_KEYS = ("y", "Y", "labels")
ACCEPTED = (
    "accepted: 0/1 arrays, uint8 images (N,H,W) / (N,H,W,C) / (N,C,H,W) with C 1 or 3, "
    "float images in [0, 1], or numeric tables (N, D)"
)


def _load(path: Path) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(data, labels or None, key the data came from)."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as e:
        with path.open("rb") as f:
            magic = f.read(6)
        if not magic.startswith((b"\x93NUMPY", b"PK")):  # neither .npy nor .npz (a zip)
            raise UserError(f"cannot read {path}: it is not a NumPy .npy/.npz file (no NumPy header); {ACCEPTED}.") from None
        if "allow_pickle" in str(e) or "pickle" in str(e).lower():
            raise UserError(
                f"{path} holds Python objects (an object or string-object array), which are not read "
                f"for safety; save a numeric array instead ({ACCEPTED})."
            ) from None
        raise UserError(f"cannot read {path}: {e}.") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"cannot read {path}: the file is truncated or not a NumPy file ({e}).") from None
    if isinstance(loaded, np.ndarray):
        return loaded, None, ""
    with loaded as npz:
        keys = list(npz.keys())
        key = next((k for k in DATA_KEYS if k in keys), None)
        if key is None:
            raise UserError(
                f"{path} has arrays {', '.join(keys) or '(none)'}, but the data must be under one of "
                f"{', '.join(DATA_KEYS)} (labels optionally under {', '.join(LABEL_KEYS)})."
            )
        try:
            x = npz[key]
            label_key = next((k for k in LABEL_KEYS if k in keys), None)
            y = None if label_key is None else npz[label_key]
        except ValueError:
            raise UserError(
                f"{path} holds Python objects (an object array), which are not read for safety; "
                f"save numeric arrays instead ({ACCEPTED})."
            ) from None
        except (OSError, EOFError, zipfile.BadZipFile) as e:
            raise UserError(f"cannot read {path}: an array in it is truncated or corrupt ({e}).") from None
    return x, y, key


def _check_values(where: str, x: np.ndarray) -> np.ndarray:
    """Reject non-numeric data and NaN/Inf; bools become uint8. ``where`` names the source."""
    if x.dtype.kind == "b":
        return x.astype(np.uint8)
    if x.dtype.kind not in "iuf":
        raise UserError(f"{where} holds {x.dtype} values (dtype kind {x.dtype.kind!r}); only numbers are accepted ({ACCEPTED}).")
    if x.ndim == 0 or len(x) == 0:
        raise UserError(f"{where} holds no examples (shape {x.shape}); the first axis must index examples.")
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x)
        count = int(bad.sum())
        if count:
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise UserError(
                f"{where} has {count} NaN or infinite values; the first is at index {first}. "
                f"Remove or fill them before training."
            )
    return x


def _to_nchw(where: str, x: np.ndarray) -> np.ndarray | None:
    """Image layout (N, C, H, W) for 3-D / 4-D arrays; None when not an image array."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        if x.shape[1] in (1, 3):
            return x
        if x.shape[3] in (1, 3):
            return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        raise UserError(f"{where} has shape {x.shape}: 4-D arrays must be (N, H, W, C) or (N, C, H, W) with C 1 or 3.")
    if x.ndim > 4:
        raise UserError(f"{where} has {x.ndim} dimensions {x.shape}; {ACCEPTED}.")
    return None


def dataset_from_arrays(x: np.ndarray, y: np.ndarray | None, config: DataConfig, name: str, where: str) -> Dataset:
    """The one interpretation of a user array, shared by ``.npy`` / ``.npz`` files and
    arrays in memory: ``x`` (N, ...) as binary, image or real data (see the module
    docstring), optional labels ``y`` (N,) encoded to 0..k-1, a seeded
    ``config.test_fraction`` hold-out (``config.seed``). ``name`` names the dataset and
    its spec; ``where`` names the source in error messages."""
    x = _check_values(where, x)
    if x.ndim == 1:
        x = x[:, None]  # (N,) -> (N, 1): one scalar feature
    meta: dict[str, Any] = {"source": name, "test_fraction": config.test_fraction, "seed": config.seed}

    labels = None
    if y is not None:
        if y.ndim != 1 or len(y) != len(x):
            raise UserError(f"{where}: labels have shape {y.shape}, expected ({len(x)},), one per example.")
        codes, values = encode_labels(y, f"{where} labels")
        labels = torch.from_numpy(codes)
        meta["label_values"] = values
    num_classes = len(meta["label_values"]) if labels is not None else None

    images = _to_nchw(where, x)
    is_binary = bool(((x == 0) | (x == 1)).all())
    state: dict[str, np.ndarray] = {}
    scale = None
    if is_binary:
        data = (images if images is not None else x).astype(np.uint8)
        kind, levels = "binary", None
    elif images is not None and x.dtype.kind in "iu":
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise UserError(f"{where}: integer images must hold values 0..255, found {lo}..{hi}.")
        data, kind, levels, scale = images.astype(np.uint8), "continuous", 256, 1 / 255
    elif images is not None:
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 1:
            raise UserError(
                f"{where}: float images must hold values in [0, 1], found [{lo:g}, {hi:g}]; "
                f"save uint8 pixels 0..255 or divide by the maximum."
            )
        data, kind, levels = images.astype(np.float32), "continuous", None
    else:
        data, kind, levels = x, "real", None

    train_idx, test_idx = holdout(len(data), config.test_fraction, config.seed)
    tr, te = data[train_idx.numpy()], data[test_idx.numpy()]
    if kind == "real":
        rows = statistics_rows(len(tr), config, None if labels is None else labels[train_idx])  # not the validation rows
        tr, te, mean, std = standardise(tr, te, rows)
        state = {"mean": mean, "std": std}
    spec = DataSpec(shape=tuple(data.shape[1:]), kind=kind, num_levels=levels, num_classes=num_classes, name=name)
    return Dataset(
        name,
        spec,
        Split(torch.from_numpy(np.ascontiguousarray(tr)), None if labels is None else labels[train_idx]),
        Split(torch.from_numpy(np.ascontiguousarray(te)), None if labels is None else labels[test_idx]),
        scale=scale,
        state=state,
        meta=meta,
    )


@register_path_reader(".npy", ".npz")
def read_array(path: Path, config: DataConfig) -> Dataset:
    """A NumPy array as binary, image or real data (see the module docstring)."""
    x, y, key = _load(path)
    ds = dataset_from_arrays(x, y, config, name=str(path), where=str(path))
    if key:
        ds.meta["key"] = key
    return ds


def _numpy(value: Any, what: str) -> np.ndarray:
    """A NumPy array from an array or tensor given in memory (a tensor is detached and
    copied to the CPU; bfloat16, which NumPy lacks, becomes float32)."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        if t.dtype == torch.bfloat16:
            t = t.float()
        if t.is_complex():
            raise UserError(f"{what} holds {t.dtype} values; only real numbers are accepted ({ACCEPTED}).")
        return t.numpy()
    if isinstance(value, np.ndarray):
        return value
    raise UserError(
        f"{what} must be a NumPy array or a torch tensor, got {type(value).__name__}. "
        f"In memory, load_dataset takes x, (x, y) or {{'x': x, 'y': y}}."
    )


def _labels(value: Any) -> np.ndarray:
    """Labels given in memory as an array: numbers stay as they are; text and Python
    objects become a unicode array (what ``encode_labels`` reads as text anyway), so that
    they can be stored without pickle."""
    y = _numpy(value, "the labels y") if isinstance(value, (np.ndarray, torch.Tensor)) else np.asarray(value)
    if y.dtype.kind in "OSU":
        y = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in y.reshape(-1)]).reshape(y.shape)
    return y


def memory_source(source: Any) -> dict[str, np.ndarray]:
    """``{"x": x}`` or ``{"x": x, "y": y}`` from what :func:`deepgen.data.load_dataset`
    accepts in memory: an array or tensor ``x``, a pair ``(x, y)``, or a mapping with the
    data under one of ``x``, ``X``, ``data``, ``arr_0`` and labels optionally under ``y``,
    ``Y``, ``labels`` (the keys of an ``.npz``). ``y`` None means no labels."""
    if isinstance(source, (np.ndarray, torch.Tensor)):
        x, y = source, None
    elif isinstance(source, tuple):
        if len(source) not in (1, 2):
            raise UserError(f"an in-memory dataset is x or (x, y); got a tuple of {len(source)} items.")
        x, y = source[0], source[1] if len(source) == 2 else None
    elif isinstance(source, Mapping):
        keys = [str(k) for k in source]
        key = next((k for k in DATA_KEYS if k in source), None)
        label_key = next((k for k in LABEL_KEYS if k in source), None)
        unknown = [k for k in keys if k not in DATA_KEYS + LABEL_KEYS]
        if key is None or unknown:
            raise UserError(
                f"an in-memory dataset given as a dict has keys {', '.join(keys) or '(none)'}; the data must be under one of "
                f"{', '.join(DATA_KEYS)} and labels optionally under {', '.join(LABEL_KEYS)}, nothing else."
            )
        x, y = source[key], None if label_key is None else source[label_key]
    else:
        raise UserError(
            f"load_dataset takes a dataset name or path, a DataConfig, or data in memory (an array or tensor x, "
            f"(x, y) or {{'x': x, 'y': y}}); got {type(source).__name__}."
        )
    out = {"x": _numpy(x, "the data x")}
    if y is not None:
        out["y"] = _labels(y)
    return out


def read_memory(arrays: dict[str, np.ndarray], config: DataConfig) -> Dataset:
    """Arrays in memory (:func:`memory_source`'s dict) read as an ``.npz`` holding them would be."""
    return dataset_from_arrays(arrays["x"], arrays.get("y"), config, name=config.name, where="the in-memory data")

"""User tables: a ``.csv`` file with a header row and numeric columns.

Every column but ``config.label_column`` is a feature; features are standardised with
the training split's mean and standard deviation (without the rows that the data setting
``validation`` holds out: see :func:`statistics_rows`), which are kept in ``Dataset.state`` so
that samples can be mapped back (:meth:`Dataset.to_original`). The label column may
hold any values; distinct values become labels 0..k-1 (the mapping is in ``meta``).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from . import register_path_reader
from .dataset import DataConfig, Dataset, DataSpec, Split
from .files import holdout


def statistics_rows(n: int, config: DataConfig, labels: np.ndarray | torch.Tensor | None = None) -> np.ndarray:
    """The rows of a reader's training split (``n`` rows, ``labels`` (n,) or None) that
    preprocessing statistics may be fit on: not the rows that
    :func:`deepgen.data.load_dataset` holds out afterwards as the validation split (the
    last ``config.validation`` ones, counted among the ``config.normal_class`` rows when
    that is set, since load_dataset filters before it splits), so that model selection on
    the validation split sees no statistic of it. With ``normal_class`` only that class's
    rows count (the one-class protocol: the model never sees the others). When nothing
    would be left (``load_dataset`` refuses such settings anyway) every candidate row is used."""
    rows = np.arange(n)
    if config.normal_class is not None and labels is not None:
        normal = rows[np.asarray(labels) == config.normal_class]
        rows = normal if len(normal) else rows
    if 0 < config.validation < len(rows):
        rows = rows[: len(rows) - config.validation]
    return rows


def standardise(
    train: np.ndarray, test: np.ndarray, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Standardise (N, D) features with the training split's statistics.

    Returns float32 ``(train_std, test_std, mean (D,), std (D,))``; a constant column gets
    std 1 (it stays at 0 after centring instead of becoming NaN). Statistics come from
    the training split only, so the test split never leaks into the preprocessing;
    ``rows`` (indices into ``train``; None = all) narrows them further: readers pass
    :func:`statistics_rows`, which leaves the future validation rows out.
    """
    tr = np.asarray(train, dtype=np.float64)
    fit = tr if rows is None or not len(rows) else tr[rows]
    mean = fit.mean(axis=0) if len(fit) else np.zeros(tr.shape[1:])
    std = fit.std(axis=0) if len(fit) else np.ones(tr.shape[1:])
    std = np.where(std > 0, std, 1.0)
    out_train = ((tr - mean) / std).astype(np.float32)
    out_test = ((np.asarray(test, dtype=np.float64) - mean) / std).astype(np.float32)
    return out_train, out_test, mean.astype(np.float32), std.astype(np.float32)


def encode_labels(values: Sequence[Any] | np.ndarray, where: str) -> tuple[np.ndarray, list]:
    """Map distinct label values to 0..k-1 (sorted numerically when all are numbers).

    Returns ``(codes (N,) int64, values)`` with ``values[code]`` the original value as a
    JSON-able int, float or string. ``where`` names the source in error messages.
    """
    arr = np.asarray(values)
    if arr.dtype.kind in "iub":
        uniq, codes = np.unique(arr, return_inverse=True)
        return codes.astype(np.int64).reshape(-1), [int(v) for v in uniq]
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise UserError(f"{where}: {int(bad.sum())} labels are NaN or infinite; the first is at index {first}.")
        uniq, codes = np.unique(arr, return_inverse=True)
        return codes.astype(np.int64).reshape(-1), [int(v) if float(v).is_integer() else float(v) for v in uniq]
    # Text labels: numbers written as text sort as numbers ("2" < "10").
    texts = [str(v).strip() for v in arr.reshape(-1)]
    try:
        numbers = [float(t) for t in texts]
    except ValueError:
        numbers = None
    if numbers is not None and all(math.isfinite(v) for v in numbers):
        return encode_labels(np.array(numbers), where)
    uniq_text = sorted(set(texts))
    index = {v: i for i, v in enumerate(uniq_text)}
    return np.array([index[t] for t in texts], dtype=np.int64), uniq_text


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _read_rows(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, cells) for every non-blank row, header included."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            rows = []
            for row in reader:
                if row and any(c.strip() for c in row):
                    rows.append((reader.line_num, row))
            return rows
    except UnicodeDecodeError as e:
        raise UserError(f"cannot read {path}: it is not UTF-8 text ({e.reason} at byte {e.start}).") from None
    except csv.Error as e:
        raise UserError(f"cannot read {path} as CSV: {e}.") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}.") from None


def _parse_numbers(path: Path, rows: list[tuple[int, list[str]]], cols: list[int], names: list[str]) -> np.ndarray:
    """The feature cells as float64 (N, D); the first bad cell is a UserError naming it."""
    cells = [[row[j] for j in cols] for _, row in rows]
    try:
        # Fast path: numpy parses the whole block at once.
        values = np.array(cells, dtype=str).astype(np.float64) if cells else np.zeros((0, len(cols)))
    except ValueError:
        values = None
    if values is not None and np.isfinite(values).all():
        return values
    # Slow path, only to name the first offending cell.
    for (line, _), row_cells in zip(rows, cells):
        for k, cell in enumerate(row_cells):
            text = cell.strip()
            where = f"{path}: line {line}, column {names[k]!r}"
            if text == "":
                raise UserError(f"{where} is empty. Every feature cell must hold a number; fill or drop that row.")
            if not _is_number(text):
                raise UserError(
                    f"{where} holds {cell!r}, which is not a number. Feature columns must be numeric; "
                    f"a text column can be the labels (--set label_column={names[k]})."
                )
            if not math.isfinite(float(text)):
                raise UserError(f"{where} holds {cell!r} (NaN or infinite). Every feature cell must be a finite number.")
    raise AssertionError("unreachable: numpy rejected a block whose cells all parse")  # pragma: no cover


@register_path_reader(".csv")
def read_csv(path: Path, config: DataConfig) -> Dataset:
    """A CSV table as ``real`` data: x (N, D) float32 standardised, labels from ``label_column``."""
    rows = _read_rows(path)
    if not rows:
        raise UserError(f"{path} is empty: a CSV table needs a header row of column names and data rows.")
    header = rows[0][1]
    names = [h.strip() for h in header]
    if all(_is_number(n) for n in names):
        raise UserError(
            f"{path}: the first row ({', '.join(header[:5])}{', ...' if len(header) > 5 else ''}) is numbers, "
            f"but a header row of column names is required."
        )
    if any(n == "" for n in names):
        raise UserError(f"{path}: column {names.index('') + 1} of the header row has no name; every column needs one.")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"{path}: the header repeats column names {', '.join(dupes)}; names must be unique.")
    data = rows[1:]
    if not data:
        raise UserError(f"{path} has a header but no data rows.")
    for line, row in data:
        if len(row) != len(names):
            raise UserError(f"{path}: line {line} has {len(row)} cells but the header has {len(names)} columns.")

    label = config.label_column
    if label is not None and label not in names:
        raise UserError(f"{path} has no column {label!r} (label_column). Columns: {', '.join(names)}.")
    feature_cols = [j for j, n in enumerate(names) if n != label]
    features = [names[j] for j in feature_cols]
    if not feature_cols:
        raise UserError(f"{path}: the only column is the label column {label!r}; no feature columns are left.")
    x = _parse_numbers(path, data, feature_cols, features)

    y = None
    meta: dict[str, Any] = {"source": str(path), "columns": features, "label_column": label}
    if label is not None:
        j = names.index(label)
        for line, row in data:
            if row[j].strip() == "":
                raise UserError(f"{path}: line {line}, label column {label!r} is empty; every row needs a label.")
        codes, values = encode_labels([row[j] for _, row in data], f"{path} column {label!r}")
        y = torch.from_numpy(codes)
        meta["label_values"] = values

    train_idx, test_idx = holdout(len(x), config.test_fraction, config.seed)
    rows = statistics_rows(len(train_idx), config, None if y is None else y[train_idx])
    tr, te, mean, std = standardise(x[train_idx.numpy()], x[test_idx.numpy()], rows)
    spec = DataSpec(shape=(len(features),), kind="real", num_classes=len(meta["label_values"]) if y is not None else None, name=str(path))
    return Dataset(
        str(path),
        spec,
        Split(torch.from_numpy(tr), None if y is None else y[train_idx]),
        Split(torch.from_numpy(te), None if y is None else y[test_idx]),
        state={"mean": mean, "std": std},
        meta={**meta, "test_fraction": config.test_fraction, "seed": config.seed},
    )

"""MATLAB files: ``frey-faces`` (1965 grey 28x20 frames of Brendan Frey's face).

The file holds one variable ``ff``, uint8 (560, 1965): one face per column. There is no
official test split, so a seeded ``test_fraction`` is held out. There is no public
download either (Sam Roweis' page is gone), so the file must be copied in by hand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from . import register_dataset
from .dataset import DataConfig, Dataset, DataSpec, Split
from .files import find_files, holdout

FREY_FILE = "frey_rawface.mat"
FREY_H, FREY_W = 28, 20


def read_frey(path: str | Path) -> np.ndarray:
    """Frey faces as uint8 (N, 28, 20) from a ``.mat`` file with variable ``ff`` (560, N)."""
    import scipy.io  # only this dataset needs scipy's MAT reader

    try:
        mat = scipy.io.loadmat(str(path), variable_names=["ff"])
    except Exception as e:  # scipy raises ValueError, TypeError, struct.error, MatReadError ...
        raise UserError(f"cannot read {path}: not a readable MATLAB file ({type(e).__name__}: {e}).") from None
    if "ff" not in mat:
        raise UserError(f"{path} has no variable 'ff' (the 560 x N Frey face pixels); the file is not frey_rawface.mat.")
    ff = np.asarray(mat["ff"])
    if ff.ndim != 2 or ff.shape[0] != FREY_H * FREY_W or ff.shape[1] < 2:
        raise UserError(f"{path}: variable 'ff' has shape {ff.shape}, expected ({FREY_H * FREY_W}, N) with N >= 2.")
    if ff.dtype != np.uint8:
        if not np.issubdtype(ff.dtype, np.number) or ff.min() < 0 or ff.max() > 255:
            raise UserError(f"{path}: variable 'ff' must hold pixel values 0..255, got dtype {ff.dtype}.")
        ff = ff.astype(np.uint8)
    # Column-major per face in MATLAB: each column, read row-major, is a 28x20 frame.
    return np.ascontiguousarray(ff.T).reshape(-1, FREY_H, FREY_W)


@register_dataset("frey-faces", "Frey faces, 1965 grey 1x28x20 frames in [0, 1], seeded test hold-out, no labels")
def load_frey_faces(config: DataConfig) -> Dataset:
    name = "frey-faces"
    path = find_files("frey-faces", [FREY_FILE], config, name)[FREY_FILE]
    x = torch.from_numpy(read_frey(path)).unsqueeze(1)  # (N, 1, 28, 20) uint8
    train_idx, test_idx = holdout(len(x), config.test_fraction, config.seed)
    spec = DataSpec(shape=(1, FREY_H, FREY_W), kind="continuous", num_levels=256, name=name)
    meta = {"source": str(path), "test_fraction": config.test_fraction, "seed": config.seed}
    return Dataset(name, spec, Split(x[train_idx]), Split(x[test_idx]), scale=1 / 255, meta=meta)

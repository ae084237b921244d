"""Atomic writing and pickle-free reading of the project's files (bottom layer).

Every file deepgen writes (run folders, cached feature networks, reference statistics,
leaderboards, pictures) goes to a temporary name in the same folder and is renamed into
place, so a reader never sees half a file and a kill leaves the previous version. Tensors
are stored as safetensors and read back without unpickling anything.

Used by ``training/`` (the run folder), ``metrics/`` (feature caches) and the presentation
layer alike, which is why it lives here and not in any of them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import UserError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """A safetensors file written atomically; tensors are copied to contiguous CPU memory."""
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=metadata)


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (no unpickling); a :class:`UserError` when the
    file is missing or corrupt."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}. The file is missing or corrupt.") from None


def tensor_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors file; a :class:`UserError` when unreadable."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}. The file is missing or corrupt.") from None

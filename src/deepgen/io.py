"""Atomic writing and pickle-free reading of the project's files (bottom layer).

Every file deepgen writes (run folders, cached feature networks, reference statistics,
leaderboards, pictures) goes to a temporary name in the same folder and is renamed into
place, so a reader never sees half a file and a kill leaves the previous version. Each
file gets the permissions the umask gives a new file (as ``open`` would), whatever the
library that fills the temporary file does. Tensors are stored as safetensors and read
back without unpickling anything; a caller that recorded a file's sha256
(:func:`file_sha256`) can have it checked on reading.

Used by ``training/`` (the run folder), ``metrics/`` (feature caches) and the presentation
layer alike, which is why it lives here and not in any of them.
"""

from __future__ import annotations

import hashlib
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


def fsync_file(path: str | Path) -> None:
    """Flush a written file's data to the disk (a crash of the machine keeps it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (the names renamed into it) to the disk, where the system
    allows it (not on Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, *, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` on success.

    The file ends with the mode the umask gives a new file (safetensors, for one, creates
    its files 0600). ``durable``: flush the file to the disk before the rename. On an
    exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")
    try:
        # Created here with 0666, so the kernel applies the umask (and any default ACL):
        # the mode every other new file of the user gets.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            mode = os.fstat(fd).st_mode & 0o7777
        finally:
            os.close(fd)
        yield tmp
        if (os.stat(tmp).st_mode & 0o7777) != mode:
            os.chmod(tmp, mode)
        if durable:
            fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | Path, obj: Any, *, durable: bool = False) -> None:
    """Write ``obj`` as indented, key-sorted JSON atomically."""
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_tensors(
    path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None, *, durable: bool = False
) -> None:
    """A safetensors file written atomically; tensors are copied to contiguous CPU memory."""
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path, durable=durable) as tmp:
        save_file(flat, str(tmp), metadata=metadata)


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, as hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_tensors(path: str | Path, *, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (no unpickling); a :class:`UserError` when the
    file is missing or corrupt. ``sha256``: the checksum recorded when the file was
    written; bytes that differ from it (a flipped bit, a truncated copy) are refused
    before anything is parsed."""
    try:
        if sha256 is not None and file_sha256(path) != sha256:
            raise UserError(
                f"cannot read {path}: its bytes ({os.path.getsize(path)} now) do not match the sha256 recorded "
                "when it was written. The file is missing or corrupt."
            )
        return load_file(str(path))
    except UserError:  # a ValueError too: the message above is already the whole story
        raise
    except (SafetensorError, OSError, ValueError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise UserError(f"cannot read {path}: {why}. The file is missing or corrupt.") from None


def tensor_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors file; a :class:`UserError` when unreadable."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}. The file is missing or corrupt.") from None

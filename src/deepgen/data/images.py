"""User images: a folder of PNG / JPEG / BMP / GIF / WebP files, read with Pillow.

Images are found recursively, resized to ``config.image_size`` (H, W) or to the first
image's size, and stored as uint8 (N, C, H, W) with ``scale = 1/255``. Channels are
``config.image_channels`` or, when unset, 1 if every image is grayscale and 3 otherwise. When
the images sit in two or more subfolders, each top-level subfolder is a class (labels
are the index of its name in sorted order, kept in ``meta["classes"]``).

A folder whose decoded pixels exceed ``config.max_resident_mb`` is not decoded up front:
its splits hold an :class:`ImageFiles`, which decodes the images a batch asks for, and the
trainer streams it through a DataLoader with worker processes
(:class:`deepgen.data.streaming.StreamingLoader`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import UserError
from . import register_path_reader
from .dataset import DataConfig, Dataset, DataSpec, Split
from .files import holdout

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "La"}


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, hidden files and folders skipped), sorted."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in files:
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in EXTENSIONS:
                found.append(Path(root) / f)
    return sorted(found)


def _unreadable(path: Path, e: BaseException) -> UserError:
    return UserError(f"cannot read image {path}: {e}. Remove it or replace it with a valid image.")


_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def _probe(path: Path) -> tuple[tuple[int, int], bool]:
    """((W, H), is grayscale) from the header alone (palette images are decoded to check)."""
    try:
        with Image.open(path) as im:
            if im.mode in _GRAY_MODES:
                return im.size, True
            if im.mode == "P":  # a palette image is grey when its colours are
                rgb = np.asarray(im.convert("RGB"))
                return im.size, bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
            return im.size, False
    except _ERRORS as e:
        raise _unreadable(path, e) from None


def _read(path: Path, channels: int, size_wh: tuple[int, int]) -> np.ndarray:
    """One image as uint8 (C, H, W); animated files give their first frame."""
    try:
        with Image.open(path) as im:
            im.load()  # decode now, so a truncated file fails here with its name
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                # 16-bit / float grey: rescale to 0..255 (Pillow's conversion to "L" clips).
                a = np.asarray(im, dtype=np.float64)
                top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
                im = Image.fromarray(np.clip(a / top * 255 + 0.5, 0, 255).astype(np.uint8))
            im = im.convert("L" if channels == 1 else "RGB")
            if im.size != size_wh:
                im = im.resize(size_wh, Image.Resampling.LANCZOS)
            a = np.asarray(im, dtype=np.uint8)
    except _ERRORS as e:
        raise _unreadable(path, e) from None
    return a[None] if channels == 1 else a.transpose(2, 0, 1)


class ImageFiles:
    """Image files decoded on demand: a lazy stand-in for a uint8 (N, C, H, W) tensor.

    ``x[i]`` (C, H, W), ``x[a:b]`` and ``x[index_tensor]`` (B, C, H, W) decode those files
    (in threads: Pillow releases the GIL while decoding); :meth:`select` makes a lazy
    subset (a split). ``len``, ``shape`` and ``dtype`` answer as the tensor would.
    """

    dtype = torch.uint8

    def __init__(self, files: Sequence[Path], channels: int, size_hw: tuple[int, int]) -> None:
        self.files = list(files)
        self.channels = channels
        self.size_hw = (int(size_hw[0]), int(size_hw[1]))

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.files), self.channels, *self.size_hw)

    @property
    def nbytes(self) -> int:
        """Bytes of the decoded uint8 pixels."""
        n, c, h, w = self.shape
        return n * c * h * w

    def _positions(self, index: Any) -> list[int]:
        """Positions a slice, a bool mask or integer indices (tensor, array, sequence) select."""
        if isinstance(index, slice):
            return list(range(len(self.files)))[index]
        t = torch.as_tensor(index)
        if t.dtype == torch.bool:
            if t.shape != (len(self.files),):
                raise IndexError(f"a mask must have shape ({len(self.files)},), got {tuple(t.shape)}")
            t = t.nonzero().reshape(-1)
        elif t.is_floating_point() or t.is_complex():
            raise IndexError(f"image indices must be integers, got {t.dtype}")
        n = len(self.files)
        out = t.reshape(-1).tolist()
        for i in out:
            if not -n <= i < n:
                raise IndexError(f"index {i} is out of range for {n} images")
        return [i % n for i in out]

    def select(self, index: Any) -> ImageFiles:
        """A lazy subset: the files at ``index`` (a slice, index tensor or sequence), in that order."""
        return ImageFiles([self.files[i] for i in self._positions(index)], self.channels, self.size_hw)

    def decode(self, positions: Sequence[int], threads: int = 1) -> torch.Tensor:
        """The files at ``positions`` as uint8 (B, C, H, W)."""
        h, w = self.size_hw
        if not positions:
            return torch.empty((0, self.channels, h, w), dtype=torch.uint8)
        read = lambda i: _read(self.files[i], self.channels, (w, h))  # noqa: E731
        if threads > 1 and len(positions) > 1:
            with ThreadPoolExecutor(min(threads, len(positions))) as pool:
                arrays = list(pool.map(read, positions))
        else:
            arrays = [read(i) for i in positions]
        return torch.from_numpy(np.stack(arrays))

    def __getitem__(self, index: Any) -> torch.Tensor:
        """As a uint8 tensor would: an integer gives (C, H, W); a slice, a bool mask or
        integer indices give (B, C, H, W)."""
        if isinstance(index, (torch.Tensor, np.ndarray)) and index.ndim == 0 and index.dtype not in (torch.bool, np.bool_):
            index = index.item()
        if isinstance(index, (float, bool, np.bool_)):
            raise IndexError(f"image indices must be integers or slices, got {index!r}")
        if isinstance(index, (int, np.integer)):
            return self.decode(self._positions([int(index)]))[0]
        return self.decode(self._positions(index), threads=_threads(len(self.files)))

    def fingerprint(self) -> bytes:
        """Identifies the data without decoding it: shape, then each file's path, size and mtime."""
        parts = [f"{self.shape}".encode()]
        for f in self.files:
            st = f.stat()
            # ctime and inode too: rewriting or swapping files changes them even when a tool
            # restores the size and the modification time.
            parts.append(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}\n".encode())
        return b"".join(parts)


def _threads(n: int) -> int:
    return min(8, os.cpu_count() or 1, max(1, n // 64))


@register_path_reader("")
def read_image_folder(path: Path, config: DataConfig) -> Dataset:
    """A folder of images as continuous uint8 (N, C, H, W) data, labelled by subfolder.

    Decoded into memory when the pixels take at most ``config.max_resident_mb``; otherwise
    each split is an :class:`ImageFiles`, decoded batch by batch as it is read.
    """
    files = list_images(path)
    if not files:
        raise UserError(
            f"no images found in folder {path} (searched recursively for {', '.join(EXTENSIONS)}). "
            f"User data is a folder of images, a .npy/.npz array or a .csv table."
        )
    # Labels from the top-level subfolders, when every image sits in one and there are >= 2.
    tops = [f.relative_to(path).parts[0] if len(f.relative_to(path).parts) > 1 else None for f in files]
    classes: list[str] = []
    labels = None
    if None not in tops and len(set(tops)) >= 2:
        classes = sorted(set(tops))
        index = {c: i for i, c in enumerate(classes)}
        labels = torch.tensor([index[t] for t in tops], dtype=torch.int64)

    # Headers first (cheap): the size and channel count must be known before decoding.
    probes: list[tuple[tuple[int, int], bool]] = []
    if config.image_channels is None or not config.image_size:
        with ThreadPoolExecutor(_threads(len(files))) as pool:
            probes = list(pool.map(_probe, files))
    channels = config.image_channels or (1 if all(gray for _, gray in probes) else 3)
    h, w = config.image_size if config.image_size else probes[0][0][::-1]
    images = ImageFiles(files, channels, (h, w))
    streamed = images.nbytes > config.max_resident_mb * 2**20
    x: torch.Tensor | ImageFiles = images if streamed else images[:]

    train_idx, test_idx = holdout(len(images), config.test_fraction, config.seed)
    name = str(path)
    spec = DataSpec(
        shape=(channels, h, w),
        kind="continuous",
        num_levels=256,
        num_classes=len(classes) if labels is not None else None,
        name=name,
    )
    meta: dict[str, Any] = {"source": name, "num_files": len(files), "test_fraction": config.test_fraction, "seed": config.seed}
    if streamed:
        meta["streamed"] = True  # read from disk batch by batch (larger than max_resident_mb)
    if labels is not None:
        meta["classes"] = classes

    def split(idx: torch.Tensor) -> Split:
        part = x.select(idx) if isinstance(x, ImageFiles) else x[idx]
        return Split(part, None if labels is None else labels[idx])

    return Dataset(name, spec, split(train_idx), split(test_idx), scale=1 / 255, meta=meta)

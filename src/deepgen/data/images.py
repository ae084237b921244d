"""User images: a folder of PNG / JPEG / BMP / GIF / WebP files, read with Pillow.

Images are found recursively, resized to ``config.image_size`` (H, W) or to the first
image's size, and stored as uint8 (N, C, H, W) with ``scale = 1/255``. Channels are
``config.image_channels`` or, when unset, 1 if every image is grayscale and 3 otherwise. When
the images sit in two or more subfolders, each top-level subfolder is a class (labels
are the index of its name in sorted order, kept in ``meta["classes"]``).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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


@register_path_reader("")
def read_image_folder(path: Path, config: DataConfig) -> Dataset:
    """A folder of images as continuous uint8 (N, C, H, W) data, labelled by subfolder."""
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

    # Decoding runs in threads: Pillow releases the GIL while it decodes.
    workers = min(8, os.cpu_count() or 1, max(1, len(files) // 64))
    with ThreadPoolExecutor(workers) as pool:
        # Headers first (cheap): the size and channel count must be known before decoding.
        probes = list(pool.map(_probe, files)) if config.image_channels is None or not config.image_size else []
        channels = config.image_channels or (1 if all(gray for _, gray in probes) else 3)
        h, w = config.image_size if config.image_size else probes[0][0][::-1]
        x = torch.from_numpy(np.stack(list(pool.map(lambda f: _read(f, channels, (w, h)), files))))

    train_idx, test_idx = holdout(len(x), config.test_fraction, config.seed)
    name = str(path)
    spec = DataSpec(
        shape=(channels, h, w),
        kind="continuous",
        num_levels=256,
        num_classes=len(classes) if labels is not None else None,
        name=name,
    )
    meta = {"source": name, "num_files": len(files), "test_fraction": config.test_fraction, "seed": config.seed}
    if labels is not None:
        meta["classes"] = classes
    return Dataset(
        name,
        spec,
        Split(x[train_idx], None if labels is None else labels[train_idx]),
        Split(x[test_idx], None if labels is None else labels[test_idx]),
        scale=1 / 255,
        meta=meta,
    )

"""IDX files (MNIST, Fashion-MNIST): ``mnist``, ``mnist-binarized``, ``fashion-mnist``.

An IDX file is a big-endian header (magic ``0x0000 08 nd``: uint8 data with ``nd``
dimensions, then ``nd`` uint32 sizes) followed by the raw bytes, usually gzip-compressed.
Pixels stay uint8 (N, 1, 28, 28) and are scaled per batch (``scale = 1/255``).
"""

from __future__ import annotations

import functools
import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from . import register_dataset
from .dataset import DataConfig, Dataset, DataSpec, Split
from .files import REMOTES, Remote, find_files

IMAGES_MAGIC = 0x803
LABELS_MAGIC = 0x801

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
FILES = [TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS]

# Folder -> public mirrors and the official checksums (md5, sha256) of each file
# (shared/data/README.md). Checked after a download only.
REMOTES.update(
    {
        "mnist": Remote(
            mirrors=(
                "https://ossci-datasets.s3.amazonaws.com/mnist/",
                "https://yann.lecun.com/exdb/mnist/",
            ),
            checksums={
                TRAIN_IMAGES: (
                    "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                    "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                ),
                TRAIN_LABELS: (
                    "d53e105ee54ea40749a09fcbcd1e9432",
                    "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                ),
                TEST_IMAGES: (
                    "9fb629c4189551a2d022fa330f9573f3",
                    "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                ),
                TEST_LABELS: (
                    "ec29112dd5afa0611ce80d1b7f02629c",
                    "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                ),
            },
        ),
        "fashion-mnist": Remote(
            mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
            checksums={
                TRAIN_IMAGES: (
                    "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                    "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                ),
                TRAIN_LABELS: (
                    "25c81989df183df01b3e8a0aad5dffbe",
                    "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                ),
                TEST_IMAGES: (
                    "bef4ecab320f06d8554ea6380940ec79",
                    "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                ),
                TEST_LABELS: (
                    "bb300cfdad3c16e7a12a480ee83cd310",
                    "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                ),
            },
        ),
    }
)

FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Decode an IDX file (gzip or plain) into a read-only uint8 array of its dims.

    ``magic`` is the expected magic number (0x803 for (N, H, W) images, 0x801 for (N,)
    labels). Decoded arrays are cached in-process by path, size and mtime, so loading a
    dataset twice in one session decompresses it once; a changed file is read again.
    """
    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:
        raise UserError(f"cannot read IDX file {path}: {e.strerror or e}") from None
    return _read_idx_cached(str(path), st.st_mtime_ns, st.st_size, magic)


@functools.lru_cache(maxsize=16)
def _read_idx_cached(path: str, mtime_ns: int, size: int, magic: int) -> np.ndarray:
    del mtime_ns, size  # part of the cache key only
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":  # gzip magic: decide by content, not by suffix
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(
            f"cannot read IDX file {path}: the gzip stream is truncated or corrupt ({e}). "
            f"Delete it and copy or download it again."
        ) from None
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < 4:
        raise UserError(f"IDX file {path} is truncated: {len(raw)} bytes, shorter than its 4-byte magic.")
    (got,) = struct.unpack(">I", raw[:4])
    if got != magic:
        raise UserError(
            f"IDX file {path} has magic number {got:#x}, expected {magic:#x} "
            f"({'uint8 images' if magic == IMAGES_MAGIC else 'uint8 labels'} with {ndim} dims): "
            f"the file is corrupt or is not the expected {'images' if magic == IMAGES_MAGIC else 'labels'} file."
        )
    if len(raw) < header:
        raise UserError(f"IDX file {path} is truncated: {len(raw)} bytes, shorter than its {header}-byte header.")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    payload = len(raw) - header
    if payload != expected:
        what = "truncated" if payload < expected else "longer than its header says"
        raise UserError(
            f"IDX file {path} is {what}: header dims {'x'.join(map(str, dims))} need {expected} data bytes, "
            f"found {payload}. Delete it and copy or download it again."
        )
    arr = np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)
    arr.flags.writeable = False  # shared by every caller through the cache
    return arr


def _read_pair(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    x = read_idx(images, IMAGES_MAGIC)
    y = read_idx(labels, LABELS_MAGIC)
    if x.shape[1:] != (28, 28):
        raise UserError(f"IDX file {images} holds {x.shape[1]}x{x.shape[2]} images, expected 28x28.")
    if len(x) != len(y):
        raise UserError(f"IDX files {images} and {labels} disagree: {len(x)} images but {len(y)} labels.")
    if len(y) and int(y.max()) > 9:
        raise UserError(f"IDX file {labels} has label {int(y.max())}, expected labels 0..9.")
    return x, y


def _load(folder: str, config: DataConfig, dataset: str) -> tuple[Split, Split, dict[str, Path]]:
    """Raw splits: x (N, 1, 28, 28) uint8 (a private copy), y (N,) int64; and the file paths."""
    paths = find_files(folder, FILES, config, dataset)
    splits = []
    for img, lab in ((TRAIN_IMAGES, TRAIN_LABELS), (TEST_IMAGES, TEST_LABELS)):
        x, y = _read_pair(paths[img], paths[lab])
        # A copy, so that no caller can change the cached array through its tensor.
        splits.append(Split(torch.tensor(x).unsqueeze(1), torch.tensor(y, dtype=torch.int64)))
    return splits[0], splits[1], paths


def _image_dataset(name: str, folder: str, config: DataConfig, classes: list[str]) -> Dataset:
    train, test, paths = _load(folder, config, name)
    spec = DataSpec(shape=(1, 28, 28), kind="continuous", num_levels=256, num_classes=10, name=name)
    meta = {"source": str(paths[TRAIN_IMAGES].parent), "classes": classes}
    return Dataset(name, spec, train, test, scale=1 / 255, meta=meta)


@register_dataset("mnist", "MNIST digits, 60k/10k, 1x28x28 grey levels in [0, 1], 10 classes")
def load_mnist(config: DataConfig) -> Dataset:
    return _image_dataset("mnist", "mnist", config, [str(i) for i in range(10)])


@register_dataset("fashion-mnist", "Fashion-MNIST clothing, 60k/10k, 1x28x28 in [0, 1], 10 classes")
def load_fashion_mnist(config: DataConfig) -> Dataset:
    return _image_dataset("fashion-mnist", "fashion-mnist", config, list(FASHION_CLASSES))


@register_dataset(
    "mnist-binarized",
    "MNIST with Bernoulli-binarized pixels (binarization=dynamic: redrawn every batch; static: one seeded draw)",
)
def load_mnist_binarized(config: DataConfig) -> Dataset:
    name = "mnist-binarized"
    train, test, paths = _load("mnist", config, name)
    spec = DataSpec(shape=(1, 28, 28), kind="binary", num_classes=10, name=name)
    meta = {"source": str(paths[TRAIN_IMAGES].parent), "binarization": config.binarization, "classes": [str(i) for i in range(10)]}
    if config.binarization == "dynamic":
        # Raw grey levels stay; convert() draws fresh Bernoulli pixels per batch (IWAE protocol).
        return Dataset(name, spec, train, test, scale=1 / 255, binarize=True, meta=meta)
    meta["seed"] = config.seed
    # The files' identity (path, mtime) and the seed fix the draw.
    key = (*((str(paths[f]), paths[f].stat().st_mtime_ns) for f in (TRAIN_IMAGES, TEST_IMAGES)), config.seed)
    bx_train, bx_test = _static_draw(key, config.seed, train.x, test.x)
    return Dataset(
        name,
        spec,
        Split(torch.tensor(bx_train), train.y),
        Split(torch.tensor(bx_test), test.y),
        scale=1.0,
        binarize=False,
        meta=meta,
    )


_STATIC_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def _static_draw(key: tuple, seed: int, train: torch.Tensor, test: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """One fixed Bernoulli draw of every pixel (train first, then test) from ``seed``.

    Cached per (files, seed) for two entries, so that repeated loads in one process skip
    the draw (about 0.3 s for 70k images on two cores).
    """
    if key not in _STATIC_CACHE:
        gen = torch.Generator().manual_seed(seed)
        out = []
        for x in (train, test):
            # u uniform on {0, ..., 254} gives P(u < p) = p / 255 exactly for a pixel p, so
            # this is Bernoulli(p / 255) from one random byte per pixel: about 5x faster on
            # CPU than torch.bernoulli on floats, and no float copy of the images.
            u = torch.randint(0, 255, x.shape, generator=gen, dtype=torch.uint8)
            a = (u < x).to(torch.uint8).numpy()
            a.flags.writeable = False
            out.append(a)
        if len(_STATIC_CACHE) >= 2:
            _STATIC_CACHE.pop(next(iter(_STATIC_CACHE)))
        _STATIC_CACHE[key] = (out[0], out[1])
    return _STATIC_CACHE[key]

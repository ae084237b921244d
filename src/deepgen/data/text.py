"""Character-level text: any UTF-8 file becomes a token dataset, as nanoGPT's shakespeare_char.

The vocabulary is the sorted set of the file's characters (65 for Tiny Shakespeare); it
is kept in the dataset's ``meta["vocab"]``, so a run folder records it and sampling and
evaluation decode the same characters (:func:`encode_text`, :func:`decode_text`; a
character outside the vocabulary is one clear error). The first 90% of the characters
train and the last 10% validate, in file order (nanoGPT's split).

Examples are windows of ``DataConfig.block_size`` characters, shape ``(T,)``, kind
``tokens``: the training split holds every window starting at each character (a strided
view of the one stream, so nothing is copied: nanoGPT's random offsets, drawn by our
permutation of window starts), the test split the non-overlapping windows, so that each
validation character is scored once. A model's ``log_prob`` of a window is summed over its
T characters; bits per dimension are bits per character.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from . import register_dataset, register_path_reader
from .dataset import DataConfig, Dataset, DataSpec, Split
from .files import REMOTES, Remote, find_files

TRAIN_FRACTION = 0.9  # nanoGPT's shakespeare_char split: the first 90% of the characters

SHAKESPEARE = "tinyshakespeare"
SHAKESPEARE_FILE = "input.txt"
REMOTES[SHAKESPEARE] = Remote(
    mirrors=("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare",),
    checksums={SHAKESPEARE_FILE: ("6fb458f1232090904fb40fe944165e91", "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed")},
)


def encode_text(text: str, vocab: str) -> torch.Tensor:
    """Characters -> ids (len(text),) int64 in the vocabulary's order; an unknown character
    is one :class:`UserError` naming it and the accepted characters."""
    index = {ch: i for i, ch in enumerate(vocab)}
    unknown = sorted({ch for ch in text if ch not in index})
    if unknown:
        shown = ", ".join(repr(c) for c in unknown[:10])
        raise UserError(
            f"{len(unknown)} character(s) not in the model's vocabulary: {shown}. "
            f"Accepted ({len(vocab)}): {vocab!r}."
        )
    return torch.tensor([index[ch] for ch in text], dtype=torch.long)


def decode_text(ids: torch.Tensor, vocab: str) -> str:
    """Ids (T,) -> the string of their characters; an id outside 0..len(vocab)-1 is one
    :class:`UserError` (a negative one would otherwise index from the end, silently)."""
    values = ids.reshape(-1).tolist()
    bad = [i for i in values if not 0 <= int(i) < len(vocab) or int(i) != i]
    if bad:
        raise UserError(
            f"{len(bad)} id(s) not in the vocabulary of {len(vocab)} characters (first {bad[0]!r}); "
            f"accepted: whole numbers 0..{len(vocab) - 1}."
        )
    return "".join(vocab[int(i)] for i in values)


def _windows(stream: torch.Tensor, length: int, stride: int) -> torch.Tensor:
    """The windows of ``length`` ids starting every ``stride`` ids: a (n, length) view of ``stream``."""
    n = (len(stream) - length) // stride + 1
    if n < 1:
        return stream.new_empty((0, length))
    return stream.as_strided((n, length), (stride, 1))


def text_dataset(text: str, name: str, config: DataConfig, meta: dict | None = None) -> Dataset:
    """A token dataset of ``text``: vocabulary, 90/10 split in file order, windows of
    ``config.block_size`` (train: every offset; test: non-overlapping)."""
    length = config.block_size
    vocab = "".join(sorted(set(text)))
    if len(vocab) < 2:
        raise UserError(f"{name!r} has {len(vocab)} distinct character(s); a text dataset needs at least 2.")
    ids = encode_text(text, vocab)
    ids = ids.to(torch.uint8 if len(vocab) <= 256 else torch.int32)  # raw storage; batches become int64
    cut = int(TRAIN_FRACTION * len(ids))
    train, test = ids[:cut], ids[cut:]
    if len(train) < length or len(test) < length:
        raise UserError(
            f"{name!r} has {len(ids)} characters: too few for windows of block_size={length} in both splits "
            f"({len(train)} train, {len(test)} validation). Use a smaller block_size or more text."
        )
    spec = DataSpec(shape=(length,), kind="tokens", vocab_size=len(vocab), name=name)
    info = {"vocab": vocab, "characters": len(ids), "train_characters": len(train), "test_characters": len(test),
            # Consecutive training windows share block_size - 1 characters: a validation
            # hold-out (DataConfig.validation) leaves that many windows out between the two.
            "train_overlap": length - 1}
    info.update(meta or {})
    return Dataset(name, spec, Split(_windows(train, length, 1)), Split(_windows(test, length, length)), meta=info)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # a leading byte-order mark (Notepad's UTF-8) is not a character of the text
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8.") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}.") from None


@register_path_reader(".txt")
def read_text_file(path: Path, config: DataConfig) -> Dataset:
    """Any UTF-8 ``.txt`` file as a character-level dataset."""
    return text_dataset(_read(path), path.name, config, {"source": str(path)})


@register_dataset(SHAKESPEARE, "Tiny Shakespeare: 1.1M characters, 65-character vocabulary (char-level text; nanoGPT's split)")
def tinyshakespeare(config: DataConfig) -> Dataset:
    path = find_files(SHAKESPEARE, [SHAKESPEARE_FILE], config, SHAKESPEARE)[SHAKESPEARE_FILE]
    return text_dataset(_read(path), SHAKESPEARE, config, {"source": str(path)})

"""Batching with the whole split resident on the device.

The raw tensor is copied to the device once; every batch is an index slice of a
device-side permutation, converted to model space on the device. No DataLoader, no host
copies, no host synchronisation per batch. The loader's position (epoch, permutation,
offset) and its two generators are part of the trainer state, so a resumed run sees the
same batches as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property

import torch

from .dataset import Batch, Dataset


class ShuffledBatches:
    """The bookkeeping every training loader shares: a seeded permutation per epoch, full
    batches taken in order from it (the tail that cannot fill a batch is dropped, as with
    ``drop_last=True``), each rank's share of a batch, and a state that resumes exactly.

    ``order_gen`` draws the permutations (on ``order_device``); ``convert_gen`` (on the
    training device) drives per-batch randomness of the conversion (dynamic binarization),
    two streams so that changing one never shifts the other. Subclasses fetch the examples.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        device: torch.device | str = "cpu",
        seed: int = 0,
        split: str = "train",
        shard: tuple[int, int] = (0, 1),
        order_device: torch.device | str | None = None,
    ) -> None:
        data = dataset.split(split)
        self.data = data
        self.dataset = dataset
        self.batch_size = min(batch_size, len(data))
        self.device = torch.device(device)
        self.n = len(data)
        self.seed = seed
        # (rank, ranks): every rank draws the same global batch order and keeps its own
        # contiguous share of each batch (data-parallel training; batch_size is global).
        self.shard = shard
        self.order_gen = torch.Generator(torch.device(order_device) if order_device is not None else self.device).manual_seed(seed)
        # Each rank its own per-batch randomness (rank 0 keeps the one-process stream).
        self.convert_gen = torch.Generator(self.device).manual_seed(seed + 1 + 1_000_003 * shard[0])
        self.epoch = 0
        self.pos = 0
        self.perm = self._permutation()

    def _permutation(self) -> torch.Tensor:
        return torch.randperm(self.n, generator=self.order_gen, device=self.order_gen.device)  # (n,)

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.batch_size

    @property
    def at_epoch_end(self) -> bool:
        """True when the current epoch has no full batch left."""
        return self.pos + self.batch_size > self.n

    @property
    def epochs_done(self) -> int:
        """Completed epochs, counting the current one when it is used up."""
        return self.epoch + int(self.at_epoch_end)

    def _new_epoch(self) -> None:
        self.epoch += 1
        self.pos = 0
        self.perm = self._permutation()

    def _share(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous part of a global batch's indices (B,)."""
        rank, ranks = self.shard
        return idx.tensor_split(ranks)[rank] if ranks > 1 else idx

    def next(self) -> Batch:
        """The next full batch (this rank's share), in model space on the device."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the loader holds open (worker processes); nothing for resident data."""

    def state_dict(self) -> dict[str, torch.Tensor | int]:
        return {
            "epoch": self.epoch,
            "pos": self.pos,
            "perm": self.perm.cpu(),
            "order_gen": self.order_gen.get_state(),
            "convert_gen": self.convert_gen.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.pos = int(state["pos"])
        self.perm = state["perm"].to(self.order_gen.device)
        try:
            self.order_gen.set_state(state["order_gen"])
            self.convert_gen.set_state(state["convert_gen"])
        except RuntimeError:
            # Generator states of another device type (a GPU run resumed on the CPU) do not
            # fit these generators: go on from seeds derived from the epoch instead. Exact
            # resumption holds on the device the checkpoint came from.
            self.order_gen.manual_seed(self.seed + 1_000_003 * (self.epoch + 1))
            self.convert_gen.manual_seed(self.seed + 1 + 1_000_003 * (self.epoch + 1) + 7_919 * self.shard[0])


class ResidentLoader(ShuffledBatches):
    """An endless stream of shuffled full batches from one split held on the device.

    ``next()`` returns a :class:`Batch` of exactly ``batch_size`` examples (this rank's
    share under torchrun): an index slice of a device-side permutation, converted on the
    device.
    """

    @cached_property
    def x(self) -> torch.Tensor:
        """The split's raw examples (N, *raw_shape), copied to the device once."""
        return self.data.x.to(self.device)

    @cached_property
    def y(self) -> torch.Tensor | None:
        """The split's labels (N,) on the device, or None."""
        return None if self.data.y is None else self.data.y.to(self.device)

    def next(self) -> Batch:
        if self.at_epoch_end:
            self._new_epoch()
        idx = self._share(self.perm[self.pos : self.pos + self.batch_size])
        self.pos += self.batch_size
        x = self.dataset.convert(self.x[idx], self.convert_gen)
        y = None if self.y is None else self.y[idx]
        return Batch(x, y)


def iterate(
    dataset: Dataset,
    split: str = "test",
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    limit: int = 0,
) -> Iterator[Batch]:
    """Every example of a split once, in order, in model space (the last batch may be short).

    ``limit`` > 0 keeps only the first ``limit`` examples. ``generator`` drives any
    per-batch randomness of the conversion (dynamic binarization).
    """
    data = dataset.split(split)
    n = len(data) if limit <= 0 else min(limit, len(data))
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        raw = data.x[start:stop].to(device)
        y = None if data.y is None else data.y[start:stop].to(device)
        yield Batch(dataset.convert(raw, generator), y)

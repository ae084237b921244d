"""Batching for data that does not stay in memory: image folders larger than
``DataConfig.max_resident_mb``, decoded batch by batch in DataLoader worker processes.

The order is the loaders' shared bookkeeping (:class:`~deepgen.data.resident.ShuffledBatches`):
a seeded permutation per epoch, full batches, the loader's position in the trainer state.
Each epoch iterates one DataLoader (its workers persist) over exactly the batches that
epoch has left, so the workers decode ahead while the model trains, and a resumed run
restarts the iteration at the saved position: it sees the same batches as an
uninterrupted run.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterator
from typing import Any

import torch
import torch.utils.data

from ..errors import UserError
from .dataset import Batch, Dataset
from .resident import ShuffledBatches


def default_workers() -> int:
    """One DataLoader worker per CPU core but one (the training process's), at most 8;
    under torchrun the cores are shared by the ``LOCAL_WORLD_SIZE`` processes of a machine."""
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(8, (os.cpu_count() or 1) // local - 1))


class _DecodeBatches(torch.utils.data.Dataset):
    """Map-style dataset whose items are whole batches: indices (B,) -> (uint8 x (B, C, H, W), y (B,) or None)."""

    def __init__(self, x: Any, y: torch.Tensor | None) -> None:
        self.x = x
        self.y = y

    def __getitem__(self, idx: torch.Tensor) -> dict[str, Any]:
        # A user's mistake (an unreadable image) travels back as its message: re-raised in
        # the training process it is one line, where torch would wrap the worker's traceback.
        try:
            x = self.x.decode(idx.tolist())
        except UserError as e:
            return {"error": str(e)}
        return {"x": x, "y": None if self.y is None else self.y[idx]}

    def __len__(self) -> int:
        return len(self.x)


class _BatchesLeft(torch.utils.data.Sampler):
    """The sampler: each iteration yields the index batches (this rank's share) left in
    the loader's current epoch, read from its permutation and position at that moment."""

    def __init__(self, loader: StreamingLoader) -> None:
        # A weak reference: the loader owns the DataLoader that owns this sampler, and a
        # cycle would keep the worker processes alive until a garbage collection.
        self.loader = weakref.proxy(loader)

    def _starts(self) -> range:
        lo = self.loader
        return range(lo.pos, lo.n - lo.batch_size + 1, lo.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        lo = self.loader
        for p in self._starts():
            yield lo._share(lo.perm[p : p + lo.batch_size])

    def __len__(self) -> int:
        return len(self._starts())


class StreamingLoader(ShuffledBatches):
    """An endless stream of shuffled full batches from a split decoded on demand.

    Same contract and state as :class:`~deepgen.data.resident.ResidentLoader`; the split's
    ``x`` must have ``decode(positions) -> uint8 (B, ...)`` (an
    :class:`~deepgen.data.images.ImageFiles`). ``workers`` processes decode the batches
    ahead of the training loop (0: decoded in this process); on CUDA they arrive in pinned
    memory and are copied without blocking. The permutations are drawn on the CPU.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        device: torch.device | str = "cpu",
        seed: int = 0,
        split: str = "train",
        shard: tuple[int, int] = (0, 1),
        workers: int = -1,
    ) -> None:
        super().__init__(dataset, batch_size, device, seed, split, shard, order_device="cpu")
        self.workers = default_workers() if workers < 0 else workers
        self._loader: torch.utils.data.DataLoader | None = None
        self._batches: Iterator[dict[str, Any]] | None = None

    def _start(self) -> None:
        """Iterate the batches left in this epoch, from ``pos`` on (the workers persist
        between epochs: a new iteration only re-reads the sampler)."""
        if self._loader is None:
            self._loader = torch.utils.data.DataLoader(
                _DecodeBatches(self.data.x, self.data.y),
                batch_size=None,  # the sampler yields whole batches of indices
                sampler=_BatchesLeft(self),
                num_workers=self.workers,
                pin_memory=self.device.type == "cuda",
                prefetch_factor=4 if self.workers else None,
                persistent_workers=self.workers > 0,
                # Its own generator: a DataLoader draws its workers' base seed on every new
                # iteration, which from torch's global one would shift the model's noise
                # between an uninterrupted run and a resumed one (decoding draws nothing).
                generator=torch.Generator().manual_seed(self.seed),
            )
        self._batches = iter(self._loader)

    def next(self) -> Batch:
        if self.at_epoch_end:
            self._new_epoch()
            self._batches = None
        if self._batches is None:
            self._start()
        assert self._batches is not None
        item = next(self._batches)
        if "error" in item:
            raise UserError(item["error"])
        raw, y = item["x"], item["y"]
        self.pos += self.batch_size
        x = self.dataset.convert(raw.to(self.device, non_blocking=True), self.convert_gen)
        return Batch(x, None if y is None else y.to(self.device, non_blocking=True))

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._batches = None  # restart the iteration at the restored position

    def close(self) -> None:
        """Stop the worker processes now (they also stop when the loader is dropped); a
        later :meth:`next` starts them again at the current position."""
        shutdown = getattr(self._batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        self._batches = None
        self._loader = None

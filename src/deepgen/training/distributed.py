"""Data-parallel training over the processes that ``torchrun`` starts (DESIGN.md, multi-GPU).

``torchrun --nproc_per_node=N -m deepgen train ...`` starts N copies of the command; each
reads its rank from the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``). Every rank
holds the whole model, draws its own share of each batch (``batch_size`` is the global
batch, split evenly), and after each backward the phase's gradients are averaged over the
ranks with one all-reduce, so every rank takes the same optimizer step and the weights
stay identical. That is DistributedDataParallel's arithmetic (Li et al. 2020, "PyTorch
Distributed"); the gradients are reduced by the trainer rather than by the DDP wrapper
because a phase runs ``model.loss``, not ``forward``, and touches only its own networks
(a GAN's G phase leaves D without gradients), which the wrapper handles only with
``find_unused_parameters`` and a traversal per step. Only rank 0 writes the run folder.

Backends: NCCL for CUDA devices (rank r uses ``cuda:LOCAL_RANK``), gloo for the CPU (how
CI tests it: two CPU processes).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    """This process's place among the training processes: ``rank`` of ``size``."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes the run folder and prints."""
        return self.rank == 0


def current_world() -> World:
    """The world ``torchrun`` describes in the environment (one process when run plainly)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))


def setup(world: World, device: torch.device) -> None:
    """Join the process group (once per process): NCCL on CUDA, gloo on the CPU."""
    if world.size <= 1 or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=world.rank, world_size=world.size)


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@torch.no_grad()
def broadcast_module(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (one collective per tensor)."""
    for t in [*module.parameters(), *module.buffers()]:
        dist.broadcast(t.data, src=0)


@torch.no_grad()
def average_gradients(params: Sequence[nn.Parameter], size: int, dtype: torch.dtype | None = None) -> None:
    """Replace each gradient by its mean over the ranks: one all-reduce of one flat buffer,
    after backward. ``dtype``: the buffer's type on the wire (None: the gradients' own;
    bfloat16 halves the bytes sent, at bfloat16's precision for the sum)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = _flat(grads, dtype)
    dist.all_reduce(flat)
    _write_mean(flat, grads, size)


def _flat(grads: list[torch.Tensor], dtype: torch.dtype | None) -> torch.Tensor:
    flat = torch.cat([g.reshape(-1) for g in grads])
    return flat if dtype is None else flat.to(dtype)


def _write_mean(flat: torch.Tensor, grads: list[torch.Tensor], size: int) -> None:
    """The summed flat buffer, divided by ``size``, back into the gradients (their own dtype)."""
    flat = flat.to(grads[0].dtype) / size
    chunks = flat.split([g.numel() for g in grads])
    torch._foreach_copy_(grads, [c.view_as(g) for c, g in zip(chunks, grads)])


class OverlappedReducer:
    """Averages a phase's gradients over the ranks while backward is still running, as
    DistributedDataParallel does (Li et al. 2020, "PyTorch Distributed", sec. 3.2.3).

    The parameters go into buckets of about ``bucket_mb`` MiB in reverse order (backward
    produces the last layers' gradients first). When every gradient of a bucket has been
    accumulated (a post-accumulate-grad hook per parameter), that bucket's all-reduce
    starts asynchronously, so the communication of the late layers overlaps the backward
    of the early ones. :meth:`arm` before the backward whose gradients are to be reduced
    (the last micro-batch's: earlier ones only accumulate); :meth:`wait` before the
    optimizer step finishes every bucket (launching those some of whose parameters got no
    gradient in this backward) and writes the means into the gradients. Between arm and
    wait, the hooks of an unarmed reducer (another phase's) do nothing. ``dtype``: the
    buckets' type on the wire, as for :func:`average_gradients`.
    """

    def __init__(self, params: Sequence[nn.Parameter], size: int, bucket_mb: float = 25.0, dtype: torch.dtype | None = None) -> None:
        self.size, self.dtype = size, dtype
        trainable = [p for p in params if p.requires_grad]
        limit = bucket_mb * 2**20
        self.buckets: list[list[nn.Parameter]] = []
        current: list[nn.Parameter] = []
        nbytes = 0
        for p in reversed(trainable):
            current.append(p)
            nbytes += p.numel() * p.element_size()
            if nbytes >= limit:
                self.buckets.append(current)
                current, nbytes = [], 0
        if current:
            self.buckets.append(current)
        self._bucket_of = {id(p): i for i, bucket in enumerate(self.buckets) for p in bucket}
        self._armed = False
        self._waiting: list[int] = []
        self._work: list[tuple[Any, torch.Tensor, list[torch.Tensor]] | None] = []
        self._launched: list[bool] = []
        self._handles = [p.register_post_accumulate_grad_hook(self._ready) for p in trainable]

    def arm(self) -> None:
        """Reduce the gradients of the next backward as they come."""
        self._armed = True
        self._waiting = [len(b) for b in self.buckets]
        self._work = [None] * len(self.buckets)
        self._launched = [False] * len(self.buckets)

    def _ready(self, p: nn.Parameter) -> None:
        if not self._armed:
            return
        i = self._bucket_of[id(p)]
        self._waiting[i] -= 1
        if self._waiting[i] == 0:
            self._launch(i)

    def _launch(self, i: int) -> None:
        self._launched[i] = True
        grads = [p.grad for p in self.buckets[i] if p.grad is not None]
        if grads:
            flat = _flat(grads, self.dtype)
            self._work[i] = (dist.all_reduce(flat, async_op=True), flat, grads)

    def wait(self) -> None:
        """Finish every bucket's all-reduce and write the means into the gradients."""
        if not self._armed:
            raise RuntimeError("OverlappedReducer.wait() without arm() before the backward")
        for i, launched in enumerate(self._launched):
            if not launched:  # a parameter of this bucket got no gradient in this backward
                self._launch(i)
        for item in self._work:
            if item is not None:
                work, flat, grads = item
                work.wait()
                _write_mean(flat, grads, self.size)
        self._armed = False
        self._work = []

    def remove(self) -> None:
        """Take the hooks off the parameters."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


def gather_objects(obj: object) -> list[object]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the ranks (every rank gets the sum)."""
    out = t.clone()
    dist.all_reduce(out)
    return out


def agree(flag: bool, device: torch.device) -> bool:
    """True on every rank when it is true on any rank (a stop that every rank must take)."""
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())

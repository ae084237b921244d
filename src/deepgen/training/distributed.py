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
def average_gradients(params: Sequence[nn.Parameter], size: int) -> None:
    """Replace each gradient by its mean over the ranks: one all-reduce of one flat buffer."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= size
    chunks = flat.split([g.numel() for g in grads])
    torch._foreach_copy_(grads, [c.view_as(g) for c, g in zip(chunks, grads)])


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

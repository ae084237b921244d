"""CUDA-graph capture of a phase's optimizer step (``TrainConfig.cuda_graph``).

Small models are launch-bound on a GPU: a GAN step on 2-D data is a few hundred kernels of
a few microseconds each, and the host spends more time launching them than the GPU spends
running them (WGAN-GP on MNIST: 47 ms of host time per step against 6.8 ms of GPU time,
benchmarks/RESULTS.md). A CUDA graph records the kernels of one phase step (loss, backward,
optimizer step, the after-step hook and the log accumulation) once and replays them with
one launch (PyTorch, "CUDA Graphs: whole-network capture").

What replay needs, and how the trainer provides it:

* static shapes and addresses: the loader drops the last partial batch, and each phase's
  batch is copied into the graph's own input buffers (:class:`PhaseGraph`);
* no host synchronisation inside the step (the model contract: logs are device tensors);
* optimizers whose step runs on the device: Adam/AdamW/RMSprop with ``capturable=True``
  and a tensor learning rate, which the lr schedule updates in place
  (:func:`build_optimizer`); SGD keeps a float lr, so it is fixed at capture;
* warm-up: each phase runs eagerly a few times on the capture stream before it is
  captured (optimizer moments, cuBLAS workspaces and autograd's stream state are created
  lazily, and allocations made during capture must not be first-time ones);
* random draws (noise, dropout, interpolates) come from the default CUDA generator, which
  torch advances at each replay, so every replay draws new numbers.

Each graph keeps a private memory pool: a phase's activations and gradients live there
between replays (memory for speed; the eager step frees them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..data import Batch
from ..errors import UserError
from ..models.base import OptimizerSpec

# Eager runs of a phase before it is captured (PyTorch's whole-network example warms up 3).
WARMUP_RUNS = 3

# Optimizer flags that say how a step is computed, not what it computes: a checkpoint keeps
# the moments and hyperparameters, the running optimizer keeps its own implementation.
_IMPLEMENTATION_KEYS = ("fused", "foreach", "capturable", "differentiable")


def build_optimizer(spec: OptimizerSpec, params: Sequence[nn.Parameter], device: torch.device, graph: bool = False) -> torch.optim.Optimizer:
    """A torch optimizer from a phase's spec: fused Adam on CUDA, foreach elsewhere.

    ``graph``: the step will be captured in a CUDA graph, so the optimizer keeps its step
    count on the device (``capturable``) and its lr in a device tensor that the schedule
    updates in place (SGD has no capturable mode: its float lr is fixed at capture).
    """
    fast: dict[str, Any] = {"fused": True} if device.type == "cuda" else {"foreach": True}
    lr: float | torch.Tensor = torch.tensor(spec.lr, device=device) if graph and spec.name != "sgd" else spec.lr
    if graph:
        fast["capturable"] = True
    if spec.name in ("adam", "adamw"):
        cls = torch.optim.Adam if spec.name == "adam" else torch.optim.AdamW
        return cls(params, lr=lr, betas=tuple(spec.betas), eps=spec.eps, weight_decay=spec.weight_decay, **fast)
    if spec.name == "rmsprop":
        capturable = {"capturable": True} if graph else {}
        return torch.optim.RMSprop(params, lr=lr, eps=spec.eps, momentum=spec.momentum, weight_decay=spec.weight_decay, foreach=True, **capturable)
    return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay, foreach=True)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr: in place for a tensor lr (a captured step reads that tensor)."""
    for group in opt.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def optimizer_state(opt: torch.optim.Optimizer) -> dict[str, Any]:
    """``opt.state_dict()`` with every lr as a float (a checkpoint holds no device lr)."""
    sd = opt.state_dict()
    for group in sd["param_groups"]:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"] = float(group["lr"])
    return sd


def load_optimizer_state(opt: torch.optim.Optimizer, sd: dict[str, Any]) -> None:
    """Load saved moments and hyperparameters, keeping ``opt``'s implementation.

    ``Optimizer.load_state_dict`` takes the saved groups whole, flags included, so a
    checkpoint written by a fused or captured GPU run would make a CPU run capturable (an
    error) and turn a graph's tensor lr into a float (the graph would never see the
    schedule). Here the running optimizer's flags and lr object are kept; the step counts
    move where the implementation expects them.
    """
    kept = [({k: g[k] for k in _IMPLEMENTATION_KEYS if k in g}, g["lr"]) for g in opt.param_groups]
    opt.load_state_dict(sd)
    for group, (flags, lr) in zip(opt.param_groups, kept):
        saved_lr = float(group["lr"])
        group.update(flags)
        if isinstance(lr, torch.Tensor):
            lr.fill_(saved_lr)
            group["lr"] = lr
        else:
            group["lr"] = saved_lr
        on_device = bool(group.get("fused") or group.get("capturable"))
        for p in group["params"]:
            state = opt.state.get(p, {})
            if isinstance(state.get("step"), torch.Tensor):
                state["step"] = state["step"].to(device=p.device if on_device else "cpu", dtype=torch.float32)


class PhaseGraph:
    """One phase step captured in a CUDA graph; :meth:`replay` runs it on a new batch.

    ``run(batch)`` is the eager phase step (it must already have run ``WARMUP_RUNS`` times
    on ``stream``); it is called once here, under capture, on a copy of ``batch`` whose
    buffers the graph reads at every replay.
    """

    def __init__(self, run: Callable[[Batch], None], batch: Batch, stream: torch.cuda.Stream, name: str) -> None:
        self.static = Batch(batch.x.clone(), None if batch.y is None else batch.y.clone())
        self.graph = torch.cuda.CUDAGraph()
        try:
            # "thread_local": only this thread's CUDA calls are checked during capture. A
            # streaming loader's pin-memory thread allocates pinned host memory meanwhile,
            # which the default ("global") mode turns into a failed capture.
            with torch.cuda.graph(self.graph, stream=stream, capture_error_mode="thread_local"):
                run(self.static)
        except RuntimeError as e:  # a host sync or an uncapturable op in the model's step
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(
                f"the {name!r} step cannot be captured in a CUDA graph ({reason}). "
                "Train this model with cuda_graph=false."
            ) from None

    def replay(self, batch: Batch) -> None:
        """Copy ``batch`` (same shapes as at capture) into the graph's inputs and run it."""
        self.static.x.copy_(batch.x)
        if self.static.y is not None and batch.y is not None:
            self.static.y.copy_(batch.y)
        self.graph.replay()

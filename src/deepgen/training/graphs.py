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

from collections.abc import Callable

import torch

from ..data import Batch
from ..errors import UserError
from ..optim import build_optimizer, load_optimizer_state, optimizer_state, set_lr

__all__ = ["WARMUP_RUNS", "PhaseGraph", "build_optimizer", "load_optimizer_state", "optimizer_state", "set_lr"]

# Eager runs of a phase before it is captured (PyTorch's whole-network example warms up 3).
WARMUP_RUNS = 3


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

"""Small helpers shared by several test files (pytest puts tests/ on the import path)."""

from __future__ import annotations

import torch

from deepgen.data.dataset import Batch
from deepgen.models.base import GenerativeModel


def fit_one_phase(
    model: GenerativeModel,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    steps: int = 200,
    batch: int = 64,
    seed: int = 0,
    lr: float | None = None,
) -> None:
    """Plain Adam on the model's one phase over ``x`` (N, ...) and labels ``y`` (N,) or None,
    random batches drawn with ``seed`` (the trainer's job, reduced to a loop). ``lr``: the
    phase's own when None."""
    (phase,) = model.phases()
    opt = torch.optim.Adam(phase.parameters, lr=phase.optimizer.lr if lr is None else lr)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(x), (batch,), generator=g)
        out = model.loss(Batch(x[idx], None if y is None else y[idx]), phase.name)
        opt.zero_grad()
        out.loss.backward()
        opt.step()

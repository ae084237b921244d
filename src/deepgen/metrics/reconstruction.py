"""Reconstruction error: squared error, binary cross-entropy and PSNR, per example.

Pure functions: ``x`` and ``x_hat`` are (N, *shape) tensors in model space (``x_hat`` the
output mean a model reconstructs); each returns one value per example, (N,). Averaging
over examples (and its standard error) is the caller's job.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F


def _check(x: torch.Tensor, x_hat: torch.Tensor) -> None:
    if x.shape != x_hat.shape:
        raise ValueError(f"x {tuple(x.shape)} and x_hat {tuple(x_hat.shape)} must have the same shape")
    if x.dim() < 1 or len(x) == 0:
        raise ValueError("need at least one example (N, *shape)")


def mse(x: torch.Tensor, x_hat: torch.Tensor, reduction: Literal["mean", "sum"] = "mean") -> torch.Tensor:
    """Squared error per example: (N, *shape), (N, *shape) -> (N,).

    ``reduction="mean"`` averages over the example's D elements (the usual MSE);
    ``"sum"`` sums them (the fixed-variance Gaussian NLL up to scale and constant).
    """
    _check(x, x_hat)
    err = (x_hat.float() - x.float()).pow(2).reshape(len(x), -1)  # (N, D)
    if reduction == "mean":
        return err.mean(dim=1)
    if reduction == "sum":
        return err.sum(dim=1)
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def bce(x: torch.Tensor, p_hat: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Binary cross-entropy per example, summed over elements, in nats: -> (N,).

    ``x`` (N, *shape) targets in [0, 1] (binary pixels); ``p_hat`` (N, *shape) predicted
    probabilities, clamped to [eps, 1 - eps] so a confident wrong pixel costs at most
    -log(eps) nats instead of infinity. For binary ``x`` this is the Bernoulli negative
    log-likelihood of ``x`` under the factorised distribution with means ``p_hat``.
    """
    _check(x, p_hat)
    p = p_hat.float().clamp(eps, 1.0 - eps)
    return F.binary_cross_entropy(p, x.float(), reduction="none").reshape(len(x), -1).sum(dim=1)


def psnr(x: torch.Tensor, x_hat: torch.Tensor, data_range: float = 1.0, eps: float = 1e-10) -> torch.Tensor:
    """Peak signal-to-noise ratio per example in dB: 10 log10(range^2 / MSE) -> (N,).

    ``data_range`` is max - min of the data (1 for [0, 1] images). A perfect
    reconstruction has MSE 0; it is floored at ``eps`` so the result is finite
    (100 dB for range 1 and the default eps).
    """
    m = mse(x, x_hat).clamp_min(eps)
    return 10.0 * (2.0 * math.log10(data_range) - torch.log10(m))

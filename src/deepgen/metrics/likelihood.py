"""Likelihood figures: bits per dimension and the standard error of a mean.

Pure functions (tensors or numbers in, numbers or tensors out); they know nothing of
models or datasets. The evaluator (:mod:`deepgen.metrics.evaluate`) feeds them the
per-example log-likelihoods a model reports.

Units. A negative log-likelihood (NLL) is in nats per example, summed over the example's
``D`` dimensions. Bits per dimension divide by ``D ln 2``. For a density model of 8-bit
images rescaled to [0, 1], the discrete NLL of the integer pixels is bounded by the
density's NLL plus ``D ln 256`` (uniform dequantization: each integer level is a bin of
width 1/256 in [0, 1]; Theis et al. 2016, "A note on the evaluation of generative
models", section 3.1; Dinh et al. 2017, RealNVP, section 4.1), giving the figure every
flow paper reports (BENCHMARKS.md):

    bpd = (NLL_nats / D + ln 256) / ln 2.
"""

from __future__ import annotations

import math
from typing import overload

import torch

LN2 = math.log(2.0)


@overload
def bits_per_dim(nll_nats: torch.Tensor, dim: int, num_levels: int | None = ..., dequantized: bool = ...) -> torch.Tensor: ...
@overload
def bits_per_dim(nll_nats: float, dim: int, num_levels: int | None = ..., dequantized: bool = ...) -> float: ...


def bits_per_dim(
    nll_nats: torch.Tensor | float,
    dim: int,
    num_levels: int | None = None,
    dequantized: bool = False,
) -> torch.Tensor | float:
    """Convert a negative log-likelihood per example (nats) to bits per dimension.

    ``nll_nats``: a number, or a tensor of any shape (e.g. (N,) per-example NLLs); the
    result has the same type and shape. ``dim``: the number of scalar dimensions ``D`` of
    one example (``DataSpec.dim``, 784 for MNIST).

    * ``dequantized=False`` (discrete models, e.g. a Bernoulli decoder on binary pixels, a
      256-way softmax on 8-bit pixels, or densities on unbounded real data):
      ``bpd = NLL / (D ln 2)``; ``num_levels`` is ignored.
    * ``dequantized=True`` (a density model of quantised data rescaled to [0, 1], each of
      the ``num_levels`` levels a bin of width ``1 / num_levels``; default 256 levels):
      ``bpd = (NLL / D + ln num_levels) / ln 2``, the uniform-dequantization bound on the
      discrete NLL (Theis et al. 2016, sec. 3.1). The NLL must already include the
      log-determinant of any logit transform the model applies.

    >>> round(bits_per_dim(784 * math.log(2), 784), 6)
    1.0
    >>> round(bits_per_dim(0.0, 3072, dequantized=True), 6)
    8.0
    """
    if dim <= 0:
        raise ValueError(f"dim must be a positive number of dimensions, got {dim}")
    per_dim = nll_nats / dim
    if dequantized:
        levels = 256 if num_levels is None else num_levels
        if levels < 2:
            raise ValueError(f"num_levels must be >= 2, got {levels}")
        per_dim = per_dim + math.log(levels)
    return per_dim / LN2


def mean_and_sem(values: torch.Tensor) -> tuple[float, float]:
    """Mean and standard error of the mean of ``values`` (N,) (any shape is flattened).

    SEM = s / sqrt(N) with the unbiased sample standard deviation ``s``; NaN when N < 2
    (one value says nothing about the spread). Computed in float64 so that 10,000 NLLs of
    ~90 nats lose no digits.
    """
    v = values.detach().reshape(-1).double()
    n = v.numel()
    if n == 0:
        raise ValueError("mean_and_sem needs at least one value")
    mean = v.mean().item()
    if n < 2:
        return mean, float("nan")
    return mean, (v.std(unbiased=True) / math.sqrt(n)).item()

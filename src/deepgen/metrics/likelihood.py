"""Likelihood figures: bits per dimension and the standard error of a mean.

Pure functions (tensors or numbers in, numbers or tensors out); they know nothing of
models or datasets. The evaluator (:mod:`deepgen.metrics.evaluate`) feeds them the
per-example log-likelihoods a model reports.

Units. A negative log-likelihood (NLL) is in nats per example, summed over the example's
``D`` dimensions. Bits per dimension divide by ``D ln 2``.

Densities of quantised data. The data layer dequantizes levels k in 0..L-1 to
y = (k + u) / L in [0, 1), u ~ U[0, 1)^D (:func:`deepgen.data.dequantize`; the flow
papers' convention, BENCHMARKS.md), so level k owns the bin [k / L, (k + 1) / L) of width
Delta = 1 / L (``DataSpec.bin_width``). A density model p gives the level the probability
``P(k) = int_bin p``, and by Jensen's inequality (Theis et al. 2016, "A note on the
evaluation of generative models", section 3.1; Dinh et al. 2017, RealNVP, section 4.1)

    -log P(k) <= -E_u[log p((k + u) / L)] - D log Delta.

The evaluator draws one ``u`` per example and passes the density's mean NLL at those
points with ``bin_width=Delta`` to :func:`bits_per_dim`:

    bpd = (NLL_nats / D - ln Delta) / ln 2 = (NLL_nats / D + ln L) / ln 2,

an upper bound on the discrete NLL in bits/dim (in expectation over ``u``; the mean over
the test set is its unbiased estimate, and for an IWAE-bounded density it is looser
still). For 8-bit data Delta = 1/256: the published tables' figure.
"""

from __future__ import annotations

import math
from typing import overload

import torch

LN2 = math.log(2.0)


@overload
def bits_per_dim(nll_nats: torch.Tensor, dim: int, *, bin_width: float | None = ...) -> torch.Tensor: ...
@overload
def bits_per_dim(nll_nats: float, dim: int, *, bin_width: float | None = ...) -> float: ...


def bits_per_dim(
    nll_nats: torch.Tensor | float,
    dim: int,
    *,
    bin_width: float | None = None,
) -> torch.Tensor | float:
    """Convert a negative log-likelihood per example (nats) to bits per dimension.

    ``nll_nats``: a number, or a tensor of any shape (e.g. (N,) per-example NLLs); the
    result has the same type and shape. ``dim``: the number of scalar dimensions ``D`` of
    one example (``DataSpec.dim``, 784 for MNIST).

    * ``bin_width=None`` (probabilities of discrete values, e.g. a Bernoulli decoder on
      binary pixels, a 256-way softmax or a discretized logistic mixture on 8-bit pixels;
      or densities of unbounded real data): ``bpd = NLL / (D ln 2)``.
    * ``bin_width=Delta`` (a density model of quantised data whose levels were dequantized
      into bins of width Delta, ``DataSpec.bin_width`` = 1 / L):
      ``bpd = (NLL / D - ln Delta) / ln 2``. With ``NLL`` the density's mean NLL at
      dequantized points ``(k + u) / L``, this is an upper bound on the discrete NLL
      -log P(k) in bits/dim (Theis et al. 2016, sec. 3.1; see the module docstring). The NLL must already include the log-determinant of any
      transform the model applies to its input.

    >>> round(bits_per_dim(784 * math.log(2), 784), 6)
    1.0
    >>> round(bits_per_dim(0.0, 3072, bin_width=1 / 256), 6)  # uniform density, 256 bins
    8.0
    >>> round(bits_per_dim(0.0, 64, bin_width=1 / 17), 6)  # 17 levels: bins of 1/17
    4.087463
    """
    if dim <= 0:
        raise ValueError(f"dim must be a positive number of dimensions, got {dim}")
    per_dim = nll_nats / dim
    if bin_width is not None:
        if not (math.isfinite(bin_width) and bin_width > 0):
            raise ValueError(f"bin_width must be a positive number, got {bin_width}")
        per_dim = per_dim - math.log(bin_width)
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

"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: fast solver for guided sampling of
diffusion probabilistic models", algorithm 2): a second-order multistep solver of the
diffusion ODE in its data-prediction form, good samples in 10-20 steps.

With alpha = sqrt(abar), sigma = sqrt(1 - abar), lambda = log(alpha / sigma) and
h_i = lambda_{t_i} - lambda_{t_{i-1}}:

    D_i = x0_i                                              (first step)
    D_i = (1 + 1 / (2 r_i)) x0_i - 1 / (2 r_i) x0_{i-1},   r_i = h_{i-1} / h_i   (after)
    x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) x - alpha_{t_i} (exp(-h_i) - 1) D_i.

The last step goes to the clean data (sigma = 0, lambda = inf) and is first order there
(diffusers' ``lower_order_final``): it returns the final x0 estimate. Default timesteps
``spacing="trailing"`` (start at T - 1, as diffusers' default ``linspace`` does).
"""

from __future__ import annotations

import torch

from .base import Sampler, register


@register("dpm-solver++")
class DPMSolverPP(Sampler):
    """DPM-Solver++(2M), deterministic."""

    default_spacing = "trailing"
    fixed_eta = 0.0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._x0_prev: torch.Tensor | None = None
        self._h_prev: torch.Tensor | None = None

    def step(self, i: int, x: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if i == len(self) - 1:
            return x0
        a, b = self._coefficients(i, x)  # abar at t (from) and at s (to)
        lam_t = 0.5 * (a.log() - (1 - a).log())
        lam_s = 0.5 * (b.log() - (1 - b).log())
        h = lam_s - lam_t
        d = x0
        if self._x0_prev is not None and self._h_prev is not None:
            r = self._h_prev / h
            d = (1 + 1 / (2 * r)).to(x.dtype) * x0 - (1 / (2 * r)).to(x.dtype) * self._x0_prev
        self._x0_prev, self._h_prev = x0, h
        dt = x.dtype
        return ((1 - b) / (1 - a)).sqrt().to(dt) * x - (b.sqrt() * torch.expm1(-h)).to(dt) * d

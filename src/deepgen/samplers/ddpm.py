"""Ancestral sampling of DDPM (Ho et al. 2020, algorithm 2), on any subset of timesteps.

Each step draws x_s ~ q(x_s | x_t, x_0 = x0_hat), the forward process's posterior with the
network's estimate of x_0 (eq. 7; the variance sigma_t^2 = beta~_t, the "small" choice of
sec. 3.2). With fewer steps than T the chain runs on the respaced process of Nichol &
Dhariwal 2021 (sec. 4): between consecutive chosen timesteps t > s the posterior of that
pair (:meth:`NoiseSchedule.posterior`), so S = T is Ho et al.'s sampler exactly.
"""

from __future__ import annotations

import torch

from .base import Sampler, gaussian_noise, register


@register("ddpm")
class DDPMSampler(Sampler):
    """Ancestral DDPM: x_s = mean(x_t, x0_hat) + sqrt(var) z, no noise on the last step."""

    default_spacing = "trailing"
    fixed_eta = 1.0

    def step(self, i: int, x: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        mean, var = self.schedule.posterior(x0, x, self.timesteps[i], self.prev[i])
        if i == len(self) - 1:
            return mean  # s = -1: the mean is x0_hat and the variance 0
        return mean + var.sqrt() * gaussian_noise(x, generator)

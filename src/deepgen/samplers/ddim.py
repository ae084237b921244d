"""DDIM (Song et al. 2021, "Denoising diffusion implicit models"), eq. 12, with eta.

From x_t and the estimates (x0_hat, eps_hat), with a = abar_t and b = abar_s at the next
chosen timestep s:

    x_s = sqrt(b) x0_hat + sqrt(1 - b - sigma^2) eps_hat + sigma z,
    sigma = eta sqrt((1 - b) / (1 - a)) sqrt(1 - a / b)     (eq. 16).

eta = 0 is deterministic (an ODE sampler: x_T encodes x_0); eta = 1 has the variance of the
DDPM posterior of (t, s), and with every timestep it is DDPM's ancestral sampler. The
timesteps follow the paper's spacing (``spacing="uniform"``: tau_i = floor(i T / S), i =
1..S over its timesteps 1..T, appendix D.2; ours, 0-indexed, start at T - 1); ``"quadratic"``
is its CIFAR-10 choice. The last step goes to abar = 1 (b = 1, sigma = 0) and returns
x0_hat: with one step, the x0 estimate at T - 1.
"""

from __future__ import annotations

import torch

from .base import Sampler, gaussian_noise, register


@register("ddim")
class DDIMSampler(Sampler):
    """DDIM with noise scale ``eta`` (0: deterministic)."""

    default_spacing = "uniform"

    def sigma(self, i: int, like: torch.Tensor) -> torch.Tensor:
        """sigma of step i (eq. 16), float64, shaped to broadcast against ``like``."""
        a, b = self._coefficients(i, like)
        return self.eta * ((1 - b) / (1 - a) * (1 - a / b)).clamp_min(0).sqrt()

    def step(self, i: int, x: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        a, b = self._coefficients(i, x)
        sigma = self.sigma(i, x)
        dt = x.dtype
        out = b.sqrt().to(dt) * x0 + (1 - b - sigma**2).clamp_min(0).sqrt().to(dt) * eps
        if self.eta == 0 or i == len(self) - 1:  # the last step's sigma is 0 (b = 1)
            return out
        return out + sigma.to(dt) * gaussian_noise(x, generator)

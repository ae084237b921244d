"""Diffusion samplers: one reverse-process algorithm per file behind one ``step`` API.

* :mod:`.schedule`: the forward process (linear and cosine betas, q(x_t | x_0), the
  posterior, the eps / x0 / v conversions);
* :mod:`.base`: the timestep spacings, the :class:`Sampler` base and :func:`make_sampler`;
* :mod:`.ddpm` (ancestral, Ho et al. 2020), :mod:`.ddim` (Song et al. 2021, with eta),
  :mod:`.dpm_solver` (DPM-Solver++(2M), Lu et al. 2022).

torch only, no parameters (DESIGN.md: the samplers sit beside ``nn`` and import neither it
nor the models).
"""

from __future__ import annotations

from . import ddim, ddpm, dpm_solver  # noqa: F401  (registration by import)
from .base import SAMPLERS, SPACINGS, Sampler, make_sampler, spaced_timesteps, usable_timesteps
from .schedule import PREDICTIONS, SCHEDULES, NoiseSchedule

__all__ = ["PREDICTIONS", "SAMPLERS", "SCHEDULES", "SPACINGS", "NoiseSchedule", "Sampler", "make_sampler", "spaced_timesteps", "usable_timesteps"]

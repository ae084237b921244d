"""What every sampler shares: the timestep spacings and the one ``step`` API.

A sampler is one reverse-process algorithm (one file each: ddpm.py, ddim.py,
dpm_solver.py), built for a :class:`~deepgen.samplers.schedule.NoiseSchedule` and a number
of steps S. Its ``timesteps`` (S,) run from high noise down; the model's loop is

    x = noise
    for i, t in enumerate(sampler.timesteps):
        x0, eps = the network's estimates at (x, t)
        x = sampler.step(i, x, x0, eps, generator)

and after the last step x is the sample (step S - 1 goes to t = -1, the clean data).
Like diffusers' schedulers the loop is the same for every algorithm; unlike them a step
takes both estimates (the model converts its prediction once, after clipping x0), and a
sampler holds no parameters (torch only). Multistep solvers keep their history in the
instance: build one per sampling call (:func:`make_sampler`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch

from ..registry import Registry
from .schedule import NoiseSchedule

SAMPLERS: Registry[type] = Registry("sampler")
SPACINGS = ("auto", "uniform", "quadratic", "trailing")
LAMBDA_MIN = -5.1  # the lowest log-SNR half-ratio a sampler starts from (see Sampler)


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make a sampler available under ``name`` (``sampler=name``)."""
    return SAMPLERS.register(name)


def spaced_timesteps(T: int, steps: int, spacing: str) -> torch.Tensor:
    """S = ``steps`` timesteps of 0..T-1, descending (int64 (S,)), the first (noisiest) T - 1:

    * ``uniform``: tau_i = floor(i T / S) - 1, i = 1..S, the DDIM paper's linear spacing
      (Song et al. 2021, appendix D.2: tau_i = floor(c i) with c chosen so that the last
      tau_S is T, over its 1-indexed timesteps 1..T; ours are 0-indexed, hence the - 1).
      50 of 1000: 999, 979, ..., 19; 1 of T: T - 1 alone.
    * ``quadratic``: tau_i = floor(i^2 T / S^2) - 1, i = 1..S, the paper's quadratic spacing
      (tau_i = floor(c i^2), tau_S = T; its CIFAR-10 choice). Distinct timesteps need
      S^2 <= T (S <= 31 of 1000), other S < T are refused.
    * ``trailing``: tau_i = round(T - i T / S) - 1, i = 0..S-1 (Lin et al. 2024, "Common
      diffusion noise schedules and sample steps are flawed", table 2; diffusers'
      ``timestep_spacing="trailing"``): the same as ``uniform`` when S divides T, rounding
      instead of flooring otherwise.

    Every spacing starts at T - 1, where x_T ~ N(0, I) is (nearly) the marginal, and the
    samplers' last step goes from tau_1 to t = -1 (abar = 1, the clean data). The DDIM
    authors' code, ``range(0, T, T // S)`` (diffusers' ``"leading"``), starts instead at
    T - T // S and ends at 0: with S = 1 it is the single timestep 0 (abar_0 = 1 - beta_0),
    which reads the noise x_T as almost clean data (its x0 estimate (x_T - sqrt(1 - abar_0)
    eps) / sqrt(abar_0) is about x_T), so one step returned the (clipped) noise; the paper's
    own rule, tau_S = T, starts from pure noise for every S.

    S = T gives every timestep for each spacing."""
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in 1..{T} (the process's timesteps), got {steps}")
    i = torch.arange(1, steps + 1, dtype=torch.int64)  # the paper's i = 1..S (exact integer arithmetic)
    if spacing == "uniform":
        tau = i * T // steps - 1
    elif spacing == "quadratic":
        tau = i - 1 if steps == T else i * i * T // (steps * steps) - 1
        if int(tau[0]) < 0 or bool((tau[1:] <= tau[:-1]).any()):
            raise ValueError(
                f"quadratic spacing repeats timesteps at steps={steps} over {T} timesteps (it needs steps^2 <= {T}); "
                "use fewer steps or spacing=uniform"
            )
    elif spacing == "trailing":
        tau = torch.round(T - (i - 1).double() * T / steps).long() - 1
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; use one of {SPACINGS}")
    return tau.flip(0) if spacing != "trailing" else tau


def usable_timesteps(schedule: NoiseSchedule, lambda_min: float = LAMBDA_MIN) -> int:
    """How many of the timesteps 0..T-1 have lambda_t = log(sqrt(abar_t) / sqrt(1 - abar_t))
    >= ``lambda_min``: the samplers' spacings run over those (see :class:`Sampler`)."""
    # In the tables' own dtype, not .double(): on Apple's MPS the tables are float32 (it has
    # no float64, NoiseSchedule.to) and converting them raised, so no sampler could be built
    # there; float32 places the threshold at the same timestep (lambda is far from -5.1 in ulps).
    abar = schedule.abar[1:]
    return int((0.5 * (abar.log() - torch.log1p(-abar)) >= lambda_min).sum())  # lambda falls with t: a prefix


class Sampler:
    """Base of the samplers: ``timesteps`` (S,) descending, ``prev[i]`` the timestep step i
    goes to (``timesteps[i + 1]``, -1 after the last), and :meth:`step`.

    ``spacing="auto"`` takes the sampler's :attr:`default_spacing`. ``eta`` is DDIM's
    noise scale (the other samplers refuse a value other than their own).

    The spacing runs over the timesteps whose log signal-to-noise half-ratio lambda_t =
    log(sqrt(abar_t) / sqrt(1 - abar_t)) is at least ``lambda_min`` (-5.1, diffusers'
    ``lambda_min_clipped`` for the cosine schedule): where abar_t is ~1e-9 (the cosine
    schedule's last steps) an eps network's x0 estimate (x_t - sqrt(1 - abar) eps) /
    sqrt(abar) multiplies its error by 1 / sqrt(abar_t) ~ 4e4, and a sampler starting there
    scatters samples far from the data. The linear schedule at T = 1000 (abar_{999} = 4e-5,
    lambda = -5.06) keeps every timestep; at smaller T its rescaled betas lose a few (16 of
    20, 198 of 200). With more steps than usable timesteps the spacing runs over all T
    instead (the full process from T - 1; the clip gives way rather than the step count).
    """

    default_spacing: ClassVar[str] = "uniform"
    #: The eta this sampler is (None: any eta; the DDIM family).
    fixed_eta: ClassVar[float | None] = None

    def __init__(
        self, schedule: NoiseSchedule, steps: int, *, eta: float | None = None, spacing: str = "auto", lambda_min: float = LAMBDA_MIN
    ) -> None:
        name = getattr(type(self), "registered_name", type(self).__name__)
        if eta is not None and self.fixed_eta is not None and eta != self.fixed_eta:
            raise ValueError(f"the {name} sampler has no eta setting (it is eta = {self.fixed_eta:g}); use sampler=ddim for eta")
        self.schedule = schedule
        self.eta = self.fixed_eta if self.fixed_eta is not None else (0.0 if eta is None else float(eta))
        if not self.eta >= 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.spacing = self.default_spacing if spacing == "auto" else spacing
        device = schedule.abar.device
        usable = usable_timesteps(schedule, lambda_min)
        # More steps than usable timesteps cannot all fit below the clip: they run over all T
        # (the full process, from T - 1, as Ho et al. sample), the clip giving way.
        self.timesteps = spaced_timesteps(usable if steps <= usable else len(schedule.abar) - 1, steps, self.spacing).to(device)
        self.prev = torch.cat([self.timesteps[1:], torch.full((1,), -1, dtype=torch.long, device=device)])

    def __len__(self) -> int:
        return len(self.timesteps)

    def step(self, i: int, x: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """From x at ``timesteps[i]`` (N, ...) and the network's estimates x0, eps there, x
        at ``prev[i]`` (the sample itself after the last step)."""
        raise NotImplementedError

    def _coefficients(self, i: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(abar_t, abar_s) of step i (t = timesteps[i], s = prev[i]), float64, shaped to broadcast against ``like``."""
        a = self.schedule.alpha_bar(torch.stack([self.timesteps[i], self.prev[i]]))
        shape = (1,) * like.dim()
        return a[0].reshape(shape), a[1].reshape(shape)


def make_sampler(name: str, schedule: NoiseSchedule, steps: int, *, eta: float | None = None, spacing: str = "auto") -> Sampler:
    """A fresh sampler ``name`` (ddpm, ddim, dpm-solver++) for ``schedule`` and ``steps``.
    An unknown name is one :class:`~deepgen.errors.UserError` listing the known ones."""
    return SAMPLERS.get(name)(schedule, steps, eta=eta, spacing=spacing)


def gaussian_noise(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise of ``like``'s shape, dtype and device."""
    return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)

"""The forward (noising) process of a DDPM and its closed forms (Ho et al. 2020).

Timesteps are 0-indexed, t in 0..T-1 (the DDIM and diffusers code's convention; Ho et
al.'s t is ours + 1): x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) with
abar_t = prod_{s <= t} (1 - beta_s). The index t = -1 stands for the clean data
(abar_{-1} = 1), the end of every reverse process, so one formula covers the last step.

All coefficients are kept in float64 and cast at use: abar_t near 0 or 1 loses digits in
float32 (1 - abar_0 = beta_0 = 1e-4).
"""

from __future__ import annotations

import math

import torch

PREDICTIONS = ("eps", "x0", "v")
SCHEDULES = ("linear", "cosine")


def linear_betas(steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Ho et al. 2020 (sec. 4): betas linear from ``beta_start`` to ``beta_end`` over
    ``steps`` timesteps (their values are for T = 1000; other T rescale them by 1000 / T,
    as Nichol & Dhariwal 2021's code does, so the process ends near pure noise for any T;
    clipped to 0.999 as the cosine schedule, which only matters for T < 50)."""
    scale = 1000.0 / steps
    return torch.linspace(scale * beta_start, scale * beta_end, steps, dtype=torch.float64).clamp(max=0.999)


def cosine_betas(steps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal 2021 (eq. 17): abar(t) = f(t) / f(0), f(t) = cos^2(((t / T + s) /
    (1 + s)) pi / 2); beta_t = 1 - abar_t / abar_{t-1}, clipped to ``max_beta`` (their
    0.999: the last betas would otherwise reach 1)."""
    t = torch.arange(steps + 1, dtype=torch.float64) / steps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


class NoiseSchedule:
    """The coefficients of q for betas (T,): ``abar`` (T + 1,) holds abar_{-1} = 1 first,
    so ``self.alpha_bar(t)`` takes t in -1..T-1. Holds no parameters; ``to(device)`` moves
    its tables (done once by the model, so no step copies them)."""

    def __init__(self, betas: torch.Tensor) -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() < 1 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must be a non-empty sequence of values in (0, 1)")
        self.betas = betas
        self.T = int(betas.numel())
        self.abar = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])

    @classmethod
    def from_tables(cls, betas: torch.Tensor, abar: torch.Tensor) -> NoiseSchedule:
        """A schedule over tables already computed (``abar`` with abar_{-1} = 1 first), kept
        as they are (no copy): how a model wraps its buffers."""
        sched = cls.__new__(cls)
        sched.betas, sched.abar, sched.T = betas, abar, int(betas.numel())
        return sched

    @classmethod
    def make(cls, kind: str, steps: int) -> NoiseSchedule:
        """``kind`` "linear" (Ho et al. 2020) or "cosine" (Nichol & Dhariwal 2021) over ``steps``."""
        if kind == "linear":
            return cls(linear_betas(steps))
        if kind == "cosine":
            return cls(cosine_betas(steps))
        raise ValueError(f"unknown noise schedule {kind!r}; use one of {SCHEDULES}")

    def to(self, device: torch.device | str) -> NoiseSchedule:
        """Move the tables to ``device`` (float32 on Apple's MPS, which has no float64)."""
        dt = torch.float32 if torch.device(device).type == "mps" else torch.float64
        self.betas, self.abar = self.betas.to(device, dt), self.abar.to(device, dt)
        return self

    # -- coefficients (float64, cast to the data's dtype as the last step) -------------------
    def alpha_bar(self, t: torch.Tensor | int, like: torch.Tensor | None = None) -> torch.Tensor:
        """abar_t for t (any shape, -1..T-1) in float64; given ``like`` (N, ...), shaped
        (N, 1, ..., 1) to broadcast against it (still float64)."""
        t = torch.as_tensor(t, device=self.abar.device)
        a = self.abar[t.long() + 1]
        return a if like is None else a.reshape(-1, *([1] * (like.dim() - 1)))

    def _per_example(self, t: torch.Tensor | int, n: int) -> torch.Tensor:
        """A timestep for each of n examples: (n,) int64 from an int or an (n,) tensor."""
        t = torch.as_tensor(t, device=self.abar.device).long()
        return t.expand(n) if t.dim() == 0 else t

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise (Ho et al. eq. 4): x0, noise (N, ...), t (N,)."""
        a = self.alpha_bar(t, x0)
        return a.sqrt().to(x0.dtype) * x0 + (1 - a).sqrt().to(x0.dtype) * noise

    def posterior(
        self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor | int, s: torch.Tensor | int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q(x_s | x_t, x_0) for s < t (default s = t - 1): its mean (N, ...) and variance
        (N, 1, ...). Ho et al. eqs. 6-7 with abar_t / abar_s in place of alpha_t, which is
        the posterior of any pair of timesteps (Nichol & Dhariwal 2021's respacing):

            mean = sqrt(abar_s) b / (1 - abar_t) x_0 + sqrt(abar_t / abar_s) (1 - abar_s) / (1 - abar_t) x_t,
            var = (1 - abar_s) / (1 - abar_t) b,     b = 1 - abar_t / abar_s.

        At s = -1 (abar_s = 1) the mean is x_0 and the variance 0."""
        t = self._per_example(t, len(xt))
        s = t - 1 if s is None else self._per_example(s, len(xt))
        at, as_ = self.alpha_bar(t, xt), self.alpha_bar(s, xt)
        b = 1 - at / as_
        c0 = as_.sqrt() * b / (1 - at)
        ct = (at / as_).sqrt() * (1 - as_) / (1 - at)
        dt = xt.dtype
        return c0.to(dt) * x0 + ct.to(dt) * xt, ((1 - as_) / (1 - at) * b).to(dt)

    # -- what the network predicts ---------------------------------------------------------
    def target(self, prediction: str, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The regression target of the training loss: the noise (``eps``, Ho et al.), the
        data (``x0``) or the velocity v = sqrt(abar) eps - sqrt(1 - abar) x_0 (``v``,
        Salimans & Ho 2022, sec. 4)."""
        if prediction == "eps":
            return noise
        if prediction == "x0":
            return x0
        if prediction == "v":
            a = self.alpha_bar(t, x0)
            return a.sqrt().to(x0.dtype) * noise - (1 - a).sqrt().to(x0.dtype) * x0
        raise ValueError(f"unknown prediction {prediction!r}; use one of {PREDICTIONS}")

    def split(self, prediction: str, out: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's output -> (x_0, eps) estimates, both (N, ...), from
        x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps (and, for v, x_0 = sqrt(abar) x_t -
        sqrt(1 - abar) v, eps = sqrt(abar) v + sqrt(1 - abar) x_t)."""
        a = self.alpha_bar(t, xt)
        ra, rb = a.sqrt().to(xt.dtype), (1 - a).sqrt().to(xt.dtype)
        if prediction == "eps":
            return (xt - rb * out) / ra, out
        if prediction == "x0":
            return out, (xt - ra * out) / rb
        if prediction == "v":
            return ra * xt - rb * out, ra * out + rb * xt
        raise ValueError(f"unknown prediction {prediction!r}; use one of {PREDICTIONS}")

    def eps_from_x0(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The noise that takes x_0 to x_t at t: (x_t - sqrt(abar) x_0) / sqrt(1 - abar)."""
        a = self.alpha_bar(t, xt)
        return (xt - a.sqrt().to(xt.dtype) * x0) / (1 - a).sqrt().to(xt.dtype)

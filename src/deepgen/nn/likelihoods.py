"""Likelihood heads: the decoder's output distribution p(x | h).

The stochastic encoder/decoder view (Goodfellow et al., Deep Learning, 14.4): a decoder
outputs the parameters of a distribution over x and training minimises -log p(x | h).
Mean squared error is the fixed-variance Gaussian case, binary cross-entropy the Bernoulli
case. Every head here takes parameters laid out as ``(N, P, *shape)`` (``P =
head.num_params`` per data element) and data ``x`` of shape ``(N, *shape)`` in model
space, and returns the negative log-likelihood per example, summed over elements, in nats.

Heads: ``bernoulli`` (sigmoid + BCE), ``gaussian`` (fixed sigma), ``gaussian-learned``
(per-element mean and log-scale), ``categorical`` (softmax over the data's levels, 256 for
8-bit pixels) and ``logistic-mixture`` (the discretized mixture of logistics of PixelCNN++,
Salimans et al. 2017, eq. 2; a mixture-density output).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..data.dataset import DataSpec
from ..errors import UserError, did_you_mean

LOG_2PI = math.log(2 * math.pi)


class LikelihoodHead(nn.Module):
    """Base class. ``num_params``: parameters per data element (the ``P`` in (N, P, *shape))."""

    num_params: int = 1
    kinds: tuple[str, ...] = ()
    #: True when ``nll`` is a normalised (negative log) probability or density of x. A model
    #: built on a head with ``exact = False`` reports ``log_prob_normalised = False`` (the
    #: VAE does), and the evaluator then gives no bits/dim for it.
    exact: bool = True
    #: True when ``nll`` is a probability mass over the data's discrete values (binary
    #: pixels, quantised levels); False for a density.
    discrete: bool = False

    def __init__(self, spec: DataSpec) -> None:
        super().__init__()
        self.spec = spec

    def nll(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log p(x | params) per example: params (N, P, *shape), x (N, *shape) -> (N,)."""
        raise NotImplementedError

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """The distribution's mean in data space: (N, P, *shape) -> (N, *shape)."""
        raise NotImplementedError

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One draw per example: (N, P, *shape) -> (N, *shape), of the data's kind."""
        raise NotImplementedError

    def _clamp(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(0.0, 1.0) if self.spec.kind == "continuous" else x


def _sum_per_example(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(len(t), -1).sum(dim=1)


class Bernoulli(LikelihoodHead):
    """p(x | h) = prod sigmoid(l)^x (1 - sigmoid(l))^(1 - x); parameters are logits."""

    num_params = 1
    kinds = ("binary", "continuous")

    def __init__(self, spec: DataSpec) -> None:
        super().__init__(spec)
        # On [0, 1]-valued data the Bernoulli "likelihood" is the usual BCE loss but not a
        # normalised density (Loaiza-Ganem & Cunningham 2019), so it is not an exact NLL.
        self.exact = self.discrete = spec.kind == "binary"

    def nll(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        logits = params[:, 0]
        return _sum_per_example(F.binary_cross_entropy_with_logits(logits, x, reduction="none"))

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params[:, 0])

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        p = torch.sigmoid(params[:, 0])
        if self.spec.kind == "binary":
            return torch.bernoulli(p, generator=generator)
        return p


class Gaussian(LikelihoodHead):
    """N(x; mu, sigma^2) with a fixed sigma: -log p = ||x - mu||^2 / (2 sigma^2) + const (MSE)."""

    num_params = 1
    kinds = ("continuous", "real")

    def __init__(self, spec: DataSpec, sigma: float = 0.1) -> None:
        super().__init__(spec)
        if sigma <= 0:
            raise UserError(f"gaussian likelihood needs sigma > 0, got {sigma}")
        self.sigma = sigma

    def nll(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        z = (x - params[:, 0]) / self.sigma
        return _sum_per_example(0.5 * z * z + math.log(self.sigma) + 0.5 * LOG_2PI)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return self._clamp(params[:, 0])

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = torch.randn(params[:, 0].shape, generator=generator, device=params.device, dtype=params.dtype)
        return self._clamp(params[:, 0] + self.sigma * eps)


class GaussianLearned(LikelihoodHead):
    """N(x; mu, sigma^2) with a per-element learned log sigma (floored for stability)."""

    num_params = 2
    kinds = ("continuous", "real")

    def __init__(self, spec: DataSpec, min_log_sigma: float = -5.0) -> None:
        super().__init__(spec)
        self.min_log_sigma = min_log_sigma

    def _log_sigma(self, params: torch.Tensor) -> torch.Tensor:
        # softplus floor: smooth, and keeps the density bounded (a variance collapsing on
        # constant pixels would otherwise send the NLL to -inf).
        return self.min_log_sigma + F.softplus(params[:, 1] - self.min_log_sigma)

    def nll(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        log_sigma = self._log_sigma(params)
        z = (x - params[:, 0]) * torch.exp(-log_sigma)
        return _sum_per_example(0.5 * z * z + log_sigma + 0.5 * LOG_2PI)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return self._clamp(params[:, 0])

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = torch.randn(params[:, 0].shape, generator=generator, device=params.device, dtype=params.dtype)
        return self._clamp(params[:, 0] + torch.exp(self._log_sigma(params)) * eps)


def _levels(spec: DataSpec) -> int:
    if spec.num_levels is None:
        raise UserError(
            f"dataset {spec.name!r} has no quantisation levels ({spec.kind} data): the categorical "
            "and logistic-mixture likelihoods need quantised data such as 8-bit images."
        )
    return spec.num_levels


class Categorical(LikelihoodHead):
    """Softmax over the data's L levels per element (PixelRNN's 256-way softmax)."""

    kinds = ("continuous", "discrete")
    discrete = True

    def __init__(self, spec: DataSpec) -> None:
        super().__init__(spec)
        self.levels = _levels(spec)
        self.num_params = self.levels

    def _to_index(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.kind == "discrete":
            return x.round().long()
        return (x * (self.levels - 1)).round().long()

    def _from_index(self, k: torch.Tensor) -> torch.Tensor:
        k = k.float()
        return k if self.spec.kind == "discrete" else k / (self.levels - 1)

    def nll(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return _sum_per_example(F.cross_entropy(params, self._to_index(x), reduction="none"))

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        probs = params.softmax(dim=1)
        values = self._from_index(torch.arange(self.levels, device=params.device))
        return torch.einsum("np...,p->n...", probs, values)

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        # Gumbel-max with an explicit generator: argmax(logits - log(-log u)).
        u = torch.rand(params.shape, generator=generator, device=params.device, dtype=params.dtype)
        gumbel = -torch.log((-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20))
        return self._from_index((params + gumbel).argmax(dim=1))


class LogisticMixture(LikelihoodHead):
    """Discretized mixture of K logistics per element (Salimans et al. 2017, eq. 2).

    Values in [0, 1] with L levels are mapped to [-1, 1]; each level's bin has half-width
    1 / (L - 1), and the two edge bins take the remaining tail mass, so the L bin
    probabilities sum to one exactly. Parameters per element: K mixture logits, K means,
    K log-scales (P = 3K).
    """

    kinds = ("continuous", "discrete")
    discrete = True

    def __init__(self, spec: DataSpec, components: int = 5) -> None:
        super().__init__(spec)
        if components < 1:
            raise UserError(f"logistic-mixture needs components >= 1, got {components}")
        self.levels = _levels(spec)
        self.k = components
        self.num_params = 3 * components

    def _to_unit(self, x: torch.Tensor) -> torch.Tensor:
        return x / (self.levels - 1) if self.spec.kind == "discrete" else x

    def _from_unit(self, u: torch.Tensor) -> torch.Tensor:
        k = ((u.clamp(-1, 1) + 1) / 2 * (self.levels - 1)).round()
        return k if self.spec.kind == "discrete" else k / (self.levels - 1)

    def _split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logit_pi, mu, log_s = params.split(self.k, dim=1)  # each (N, K, *shape)
        return logit_pi, mu, log_s.clamp_min(-7.0)

    def nll(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        logit_pi, mu, log_s = self._split(params)
        xc = (2 * self._to_unit(x) - 1).unsqueeze(1)  # (N, 1, *shape) in [-1, 1]
        half = 1.0 / (self.levels - 1)
        inv_s = torch.exp(-log_s)
        plus = inv_s * (xc + half - mu)
        minus = inv_s * (xc - half - mu)
        log_cdf_plus = plus - F.softplus(plus)  # log sigmoid(plus)
        log_one_minus_cdf_minus = -F.softplus(minus)  # log (1 - sigmoid(minus))
        # log(sigmoid(plus) - sigmoid(minus)), computed stably as
        # log sigmoid(plus) + log(1 - exp(log sigmoid(minus) - log sigmoid(plus))).
        log_cdf_minus = minus - F.softplus(minus)
        diff = (log_cdf_minus - log_cdf_plus).clamp_max(-1e-6)
        log_mid = log_cdf_plus + torch.log(-torch.expm1(diff))
        # Far in a tail both sigmoids round to the same value; use the density at the bin
        # centre times the bin width there (PixelCNN++'s fallback).
        mid_in = inv_s * (xc - mu)
        log_pdf_mid = mid_in - log_s - 2.0 * F.softplus(mid_in) + math.log(2 * half)
        log_mid = torch.where(diff > -1e-5, log_pdf_mid, log_mid)
        edge_lo = xc < -1 + half / 2
        edge_hi = xc > 1 - half / 2
        log_p = torch.where(edge_lo, log_cdf_plus, torch.where(edge_hi, log_one_minus_cdf_minus, log_mid))
        log_p = torch.logsumexp(log_p + F.log_softmax(logit_pi, dim=1), dim=1)  # (N, *shape)
        return -_sum_per_example(log_p)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        logit_pi, mu, _ = self._split(params)
        u = (logit_pi.softmax(dim=1) * mu).sum(dim=1).clamp(-1, 1)
        return (u + 1) / 2 if self.spec.kind != "discrete" else (u + 1) / 2 * (self.levels - 1)

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        logit_pi, mu, log_s = self._split(params)
        g = torch.rand(logit_pi.shape, generator=generator, device=params.device, dtype=params.dtype)
        pick = (logit_pi - torch.log((-torch.log(g.clamp_min(1e-20))).clamp_min(1e-20))).argmax(dim=1, keepdim=True)
        mu_k = mu.gather(1, pick).squeeze(1)
        s_k = torch.exp(log_s.gather(1, pick).squeeze(1))
        u = torch.rand(mu_k.shape, generator=generator, device=params.device, dtype=params.dtype)
        u = u.clamp(1e-5, 1 - 1e-5)
        return self._from_unit(mu_k + s_k * (torch.log(u) - torch.log1p(-u)))


HEADS: dict[str, Callable[..., LikelihoodHead]] = {
    "bernoulli": Bernoulli,
    "gaussian": Gaussian,
    "gaussian-learned": GaussianLearned,
    "categorical": Categorical,
    "logistic-mixture": LogisticMixture,
}


def default_head_name(spec: DataSpec) -> str:
    """The head used when a config says ``likelihood="auto"``."""
    return {
        "binary": "bernoulli",
        "continuous": "gaussian",
        "real": "gaussian-learned",
        "discrete": "categorical",
    }.get(spec.kind, "categorical")


def make_head(name: str, spec: DataSpec, *, sigma: float = 0.1, components: int = 5) -> LikelihoodHead:
    """Build head ``name`` (or the default for ``"auto"``) for data ``spec``.

    A head that does not fit the data's kind is a :class:`UserError` naming the ones that do.
    """
    if name == "auto":
        name = default_head_name(spec)
    if name not in HEADS:
        raise UserError(f"unknown likelihood {name!r}. {did_you_mean(name, list(HEADS) + ['auto'])}")
    cls = HEADS[name]
    if spec.kind not in cls.kinds:
        fits = [n for n, c in HEADS.items() if spec.kind in c.kinds]
        raise UserError(f"likelihood {name!r} does not fit {spec.kind} data. Accepted here: {', '.join(fits)}.")
    if cls is Gaussian:
        return Gaussian(spec, sigma=sigma)
    if cls is LogisticMixture:
        return LogisticMixture(spec, components=components)
    return cls(spec)

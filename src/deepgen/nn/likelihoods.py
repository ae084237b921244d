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
Salimans et al. 2017, eq. 2; a mixture per element). These are factorised: the elements of
x are independent given the parameters. The mixture-density heads ``mixture-bernoulli``,
``mixture-gaussian``, ``mixture-gaussian-learned`` and ``mixture-logistic`` are not: K
weights per example, shared by all its elements, mix K factorised components over the whole
example (Bishop 1994, mixture density networks), which makes the elements dependent.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from ..data.dataset import DataSpec
from ..errors import UserError, did_you_mean

LOG_2PI = math.log(2 * math.pi)
LN2 = math.log(2.0)


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
    #: The :func:`make_head` settings (``sigma``, ``components``) the constructor takes.
    options: tuple[str, ...] = ()

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
    """(N, ...) per-element terms -> (N,) sums, accumulated in float32 at least: summed in
    bfloat16 (a model converted with ``.bfloat16()``), 784 terms are off by nats."""
    return t.reshape(len(t), -1).sum(dim=1, dtype=torch.promote_types(t.dtype, torch.float32))


def _gumbel_argmax(logits: torch.Tensor, generator: torch.Generator | None, dim: int = 1, keepdim: bool = False) -> torch.Tensor:
    """One draw of a categorical over ``dim`` of ``logits`` (unnormalised log-probabilities),
    by Gumbel-max with an explicit generator: argmax(logits - log(-log u)), u ~ U(0, 1)."""
    # float32 at least: in bfloat16 (8 mantissa bits) logits + Gumbel noise tie often, and
    # argmax breaks ties towards the first values, which biases a bf16 model's draws.
    logits = at_least_float32(logits)
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    gumbel = -torch.log((-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20))
    return (logits + gumbel).argmax(dim=dim, keepdim=keepdim)


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
    options = ("sigma",)

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
    if spec.kind == "tokens" and spec.vocab_size:
        return spec.vocab_size
    if spec.num_levels is None:
        raise UserError(
            f"dataset {spec.name!r} has no quantisation levels ({spec.kind} data): the categorical "
            "and logistic-mixture likelihoods need quantised data such as 8-bit images."
        )
    return spec.num_levels


class Categorical(LikelihoodHead):
    """Softmax over the data's L levels per element (PixelRNN's 256-way softmax), or over
    the V token ids of token data (whose ``mean`` is the most likely token, a value not an
    average)."""

    kinds = ("continuous", "discrete", "tokens")
    discrete = True

    def __init__(self, spec: DataSpec) -> None:
        super().__init__(spec)
        self.levels = _levels(spec)
        self.num_params = self.levels

    def _to_index(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.kind == "tokens":
            return x.long()
        if self.spec.kind == "discrete":
            return x.round().long()
        return (x * (self.levels - 1)).round().long()

    def _from_index(self, k: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Level indices -> values in model space, in the parameters' ``dtype`` (float32 at
        least: k / 255 needs more bits than bf16 has); token ids stay int64."""
        if self.spec.kind == "tokens":
            return k.long()
        k = k.to(torch.promote_types(dtype, torch.float32))
        return k if self.spec.kind == "discrete" else k / (self.levels - 1)

    def nll(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return _sum_per_example(F.cross_entropy(at_least_float32(params), self._to_index(x), reduction="none"))

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        if self.spec.kind == "tokens":
            return params.argmax(dim=1)
        probs = params.softmax(dim=1)
        values = self._from_index(torch.arange(self.levels, device=params.device), probs.dtype)
        probs = probs.to(values.dtype)
        return torch.einsum("np...,p->n...", probs, values)

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self._from_index(_gumbel_argmax(params, generator), params.dtype)


def log1mexp(d: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(d)) for d <= 0, stable at both ends (Maechler 2012, "Accurately computing
    log(1 - exp(-|a|))"): ``log(-expm1(d))`` for d > -ln 2, ``log1p(-exp(d))`` otherwise.
    Both branches are evaluated on safe inputs, so ``torch.where`` passes finite gradients."""
    d = d.clamp_max(0.0)
    near = d > -LN2
    # Off-branch inputs are pinned to -ln 2, where both forms are finite.
    d_near = torch.where(near, d, torch.full_like(d, -LN2))
    d_far = torch.where(near, torch.full_like(d, -LN2), d)
    return torch.where(near, torch.log(-torch.expm1(d_near)), torch.log1p(-torch.exp(d_far)))


def _log1mexp_neg2w(w: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(-2w)) for w > 0. Below w = 1e-2 the series log(2w) - w + w^2 / 6 (error
    O(w^4)), from ``log_w`` = log w passed in exactly, so that a w that underflows to 0 (s
    above ~e^100 in float32) still gives a finite value with a finite gradient."""
    small = w < 1e-2
    w_big = w.clamp_min(1e-2)  # the off-branch stays finite, and so does its gradient
    return torch.where(small, LN2 + log_w - w + w * w / 6.0, log1mexp(-2.0 * w_big))


class _MeanOverEdges(torch.autograd.Function):
    """S = sum_j sigmoid((mu - e_j) * inv_s) over the fixed bin edges e_j (E,), per element.

    ``mu`` and ``inv_s``: (...) of one shape; returns the same shape. This is sum_j P(k >= j)
    for one logistic component, so E[k] = S (see :meth:`LogisticMixture.mean`, which passes
    mu, e_j and 1 / s in units of h). Forward and backward loop over chunks of ``chunk``
    edges, so the (..., E) intermediate is never held whole: memory is O(numel * chunk), not
    O(numel * L), in both passes. The gradient is the analytic one:
    dS/dmu = inv_s * sum_j sig'(z_j) and dS/dinv_s = sum_j (mu - e_j) sig'(z_j), with
    z_j = (mu - e_j) * inv_s and sig'(z) = sigmoid(z) * sigmoid(-z).
    """

    @staticmethod
    def forward(
        ctx, mu: torch.Tensor, inv_s: torch.Tensor, edges: torch.Tensor, chunk: int
    ) -> torch.Tensor:
        ctx.save_for_backward(mu, inv_s, edges)
        ctx.chunk = chunk
        total = torch.zeros_like(mu)
        for start in range(0, len(edges), chunk):
            z = (mu.unsqueeze(-1) - edges[start : start + chunk]) * inv_s.unsqueeze(-1)
            total = total + torch.sigmoid(z).sum(dim=-1)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        mu, inv_s, edges = ctx.saved_tensors
        d_mu = torch.zeros_like(mu)
        d_inv_s = torch.zeros_like(mu)
        for start in range(0, len(edges), ctx.chunk):
            diff = mu.unsqueeze(-1) - edges[start : start + ctx.chunk]
            z = diff * inv_s.unsqueeze(-1)
            dsig = torch.sigmoid(z) * torch.sigmoid(-z)
            d_mu = d_mu + dsig.sum(dim=-1)
            d_inv_s = d_inv_s + (diff * dsig).sum(dim=-1)
        return grad * inv_s * d_mu, grad * d_inv_s, None, None


#: PixelCNN++'s floor on a logistic's log-scale.
MIN_LOG_S = -7.0

#: Elements x edges held at once by LogisticMixture.mean (16M floats: 64 MiB in float32).
_MEAN_CHUNK_ELEMENTS = 1 << 24


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """Half / bfloat16 (bf16 autocast) parameters are upcast: ``(x - mu) / s`` with s = e^-7
    needs more than bf16's 8 mantissa bits. A dtype check, not a data-dependent branch."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


class LogisticMixture(LikelihoodHead):
    """Discretized mixture of K logistics per element (Salimans et al. 2017, PixelCNN++, eq. 2).

    Values with L levels are mapped to x in [-1, 1] (level k -> -1 + 2k / (L - 1)); level k's
    bin is [x - h, x + h] with h = 1 / (L - 1), and the two edge bins are open-ended
    (level 0 takes (-inf, x_0 + h], level L - 1 takes [x_{L-1} - h, inf)), so the L bin
    probabilities sum to one exactly:

        P(k) = sum_i pi_i [sigmoid((x_k + h - mu_i) / s_i) - sigmoid((x_k - h - mu_i) / s_i)].

    Parameters: ``(N, 3K, *shape)``, laid out along dim 1 as ``[logit_pi (K), mu (K),
    log_s (K)]``, with mu in the [-1, 1] space and log_s clamped to >= -7 (PixelCNN++'s floor).
    Data ``x``: ``(N, *shape)`` in model space (k / (L - 1) for ``continuous`` data, the
    integer k for ``discrete``), snapped to the nearest level.

    Every bin mass is computed exactly, in log space, in both tails (see
    :meth:`log_bin_probs`): there is no density-at-the-bin-centre approximation anywhere, as
    the form used never cancels and never underflows (log P is finite for all finite
    parameters). Half-precision parameters (bf16 autocast)
    are evaluated in float32. :meth:`mean` is the mean of this discretized distribution.
    """

    kinds = ("continuous", "discrete")
    discrete = True
    options = ("components",)

    def __init__(self, spec: DataSpec, components: int = 5) -> None:
        super().__init__(spec)
        if components < 1:
            raise UserError(f"logistic-mixture needs components >= 1, got {components}")
        self.levels = _levels(spec)
        self.k = components
        self.num_params = 3 * components

    def _to_level(self, x: torch.Tensor) -> torch.Tensor:
        """Data (N, *shape) -> the nearest level k in [0, L - 1], as floats of x's dtype."""
        k = x if self.spec.kind == "discrete" else x * (self.levels - 1)
        return k.round().clamp(0, self.levels - 1)

    def _from_unit(self, u: torch.Tensor) -> torch.Tensor:
        k = ((u.clamp(-1, 1) + 1) / 2 * (self.levels - 1)).round()
        return k if self.spec.kind == "discrete" else k / (self.levels - 1)

    def _split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, 3K, *shape) -> logit_pi, mu, log_s, each (N, K, *shape); log_s clamped at -7."""
        logit_pi, mu, log_s = params.split(self.k, dim=1)
        return logit_pi, mu, log_s.clamp_min(MIN_LOG_S)

    def log_bin_probs(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log P(x | component i) per component: params (N, 3K, *shape), x (N, *shape) ->
        (N, K, *shape). Exact in both tails; see :meth:`nll`."""
        _, mu, log_s = self._split(at_least_float32(params))
        levels = self.levels
        # Work in units of h = 1 / (L - 1) (half a level), where bin k = [x_k - h, x_k + h],
        # x_k = -1 + 2k / (L - 1), is [2k - L, 2k - L + 2]: snap x to its level k (as
        # Categorical does), so every edge is an exact integer and mu enters once, as
        # m = mu / h = mu * (L - 1). Then bin k's upper edge and bin k + 1's lower edge are
        # the same float, the L masses telescope to 1, and the bin's half-width in standard
        # units is exactly w = 1 / (s (L - 1)): the head computes the exact P for an mu within
        # half an ulp. (Rounding x_k -+ h to float32 per bin instead costs ~ulp / s: 1.6e-5 of
        # the total mass at s = e^-7, and ~ulp / h relative error in the width when s >> h.)
        k = self._to_level(x.to(mu.dtype)).unsqueeze(1)  # (N, 1, *shape), integers in [0, L-1]
        m = mu * (levels - 1)  # (N, K, *shape): the mean in units of h
        w = torch.exp(-log_s) / (levels - 1)  # h / s = (b' - a') / 2, h in standard units
        log_w = -log_s - math.log(levels - 1)  # log w, exact even where w underflows
        lo = (2 * k - levels - m) * w  # a' = (a - mu) / s
        hi = (2 * k - levels + 2 - m) * w  # b' = (b - mu) / s
        # Interior bin (eq. 2): P = sigmoid(b') - sigmoid(a'). Factoring e^b' out of
        # (e^b' - e^a') / ((1 + e^a')(1 + e^b')) gives the exact identity
        #     sigmoid(b') - sigmoid(a') = sigmoid(b') * sigmoid(-a') * (1 - exp(-(b' - a'))),
        # so log P = log sigmoid(b') + log sigmoid(-a') + log(1 - exp(-2w)). It is exactly
        # symmetric under (a', b') -> (-b', -a'): the mirrored 1 - cdf form log(sigmoid(-a') -
        # sigmoid(-b')) for bins above the mean gives the same expression. Each term is a
        # log-sigmoid of one argument, or log(1 - exp(-2w)) of the exact half-width, so no
        # difference of nearly equal sigmoids is formed on either side of the mean, and
        # PixelCNN++'s density-at-the-bin-centre fallback is never needed: log P stays finite
        # (about -|a'| deep in a tail, never -inf), its float32 error a few ulps of |log P|
        # (the conditioning of a' itself) plus the effect of rounding m. (The fallback it
        # replaces gave bins above the mean up to 8.6x too little mass at log s = -7.)
        log_cdf_hi = F.logsigmoid(hi)  # log sigmoid(b') = log cdf(b)
        log_sf_lo = F.logsigmoid(-lo)  # log sigmoid(-a') = log (1 - cdf(a))
        log_mid = log_cdf_hi + log_sf_lo + _log1mexp_neg2w(w, log_w)
        # Edge bins (eq. 2's x = 0 and x = 255 cases, open-ended): level 0 gets cdf(b') and
        # level L - 1 gets 1 - cdf(a'), the interior formula with the vanishing factors dropped.
        edge_lo = k == 0
        edge_hi = k == levels - 1
        return torch.where(edge_lo, log_cdf_hi, torch.where(edge_hi, log_sf_lo, log_mid))

    def nll(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log P(x) per example, in nats: params (N, 3K, *shape), x (N, *shape) -> (N,).

        P(x) = sum_i pi_i P_i(x) with each component's bin mass computed exactly (see
        :meth:`log_bin_probs`), mixed with a logsumexp over the K components. Elementwise
        torch ops only (no host synchronisation, no data-dependent Python branches), so it
        can run inside a captured CUDA graph; gradients are finite for every finite input.
        """
        log_pi = F.log_softmax(at_least_float32(params).split(self.k, dim=1)[0], dim=1)
        log_p = torch.logsumexp(self.log_bin_probs(params, x) + log_pi, dim=1)  # (N, *shape)
        return -_sum_per_example(log_p)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """E[value] of the discretized distribution itself: (N, 3K, *shape) -> (N, *shape).

        value(k) = k / (L - 1) for ``continuous`` data, k for ``discrete``. The tail mass of
        the edge bins included (not just the mixture of the mu_i, which is off by levels when
        a component sits near an edge),

            E[k] = sum_{j=1}^{L-1} P(k >= j) = sum_i pi_i sum_j sigmoid((mu_i - e_j) / s_i),

        with 1 - cdf taken at e_j = -1 + (2j - 1) / (L - 1), the lower edge of bin j. This needs the CDF at
        the L - 1 inner edges only, evaluated in chunks (:class:`_MeanOverEdges`) so memory is
        O(N K D chunk), not O(N K D L); differentiable in all parameters; no host sync.
        """
        logit_pi, mu, log_s = self._split(at_least_float32(params))
        levels = self.levels
        # In units of h = 1 / (L - 1), as in log_bin_probs: e_j = 2j - L exactly, mu -> mu / h.
        edges = 2.0 * torch.arange(1, levels, device=mu.device, dtype=mu.dtype) - levels  # (L-1,)
        m, w = mu * (levels - 1), torch.exp(-log_s) / (levels - 1)  # (N, K, *shape); w = h / s
        chunk = max(1, min(len(edges), _MEAN_CHUNK_ELEMENTS // max(m.numel(), 1)))
        tail = _MeanOverEdges.apply(m, w, edges, chunk)  # (N, K, *shape): E[k | component i]
        k_mean = (logit_pi.softmax(dim=1) * tail).sum(dim=1)
        return k_mean if self.spec.kind == "discrete" else k_mean / (levels - 1)

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        # float32 at least (as nll): a bf16 model's draws would land off the levels k / 255.
        logit_pi, mu, log_s = self._split(at_least_float32(params))
        pick = _gumbel_argmax(logit_pi, generator, keepdim=True)
        mu_k = mu.gather(1, pick).squeeze(1)
        s_k = torch.exp(log_s.gather(1, pick).squeeze(1))
        u = torch.rand(mu_k.shape, generator=generator, device=params.device, dtype=params.dtype)
        u = u.clamp(1e-5, 1 - 1e-5)
        return self._from_unit(mu_k + s_k * (torch.log(u) - torch.log1p(-u)))


class DiscretizedLogistic(LogisticMixture):
    """One discretized logistic per element: :class:`LogisticMixture` at K = 1 without its
    mixture-logit channel (a softmax over one component is 1 whatever the logit). Parameters
    ``(N, 2, *shape)``, ``[mu, log_s]`` along dim 1; the bin masses, mean and sampling are
    LogisticMixture's. The component of the ``mixture-logistic`` head; not registered."""

    options = ()

    def __init__(self, spec: DataSpec) -> None:
        super().__init__(spec, components=1)
        self.num_params = 2

    def _split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, 2, *shape) -> logit_pi (zeros), mu, log_s, each (N, 1, *shape)."""
        mu, log_s = params[:, :1], params[:, 1:2]
        return torch.zeros_like(mu), mu, log_s.clamp_min(MIN_LOG_S)

    def nll(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return -_sum_per_example(self.log_bin_probs(params, x)[:, 0])


class MixtureDensity(LikelihoodHead):
    """A mixture of K factorised components over the whole example (Bishop 1994):

        p(x | h) = sum_k pi_k(h) prod_d p_k(x_d | h),

    with K weights per example shared by all its elements, so that, unlike the factorised
    heads, the elements are dependent given h. Each component is a factorised head
    (``component_class``: Bernoulli, Gaussian, GaussianLearned or DiscretizedLogistic) whose
    maths is reused as it is; the ``exact``/``discrete`` flags and data kinds are the
    component's.

    Parameters ``(N, K (1 + C), *shape)``, C = the component's ``num_params``, laid out
    along dim 1 as ``[logit (K), component 0 (C), ..., component K-1 (C)]``. The K
    per-example logits are the means of the first K channels over all data positions,
    ``logit_k = mean_d params[:, k, d]``. Heads receive per-element parameters from any
    decoder (MLP or conv, every family), and only a channel's mean matters: an MLP decoder's
    linear output layer can give all positions of a channel one value, and a conv decoder's
    channel mean is a linear map of its last feature map's mean (global average pooling), so
    every decoder reaches any per-example weights without a new output path. The mean
    (rather than one position, or the sum) lets every position contribute to the weights and
    keeps their scale independent of the data's size.
    """

    component_class: type[LikelihoodHead]

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.kinds = cls.component_class.kinds
        cls.options = ("components", *cls.component_class.options)

    def __init__(self, spec: DataSpec, components: int = 5, **component_options: float) -> None:
        super().__init__(spec)
        if components < 1:
            raise UserError(f"a mixture-density likelihood needs components >= 1, got {components}")
        self.k = components
        self.component = self.component_class(spec, **component_options)
        self.exact, self.discrete = self.component.exact, self.component.discrete
        self.num_params = components * (1 + self.component.num_params)

    def _split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, P, *shape) -> log pi (N, K) and the components' parameters (N, K, C, *shape),
        in at least float32 (bf16 autocast is upcast)."""
        params = at_least_float32(params)
        n, k = len(params), self.k
        log_pi = F.log_softmax(params[:, :k].reshape(n, k, -1).mean(dim=2), dim=1)  # (N, K)
        comp = params[:, k:].reshape(n, k, self.component.num_params, *params.shape[2:])
        return log_pi, comp

    def _component_nll(self, comp: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log p_k(x) of each component: comp (N, K, C, *shape), x (N, *shape) -> (N, K)."""
        n, k = len(comp), self.k
        x_rep = x.unsqueeze(1).expand(n, k, *x.shape[1:]).reshape(n * k, *x.shape[1:])
        return self.component.nll(comp.flatten(0, 1), x_rep).reshape(n, k)

    def nll(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log sum_k pi_k p_k(x) per example, by a logsumexp over the K components:
        params (N, P, *shape), x (N, *shape) -> (N,). Elementwise ops and reductions only
        (no host synchronisation), in float32 at least."""
        log_pi, comp = self._split(params)
        return -torch.logsumexp(log_pi - self._component_nll(comp, x), dim=1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """sum_k pi_k E_k[x]: (N, P, *shape) -> (N, *shape)."""
        log_pi, comp = self._split(params)
        means = self.component.mean(comp.flatten(0, 1)).reshape(comp.shape[0], self.k, *comp.shape[3:])
        return torch.einsum("nk,nk...->n...", log_pi.exp().to(means.dtype), means)

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One component per example (drawn from pi), then a factorised draw from it."""
        log_pi, comp = self._split(params)
        pick = _gumbel_argmax(log_pi, generator)  # (N,)
        return self.component.sample(comp[torch.arange(len(comp), device=comp.device), pick], generator)


class MixtureBernoulli(MixtureDensity):
    """``mixture-bernoulli``: components of logits, C = 1."""

    component_class = Bernoulli


class MixtureGaussian(MixtureDensity):
    """``mixture-gaussian``: components of means with the fixed ``sigma``, C = 1."""

    component_class = Gaussian


class MixtureGaussianLearned(MixtureDensity):
    """``mixture-gaussian-learned``: components of (mean, log sigma), C = 2."""

    component_class = GaussianLearned


class MixtureLogistic(MixtureDensity):
    """``mixture-logistic``: components of one discretized logistic (mu, log_s), C = 2."""

    component_class = DiscretizedLogistic


HEADS: dict[str, type[LikelihoodHead]] = {
    "bernoulli": Bernoulli,
    "gaussian": Gaussian,
    "gaussian-learned": GaussianLearned,
    "categorical": Categorical,
    "logistic-mixture": LogisticMixture,
    "mixture-bernoulli": MixtureBernoulli,
    "mixture-gaussian": MixtureGaussian,
    "mixture-gaussian-learned": MixtureGaussianLearned,
    "mixture-logistic": MixtureLogistic,
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
    settings = {"sigma": sigma, "components": components}
    return cls(spec, **{key: settings[key] for key in cls.options})

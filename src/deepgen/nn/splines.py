"""Neural spline flows (Durkan et al. 2019, "Neural Spline Flows"): the monotone
rational-quadratic spline and the two bijections built on it, the coupling layer
("RQ-NSF (C)") and the autoregressive layer ("RQ-NSF (AR)").

The spline maps [-B, B] onto itself through K bins whose widths, heights and inner-knot
derivatives come from a network; outside [-B, B] it is the identity (log-determinant 0).
The boundary derivatives are 1, so the tails join the spline with a continuous first
derivative. Everything is elementwise over any leading shape.

Numerics (the issue asked for an inverse that is exact and finite at and beyond the tail
bounds):

* the spline is evaluated on *every* element, at the input clamped into [-B, B], and
  :func:`torch.where` picks the identity outside, so the unused branch is finite and its
  gradient is finite (and multiplied by 0); there is no boolean indexing either, hence no
  host synchronisation (the training step may be captured in a CUDA graph);
* the bin is found with :func:`torch.searchsorted` on the knots, the first and last knots
  set to exactly -B and B and the last knot (x = B) put into the last bin;
* the inverse solves the quadratic of Durkan et al. eqs. 6-8 with the stable root
  ``2c / (-b - sqrt(b^2 - 4ac))`` where b >= 0 (its denominator is then < 0) and the same
  root written ``(-b + sqrt(b^2 - 4ac)) / (2a)`` where b < 0 (there a > 0 and the first form
  cancels catastrophically), the discriminant clamped at 0 (at the smallest normal number,
  so that the square root's gradient stays finite) and the bin position clamped into
  [0, 1] (its gradient passed through);
* the spline is computed in float32 (float64 for float64 inputs) with autocast off, so the
  log-determinants are float32 under bf16 autocast.

Shapes: ``N`` batch, ``D`` dimensions, ``K`` bins, ``C`` context width.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .flows import Bijection, logdet_dtype, sum_per_example
from .layers import activation as make_activation
from .layers import mlp
from .masked import MADE

DEFAULT_BINS = 8
DEFAULT_TAIL_BOUND = 3.0
DEFAULT_MIN_BIN_WIDTH = 1e-3
DEFAULT_MIN_BIN_HEIGHT = 1e-3
DEFAULT_MIN_DERIVATIVE = 1e-3


def identity_derivative_logit(min_derivative: float = DEFAULT_MIN_DERIVATIVE) -> float:
    """The unnormalised derivative d with ``min_derivative + softplus(d) == 1``:
    log(exp(1 - min_derivative) - 1). With all widths and heights equal (zero logits) and
    every derivative 1 the spline is the identity."""
    return math.log(math.expm1(1.0 - min_derivative))


def _knots(unnormalised: torch.Tensor, bound: float, min_size: float) -> torch.Tensor:
    """(..., K) logits -> (..., K + 1) knots from -bound to bound, every bin at least
    ``min_size`` of the interval; the end knots are exactly -bound and bound."""
    k = unnormalised.shape[-1]
    sizes = min_size + (1.0 - min_size * k) * torch.softmax(unnormalised, dim=-1)
    cum = torch.cumsum(sizes, dim=-1)
    inner = (2.0 * bound) * cum[..., :-1] - bound
    lo = torch.full_like(cum[..., :1], -bound)
    hi = torch.full_like(cum[..., :1], bound)
    return torch.cat([lo, inner, hi], dim=-1)


def _gather(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return torch.gather(t, -1, idx).squeeze(-1)


def rational_quadratic_spline(
    x: torch.Tensor,
    widths: torch.Tensor,
    heights: torch.Tensor,
    derivatives: torch.Tensor,
    *,
    inverse: bool,
    tail_bound: float,
    min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
    min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
    min_derivative: float = DEFAULT_MIN_DERIVATIVE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The monotone rational-quadratic spline on [-B, B] with linear (identity) tails.

    ``x`` (...); ``widths`` and ``heights`` (..., K) unnormalised (softmaxed, then each bin
    floored at ``min_bin_width`` / ``min_bin_height`` of the interval); ``derivatives``
    (..., K - 1) unnormalised for the K - 1 inner knots (``min_derivative + softplus``); the
    two boundary derivatives are 1. The parameters' leading shape must broadcast with
    ``x``'s. ``inverse=False`` maps x to y = g(x); ``inverse=True`` maps y to g^{-1}(y).

    Returns ``(out, logabsdet)``, both of the broadcast shape: ``out`` in x's dtype,
    ``logabsdet`` = log |d out / d in| in float32 (float64 when x or the parameters are
    float64), 0 outside [-B, B].
    """
    k = widths.shape[-1]
    if k < 1 or heights.shape[-1] != k or derivatives.shape[-1] != k - 1:
        raise ValueError(
            f"a spline of K bins takes K widths, K heights and K - 1 derivatives; got "
            f"{widths.shape[-1]}, {heights.shape[-1]} and {derivatives.shape[-1]}"
        )
    if min_bin_width * k >= 1.0 or min_bin_height * k >= 1.0:
        raise ValueError(f"min_bin_width and min_bin_height must be below 1 / K = {1.0 / k}")
    if tail_bound <= 0:
        raise ValueError(f"tail_bound must be positive, got {tail_bound}")

    out_dtype = x.dtype
    wide = torch.float64 in (x.dtype, widths.dtype, heights.dtype, derivatives.dtype)
    dtype = torch.float64 if wide else logdet_dtype(x)
    shape = torch.broadcast_shapes(x.shape, widths.shape[:-1], heights.shape[:-1], derivatives.shape[:-1])
    bound = float(tail_bound)

    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.to(dtype).expand(shape)
        widths = widths.to(dtype).expand(*shape, k)
        heights = heights.to(dtype).expand(*shape, k)
        derivatives = derivatives.to(dtype).expand(*shape, k - 1)

        inside = (x >= -bound) & (x <= bound)
        xc = x.clamp(-bound, bound)  # the spline's input, safe everywhere

        cw = _knots(widths, bound, min_bin_width)  # (..., K + 1)
        ch = _knots(heights, bound, min_bin_height)
        ones = torch.ones_like(derivatives[..., :1])
        d = torch.cat([ones, min_derivative + F.softplus(derivatives), ones], dim=-1)  # (..., K + 1)

        knots = ch if inverse else cw
        # Bin b holds [knot_b, knot_{b+1}); the last knot (B) goes into the last bin.
        idx = torch.searchsorted(knots.contiguous(), xc.unsqueeze(-1).contiguous(), right=True) - 1
        idx = idx.clamp(0, k - 1)

        x_k = _gather(cw, idx)
        w_k = _gather(cw, idx + 1) - x_k
        y_k = _gather(ch, idx)
        h_k = _gather(ch, idx + 1) - y_k
        d_k = _gather(d, idx)
        d_k1 = _gather(d, idx + 1)
        s_k = h_k / w_k
        curvature = d_k1 + d_k - 2.0 * s_k

        if inverse:
            rel = xc - y_k
            a = h_k * (s_k - d_k) + rel * curvature
            b = h_k * d_k - rel * curvature
            c = -s_k * rel
            root = torch.sqrt((b * b - 4.0 * a * c).clamp_min(torch.finfo(dtype).tiny))
            # b >= 0: the stable 2c / (-b - sqrt(disc)) (denominator < 0). b < 0 (a steep
            # right knot): there -b - sqrt(disc) cancels, and a = h s - b > 0, so take the
            # same root as (-b + sqrt(disc)) / (2a). Each branch gets a safe denominator.
            positive = b >= 0
            lower = torch.where(positive, -b - root, -torch.ones_like(b))
            upper = torch.where(positive, torch.ones_like(a), 2.0 * a)
            theta = torch.where(positive, (2.0 * c) / lower, (root - b) / upper)
            # Into [0, 1] against rounding, the gradient passed through (a plain clamp would
            # zero it where rounding lands just past an end, e.g. at y = B).
            theta = theta + (theta.clamp(0.0, 1.0) - theta).detach()
            spline_out = x_k + theta * w_k
        else:
            theta = (xc - x_k) / w_k
        t1 = theta * (1.0 - theta)
        denom = s_k + curvature * t1
        if not inverse:
            spline_out = y_k + h_k * (s_k * theta * theta + d_k * t1) / denom
        slope = s_k * s_k * (d_k1 * theta * theta + 2.0 * s_k * t1 + d_k * (1.0 - theta) ** 2)
        logabsdet = torch.log(slope) - 2.0 * torch.log(denom)
        if inverse:
            logabsdet = -logabsdet

        out = torch.where(inside, spline_out, x)
        logabsdet = torch.where(inside, logabsdet, torch.zeros_like(logabsdet))
    return out.to(out_dtype), logabsdet


def _split_params(params: torch.Tensor, bins: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(..., 3K - 1) -> widths (..., K), heights (..., K), derivatives (..., K - 1)."""
    return params[..., :bins], params[..., bins : 2 * bins], params[..., 2 * bins :]


def _identity_init(layer: nn.Linear, units: int, bins: int, min_derivative: float) -> None:
    """Zero the weights of the network's last layer and set its bias so that every spline
    is the identity: 0 for widths and heights, :func:`identity_derivative_logit` for the
    derivatives. The output units are ``units`` blocks of 3K - 1 (dimension-major)."""
    with torch.no_grad():
        layer.weight.zero_()
        bias = layer.bias.view(units, 3 * bins - 1)
        bias.zero_()
        bias[:, 2 * bins :] = identity_derivative_logit(min_derivative)


def _check_context(context: int, cond: torch.Tensor | None, name: str) -> None:
    if context and cond is None:
        raise ValueError(f"{name} was built with context={context} and needs cond (N, {context})")


class SplineCoupling(Bijection):
    """A rational-quadratic spline coupling layer for vectors (N, D) (Durkan et al. 2019,
    sec. 3.3; RQ-NSF (C)).

    The first ``D // 2`` dimensions pass unchanged and condition an MLP (with ``cond``
    (N, C) concatenated when ``context = C > 0``) that outputs 3K - 1 spline parameters per
    remaining dimension (K widths, K heights, K - 1 inner derivatives), which are
    transformed elementwise. ``flip=True`` swaps the roles (the last ``D - D // 2``
    dimensions pass), so alternating layers transform every dimension.

    The MLP's last layer starts at zero weights with the bias of
    :func:`identity_derivative_logit` on the derivative outputs, so the layer starts as the
    identity (log_det 0).
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (256, 256),
        *,
        bins: int = DEFAULT_BINS,
        tail_bound: float = DEFAULT_TAIL_BOUND,
        flip: bool = False,
        context: int = 0,
        activation: str = "relu",
        min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
        min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
        min_derivative: float = DEFAULT_MIN_DERIVATIVE,
    ) -> None:
        super().__init__()
        if dim < 2:
            raise ValueError(f"a coupling layer needs at least 2 dimensions, got {dim}")
        if bins < 1:
            raise ValueError(f"bins must be at least 1, got {bins}")
        self.dim, self.bins, self.tail_bound, self.flip, self.context = dim, bins, float(tail_bound), flip, context
        self.spline_kwargs = {
            "tail_bound": float(tail_bound),
            "min_bin_width": min_bin_width,
            "min_bin_height": min_bin_height,
            "min_derivative": min_derivative,
        }
        half = dim // 2
        kept = torch.arange(half, dim) if flip else torch.arange(half)
        moved = torch.arange(half) if flip else torch.arange(half, dim)
        perm = torch.cat([kept, moved])
        self.register_buffer("kept", kept, persistent=False)
        self.register_buffer("moved", moved, persistent=False)
        self.register_buffer("unperm", torch.argsort(perm), persistent=False)
        self.net = mlp(len(kept) + context, hidden, len(moved) * (3 * bins - 1), activation)
        _identity_init(self.net[-1], len(moved), bins, min_derivative)

    def _params(self, x_kept: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        _check_context(self.context, cond, "SplineCoupling")
        h = x_kept if not self.context else torch.cat([x_kept, cond.to(x_kept.dtype)], dim=1)
        return self.net(h).reshape(len(x_kept), len(self.moved), 3 * self.bins - 1)

    def _transform(self, x: torch.Tensor, cond: torch.Tensor | None, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"SplineCoupling expects (N, {self.dim}), got {tuple(x.shape)}")
        x_kept = x.index_select(1, self.kept)
        w, h, d = _split_params(self._params(x_kept, cond), self.bins)
        y, ld = rational_quadratic_spline(x.index_select(1, self.moved), w, h, d, inverse=inverse, **self.spline_kwargs)
        out = torch.cat([x_kept, y.to(x_kept.dtype)], dim=1).index_select(1, self.unperm)
        return out, sum_per_example(ld)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._transform(x, cond, inverse=False)

    def inverse(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self._transform(z, cond, inverse=True)[0]

    def extra_repr(self) -> str:
        return f"dim={self.dim}, bins={self.bins}, tail_bound={self.tail_bound}, flip={self.flip}, context={self.context}"


class AutoregressiveSpline(Bijection):
    """A masked autoregressive rational-quadratic spline layer (Durkan et al. 2019, RQ-NSF
    (AR)): z_d = g(x_d; theta_d(x_{<d}, cond)), the parameters of dimension d from a
    :class:`~deepgen.nn.masked.MADE` with 3K - 1 outputs per dimension (K widths, K heights,
    K - 1 inner derivatives).

    ``forward`` (x -> z, the density direction) is one MADE pass; ``inverse`` (z -> x,
    sampling) takes D passes: pass i inverts every dimension from the current estimate of
    x, and after pass i the dimensions at positions 0..i of MADE's order are exact (each
    depends only on earlier ones), so no per-dimension indexing or host synchronisation is
    needed, whichever mask set is in use. The MADE's last layer starts as in
    :class:`SplineCoupling` (identity).
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (256, 256),
        *,
        bins: int = DEFAULT_BINS,
        tail_bound: float = DEFAULT_TAIL_BOUND,
        context: int = 0,
        activation: str = "relu",
        num_masks: int = 1,
        order_agnostic: bool = False,
        seed: int = 0,
        min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
        min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
        min_derivative: float = DEFAULT_MIN_DERIVATIVE,
    ) -> None:
        super().__init__()
        if bins < 1:
            raise ValueError(f"bins must be at least 1, got {bins}")
        self.dim, self.bins, self.tail_bound, self.context = dim, bins, float(tail_bound), context
        self.spline_kwargs = {
            "tail_bound": float(tail_bound),
            "min_bin_width": min_bin_width,
            "min_bin_height": min_bin_height,
            "min_derivative": min_derivative,
        }
        self.made = MADE(
            dim,
            hidden,
            out_per_dim=3 * bins - 1,
            context=context,
            num_masks=num_masks,
            order_agnostic=order_agnostic,
            seed=seed,
            activation=type(make_activation(activation)),
        )
        _identity_init(self.made.layers[-1], dim, bins, min_derivative)
        if self.made.context_out is not None:  # the context's direct path too: the identity at the start
            nn.init.zeros_(self.made.context_out.weight)

    def _spline(self, values: torch.Tensor, x: torch.Tensor, cond: torch.Tensor | None, inverse: bool):
        _check_context(self.context, cond, "AutoregressiveSpline")
        params = self.made(x, None if cond is None or not self.context else cond.to(x.dtype))
        w, h, d = _split_params(params, self.bins)
        return rational_quadratic_spline(values, w, h, d, inverse=inverse, **self.spline_kwargs)

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"AutoregressiveSpline expects (N, {self.dim}), got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(x)
        z, ld = self._spline(x, x, cond, inverse=False)
        return z, sum_per_example(ld)

    def inverse(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        self._check(z)
        x = torch.zeros_like(z)
        for _ in range(self.dim):
            x = self._spline(z, x, cond, inverse=True)[0]
        return x

    def extra_repr(self) -> str:
        return f"dim={self.dim}, bins={self.bins}, tail_bound={self.tail_bound}, context={self.context}"

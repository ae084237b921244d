"""Bijective layers of normalizing flows: each maps x to z with the log-determinant of its Jacobian.

A :class:`Bijection` is an ``nn.Module`` with

* ``forward(x, cond=None) -> (z, log_det)``: z of the same number of values per example as
  x, and ``log_det`` (N,) = log |det dz/dx| per example, accumulated in float32 (or the
  input's dtype when wider), also under bf16 autocast;
* ``inverse(z, cond=None) -> x``, the exact inverse.

``cond`` is an optional context (N, C) (one-hot class labels) for layers that take one;
others ignore it. :class:`Sequential` composes bijections (log-determinants add). The
change of variables (Dinh et al. 2017, eq. 3): log p(x) = log p(z) + log |det dz/dx|.

The layers: :class:`ActNorm` (Glow), :class:`BatchNorm` (RealNVP, MAF; for vectors), :class:`InvConv1x1` / :class:`LULinear` (Glow's LU
1x1 convolution, also on vectors), :class:`AffineCoupling` (RealNVP; half, checkerboard and
channel masks), :class:`Squeeze` (RealNVP), :class:`Permutation` and :class:`Reverse`,
:class:`MaskedAffineAutoregressive` (MAF) and :class:`Logit` (RealNVP's preprocessing).
The scale terms, the transformed values and the log-determinants are computed with
autocast off in float32 (float64 for float64 inputs); only the coupling and MADE networks
run in bf16 under autocast. Every layer but the shape-only ones (squeeze, permutations)
returns z in that precision.

Shapes: ``N`` batch; vectors (N, D); images (N, C, H, W).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .masked import MADE


def logdet_dtype(x: torch.Tensor) -> torch.dtype:
    """float32, or x's dtype when it is wider (float64 in the maths tests)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def sum_per_example(t: torch.Tensor) -> torch.Tensor:
    """(N, ...) -> (N,), summed in :func:`logdet_dtype`."""
    flat = t.flatten(1) if t.dim() > 1 else t.unsqueeze(1)  # not reshape(N, -1): ambiguous for N = 0 (sample(0))
    return flat.to(logdet_dtype(t)).sum(dim=1)


class Bijection(nn.Module):
    """Base class: an invertible map with its log-determinant (see the module docstring)."""

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def inverse(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError


class Sequential(Bijection):
    """Bijections applied in order; the inverse runs them backwards."""

    def __init__(self, layers: Iterable[Bijection]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        total = x.new_zeros(len(x), dtype=logdet_dtype(x))
        for layer in self.layers:
            x, ld = layer(x, cond)
            total = total + ld
        return x, total

    def inverse(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        for layer in reversed(self.layers):
            z = layer.inverse(z, cond)
        return z


# -- helpers ---------------------------------------------------------------------------------------


def _full_precision(x: torch.Tensor):
    """A context that turns autocast off on x's device: the scale terms, log-determinants and
    the transformed values are computed in :func:`logdet_dtype` even under bf16 autocast."""
    return torch.autocast(x.device.type, enabled=False)


def _capturing() -> bool:
    """True while a CUDA graph is being captured (no host reads are allowed then)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _pixels(x: torch.Tensor) -> int:
    """H * W of an image batch (N, C, H, W); 1 for vectors (N, D)."""
    return x.shape[2] * x.shape[3] if x.dim() == 4 else 1


def _per_example(value: torch.Tensor, n: int) -> torch.Tensor:
    """A 0-d log-determinant shared by every example -> (n,), a fresh tensor."""
    return value.reshape(1).expand(n).contiguous()


# -- 1. actnorm ------------------------------------------------------------------------------------


class ActNorm(Bijection):
    """Activation normalisation (Kingma & Dhariwal 2018, Glow sec. 3.1): a per-channel affine
    map z = (x + b) * exp(log_s), with b and log_s parameters (C,).

    Shapes: ``image=True``: x (N, C, H, W), log_det = H * W * sum(log_s); ``image=False``:
    x (N, C), log_det = sum(log_s). Both (N,).

    Data-dependent initialisation (Glow sec. 3.1): :meth:`initialize` sets b = -mean and
    log_s = -log(std + eps) per channel from a batch, so that the outputs on that batch have
    zero mean and unit variance per channel (a channel constant on the batch keeps log_s = 0:
    zero mean, its spread untouched), and sets the ``initialized`` buffer (a 0-d bool
    tensor, saved in the state_dict, so a resumed run or a loaded model is not initialised
    again). :meth:`forward` calls :meth:`initialize` by itself on its input when the module is
    in training mode and ``initialized`` is False (the first training batch, or the first
    batch after ``initialized.fill_(False)``); in eval mode it never does, and an
    uninitialised layer is the identity. The flag is read from the device once and again
    only after it changes in place (``fill_``, ``load_state_dict``: its version counter
    moves), so a training step does no host read; under ``torch.compile`` or while a CUDA
    graph is captured it is not read at all (initialise before, e.g. in the model's
    ``data_init``). Note that *any* training-mode forward, also on dummy data, initialises.
    """

    def __init__(self, channels: int, image: bool = False, eps: float = 1e-6) -> None:
        super().__init__()
        self.channels, self.image, self.eps = channels, image, eps
        self.bias = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self._seen: tuple[int, int] | None = None  # (id, version) of the flag last read
        self._seen_value = False
        self._set_from_batch: tuple[int, int, int, int] | None = None  # (id, version) of bias and log_scale after initialize

    def extra_repr(self) -> str:
        return f"{self.channels}, image={self.image}"

    def _check(self, x: torch.Tensor) -> None:
        want = 4 if self.image else 2
        if x.dim() != want or x.shape[1] != self.channels:
            kind = "(N, C, H, W)" if self.image else "(N, C)"
            raise ValueError(f"ActNorm({self.channels}, image={self.image}) takes {kind} with C={self.channels}, got {tuple(x.shape)}")

    def _view(self, p: torch.Tensor) -> torch.Tensor:
        return p.view(1, -1, 1, 1) if self.image else p.view(1, -1)

    def _parameter_versions(self) -> tuple[int, int, int, int]:
        return id(self.bias), self.bias._version, id(self.log_scale), self.log_scale._version

    @property
    def provisional(self) -> bool:
        """True while the layer holds nothing to keep: never initialised, or initialised by
        :meth:`initialize` (a training-mode forward, on whatever batch it saw) with its scale
        and bias untouched since. An optimizer step, ``load_state_dict`` or any other change
        of them in place (their version counters move) makes the values the layer's own.
        The flows' ``data_init`` initialises provisional layers only. One host read."""
        return not bool(self.initialized) or self._set_from_batch == self._parameter_versions()

    def _needs_init(self) -> bool:
        if not self.training or torch.compiler.is_compiling():
            return False
        flag = self.initialized
        key = (id(flag), flag._version)
        if key != self._seen:
            if _capturing():
                return False
            self._seen_value, self._seen = bool(flag), key
        return not self._seen_value

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Set b and log_s from the batch x (N, C, H, W) or (N, C): per-channel mean and
        (biased) standard deviation over the batch (and the pixels), then mark initialised."""
        self._check(x)
        dims = (0, 2, 3) if self.image else (0,)
        if x.numel() // self.channels < 2:
            raise ValueError("ActNorm.initialize needs at least two values per channel")
        with _full_precision(x):
            xw = x.to(logdet_dtype(x))
            mean = xw.mean(dim=dims)
            std = xw.std(dim=dims, unbiased=False)
            self.bias.copy_(-mean)
            # A channel constant on this batch (a table's column that is all zeros in the
            # first batch, a blank border pixel) has no scale to set: 1 / (0 + eps) would
            # multiply it by 1e6 and put that in every later log-determinant. Such channels
            # keep the scale 1; "constant" is a spread at rounding level of the values.
            constant = std <= 1e-5 * mean.abs().clamp_min(1.0)
            self.log_scale.copy_(torch.where(constant, torch.zeros_like(std), -torch.log(std + self.eps)))
        self.initialized.fill_(True)
        self._seen, self._seen_value = (id(self.initialized), self.initialized._version), True
        self._set_from_batch = self._parameter_versions()

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, C, H, W) or (N, C) -> (z of the same shape, log_det (N,)); cond is ignored."""
        self._check(x)
        if self._needs_init():
            self.initialize(x)
        dt = logdet_dtype(x)
        with _full_precision(x):
            log_s = self.log_scale.to(dt)
            z = (x.to(dt) + self._view(self.bias.to(dt))) * self._view(log_s.exp())
            log_det = _per_example(log_s.sum() * _pixels(x), len(x))
        return z, log_det

    def inverse(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x = z * exp(-log_s) - b."""
        self._check(z)
        dt = logdet_dtype(z)
        with _full_precision(z):
            return z.to(dt) * self._view((-self.log_scale.to(dt)).exp()) - self._view(self.bias.to(dt))


# -- 2. invertible 1x1 convolution / LU linear map ----------------------------------------------------


class BatchNorm(Bijection):
    """Batch normalisation as a bijection on vectors (N, D) (Dinh et al. 2017, sec. 3.7;
    Papamakarios et al. 2017, MAF sec. 3.4):

        z = (x - m) / sqrt(v + eps) * exp(log_gamma) + beta,
        log_det = sum_d log_gamma_d - 0.5 log(v_d + eps)    (the same for every example)

    In training mode (m, v) are the batch's mean and biased variance (the log-determinant
    treats them as constants, as both papers do) and the running averages move towards them
    by ``momentum``; in eval mode (m, v) are the running averages, so the layer is a fixed
    elementwise affine map with exactly that log-determinant and inverse. :meth:`inverse`
    always uses the running averages: it inverts the eval-mode map (sampling, the codes).
    It starts as the identity (log_gamma = beta = 0, running mean 0 and variance 1).
    Computed in float32 (float64 for float64 inputs) with autocast off.
    """

    def __init__(self, features: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.features, self.momentum, self.eps = features, float(momentum), float(eps)
        self.log_gamma = nn.Parameter(torch.zeros(features))
        self.beta = nn.Parameter(torch.zeros(features))
        self.register_buffer("running_mean", torch.zeros(features))
        self.register_buffer("running_var", torch.ones(features))

    def extra_repr(self) -> str:
        return f"{self.features}, momentum={self.momentum}, eps={self.eps}"

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.features:
            raise ValueError(f"BatchNorm({self.features}) takes (N, {self.features}), got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, D) -> (z (N, D), log_det (N,)); cond is ignored."""
        self._check(x)
        dt = logdet_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            xw = x.to(dt)
            if self.training:
                if len(x) < 2:
                    raise ValueError("BatchNorm in training mode needs at least two examples per batch")
                mean, var = xw.mean(dim=0), xw.var(dim=0, unbiased=False)
                with torch.no_grad():
                    self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
                    self.running_var.lerp_(var.detach().to(self.running_var.dtype), self.momentum)
            else:
                mean, var = self.running_mean.to(dt), self.running_var.to(dt)
            log_gamma = self.log_gamma.to(dt)
            inv_std = torch.rsqrt(var + self.eps)
            z = (xw - mean) * (inv_std * log_gamma.exp()) + self.beta.to(dt)
            log_det = (log_gamma + inv_std.log()).sum()
        return z, log_det.reshape(1).expand(len(x)).contiguous()

    def inverse(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x = (z - beta) exp(-log_gamma) sqrt(v + eps) + m, with the running averages."""
        self._check(z)
        dt = logdet_dtype(z)
        with torch.autocast(z.device.type, enabled=False):
            std = (self.running_var.to(dt) + self.eps).sqrt()
            return (z.to(dt) - self.beta.to(dt)) * ((-self.log_gamma.to(dt)).exp() * std) + self.running_mean.to(dt)


class InvConv1x1(Bijection):
    """Invertible 1x1 convolution (Kingma & Dhariwal 2018, Glow sec. 3.2): z = W x at every
    pixel, W (C, C); on vectors (N, C) the invertible linear map z = W x ("LULinear").

    ``lu=True`` (Glow's LU-decomposed parameterisation, eq. 10): W = P L (U + diag(sign(s) *
    exp(log|s|))), P a fixed permutation (buffer ``permutation``), L lower triangular with a
    unit diagonal (parameter ``lower``, strictly lower part used), U strictly upper
    triangular (parameter ``upper``, strictly upper part used), sign(s) a fixed buffer
    ``sign_s`` and log|s| the parameter ``log_s``; log|det W| = sum(log|s|), O(C).
    ``lu=False``: W is a free parameter ``weight`` and log|det W| its slogdet, O(C^3).

    W starts as a random rotation (QR of a Gaussian matrix drawn from the global RNG, so
    ``torch.manual_seed`` fixes it), log_det 0. Shapes: x (N, C, H, W) -> log_det =
    H * W * log|det W|; x (N, C) -> log|det W|; both (N,). The map is computed in float32
    (float64 for float64 inputs) with autocast off, so it stays invertible under bf16;
    the inverse uses W^-1 computed in float64 (float32 on MPS, which has no float64).
    """

    def __init__(self, channels: int, lu: bool = True) -> None:
        super().__init__()
        self.channels, self.lu = channels, lu
        w = torch.linalg.qr(torch.randn(channels, channels))[0]  # a random rotation (Glow's init)
        if lu:
            p, lower, upper = torch.linalg.lu(w)
            s = upper.diagonal()
            self.register_buffer("permutation", p)
            self.register_buffer("sign_s", s.sign())
            self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1), persistent=False)
            self.register_buffer("eye", torch.eye(channels), persistent=False)
            self.lower = nn.Parameter(torch.tril(lower, -1))
            self.upper = nn.Parameter(torch.triu(upper, 1))
            self.log_s = nn.Parameter(s.abs().log())
        else:
            self.weight = nn.Parameter(w)

    def extra_repr(self) -> str:
        return f"{self.channels}, lu={self.lu}"

    def matrix(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """W (C, C) in ``dtype``."""
        if not self.lu:
            return self.weight.to(dtype)
        mask = self.lower_mask.to(dtype)
        lower = self.lower.to(dtype) * mask + self.eye.to(dtype)
        upper = self.upper.to(dtype) * mask.T + torch.diag(self.sign_s.to(dtype) * self.log_s.to(dtype).exp())
        return self.permutation.to(dtype) @ lower @ upper

    def log_abs_det(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """log |det W| (0-d) in ``dtype``."""
        if self.lu:
            return self.log_s.to(dtype).sum()
        return torch.linalg.slogdet(self.weight.to(dtype))[1]

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() not in (2, 4) or x.shape[1] != self.channels:
            raise ValueError(f"InvConv1x1({self.channels}) takes (N, {self.channels}) or (N, {self.channels}, H, W), got {tuple(x.shape)}")

    @staticmethod
    def _map(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w[:, :, None, None]) if x.dim() == 4 else F.linear(x, w)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, C, H, W) or (N, C) -> (W x, log_det (N,)); cond is ignored."""
        self._check(x)
        dt = logdet_dtype(x)
        with _full_precision(x):
            z = self._map(x.to(dt), self.matrix(dt))
            log_det = _per_example(self.log_abs_det(dt) * _pixels(x), len(x))
        return z, log_det

    def inverse(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x = W^-1 z."""
        self._check(z)
        dt = logdet_dtype(z)
        wide = torch.float32 if z.device.type == "mps" else torch.float64
        with _full_precision(z):
            w_inv = torch.linalg.inv(self.matrix(wide)).to(dt)
            return self._map(z.to(dt), w_inv)


class LULinear(InvConv1x1):
    """:class:`InvConv1x1` named for vectors: an invertible linear map z = W x of (N, D),
    LU-parameterised (Kingma & Dhariwal 2018, eq. 10; Durkan et al. 2019's LU linear layer)."""

    def __init__(self, features: int, lu: bool = True) -> None:
        super().__init__(features, lu)


# -- 3. affine coupling -------------------------------------------------------------------------------


class CouplingMLP(nn.Module):
    """The coupling network for vectors: x_a (N, d_a) [+ context (N, c), concatenated] ->
    (N, out): Linear -> ReLU -> ... -> Linear, the last layer zero-initialised (the coupling
    starts as the identity)."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int, cond_dim: int = 0) -> None:
        super().__init__()
        dims = [in_dim + cond_dim, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        last = nn.Linear(dims[-1], out_dim)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if cond is not None:
            x = torch.cat([x, cond.to(x.dtype)], dim=1)
        return self.net(x)


class CouplingConvNet(nn.Module):
    """The coupling network for images (Glow's NN(), Kingma & Dhariwal 2018 sec. 3.3):
    (N, C_in, H, W) -> (N, C_out, H, W) through 3x3 conv -> ReLU -> 1x1 conv -> ReLU -> 3x3
    conv, the last zero-initialised (the coupling starts as the identity). A context
    (N, c) enters as a learned per-channel bias of both hidden layers (like MADE's
    context).

    ``blocks`` > 0 puts that many residual blocks (h + 1x1(ReLU(3x3(ReLU(h))))) between the
    first convolution and the 1x1 one: RealNVP's s and t are deep residual networks (Dinh et
    al. 2017, sec. 4.1: 8 blocks for CIFAR-10, 4 for the downsampled ImageNets). Without
    batch normalisation (theirs), so that training and evaluation compute the same
    function; each block's last convolution starts at zero (the block starts as the
    identity, as the coupling does)."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int, cond_dim: int = 0, blocks: int = 0) -> None:
        super().__init__()
        if blocks < 0:
            raise ValueError(f"blocks must be >= 0, got {blocks}")
        self.conv1 = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.blocks = nn.ModuleList(_ResidualBlock(hidden) for _ in range(blocks))
        self.conv2 = nn.Conv2d(hidden, hidden, 1)
        self.conv3 = nn.Conv2d(hidden, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv3.weight)
        nn.init.zeros_(self.conv3.bias)
        self.cond1 = nn.Linear(cond_dim, hidden, bias=False) if cond_dim else None
        self.cond2 = nn.Linear(cond_dim, hidden, bias=False) if cond_dim else None

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(x)
        if self.cond1 is not None and cond is not None:
            h = h + self.cond1(cond.to(h.dtype))[:, :, None, None]
        for block in self.blocks:
            h = block(h)
        h = self.conv2(torch.relu(h))
        if self.cond2 is not None and cond is not None:
            h = h + self.cond2(cond.to(h.dtype))[:, :, None, None]
        return self.conv3(torch.relu(h))


class _ResidualBlock(nn.Module):
    """h (N, C, H, W) -> h + 1x1(ReLU(3x3(ReLU(h)))), the 1x1 zero-initialised."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.conv2(torch.relu(self.conv1(torch.relu(h))))


MASKS = ("half", "checkerboard", "channel")


class AffineCoupling(Bijection):
    """Affine coupling layer (Dinh et al. 2017, RealNVP eqs. 4-9): x is split by a mask into
    a kept part x_a and a transformed part x_b;

        z_a = x_a,    z_b = x_b * exp(s(x_a)) + t(x_a),    log_det = sum of s over x_b,

    and the inverse x_b = (z_b - t(z_a)) * exp(-s(z_a)) is exact.

    ``shape``: (D,) for vectors (an int is taken as (D,)), (C, H, W) for images.
    ``mask``:

    * ``"half"`` (vectors): the first D // 2 features and the rest; ``flip=False`` keeps the
      first part and transforms the rest, ``flip=True`` the other way round;
    * ``"channel"`` (images, sec. 3.4): the first C // 2 channels and the rest, ``flip`` as
      for ``"half"``;
    * ``"checkerboard"`` (images, sec. 3.4): ``flip`` is the parity: ``flip=False`` keeps
      the pixels where (h + w) is even (in every channel) and transforms the odd ones,
      ``flip=True`` the other way round. The network sees x * mask and the mask itself as
      an extra channel, and gives s, t at every pixel (RealNVP's b * x formulation).

    Alternate ``flip`` in consecutive couplings so that every value is transformed.

    Stabilised scale (RealNVP's code): s = scale * tanh(s_raw), with ``scale`` a learned
    parameter per transformed feature (vectors) or per channel (images), initialised to 1:
    |s| stays bounded, and the gradient near 0 is that of s_raw. s, t and z_b are computed
    in float32 (float64 for float64 inputs) with autocast off; only the network runs in
    bf16 under autocast.

    Networks: ``hidden`` is the MLP's hidden sizes for vectors (a sequence; an int h means
    (h, h)) and the conv net's width for images (an int; see :class:`CouplingMLP`,
    :class:`CouplingConvNet`; ``blocks`` residual blocks in it, images only). Both start
    with a zero last layer, so the layer starts as the identity. ``net_factory(in_size, out_size, cond_dim) -> nn.Module`` replaces them:
    the module is called ``net(h, cond)`` (cond None when cond_dim is 0) on h (N, in_size)
    or (N, in_size, H, W) (checkerboard: C + 1 channels, the mask last) and returns
    (N, out_size[, H, W]), its first half the raw s and its second half t (along dim 1);
    zero-initialise its last layer yourself to start at the identity.

    ``cond_dim`` > 0: the layer takes a context cond (N, cond_dim) (one-hot labels),
    concatenated to the MLP's input or a per-channel bias of the conv net; it is required
    then. With cond_dim 0 a given cond is ignored.
    """

    def __init__(
        self,
        shape: int | Sequence[int],
        mask: str = "half",
        flip: bool = False,
        hidden: int | Sequence[int] = 64,
        cond_dim: int = 0,
        *,
        blocks: int = 0,
        net_factory: Callable[[int, int, int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        shape = (shape,) if isinstance(shape, int) else tuple(int(s) for s in shape)
        if mask not in MASKS:
            raise ValueError(f"unknown coupling mask {mask!r}; use one of {MASKS}")
        if (len(shape) == 1) != (mask == "half") or len(shape) not in (1, 3):
            raise ValueError(f"mask {mask!r} does not fit shape {shape}: 'half' is for vectors (D,), 'checkerboard' and 'channel' for images (C, H, W)")
        self.shape, self.mask_kind, self.flip, self.cond_dim = shape, mask, bool(flip), cond_dim
        if mask == "checkerboard":
            c, h, w = shape
            hh, ww = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            keep = ((hh + ww) % 2 == int(self.flip)).float()
            self.register_buffer("mask", keep.view(1, 1, h, w), persistent=False)  # 1: kept (x_a)
            in_size, out_size, n_scale = c + 1, 2 * c, c
        else:
            total = shape[0]
            first = total // 2
            if first < 1:
                raise ValueError(f"a {mask!r} coupling needs at least 2 {'features' if mask == 'half' else 'channels'}, got {total}")
            self.sizes = (first, total - first)  # (first part, second part)
            kept, changed = (self.sizes[1], self.sizes[0]) if self.flip else self.sizes
            in_size, out_size, n_scale = kept, 2 * changed, changed
        scale_shape = (n_scale,) if len(shape) == 1 else (n_scale, 1, 1)
        self.scale = nn.Parameter(torch.ones(scale_shape))
        if net_factory is not None:
            self.net = net_factory(in_size, out_size, cond_dim)
        elif len(shape) == 1:
            if blocks:
                raise ValueError(f"blocks (residual blocks of the image coupling network) does not apply to vectors, got blocks={blocks}")
            sizes = (hidden, hidden) if isinstance(hidden, int) else tuple(hidden)
            self.net = CouplingMLP(in_size, sizes, out_size, cond_dim)
        else:
            if not isinstance(hidden, int):
                if len(hidden) != 1:
                    raise ValueError(f"image couplings take one width (an int) as hidden, got {hidden}")
                hidden = hidden[0]
            self.net = CouplingConvNet(in_size, int(hidden), out_size, cond_dim, blocks)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, mask={self.mask_kind!r}, flip={self.flip}, cond_dim={self.cond_dim}"

    def _check(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor | None:
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"AffineCoupling built for (N, {', '.join(map(str, self.shape))}) got {tuple(x.shape)}")
        if not self.cond_dim:
            return None
        if cond is None or cond.shape != (len(x), self.cond_dim):
            got = None if cond is None else tuple(cond.shape)
            raise ValueError(f"AffineCoupling(cond_dim={self.cond_dim}) needs cond (N, {self.cond_dim}), got {got}")
        return cond

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        first, second = x.split(self.sizes, dim=1)
        return (second, first) if self.flip else (first, second)

    def _merge(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([b, a] if self.flip else [a, b], dim=1)

    def _scale_shift(self, h: torch.Tensor, cond: torch.Tensor | None, dt: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's (s, t) in ``dt``: s = scale * tanh(s_raw) (RealNVP's code)."""
        out = self.net(h, cond)
        with _full_precision(out):
            s_raw, t = out.to(dt).chunk(2, dim=1)
            return self.scale.to(dt) * torch.tanh(s_raw), t

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, *shape) [, cond (N, cond_dim)] -> (z (N, *shape), log_det (N,))."""
        cond = self._check(x, cond)
        dt = logdet_dtype(x)
        if self.mask_kind == "checkerboard":
            m = self.mask.to(dt)
            xw = x.to(dt)
            s, t = self._scale_shift(torch.cat([xw * m, m.expand(len(x), 1, -1, -1)], dim=1), cond, dt)
            with _full_precision(x):
                s, t = s * (1 - m), t * (1 - m)  # kept pixels: s = t = 0, z = x exactly
                return xw * s.exp() + t, sum_per_example(s)
        a, b = self._split(x)
        s, t = self._scale_shift(a, cond, dt)
        with _full_precision(x):
            return self._merge(a.to(dt), b.to(dt) * s.exp() + t), sum_per_example(s)

    def inverse(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x = the exact inverse: x_a = z_a, x_b = (z_b - t(z_a)) * exp(-s(z_a))."""
        cond = self._check(z, cond)
        dt = logdet_dtype(z)
        if self.mask_kind == "checkerboard":
            m = self.mask.to(dt)
            zw = z.to(dt)
            s, t = self._scale_shift(torch.cat([zw * m, m.expand(len(z), 1, -1, -1)], dim=1), cond, dt)
            with _full_precision(z):
                s, t = s * (1 - m), t * (1 - m)
                return (zw - t) * (-s).exp()
        a, b = self._split(z)
        s, t = self._scale_shift(a, cond, dt)
        with _full_precision(z):
            return self._merge(a.to(dt), (b.to(dt) - t) * (-s).exp())


# -- 4. squeeze ------------------------------------------------------------------------------------


class Squeeze(Bijection):
    """RealNVP's squeeze (Dinh et al. 2017, sec. 3.6): (N, C, H, W) -> (N, 4C, H/2, W/2),
    each 2x2 block of a channel becoming 4 channels (output channel 4c + 2i + j holds
    pixel (2h + i, 2w + j) of channel c); log_det 0; exact inverse. H and W must be even
    (ValueError otherwise)."""

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(f"Squeeze takes images (N, C, H, W), got {tuple(x.shape)}")
        n, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"Squeeze needs an even height and width, got {h} x {w}")
        z = x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(n, 4 * c, h // 2, w // 2)
        return z, x.new_zeros(n, dtype=logdet_dtype(x))

    def inverse(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if z.dim() != 4 or z.shape[1] % 4:
            raise ValueError(f"Squeeze.inverse takes (N, 4C, H, W), got {tuple(z.shape)}")
        n, c4, h, w = z.shape
        c = c4 // 4
        return z.reshape(n, c, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, c, 2 * h, 2 * w)


# -- 5. fixed permutations --------------------------------------------------------------------------


class Permutation(Bijection):
    """A fixed random permutation of dim 1 (the features of (N, D), the channels of
    (N, C, H, W)), drawn from ``seed`` and kept in the buffer ``perm``; log_det 0."""

    def __init__(self, features: int, seed: int = 0) -> None:
        super().__init__()
        perm = torch.randperm(features, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("perm", perm)
        self.register_buffer("inverse_perm", torch.argsort(perm), persistent=False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.inverse_perm.copy_(torch.argsort(self.perm))

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[1] != len(self.perm):
            raise ValueError(f"Permutation({len(self.perm)}) got {tuple(x.shape)}")
        return x.index_select(1, self.perm), x.new_zeros(len(x), dtype=logdet_dtype(x))

    def inverse(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return z.index_select(1, self.inverse_perm)


class Reverse(Bijection):
    """Reverses dim 1 (the features of (N, D), the channels of (N, C, H, W)): MAF's order
    reversal between autoregressive layers (Papamakarios et al. 2017, sec. 3); log_det 0."""

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return x.flip(1), x.new_zeros(len(x), dtype=logdet_dtype(x))

    def inverse(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return z.flip(1)


# -- 6. masked autoregressive flow ----------------------------------------------------------------------


class MaskedAffineAutoregressive(Bijection):
    """One MAF layer (Papamakarios et al. 2017, sec. 3): a :class:`~deepgen.nn.masked.MADE`
    gives (mu_d, alpha_d) from x_<d (in the MADE's order, the identity order), and

        z_d = (x_d - mu_d(x_<d)) * exp(-alpha_d(x_<d)),    log_det = -sum_d alpha_d    (eq. 5)

    in one pass (the density direction); the inverse x_d = z_d * exp(alpha_d) + mu_d is
    sequential: D passes of the MADE (sec. 3.1).

    Stabilised log-scale: alpha = B * tanh(alpha_raw / B), a soft clamp to (-B, B) with
    B = ``alpha_bound`` (5: exp(5) ~ 150 per layer), close to alpha_raw for small values.
    The MADE's output layer starts at zero, so the layer starts as the identity. mu, alpha
    and z are computed in float32 (float64 for float64 inputs) with autocast off.

    Shapes: x (N, D); cond (N, cond_dim) (required when cond_dim > 0, fed to every hidden
    layer of the MADE); log_det (N,). ``hidden``: the MADE's hidden sizes (an int: one
    layer); ``seed`` draws its hidden connectivity. Put :class:`Reverse` or
    :class:`Permutation` between MAF layers so the order changes.
    """

    def __init__(
        self, features: int, hidden: int | Sequence[int], cond_dim: int = 0, *, seed: int = 0, alpha_bound: float = 5.0
    ) -> None:
        super().__init__()
        hidden = (hidden,) if isinstance(hidden, int) else tuple(hidden)
        self.features, self.cond_dim, self.alpha_bound = features, cond_dim, float(alpha_bound)
        self.made = MADE(features, hidden, out_per_dim=2, context=cond_dim, seed=seed)
        last = self.made.layers[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        if self.made.context_out is not None:  # the context's direct path too: the layer starts as the identity
            nn.init.zeros_(self.made.context_out.weight)

    def extra_repr(self) -> str:
        return f"{self.features}, cond_dim={self.cond_dim}, alpha_bound={self.alpha_bound}"

    def _check(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor | None:
        if x.dim() != 2 or x.shape[1] != self.features:
            raise ValueError(f"MaskedAffineAutoregressive({self.features}) takes (N, {self.features}), got {tuple(x.shape)}")
        if not self.cond_dim:
            return None
        if cond is None or cond.shape != (len(x), self.cond_dim):
            got = None if cond is None else tuple(cond.shape)
            raise ValueError(f"MaskedAffineAutoregressive(cond_dim={self.cond_dim}) needs cond (N, {self.cond_dim}), got {got}")
        return cond

    def _mu_alpha(self, x: torch.Tensor, cond: torch.Tensor | None, dt: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.made(x, None if cond is None else cond.to(x.dtype))  # (N, D, 2)
        with _full_precision(out):
            mu, alpha_raw = out.to(dt).unbind(dim=2)
            return mu, self.alpha_bound * torch.tanh(alpha_raw / self.alpha_bound)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, D) -> (z (N, D), log_det (N,)) in one MADE pass."""
        cond = self._check(x, cond)
        dt = logdet_dtype(x)
        xw = x.to(dt)
        mu, alpha = self._mu_alpha(xw, cond, dt)
        with _full_precision(x):
            return (xw - mu) * (-alpha).exp(), -alpha.sum(dim=1)

    def inverse(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x from z in D MADE passes. Pass i recomputes every x_d = z_d exp(alpha_d) + mu_d
        from the current x; x_d depends only on the dimensions before d in the order, so
        after pass i the first i + 1 dimensions in the order are final (by induction), and
        after D passes all are. Out of place (no indexing), so autograd and graphs work."""
        cond = self._check(z, cond)
        dt = logdet_dtype(z)
        zw = z.to(dt)
        x = torch.zeros_like(zw)
        for _ in range(self.features):
            mu, alpha = self._mu_alpha(x, cond, dt)
            with _full_precision(z):
                x = zw * alpha.exp() + mu
        return x


# -- 7. logit --------------------------------------------------------------------------------------


class Logit(Bijection):
    """The logit preprocessing of dequantized images in [0, 1) (Dinh et al. 2017, sec. 4.1):

        p = alpha + (1 - 2 alpha) x,    y = logit(p) = log p - log(1 - p),
        log_det = sum over values of log(1 - 2 alpha) - log p - log(1 - p),

    the inverse x = (sigmoid(y) - alpha) / (1 - 2 alpha). ``alpha`` in [0, 0.5) keeps p away
    from 0 and 1 (RealNVP: 0.05). Any shape (N, ...); computed in float32 (float64 for
    float64 inputs) with autocast off. cond is ignored.

    1 - p is computed as alpha + (1 - 2 alpha)(1 - x), not as 1 - p: near x = 1 the rounding
    of p to float32's spacing (6e-8) would cost 1 - p most of its digits (0.013 nats per
    value at x = 1 with alpha = 1e-6), and with alpha below about 3e-8 p rounds to 1 and the
    log-determinant is infinite. 1 - x is exact for x in [0.5, 1].
    """

    def __init__(self, alpha: float = 0.05) -> None:
        super().__init__()
        if not 0.0 <= alpha < 0.5:
            raise ValueError(f"Logit's alpha must be in [0, 0.5), got {alpha}")
        self.alpha = float(alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        dt = logdet_dtype(x)
        with _full_precision(x):
            xw = x.to(dt)
            p = self.alpha + (1 - 2 * self.alpha) * xw
            q = self.alpha + (1 - 2 * self.alpha) * (1 - xw)  # 1 - p, without cancellation near x = 1
            log_p, log_q = torch.log(p), torch.log(q)
            log_det = sum_per_example(math.log1p(-2 * self.alpha) - log_p - log_q)
            return log_p - log_q, log_det

    def inverse(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        dt = logdet_dtype(z)
        with _full_precision(z):
            return (torch.sigmoid(z.to(dt)) - self.alpha) / (1 - 2 * self.alpha)

"""Normalizing flows: RealNVP, Glow, MAF and neural spline flows, with exact log-likelihoods.

A flow is an invertible map f from data x to codes z of the same size, with a standard
normal base density: log p(x) = log N(f(x); 0, I) + log |det df/dx| (Dinh et al. 2017,
eq. 3). Everything here is that formula over the bijections of :mod:`deepgen.nn.flows`
and :mod:`deepgen.nn.splines`; the models differ only in which bijections they stack.

The chapter, top to bottom:

1. configs: :class:`FlowConfig` (what all four share: conditioning, the logit transform's
   alpha, the sampling temperature), then one per model;
2. :class:`Flow` (not registered): the shared part: the preprocessing of [0, 1] data
   (the logit transform, its log-determinant counted), ``forward``/``inverse`` (the
   contract's invertible capability), the exact ``log_prob``, the loss on dequantized
   data, sampling at a temperature, encode / decode / interpolate in z; then what the
   vector bodies add against overfitting small tables: ``nn.flows.BatchNorm`` (the ``norm``
   setting) and dropout in the conditioner networks (``dropout``, :func:`add_dropout`);
3. the multi-scale architecture of RealNVP and Glow (:class:`MultiScale`: squeeze, steps,
   factor half the channels out, repeat);
4. the four registered models: ``realnvp`` (Dinh et al. 2017), ``glow`` (Kingma &
   Dhariwal 2018), ``maf`` (Papamakarios et al. 2017) and ``nsf`` (Durkan et al. 2019).

Data. ``continuous`` data in [0, 1] (8-bit images: the trainer's batches are dequantized
to y = (k + u) / 256 first, :func:`deepgen.data.dequantize`) goes through
y -> logit(alpha + (1 - 2 alpha) y), whose log-determinant is part of every log-likelihood,
so bits/dim follow the flow papers' convention (BENCHMARKS.md: bits/dim = (NLL / D + ln 256)
/ ln 2 on dequantized data). ``real`` data (standardised tables, 2-D points) is modelled
as it is. Images keep their shape through RealNVP and Glow; MAF and NSF see flattened
vectors.

Shapes: ``N`` batch, ``D`` values per example, images (N, C, H, W), codes z (N, D).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..data.dataset import Batch, DataSpec, Kind
from ..data.dequantize import dequantize, quantize
from ..errors import UserError
from ..nn import flows as fl
from ..nn import splines as sp
from ..nn.masked import MADE
from ..registry import register
from .base import GenerativeModel, Likelihood, LossOutput, ModelConfig
from .latent import interpolate_codes

LOG_2PI = math.log(2 * math.pi)
NORMS = ("none", "batchnorm", "actnorm")

# -- 1. configs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlowConfig(ModelConfig):
    """What every flow shares. ``temperature`` may change when a run is loaded."""

    load_time: ClassVar[frozenset[str]] = frozenset({"temperature"})
    sampling: ClassVar[frozenset[str]] = frozenset({"temperature"})
    #: Settings that size the convolutional image body alone, and those of the vector body
    #: alone (the multi-scale flows): set on the other kind of data they would change nothing,
    #: so the flow refuses them there (Flow.__init__) instead of ignoring them.
    image_only: ClassVar[tuple[str, ...]] = ()
    vector_only: ClassVar[tuple[str, ...]] = ()
    conditional: bool = False  # class-conditional p(x | y): labels enter every coupling network
    # [0, 1] data: y -> logit(alpha + (1 - 2 alpha) y) (RealNVP sec. 4.1). 1e-6 as MAF's
    # MNIST runs (Papamakarios et al. 2017, sec. 4.3): with RealNVP's 0.05 the blank
    # pixels' bin is only 0.07 wide in logit space, the flow makes it Gaussian-sharp, and
    # a test image with a stroke where training images are blank gets an enormous NLL
    # (benchmarks/RESULTS.md, the first MAF run on MNIST); at 1e-6 that bin is 8.3 wide.
    logit_alpha: float = 1e-6
    temperature: float = 1.0  # sampling: z ~ N(0, T^2 I) (Glow sec. 5); 1 = the model's own density, 0 = z = 0 (the mode of the base)
    # Vectors only (tables, 2-D points), against overfitting small tables:
    dropout: float = 0.0  # dropout after every hidden layer of the conditioner networks (MLPs, MADEs); training only
    # a normalisation bijection before every transform: "batchnorm" (MAF's batch norm,
    # Papamakarios et al. 2017 sec. 3.4; running statistics in eval mode), "actnorm"
    # (Glow's, initialised from the first training batch) or "none"
    norm: str = "none"

    def validate(self) -> None:
        super().validate()
        self.check(0 < self.logit_alpha < 0.5, f"logit_alpha must be in (0, 0.5), got {self.logit_alpha}")
        self.check(self.temperature >= 0, f"temperature must be >= 0 (0: every sample at z = 0), got {self.temperature}")
        self.check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1) (0 = off), got {self.dropout}")
        self.check(self.norm in NORMS, f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")


@dataclass(frozen=True)
class RealNVPConfig(FlowConfig):
    """Settings of ``realnvp``."""

    image_only: ClassVar[tuple[str, ...]] = ("scales", "couplings", "channels", "blocks")
    vector_only: ClassVar[tuple[str, ...]] = ("layers", "hidden", "dropout", "norm")
    scales: int = 3  # images: scales of the multi-scale architecture (each but the last squeezes and factors out half)
    couplings: int = 3  # images: checkerboard couplings per scale (and as many channel couplings after each squeeze)
    channels: int = 64  # images: width of the coupling networks' convolutions
    # images: residual blocks in each coupling network (RealNVP's s and t are ResNets, Dinh
    # et al. 2017 sec. 4.1; 0 = Glow's three-convolution network)
    blocks: int = 0
    layers: int = 8  # vectors: affine couplings (halves alternate)
    hidden: tuple[int, ...] = (256, 256)  # vectors: the coupling MLPs' hidden layers

    def validate(self) -> None:
        super().validate()
        self.check(self.scales >= 1 and self.couplings >= 1 and self.channels >= 1 and self.layers >= 1, "scales, couplings, channels and layers must be >= 1")
        self.check(self.blocks >= 0, f"blocks must be >= 0 (0 = no residual blocks), got {self.blocks}")
        self.check(len(self.hidden) >= 1 and all(h >= 1 for h in self.hidden), f"hidden must be one or more sizes >= 1, got {self.hidden}")


@dataclass(frozen=True)
class GlowConfig(FlowConfig):
    """Settings of ``glow``."""

    image_only: ClassVar[tuple[str, ...]] = ("levels", "channels")
    vector_only: ClassVar[tuple[str, ...]] = ("hidden", "dropout")  # (norm: refused on all data, glow has actnorm)
    levels: int = 2  # images: levels L (each squeezes; each but the last factors out half the channels)
    steps: int = 8  # flow steps K per level (vectors: in all): actnorm, invertible 1x1 conv, affine coupling
    channels: int = 128  # images: width of the coupling networks' convolutions
    hidden: tuple[int, ...] = (256, 256)  # vectors: the coupling MLPs' hidden layers

    def validate(self) -> None:
        super().validate()
        self.check(self.levels >= 1 and self.steps >= 1 and self.channels >= 1, "levels, steps and channels must be >= 1")
        self.check(len(self.hidden) >= 1 and all(h >= 1 for h in self.hidden), f"hidden must be one or more sizes >= 1, got {self.hidden}")


@dataclass(frozen=True)
class MAFConfig(FlowConfig):
    """Settings of ``maf``."""

    layers: int = 5  # MADE layers (Papamakarios et al.'s MNIST model: 5), each followed by a reversal of the order
    hidden: tuple[int, ...] = (1024,)  # each MADE's hidden layers

    def validate(self) -> None:
        super().validate()
        self.check(self.layers >= 1, f"layers must be >= 1, got {self.layers}")
        self.check(len(self.hidden) >= 1 and all(h >= 1 for h in self.hidden), f"hidden must be one or more sizes >= 1, got {self.hidden}")


@dataclass(frozen=True)
class NSFConfig(FlowConfig):
    """Settings of ``nsf``."""

    layers: int = 5  # spline transforms, each followed by an invertible linear map (LU)
    hidden: tuple[int, ...] = (256, 256)  # the conditioners' hidden layers
    bins: int = 8  # rational-quadratic bins K per dimension
    tail_bound: float = 5.0  # the splines act on [-B, B]; linear (identity) tails outside
    autoregressive: bool = False  # MADE conditioners (RQ-NSF (AR)) instead of couplings (RQ-NSF (C))

    def validate(self) -> None:
        super().validate()
        self.check(self.layers >= 1 and self.bins >= 2, "layers must be >= 1 and bins >= 2")
        self.check(self.tail_bound > 0, f"tail_bound must be > 0, got {self.tail_bound}")
        self.check(len(self.hidden) >= 1 and all(h >= 1 for h in self.hidden), f"hidden must be one or more sizes >= 1, got {self.hidden}")


# -- 2. what the four share -----------------------------------------------------------------------


class Flow(GenerativeModel):
    """Shared part of the flows (not registered): a subclass builds :attr:`body`, a
    :class:`~deepgen.nn.flows.Bijection` over the preprocessed data (images (N, C, H, W)
    when :attr:`image_body` is True, else vectors (N, D)), that returns codes (N, D)."""

    config: FlowConfig
    data_kinds: ClassVar[tuple[Kind, ...]] = ("continuous", "real")
    #: Every sample is a draw: the inverse map of z ~ N(0, T^2 I), with no output noise of its own.
    output_mean: ClassVar[bool] = False

    def __init__(self, config: FlowConfig, spec: DataSpec) -> None:
        super().__init__(config, spec, conditional=config.conditional)
        self.cond_dim = self.num_classes or 0
        # [0, 1] data is unbounded after the logit; real data is already.
        self.pre = fl.Logit(config.logit_alpha) if spec.kind == "continuous" else None
        self._refuse_unused(config)
        self.body = self.build_body()
        if config.dropout:
            add_dropout(self.body, config.dropout)

    @torch.no_grad()
    def data_init(self, batch: Batch) -> None:
        """Actnorm's data-dependent initialisation (Kingma & Dhariwal 2018, sec. 3.1): one
        forward pass on a batch of dequantized training data, in which every actnorm layer
        sets its scale and bias so that its outputs have zero mean and unit variance per
        channel. Glow's steps and the vector flows' ``norm=actnorm`` layers; the trainer
        calls it before the first step (before the weights are broadcast under torchrun
        and the EMA copy is made), so it does not depend on the first training step running
        eagerly (compile skips the actnorm's lazy initialisation). A flow without actnorm
        has nothing to initialise.

        Only provisional layers are initialised (:attr:`~deepgen.nn.flows.ActNorm.provisional`:
        never initialised, or set by a training-mode forward pass and untouched since, e.g. a
        caller's log_prob before training): a layer whose scale and bias were trained or
        loaded keeps them, so a new trainer on a trained or loaded flow (fine-tuning) starts
        from its weights instead of resetting every actnorm."""
        actnorms = [m for m in self.modules() if isinstance(m, fl.ActNorm) and m.provisional]
        if not actnorms:
            return
        x = dequantize(batch.x, self.spec) if self.spec.bin_width else batch.x
        for m in actnorms:
            m.initialized.fill_(False)
        with self.modes(train=True):
            self._forward(x, self.one_hot(batch.y, len(x), checked=False))

    @classmethod
    def rebuilt_config(cls, config: ModelConfig, spec: DataSpec) -> ModelConfig:
        """A saved run's settings of the body it does not build back at their defaults: runs
        of deepgen before they were refused (``_refuse_unused``) ignored them, so they built
        the same flow, and they still load."""
        assert isinstance(config, FlowConfig)
        unused = config.vector_only if cls.keeps_images and spec.is_image else config.image_only
        default = type(config)()
        return config.replace(**{k: getattr(default, k) for k in unused if getattr(config, k) != getattr(default, k)})

    def _refuse_unused(self, config: FlowConfig) -> None:
        """One UserError for settings changed from their defaults that the body built for
        this data does not use (``image_only`` on vectors, ``vector_only`` on images): a
        table's ``channels=32`` or an image's ``hidden=(64,)`` would be silently ignored."""
        unused = config.vector_only if self.image_body else config.image_only
        default = type(config)()
        changed = [f"{k}={getattr(config, k)!r}" for k in unused if getattr(config, k) != getattr(default, k)]
        if not changed:
            return
        name = type(self).__name__.lower()
        if self.image_body:
            raise UserError(
                f"{', '.join(changed)}: {', '.join(config.vector_only)} size the vector networks (tables, points); {name} on "
                f"images has convolutional couplings, sized by {', '.join(config.image_only)}. Leave them unset."
            )
        raise UserError(
            f"{', '.join(changed)}: {', '.join(config.image_only)} size {name}'s convolutional image networks; on vectors "
            f"({self.spec.dim} values) its couplings are MLPs, sized by {', '.join(config.vector_only)}. Leave them unset."
        )

    def norm_layers(self, d: int) -> list[fl.Bijection]:
        """The ``norm`` setting's layer for vectors (N, d), as a list: [] for ``"none"``."""
        if self.config.norm == "batchnorm":
            return [fl.BatchNorm(d)]
        return [fl.ActNorm(d, image=False)] if self.config.norm == "actnorm" else []

    def build_body(self) -> fl.Bijection:
        raise NotImplementedError

    #: True for the multi-scale flows: images keep their shape through the body.
    keeps_images: ClassVar[bool] = False

    @property
    def image_body(self) -> bool:
        """True when the body takes images (N, C, H, W); False: flattened vectors (N, D)."""
        return self.keeps_images and self.spec.is_image

    @property
    def body_shape(self) -> tuple[int, ...]:
        return tuple(self.spec.shape) if self.image_body else (self.spec.dim,)

    # -- the invertible map (the contract) ---------------------------------------------------
    def forward(self, x: torch.Tensor, *, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, *shape) in model space -> (z (N, D), log |det dz/dx| (N,)), the logit's
        log-determinant included. [0, 1] data outside [0, 1] has no code (the logit is not
        defined there): one :class:`UserError` in eval mode (:meth:`_check_unit_box`)."""
        self._check_unit_box(x, "forward")
        return self._forward(x, self.one_hot(cond, len(x)))

    def _check_unit_box(self, x: torch.Tensor, method: str) -> None:
        """Refuse [0, 1] (``continuous``) data with values outside [0, 1]. A host read, so
        only where the base class reads values too (:meth:`check_data`: eval mode, not
        traced, captured in a CUDA graph or under torch.func)."""
        if self.pre is None or not isinstance(x, torch.Tensor) or not self.may_read_values(x):
            return
        lo, hi = x.detach().aminmax()
        if float(lo) < 0 or float(hi) > 1:
            raise UserError(
                f"{type(self).registered_name}.{method}: this flow models data in [0, 1] (through a logit), and x holds values "
                f"from {float(lo):g} to {float(hi):g}, which have no code. (log_prob gives them -inf: no density there.)"
            )

    def _forward(self, x: torch.Tensor, c: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(x)
        x = x.to(self.dtype)  # the weights' dtype (float64 in the maths tests)
        log_det = x.new_zeros(n, dtype=fl.logdet_dtype(x))
        if self.pre is not None:
            x, log_det = self.pre(x, None)
        z, ld = self.body(x.reshape(n, *self.body_shape), c)
        return z.reshape(n, -1), log_det + ld

    def inverse(self, z: torch.Tensor, *, cond: torch.Tensor | None = None) -> torch.Tensor:
        """z (N, D) -> x (N, *shape), the exact inverse of :meth:`forward`."""
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[1] != self.spec.dim:
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else f"a {type(z).__name__}"
            raise UserError(f"{type(self).registered_name}.inverse takes codes z (N, {self.spec.dim}) (what forward returns); got {got}.")
        n = len(z)
        x = self.body.inverse(z.to(self.dtype), self.one_hot(cond, n)).reshape(n, *self.spec.shape)
        return x if self.pre is None else self.pre.inverse(x, None)

    # -- likelihood and loss --------------------------------------------------------------------
    def likelihood_info(self) -> Likelihood:
        note = "exact density" + (" of dequantized data: bits/dim count the bin width, an upper bound on the discrete NLL" if self.spec.bin_width else "")
        return Likelihood("exact", False, note)

    def _log_prob(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        z, log_det = self._forward(x, c)
        z = z.to(log_det.dtype)  # the density in float32 (or float64) under bf16 autocast too
        return -0.5 * (z * z).sum(dim=1) - 0.5 * z.shape[1] * LOG_2PI + log_det

    def log_prob(self, x: torch.Tensor, *, cond: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x) per example (N,), exact, in nats: a density of the model-space values
        (dequantized values for quantised data). The density of [0, 1] data is 0 outside
        [0, 1]^D, so an example with a value outside [0, 1] gets -inf (computed without a
        host read, its gradient 0); NaN stays NaN (eval mode refuses it)."""
        c = self.one_hot(cond, len(x))
        if self.pre is None:
            return self._log_prob(x, c)
        x = x.to(self.dtype)
        outside = ((x < 0) | (x > 1)).flatten(1).any(dim=1)  # (N,)
        return self._log_prob(x.clamp(0.0, 1.0), c).masked_fill(outside, -math.inf)

    def loss(self, batch: Batch, phase: str = "main") -> LossOutput:
        """Mean -log p(y) over the batch (nats per example) at dequantized y for quantised
        data (uniform noise from torch's generator: graph-safe); logs ``nll`` and
        ``bits_per_dim`` (with the bin width: the papers' figure)."""
        x = dequantize(batch.x, self.spec) if self.spec.bin_width else batch.x
        nll = -self._log_prob(x, self.one_hot(batch.y, len(x), checked=False)).mean()
        d = self.spec.dim
        bits = (nll.detach() / d - math.log(self.spec.bin_width or 1.0)) / math.log(2)
        return LossOutput(nll, {"nll": nll.detach(), "bits_per_dim": bits})

    # -- sampling and the code space ----------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self, n: int, *, generator: torch.Generator | None = None, cond: torch.Tensor | int | None = None, mean: bool = False
    ) -> torch.Tensor:
        """``n`` examples (n, *shape): z ~ N(0, T^2 I) (T = ``temperature``; 0: z = 0, the
        mode of the base density), mapped back; quantised data is put back on its levels.
        ``mean`` is not used: the inverse map is deterministic, so the output has no noise
        of its own to average (and callers pass ``mean=True`` for every image model: it must
        not turn n draws into n copies of the mode). In eval mode whatever the model's mode
        (:data:`~deepgen.models.base.EVAL_METHODS`): no dropout, batch norm's running averages."""
        labels = self.labels(cond, n)
        z = torch.randn((n, self.spec.dim), generator=generator, device=self.device, dtype=self.dtype)
        z = z * self.config.temperature
        x = self.inverse(z, cond=labels)
        if self.spec.kind == "continuous":
            x = x.clamp(0.0, 1.0)
            if self.spec.num_levels:
                x = quantize(x, self.spec)  # clamps 1.0's level to the top one
        return x

    def encode(self, x: torch.Tensor, *, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The code z = f(x): (N, *shape) -> (N, D)."""
        self._check_unit_box(x, "encode")
        return self._forward(x, self.one_hot(cond, len(x)))[0]

    def code_dim(self) -> int:
        """D, the data's size: a flow's code z = f(x) holds as many values as x."""
        return self.spec.dim

    def decode(self, z: torch.Tensor, *, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The inverse map: (N, D) -> (N, *shape)."""
        return self.inverse(z, cond=cond)

    @torch.no_grad()
    def interpolate(
        self, x1: torch.Tensor, x2: torch.Tensor, steps: int = 8, *, cond: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        """Decoded points along the straight line between the codes of x1 and x2 (one
        example each): (steps, *shape), the first row x1 and the last x2. In eval mode
        whatever the model's mode, as :meth:`sample`."""
        return interpolate_codes(self, x1, x2, steps, cond)


# -- 2b. vector bodies: dropout against overfitting small tables (the batch norm is nn.flows.BatchNorm) --------


def add_dropout(body: nn.Module, p: float) -> None:
    """Dropout with probability ``p`` after the activation of every hidden layer of the
    conditioner networks in ``body`` (the couplings' MLPs, the MADEs of MAF and of the
    autoregressive splines), in place. Dropout acts in training mode only, so the flow's
    eval-mode map (log_prob, inverse, the codes) stays an exact bijection; it does not
    break a MADE's masks (it only zeroes hidden units)."""
    for m in list(body.modules()):
        if isinstance(m, MADE):
            m.act = nn.Sequential(m.act, nn.Dropout(p))  # MADE applies act after every hidden layer only
        elif isinstance(m, (fl.CouplingMLP, sp.SplineCoupling)):
            # Each activation of Linear, activation, ..., Linear becomes (activation, dropout)
            # at its own index, so the Linear weights keep their names (net.0, net.2, ...):
            # weights trained with dropout load into the same flow without it.
            for i, layer in enumerate(m.net):
                if not isinstance(layer, nn.Linear):
                    m.net[i] = nn.Sequential(layer, nn.Dropout(p))


# -- 3. the multi-scale architecture -----------------------------------------------------------------------


class MultiScale(fl.Bijection):
    """RealNVP's multi-scale architecture (Dinh et al. 2017, sec. 3.6): each level's
    bijections run on (N, C, H, W); after every level but the last, half the channels are
    factored out (they go to z as they are) and the rest go on. Returns z (N, D): the
    factored parts of each level, then the last level's output, flattened."""

    def __init__(self, levels: list[fl.Bijection], shapes: list[tuple[int, int, int]]) -> None:
        """``shapes``: each level's output shape (C, H, W), known at construction."""
        super().__init__()
        self.levels = nn.ModuleList(levels)
        self.shapes = shapes

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(x)
        log_det = x.new_zeros(n, dtype=fl.logdet_dtype(x))
        parts = []
        for i, level in enumerate(self.levels):
            x, ld = level(x, cond)
            log_det = log_det + ld
            if i < len(self.levels) - 1:
                out, x = x.chunk(2, dim=1)
                parts.append(out.reshape(n, -1))
        parts.append(x.reshape(n, -1))
        return torch.cat(parts, dim=1), log_det

    def inverse(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        n = len(z)
        sizes = []
        for i, (c, h, w) in enumerate(self.shapes):
            sizes.append((c // 2 if i < len(self.shapes) - 1 else c) * h * w)
        parts = list(z.split(sizes, dim=1))
        c, h, w = self.shapes[-1]
        x = self.levels[-1].inverse(parts[-1].reshape(n, c, h, w), cond)
        for i in range(len(self.levels) - 2, -1, -1):
            c, h, w = self.shapes[i]
            x = torch.cat([parts[i].reshape(n, c // 2, h, w), x], dim=1)
            x = self.levels[i].inverse(x, cond)
        return x


def _check_halves(d: int, model: str) -> None:
    """Affine couplings on vectors keep one half of the values and transform the other: D >= 2."""
    if d < 2:
        raise UserError(
            f"{model}'s couplings split each example's values in two halves, so they need at least 2; this data has {d}. "
            "One-dimensional data: maf, or nsf with autoregressive=true."
        )


def _halvings(n: int) -> int:
    """How many times n >= 1 halves into whole numbers (6: once, 28: twice, 7: never)."""
    return (n & -n).bit_length() - 1


def _check_squeezable(spec: DataSpec, value: int, setting: str, model: str, unsqueezed: int) -> None:
    """One :class:`UserError` unless the squeezes of ``setting=value`` fit the image. Each
    squeeze halves the height and width, and the setting squeezes ``value - unsqueezed``
    times (realnvp: ``scales - 1``, unsqueezed 1; glow: ``levels``, unsqueezed 0), so both
    must be multiples of 2 to that power. The message names the values that fit."""
    _, h, w = spec.shape
    squeezes = value - unsqueezed
    if h % 2**squeezes == 0 and w % 2**squeezes == 0:
        return
    most = min(_halvings(h), _halvings(w)) + unsqueezed  # the largest value that fits
    times = "once" if squeezes == 1 else f"{squeezes} times"
    problem = (
        f"{model} with {setting}={value} squeezes the image {times} (each squeeze halves the height and width), "
        f"so both must be multiples of {2**squeezes}; this image is {h} x {w}."
    )
    if most >= 1:
        fits = f"{setting}=1" if most == 1 else f"{setting} from 1 to {most}"
        raise UserError(f"{problem} It takes {fits}.")
    raise UserError(
        f"{problem} {model} squeezes at least once, so no {setting} fits an odd height or width: "
        "use realnvp with scales=1, or maf or nsf (flattened images)."
    )


# -- 4. the models ------------------------------------------------------------------------------------


@register("realnvp")
class RealNVP(Flow):
    """RealNVP (Dinh et al. 2017): affine couplings with checkerboard and channel masks, multi-scale; MLP couplings for vectors."""

    config_class = RealNVPConfig
    config: RealNVPConfig
    keeps_images = True

    @classmethod
    def variants(cls, spec: DataSpec) -> list[dict[str, object]]:
        """Small networks; two scales on images, with a residual block (the plain coupling
        network is Glow's, tested there)."""
        if spec.is_image:
            return [{"scales": 2, "couplings": 2, "channels": 8, "blocks": 1}]
        return [{"layers": 4, "hidden": (16,)}]

    def build_body(self) -> fl.Bijection:
        c = self.config
        if not self.spec.is_image:
            d = self.spec.dim
            _check_halves(d, "realnvp")
            return fl.Sequential(
                layer for i in range(c.layers)
                for layer in [*self.norm_layers(d), fl.AffineCoupling((d,), "half", i % 2 == 1, c.hidden, self.cond_dim)]
            )
        _check_squeezable(self.spec, c.scales, "scales", "realnvp", unsqueezed=1)
        ch, h, w = self.spec.shape
        levels, shapes = [], []
        for s in range(c.scales):
            steps: list[fl.Bijection] = [
                fl.AffineCoupling((ch, h, w), "checkerboard", i % 2 == 1, c.channels, self.cond_dim, blocks=c.blocks)
                for i in range(c.couplings if s < c.scales - 1 else c.couplings + 1)
            ]
            if s < c.scales - 1:
                steps.append(fl.Squeeze())
                ch, h, w = 4 * ch, h // 2, w // 2
                steps += [fl.AffineCoupling((ch, h, w), "channel", i % 2 == 1, c.channels, self.cond_dim, blocks=c.blocks) for i in range(c.couplings)]
            levels.append(fl.Sequential(steps))
            shapes.append((ch, h, w))
            if s < c.scales - 1:
                ch //= 2
        return MultiScale(levels, shapes)


@register("glow")
class Glow(Flow):
    """Glow (Kingma & Dhariwal 2018): actnorm, invertible 1x1 convolutions and affine couplings, multi-scale; sampling temperature."""

    config_class = GlowConfig
    config: GlowConfig
    keeps_images = True

    @classmethod
    def variants(cls, spec: DataSpec) -> list[dict[str, object]]:
        if spec.is_image:
            return [{"levels": 2, "steps": 2, "channels": 8}]
        return [{"steps": 3, "hidden": (16,)}]

    def build_body(self) -> fl.Bijection:
        c = self.config
        if c.norm != "none":
            raise UserError("glow has an actnorm in every step already; leave norm unset (it is for realnvp, maf and nsf).")
        if not self.spec.is_image:
            d = self.spec.dim
            _check_halves(d, "glow")
            steps: list[fl.Bijection] = []
            for i in range(c.steps):
                steps += [fl.ActNorm(d, image=False), fl.InvConv1x1(d), fl.AffineCoupling((d,), "half", i % 2 == 1, c.hidden, self.cond_dim)]
            return fl.Sequential(steps)
        _check_squeezable(self.spec, c.levels, "levels", "glow", unsqueezed=0)
        ch, h, w = self.spec.shape
        levels, shapes = [], []
        for lv in range(c.levels):
            ch, h, w = 4 * ch, h // 2, w // 2
            steps = [fl.Squeeze()]
            for i in range(c.steps):
                steps += [
                    fl.ActNorm(ch, image=True), fl.InvConv1x1(ch),
                    fl.AffineCoupling((ch, h, w), "channel", i % 2 == 1, c.channels, self.cond_dim),
                ]
            levels.append(fl.Sequential(steps))
            shapes.append((ch, h, w))
            if lv < c.levels - 1:
                ch //= 2
        return MultiScale(levels, shapes)

@register("maf")
class MAF(Flow):
    """MAF (Papamakarios et al. 2017): masked autoregressive flow on MADE layers with order reversals; vectors and flattened images."""

    config_class = MAFConfig
    config: MAFConfig

    @classmethod
    def variants(cls, spec: DataSpec) -> list[dict[str, object]]:
        return [{"layers": 2, "hidden": (32,)}]

    def build_body(self) -> fl.Bijection:
        c, d = self.config, self.spec.dim
        steps: list[fl.Bijection] = []
        for _ in range(c.layers):
            steps += [*self.norm_layers(d), fl.MaskedAffineAutoregressive(d, c.hidden, self.cond_dim), fl.Reverse()]
        return fl.Sequential(steps)


@register("nsf")
class NSF(Flow):
    """Neural spline flow (Durkan et al. 2019): rational-quadratic spline couplings or autoregressive splines with linear tails."""

    config_class = NSFConfig
    config: NSFConfig

    @classmethod
    def variants(cls, spec: DataSpec) -> list[dict[str, object]]:
        return [{"layers": 2, "hidden": (16,)}, {"layers": 2, "hidden": (16,), "autoregressive": True}]

    def build_body(self) -> fl.Bijection:
        c, d = self.config, self.spec.dim
        if d < 2 and not c.autoregressive:
            raise UserError("nsf's couplings split the dimensions in two: one-dimensional data needs autoregressive=true.")
        steps: list[fl.Bijection] = []
        for i in range(c.layers):
            steps += self.norm_layers(d)
            if c.autoregressive:
                steps.append(sp.AutoregressiveSpline(d, c.hidden, bins=c.bins, tail_bound=c.tail_bound, context=self.cond_dim))
            else:
                steps.append(sp.SplineCoupling(d, c.hidden, bins=c.bins, tail_bound=c.tail_bound, flip=i % 2 == 1, context=self.cond_dim))
            steps.append(fl.InvConv1x1(d))
        return fl.Sequential(steps)


__all__ = ["MAF", "NSF", "Flow", "FlowConfig", "Glow", "GlowConfig", "MAFConfig", "MultiScale", "NSFConfig", "RealNVP", "RealNVPConfig"]

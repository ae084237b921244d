"""Diffusion: DDPM training, DDPM / DDIM / DPM-Solver++ sampling, classifier-free guidance
and the variational bound.

A DDPM (Ho et al. 2020) destroys data x_0 by the fixed forward process q(x_t | x_0) =
N(sqrt(abar_t) x_0, (1 - abar_t) I), t = 0..T-1 (:mod:`deepgen.samplers.schedule`), and
learns to undo it: a network predicts, from x_t and t, the noise (``prediction=eps``, Ho
et al.'s L_simple), the data (``x0``) or the velocity (``v``, Salimans & Ho 2022), trained
by mean squared error at uniformly drawn t. Sampling runs a reverse process from pure
noise with one of the samplers of :mod:`deepgen.samplers` (``sampler`` = ddpm | ddim |
dpm-solver++, ``steps``, ``eta``, ``spacing``: settings, overridable when a run is
loaded), all through one ``step`` call; the model only converts the network's output to
estimates of (x_0, eps).

The chapter, top to bottom:

1. :class:`DDPMConfig`: the process, the network, conditioning, sampling, the bound;
2. the networks (separate from the process, as in lucidrains' code): the U-Net of
   :mod:`deepgen.nn.unet` for images, an MLP denoiser for tables and 2-D points, or the
   user's own (``denoiser=deepgen.network(...)``);
3. :class:`DDPM` (``ddpm``): the loss, the denoiser with classifier-free guidance, the
   sampling loop, DDIM encoding / decoding, and ``log_prob``, the variational bound.

Data. Images (binary, [0, 1], or levels) are mapped to [-1, 1] (:mod:`deepgen.nn.signed`,
shared with the GANs) and samples mapped back (clamped, then quantised to the data's
levels); ``real`` data is used as it is. 8-bit images are not dequantized: the bound's
decoder gives each level a probability (Ho et al. sec. 3.3), so bits/dim are those of the
discrete data.

Classifier-free guidance (Ho & Salimans 2021). With ``conditional=true`` the label is
replaced by a null label with probability ``p_uncond`` in training, so one network is both
conditional and unconditional. At sampling, ``guidance`` s mixes the two outputs:
out = out(null) + s (out(y) - out(null)); s = 1 is the plain conditional model, s = 0 the
unconditional one, s > 1 guides (Ho & Salimans' w is s - 1). The model also accepts the
null label (-1) itself: ``sample(n, cond=-1)`` (``deepgen sample RUN --cond -1``) draws
from the unconditional model; both need label dropout (``p_uncond > 0``), without which
the null label was never trained. ``log_prob`` is the bound of p(x | y), unguided.

Shapes: ``N`` batch, ``D`` values per example, images (N, C, H, W), ``T`` timesteps, ``S``
sampling steps, ``C`` classes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..data.dataset import Batch, DataSpec, Kind
from ..data.dequantize import nearest_level
from ..errors import UserError
from ..nn.likelihoods import log1mexp
from ..nn.signed import from_signed, to_signed
from ..nn.unet import MLPDenoiser, UNet
from ..registry import register
from ..samplers import (
    PREDICTIONS,
    SAMPLERS,
    SCHEDULES,
    SPACINGS,
    NoiseSchedule,
    make_sampler,
    spaced_timesteps,
    usable_timesteps,
)
from .base import GenerativeModel, Likelihood, LossOutput, ModelConfig

NETWORKS = ("auto", "unet", "mlp")

# -- 1. config ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DDPMConfig(ModelConfig):
    """Settings of ``ddpm``. ``sampler``, ``steps``, ``eta``, ``spacing``, ``guidance``,
    ``clip_denoised`` and ``bound_stride`` change no parameter: a loaded run may override
    them (``deepgen sample RUN --set sampler=ddim --set steps=50``). Sampling reads all
    but ``bound_stride``, which is ``log_prob``'s (``deepgen eval RUN --set bound_stride=10``)."""

    load_time: ClassVar[frozenset[str]] = frozenset({"sampler", "steps", "eta", "spacing", "guidance", "clip_denoised", "bound_stride"})
    sampling: ClassVar[frozenset[str]] = frozenset({"sampler", "steps", "eta", "spacing", "guidance", "clip_denoised"})
    lr: float = 2e-4  # Ho et al. 2020's Adam rate (their CIFAR-10 runs)
    timesteps: int = 1000  # T
    schedule: str = "linear"  # linear (Ho et al. 2020) | cosine (Nichol & Dhariwal 2021)
    prediction: str = "eps"  # what the network predicts: eps (Ho et al.) | x0 | v (Salimans & Ho 2022)
    network: str = "auto"  # auto (unet for images, mlp otherwise) | unet | mlp
    channels: int = 64  # unet: width of the first level
    channel_mult: tuple[int, ...] = (1, 2, 2)  # unet: width multiple per level (each but the first halves the size)
    res_blocks: int = 2  # unet: residual blocks per level
    attention: tuple[int, ...] = (1,)  # unet: levels (0 = full size) with self-attention
    heads: int = 4  # unet: attention heads
    scale_shift: bool = True  # unet: ADM's scale-shift time conditioning (false: DDPM's additive one, as diffusers' default)
    dropout: float = 0.1  # unet: dropout in the residual blocks (Ho et al.: 0.1)
    hidden: tuple[int, ...] = (256, 256, 256)  # mlp: hidden layer sizes
    conditional: bool = False  # class-conditional, trained for classifier-free guidance
    p_uncond: float = 0.1  # conditional: probability a training label is dropped (Ho & Salimans 2021)
    # Sampling.
    sampler: str = "ddim"  # ddpm | ddim | dpm-solver++
    steps: int = 50  # network evaluations per sample (S <= T)
    eta: float = 0.0  # ddim: noise scale (0 deterministic, 1 = DDPM's posterior variance)
    spacing: str = "auto"  # timesteps: auto (the sampler's paper) | uniform | quadratic | trailing
    guidance: float = 1.0  # classifier-free guidance scale s (1: plain conditional; 0: unconditional)
    clip_denoised: bool = True  # images: clamp the x0 estimate to [-1, 1] at each step (Ho et al.'s code)
    # The likelihood bound.
    bound_stride: int = 1  # log_prob: the bound of the chain on every k-th timestep (1: all T; cost T / k passes)

    def validate(self) -> None:
        super().validate()
        self.check(self.timesteps >= 2, f"timesteps must be >= 2, got {self.timesteps}")
        self.check(self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        self.check(self.prediction in PREDICTIONS, f"prediction must be one of {', '.join(PREDICTIONS)}, got {self.prediction!r}")
        self.check(self.network in NETWORKS, f"network must be one of {', '.join(NETWORKS)}, got {self.network!r}")
        self.check(self.channels >= 1 and len(self.channel_mult) >= 1 and all(m >= 1 for m in self.channel_mult),
                   "channels and every channel_mult entry must be >= 1 (channel_mult has one entry per level)")
        self.check(self.res_blocks >= 1 and self.heads >= 1, "res_blocks and heads must be >= 1")
        self.check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        self.check(len(self.hidden) >= 1 and all(h >= 1 for h in self.hidden), f"hidden must be one or more sizes >= 1, got {self.hidden}")
        self.check(0.0 <= self.p_uncond < 1.0, f"p_uncond must be in [0, 1), got {self.p_uncond}")
        samplers = SAMPLERS.names()
        self.check(self.sampler in samplers, f"sampler must be one of {', '.join(samplers)}, got {self.sampler!r}")
        default = type(self).__dataclass_fields__["steps"].default
        hint = (f" (the sampling steps' default: with timesteps below {default}, set steps too, e.g. steps={self.timesteps // 2 or 1})"
                if self.steps == default > self.timesteps else "")
        self.check(1 <= self.steps <= self.timesteps, f"steps must be in 1..timesteps ({self.timesteps}), got {self.steps}{hint}")
        self.check(0 <= self.eta <= 1, f"eta must be in [0, 1] (0: deterministic DDIM, 1: DDPM's variance), got {self.eta}")
        fixed = SAMPLERS.get(self.sampler).fixed_eta
        if fixed is not None:  # 0 is the default, read as "not set"
            self.check(self.eta in (0.0, fixed), f"eta is DDIM's setting; the {self.sampler} sampler has eta = {fixed:g} built in. "
                       f"Use sampler=ddim for eta={self.eta:g}")
        self.check(self.spacing in SPACINGS, f"spacing must be one of {', '.join(SPACINGS)}, got {self.spacing!r}")
        if self.spacing == "quadratic":  # over the timesteps the samplers use (samplers/base.py)
            usable = usable_timesteps(NoiseSchedule.make(self.schedule, self.timesteps))
            over = usable if self.steps <= usable else self.timesteps
            try:
                spaced_timesteps(over, self.steps, "quadratic")
            except ValueError as e:
                why = f" (the samplers space their steps over the {usable} of the {self.timesteps} timesteps below the noise clip)" if over < self.timesteps else ""
                self.check(False, f"{e}{why}")
        self.check(math.isfinite(self.guidance) and self.guidance >= 0, f"guidance must be a number >= 0, got {self.guidance}")
        self.check(self.conditional or self.guidance == 1.0,
                   f"guidance={self.guidance:g} mixes conditional and unconditional outputs: it needs a model trained with conditional=true")
        # Without label dropout the null label's output was never trained: no unconditional model to mix in.
        self.check(not self.conditional or self.p_uncond > 0 or self.guidance == 1.0,
                   f"guidance={self.guidance:g} mixes conditional and unconditional outputs: it needs a model trained with "
                   "label dropout (p_uncond > 0); this one was trained with p_uncond=0")
        self.check(1 <= self.bound_stride < self.timesteps, f"bound_stride must be in 1..{self.timesteps - 1}, got {self.bound_stride}")


# -- 2. networks ----------------------------------------------------------------------------------

DENOISER_IO = (
    "maps denoiser(x_t, t, cond): x_t (N, *data_shape), t (N,) float timesteps in [0, T), cond (N,) int64 class indices "
    "0..C (C = no label) or None when unconditional, to (N, *data_shape): the prediction (eps, x0 or v)"
)


class _Flattened(nn.Module):
    """The MLP denoiser on data of any shape: x_t (N, *shape) flattened to (N, D) and the output shaped back."""

    def __init__(self, net: nn.Module, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.net, self.shape = net, shape

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        # flatten(1), not reshape(len(x), -1): with no examples (sample(0), the contract's
        # empty batch) the -1 is ambiguous and reshape raises; flatten keeps (0, D).
        return self.net(x.flatten(1), t, cond).reshape(len(x), *self.shape)


# -- 3. the model ---------------------------------------------------------------------------------


@register("ddpm")
class DDPM(GenerativeModel):
    """DDPM (Ho et al. 2020): U-Net or MLP denoiser; DDPM, DDIM and DPM-Solver++ samplers; classifier-free guidance; the variational bound."""

    config_class = DDPMConfig
    config: DDPMConfig
    data_kinds: ClassVar[tuple[Kind, ...]] = ("binary", "continuous", "discrete", "real")
    replaceable_networks: ClassVar[Mapping[str, str]] = {"denoiser": DENOISER_IO}
    #: Every sample is a draw of the reverse process (``mean`` only thresholds binary pixels at 0.5).
    output_mean: ClassVar[bool] = False
    #: The trainer settings a DDPM is trained with unless the user says otherwise: an EMA
    #: of the weights (Ho et al.: decay 0.9999) with diffusers' warm-up (power 3/4), so
    #: that short runs are not averaged over their random start; sampling and evaluation
    #: use the EMA weights.
    train_defaults: ClassVar[Mapping[str, Any]] = {"ema": 0.9999, "ema_warmup": 0.75}

    @classmethod
    def variants(cls, spec: DataSpec) -> list[dict[str, object]]:
        """A small network of the same architecture, and the same with v-prediction and
        DPM-Solver++ (guidance needs labels: tests/test_diffusion.py samples with it)."""
        if len(spec.shape) == 3:
            small: dict[str, object] = {"channels": 8, "channel_mult": (1, 2), "res_blocks": 1, "attention": (1,), "heads": 2,
                                        "timesteps": 20, "steps": 5}
        else:
            small = {"hidden": (16, 16), "timesteps": 20, "steps": 5}
        return [small, {**small, "prediction": "v", "sampler": "dpm-solver++"}]

    def __init__(self, config: DDPMConfig, spec: DataSpec, *, networks: Mapping[str, Any] | None = None) -> None:
        # The null label (-1: the unconditional model) is one the network was trained on
        # only with label dropout (p_uncond > 0).
        null = config.conditional and config.p_uncond > 0
        super().__init__(config, spec, conditional=config.conditional, null_label=null, networks=networks)
        sched = NoiseSchedule.make(config.schedule, config.timesteps)
        # The tables as buffers (not saved: the config rebuilds them): they follow the
        # model's device; float64 (see the schedule).
        self.register_buffer("betas", sched.betas, persistent=False)
        self.register_buffer("abar", sched.abar, persistent=False)
        self.denoiser = self.replaceable("denoiser", self._own_network)

    def _apply(self, fn, recurse: bool = True):
        """After any conversion (``.to(device)``, ``.half()``, ``.bfloat16()``, ``.float()``)
        the schedule's tables are rebuilt from the config in float64 (float32 on MPS, which
        has none): in bf16, 1 - abar_0 = 1e-4 rounds to 0 and the bound turns NaN."""
        betas, abar = self.betas, self.abar
        self.betas = self.abar = None  # not converted with the parameters
        try:
            super()._apply(fn, recurse)
            # Where the conversion sends a tensor of this model's device: a probe made on the
            # CPU told a dtype-only conversion (.half(), .bfloat16(), .float()) of a CUDA model
            # to bring the tables to the CPU, away from the parameters (model.cuda().bfloat16()
            # then sampled across devices). float32, not the float64 tables: MPS refuses float64.
            device = fn(torch.zeros((), device=abar.device)).device
        finally:
            self.betas, self.abar = betas, abar
        dt = torch.float32 if device.type == "mps" else torch.float64
        sched = NoiseSchedule.make(self.config.schedule, self.config.timesteps)
        self.betas, self.abar = sched.betas.to(device, dt), sched.abar.to(device, dt)
        return self

    def _own_network(self) -> nn.Module:
        c, spec = self.config, self.spec
        k = self.num_classes or 0
        net = c.network
        if net == "auto":
            net = "unet" if spec.is_image else "mlp"
        if net == "unet":
            if len(spec.shape) != 3:
                raise UserError(f"network=unet needs images (C, H, W); this data has shape {spec.shape}. Use network=mlp (or auto).")
            try:
                return UNet(spec.shape[0], channels=c.channels, channel_mult=c.channel_mult, res_blocks=c.res_blocks,
                            attention=c.attention, heads=c.heads, dropout=c.dropout, num_classes=k, image_size=tuple(spec.shape[1:]),
                            scale_shift=c.scale_shift)
            except ValueError as e:  # a setting that does not fit this data: the user's to change
                raise UserError(f"ddpm's U-Net: {e}") from None
        return _Flattened(MLPDenoiser(spec.dim, c.hidden, num_classes=k), tuple(spec.shape))

    def network_io(self, name: str, n: int) -> tuple[tuple[Any, ...], tuple[int, ...]]:
        cond = torch.zeros(n, dtype=torch.long) if self.conditional else None
        return (torch.zeros(n, *self.spec.shape), torch.zeros(n), cond), (n, *self.spec.shape)

    # -- the process ----------------------------------------------------------------------
    @property
    def schedule(self) -> NoiseSchedule:
        """The forward process, on the model's device (its tables are this model's buffers)."""
        return NoiseSchedule.from_tables(self.betas, self.abar)

    @property
    def _images(self) -> bool:
        """Image-like data on [-1, 1] in model space (clipped at sampling), not real data."""
        return self.spec.kind != "real"

    @property
    def _discrete(self) -> bool:
        """Data on a finite set of values (binary, levels): the bound is a probability."""
        return self.spec.kind in ("binary", "discrete") or bool(self.spec.num_levels)

    def to_model_space(self, x: torch.Tensor) -> torch.Tensor:
        """Data (N, *shape) -> x_0 of the process: [-1, 1] for images, as is for real data; in the model's dtype."""
        return to_signed(x.to(self.dtype), self.spec)

    def _net(self, xt: torch.Tensor, t: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        """The denoiser on x_t (N, *shape) at timesteps t (N,) int64, class indices (N,) or None."""
        out = self.denoiser(xt, t.float(), idx)  # t at full precision: bf16 would round 999 to 1000
        return out.to(xt.dtype)

    # -- training ---------------------------------------------------------------------------
    def loss(self, batch: Batch, phase: str = "main") -> LossOutput:
        """L_simple (Ho et al. eq. 14) and its x0 / v forms: the mean squared error of the
        network's prediction at x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t ~ U{0..T-1},
        eps ~ N(0, I). Conditional: each label is dropped to the null label with probability
        ``p_uncond``. Random draws come from torch's generator (graph-safe)."""
        x0 = self.to_model_space(batch.x)
        n = len(x0)
        sched = self.schedule
        t = torch.randint(0, sched.T, (n,), device=x0.device)
        noise = torch.randn_like(x0)
        xt = sched.q_sample(x0, t, noise)
        idx = self.label_index(batch.y, n, checked=False)
        if idx is not None and self.config.p_uncond > 0:
            drop = torch.rand(n, device=x0.device) < self.config.p_uncond
            idx = torch.where(drop, torch.full_like(idx, self.num_classes or 0), idx)
        out = self.denoiser(xt, t.float(), idx)
        target = sched.target(self.config.prediction, x0, noise, t)
        mse = F.mse_loss(out.float(), target.float())
        return LossOutput(mse, {"mse": mse.detach()})

    # -- the denoiser at sampling time -------------------------------------------------------------
    def denoise(self, xt: torch.Tensor, t: torch.Tensor | int, idx: torch.Tensor | None, *, guidance: float | None = None,
                clip: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The estimates (x0, eps), each (N, *shape), at x_t (N, *shape) and timestep t (an int
        or (N,)), with classifier-free guidance ``guidance`` (default: the config's) for
        conditional models: the conditional and the null-label outputs in one batch of 2N.
        ``clip`` (default: ``clip_denoised`` for images) clamps x0 to [-1, 1] and recomputes
        eps from it, so the sampler's step sees one consistent pair."""
        sched = self.schedule
        n = len(xt)
        t = torch.as_tensor(t, device=xt.device).long()
        t = t.expand(n) if t.dim() == 0 else t
        s = self.config.guidance if guidance is None else guidance
        if idx is not None and s == 0.0:  # the unconditional model alone
            out = self._net(xt, t, torch.full_like(idx, self.num_classes or 0))
        elif idx is not None and s != 1.0:
            null = torch.full_like(idx, self.num_classes or 0)
            both = self._net(torch.cat([xt, xt]), torch.cat([t, t]), torch.cat([idx, null]))
            out_c, out_u = both.chunk(2)
            out = out_u + s * (out_c - out_u)
        else:
            out = self._net(xt, t, idx)
        x0, eps = sched.split(self.config.prediction, out, xt, t)
        if (self.config.clip_denoised if clip is None else clip) and self._images:
            x0 = x0.clamp(-1.0, 1.0)
            eps = sched.eps_from_x0(x0, xt, t)
        return x0, eps

    def _index(self, cond: torch.Tensor | int | None, n: int) -> torch.Tensor | None:
        """Checked labels (or the null label -1) -> the denoiser's class indices (N,), None when unconditional."""
        y = self.labels(cond, n)
        return None if y is None else self.label_index(y, n, checked=False)

    @torch.no_grad()
    def reverse(self, x: torch.Tensor, idx: torch.Tensor | None, *, sampler: str | None = None, steps: int | None = None,
                eta: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Run a reverse process from x (N, *shape) at its first timestep to x_0 in model
        space: the config's sampler (or ``sampler``, ``steps``, ``eta``, checked as the
        settings are: ``steps=0`` is refused, not read as the config's)."""
        given = {k: v for k, v in (("sampler", sampler), ("steps", steps), ("eta", eta)) if v is not None}
        if sampler is not None and eta is None and SAMPLERS.get(sampler).fixed_eta is not None:
            given["eta"] = 0.0  # the config's DDIM eta is not this sampler's ("not set")
        c = self.config.replace(**given) if given else self.config
        smp = make_sampler(c.sampler, self.schedule, c.steps, eta=None if SAMPLERS.get(c.sampler).fixed_eta is not None else c.eta,
                           spacing=c.spacing)
        for i, t in enumerate(smp.timesteps):
            x0, eps = self.denoise(x, t, idx)
            x = smp.step(i, x, x0, eps, generator)
        return x

    @contextmanager
    def _evaluating(self):
        """Eval mode (no dropout) inside, the caller's mode restored after, errors included."""
        was = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was)

    @torch.no_grad()
    def sample(
        self, n: int, *, generator: torch.Generator | None = None, cond: torch.Tensor | int | None = None, mean: bool = False
    ) -> torch.Tensor:
        """``n`` examples (n, *shape) in the data's own space: x_T ~ N(0, I), then the
        configured sampler; labels ``cond`` for conditional models (None or -1: the
        unconditional model). Binary data: each pixel drawn with probability (x_0 + 1) / 2
        of the final x_0 (clamped), or thresholded at 0.5 with ``mean=True``; quantised data:
        the nearest level.

        Reproducibility: the same ``generator`` state, ``n``, settings and device give the same
        samples, the global generator playing no part. Not across batch sizes: the first k of
        ``sample(n)`` are not ``sample(k)`` in general. x_T is one draw of the whole batch
        (torch's CPU normal fills 16 values at a time, so even its prefix agrees only when both
        sizes are multiples of 16), and the stochastic samplers (ddpm, ddim with eta > 0, and
        binary data's final draw) take each step's noise for the whole batch after it. For
        per-example seeds, draw each example (or each fixed-size batch) with its own generator,
        as diffusers' list of generators does."""
        idx = self._index(cond, n)
        with self._evaluating():
            x = torch.randn((n, *self.spec.shape), generator=generator, device=self.device, dtype=self.dtype)
            x = self.reverse(x, idx, generator=generator)
        # Quantised [0, 1] data (8-bit images): the nearest of its levels, the values the
        # bound's decoder gives a probability (from_signed leaves u anywhere in [0, 1]).
        return nearest_level(from_signed(x, self.spec, generator, mean=mean), self.spec)

    # -- DDIM encoding (Song et al. 2021, sec. 4.3 and 5.4) ----------------------------------------
    def _code_timesteps(self) -> torch.Tensor:
        """The timesteps of DDIM encoding and decoding, descending: those of the DDIM sampler
        at ``steps`` with the uniform spacing, over the timesteps below its noise clip
        (lambda_t >= -5.1, samplers/base.py) as sampling is. Spaced over all T instead, the
        cosine schedule's code sits at abar ~ 2e-9, where decoding multiplies the eps
        network's error by 1 / sqrt(abar): codes decoded far from the data, and a round trip
        10x worse than the linear schedule's."""
        return make_sampler("ddim", self.schedule, self.config.steps, spacing="uniform").timesteps

    @torch.no_grad()
    def encode(self, x: torch.Tensor, *, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, *shape) -> its code x_T (N, D): the deterministic DDIM (eta = 0) ODE run
        forward over ``steps`` timesteps of the DDIM spacing, each step the inverse of a
        DDIM step with the estimates at the current point (Song et al. 2021, eq. 13).
        :meth:`decode` maps it back (with the same ``steps``), closely for a smooth model."""
        idx = self._index(cond, len(x))
        sched = self.schedule
        ts = self._code_timesteps().flip(0)  # ascending
        with self._evaluating():
            h = self.to_model_space(x)
            for i, t in enumerate(ts):
                at = ts[i - 1] if i else ts[0]  # the first estimate at the data itself, taken as x at ts[0]
                x0, eps = self.denoise(h, at, idx, guidance=1.0, clip=False)
                # sqrt(abar), sqrt(1 - abar) in float64, cast as the last step (as the samplers
                # do): in bf16 abar_t > 0.998 rounds to 1, so 1 - abar was 0 (or 2^-8) over the
                # first timesteps and the code drifted with the number of steps.
                a = sched.alpha_bar(t, h)
                h = a.sqrt().to(h.dtype) * x0 + (1 - a).sqrt().to(h.dtype) * eps
        return h.flatten(1)

    def code_dim(self) -> int:
        """D, the data's size: the code is x_T, of x's shape, flattened."""
        return self.spec.dim

    @torch.no_grad()
    def decode(self, z: torch.Tensor, *, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Codes z (N, D) (from :meth:`encode`, or N(0, I) draws) -> data (N, *shape): DDIM
        with eta = 0 on the timesteps :meth:`encode` used, no clipping, mapped to the data's space."""
        idx = self._index(cond, len(z))
        sched = self.schedule
        ts = self._code_timesteps()
        with self._evaluating():
            h = z.reshape(len(z), *self.spec.shape).to(self.dtype)
            for i, t in enumerate(ts):
                x0, eps = self.denoise(h, t, idx, guidance=1.0, clip=False)
                b = sched.alpha_bar(ts[i + 1] if i + 1 < len(ts) else -1, h)  # float64, cast at use (see encode)
                h = b.sqrt().to(h.dtype) * x0 + (1 - b).sqrt().to(h.dtype) * eps
        return from_signed(h, self.spec, mean=True) if self._images else h

    @torch.no_grad()
    def interpolate(self, x1: torch.Tensor, x2: torch.Tensor, steps: int = 8, *, cond: torch.Tensor | int | None = None) -> torch.Tensor:
        """(steps, *shape): :meth:`decode` along the spherical path between the DDIM codes
        of x1 and x2 (one example each), the first row x1's and the last x2's. Spherical
        (Song et al. 2021, sec. 5.3, after White 2016): the codes are Gaussian, and the
        straight line between two of them passes through codes of atypically small norm."""
        x = torch.cat([x1.reshape(1, *self.spec.shape), x2.reshape(1, *self.spec.shape)]).to(self.device)
        label = None if cond is None else torch.as_tensor(cond, device=self.device).reshape(-1)[:1]
        z = self.encode(x, cond=None if label is None else label.expand(2))  # (2, D)
        path = slerp(z[0], z[1], torch.linspace(0, 1, steps, device=z.device, dtype=z.dtype))
        return self.decode(path, cond=None if label is None else label.expand(steps))

    # -- the variational bound (Ho et al. 2020, eq. 5 and sec. 3.3) --------------------------------
    def likelihood_info(self) -> Likelihood:
        k = self.config.bound_stride
        chain = ("every timestep" if k == 1 else
                 f"every {k}-th timestep ({len(range(0, self.config.timesteps, k))} of {self.config.timesteps}; looser than every timestep's)")
        decoder = "a discretized Gaussian decoder at t = 0" if self._discrete else "a Gaussian decoder at t = 0"
        note = f"variational bound of the reverse process on {chain}, {decoder}, one x_t draw per term"
        if self.conditional:
            # Guidance mixes two score estimates into a sampler; that mixture is no
            # normalised model, so the bound is of p(x | y) itself (Ho & Salimans 2021).
            g = self.config.guidance
            why = f"this run's guidance={g:g} applies to sampling only" if g != 1.0 else "guidance applies to sampling only"
            note += f", of p(x | y) at each example's label without guidance ({why}: a guided sampler defines no likelihood)"
        return Likelihood("bound", self._discrete, note)

    @torch.no_grad()
    def log_prob(self, x: torch.Tensor, *, cond: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """A lower bound on log p(x) per example (N,) in nats (Ho et al. 2020, eq. 5):

            -L = -KL(q(x_last | x_0) || N(0, I)) - sum_j KL(q(x_s | x_t, x_0) || p(x_s | x_t)) + log p(x_0 | x_{t_0})

        over the chain of timesteps 0, k, 2k, ... (k = ``bound_stride``; the bound of the
        model's own reverse process on those steps, exact in expectation over x_t, estimated
        with one draw of x_t per term). The reverse steps are Gaussians with the posterior's
        variance (fixed, "small") around the posterior mean at the network's x0 estimate
        (not clipped); the decoder at t = 0 gives images' levels the mass of their bins
        under N(x0_hat, beta~_1) (edges to +-inf, sec. 3.3), a probability of the discrete
        data; for real data it is that Gaussian's density. Labels: ``cond``: the bound of the
        conditional model p(x | y), unguided whatever the config's ``guidance`` (a guided
        sampler defines no likelihood; :meth:`likelihood_info` says so)."""
        idx = self._index(cond, len(x))
        sched = self.schedule
        dt = torch.float64 if x.dtype == torch.float64 else torch.float32
        x0 = to_signed(self._on_levels(x, dt), self.spec)  # the levels exactly, whatever the model's and the data's dtype
        n = len(x0)
        ts = torch.arange(0, sched.T, self.config.bound_stride, device=x0.device)  # ascending chain
        dims = tuple(range(1, x0.dim()))
        with self._evaluating():
            # Prior term: KL(N(sqrt(a) x0, 1 - a) || N(0, 1)) per dimension at the last timestep.
            a = sched.alpha_bar(ts[-1]).to(dt)
            total = -0.5 * ((1 - a) + a * x0.pow(2) - 1 - torch.log1p(-a)).sum(dims)
            for j in range(len(ts) - 1, 0, -1):
                t, s = ts[j], ts[j - 1]
                xt = sched.q_sample(x0, t.expand(n), _randn_like(x0, generator))
                x0_hat, _ = self._estimate(xt, t, idx)
                mean, var = sched.posterior(x0, xt, t, s)
                mean_hat, _ = sched.posterior(x0_hat, xt, t, s)
                total = total - ((mean - mean_hat).pow(2) / (2 * var)).sum(dims)  # equal variances: the KL is the mean term
            # Decoder term at t_0 = 0, variance beta~_1 (Ho et al.'s code clips beta~_0 = 0 to it).
            t0 = ts[0]
            xt = sched.q_sample(x0, t0.expand(n), _randn_like(x0, generator))
            x0_hat, _ = self._estimate(xt, t0, idx)
        var0 = sched.posterior(x0, x0, 1, 0)[1].to(dt)
        if self._discrete:
            total = total + discretized_gaussian_log_prob(x0, x0_hat, 0.5 * var0.log(), _levels(self.spec)).sum(dims)
        else:
            total = total - 0.5 * ((x0 - x0_hat).pow(2) / var0 + var0.log() + math.log(2 * math.pi)).sum(dims)
            if self._images:  # a density of [0, 1] data: x_0 = 2 u - 1 adds log 2 per value
                total = total + x0[0].numel() * math.log(2.0)
        return total

    def _on_levels(self, x: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
        """Discrete data x (N, *shape) in ``dt``, exactly on its levels (binary 0 / 1, the
        integers 0..L-1, or k / (L - 1) of [0, 1]); other data as it is.

        The bound of discrete data is a probability of its L values: the decoder gives each
        level the mass of its bin, centred on the level. Values are put on the nearest level,
        which undoes the dtype's rounding: in bfloat16 (a bf16 model's own samples) k / 255
        lies up to half a level away, and was scored as a bin centred off the level. A value
        farther than that rounding from any level, or outside them (a binary pixel given as
        the probability 0.3, a resized or dequantized 8-bit image, level 2.5) is refused with
        one :class:`UserError`: scored, it gave a finite figure that bounds nothing. The
        check is one host read, skipped where :meth:`check_data` skips its value checks
        (training, tracing, CUDA-graph capture, torch.func transforms such as the anomaly
        app's vmap); the rounding is not."""
        if not self._discrete:
            return x.to(dt)
        levels = _levels(self.spec)
        scale = 1 if self.spec.kind == "discrete" else levels - 1  # data value -> level index
        k = x.to(dt) * scale
        near = k.round().clamp(0, levels - 1)
        if self.may_read_values(x):
            tol = max(1e-2, scale * _half_ulp(levels - 1 if scale == 1 else 1.0, x.dtype))  # in levels: bf16 0.498 of 255
            off = (k - near).abs() > tol
            if bool(off.any()):
                bad = float(x.flatten()[off.flatten().nonzero()[0]])
                values = ("0 and 1" if self.spec.kind == "binary" else
                          f"the integers 0..{levels - 1}" if self.spec.kind == "discrete" else f"k / {levels - 1}, k = 0..{levels - 1}")
                raise UserError(
                    f"ddpm.log_prob: the bound of {self.spec.kind} data is a probability of its {levels} levels ({values}); "
                    f"x holds {int(off.sum())} value(s) off them (e.g. {bad:g}). Pass the data as its dataset gives it "
                    "(binary pixels drawn or thresholded, 8-bit images as k / 255, not dequantized)."
                )
        return near / scale

    def _estimate(self, xt: torch.Tensor, t: torch.Tensor, idx: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) estimates without guidance or clipping (the bound's model), in x_t's dtype."""
        x0, eps = self.denoise(xt.to(self.dtype), t, idx, guidance=1.0, clip=False)
        return x0.to(xt.dtype), eps.to(xt.dtype)


def slerp(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between vectors a, b (D,) at weights w (K,) -> (K, D):
    sin((1 - w) theta) / sin(theta) a + sin(w theta) / sin(theta) b, theta the angle
    between them; the straight line when they are (anti)parallel within float precision."""
    cos = (a @ b) / (a.norm() * b.norm()).clamp_min(torch.finfo(a.dtype).tiny)
    theta = torch.arccos(cos.clamp(-1.0, 1.0))
    w = w.unsqueeze(1)
    if float(theta.sin()) < 1e-6:
        return torch.lerp(a.unsqueeze(0), b.unsqueeze(0), w)
    return (torch.sin((1 - w) * theta) * a + torch.sin(w * theta) * b) / theta.sin()


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _half_ulp(top: float, dtype: torch.dtype) -> float:
    """The largest rounding error of ``dtype`` on values in [0, top) (half the spacing of its
    floats below ``top``), 0 for integer dtypes: bfloat16 on [0, 1) rounds by up to 2^-9."""
    if not dtype.is_floating_point:
        return 0.0
    return 2.0 ** math.ceil(math.log2(top) - 1) * torch.finfo(dtype).eps / 2


def _levels(spec: DataSpec) -> int:
    """The number of values per pixel of discrete data: 2 for binary images, else the spec's levels."""
    return 2 if spec.kind == "binary" else int(spec.num_levels)


def discretized_gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, levels: int) -> torch.Tensor:
    """log P(x) elementwise for x on the L = ``levels`` values -1 + 2k / (L - 1) of [-1, 1],
    under N(mean, exp(log_scale)^2) discretized to bins of half-width 1 / (L - 1), the
    lowest bin reaching -inf and the highest +inf (Ho et al. 2020, eq. 13). Computed with
    ``log_ndtr`` in the tails, so an observed edge value far from the mean stays finite."""
    half = 1.0 / (levels - 1)
    inv = torch.exp(-log_scale)
    upper = (x - mean + half) * inv
    lower = (x - mean - half) * inv
    log_cdf_upper = torch.special.log_ndtr(upper)
    log_sf_lower = torch.special.log_ndtr(-lower)  # log(1 - Phi(lower))
    # The middle bins: log(Phi(upper) - Phi(lower)), from whichever tail is more accurate.
    # log(a - b) = log a + log(1 - exp(log b - log a)); the difference capped just below 0 so
    # that a bin too small for the dtype gets a very small mass, not log(0).
    left = log_cdf_upper + log1mexp((torch.special.log_ndtr(lower) - log_cdf_upper).clamp(max=-1e-30))
    right = log_sf_lower + log1mexp((torch.special.log_ndtr(-upper) - log_sf_lower).clamp(max=-1e-30))
    mid = torch.where(x - mean > 0, right, left)
    return torch.where(x < -1 + half / 2, log_cdf_upper, torch.where(x > 1 - half / 2, log_sf_lower, mid))

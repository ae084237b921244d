"""Generative adversarial networks: GAN, DCGAN, WGAN, WGAN-GP, their losses, spectral normalisation and the remedies for mode collapse.

A GAN trains a generator ``G(z)`` against a discriminator ``D(x)`` (Goodfellow et al.
2014). In deepgen both are phases of the one trainer: a ``discriminator`` phase (a
``critic`` phase for the Wasserstein GANs) that updates D on real data and detached
fakes, then a ``generator`` phase that updates G through a frozen D. There is no GAN
loop of its own: a WGAN's five critic steps are ``Phase(repeats=5, new_batch=True)`` and
its weight clipping is the phase's ``after_step`` hook.

The chapter, top to bottom:

1. configs: :class:`GANConfig` (``gan``), :class:`DCGANConfig` (``dcgan``),
   :class:`WGANConfig` (``wgan``), :class:`WGANGPConfig` (``wgan-gp``), all sharing
   :class:`AdversarialConfig` (networks, optimiser, conditioning, the remedies);
2. the losses as plain functions, each next to its formula, so that tests can check them
   and the adversarial autoencoder can share them: :func:`discriminator_loss`,
   :func:`generator_loss` (the games ``minimax``, ``non-saturating``, ``hinge``,
   ``least-squares``: ``g_loss``), :func:`hinge_discriminator_loss`,
   :func:`hinge_generator_loss`, :func:`least_squares_discriminator_loss`,
   :func:`least_squares_generator_loss`, :func:`critic_loss`,
   :func:`critic_generator_loss`, :func:`gradient_penalty`, :func:`feature_matching_loss`;
3. the remedies for mode collapse that change what D sees: :func:`minibatch_stddev`
   (Karras et al. 2018) and :func:`pack` (PacGAN, Lin et al. 2018);
4. the networks: MLPs, and the DCGAN architecture (Radford et al. 2016) for images;
   ``spectral_norm`` wraps D's layers with :func:`spectral_normalize` (Miyato et al. 2018);
5. :class:`GAN` (``gan``): data spaces, the two phases, unrolling (Metz et al. 2017),
   sampling; :class:`DCGAN`, :class:`WGAN` and :class:`WGANGP` override a few hooks.

Data spaces. D and G work in a centred space: images (continuous, binary or discrete
levels) are mapped to [-1, 1] and G ends in ``tanh`` (the DCGAN convention); real data
(2-D points, tables) is used as it is and G's output is linear. ``sample`` maps back:
continuous data gets ``(tanh + 1) / 2 = sigmoid(2 a)`` in [0, 1], put on the nearest of
its levels k / (L - 1) when it is quantised (8-bit images); binary data gets a Bernoulli
draw from that probability (or the 0.5 threshold with ``mean=True``); discrete data gets
the nearest level. During training D sees G's probabilities for binary data
(the usual continuous relaxation).

Shapes: ``N`` batch, ``Z = noise_dim``, ``K`` classes, ``m`` the PacGAN packing degree.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn
from torch.func import functional_call

from ..data.dataset import Batch, DataSpec
from ..data.dequantize import nearest_level
from ..devices import compiler_disable
from ..errors import UserError
from ..nn.adversarial import (  # noqa: F401  (the losses and D are part of this chapter's API)
    GAN_LOSSES,
    LEAKY_SLOPE,
    PROBABILITY_LOSSES,
    SPECTRAL_LAYERS,
    ConvDiscriminator,
    MLPDiscriminator,
    conv_stages,
    critic_generator_loss,
    critic_loss,
    discriminator_loss,
    feature_matching_loss,
    generator_loss,
    gradient_penalty,
    hinge_discriminator_loss,
    hinge_generator_loss,
    least_squares_discriminator_loss,
    least_squares_generator_loss,
    minibatch_stddev,
    norm1d,
    norm2d,
    spectral_normalize,
    with_cond,
)
from ..nn.signed import from_signed, to_signed
from ..registry import register
from .base import GenerativeModel, LossOutput, ModelConfig, OptimizerSpec, Phase
from .networks import Network, Shape

# -- 1. configs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdversarialConfig(ModelConfig):
    """Settings shared by every GAN (each model's config changes some defaults)."""

    lr: float = 2e-4  # the generator's learning rate (and D's unless d_lr is set)
    d_lr: float | None = None  # the discriminator's / critic's learning rate; None: lr
    optimizer: Literal["adam", "rmsprop", "sgd"] = "adam"
    betas: tuple[float, ...] = (0.5, 0.999)  # Adam's; beta1 = 0.5 as in DCGAN
    network: Literal["auto", "mlp", "conv"] = "mlp"  # auto: conv for images >= 8x8, else mlp
    noise_dim: int = 32  # Z, the size of z ~ N(0, I)
    g_hidden: tuple[int, ...] = (128, 128)  # mlp generator widths
    d_hidden: tuple[int, ...] = (128, 128)  # mlp discriminator widths (>= 1 layer: its features)
    conv_width: int = 64  # conv: channels of D's first stage (G's last); doubles per stage
    g_norm: Literal["batch", "none"] = "none"  # normalisation in G's hidden layers
    d_norm: Literal["batch", "layer", "none"] = "none"  # in D's hidden layers (never the first)
    d_steps: int = 1  # D steps per G step (n_critic), each on a new batch
    g_steps: int = 1  # G steps per training step, each with new noise (PacGAN's stacked-MNIST runs take 2)
    conditional: bool = False  # one-hot labels into G and D (Mirza & Osindero 2014)
    # Remedies for mode collapse.
    minibatch_std: bool = False  # Karras et al. 2018: D sees the batch's feature std
    pack: int = 1  # PacGAN (Lin et al. 2018): D judges m samples at once
    unrolled_steps: int = 0  # Metz et al. 2017: G's loss against D unrolled k SGD steps
    unrolled_lr: float | None = None  # step size of the unrolled SGD; None: D's lr
    feature_matching: bool = False  # Salimans et al. 2016: G matches D's mean features
    # Miyato et al. 2018: D's Linear/Conv weights divided by their largest singular value
    # (one power iteration per D forward in training mode).
    spectral_norm: bool = False

    def validate(self) -> None:
        self.check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        for name in ("d_lr", "unrolled_lr"):
            value = getattr(self, name)
            self.check(value is None or value > 0, f"{name} must be > 0 (or none), got {value}")
        self.check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"betas must be two numbers in [0, 1), got {self.betas}",
        )
        self.check(self.noise_dim >= 1, f"noise_dim must be >= 1, got {self.noise_dim}")
        self.check(all(h >= 1 for h in self.g_hidden), f"g_hidden sizes must be >= 1, got {self.g_hidden}")
        self.check(
            len(self.d_hidden) >= 1 and all(h >= 1 for h in self.d_hidden),
            f"d_hidden must be one or more sizes >= 1 (its last layer gives the features), got {self.d_hidden}",
        )
        self.check(self.conv_width >= 1, f"conv_width must be >= 1, got {self.conv_width}")
        self.check(self.d_steps >= 1, f"d_steps must be >= 1, got {self.d_steps}")
        self.check(self.g_steps >= 1, f"g_steps must be >= 1, got {self.g_steps}")
        self.check(self.pack >= 1, f"pack must be >= 1 (1 = no packing), got {self.pack}")
        self.check(self.unrolled_steps >= 0, f"unrolled_steps must be >= 0, got {self.unrolled_steps}")


@dataclass(frozen=True)
class GANConfig(AdversarialConfig):
    """Settings of ``gan``: the original GAN, with MLP networks by default."""

    # The game: minimax / non-saturating share D's log-loss on logits, G minimises
    # E log(1 - D(G(z))) (eq. 1) / -E log D(G(z)); hinge (Lim & Ye 2017, Miyato et al. 2018)
    # and least-squares (LSGAN, Mao et al. 2017) set both D's and G's losses on raw scores.
    g_loss: Literal["minimax", "non-saturating", "hinge", "least-squares"] = "non-saturating"


@dataclass(frozen=True)
class DCGANConfig(GANConfig):
    """Settings of ``dcgan``: Radford et al. 2016 (Adam 2e-4, beta1 0.5, batch norm)."""

    network: Literal["auto", "mlp", "conv"] = "auto"  # conv for images, mlp for other data
    g_norm: Literal["batch", "none"] = "batch"
    d_norm: Literal["batch", "layer", "none"] = "batch"


@dataclass(frozen=True)
class WGANConfig(AdversarialConfig):
    """Settings of ``wgan``: Arjovsky et al. 2017, Algorithm 1 (RMSProp 5e-5, c = 0.01, n_critic = 5)."""

    lr: float = 5e-5
    optimizer: Literal["adam", "rmsprop", "sgd"] = "rmsprop"
    d_steps: int = 5
    g_norm: Literal["batch", "none"] = "batch"
    clip: float = 0.01  # c: every critic parameter is clipped to [-c, c] after each critic step

    def validate(self) -> None:
        super().validate()
        self.check(self.clip > 0, f"clip must be > 0, got {self.clip}")


@dataclass(frozen=True)
class WGANGPConfig(AdversarialConfig):
    """Settings of ``wgan-gp``: Gulrajani et al. 2017, Algorithm 1 (lambda 10, Adam 1e-4, betas (0, 0.9))."""

    lr: float = 1e-4
    betas: tuple[float, ...] = (0.0, 0.9)
    d_steps: int = 5
    g_norm: Literal["batch", "none"] = "batch"
    d_norm: Literal["batch", "layer", "none"] = "layer"  # the penalty is per example: no batch norm
    gp_weight: float = 10.0  # lambda of eq. 3

    def validate(self) -> None:
        super().validate()
        self.check(self.gp_weight >= 0, f"gp_weight must be >= 0, got {self.gp_weight}")
        self.check(
            self.d_norm != "batch",
            "d_norm=batch is not allowed with the gradient penalty: it penalises each example's "
            "gradient, and batch norm mixes examples (Gulrajani et al. 2017, sec. 4). Use layer or none.",
        )


# -- 2. the losses (nn/adversarial.py, shared with the adversarial autoencoder) --------------------
# -- 3. what D sees: minibatch std (nn/adversarial.py) and packing -----------------------------------


def pack(x: torch.Tensor, m: int) -> torch.Tensor:
    """PacGAN packing (Lin et al. 2018): m distinct examples become one input of D.

    x (N, *shape) -> (N // m, m * shape[0], *shape[1:]): packed row i concatenates examples
    i m, ..., i m + m - 1 along the first feature axis (the channels of an image). A batch
    whose size is not a multiple of m is truncated to the largest multiple.
    """
    if m == 1:
        return x
    k = len(x) // m
    if k == 0:
        raise UserError(f"pack={m} needs batches of at least {m} examples, got {len(x)}. Raise batch_size or lower pack.")
    return x[: k * m].reshape(k, m * x.shape[1], *x.shape[2:])

# -- 4. networks: the generators here, the discriminators in nn/adversarial.py ------------------------


class MLPGenerator(nn.Module):
    """z (N, Z) [+ one-hot (N, K)] -> pre-activation outputs (N, *shape): Linear [-> norm] -> ReLU ... -> Linear."""

    def __init__(self, in_dim: int, hidden: Sequence[int], shape: Sequence[int], norm: str = "none") -> None:
        super().__init__()
        self.shape = tuple(shape)
        layers: list[nn.Module] = []
        prev = in_dim
        for h in hidden:
            layers += [nn.Linear(prev, h), norm1d(norm, h), nn.ReLU()]
            prev = h
        layers.append(nn.Linear(prev, math.prod(shape)))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """``z`` (N, noise_dim), ``c`` (N, num_classes) one-hot or None -> (N, *shape) in model space."""
        return self.net(with_cond(z, c)).reshape(len(z), *self.shape)


class ConvGenerator(nn.Module):
    """The DCGAN generator (Radford et al. 2016, fig. 1): z (N, Z) [+ (N, K)] -> (N, C, H, W).

    A linear projection to a (w 2^(s-1), h0, w0) map, then s stride-2 4x4 transposed convs
    that halve the channels and double the size, batch norm and ReLU between them, none
    after the last; the output is cropped to (H, W), so any image size >= 8 works.
    """

    def __init__(self, in_dim: int, shape: Sequence[int], width: int, norm: str = "batch") -> None:
        super().__init__()
        c, h, w = shape
        stages = conv_stages(h, w)
        self.shape = (c, h, w)
        self.h0, self.w0 = math.ceil(h / 2**stages), math.ceil(w / 2**stages)
        chans = [width * 2**i for i in reversed(range(stages))]  # widest first
        self.c0 = chans[0]
        self.project = nn.Linear(in_dim, self.c0 * self.h0 * self.w0)
        self.project_norm = norm2d(norm, self.c0)
        layers: list[nn.Module] = []
        for i in range(stages):
            out = chans[i + 1] if i + 1 < stages else c
            layers.append(nn.ConvTranspose2d(chans[i], out, 4, stride=2, padding=1))
            if i + 1 < stages:
                layers += [norm2d(norm, out), nn.ReLU()]
        self.deconvs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """``z`` (N, noise_dim), ``c`` (N, num_classes) one-hot or None -> (N, *shape) in model space."""
        _, h, w = self.shape
        x = self.project(with_cond(z, c)).reshape(len(z), self.c0, self.h0, self.w0)
        return self.deconvs(torch.relu(self.project_norm(x)))[:, :, :h, :w]

# -- 5. the models -------------------------------------------------------------------------------

Params = dict[str, torch.Tensor]


@register("gan")
class GAN(GenerativeModel):
    """GAN (Goodfellow et al. 2014): minimax, non-saturating, hinge or least-squares loss, MLP or conv networks, conditional.

    Phases: ``discriminator`` (D on real data and detached fakes, ``d_steps`` times, each
    on a new batch) then ``generator`` (G through a frozen D). Logs D's loss, G's loss and,
    for the minimax and non-saturating games, the mean probabilities D(x) (``d_real``) and
    D(G(z)) (``d_fake``); for hinge and least-squares (raw scores, no sigmoid) the mean
    scores ``score_real`` and ``score_fake``. The remedies for mode collapse
    (``minibatch_std``, ``pack``, ``unrolled_steps``, ``feature_matching``) and
    ``spectral_norm`` work with every GAN of this file.

    Spectral normalisation and the phases: every D forward in training mode runs one
    power iteration, updating D's u, v buffers in place, in D's step (real, fake and
    WGAN-GP's interpolates: one each) and in G's step through the frozen D (its
    parameters detached, its buffers its own), as in Miyato et al.'s code and StudioGAN.
    The update is deterministic (no random draw), in the state dict, and a fixed-address
    in-place write: resume stays exact and the step stays capturable. The unrolled D runs
    its power iterations on copies of u, v, like its batch-norm statistics.
    """

    output_mean: ClassVar[bool] = False  # every sample is G(z), z drawn; mean=True only thresholds binary data

    config_class = GANConfig
    config: AdversarialConfig
    #: The name of D's phase ("critic" for the Wasserstein GANs).
    d_phase: ClassVar[str] = "discriminator"
    oscillation_keys = ("discriminator/loss", "generator/loss")
    replaceable_networks: ClassVar[Mapping[str, str]] = {
        "generator": "z (N, noise_dim) [and, when conditional, one-hot labels c (N, K)] to (N, *data_shape) before the "
        "output activation (the model applies tanh for image data, nothing for real data)",
        "discriminator": "x (N, pack * C, ...) in model space ([-1, 1] for images; pack examples concatenated along the "
        "first feature axis, so (N, *data_shape) when pack=1) [and, when conditional, c (N, pack * K)] to (logits or "
        "scores (N,), features (N, F)), a tuple (the features, for feature matching, may be any size)",
    }

    def __init__(self, config: AdversarialConfig, spec: DataSpec, *, networks: Mapping[str, Network] | None = None) -> None:
        super().__init__(config, spec, conditional=config.conditional, networks=networks)
        k, m = self.num_classes or 0, config.pack
        self.network = self.choose_network()
        if self.network == "conv":
            c, h, w = spec.shape
            self.G = self.replaceable("generator", lambda: ConvGenerator(config.noise_dim + k, spec.shape, config.conv_width, config.g_norm))
            self.D = self.replaceable("discriminator", lambda: ConvDiscriminator(
                (m * c, h, w), m * k, config.conv_width, conv_stages(h, w), config.d_norm, config.minibatch_std
            ))
        else:
            self.G = self.replaceable("generator", lambda: MLPGenerator(config.noise_dim + k, config.g_hidden, spec.shape, config.g_norm))
            self.D = self.replaceable(
                "discriminator", lambda: MLPDiscriminator(m * (spec.dim + k), config.d_hidden, config.d_norm, config.minibatch_std)
            )
        if config.spectral_norm:
            spectral_normalize(self.D)

    def network_io(self, name: str, n: int) -> tuple[tuple[torch.Tensor, ...], Shape | tuple[Shape, ...]]:
        c = self.one_hot(0, n) if self.conditional else None
        shape, m = self.spec.shape, self.config.pack
        if name == "generator":
            x, out = torch.zeros(n, self.config.noise_dim), (n, *shape)
        else:  # what discriminate() passes: n packed inputs
            x, out = torch.zeros(n, m * shape[0], *shape[1:]), ((n,), (n, None))
            c = None if c is None else c.repeat(1, m)
        return ((x,) if c is None else (x, c)), out

    @classmethod
    def variants(cls, spec: DataSpec) -> list[dict[str, object]]:
        """MLP networks for any data; the DCGAN conv nets too for images of at least 8x8, and
        those with a spectrally normalised D (its Conv and Linear layers parametrized)."""
        convolvable = len(spec.shape) == 3 and min(spec.shape[1:]) >= 8
        if not convolvable:
            return [{}]
        return [{"network": "mlp"}, {"network": "conv"}, {"network": "conv", "spectral_norm": True}]

    def choose_network(self) -> str:
        """``mlp`` or ``conv`` from the config's ``network`` and the data's shape."""
        net, shape = self.config.network, self.spec.shape
        convolvable = len(shape) == 3 and min(shape[1:]) >= 8
        if net == "auto":
            return "conv" if convolvable else "mlp"
        if net == "conv" and not convolvable:
            what = f"images of {shape[1]}x{shape[2]}" if len(shape) == 3 else f"data of shape {tuple(shape)}"
            raise UserError(f"network='conv' needs images (C, H, W) of at least 8x8; this is {what}. Use network=mlp (or auto).")
        return net

    # -- data spaces -------------------------------------------------------------------------
    def to_model_space(self, x: torch.Tensor) -> torch.Tensor:
        """Data (N, *shape) -> the space D and G work in: [-1, 1] for images, as is for real data."""
        return to_signed(x, self.spec)

    def to_data_space(self, x: torch.Tensor, generator: torch.Generator | None = None, mean: bool = False) -> torch.Tensor:
        """G's outputs (N, *shape) -> data of the spec's kind (see the module docstring)."""
        # Quantised [0, 1] data (8-bit images): the nearest of its levels, as ddpm's samples.
        return nearest_level(from_signed(x, self.spec, generator, mean), self.spec)

    # -- G and D -------------------------------------------------------------------------------
    def noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ N(0, I): (n, Z), from ``generator`` or torch's global RNG."""
        p = next(self.G.parameters())
        return torch.randn((n, self.config.noise_dim), generator=generator, device=p.device, dtype=p.dtype)

    def generate(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """G(z): (N, Z) [+ one-hot (N, K)] -> (N, *shape) in model space."""
        a = self.G(z) if c is None else self.G(z, c)
        return a if self.spec.kind == "real" else torch.tanh(a)

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """:func:`pack` with this model's ``pack``: (N, ...) -> (N // m, m * ...)."""
        return pack(x, self.config.pack)

    def discriminate(self, x: torch.Tensor, c: torch.Tensor | None = None, params: Params | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """D on model-space examples (N, *shape): -> (logits or scores (N // m,), features (N // m, F)).

        ``params`` replaces D's parameters (and buffers) by name: :meth:`frozen` or the
        unrolled ones. Examples (and their labels) are packed m at a time.
        """
        x = self.pack(x)
        args = (x,) if c is None else (x, self.pack(c))  # labels only for a conditional D
        if params is None:
            return self.D(*args)
        return functional_call(self.D, params, args)

    def frozen(self) -> Params:
        """D's parameters detached: G's loss through them puts no gradient on D.

        With ``spectral_norm`` the names are ``...parametrizations.weight.original``:
        ``functional_call`` swaps in the detached originals and the parametrization
        normalises them; D's own u, v buffers get that forward's power iteration.
        """
        return {name: p.detach() for name, p in self.D.named_parameters()}

    # -- the objectives (the WGANs override these hooks) ------------------------------------------
    @property
    def game(self) -> str:
        """The loss of the game (``g_loss``): one of :data:`GAN_LOSSES`."""
        return self.config.g_loss  # type: ignore[attr-defined]

    def d_objective(self, real_out: torch.Tensor, fake_out: torch.Tensor) -> torch.Tensor:
        """D's adversarial loss from its outputs on real and fake examples."""
        return discriminator_loss(real_out, fake_out, self.game)

    def g_objective(self, fake_out: torch.Tensor) -> torch.Tensor:
        """G's adversarial loss from D's outputs on its samples."""
        return generator_loss(fake_out, self.game)

    def d_logs(self, real_out: torch.Tensor, fake_out: torch.Tensor) -> dict[str, torch.Tensor]:
        """Diagnostics of D's phase: the mean probabilities D(x) and D(G(z)) where D's
        outputs are logits of a probability, else the mean raw scores."""
        if self.game in PROBABILITY_LOSSES:
            return {"d_real": torch.sigmoid(real_out).mean().detach(), "d_fake": torch.sigmoid(fake_out).mean().detach()}
        return {"score_real": real_out.mean().detach(), "score_fake": fake_out.mean().detach()}

    def g_logs(self, fake_out: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.game in PROBABILITY_LOSSES:
            return {"d_fake": torch.sigmoid(fake_out).mean().detach()}
        return {"score_fake": fake_out.mean().detach()}

    def penalty(self, real: torch.Tensor, fake: torch.Tensor, c: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
        """An extra term of D's loss (WGAN-GP's gradient penalty), with its logs; None for none."""
        return None

    def constrain(self, params: Params) -> Params:
        """The projection after each D step (WGAN's clipping), for the unrolled D: identity here."""
        return params

    def after_d_step(self) -> Callable[[], None] | None:
        """The hook the trainer calls after each D step (WGAN's clipping); None here."""
        return None

    # -- the contract ------------------------------------------------------------------------------
    def phases(self) -> list[Phase]:
        c = self.config
        d_opt = OptimizerSpec(name=c.optimizer, lr=c.d_lr or c.lr, betas=c.betas)
        g_opt = OptimizerSpec(name=c.optimizer, lr=c.lr, betas=c.betas)
        return [
            Phase(self.d_phase, list(self.D.parameters()), d_opt, repeats=c.d_steps, new_batch=c.d_steps > 1, after_step=self.after_d_step()),
            # Several G steps reuse the batch (G reads only its size, labels and, for feature
            # matching, its real features); each draws new noise.
            Phase("generator", list(self.G.parameters()), g_opt, repeats=c.g_steps),
        ]

    def loss(self, batch: Batch, phase: str) -> LossOutput:
        """The discriminator's (or critic's) loss, or the generator's, on ``batch.x``
        (B, *shape) and fakes G(z) for new noise z (B, noise_dim); conditional fakes take
        the batch's labels ``batch.y`` (B,). With packing, D sees B / pack inputs."""
        real = self.to_model_space(batch.x)
        c = self.one_hot(batch.y, len(real), checked=False)  # fakes carry the batch's labels
        if phase == self.d_phase:
            return self.discriminator_step_loss(real, c)
        if phase == "generator":
            return self.generator_step_loss(real, c)
        raise ValueError(f"{type(self).__name__} has phases {self.d_phase!r} and 'generator', not {phase!r}")

    def discriminator_step_loss(self, real: torch.Tensor, c: torch.Tensor | None) -> LossOutput:
        """D's loss on real examples (N, *shape) and fakes made without a graph (detached)."""
        with torch.no_grad():
            fake = self.generate(self.noise(len(real)), c)
        real_out, _ = self.discriminate(real, c)
        fake_out, _ = self.discriminate(fake, c)
        loss = self.d_objective(real_out, fake_out)
        logs = self.d_logs(real_out, fake_out)
        extra = self.penalty(real, fake, c)
        if extra is not None:
            loss = loss + extra[0]
            logs.update(extra[1])
        return LossOutput(loss, logs)

    def generator_step_loss(self, real: torch.Tensor, c: torch.Tensor | None) -> LossOutput:
        """G's loss through D (frozen, or unrolled ``unrolled_steps``): adversarial or feature matching."""
        fake = self.generate(self.noise(len(real)), c)
        if self.config.unrolled_steps:
            return self._unrolled_generator_objective(real, fake, c)
        return self.generator_objective(real, fake, c, self.frozen())

    def generator_objective(self, real: torch.Tensor, fake: torch.Tensor, c: torch.Tensor | None, params: Params) -> LossOutput:
        """G's loss on its samples ``fake`` (N, *shape) through D with ``params``."""
        fake_out, fake_features = self.discriminate(fake, c, params)
        logs = self.g_logs(fake_out)
        if not self.config.feature_matching:
            return LossOutput(self.g_objective(fake_out), logs)
        # Real features carry no gradient through a frozen D; through an unrolled D they
        # depend on G via the unrolled parameters, which is part of Metz et al.'s objective.
        _, real_features = self.discriminate(real, c, params)
        logs["adversarial"] = self.g_objective(fake_out).detach()
        return LossOutput(feature_matching_loss(real_features, fake_features), logs)

    # Differentiating through D's gradient steps is a double backward, which torch.compile's
    # AOTAutograd does not support: this part always runs eagerly (TrainConfig.compile).
    @compiler_disable
    def _unrolled_generator_objective(self, real: torch.Tensor, fake: torch.Tensor, c: torch.Tensor | None) -> LossOutput:
        return self.generator_objective(real, fake, c, self.unrolled(real, fake, c))

    def unrolled(self, real: torch.Tensor, fake: torch.Tensor, c: torch.Tensor | None) -> Params:
        """D's parameters after ``unrolled_steps`` differentiable SGD steps (Metz et al. 2017, sec. 2.2).

        theta_D^{j+1} = theta_D^j - eta dL_D(theta_G, theta_D^j) / dtheta_D^j, starting from D's
        current (detached) parameters, on this batch and these fakes, with ``create_graph``
        so that G's loss f(theta_G, theta_D^K(theta_G)) is differentiated through the updates.
        Plain SGD with step eta = ``unrolled_lr`` (default D's lr) stands in for D's real
        optimizer; D's adversarial loss is unrolled without WGAN-GP's penalty. Batch-norm
        statistics and spectral normalisation's u, v are updated on copies: unrolling
        leaves D's buffers as they were.
        """
        cfg = self.config
        eta = cfg.unrolled_lr or cfg.d_lr or cfg.lr
        params = {name: p.detach().requires_grad_(True) for name, p in self.D.named_parameters()}
        buffers = {name: b.clone() for name, b in self.D.named_buffers()}
        with torch.enable_grad():
            for _ in range(cfg.unrolled_steps):
                real_out, _ = self.discriminate(real, c, {**params, **buffers})
                fake_out, _ = self.discriminate(fake, c, {**params, **buffers})
                d_loss = self.d_objective(real_out, fake_out)
                grads = torch.autograd.grad(d_loss, list(params.values()), create_graph=True)
                params = self.constrain({name: p - eta * g for (name, p), g in zip(params.items(), grads)})
        return {**params, **buffers}

    # -- sampling ----------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        cond: torch.Tensor | int | None = None,
        mean: bool = False,
    ) -> torch.Tensor:
        """``n`` examples (n, *shape) of the data's kind from z ~ N(0, I) drawn with ``generator``.

        ``cond``: labels (n,) (or one label) for a conditional model. ``mean`` matters for
        binary data only: threshold G's probabilities at 0.5 instead of drawing Bernoulli pixels.
        """
        c = self.one_hot(cond, n)
        return self.to_data_space(self.generate(self.noise(n, generator), c), generator, mean)


@register("dcgan")
class DCGAN(GAN):
    """DCGAN (Radford et al. 2016): strided (transposed) convs, batch norm, LeakyReLU(0.2) in D, Adam 2e-4.

    The number of stride-2 stages follows the image size (:func:`conv_stages`), and G's
    output is cropped, so 8x8 digits, 28x28 MNIST and 3x28x28 stacked MNIST all work. On
    data that is not an image of at least 8x8 (2-D points, tables) ``network=auto`` builds
    MLP networks with the same loss, normalisation and optimiser; ``network=conv`` there is
    an error.
    """

    config_class = DCGANConfig


@register("wgan")
class WGAN(GAN):
    """WGAN (Arjovsky et al. 2017): a critic without sigmoid, weight clipping to [-c, c], RMSProp, n_critic = 5.

    The critic f minimises E[f(G(z))] - E[f(x)]; after each critic step every critic
    parameter is clipped to [-clip, clip] (the ``after_step`` hook), a crude way to keep f
    Lipschitz. Logs the raw critic means (``d_real``, ``d_fake``) and the Wasserstein
    estimate E[f(x)] - E[f(G(z))] (``wasserstein``). ``histograms()`` returns the critic's
    weights per layer: with clipping they pile up at +-c.
    """

    config_class = WGANConfig
    config: WGANConfig
    d_phase = "critic"
    oscillation_keys = ("critic/loss", "generator/loss")

    def d_objective(self, real_out: torch.Tensor, fake_out: torch.Tensor) -> torch.Tensor:
        return critic_loss(real_out, fake_out)

    def g_objective(self, fake_out: torch.Tensor) -> torch.Tensor:
        return critic_generator_loss(fake_out)

    def d_logs(self, real_out: torch.Tensor, fake_out: torch.Tensor) -> dict[str, torch.Tensor]:
        r, f = real_out.mean().detach(), fake_out.mean().detach()
        return {"d_real": r, "d_fake": f, "wasserstein": r - f}

    def g_logs(self, fake_out: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"d_fake": fake_out.mean().detach()}

    def constrain(self, params: Params) -> Params:
        c = self.config.clip
        return {name: p.clamp(-c, c) for name, p in params.items()}

    def after_d_step(self) -> Callable[[], None] | None:
        return self.clip_critic

    @torch.no_grad()
    def clip_critic(self) -> None:
        """Clip every critic parameter to [-c, c] in place (Arjovsky et al. 2017, Algorithm 1, line 7)."""
        c = self.config.clip
        params = list(self.D.parameters())
        torch._foreach_clamp_min_(params, -c)
        torch._foreach_clamp_max_(params, c)

    def histograms(self) -> dict[str, torch.Tensor]:
        """The critic's weight tensors, one entry per layer (``critic/<layer>``), for the trainer's plots.

        With ``spectral_norm`` these are the trained (and clipped) originals W, not W / sigma(W).
        """
        out = {}
        for name, p in self.D.named_parameters():
            layer = name.removesuffix(".parametrizations.weight.original").removesuffix(".weight")
            if layer != name and p.dim() >= 2:
                out[f"critic/{layer}"] = p.detach()
        return out


@register("wgan-gp")
class WGANGP(WGAN):
    """WGAN-GP (Gulrajani et al. 2017): a gradient penalty instead of clipping, layer norm in the critic, Adam (0, 0.9).

    The critic's loss adds lambda E[(||grad f(x_hat)||_2 - 1)^2] on random interpolates
    of real and fake examples (logged as ``gp``); there is no clipping.
    """

    config_class = WGANGPConfig
    config: WGANGPConfig  # type: ignore[assignment]

    def constrain(self, params: Params) -> Params:
        return params

    def after_d_step(self) -> Callable[[], None] | None:
        return None

    def penalty(self, real: torch.Tensor, fake: torch.Tensor, c: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        gp = self.gradient_penalty(real, fake, c)
        return gp, {"gp": gp.detach()}

    @compiler_disable  # a double backward: eager even under TrainConfig.compile
    def gradient_penalty(
        self,
        real: torch.Tensor,
        fake: torch.Tensor,
        cond: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """lambda E[(||grad f(x_hat)||_2 - 1)^2] of this critic (0-d); real, fake (N, *shape) in model space.

        ``cond``: one-hot labels (N, K) for a conditional critic (the fakes share the reals' labels).
        """
        return gradient_penalty(
            lambda x: self.discriminate(x, cond)[0], real, fake, self.config.gp_weight,
            group=self.config.pack, generator=generator,
        )

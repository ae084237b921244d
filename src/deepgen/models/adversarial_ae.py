"""The adversarial autoencoder (Makhzani et al. 2016, *Adversarial Autoencoders*).

An autoencoder whose code distribution is matched to a prior p(z) by a GAN played in the
code space: a discriminator D tells codes z = E(x) from draws of the prior, and the
encoder, in the role of the generator, learns to fool it. Once the aggregated posterior
q(z) = E_x[delta(z - E(x))] matches p(z), decoding prior draws gives new data.

Three phases of the one trainer (Makhzani et al., sec. 2, "the reconstruction phase and
the regularization phase"):

1. ``reconstruction``: encoder and decoder minimise -log p(x | D(E(x))) under a
   likelihood head (:mod:`deepgen.nn.likelihoods`), as in :mod:`deepgen.models.autoencoder`;
2. ``discriminator``: D minimises the GAN discriminator loss with prior draws as the real
   examples and detached codes as the fakes;
3. ``regularization``: the encoder minimises the non-saturating generator loss through a
   frozen D.

The adversarial losses are the GAN family's (:func:`deepgen.models.gan.discriminator_loss`,
:func:`deepgen.models.gan.generator_loss`), and D is its :class:`~deepgen.models.gan.MLPDiscriminator`.

Priors: ``gaussian`` is N(0, I); ``mixture`` is a 2-D mixture of 10 Gaussians as in
the paper's MNIST experiments, here with means evenly on a circle of radius :data:`MIXTURE_RADIUS` and std
:data:`MIXTURE_STD` (deepgen's choice: the paper gives a picture, not the numbers).

Shapes: ``N`` examples, ``L = latent_dim``, ``P`` head parameters per data element.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from ..data.dataset import Batch, DataSpec
from ..nn.adversarial import MLPDiscriminator, discriminator_loss, generator_loss
from ..nn.layers import make_decoder, make_encoder
from ..nn.likelihoods import make_head
from ..registry import register
from .base import GenerativeModel, LossOutput, OptimizerSpec, Phase, all_parameters
from .latent import EncoderDecoderConfig, LatentCodeMixin
from .networks import Network, Shape

MIXTURE_COMPONENTS = 10
MIXTURE_RADIUS = 4.0
MIXTURE_STD = 0.5


# -- 1. config ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AAEConfig(EncoderDecoderConfig):
    """Settings of ``aae`` (network and head knobs: EncoderDecoderConfig)."""

    latent_dim: int = 8
    prior: Literal["gaussian", "mixture"] = "gaussian"  # mixture: 10 Gaussians on a ring, latent_dim 2
    d_hidden: tuple[int, ...] = (128, 128)  # the code discriminator's widths
    # Adam lr of the discriminator and regularization phases: below lr, as the game is less
    # stable than reconstruction (digits, latent_dim 2, 600 steps: codes match the prior at
    # 3e-4 in 6 of 6 seeds, at 1e-3 in 4 of 6).
    adversarial_lr: float = 3e-4
    betas: tuple[float, ...] = (0.5, 0.999)  # Adam's betas of the two adversarial phases

    def validate(self) -> None:
        super().validate()
        self.check(
            len(self.d_hidden) >= 1 and all(h >= 1 for h in self.d_hidden),
            f"d_hidden must be one or more sizes >= 1, got {self.d_hidden}",
        )
        self.check(self.adversarial_lr > 0, f"adversarial_lr must be > 0, got {self.adversarial_lr}")
        self.check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"betas must be two numbers in [0, 1), got {self.betas}",
        )
        self.check(
            self.prior != "mixture" or self.latent_dim == 2,
            f"prior=mixture is a 2-D mixture of 10 Gaussians: set latent_dim=2 (got {self.latent_dim}).",
        )


# -- 2. priors ---------------------------------------------------------------------------------


def mixture_means(k: int = MIXTURE_COMPONENTS, radius: float = MIXTURE_RADIUS) -> torch.Tensor:
    """(k, 2) means evenly on a circle of ``radius``, the first at (radius, 0)."""
    angles = 2 * math.pi * torch.arange(k, dtype=torch.float64) / k
    return (radius * torch.stack([angles.cos(), angles.sin()], dim=1)).float()


def sample_prior(
    kind: str, n: int, dim: int, *, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """n draws (n, dim) of the prior: N(0, I), or the 2-D ring mixture (equal weights)."""
    eps = torch.randn((n, dim), generator=generator, device=device)
    if kind == "gaussian":
        return eps
    component = torch.randint(0, MIXTURE_COMPONENTS, (n,), generator=generator, device=device)
    return mixture_means().to(device)[component] + MIXTURE_STD * eps


# -- 3. the model ------------------------------------------------------------------------------


@register("aae")
class AdversarialAutoencoder(LatentCodeMixin, GenerativeModel):
    """Adversarial autoencoder (Makhzani et al. 2016): a GAN on the codes matches them to a prior."""

    config_class = AAEConfig
    output_mean: ClassVar[bool] = True  # mean=True: the decoder head's E[x | z], z from the prior
    config: AAEConfig
    oscillation_keys = ("discriminator/loss", "regularization/loss")
    replaceable_networks = {
        "encoder": "x (N, *data_shape) to the code (N, latent_dim)",
        "decoder": "z (N, latent_dim) to (N, P, *data_shape): the likelihood head's P parameters per data element",
        "discriminator": "codes z (N, latent_dim) to (logits (N,), features (N, F)), a tuple (the features may be any size)",
    }

    def __init__(self, config: AAEConfig, spec: DataSpec, *, networks: Mapping[str, Network] | None = None) -> None:
        super().__init__(config, spec, networks=networks)
        c = config
        self.head = make_head(c.likelihood, spec, sigma=c.sigma, components=c.components)
        self.encoder = self.replaceable("encoder", lambda: make_encoder(c.network, spec.shape, c.hidden, c.channels, c.latent_dim, c.activation))
        self.decoder = self.replaceable(
            "decoder", lambda: make_decoder(c.network, c.latent_dim, c.hidden, c.channels, spec.shape, self.head.num_params, c.activation)
        )
        self.discriminator = self.replaceable("discriminator", lambda: MLPDiscriminator(c.latent_dim, c.d_hidden))

    def network_io(self, name: str, n: int) -> tuple[tuple[torch.Tensor, ...], Shape | tuple[Shape, ...]]:
        k = self.config.latent_dim
        if name == "encoder":
            return (torch.zeros(n, *self.spec.shape),), (n, k)
        if name == "decoder":
            return (torch.zeros(n, k),), (n, self.head.num_params, *self.spec.shape)
        return (torch.zeros(n, k),), ((n,), (n, None))

    # -- the contract ---------------------------------------------------------------------------
    def phases(self) -> list[Phase]:
        c = self.config
        adversarial = OptimizerSpec(lr=c.adversarial_lr, betas=c.betas)
        return [
            Phase("reconstruction", all_parameters(self.encoder, self.decoder, self.head), OptimizerSpec(lr=c.lr)),
            Phase("discriminator", list(self.discriminator.parameters()), adversarial),
            Phase("regularization", list(self.encoder.parameters()), adversarial),
        ]

    def prior_sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws of p(z): (n, L)."""
        return sample_prior(self.config.prior, n, self.config.latent_dim, generator=generator, device=self.device)

    def loss(self, batch: Batch, phase: str) -> LossOutput:
        """One phase of Makhzani et al. 2016, sec. 2, on ``batch.x`` (B, *shape):
        ``reconstruction``: -log p(x | dec(enc(x))); ``discriminator``: D told prior draws
        z ~ p(z) (B, latent_dim) from the codes enc(x); ``regularization``: the encoder
        fools D (non-saturating loss on its codes)."""
        x = batch.x
        if phase == "reconstruction":
            recon = self.head.nll(self.decoder(self._codes(x)), x).mean()
            return LossOutput(recon, {"recon": recon.detach()})
        if phase == "discriminator":
            with torch.no_grad():
                codes = self._codes(x)  # the fakes, detached
            real_out, _ = self.discriminator(self.prior_sample(len(x)))
            fake_out, _ = self.discriminator(codes)
            loss = discriminator_loss(real_out, fake_out)
            logs = {"d_prior": torch.sigmoid(real_out).mean().detach(), "d_code": torch.sigmoid(fake_out).mean().detach()}
            return LossOutput(loss, logs)
        if phase == "regularization":
            # The encoder is the generator; D is frozen (its parameters detached), so this
            # phase's gradient reaches the encoder only.
            frozen = {name: p.detach() for name, p in self.discriminator.named_parameters()}
            fake_out, _ = torch.func.functional_call(self.discriminator, frozen, (self._codes(x),))
            return LossOutput(generator_loss(fake_out, "non-saturating"), {"d_code": torch.sigmoid(fake_out).mean().detach()})
        raise ValueError(f"aae has phases reconstruction, discriminator and regularization, not {phase!r}")

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        cond: torch.Tensor | None = None,
        mean: bool = False,
    ) -> torch.Tensor:
        """n examples (n, *shape): decode z ~ p(z); the head's mean with ``mean=True``, else a draw.

        ``cond`` is refused (the aae is unconditional).
        """
        self.labels(cond, n)
        params = self.decoder(self.prior_sample(n, generator))
        return self.head.mean(params) if mean else self.head.sample(params, generator)

    # -- capabilities -----------------------------------------------------------------------------
    def _codes(self, x: torch.Tensor) -> torch.Tensor:
        # The loss's path to the codes: encode without the public method's argument checks
        # (their value checks sync with the host in eval mode, i.e. in every validation step).
        return self.encoder(self.encoder_input(x))

    def encode(self, x: torch.Tensor, *, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Codes z = E(x): (N, *shape) -> (N, L). Differentiable; ``cond`` is refused (unconditional)."""
        self.labels(cond, len(x))
        return self._codes(x)

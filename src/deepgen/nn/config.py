"""Settings shared by every family built from an encoder, a decoder and a likelihood head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..models.base import ModelConfig
from .layers import ACTIVATIONS
from .likelihoods import HEADS


@dataclass(frozen=True)
class EncoderDecoderConfig(ModelConfig):
    """The network and output-distribution knobs of autoencoders and VAEs.

    Families subclass it, may change a default by redeclaring the field, and add their own.
    """

    network: Literal["mlp", "conv"] = "mlp"  # conv: images (C, H, W) only
    hidden: tuple[int, ...] = (256, 128)  # mlp encoder widths; the decoder mirrors them
    channels: tuple[int, ...] = (32, 64)  # conv encoder stages (stride 2 each); mirrored
    latent_dim: int = 16
    activation: str = "relu"
    likelihood: str = "auto"  # decoder head p(x | h); auto: bernoulli / gaussian / gaussian-learned / categorical by data kind
    sigma: float = 0.1  # std of the fixed-variance "gaussian" head (MSE / (2 sigma^2))
    components: int = 5  # mixture components of the "logistic-mixture" head

    def validate(self) -> None:
        self.check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        self.check(self.latent_dim >= 1, f"latent_dim must be >= 1, got {self.latent_dim}")
        self.check(all(h >= 1 for h in self.hidden), f"hidden sizes must be >= 1, got {self.hidden}")
        self.check(
            len(self.channels) >= 1 and all(c >= 1 for c in self.channels),
            f"channels must be one or more sizes >= 1, got {self.channels}",
        )
        self.check(
            self.activation in ACTIVATIONS,
            f"unknown activation {self.activation!r}. Accepted: {', '.join(sorted(ACTIVATIONS))}.",
        )
        self.check(
            self.likelihood == "auto" or self.likelihood in HEADS,
            f"unknown likelihood {self.likelihood!r}. Accepted: auto, {', '.join(sorted(HEADS))}.",
        )
        self.check(self.sigma > 0, f"sigma must be > 0, got {self.sigma}")
        self.check(self.components >= 1, f"components must be >= 1, got {self.components}")

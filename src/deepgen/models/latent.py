"""What every family built from an encoder, a decoder and a likelihood head shares:
its settings (:class:`EncoderDecoderConfig`) and the code-space capabilities
(:class:`LatentCodeMixin`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..nn.layers import ACTIVATIONS
from ..nn.likelihoods import HEADS
from .base import ModelConfig


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
    components: int = 5  # mixture components K of the "logistic-mixture" and "mixture-*" heads

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


class LatentCodeMixin:
    """The code-space capabilities of every model built from an encoder, a decoder giving
    head parameters (N, P, *shape) and a likelihood ``head``: the autoencoders, the
    adversarial autoencoder and the VAE (which encodes to its posterior mean).

    ``encode(x, cond=None) -> (N, L)`` is the family's; ``decode``, ``reconstruct``,
    ``reconstruction_nll`` and ``interpolate`` follow from it here. Labels travel as
    ``cond=`` and reach the decoder as a one-hot (N, C) for conditional models
    (:meth:`GenerativeModel.one_hot`); unconditional decoders are called with z alone.
    """

    head: Any
    decoder: Any
    spec: Any
    config: Any
    one_hot: Any

    @classmethod
    def variants(cls, spec: Any) -> list[dict[str, object]]:
        """MLP networks for any data; conv networks too for images."""
        return [{"network": "mlp"}, {"network": "conv"}] if spec.is_image else [{}]

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the encoder sees: discrete data's integer levels scaled to [0, 1] (the
        head still scores the integers); other data unchanged."""
        if self.spec.kind == "discrete" and self.spec.num_levels:
            return x / (self.spec.num_levels - 1)
        return x

    def encode(self, x: torch.Tensor, *, cond: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def code_dim(self) -> int:
        """The codes' width L = ``latent_dim``: encode's (N, L), decode's input."""
        return int(self.config.latent_dim)

    def decoder_params(self, z: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """Head parameters (N, P, *shape) for codes z (N, L) and one-hot labels c (N, C) or None.
        The codes go in the model's dtype: they are drawn in float32 (the VAE upcasts its
        posterior's parameters), which a converted (``.bfloat16()``) decoder cannot take."""
        z = z.to(self.dtype)
        return self.decoder(z) if c is None else self.decoder(z, c)

    def decode(self, z: torch.Tensor, *, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The head's mean of p(x | z): (N, L) -> (N, *shape). Differentiable."""
        return self.head.mean(self.decoder_params(z, self.one_hot(cond, len(z))))

    def reconstruct(self, x: torch.Tensor, *, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The head's mean of p(x | encode(x)): (N, *shape) -> (N, *shape)."""
        return self.decode(self.encode(x, cond=cond), cond=cond)

    def reconstruction_nll(self, x: torch.Tensor, *, cond: torch.Tensor | None = None) -> torch.Tensor:
        """-log p(x | decoder(encode(x))) per example under the head: (N, *shape) -> (N,) nats."""
        c = self.one_hot(cond, len(x))
        return self.head.nll(self.decoder_params(self.encode(x, cond=cond), c), x)

    @torch.no_grad()
    def interpolate(
        self, x1: torch.Tensor, x2: torch.Tensor, steps: int = 8, *, cond: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        """Decoded means along the straight line between the codes of x1 and x2.

        x1, x2: one example each, (*shape) or (1, *shape); ``cond``: one label for both
        (conditional models). Returns (steps, *shape), the first row decoding x1's code and
        the last x2's.
        """
        return interpolate_codes(self, x1, x2, steps, cond)


def interpolate_codes(model: Any, x1: torch.Tensor, x2: torch.Tensor, steps: int, cond: torch.Tensor | int | None) -> torch.Tensor:
    """``model.decode`` along the straight line between ``model.encode`` of x1 and of x2
    (one example each, (*shape) or (1, *shape)), with one label ``cond`` for the whole path
    (conditional models): (steps, *shape). Shared by every model with a code space (the
    latent-variable families and the flows)."""
    shape = model.spec.shape
    x = torch.cat([x1.reshape(1, *shape), x2.reshape(1, *shape)])  # (2, *shape)
    label = None if cond is None else torch.as_tensor(cond, device=x.device).reshape(-1)[:1]
    z = model.encode(x, cond=None if label is None else label.expand(2))  # (2, L)
    t = torch.linspace(0, 1, steps, device=z.device, dtype=z.dtype).unsqueeze(1)  # (steps, 1)
    return model.decode(torch.lerp(z[:1], z[1:], t), cond=None if label is None else label.expand(steps))

"""Adversarial building blocks shared by the GANs and the adversarial autoencoder.

The losses, each next to its formula (Goodfellow et al. 2014; Lim & Ye 2017 and Miyato
et al. 2018; Mao et al. 2017; Arjovsky et al. 2017; Gulrajani et al. 2017; Salimans et
al. 2016), the minibatch-std feature (Karras et al. 2018), spectral normalisation
(Miyato et al. 2018) and the discriminators (MLP, and DCGAN's conv net, Radford et al.
2016), with the normalisation and conditioning helpers the generators of
``models/gan.py`` use too.

For the ``minimax`` and ``non-saturating`` games ``D`` outputs logits l; D(x) =
sigmoid(l). With log sigmoid(l) = -softplus(-l) and log(1 - sigmoid(l)) = -softplus(l),
every log below is computed stably from logits. For ``hinge`` and ``least-squares`` D's
output is a raw score (no sigmoid), as for the WGAN critic.

Shapes: ``N`` batch, ``F`` features, ``K'`` label inputs (one-hot classes, packed).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from ..errors import UserError

# The DCGAN discriminator's LeakyReLU slope (Radford et al. 2016, sec. 3).
LEAKY_SLOPE = 0.2

# -- losses ---------------------------------------------------------------------------------


#: The games of the non-Wasserstein GANs (``GANConfig.g_loss``): D's and G's losses.
GAN_LOSSES = ("minimax", "non-saturating", "hinge", "least-squares")
#: The games whose D outputs the logit of a probability (its logs are sigmoid means).
PROBABILITY_LOSSES = ("minimax", "non-saturating")


def _unknown(kind: str) -> UserError:
    return UserError(f"unknown GAN loss {kind!r}. Accepted: {', '.join(GAN_LOSSES)}.")


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str = "non-saturating") -> torch.Tensor:
    """D's loss in the game ``kind`` on its outputs (N,) for real and (M,) for fake examples -> 0-d.

    ``minimax`` and ``non-saturating`` share D's loss, -E[log D(x)] - E[log(1 - D(G(z)))]
    (Goodfellow et al. 2014, eq. 1), on logits; ``hinge``: :func:`hinge_discriminator_loss`;
    ``least-squares``: :func:`least_squares_discriminator_loss`.
    """
    if kind in PROBABILITY_LOSSES:
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    if kind == "hinge":
        return hinge_discriminator_loss(real_logits, fake_logits)
    if kind == "least-squares":
        return least_squares_discriminator_loss(real_logits, fake_logits)
    raise _unknown(kind)


def generator_loss(fake_logits: torch.Tensor, kind: str = "non-saturating") -> torch.Tensor:
    """G's loss in the game ``kind`` on D's outputs (M,) for its samples -> 0-d.

    ``minimax``: E[log(1 - D(G(z)))], eq. 1 itself; it saturates (vanishing gradient) when
    D rejects the samples confidently, early in training. ``non-saturating``:
    -E[log D(G(z))], the fix Goodfellow et al. recommend (sec. 3), same fixed point.
    ``hinge``: :func:`hinge_generator_loss`; ``least-squares``:
    :func:`least_squares_generator_loss`.
    """
    if kind == "minimax":
        return -F.softplus(fake_logits).mean()
    if kind == "non-saturating":
        return F.softplus(-fake_logits).mean()
    if kind == "hinge":
        return hinge_generator_loss(fake_logits)
    if kind == "least-squares":
        return least_squares_generator_loss(fake_logits)
    raise _unknown(kind)


def hinge_discriminator_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """E[relu(1 - D(x))] + E[relu(1 + D(G(z)))], the hinge loss (Lim & Ye 2017; Miyato et al. 2018, sec. 4) -> 0-d.

    D's scores are raw (no sigmoid); the loss is 0 once real scores are >= 1 and fake ones <= -1.
    """
    return F.relu(1 - real_scores).mean() + F.relu(1 + fake_scores).mean()


def hinge_generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """-E[D(G(z))], G's loss of the hinge game (Lim & Ye 2017; Miyato et al. 2018, sec. 4) -> 0-d."""
    return -fake_scores.mean()


def least_squares_discriminator_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """1/2 E[(D(x) - 1)^2] + 1/2 E[D(G(z))^2]: LSGAN's D (Mao et al. 2017, eq. 2 with a = 0, b = 1) -> 0-d."""
    return 0.5 * (real_scores - 1).pow(2).mean() + 0.5 * fake_scores.pow(2).mean()


def least_squares_generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """1/2 E[(D(G(z)) - 1)^2]: LSGAN's G (Mao et al. 2017, eq. 2 with c = 1), least at D(G(z)) = 1 -> 0-d."""
    return 0.5 * (fake_scores - 1).pow(2).mean()


def critic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """E[f(G(z))] - E[f(x)], the negated Wasserstein estimate (Arjovsky et al. 2017, eq. 3): -> 0-d."""
    return fake_scores.mean() - real_scores.mean()


def critic_generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """-E[f(G(z))], the WGAN generator's loss (Arjovsky et al. 2017, Algorithm 1): -> 0-d."""
    return -fake_scores.mean()


def gradient_penalty(
    critic: Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    weight: float = 10.0,
    *,
    group: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """lambda E[(||grad_x f(x_hat)||_2 - 1)^2] (Gulrajani et al. 2017, eq. 3) -> 0-d.

    ``x_hat = eps x + (1 - eps) x_fake`` with one ``eps ~ U[0, 1]`` per example: random
    points on the lines between real (N, *shape) and fake (N, *shape) examples. ``critic``
    maps (N, *shape) to (N // group,) scores; with PacGAN packing (``group = m``) one score
    judges m examples, and the norm is that of the gradient w.r.t. all m of them. The
    graph is kept (``create_graph``), so the penalty trains the critic.
    """
    n = len(real)
    eps = torch.rand((n,) + (1,) * (real.dim() - 1), generator=generator, device=real.device, dtype=real.dtype)
    with torch.enable_grad():
        x_hat = (eps * real + (1 - eps) * fake).detach().requires_grad_(True)
        scores = critic(x_hat)
        (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    k = n // group
    # sqrt(. + tiny): the norm's gradient stays finite where the gradient is exactly 0.
    norms = torch.sqrt(grad[: k * group].reshape(k, -1).pow(2).sum(dim=1) + 1e-12)  # (k,)
    return weight * (norms - 1).pow(2).mean()


def feature_matching_loss(real_features: torch.Tensor, fake_features: torch.Tensor) -> torch.Tensor:
    """||E f(x) - E f(G(z))||_2^2 on D's features (N, F), (M, F) (Salimans et al. 2016, sec. 3.1) -> 0-d."""
    return (real_features.mean(dim=0) - fake_features.mean(dim=0)).pow(2).sum()


# -- what D sees -----------------------------------------------------------------------------


def minibatch_stddev(h: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Append the batch's mean feature standard deviation (Karras et al. 2018, sec. 3).

    The std of every feature (and spatial location) over the batch, sqrt(Var + eps) with
    the biased variance, averaged into one number s, appended as one more constant
    feature: (N, F) -> (N, F + 1), or one more channel: (N, C, H, W) -> (N, C + 1, H, W).
    A collapsed generator gives a batch with small s, which D can then see.
    """
    std = torch.sqrt(h.var(dim=0, unbiased=False) + eps)  # (F,) or (C, H, W)
    s = std.mean()
    return torch.cat([h, s.expand(len(h), 1, *h.shape[2:])], dim=1)


# -- spectral normalisation ----------------------------------------------------------------

#: The layers :func:`spectral_normalize` wraps (torch reshapes a conv weight to
#: (out, in * kernel) for its power iteration; transposed convs along dim 1).
SPECTRAL_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def spectral_normalize(net: nn.Module, n_power_iterations: int = 1) -> nn.Module:
    """Spectral normalisation (Miyato et al. 2018) of every Linear / Conv layer of ``net``, in place.

    Each weight W becomes W / sigma(W), sigma the largest singular value of W reshaped to
    2-D, estimated as u^T W v with ``n_power_iterations`` power iterations (1, as the
    paper) at every forward in training mode; in eval mode the stored u, v are used as
    they are. With ``torch.nn.utils.parametrizations.spectral_norm``: the trained tensor
    is ``<layer>.parametrizations.weight.original`` and u, v are the buffers
    ``<layer>.parametrizations.weight.0._u`` / ``._v`` (in the state dict), updated in
    place (``out=``, plain tensor ops: capturable in a CUDA graph). Returns ``net``.
    """
    for module in list(net.modules()):
        if isinstance(module, SPECTRAL_LAYERS):
            _spectral_norm(module, n_power_iterations=n_power_iterations)
    return net


# -- networks --------------------------------------------------------------------------------


def norm1d(kind: str, width: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(width)
    if kind == "layer":
        return nn.LayerNorm(width)
    return nn.Identity()


def norm2d(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":  # layer norm over (C, H, W) of each example, per-channel affine
        return nn.GroupNorm(1, channels)
    return nn.Identity()


def conv_stages(height: int, width: int) -> int:
    """Stride-2 stages of the DCGAN networks for an image: the smallest map is 4-7 pixels.

    8x8 -> 1 stage (4x4), 28x28 -> 2 (7x7), 32x32 -> 3 (4x4), 64x64 -> 4 (4x4).
    """
    return max(1, int(math.log2(min(height, width) / 4)))


def halved(n: int, stages: int) -> int:
    for _ in range(stages):
        n //= 2  # Conv2d(kernel 4, stride 2, padding 1) halves and floors
    return n


def with_cond(h: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    return h if c is None else torch.cat([h, c], dim=1)


class MLPDiscriminator(nn.Module):
    """x (N, *any) [+ (N, K')] -> (logits (N,), features (N, F)): Linear -> LeakyReLU(0.2) ... -> Linear.

    ``features`` are the last hidden layer's activations (for feature matching); the
    minibatch-std feature, when on, is appended to them before the output layer.
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], norm: str = "none", minibatch_std: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_dim
        for i, h in enumerate(hidden):
            layers += [nn.Linear(prev, h), norm1d(norm if i > 0 else "none", h), nn.LeakyReLU(LEAKY_SLOPE)]
            prev = h
        self.body = nn.Sequential(*layers)
        self.minibatch_std = minibatch_std
        self.out = nn.Linear(prev + int(minibatch_std), 1)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (N, C_in, ...) (C_in = pack x channels when packed), ``c`` (N, K') one-hot labels (packed like x) or None ->
        (logits (N,), features (N, F)): the features feed feature matching."""
        features = self.body(with_cond(x.flatten(1), c))  # (N, F)
        h = minibatch_stddev(features) if self.minibatch_std else features
        return self.out(h).squeeze(1), features


class ConvDiscriminator(nn.Module):
    """The DCGAN discriminator: (N, C', H, W) [+ (N, K')] -> (logits (N,), features (N, F)).

    s stride-2 4x4 convs doubling the channels from ``width``, LeakyReLU(0.2), the chosen
    normalisation on every stage but the first (Radford et al. 2016, sec. 3), then one
    linear layer on the flattened last map. A condition is broadcast as K' constant input
    channels; the minibatch-std channel is appended to the last map.
    """

    def __init__(self, in_shape: Sequence[int], cond_dim: int, width: int, stages: int, norm: str = "none", minibatch_std: bool = False) -> None:
        super().__init__()
        c, h, w = in_shape
        layers: list[nn.Module] = []
        prev = c + cond_dim
        for i in range(stages):
            ch = width * 2**i
            layers += [nn.Conv2d(prev, ch, 4, stride=2, padding=1), norm2d(norm if i > 0 else "none", ch), nn.LeakyReLU(LEAKY_SLOPE)]
            prev = ch
        self.convs = nn.Sequential(*layers)
        self.minibatch_std = minibatch_std
        self.out = nn.Linear((prev + int(minibatch_std)) * halved(h, stages) * halved(w, stages), 1)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (N, C_in, ...) (C_in = pack x channels when packed), ``c`` (N, K') one-hot labels (packed like x) or None ->
        (logits (N,), features (N, F)): the features feed feature matching."""
        if c is not None:
            x = torch.cat([x, c[:, :, None, None].expand(-1, -1, *x.shape[2:])], dim=1)
        maps = self.convs(x)  # (N, C_s, h_s, w_s)
        h = minibatch_stddev(maps) if self.minibatch_std else maps
        return self.out(h.flatten(1)).squeeze(1), maps.flatten(1)

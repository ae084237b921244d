"""The autoencoder family: plain, sparse, denoising, contractive and stacked autoencoders.

An autoencoder is an encoder ``h = f(x)`` and a decoder ``g(h)`` trained so that
``g(f(x))`` reconstructs ``x`` through a bottleneck or a regulariser that stops it from
learning the identity (Goodfellow, Bengio & Courville, *Deep Learning*, ch. 14). We take
the stochastic encoder/decoder view (ibid. 14.4): the decoder outputs the parameters of a
distribution p(x | h) (a likelihood head from :mod:`deepgen.nn.likelihoods`) and the
reconstruction loss is ``-log p(x | h)``; mean squared error is the fixed-variance
Gaussian case, binary cross-entropy the Bernoulli case.

The chapter, top to bottom:

1. configs: :class:`AEConfig` and one small subclass per model;
2. the regularisers and corruptions as plain functions (sparsity, the Jacobian penalty,
   the three noise processes), so each can be tested against its formula;
3. :class:`Autoencoder` (``ae``): networks, loss, the capabilities and sampling; every
   other model overrides one hook of it: ``squash`` (the code's nonlinearity),
   ``corrupt`` (the input noise) or ``penalty`` (the regulariser);
4. :class:`StackedAutoencoder` (``stacked-ae``): greedy layer-wise pretraining, then
   fine-tuning, scheduled with :class:`~deepgen.models.base.Phase` epoch windows.

Sampling. An autoencoder has no prior, so ``sample`` decodes codes drawn from a Gaussian
``N(mu, Sigma)`` fitted to the training codes. ``mu`` and ``Sigma`` are exponential
moving averages of the batch mean and batch covariance of the codes, updated on the
device inside ``loss`` while the module is in training mode (no host sync), with Adam's
bias correction so that the first batches are not pulled towards the zero initial value.
Before any training step the fit is ``N(0, I)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from ..data.dataset import Batch, DataSpec
from ..errors import UserError
from ..nn.layers import activation, make_decoder, make_encoder
from ..nn.likelihoods import make_head
from ..registry import register
from .base import GenerativeModel, LossOutput, ModelConfig, OptimizerSpec, Phase
from .latent import EncoderDecoderConfig, LatentCodeMixin
from .networks import Network

# -- 1. configs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AEConfig(EncoderDecoderConfig):
    """Settings shared by every autoencoder (network and head knobs: EncoderDecoderConfig)."""

    code_momentum: float = 0.01  # EMA rate of the code mean / covariance used by sample()

    def validate(self) -> None:
        super().validate()
        self.check(
            0 < self.code_momentum <= 1, f"code_momentum must be in (0, 1], got {self.code_momentum}"
        )


@dataclass(frozen=True)
class SparseAEConfig(AEConfig):
    """A sparse autoencoder: an L1 penalty on the code, or Ng's KL sparsity target."""

    sparsity: Literal["l1", "kl"] = "l1"
    # The reconstruction NLL is summed over the data's elements, so the weights below are
    # relative to that scale (a 64-pixel image: tens of nats).
    l1_weight: float = 0.1  # l1: weight of sum_j |h_j|
    rho: float = 0.05  # kl: target mean activation of each (sigmoid) code unit
    beta: float = 1.0  # kl: weight of sum_j KL(rho || rho_hat_j)

    def validate(self) -> None:
        super().validate()
        self.check(self.l1_weight >= 0, f"l1_weight must be >= 0, got {self.l1_weight}")
        self.check(0 < self.rho < 1, f"rho must be in (0, 1), got {self.rho}")
        self.check(self.beta >= 0, f"beta must be >= 0, got {self.beta}")


@dataclass(frozen=True)
class DenoisingAEConfig(AEConfig):
    """A denoising autoencoder: reconstruct the clean x from a corrupted copy."""

    corruption: Literal["gaussian", "masking", "salt-pepper"] = "masking"
    noise: float = 0.25  # gaussian: the noise std; masking / salt-pepper: fraction corrupted
    # gaussian: clamp the corrupted copy to the data's range, as noisy images saved in 8 bits
    # are. Off by default: the noise stays as drawn, so the model learns from inputs beyond
    # the range, and a denoiser must then be given its noisy inputs unclipped too.
    clip: bool = False

    def validate(self) -> None:
        super().validate()
        self.check(self.noise >= 0, f"noise must be >= 0, got {self.noise}")
        self.check(
            self.corruption == "gaussian" or self.noise <= 1,
            f"noise is the fraction of corrupted inputs for {self.corruption}: it must be in [0, 1], got {self.noise}",
        )


@dataclass(frozen=True)
class ContractiveAEConfig(AEConfig):
    """A contractive autoencoder: penalise the encoder Jacobian's Frobenius norm."""

    contraction: float = 0.1  # lambda of Rifai et al. 2011, eq. 2

    def validate(self) -> None:
        super().validate()
        self.check(self.contraction >= 0, f"contraction must be >= 0, got {self.contraction}")


@dataclass(frozen=True)
class StackedAEConfig(AEConfig):
    """A stacked autoencoder: ``hidden`` (mlp) or ``channels`` (conv) are the stages,
    followed by a last linear stage to ``latent_dim``."""

    pretrain_epochs: int = 1  # epochs of greedy pretraining per stage; 0 = fine-tune only

    def validate(self) -> None:
        super().validate()
        self.check(self.pretrain_epochs >= 0, f"pretrain_epochs must be >= 0, got {self.pretrain_epochs}")


# -- 2. regularisers and corruptions ------------------------------------------------------


def l1_sparsity(code: torch.Tensor) -> torch.Tensor:
    """sum_j |h_j| per example, averaged over the batch: code (N, K) -> 0-d."""
    return code.abs().sum(dim=1).mean()


def kl_sparsity(activations: torch.Tensor, rho: float, eps: float = 1e-6) -> torch.Tensor:
    """Ng's sparsity penalty sum_j KL(rho || rho_hat_j) (CS294A notes, "Sparse autoencoder").

    ``activations`` (N, K) are code units in (0, 1) (after a sigmoid); ``rho_hat_j`` is
    unit j's mean activation over the batch, and KL(rho || rho_hat) is the KL divergence
    between Bernoulli(rho) and Bernoulli(rho_hat). Returns a 0-d tensor.
    """
    rho_hat = activations.mean(dim=0).clamp(eps, 1 - eps)  # (K,)
    kl = rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))
    return kl.sum()


def jacobian_frobenius_sq(x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """||J_f(x_i)||_F^2 per example (Rifai et al. 2011, eq. 2), exactly, for any encoder.

    ``x`` (N, *shape) requires grad and ``code = f(x)`` (N, K) was computed from it with
    examples independent of each other (no batch norm), so row k of every example's
    Jacobian is the gradient of sum_i h_ik w.r.t. x. One batched backward (``vmap`` over
    the K one-hot output directions) gives all K rows; ``create_graph=True`` so that the
    penalty itself can be differentiated. Returns (N,).
    """
    n, k = code.shape
    directions = torch.eye(k, dtype=code.dtype, device=code.device).unsqueeze(1).expand(k, n, k)
    (rows,) = torch.autograd.grad(code, x, grad_outputs=directions, is_grads_batched=True, create_graph=True)
    return rows.pow(2).reshape(k, n, -1).sum(dim=(0, 2))  # rows: (K, N, *shape)


def _uniform(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def gaussian_corruption(
    x: torch.Tensor, noise: float, low: torch.Tensor, high: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Additive isotropic Gaussian noise x + noise * eps (Vincent et al. 2010, sec. 4.1)."""
    eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + noise * eps


def masking_corruption(
    x: torch.Tensor, noise: float, low: torch.Tensor, high: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Masking noise: each element is set to 0 with probability ``noise`` (Vincent et al. 2008)."""
    return torch.where(_uniform(x, generator) < noise, torch.zeros_like(x), x)


def salt_pepper_corruption(
    x: torch.Tensor, noise: float, low: torch.Tensor, high: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Salt-and-pepper noise: a fraction ``noise`` of elements is set to the data's minimum
    or maximum (``low`` / ``high``) with equal probability (Vincent et al. 2010, sec. 4.1)."""
    hit = _uniform(x, generator) < noise
    salt = _uniform(x, generator) < 0.5
    return torch.where(hit, torch.where(salt, high, low).to(x.dtype).expand_as(x), x)


CorruptionFn = Callable[..., torch.Tensor]
CORRUPTIONS: dict[str, CorruptionFn] = {
    "gaussian": gaussian_corruption,
    "masking": masking_corruption,
    "salt-pepper": salt_pepper_corruption,
}


# -- 3. the plain autoencoder, and the hooks its relatives override ------------------------


@register("ae")
class Autoencoder(LatentCodeMixin, GenerativeModel):
    """Undercomplete autoencoder: minimise -log p(x | g(f(x))) through a latent_dim bottleneck."""

    config_class: ClassVar[type[ModelConfig]] = AEConfig
    config: AEConfig
    #: True when the regulariser differentiates the code w.r.t. the input (contractive).
    input_grad: ClassVar[bool] = False
    #: sample(mean=True) is the likelihood head's mean E[x | z] at codes drawn from the fitted N(mu, Sigma).
    output_mean: ClassVar[bool] = True
    replaceable_networks: ClassVar[Mapping[str, str]] = {
        "encoder": "x (N, *data_shape) to the code (N, latent_dim) (before the model's squash: sparse-ae's kl sigmoid)",
        "decoder": "z (N, latent_dim) to (N, P, *data_shape): the likelihood head's P parameters per data element",
    }

    def __init__(self, config: AEConfig, spec: DataSpec, *, networks: Mapping[str, Network] | None = None) -> None:
        super().__init__(config, spec, networks=networks)
        self.head = make_head(config.likelihood, spec, sigma=config.sigma, components=config.components)
        self.encoder, self.decoder = self.build_networks()
        k = config.latent_dim
        # Running fit of the training codes for sample(): bias-corrected EMAs (see module doc).
        self.register_buffer("code_mean_ema", torch.zeros(k))
        self.register_buffer("code_cov_ema", torch.zeros(k, k))
        self.register_buffer("code_decay", torch.ones(()))  # (1 - momentum)^updates

    # -- networks ---------------------------------------------------------------------
    def build_networks(self) -> tuple[nn.Module, nn.Module]:
        """Encoder (N, *shape) -> (N, K) and decoder (N, K) -> (N, P, *shape) head parameters
        (the user's, where given)."""
        c, s = self.config, self.spec.shape
        encoder = self.replaceable("encoder", lambda: make_encoder(c.network, s, c.hidden, c.channels, c.latent_dim, c.activation))
        decoder = self.replaceable(
            "decoder", lambda: make_decoder(c.network, c.latent_dim, c.hidden, c.channels, s, self.head.num_params, c.activation)
        )
        return encoder, decoder

    def network_io(self, name: str, n: int) -> tuple[tuple[torch.Tensor, ...], tuple[int, ...]]:
        k = self.config.latent_dim
        if name == "encoder":
            return (torch.zeros(n, *self.spec.shape),), (n, k)
        return (torch.zeros(n, k),), (n, self.head.num_params, *self.spec.shape)

    # -- hooks the relatives override ---------------------------------------------------
    def squash(self, h: torch.Tensor) -> torch.Tensor:
        """The code's output nonlinearity: identity (a linear code) unless overridden."""
        return h

    def corrupt(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The input the encoder sees during training: x itself unless overridden."""
        return x

    def penalty(self, x_in: torch.Tensor, code: torch.Tensor) -> torch.Tensor | None:
        """The weighted regulariser (0-d) added to the reconstruction NLL; None for none."""
        return None

    # -- loss -------------------------------------------------------------------------
    def phases(self) -> list[Phase]:
        return [Phase("main", list(self.parameters()), OptimizerSpec(lr=self.config.lr))]

    def loss(self, batch: Batch, phase: str) -> LossOutput:
        """Mean over the batch of -log p(x | g(f(corrupt(x)))) plus the regulariser."""
        x = batch.x
        x_in = self.corrupt(x)
        if self.input_grad:
            x_in = x_in.detach().requires_grad_(True)
        code = self.squash(self.encoder(x_in))  # (N, K)
        recon = self.head.nll(self.decoder(code), x).mean()  # the target is always the clean x
        self.track_codes(code)
        reg = self.penalty(x_in, code)
        if reg is None:
            return LossOutput(recon, {"recon": recon.detach()})
        return LossOutput(recon + reg, {"recon": recon.detach(), "penalty": reg.detach()})

    # -- the fitted code distribution -----------------------------------------------------
    @torch.no_grad()
    def track_codes(self, code: torch.Tensor) -> None:
        """Fold a batch of codes (N, K) into the running mean / covariance (training mode only).

        All on the device, no host sync: ema <- (1 - m) ema + m batch_stat, and
        ``code_decay`` tracks (1 - m)^t for the bias correction ema / (1 - (1 - m)^t).
        """
        if not self.training:
            return
        m = self.config.code_momentum
        code = code.detach().to(self.code_mean_ema.dtype)
        mean = code.mean(dim=0)
        centred = code - mean
        cov = centred.T @ centred / max(len(code) - 1, 1)  # (K, K)
        self.code_mean_ema.lerp_(mean, m)
        self.code_cov_ema.lerp_(cov, m)
        self.code_decay.mul_(1 - m)

    def code_distribution(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu (K,), Sigma (K, K)) of the training codes; N(0, I) before any training step."""
        seen = 1 - self.code_decay  # 0 before the first update
        trained = seen > 0
        scale = torch.where(trained, 1 / seen.clamp_min(1e-12), torch.zeros_like(seen))
        eye = torch.eye(len(self.code_mean_ema), device=seen.device, dtype=seen.dtype)
        mu = self.code_mean_ema * scale
        sigma = torch.where(trained, self.code_cov_ema * scale, eye)
        return mu, sigma

    @torch.no_grad()
    def sample_codes(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n codes z = mu + L eps with L L^T = Sigma + jitter I (Cholesky): (n, K)."""
        mu, sigma = self.code_distribution()
        k = len(mu)
        # Factorise in float64 with a small relative jitter: Sigma may be singular (dead
        # units, fewer codes seen than latent_dim), the jitter keeps it positive definite.
        sigma64 = sigma.double()
        jitter = 1e-6 * sigma64.diagonal().mean().clamp_min(1e-6)
        eye = torch.eye(k, device=mu.device, dtype=torch.float64)
        chol = torch.linalg.cholesky(sigma64 + jitter * eye).to(mu.dtype)
        eps = torch.randn((n, k), generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + eps @ chol.T

    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        cond: torch.Tensor | None = None,
        mean: bool = False,
    ) -> torch.Tensor:
        """n examples (n, *shape): decode codes from the fitted N(mu, Sigma).

        ``mean=True`` returns the head's mean, else a draw from p(x | z) of the data's kind.
        ``cond`` is refused: these autoencoders are unconditional.
        """
        self.labels(cond, n)
        with torch.no_grad():
            params = self.decoder(self.sample_codes(n, generator))
            return self.head.mean(params) if mean else self.head.sample(params, generator)

    # -- capabilities -------------------------------------------------------------------
    def encode(self, x: torch.Tensor, *, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Codes h = f(x): (N, *shape) -> (N, latent_dim). Differentiable; ``cond`` is refused (unconditional)."""
        self.labels(cond, len(x))
        return self.squash(self.encoder(x))


@register("sparse-ae")
class SparseAutoencoder(Autoencoder):
    """Sparse autoencoder: an L1 penalty on the code, or the KL sparsity target (Ng)."""

    config_class = SparseAEConfig
    config: SparseAEConfig

    def squash(self, h: torch.Tensor) -> torch.Tensor:
        # The KL target is about firing rates, so the code units go through a sigmoid.
        return torch.sigmoid(h) if self.config.sparsity == "kl" else h

    def penalty(self, x_in: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        c = self.config
        if c.sparsity == "kl":
            return c.beta * kl_sparsity(code, c.rho)
        return c.l1_weight * l1_sparsity(code)


@register("denoising-ae")
class DenoisingAutoencoder(Autoencoder):
    """Denoising autoencoder: reconstruct the clean x from a corrupted copy (Vincent et al. 2008)."""

    config_class = DenoisingAEConfig
    config: DenoisingAEConfig

    def __init__(self, config: DenoisingAEConfig, spec: DataSpec, *, networks: Mapping[str, Network] | None = None) -> None:
        if config.clip and spec.kind == "real":
            # Real-valued data (a standardised table) has no range to clamp to; the batch's
            # own minimum and maximum would shrink the noise, to nothing for one row.
            raise UserError(
                "clip=true clamps the noisy copy to the data's range, which images and bounded data have; "
                f"this data is real-valued (kind {spec.kind!r}). Use clip=false."
            )
        super().__init__(config, spec, networks=networks)

    def _bounds(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The data's minimum and maximum, for salt-and-pepper noise."""
        spec = self.spec
        if spec.kind == "real":  # unbounded: the batch's per-element range, on the device
            return x.amin(dim=0), x.amax(dim=0)
        high = float(spec.num_levels - 1) if spec.kind == "discrete" and spec.num_levels else 1.0
        return x.new_zeros(()), x.new_full((), high)

    def corrupt(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A corrupted copy of x (N, *shape), with randomness from ``generator`` or, when
        None, torch's global RNG (which the trainer saves, so a resumed run is exact)."""
        low, high = self._bounds(x)
        out = CORRUPTIONS[self.config.corruption](x, self.config.noise, low, high, generator)
        return torch.maximum(torch.minimum(out, high), low) if self.config.clip else out

    def denoise(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction mean of a (possibly noisy) input: (N, *shape) -> (N, *shape)."""
        return self.reconstruct(x)


@register("contractive-ae")
class ContractiveAutoencoder(Autoencoder):
    """Contractive autoencoder: penalise ||J_f(x)||_F^2 of the encoder (Rifai et al. 2011)."""

    config_class = ContractiveAEConfig
    config: ContractiveAEConfig
    input_grad = True

    def loss(self, batch: Batch, phase: str) -> LossOutput:
        """The autoencoder's loss plus lambda ||J_f(x)||_F^2 (Rifai et al. 2011, eq. 2) on
        ``batch.x`` (B, *shape)."""
        # The penalty differentiates the code w.r.t. x, so autograd stays on even when the
        # caller evaluates the loss under torch.no_grad().
        with torch.enable_grad():
            return super().loss(batch, phase)

    def penalty(self, x_in: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return self.config.contraction * jacobian_frobenius_sq(x_in, code).mean()

    def contractive_penalty(self, x: torch.Tensor) -> torch.Tensor:
        """||J_f(x_i)||_F^2 for each example (unweighted): (N, *shape) -> (N,)."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            return jacobian_frobenius_sq(x, self.encode(x))


# -- 4. the stacked autoencoder -----------------------------------------------------------


@register("stacked-ae")
class StackedAutoencoder(Autoencoder):
    """Stacked autoencoder: greedy layer-wise pretraining, then fine-tuning (Bengio et al. 2007)."""

    config_class = StackedAEConfig
    config: StackedAEConfig
    # Its stages are pairs of layers that pretrain one at a time: no network to swap whole.
    replaceable_networks: ClassVar[Mapping[str, str]] = {}

    # The encoder is nn.Sequential(down_0, ..., down_{L-1}) and the decoder
    # nn.Sequential(up_{L-1}, ..., up_0): stage k is (down_k, up_k), a one-layer autoencoder
    # of stage k-1's code. Every parameter belongs to exactly one stage (no shared tensors).
    def build_networks(self) -> tuple[nn.Module, nn.Module]:
        c, shape, p = self.config, self.spec.shape, self.head.num_params
        if c.network == "conv":
            downs, ups = self._conv_stages(shape, p)
        else:
            downs, ups = self._mlp_stages(shape, p)
        return nn.Sequential(*downs), nn.Sequential(*reversed(ups))

    def _mlp_stages(self, shape: tuple[int, ...], p: int) -> tuple[list[nn.Module], list[nn.Module]]:
        c = self.config
        dims = [math.prod(shape), *c.hidden, c.latent_dim]
        last = len(dims) - 2
        downs: list[nn.Module] = []
        ups: list[nn.Module] = []
        for k, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            down: list[nn.Module] = [nn.Flatten()] if k == 0 else []
            down.append(nn.Linear(a, b))
            if k < last:  # the final code is linear
                down.append(activation(c.activation))
            if k == 0:  # up_0 outputs the head's parameters, (N, P, *shape)
                up: list[nn.Module] = [nn.Linear(b, p * a), nn.Unflatten(1, (p, *shape))]
            else:  # up_k reconstructs stage k-1's (activated) code
                up = [nn.Linear(b, a), activation(c.activation)]
            downs.append(nn.Sequential(*down))
            ups.append(nn.Sequential(*up))
        return downs, ups

    def _conv_stages(self, shape: tuple[int, ...], p: int) -> tuple[list[nn.Module], list[nn.Module]]:
        c = self.config
        if len(shape) != 3:
            raise UserError(f"network='conv' needs image data (C, H, W); this data has shape {tuple(shape)}. Use network=mlp.")
        if min(shape[1:]) < 2 ** len(c.channels):
            raise UserError(f"images of {shape[1]}x{shape[2]} are too small for {len(c.channels)} stride-2 conv stages; use fewer channels entries.")
        chans = [shape[0], *c.channels]
        sizes = [tuple(shape[1:])]
        for _ in c.channels:
            sizes.append((sizes[-1][0] // 2, sizes[-1][1] // 2))  # 4x4 stride-2 conv halves, floors
        downs: list[nn.Module] = []
        ups: list[nn.Module] = []
        for k, (a, b) in enumerate(zip(chans[:-1], chans[1:])):
            downs.append(nn.Sequential(nn.Conv2d(a, b, 4, stride=2, padding=1), activation(c.activation)))
            # output_padding restores an odd size exactly: out = 2 * in + (size % 2).
            pad = (sizes[k][0] % 2, sizes[k][1] % 2)
            up_conv = nn.ConvTranspose2d(b, a * (p if k == 0 else 1), 4, stride=2, padding=1, output_padding=pad)
            tail = nn.Unflatten(1, (p, a)) if k == 0 else activation(c.activation)
            ups.append(nn.Sequential(up_conv, tail))
        # The last stage maps the final feature map to the linear code and back.
        feat = (chans[-1], *sizes[-1])
        flat = math.prod(feat)
        downs.append(nn.Sequential(nn.Flatten(), nn.Linear(flat, c.latent_dim)))
        ups.append(nn.Sequential(nn.Linear(c.latent_dim, flat), activation(c.activation), nn.Unflatten(1, feat)))
        return downs, ups

    @property
    def num_stages(self) -> int:
        return len(self.encoder)

    def stage(self, k: int) -> tuple[nn.Module, nn.Module]:
        """(down_k, up_k) of stage k."""
        return self.encoder[k], self.decoder[self.num_stages - 1 - k]

    def phases(self) -> list[Phase]:
        """``pretrain_k`` for epochs [k p, (k + 1) p), then ``finetune`` from L p on (p = pretrain_epochs)."""
        p, n = self.config.pretrain_epochs, self.num_stages
        opt = OptimizerSpec(lr=self.config.lr)
        phases = []
        if p > 0:
            for k in range(n):
                down, up = self.stage(k)
                params = [*down.parameters(), *up.parameters()]
                phases.append(Phase(f"pretrain_{k}", params, opt, epochs=(k * p, (k + 1) * p)))
        phases.append(Phase("finetune", list(self.parameters()), opt, epochs=(n * p, None)))
        return phases

    def loss(self, batch: Batch, phase: str) -> LossOutput:
        """``pretrain_k``: stage k alone reconstructs its input code (greedy layer-wise,
        Bengio et al. 2007); ``finetune``: the whole stack end to end on ``batch.x`` (B, *shape)."""
        if phase == "finetune":
            return super().loss(batch, phase)
        return self.stage_loss(batch.x, int(phase.removeprefix("pretrain_")))

    def stage_loss(self, x: torch.Tensor, k: int) -> LossOutput:
        """Stage k reconstructs the detached code h_k of stages < k (h_0 = x).

        Stage 0 scores its output with the head's NLL; later stages with the squared error
        0.5 ||h_k - up_k(down_k(h_k))||^2 (a unit-variance Gaussian), summed per example.
        """
        down, up = self.stage(k)
        with torch.no_grad():
            h = self.encoder[:k](x)  # the identity for k = 0
        code = down(h)
        if k == self.num_stages - 1:  # this stage's code is the model's latent code
            self.track_codes(code)
        out = up(code)
        if k == 0:
            recon = self.head.nll(out, x).mean()
        else:
            recon = 0.5 * (out - h).pow(2).reshape(len(h), -1).sum(dim=1).mean()
        return LossOutput(recon, {"recon": recon.detach()})

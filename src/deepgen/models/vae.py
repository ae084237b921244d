"""Variational autoencoders: the VAE, the beta-VAE, the conditional VAE, the importance
weighted autoencoder (IWAE), two stochastic layers and an inverse autoregressive flow posterior.

The chapter, top to bottom:

1. the config (:class:`VAEConfig`);
2. the networks: a Gaussian encoder q(z | x) = N(mu, diag sigma^2), optionally followed by
   an inverse autoregressive flow (:class:`IAF`, Kingma et al. 2016), optionally a second
   stochastic layer z2 above z1 (Burda et al. 2016, sec. 5), and a decoder that outputs the
   parameters of any likelihood head p(x | z) from :mod:`deepgen.nn.likelihoods`;
3. the draw: k codes per example from q and their log importance weights
   log p(x, z) - log q(z | x), shared by training, the ELBO and the bound;
4. the loss: -ELBO with the analytic KL to the standard normal prior (Monte Carlo where it
   is not analytic), the KL weighted by beta (Kingma & Welling 2014; Higgins et al. 2017);
   or -L_k, the IWAE bound (Burda et al. 2016), with the plain or the doubly
   reparameterized gradient (DReG, Tucker et al. 2019);
5. sampling, encoding, decoding and interpolation;
6. the likelihood bound: the importance-weighted bound of Burda et al. 2016 (IWAE), which
   the evaluator reports as the VAE's log-likelihood.

Shapes: ``N`` examples, ``L = latent_dim`` (z1's size), ``L2 = latent_dim2`` (z2's size),
``H = iaf_context``, ``P`` head parameters per data element, ``K`` importance samples,
``C`` classes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..data.dataset import Batch, DataSpec
from ..data.dequantize import dequantize
from ..devices import compiler_disable
from ..nn.layers import ACTIVATIONS, MLPEncoder, make_decoder, make_encoder
from ..nn.likelihoods import at_least_float32, make_head
from ..nn.masked import MADE
from ..registry import register
from .base import GenerativeModel, Likelihood, LossOutput, Phase
from .latent import EncoderDecoderConfig, LatentCodeMixin
from .networks import Network

LOG_2PI = math.log(2 * math.pi)

# log_prob decodes at most this many output elements (rows x P x D) per decoder call when
# ``iwae_chunk=0``: 2^24 float32 values is 64 MiB, small next to a GPU and fine on a CPU.
IWAE_ELEMENTS_PER_CALL = 2**24

# Importance samples per example in training with objective=iwae and train_k=0: Burda et
# al. 2016's k = 50, the setting of their best rows (Table 1).
_IWAE_DEFAULT_TRAIN_K = 50

# Added to the IAF gate's pre-activation s: Kingma et al. 2016 (appendix, "we initialise
# the forget gate bias to be sufficiently positive, close to +1 or +2") start each step
# with sigma = sigmoid(s) near 1, i.e. close to keeping z.
_IAF_GATE_BIAS = 1.0


# -- 1. config ------------------------------------------------------------------------


@dataclass(frozen=True)
class VAEConfig(EncoderDecoderConfig):
    """Settings of the ``vae`` family (network and head knobs: EncoderDecoderConfig).
    ``iwae_k`` and ``iwae_chunk`` (how ``log_prob`` is estimated) may change when a run is loaded."""

    load_time: ClassVar[frozenset[str]] = frozenset({"iwae_k", "iwae_chunk"})
    hidden: tuple[int, ...] = (512, 256)  # mlp widths, encoder order (the decoder mirrors it)
    beta: float = 1.0  # KL weight in the training loss (beta-VAE); 1 is the plain ELBO
    conditional: bool = False  # CVAE: one-hot labels into encoder and decoder
    iwae_k: int = 100  # importance samples for log_prob (evaluation uses e.g. 5000)
    iwae_chunk: int = 0  # importance samples per decoder call in log_prob; 0: about 2^24 outputs per call
    # The training objective: the ELBO, or the IWAE bound L_k (Burda et al. 2016, eq. 8).
    objective: Literal["elbo", "iwae"] = "elbo"
    train_k: int = 0  # samples per example in training; 0: 1 for elbo, 50 for iwae (Burda et al.'s k)
    estimator: Literal["plain", "dreg"] = "plain"  # dreg: Tucker et al. 2019's encoder gradient (iwae only)
    # Two stochastic layers (Burda et al. 2016, sec. 5): x - hidden - z1 (latent_dim) - hidden2 - z2 (latent_dim2).
    stochastic_layers: int = 1
    latent_dim2: int = 8  # size of z2, the top layer (Burda et al.: 50 above 100)
    hidden2: tuple[int, ...] = (100, 100)  # widths of q(z2 | z1), in that order; p(z1 | z2) mirrors them
    # The posterior family: a diagonal Gaussian, or one refined by an inverse autoregressive flow (Kingma et al. 2016).
    posterior: Literal["gaussian", "iaf"] = "gaussian"
    iaf_steps: int = 2  # IAF steps (MADEs), the order reversed between steps
    iaf_hidden: tuple[int, ...] = (64, 64)  # hidden widths of each step's MADE
    iaf_context: int = 16  # width of the context h the encoder outputs for the flow; 0: none
    # KL warm-up (Bowman et al. 2016; Sonderby et al. 2016): objective=elbo's KL weight rises
    # linearly from 0 to beta over this many optimizer steps; 0 = off. Validation and the
    # figures always use beta itself.
    kl_warmup: int = 0

    def validate(self) -> None:
        super().validate()
        self.check(self.beta >= 0, f"beta must be >= 0, got {self.beta}")
        self.check(self.iwae_k >= 1, f"iwae_k must be >= 1, got {self.iwae_k}")
        self.check(self.iwae_chunk >= 0, f"iwae_chunk must be >= 0 (0 = automatic), got {self.iwae_chunk}")
        self.check(self.train_k >= 0, f"train_k must be >= 0 (0 = 1 for elbo, {_IWAE_DEFAULT_TRAIN_K} for iwae), got {self.train_k}")
        self.check(
            self.estimator == "plain" or self.objective == "iwae",
            f"estimator={self.estimator} is a gradient estimator of the IWAE bound; set objective=iwae "
            "(or estimator=plain with objective=elbo).",
        )
        self.check(
            self.objective == "elbo" or self.beta == 1.0,
            f"beta={self.beta} weights the KL term of objective=elbo; the IWAE bound has no separate KL term. "
            "Set beta=1 with objective=iwae, or objective=elbo.",
        )
        self.check(self.stochastic_layers in (1, 2), f"stochastic_layers must be 1 or 2, got {self.stochastic_layers}")
        self.check(self.latent_dim2 >= 1, f"latent_dim2 must be >= 1, got {self.latent_dim2}")
        self.check(all(h >= 1 for h in self.hidden2), f"hidden2 sizes must be >= 1, got {self.hidden2}")
        self.check(self.iaf_steps >= 1, f"iaf_steps must be >= 1, got {self.iaf_steps}")
        self.check(
            len(self.iaf_hidden) >= 1 and all(h >= 1 for h in self.iaf_hidden),
            f"iaf_hidden must be one or more sizes >= 1 (each step's MADE needs a hidden layer), got {self.iaf_hidden}",
        )
        self.check(self.iaf_context >= 0, f"iaf_context must be >= 0 (0 = no context), got {self.iaf_context}")
        self.check(self.kl_warmup >= 0, f"kl_warmup must be >= 0 optimizer steps (0 = off), got {self.kl_warmup}")
        self.check(
            not self.kl_warmup or self.objective == "elbo",
            f"kl_warmup={self.kl_warmup} ramps the KL term of objective=elbo; the IWAE bound has no separate KL term. "
            "Set kl_warmup=0 with objective=iwae, or objective=elbo.",
        )
        self.check(
            self.posterior == "gaussian" or self.stochastic_layers == 1,
            f"posterior={self.posterior} refines a one-layer posterior; stochastic_layers=2 takes posterior=gaussian.",
        )
        self.check(
            self.estimator != "dreg" or self.posterior == "gaussian",
            "estimator=dreg needs log q(z | x) at z with q's parameters held fixed; an IAF posterior gives it only "
            "through its sequential inverse. Use estimator=plain with posterior=iaf, or posterior=gaussian.",
        )

    @property
    def train_samples(self) -> int:
        """Samples per example in a training step: ``train_k``, or its default for the objective."""
        if self.train_k:
            return self.train_k
        return _IWAE_DEFAULT_TRAIN_K if self.objective == "iwae" else 1

    @property
    def context_dim(self) -> int:
        """Width of the encoder's context output h: ``iaf_context`` for an IAF posterior, else 0."""
        return self.iaf_context if self.posterior == "iaf" else 0


# -- Gaussian densities and the KL, written out -----------------------------------------


def log_normal_std(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) per example: (..., L) -> (...)."""
    return -0.5 * (z * z + LOG_2PI).sum(dim=-1)


def log_normal_diag(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag exp(logvar)) per example: (..., L) (broadcasting) -> (...)."""
    d = z - mu
    return -0.5 * (d * d * torch.exp(-logvar) + logvar + LOG_2PI).sum(dim=-1)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) per example, (N, L) -> (N,).

    Kingma & Welling 2014, appendix B: -KL = 1/2 sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2).
    """
    return 0.5 * (mu * mu + torch.exp(logvar) - 1.0 - logvar).sum(dim=-1)


def _repeat(t: torch.Tensor | None, k: int) -> torch.Tensor | None:
    """(N, ...) -> (k*N, ...), sample-major: row i*N + n is example n's i-th copy."""
    return None if t is None else t.expand(k, *t.shape).reshape(k * len(t), *t.shape[1:])


# -- 2. networks: the inverse autoregressive flow -----------------------------------------


class IAFStep(nn.Module):
    """One step of an inverse autoregressive flow (Kingma et al. 2016, Algorithm 1):

        [m, s] = MADE(z, h),   sigma = sigmoid(s),   z' = sigma * z + (1 - sigma) * m,

    the "numerically stable, LSTM-type" update of their eq. 14, with (m_i, s_i) depending
    only on z's dimensions before i in the step's order (the identity order, reversed when
    ``reverse``) and on the context h. The Jacobian dz'/dz is then triangular with diagonal
    sigma, so log |det dz'/dz| = sum_i log sigma_i.

    Shapes: z (M, L), h (M, H) or None -> z' (M, L), log sigma (M, L).
    """

    def __init__(self, dim: int, hidden: tuple[int, ...], context: int, activation: str, *, reverse: bool, seed: int) -> None:
        super().__init__()
        self.reverse = reverse
        # context_output: h reaches every dimension's (m, s), the first in the order's too.
        self.made = MADE(
            dim, hidden, out_per_dim=2, context=context, seed=seed, activation=ACTIVATIONS[activation], context_output=True
        )

    def forward(self, z: torch.Tensor, h: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        # Reversing z before the MADE and its outputs after it is a MADE in the reversed order.
        # The MADE reads z and h in its own dtype (a converted bf16 model; z is float32 from
        # the second step on), the update below stays in float32.
        dt = next(self.made.parameters()).dtype
        zin, hin = z.to(dt), None if h is None else h.to(dt)
        out = self.made(zin.flip(-1), hin).flip(1) if self.reverse else self.made(zin, hin)  # (M, L, 2)
        m, s = at_least_float32(out).unbind(dim=-1)  # (M, L) each, full precision (sigma and log sigma must agree)
        s = s + _IAF_GATE_BIAS
        sigma = torch.sigmoid(s)
        return sigma * z + (1.0 - sigma) * m, F.logsigmoid(s)


class IAF(nn.Module):
    """``steps`` IAF steps, the order reversed between consecutive steps (Kingma et al. 2016,
    sec. 4: "we reverse the ordering of the variables after each step").

    forward: z0 (M, L), context h (M, H) or None -> z_T (M, L), sum_t sum_i log sigma_t,i (M,).
    """

    def __init__(self, dim: int, steps: int, hidden: tuple[int, ...], context: int, activation: str) -> None:
        super().__init__()
        self.steps = nn.ModuleList(
            IAFStep(dim, hidden, context, activation, reverse=t % 2 == 1, seed=t) for t in range(steps)
        )

    def forward(self, z: torch.Tensor, h: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = z.new_zeros(len(z))
        for step in self.steps:
            z, log_sigma = step(z, h)
            log_det = log_det + log_sigma.sum(dim=-1)
        return z, log_det


class _DReGWeights:
    """The second factor of DReG's squared weights (Tucker et al. 2019, eq. 7).

    DReG's encoder gradient is sum_i w~_i^2 d log w_i / d z_i dz_i / dphi (q's parameters
    held fixed inside log w_i); the decoder's is the plain sum_i w~_i grad log w_i. The loss
    is the surrogate sum_i sg(w~_i) log w_i, which gives the decoder its gradient; every code
    the log weights are computed from is :meth:`track` ed, and a backward hook multiplies the
    gradient reaching it by w~_i once more, so the encoder, which the gradient reaches only
    through the codes, gets w~_i^2. The weights are known only after the forward pass:
    :attr:`weights` (K, N) is set then, before the backward pass reads it.
    """

    def __init__(self) -> None:
        self.weights: torch.Tensor | None = None

    @compiler_disable  # a graph break: the hook is registered in eager autograd (dynamo cannot trace it)
    def track(self, z: torch.Tensor) -> torch.Tensor:
        """An alias of z (K, N, L), the same values, whose gradient is scaled by w~ (K, N)."""
        alias = z.view_as(z)
        if alias.requires_grad:
            alias.register_hook(self._scale)
        return alias

    def _scale(self, grad: torch.Tensor) -> torch.Tensor:
        assert self.weights is not None, "DReG weights must be set before the backward pass"
        return grad * self.weights.unsqueeze(-1)


# -- 2. the model and its networks -------------------------------------------------------


@register("vae")
class VAE(LatentCodeMixin, GenerativeModel):
    """Variational autoencoder (Kingma & Welling 2014), with beta-VAE, conditional (CVAE), IWAE, two-layer and IAF variants.

    The encoder maps x (and, for ``conditional=True``, a one-hot label; Sohn et al. 2015)
    to the mean and log-variance of q(z | x); the decoder maps z (and the label) to the
    parameters of the likelihood head p(x | z); the prior is N(0, I). Training minimises
    -ELBO with the KL term weighted by ``beta`` (Higgins et al. 2017), or, with
    ``objective=iwae``, -L_k (Burda et al. 2016) with ``train_k`` samples and the plain or
    DReG gradient (``estimator``, Tucker et al. 2019). ``log_prob`` is the IWAE bound with
    ``iwae_k`` importance samples (Burda et al. 2016).

    ``stochastic_layers=2``: p(z2) = N(0, I), p(z1 | z2) a Gaussian from an MLP of
    ``hidden2`` reversed, p(x | z1) the decoder; q(z1 | x) the encoder, q(z2 | z1) a Gaussian
    from an MLP of ``hidden2`` (Burda et al. 2016, sec. 5). ``posterior=iaf``: z0 ~ q(z0 | x),
    then ``iaf_steps`` IAF steps given the encoder's context h (Kingma et al. 2016).

    A density head (``gaussian``, ``gaussian-learned``) on quantised data is trained on
    uniformly dequantized inputs (:func:`deepgen.data.dequantize`), the inputs the
    evaluator scores it on, so that its density is one of the data's bins (Theis et al.
    2016) and cannot collapse onto the levels.
    """

    output_mean: ClassVar[bool] = True  # mean=True: the decoder head's E[x | z], z from the prior

    config_class = VAEConfig
    config: VAEConfig
    replaceable_networks = {
        "encoder": "x (N, *data_shape) [and, when conditional, one-hot labels c (N, C)] to (N, 2 * latent_dim "
        "[+ iaf_context with posterior=iaf]): the mean and log-variance of q(z | x) [and the flow's context h]",
        "decoder": "z (N, latent_dim) [and, when conditional, c (N, C)] to (N, P, *data_shape): the likelihood head's "
        "P parameters per data element",
    }

    def __init__(self, config: VAEConfig, spec: DataSpec, *, networks: Mapping[str, Network] | None = None) -> None:
        super().__init__(config, spec, conditional=config.conditional, networks=networks)
        cond_dim = self.num_classes or 0
        c = config
        self.head = make_head(c.likelihood, spec, sigma=c.sigma, components=c.components)
        # The encoder outputs [mu, logvar, h] (N, 2L + H); the decoder outputs head parameters (N, P, *shape).
        self.encoder = self.replaceable("encoder", lambda: make_encoder(
            c.network, spec.shape, c.hidden, c.channels, 2 * c.latent_dim + c.context_dim, c.activation, cond_dim
        ))
        self.decoder = self.replaceable("decoder", lambda: make_decoder(
            c.network, c.latent_dim, c.hidden, c.channels, spec.shape, self.head.num_params, c.activation, cond_dim,
        ))
        # Burda et al. 2016, sec. 5: q(z2 | z1) and p(z1 | z2), Gaussians from MLPs of hidden2 (mirrored).
        self.encoder2: nn.Module | None = None
        self.decoder2: nn.Module | None = None
        if c.stochastic_layers == 2:
            self.encoder2 = MLPEncoder((c.latent_dim,), c.hidden2, 2 * c.latent_dim2, c.activation, cond_dim)
            self.decoder2 = MLPEncoder((c.latent_dim2,), tuple(reversed(c.hidden2)), 2 * c.latent_dim, c.activation, cond_dim)
        self.flow = IAF(c.latent_dim, c.iaf_steps, c.iaf_hidden, c.context_dim, c.activation) if c.posterior == "iaf" else None
        if c.kl_warmup:
            # Optimizer steps taken, for the KL warm-up: a device counter that the phase's
            # after_step hook moves in place after each step (so CUDA graphs capture it and
            # every micro-batch of a grad_accum step has the same weight), saved with the
            # weights so that a resumed run goes on with the same weight. Only then: run
            # folders without warm-up keep the weights they had.
            self.register_buffer("kl_steps", torch.zeros((), dtype=torch.float32))

    def phases(self) -> list[Phase]:
        """The one ``main`` phase; with ``kl_warmup`` its after-step hook counts the steps."""
        (main,) = super().phases()
        return [dataclasses.replace(main, after_step=self._count_step)] if self.config.kl_warmup else [main]

    def _count_step(self) -> None:
        self.kl_steps.add_(1.0)

    @classmethod
    def variants(cls, spec: DataSpec) -> list[dict[str, object]]:
        """MLP networks (and conv ones for images), then this family's other structures on an
        MLP: two stochastic layers, an IAF posterior, and IWAE training with DReG through two
        layers (its backward hooks and stopped-parameter networks)."""
        return [
            *super().variants(spec),
            {"stochastic_layers": 2},
            {"posterior": "iaf"},
            {"objective": "iwae", "estimator": "dreg", "train_k": 5, "stochastic_layers": 2},
        ]

    def network_io(self, name: str, n: int) -> tuple[tuple[torch.Tensor, ...], tuple[int, ...]]:
        c = self.one_hot(0, n) if self.conditional else None
        if name == "encoder":
            x, out = torch.zeros(n, *self.spec.shape), (n, 2 * self.config.latent_dim + self.config.context_dim)
        else:
            x, out = torch.zeros(n, self.config.latent_dim), (n, self.head.num_params, *self.spec.shape)
        return (x,) if c is None else (x, c), out

    # -- inputs --------------------------------------------------------------------------
    def _encoder_outputs(
        self, x: torch.Tensor, c: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """x (N, *shape), c (N, C) or None -> mu (N, L), logvar (N, L), the IAF context h (N, H) or None."""
        x = self.encoder_input(x).to(self.dtype)  # a converted (.bfloat16()) model takes float32 data too
        out = self.encoder(x) if c is None else self.encoder(x, c)  # (N, 2L + H)
        L = self.config.latent_dim
        out = at_least_float32(out)
        h = out[:, 2 * L:] if self.config.context_dim else None
        return out[:, :L], out[:, L:2 * L], h

    def posterior(self, x: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z | x) (z1's, before any flow): x (N, *shape), one-hot c (N, C) or None -> mu (N, L), logvar (N, L)."""
        mu, logvar, _ = self._encoder_outputs(x, c)
        return mu, logvar

    @staticmethod
    def _gaussian(net: nn.Module, z: torch.Tensor, c: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """mu, logvar (M, out) of a Gaussian layer ``net`` (q(z2 | z1) or p(z1 | z2)) at z (M, in);
        z goes in the layer's dtype (the float32 codes into a converted bf16 layer)."""
        dt = next((p.dtype for p in net.parameters() if p.is_floating_point()), z.dtype)
        return at_least_float32(net(z.to(dt), c)).chunk(2, dim=-1)

    @property
    def dequantizes(self) -> bool:
        """True when training and scoring see dequantized inputs: a density head on quantised data."""
        return not self.head.discrete and bool(self.head.exact) and self.spec.bin_width is not None

    # -- 3. the draw: codes from q and their log importance weights ------------------------
    def _draw(
        self,
        x: torch.Tensor,
        c: torch.Tensor | None,
        q: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
        k: int,
        generator: torch.Generator | None = None,
        dreg: _DReGWeights | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``k`` codes per example from q(z | x) and score them.

        x (N, *shape) as the head scores it, c (N, C) or None, ``q``: the encoder's outputs
        (mu, logvar, h) for x. Returns log p(x | z1) (K, N) and log p(z) - log q(z | x) (K, N),
        so that their sum is log w, the log importance weight (Burda et al. 2016, eq. 8), and
        minus the second is a one-sample estimate of the KL. z is z1 (one layer) or
        (z1, z2) (two layers: log p(z) = log p(z1 | z2) + log p(z2), log q = log q(z1 | x) +
        log q(z2 | z1)). ``dreg``: score the codes with q's parameters held fixed and track
        them (Tucker et al. 2019); ``generator``: for the noise.
        """
        n, L = len(x), self.config.latent_dim
        mu, logvar, h = q
        eps = torch.randn((k, n, L), generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps  # (K, N, L): reparameterisation (Kingma & Welling, eq. 4)
        if dreg is None:
            log_q = log_normal_diag(z, mu, logvar)  # (K, N)
        else:  # DReG: log q at the tracked code, with q's parameters stopped (Tucker et al. 2019, eq. 7)
            zs = dreg.track(z)
            log_q = log_normal_diag(zs, mu.detach(), logvar.detach())
        if self.flow is not None:
            # IAF (Kingma et al. 2016, eq. 15 with Algorithm 1): log q(z_T | x) = log q(z0 | x) - sum_t sum log sigma_t.
            zt, log_det = self._iaf(z.reshape(k * n, L), _repeat(h, k))
            z, log_q = zt.reshape(k, n, L), log_q - log_det.reshape(k, n)
        z1 = z if dreg is None else zs  # the code the weights are computed from, (K, N, L)
        c_rep = _repeat(c, k)  # (K*N, C)
        if self.encoder2 is not None and self.decoder2 is not None:
            # q(z2 | z1) from the untracked z1: each path to the encoder is then scaled once by DReG's hook.
            mu2, logvar2 = self._gaussian(self.encoder2, z.reshape(k * n, L), c_rep)  # (K*N, L2) each
            eps2 = torch.randn(mu2.shape, generator=generator, device=mu2.device, dtype=mu2.dtype)
            z2 = (mu2 + torch.exp(0.5 * logvar2) * eps2).reshape(k, n, -1)  # (K, N, L2)
            if dreg is None:
                log_q = log_q + log_normal_diag(z2, mu2.reshape(k, n, -1), logvar2.reshape(k, n, -1))
            else:  # q(z2 | z1) at the tracked codes, by the network with its parameters detached
                z2 = dreg.track(z2)
                stopped = {name: p.detach() for name, p in self.encoder2.named_parameters()}
                mu2s, logvar2s = functional_call(self.encoder2, stopped, (z1.reshape(k * n, L), c_rep)).chunk(2, dim=-1)
                log_q = log_q + log_normal_diag(z2, mu2s.reshape(k, n, -1), logvar2s.reshape(k, n, -1))
            mu_p, logvar_p = self._gaussian(self.decoder2, z2.reshape(k * n, -1), c_rep)  # p(z1 | z2), (K*N, L)
            log_pz = log_normal_diag(z1, mu_p.reshape(k, n, L), logvar_p.reshape(k, n, L)) + log_normal_std(z2)
        else:
            log_pz = log_normal_std(z1)
        log_px_z = -self.head.nll(self.decoder_params(z1.reshape(k * n, L), c_rep), _repeat(x, k)).reshape(k, n)
        return log_px_z, log_pz - log_q

    # -- 4. the loss -----------------------------------------------------------------------
    @property
    def _analytic_kl(self) -> bool:
        """True when the KL to the prior has a closed form: one layer, a Gaussian posterior."""
        return self.flow is None and self.encoder2 is None

    def _elbo_terms(
        self, x: torch.Tensor, c: torch.Tensor | None, generator: torch.Generator | None = None, k: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruction NLL (mean of ``k`` draws) and KL per example: both (N,).

        The KL is analytic for a one-layer Gaussian posterior (Kingma & Welling, appendix B),
        else the mean of the k one-sample estimates log q(z | x) - log p(z).
        """
        q = self._encoder_outputs(x, c)
        log_px_z, log_ratio = self._draw(x, c, q, k, generator)  # (K, N) each
        mu, logvar, _ = q
        return -log_px_z.mean(0), gaussian_kl(mu, logvar) if self._analytic_kl else -log_ratio.mean(0)

    def loss(self, batch: Batch, phase: str = "main") -> LossOutput:
        """The training loss, averaged over the batch; logs in nats per example.

        ``objective=elbo``: -ELBO with the KL weighted by beta; logs elbo, recon, kl.
        ``objective=iwae``: -L_k with k = ``train_k`` (the loss's value is the bound's, with
        either estimator); logs iwae (L_k), and elbo, recon, kl of the same k draws.
        """
        x = dequantize(batch.x, self.spec) if self.dequantizes else batch.x
        c = self.one_hot(batch.y, len(x), checked=False)
        if self.config.objective == "iwae":
            return self._iwae_loss(x, c)
        recon, kl = self._elbo_terms(x, c, k=self.config.train_samples)
        logs: dict[str, torch.Tensor] = {}
        beta: float | torch.Tensor = self.config.beta
        if self.config.kl_warmup and self.training:
            # The (t+1)-th optimizer step (t taken so far) weighs the KL by beta (t+1) / N.
            beta = self.config.beta * ((self.kl_steps + 1.0) / self.config.kl_warmup).clamp(max=1.0)
            logs["kl_weight"] = beta.detach()
        loss = (recon + beta * kl).mean()
        recon_mean, kl_mean = recon.mean().detach(), kl.mean().detach()
        return LossOutput(loss, {"elbo": -(recon_mean + kl_mean), "recon": recon_mean, "kl": kl_mean, **logs})

    def _iwae_loss(self, x: torch.Tensor, c: torch.Tensor | None) -> LossOutput:
        """-L_k averaged over the batch (Burda et al. 2016, eq. 8), k = ``train_samples``.

        ``estimator=plain``: autograd of -L_k itself, whose gradient is
        -sum_i w~_i grad log w_i, w~ = softmax_i(log w_i) (Burda et al., eq. 13).
        ``estimator=dreg``: the same decoder gradient; the encoder's is the doubly
        reparameterized -sum_i w~_i^2 d log w_i / d z_i dz_i / dphi (Tucker et al. 2019,
        eq. 7), through :class:`_DReGWeights`. The loss's value is -L_k in both cases.
        """
        k = self.config.train_samples
        dreg = _DReGWeights() if self.config.estimator == "dreg" else None
        log_px_z, log_ratio = self._draw(x, c, self._encoder_outputs(x, c), k, dreg=dreg)  # (K, N) each
        log_w = log_px_z + log_ratio  # (K, N)
        bound = (torch.logsumexp(log_w, dim=0) - math.log(k)).mean()
        if dreg is None:
            loss = -bound
        else:
            w = torch.softmax(log_w.detach(), dim=0)  # (K, N): the normalised weights w~
            dreg.weights = w
            surrogate = (w * log_w).sum(dim=0).mean()
            # Value: -L_k (the logs stay honest); gradient: the surrogate's.
            loss = -(bound.detach() + (surrogate - surrogate.detach()))
        recon, kl = -log_px_z.mean().detach(), -log_ratio.mean().detach()
        return LossOutput(loss, {"iwae": bound.detach(), "elbo": -(recon + kl), "recon": recon, "kl": kl})

    def elbo(
        self, x: torch.Tensor, *, cond: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The evidence lower bound per example (N,) in nats, one z sample, beta = 1: the KL
        analytic for a one-layer Gaussian posterior, else Monte Carlo."""
        recon, kl = self._elbo_terms(x, self.one_hot(cond, len(x)), generator)
        return -(recon + kl)

    # -- 5. sampling, encoding, decoding ---------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        cond: torch.Tensor | int | None = None,
        mean: bool = False,
    ) -> torch.Tensor:
        """``n`` examples (n, *shape): z ~ N(0, I), then x ~ p(x | z) (or its mean if ``mean``).

        Two layers: z2 ~ N(0, I), z1 ~ p(z1 | z2), x ~ p(x | z1) (``mean``: the mean of
        p(x | z1); z1 is still drawn). ``cond``: labels (n,) for a conditional model
        (required there). ``generator`` must be on the model's device.
        """
        c = self.one_hot(cond, n)
        if self.decoder2 is not None:
            z2 = torch.randn((n, self.config.latent_dim2), generator=generator, device=self.device, dtype=self.dtype)
            mu, logvar = self._gaussian(self.decoder2, z2, c)  # p(z1 | z2), (n, L) each
            z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        else:
            z = torch.randn((n, self.config.latent_dim), generator=generator, device=self.device, dtype=self.dtype)
        params = self.decoder_params(z, c)  # (n, P, *shape)
        return self.head.mean(params) if mean else self.head.sample(params, generator)

    def encode(self, x: torch.Tensor, *, cond: torch.Tensor | None = None) -> torch.Tensor:
        """A code in z1's space, what ``decode`` takes: x (N, *shape) -> (N, L).

        The posterior mean of q(z1 | x) (with two layers too: z1, not z2, is the decoder's
        input); with an IAF posterior the flow's image of that mean (eps = 0), given h.
        """
        mu, _, h = self._encoder_outputs(x, self.one_hot(cond, len(x)))
        return mu if self.flow is None else self._iaf(mu, h)[0]

    def _iaf(self, z: torch.Tensor, h: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The IAF posterior flow at codes z (M, L) with context h (M, H): (z_T, log det) in
        float32 at least (each step's MADE reads them in its own dtype)."""
        zt, log_det = self.flow(z, h)
        return at_least_float32(zt), at_least_float32(log_det)

    # -- 6. the likelihood bound -----------------------------------------------------------
    def likelihood_info(self) -> Likelihood:
        """The IWAE bound; not a normalised likelihood when the head is not one of the data
        (a Bernoulli decoder on [0, 1]-valued data, Loaiza-Ganem & Cunningham 2019: the
        evaluator then reports it in nats but gives no bits/dim); discrete when the head is."""
        k = self.config.iwae_k
        if not self.head.exact:
            note = (
                f"IWAE bound (k={k}) with a {type(self.head).__name__} decoder on {self.spec.kind} "
                "data: not a normalised likelihood; compare with other models only via samples"
            )
            return Likelihood("none", self.head.discrete, note)
        return Likelihood("bound", self.head.discrete, f"IWAE bound, k={k} importance samples (a lower bound on log p(x))")

    def _iwae_chunk(self, n: int, k: int) -> int:
        """Importance samples decoded per call, so that one call's widest tensor (the head's
        outputs, or a wider layer of the decoder, the IAF's MADEs or the second layer's
        networks) holds about 2^24 elements."""
        c = self.config
        if c.iwae_chunk:
            return min(c.iwae_chunk, k)
        widths = [self.head.num_params * self.spec.dim]
        if c.network == "conv":  # decoder stage i: channels[i] maps at 1 / 2^(i+1) of the size
            pixels = math.prod(self.spec.shape[1:])
            widths += [ch * pixels // 4 ** (i + 1) for i, ch in enumerate(c.channels)]
        else:
            widths += list(c.hidden)
        if c.posterior == "iaf":
            widths += list(c.iaf_hidden)
        if c.stochastic_layers == 2:
            widths += list(c.hidden2)
        return max(1, min(k, IWAE_ELEMENTS_PER_CALL // max(1, n * max(widths))))

    @torch.no_grad()
    def log_prob(
        self,
        x: torch.Tensor,
        *,
        cond: torch.Tensor | None = None,
        k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The IWAE bound per example (N,) in nats, with ``k`` (default ``iwae_k``) samples.

        Burda et al. 2016, eq. 8: log p(x) >= E[log (1/k) sum_i p(x, z_i) / q(z_i | x)],
        z_i ~ q(z | x); with two layers z_i = (z1_i, z2_i) and p(x, z) / q(z | x) =
        p(x | z1) p(z1 | z2) p(z2) / (q(z1 | x) q(z2 | z1)). k = 1 is the ELBO's
        expectation; the bound rises with k towards log p(x). Always the beta = 1 model:
        beta changes the training objective, not the density.
        """
        k = k or self.config.iwae_k
        c = self.one_hot(cond, len(x))
        q = self._encoder_outputs(x, c)  # mu, logvar (N, L), h (N, H) or None
        chunk = self._iwae_chunk(len(x), k)
        log_w = []
        for start in range(0, k, chunk):
            log_px_z, log_ratio = self._draw(x, c, q, min(chunk, k - start), generator)
            log_w.append(log_px_z + log_ratio)  # (m, N)
        # log (1/k) sum_i w_i, stably.
        return torch.logsumexp(torch.cat(log_w), dim=0) - math.log(k)

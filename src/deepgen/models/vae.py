"""Variational autoencoders: the VAE, the beta-VAE and the conditional VAE.

The chapter, top to bottom:

1. the config (:class:`VAEConfig`);
2. the networks: a Gaussian encoder q(z | x) = N(mu, diag sigma^2) and a decoder that
   outputs the parameters of any likelihood head p(x | z) from :mod:`deepgen.nn.likelihoods`;
3. the loss: -ELBO with the analytic KL to the standard normal prior, the KL weighted by
   beta (Kingma & Welling 2014; Higgins et al. 2017);
4. sampling, encoding, decoding and interpolation;
5. the likelihood bound: the importance-weighted bound of Burda et al. 2016 (IWAE), which
   the evaluator reports as the VAE's log-likelihood.

Shapes: ``N`` examples, ``L = latent_dim``, ``P`` head parameters per data element,
``K`` importance samples, ``C`` classes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..data.dataset import Batch, DataSpec
from ..data.dequantize import dequantize
from ..nn.layers import make_decoder, make_encoder
from ..nn.likelihoods import make_head
from ..registry import register
from .base import GenerativeModel, Likelihood, LossOutput
from .latent import EncoderDecoderConfig, LatentCodeMixin
from .networks import Network

LOG_2PI = math.log(2 * math.pi)

# log_prob decodes at most this many output elements (rows x P x D) per decoder call when
# ``iwae_chunk=0``: 2^24 float32 values is 64 MiB, small next to a GPU and fine on a CPU.
_IWAE_ELEMENTS_PER_CALL = 2**24


# -- 1. config ------------------------------------------------------------------------


@dataclass(frozen=True)
class VAEConfig(EncoderDecoderConfig):
    """Settings of the ``vae`` family (network and head knobs: EncoderDecoderConfig)."""

    hidden: tuple[int, ...] = (512, 256)  # mlp widths, encoder order (the decoder mirrors it)
    beta: float = 1.0  # KL weight in the training loss (beta-VAE); 1 is the plain ELBO
    conditional: bool = False  # CVAE: one-hot labels into encoder and decoder
    iwae_k: int = 100  # importance samples for log_prob (evaluation uses e.g. 5000)
    iwae_chunk: int = 0  # importance samples per decoder call in log_prob; 0: about 2^24 outputs per call

    def validate(self) -> None:
        super().validate()
        self.check(self.beta >= 0, f"beta must be >= 0, got {self.beta}")
        self.check(self.iwae_k >= 1, f"iwae_k must be >= 1, got {self.iwae_k}")
        self.check(self.iwae_chunk >= 0, f"iwae_chunk must be >= 0 (0 = automatic), got {self.iwae_chunk}")


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


# -- 2. the model and its networks -------------------------------------------------------


@register("vae")
class VAE(LatentCodeMixin, GenerativeModel):
    """Variational autoencoder (Kingma & Welling 2014), with beta-VAE and conditional (CVAE) variants.

    The encoder maps x (and, for ``conditional=True``, a one-hot label; Sohn et al. 2015)
    to the mean and log-variance of q(z | x); the decoder maps z (and the label) to the
    parameters of the likelihood head p(x | z); the prior is N(0, I). Training minimises
    -ELBO with the KL term weighted by ``beta`` (Higgins et al. 2017). ``log_prob`` is the
    IWAE bound with ``iwae_k`` importance samples (Burda et al. 2016).

    A density head (``gaussian``, ``gaussian-learned``) on quantised data is trained on
    uniformly dequantized inputs (:func:`deepgen.data.dequantize`), the inputs the
    evaluator scores it on, so that its density is one of the data's bins (Theis et al.
    2016) and cannot collapse onto the levels.
    """

    config_class = VAEConfig
    config: VAEConfig
    replaceable_networks = {
        "encoder": "x (N, *data_shape) [and, when conditional, one-hot labels c (N, C)] to (N, 2 * latent_dim): "
        "the mean and log-variance of q(z | x)",
        "decoder": "z (N, latent_dim) [and, when conditional, c (N, C)] to (N, P, *data_shape): the likelihood head's "
        "P parameters per data element",
    }

    def __init__(self, config: VAEConfig, spec: DataSpec, *, networks: Mapping[str, Network] | None = None) -> None:
        super().__init__(config, spec, conditional=config.conditional, networks=networks)
        cond_dim = self.num_classes or 0
        self.head = make_head(config.likelihood, spec, sigma=config.sigma, components=config.components)
        # The encoder outputs [mu, logvar] (N, 2L); the decoder outputs head parameters (N, P, *shape).
        self.encoder = self.replaceable("encoder", lambda: make_encoder(
            config.network, spec.shape, config.hidden, config.channels, 2 * config.latent_dim, config.activation, cond_dim
        ))
        self.decoder = self.replaceable("decoder", lambda: make_decoder(
            config.network, config.latent_dim, config.hidden, config.channels, spec.shape,
            self.head.num_params, config.activation, cond_dim,
        ))

    def network_io(self, name: str, n: int) -> tuple[tuple[torch.Tensor, ...], tuple[int, ...]]:
        c = self.one_hot(0, n) if self.conditional else None
        if name == "encoder":
            x, out = torch.zeros(n, *self.spec.shape), (n, 2 * self.config.latent_dim)
        else:
            x, out = torch.zeros(n, self.config.latent_dim), (n, self.head.num_params, *self.spec.shape)
        return (x,) if c is None else (x, c), out

    # -- inputs --------------------------------------------------------------------------
    def posterior(self, x: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z | x): x (N, *shape), one-hot c (N, C) or None -> mu (N, L), logvar (N, L)."""
        x = self.encoder_input(x)
        mu, logvar = (self.encoder(x) if c is None else self.encoder(x, c)).chunk(2, dim=1)
        return mu, logvar

    @property
    def dequantizes(self) -> bool:
        """True when training and scoring see dequantized inputs: a density head on quantised data."""
        return not self.head.discrete and bool(self.head.exact) and self.spec.bin_width is not None

    # -- 3. the loss -----------------------------------------------------------------------
    def _elbo_terms(
        self, x: torch.Tensor, c: torch.Tensor | None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One-sample reconstruction NLL and analytic KL per example: both (N,)."""
        mu, logvar = self.posterior(x, c)
        # Reparameterisation (Kingma & Welling 2014, eq. 4): z = mu + sigma * eps, eps ~ N(0, I).
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps  # (N, L)
        recon = self.head.nll(self.decoder_params(z, c), x)  # -log p(x | z), (N,)
        return recon, gaussian_kl(mu, logvar)

    def loss(self, batch: Batch, phase: str = "main") -> LossOutput:
        """-ELBO with the KL weighted by beta, averaged over the batch; logs elbo, recon, kl (nats)."""
        x = dequantize(batch.x, self.spec) if self.dequantizes else batch.x
        c = self.one_hot(batch.y, len(x), checked=False)
        recon, kl = self._elbo_terms(x, c)
        loss = (recon + self.config.beta * kl).mean()
        recon_mean, kl_mean = recon.mean().detach(), kl.mean().detach()
        return LossOutput(loss, {"elbo": -(recon_mean + kl_mean), "recon": recon_mean, "kl": kl_mean})

    def elbo(
        self, x: torch.Tensor, *, cond: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The evidence lower bound per example (N,) in nats: analytic KL, one z sample, beta = 1."""
        recon, kl = self._elbo_terms(x, self.one_hot(cond, len(x)), generator)
        return -(recon + kl)

    # -- 4. sampling, encoding, decoding ---------------------------------------------------
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

        ``cond``: labels (n,) for a conditional model (required there). ``generator`` must be
        on the model's device.
        """
        c = self.one_hot(cond, n)
        z = torch.randn((n, self.config.latent_dim), generator=generator, device=self.device, dtype=self.dtype)
        params = self.decoder_params(z, c)  # (n, P, *shape)
        return self.head.mean(params) if mean else self.head.sample(params, generator)

    def encode(self, x: torch.Tensor, *, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The posterior mean: x (N, *shape) -> mu (N, L)."""
        return self.posterior(x, self.one_hot(cond, len(x)))[0]

    # -- 5. the likelihood bound -----------------------------------------------------------
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
        """Importance samples decoded per call, so that one call holds about 2^24 outputs."""
        if self.config.iwae_chunk:
            return min(self.config.iwae_chunk, k)
        per_row = self.head.num_params * self.spec.dim
        return max(1, min(k, _IWAE_ELEMENTS_PER_CALL // max(1, n * per_row)))

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
        z_i ~ q(z | x). k = 1 is the ELBO's expectation; the bound rises with k towards log p(x).
        Always the beta = 1 model: beta changes the training objective, not the density.
        """
        k = k or self.config.iwae_k
        n = len(x)
        c = self.one_hot(cond, n)
        mu, logvar = self.posterior(x, c)  # (N, L) each
        std = torch.exp(0.5 * logvar)
        chunk = self._iwae_chunk(n, k)
        log_w = []
        for start in range(0, k, chunk):
            m = min(chunk, k - start)
            eps = torch.randn((m, *mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)
            z = mu + std * eps  # (m, N, L): m importance samples for every example
            x_rep = x.expand(m, *x.shape).reshape(m * n, *x.shape[1:])  # (m*N, *shape)
            c_rep = None if c is None else c.repeat(m, 1)  # (m*N, C)
            log_px_z = -self.head.nll(self.decoder_params(z.reshape(m * n, -1), c_rep), x_rep).reshape(m, n)
            log_w.append(log_px_z + log_normal_std(z) - log_normal_diag(z, mu, logvar))  # (m, N)
        # log (1/k) sum_i w_i, stably.
        return torch.logsumexp(torch.cat(log_w), dim=0) - math.log(k)

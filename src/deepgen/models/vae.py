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
from dataclasses import dataclass

import torch

from ..data.dataset import Batch, DataSpec
from ..errors import UserError
from ..nn.encoder_decoder import EncoderDecoderConfig
from ..nn.layers import make_decoder, make_encoder
from ..nn.likelihoods import make_head
from ..registry import register
from .base import GenerativeModel, LossOutput, one_hot

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
class VAE(GenerativeModel):
    """Variational autoencoder (Kingma & Welling 2014), with beta-VAE and conditional (CVAE) variants.

    The encoder maps x (and, for ``conditional=True``, a one-hot label; Sohn et al. 2015)
    to the mean and log-variance of q(z | x); the decoder maps z (and the label) to the
    parameters of the likelihood head p(x | z); the prior is N(0, I). Training minimises
    -ELBO with the KL term weighted by ``beta`` (Higgins et al. 2017). ``log_prob`` is the
    IWAE bound with ``iwae_k`` importance samples (Burda et al. 2016).
    """

    config_class = VAEConfig
    config: VAEConfig

    def __init__(self, config: VAEConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        if spec.kind == "tokens":
            raise UserError(
                f"the vae models binary, continuous, discrete or real data; {spec.name or 'this dataset'!r} "
                "holds tokens. Use an autoregressive model for text."
            )
        if config.conditional and not spec.num_classes:
            raise UserError(
                f"conditional=true needs labelled data, but {spec.name or 'this dataset'!r} has no classes "
                "(num_classes is not set). Use conditional=false."
            )
        self.num_classes = spec.num_classes if config.conditional else None
        cond_dim = self.num_classes or 0
        self.head = make_head(config.likelihood, spec, sigma=config.sigma, components=config.components)
        # The encoder outputs [mu, logvar] (N, 2L); the decoder outputs head parameters (N, P, *shape).
        self.encoder = make_encoder(
            config.network, spec.shape, config.hidden, config.channels, 2 * config.latent_dim, config.activation, cond_dim
        )
        self.decoder = make_decoder(
            config.network, config.latent_dim, config.hidden, config.channels, spec.shape,
            self.head.num_params, config.activation, cond_dim,
        )

    # -- inputs --------------------------------------------------------------------------
    def _cond(self, y: torch.Tensor | int | None, n: int) -> torch.Tensor | None:
        """Labels (n,) (or one label for all n) -> one-hot (n, C); None if unconditional."""
        if not self.num_classes:
            return None
        if y is None:
            raise UserError(
                f"this vae is conditional (conditional=true): pass labels 0..{self.num_classes - 1} "
                f"of shape ({n},) as y= (cond= for sample)."
            )
        y = torch.as_tensor(y, device=self.device).reshape(-1)
        if y.numel() == 1 and n != 1:
            y = y.expand(n)
        return one_hot(y, self.num_classes, n, self.device)

    def _encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        # Discrete data holds integer levels 0..L-1; the encoder sees them scaled to [0, 1]
        # (the head still scores the integers).
        if self.spec.kind == "discrete" and self.spec.num_levels:
            return x / (self.spec.num_levels - 1)
        return x

    def posterior(self, x: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z | x): x (N, *shape), one-hot c (N, C) or None -> mu (N, L), logvar (N, L)."""
        mu, logvar = self.encoder(self._encoder_input(x), c).chunk(2, dim=1)
        return mu, logvar

    # -- 3. the loss -----------------------------------------------------------------------
    def _elbo_terms(
        self, x: torch.Tensor, c: torch.Tensor | None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One-sample reconstruction NLL and analytic KL per example: both (N,)."""
        mu, logvar = self.posterior(x, c)
        # Reparameterisation (Kingma & Welling 2014, eq. 4): z = mu + sigma * eps, eps ~ N(0, I).
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps  # (N, L)
        recon = self.head.nll(self.decoder(z, c), x)  # -log p(x | z), (N,)
        return recon, gaussian_kl(mu, logvar)

    def loss(self, batch: Batch, phase: str = "main") -> LossOutput:
        """-ELBO with the KL weighted by beta, averaged over the batch; logs elbo, recon, kl (nats)."""
        c = self._cond(batch.y, len(batch.x))
        recon, kl = self._elbo_terms(batch.x, c)
        loss = (recon + self.config.beta * kl).mean()
        recon_mean, kl_mean = recon.mean().detach(), kl.mean().detach()
        return LossOutput(loss, {"elbo": -(recon_mean + kl_mean), "recon": recon_mean, "kl": kl_mean})

    def elbo(
        self, x: torch.Tensor, y: torch.Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The evidence lower bound per example (N,) in nats: analytic KL, one z sample, beta = 1."""
        recon, kl = self._elbo_terms(x, self._cond(y, len(x)), generator)
        return -(recon + kl)

    # -- 4. sampling, encoding, decoding ---------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        cond: torch.Tensor | None = None,
        mean: bool = False,
    ) -> torch.Tensor:
        """``n`` examples (n, *shape): z ~ N(0, I), then x ~ p(x | z) (or its mean if ``mean``).

        ``cond``: labels (n,) for a conditional model (required there). ``generator`` must be
        on the model's device.
        """
        c = self._cond(cond, n)
        p = next(self.parameters())
        z = torch.randn((n, self.config.latent_dim), generator=generator, device=p.device, dtype=p.dtype)
        params = self.decoder(z, c)  # (n, P, *shape)
        return self.head.mean(params) if mean else self.head.sample(params, generator)

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The posterior mean: x (N, *shape) -> mu (N, L)."""
        return self.posterior(x, self._cond(y, len(x)))[0]

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The mean of p(x | z): z (N, L) -> (N, *shape)."""
        return self.head.mean(self.decoder(z, self._cond(y, len(z))))

    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """decode(encode(x)): (N, *shape) -> (N, *shape)."""
        return self.decode(self.encode(x, y), y)

    def reconstruction_nll(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """-log p(x | z = posterior mean of x) per example, (N,) nats."""
        c = self._cond(y, len(x))
        return self.head.nll(self.decoder(self.posterior(x, c)[0], c), x)

    @torch.no_grad()
    def interpolate(
        self, x1: torch.Tensor, x2: torch.Tensor, steps: int = 8, y: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        """Decoded means along the straight line between the posterior means of x1 and x2.

        x1, x2: one example each, (*shape) or (1, *shape); ``y``: one label for both (conditional
        models). Returns (steps, *shape), the first row decoding x1's code and the last x2's.
        """
        x = torch.cat([x1.reshape(1, *self.spec.shape), x2.reshape(1, *self.spec.shape)])  # (2, *shape)
        mu = self.encode(x, y)  # (2, L)
        t = torch.linspace(0.0, 1.0, steps, device=mu.device, dtype=mu.dtype)[:, None]  # (steps, 1)
        return self.decode((1 - t) * mu[0] + t * mu[1], y)

    # -- 5. the likelihood bound -----------------------------------------------------------
    @property
    def log_prob_note(self) -> str:
        """What ``log_prob`` is: the IWAE bound, and whether the head makes it a normalised likelihood."""
        if not self.log_prob_normalised:
            return (
                f"IWAE bound (k={self.config.iwae_k}) with a {type(self.head).__name__} decoder on {self.spec.kind} "
                "data: not a normalised likelihood; compare with other models only via samples"
            )
        return f"IWAE bound, k={self.config.iwae_k} importance samples (a lower bound on log p(x))"

    @property
    def log_prob_normalised(self) -> bool:
        """False when p(x | z) is not a normalised probability or density of the data (the head's
        ``exact``: a Bernoulli decoder on [0, 1]-valued data, Loaiza-Ganem & Cunningham 2019);
        the bound is then a loss, and the evaluator reports no bits/dim for it."""
        return bool(self.head.exact)

    @property
    def log_prob_discrete(self) -> bool:
        """True when p(x | z), hence the bound, is a probability of discrete values, not a density."""
        return self.head.discrete

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
        y: torch.Tensor | None = None,
        k: int | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The IWAE bound per example (N,) in nats, with ``k`` (default ``iwae_k``) samples.

        Burda et al. 2016, eq. 8: log p(x) >= E[log (1/k) sum_i p(x, z_i) / q(z_i | x)],
        z_i ~ q(z | x). k = 1 is the ELBO's expectation; the bound rises with k towards log p(x).
        Always the beta = 1 model: beta changes the training objective, not the density.
        """
        k = k or self.config.iwae_k
        n = len(x)
        c = self._cond(y, n)
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
            log_px_z = -self.head.nll(self.decoder(z.reshape(m * n, -1), c_rep), x_rep).reshape(m, n)
            log_w.append(log_px_z + log_normal_std(z) - log_normal_diag(z, mu, logvar))  # (m, N)
        # log (1/k) sum_i w_i, stably.
        return torch.logsumexp(torch.cat(log_w), dim=0) - math.log(k)

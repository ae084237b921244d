"""The VAE family: the KL and densities match their closed forms, the IWAE bound behaves as
Burda et al. 2016 prove (k=1 is the ELBO, it rises with k, it approaches log p(x) from
below), beta weights the KL, the CVAE uses its labels, and training raises the ELBO."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from helpers import fit_one_phase

from deepgen.data.dataset import Batch, DataSpec
from deepgen.errors import UserError
from deepgen.models.base import (
    Decoder,
    Encoder,
    HasELBO,
    Interpolator,
    LogProb,
    ReconstructionNLL,
    Reconstructor,
)
from deepgen.models.vae import VAE, VAEConfig, gaussian_kl, log_normal_diag, log_normal_std
from deepgen.registry import MODELS

# -- helpers -------------------------------------------------------------------------------


def prototype_data(n: int, d: int, protos: int = 4, flip: float = 0.05, seed: int = 0):
    """Binary vectors near ``protos`` random prototypes: x (n, d), labels (n,)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.bernoulli(torch.full((protos, d), 0.5), generator=g)
    y = torch.randint(protos, (n,), generator=g)
    noise = torch.bernoulli(torch.full((n, d), flip), generator=g)
    return (centres[y] + noise) % 2, y


def train(model: VAE, x: torch.Tensor, y: torch.Tensor | None = None, steps: int = 200, batch: int = 64, seed: int = 0) -> None:
    """Plain Adam on the model's one phase at its own lr."""
    fit_one_phase(model, x, y, steps=steps, batch=batch, seed=seed)


def small_vae(spec: DataSpec, **kw) -> VAE:
    torch.manual_seed(kw.pop("seed", 0))
    return VAE(VAEConfig(**{"hidden": (64, 32), "latent_dim": 4, **kw}), spec)


BINARY16 = DataSpec(shape=(16,), kind="binary", num_classes=4, name="protos16")

# -- config and registration -----------------------------------------------------------


def test_registered_with_a_one_line_description():
    assert MODELS.get("vae") is VAE
    assert VAE.config_class is VAEConfig
    assert "variational autoencoder" in VAE.describe().lower()
    assert not {"epochs", "batch_size", "seed", "device"} & set(VAEConfig.field_names())


@pytest.mark.parametrize(
    "bad",
    [
        {"latent_dim": 0},
        {"beta": -1.0},
        {"sigma": 0.0},
        {"components": 0},
        {"iwae_k": 0},
        {"iwae_chunk": -1},
        {"likelihood": "poisson"},
        {"activation": "swishy"},
        {"hidden": (64, 0)},
        {"channels": ()},
        {"lr": 0.0},
        {"network": "resnet"},
    ],
)
def test_config_rejects_bad_values(bad):
    with pytest.raises(UserError):
        VAEConfig(**bad)


def test_config_overrides_from_strings():
    cfg = VAEConfig().with_overrides({"latent_dim": "32", "iwae_k": "5000", "beta": "4", "hidden": "256,128"})
    assert (cfg.latent_dim, cfg.iwae_k, cfg.beta, cfg.hidden) == (32, 5000, 4.0, (256, 128))
    assert VAEConfig.from_dict(cfg.to_dict()) == cfg


def test_construction_errors():
    with pytest.raises(UserError, match="conditional"):
        VAE(VAEConfig(conditional=True), DataSpec(shape=(4,), kind="binary"))
    with pytest.raises(UserError):
        VAE(VAEConfig(), DataSpec(shape=(4,), kind="tokens", vocab_size=10))
    with pytest.raises(UserError):  # a conv net needs images
        VAE(VAEConfig(network="conv"), DataSpec(shape=(4,), kind="real"))
    with pytest.raises(UserError):  # a head that does not fit the data's kind
        VAE(VAEConfig(likelihood="bernoulli"), DataSpec(shape=(4,), kind="real"))


# -- closed forms ----------------------------------------------------------------------------


def test_analytic_kl_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(3, 4, generator=g, dtype=torch.float64) * 1.5
    logvar = torch.randn(3, 4, generator=g, dtype=torch.float64)
    n = 200_000
    eps = torch.randn(n, 3, 4, generator=g, dtype=torch.float64)
    z = mu + torch.exp(0.5 * logvar) * eps  # (n, 3, 4)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(0.0, 1.0)
    log_ratio = (q.log_prob(z) - p.log_prob(z)).sum(-1)  # (n, 3)
    mc, se = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(n)
    kl = gaussian_kl(mu, logvar)
    assert (kl - mc).abs().max() < 4 * se.max() + 1e-3, (kl, mc, se)
    # and the closed form agrees with torch.distributions' own
    torch.testing.assert_close(kl, torch.distributions.kl_divergence(q, p).sum(-1))
    assert (gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 3)) == 0).all()


def test_log_densities_match_torch_distributions():
    g = torch.Generator().manual_seed(1)
    z, mu, logvar = (torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(3))
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    torch.testing.assert_close(log_normal_diag(z, mu, logvar), q.log_prob(z).sum(-1))
    torch.testing.assert_close(log_normal_std(z), torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1))


# -- the loss ---------------------------------------------------------------------------------


def test_loss_is_negative_elbo_with_beta_weighted_kl():
    x, _ = prototype_data(32, 16)
    m1 = small_vae(BINARY16)
    m3 = small_vae(BINARY16, beta=3.0)
    m3.load_state_dict(m1.state_dict())
    torch.manual_seed(7)
    out1 = m1.loss(Batch(x), "main")
    torch.manual_seed(7)
    out3 = m3.loss(Batch(x), "main")
    assert set(out1.logs) == {"elbo", "recon", "kl"}
    for v in out1.logs.values():
        assert v.dim() == 0 and not v.requires_grad
    recon, kl = out1.logs["recon"], out1.logs["kl"]
    assert kl > 0
    torch.testing.assert_close(out1.loss.detach(), recon + kl)
    torch.testing.assert_close(out1.logs["elbo"], -(recon + kl))
    # beta multiplies only the KL term; the logged ELBO is the beta = 1 bound either way
    torch.testing.assert_close(out3.loss.detach(), recon + 3.0 * kl)
    torch.testing.assert_close(out3.loss.detach() - out1.loss.detach(), 2.0 * kl)
    torch.testing.assert_close(out3.logs["elbo"], out1.logs["elbo"])
    out1.loss.backward()
    assert all(p.grad is not None for p in m1.parameters())


def test_beta_changes_training_not_log_prob():
    x, _ = prototype_data(8, 16)
    m1 = small_vae(BINARY16)
    m4 = small_vae(BINARY16, beta=4.0)
    m4.load_state_dict(m1.state_dict())
    lp1 = m1.log_prob(x, k=20, generator=torch.Generator().manual_seed(0))
    lp4 = m4.log_prob(x, k=20, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(lp1, lp4)


# -- the IWAE bound ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained16() -> tuple[VAE, torch.Tensor]:
    """A briefly trained VAE on 16-bit prototype data, and held-out examples."""
    x, _ = prototype_data(1024 + 512, 16, seed=0)
    model = small_vae(BINARY16, latent_dim=2, lr=3e-3)
    train(model, x[:1024], steps=150)
    return model, x[1024:]


def test_iwae_with_one_sample_averages_to_the_elbo(trained16):
    model, x = trained16
    reps = 2000
    xr = x[:4].repeat(reps, 1)  # (reps*4, 16), example i at rows i, i+4, ...
    iwae1 = model.log_prob(xr, k=1, generator=torch.Generator().manual_seed(0)).reshape(reps, 4)
    with torch.no_grad():
        elbo = model.elbo(xr, generator=torch.Generator().manual_seed(1)).reshape(reps, 4)
    se = torch.sqrt(iwae1.var(0) / reps + elbo.var(0) / reps)
    assert ((iwae1.mean(0) - elbo.mean(0)).abs() < 5 * se + 1e-3).all(), (iwae1.mean(0), elbo.mean(0), se)


def test_iwae_bound_rises_with_k_and_sits_above_the_elbo(trained16):
    model, x = trained16
    means = {}
    for k in (1, 5, 50):
        vals = [model.log_prob(x, k=k, generator=torch.Generator().manual_seed(s)).mean() for s in range(10)]
        means[k] = torch.stack(vals).mean().item()
    with torch.no_grad():
        elbo = torch.stack([model.elbo(x, generator=torch.Generator().manual_seed(s)).mean() for s in range(10)]).mean().item()
    assert means[1] < means[5] < means[50], means
    assert means[50] > elbo, (means, elbo)
    assert means[50] - means[1] > 0.05, means  # a real rise, not noise


def exact_log_px(model: VAE, xs: torch.Tensor) -> torch.Tensor:
    """log p(x) = log int p(x | z) N(z; 0, 1) dz by the trapezoid rule, for latent_dim = 1: (M,)."""
    z = torch.linspace(-12.0, 12.0, 8001, dtype=torch.float64)[:, None]  # (G, 1)
    w = torch.full((len(z),), z[1, 0] - z[0, 0], dtype=torch.float64)
    w[0] = w[-1] = w[0] / 2  # trapezoid weights
    with torch.no_grad():
        params = model.decoder(z)  # (G, 1, D)
        log_px_z = torch.stack([-model.head.nll(params, x.expand(len(z), -1)) for x in xs])  # (M, G)
    return torch.logsumexp(log_px_z + log_normal_std(z) + torch.log(w), dim=1)


def test_iwae_approaches_the_exact_log_likelihood_from_below():
    d = 3
    spec = DataSpec(shape=(d,), kind="binary")
    torch.manual_seed(0)
    model = VAE(VAEConfig(hidden=(32,), latent_dim=1, lr=3e-3, iwae_k=2000), spec).double()
    # A correlated distribution over {0,1}^3 that a 1-d latent can partly explain.
    probs = torch.tensor([0.30, 0.02, 0.05, 0.08, 0.08, 0.05, 0.02, 0.40], dtype=torch.float64)
    support = torch.tensor(list(itertools.product([0.0, 1.0], repeat=d)), dtype=torch.float64)  # (8, 3)
    data = support[torch.multinomial(probs, 2048, replacement=True, generator=torch.Generator().manual_seed(0))]
    train(model, data, steps=300)

    log_px = exact_log_px(model, support)  # (8,)
    assert torch.exp(log_px).sum().item() == pytest.approx(1.0, abs=1e-6)  # a normalised model

    reps = 10
    g = torch.Generator().manual_seed(0)
    iwae = model.log_prob(support.repeat(reps, 1), generator=g).reshape(reps, 8)  # k = iwae_k = 2000
    mean, se = iwae.mean(0), iwae.std(0) / math.sqrt(reps)
    gap = log_px - mean
    assert (gap > -4 * se - 1e-4).all(), (log_px, mean, se)  # below log p(x), up to noise
    assert (gap < 0.01).all(), gap  # and close to it with k = 2000
    assert gap.mean() > -1e-3, gap
    # The ELBO (= the k = 1 bound in expectation) sits clearly further below.
    with torch.no_grad():
        elbo = torch.stack([model.elbo(support, generator=g) for _ in range(200)]).mean(0)
    iwae1 = model.log_prob(support.repeat(200, 1), k=1, generator=g).reshape(200, 8).mean(0)
    assert (log_px - elbo).mean() > gap.mean() + 0.01, (log_px - elbo, gap)
    assert (log_px - iwae1).mean() > gap.mean() + 0.01, (log_px - iwae1, gap)


def test_log_prob_is_batched_and_chunked():
    x, _ = prototype_data(10, 16)
    model = small_vae(BINARY16)
    calls = []
    model.decoder.register_forward_hook(lambda mod, inp, out: calls.append(len(inp[0])))
    lp = model.log_prob(x, k=50)
    assert calls == [500]  # all 50 samples for the 10 examples in one decoder call
    calls.clear()
    chunked = VAE(model.config.replace(iwae_chunk=16), BINARY16)
    chunked.load_state_dict(model.state_dict())
    chunked.decoder.register_forward_hook(lambda mod, inp, out: calls.append(len(inp[0])))
    lp_chunked = chunked.log_prob(x, k=50)
    assert calls == [160, 160, 160, 20]
    assert lp.shape == lp_chunked.shape == (10,)
    assert (lp - lp_chunked).abs().max() < 1.0  # the same bound, other random draws
    assert not lp.requires_grad


def test_iwae_chunk_sizes_by_the_widest_tensor_of_a_call():
    """The automatic chunk keeps one call's widest tensor near 2^24 elements: the head's
    outputs for a small model, an IAF's wide MADE layer when that is wider."""
    from deepgen.models.vae import IWAE_ELEMENTS_PER_CALL

    model = small_vae(BINARY16)
    assert model._iwae_chunk(100, 10**6) == IWAE_ELEMENTS_PER_CALL // (100 * max(16, *model.config.hidden))
    wide = VAE(model.config.replace(posterior="iaf", iaf_hidden=(4096,)), BINARY16)
    assert wide._iwae_chunk(100, 10**6) == IWAE_ELEMENTS_PER_CALL // (100 * 4096)


def test_log_prob_note_and_capabilities():
    model = small_vae(BINARY16, iwae_k=5000)
    assert model.likelihood_info().note == "IWAE bound, k=5000 importance samples (a lower bound on log p(x))"
    for proto in (LogProb, HasELBO, Encoder, Decoder, Reconstructor, ReconstructionNLL, Interpolator):
        assert isinstance(model, proto)
    assert set(model.capabilities()) == {
        "log_prob", "elbo", "encode", "decode", "reconstruct", "reconstruction_nll", "interpolate"
    }
    # A probability of binary pixels; a Gaussian head gives a density.
    assert model.likelihood_info().discrete
    assert not small_vae(DataSpec(shape=(4,), kind="continuous")).likelihood_info().discrete
    assert small_vae(DataSpec(shape=(4,), kind="continuous", num_levels=256), likelihood="categorical").likelihood_info().discrete


def test_reconstruction_nll_scores_x_at_its_posterior_mean():
    x, _ = prototype_data(6, 16)
    model = small_vae(BINARY16)
    expected = model.head.nll(model.decoder(model.encode(x)), x)
    torch.testing.assert_close(model.reconstruction_nll(x), expected)
    assert model.reconstruction_nll(x).shape == (6,)


# -- the conditional VAE ----------------------------------------------------------------------


def test_conditional_vae_uses_its_labels():
    x, y = prototype_data(512, 16, seed=2)
    model = small_vae(BINARY16, conditional=True, lr=3e-3)
    train(model, x, y, steps=100)
    g = torch.Generator().manual_seed(0)
    a = model.sample(64, generator=g, cond=torch.zeros(64, dtype=torch.long), mean=True)
    g = torch.Generator().manual_seed(0)
    b = model.sample(64, generator=g, cond=torch.full((64,), 3, dtype=torch.long), mean=True)
    assert (a - b).abs().mean() > 0.1  # the same z, another label, another output
    assert model.encode(x[:5], cond=y[:5]).shape == (5, 4)
    assert model.decode(torch.zeros(5, 4), cond=y[:5]).shape == (5, 16)
    assert model.reconstruct(x[:5], cond=y[:5]).shape == (5, 16)
    assert model.interpolate(x[0], x[1], 6, cond=2).shape == (6, 16)
    assert model.log_prob(x[:5], cond=y[:5], k=4).shape == (5,)
    for call in (
        lambda: model.sample(4),
        lambda: model.loss(Batch(x[:4]), "main"),
        lambda: model.encode(x[:4]),
        lambda: model.elbo(x[:4]),
        lambda: model.log_prob(x[:4], k=2),
    ):
        with pytest.raises(UserError, match="labels"):
            call()


# -- training -------------------------------------------------------------------------------


def test_training_raises_the_elbo_substantially():
    spec = DataSpec(shape=(1, 8, 8), kind="binary")
    x, _ = prototype_data(512, 64, seed=3)
    x = x.reshape(-1, 1, 8, 8)
    model = small_vae(spec, hidden=(128, 64), latent_dim=8, lr=2e-3)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        before = model.elbo(x, generator=g).mean().item()
    train(model, x, steps=300)
    with torch.no_grad():
        after = model.elbo(x, generator=g).mean().item()
    # Untrained: about -64 log 2 = -44 nats. Four prototypes with 5% flips: about -15.
    assert after > before + 20, (before, after)


# -- shapes and kinds -------------------------------------------------------------------------

CASES = [
    ("mlp", DataSpec(shape=(1, 8, 8), kind="binary"), {}),
    ("conv", DataSpec(shape=(1, 8, 8), kind="binary"), {}),
    ("mlp", DataSpec(shape=(3, 6, 5), kind="continuous", num_levels=256), {}),
    ("conv", DataSpec(shape=(3, 6, 5), kind="continuous", num_levels=256), {}),
    ("conv", DataSpec(shape=(3, 6, 5), kind="continuous", num_levels=256), {"likelihood": "logistic-mixture", "components": 2}),
    ("mlp", DataSpec(shape=(1, 4, 4), kind="discrete", num_levels=17), {}),
    ("conv", DataSpec(shape=(1, 4, 4), kind="discrete", num_levels=17), {"likelihood": "logistic-mixture"}),
    ("mlp", DataSpec(shape=(5,), kind="real"), {}),
    ("mlp", DataSpec(shape=(2,), kind="real"), {"likelihood": "gaussian"}),
]


def assert_kind(x: torch.Tensor, spec: DataSpec) -> None:
    assert torch.isfinite(x).all()
    if spec.kind == "binary":
        assert set(x.unique().tolist()) <= {0.0, 1.0}
    if spec.kind == "continuous":
        assert x.min() >= 0 and x.max() <= 1
    if spec.kind == "discrete":
        assert (x == x.round()).all() and x.min() >= 0 and x.max() <= spec.num_levels - 1


def case_id(c) -> str:
    if isinstance(c, DataSpec):
        return c.kind
    return c.get("likelihood", "auto") if isinstance(c, dict) else str(c)


@pytest.mark.parametrize("network,spec,extra", CASES, ids=case_id)
def test_shapes_and_kinds(network, spec, extra):
    model = small_vae(spec, network=network, channels=(8, 16), latent_dim=3, **extra)
    n, shape = 6, spec.shape
    g = torch.Generator().manual_seed(0)
    x = model.sample(n, generator=g)
    assert x.shape == (n, *shape)
    assert_kind(x, spec)
    assert model.sample(n, generator=g, mean=True).shape == (n, *shape)
    # the same generator state gives the same samples
    again = model.sample(n, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, model.sample(n, generator=torch.Generator().manual_seed(0)))

    z = model.encode(x)
    assert z.shape == (n, 3)
    assert model.decode(z).shape == (n, *shape)
    assert model.reconstruct(x).shape == (n, *shape)
    path = model.interpolate(x[0], x[1:2], steps=5)
    assert path.shape == (5, *shape)
    torch.testing.assert_close(path[0], model.decode(z[:1])[0])
    torch.testing.assert_close(path[-1], model.decode(z[1:2])[0])

    out = model.loss(Batch(x), "main")
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    lp = model.log_prob(x, k=8)
    el = model.elbo(x)
    assert lp.shape == el.shape == (n,)
    assert torch.isfinite(lp).all() and torch.isfinite(el).all()

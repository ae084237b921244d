"""The adversarial autoencoder: three phases that touch only their own networks, the shared
GAN losses, the priors, training that matches the codes to the prior, and the autoencoder
capabilities."""

from __future__ import annotations

import math

import pytest
import torch

import deepgen
from deepgen.data.dataset import Batch, DataSpec
from deepgen.errors import UserError
from deepgen.models import adversarial_ae as aae
from deepgen.models import create_model, gan
from deepgen.models.base import Decoder, Encoder, Interpolator, Reconstructor
from deepgen.registry import MODELS
from deepgen.training import TrainConfig, Trainer, seed_all
from deepgen.training.trainer import build_optimizer

IMAGE = DataSpec(shape=(1, 8, 8), kind="continuous", num_levels=17, name="img")
SMALL = {"hidden": (32, 16), "channels": (4, 8), "latent_dim": 2, "d_hidden": (16, 16)}


def build(spec: DataSpec = IMAGE, seed: int = 0, **overrides) -> aae.AdversarialAutoencoder:
    torch.manual_seed(seed)
    return aae.AdversarialAutoencoder(aae.AAEConfig(**{**SMALL, **overrides}), spec)


def images(n: int = 16, seed: int = 0) -> Batch:
    return Batch(torch.rand(n, *IMAGE.shape, generator=torch.Generator().manual_seed(seed)))


def ids(params) -> set[int]:
    return {id(p) for p in params}


def test_registered_with_three_phases_on_their_own_networks():
    assert MODELS.get("aae") is aae.AdversarialAutoencoder
    model = build()
    rec, dis, reg = model.phases()
    assert [rec.name, dis.name, reg.name] == ["reconstruction", "discriminator", "regularization"]
    assert ids(rec.parameters) == ids(model.encoder.parameters()) | ids(model.decoder.parameters())
    assert ids(dis.parameters) == ids(model.discriminator.parameters())
    assert ids(reg.parameters) == ids(model.encoder.parameters())
    assert model.oscillation_keys == ("discriminator/loss", "regularization/loss")


@pytest.mark.parametrize("network", ["mlp", "conv"])
def test_each_phase_updates_only_its_own_parameters(network):
    """One optimizer step per phase, as the trainer takes it: only that phase's networks move,
    and its loss puts no gradient on the others (detached codes, a frozen discriminator)."""
    model = build(network=network)
    b = images()
    for phase in model.phases():
        opt = build_optimizer(phase.optimizer, phase.parameters, torch.device("cpu"))
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
        model.loss(b, phase.name).loss.backward()
        mine = ids(phase.parameters)
        assert all((p.grad is not None) == (id(p) in mine) for p in model.parameters()), phase.name
        opt.step()
        moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        expected = {n for n, p in model.named_parameters() if id(p) in mine}
        assert moved == expected, phase.name


def test_adversarial_losses_are_the_gan_familys():
    assert aae.discriminator_loss is gan.discriminator_loss and aae.generator_loss is gan.generator_loss
    model = build()
    b = images()
    torch.manual_seed(4)
    out = model.loss(b, "discriminator")
    torch.manual_seed(4)
    prior = model.prior_sample(len(b.x))
    expected = gan.discriminator_loss(model.discriminator(prior)[0], model.discriminator(model.encode(b.x))[0])
    torch.testing.assert_close(out.loss, expected)
    out = model.loss(b, "regularization")
    torch.testing.assert_close(out.loss, gan.generator_loss(model.discriminator(model.encode(b.x))[0], "non-saturating"))


def test_priors():
    g = torch.Generator().manual_seed(0)
    z = aae.sample_prior("gaussian", 20000, 3, generator=g)
    assert z.shape == (20000, 3)
    torch.testing.assert_close(z.mean(0), torch.zeros(3), atol=0.03, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(3), atol=0.03, rtol=0)
    z = aae.sample_prior("mixture", 20000, 2, generator=g)
    means = aae.mixture_means()
    assert means.shape == (10, 2)
    torch.testing.assert_close(means.norm(dim=1), torch.full((10,), aae.MIXTURE_RADIUS))
    nearest = torch.cdist(z, means).argmin(dim=1)
    counts = torch.bincount(nearest, minlength=10).float() / len(z)
    assert counts.min() > 0.08  # every component is drawn, about equally
    spread = (z - means[nearest]).std(0)
    torch.testing.assert_close(spread, torch.full((2,), aae.MIXTURE_STD), atol=0.03, rtol=0)
    with pytest.raises(UserError, match="latent_dim=2"):
        aae.AAEConfig(prior="mixture", latent_dim=8)


def _gaussian_kl_to_prior(z: torch.Tensor) -> float:
    """KL(N(mean, cov of the codes z (N, L)) || N(0, I)), the closed form."""
    mu, cov = z.mean(0), torch.cov(z.T)
    return 0.5 * (torch.trace(cov) + mu @ mu - len(mu) - torch.logdet(cov)).item()


def test_training_matches_the_codes_to_the_prior():
    """Through the trainer on digits: the codes start tiny (std ~0.02, far from N(0, I)) and
    end with the prior's moments (seeds 0-5: KL 0.01-0.15 after 600 steps; a plain
    autoencoder's codes, the reconstruction phase alone: 0.9-1.3)."""
    ds = deepgen.load_dataset("digits")
    x = ds.convert(ds.train.x[:1000])
    seed_all(0)
    model = create_model("aae", ds, latent_dim=2, hidden=(64, 32), d_hidden=(64, 64))
    with torch.no_grad():
        before = _gaussian_kl_to_prior(model.encode(x))
    config = TrainConfig(epochs=1000, max_steps=600, batch_size=128, device="cpu", progress=False, tensorboard=False, log_every=50)
    Trainer(model, ds, config).fit()
    with torch.no_grad():
        after = _gaussian_kl_to_prior(model.encode(x))
    assert before > 3 and after < 0.3, (before, after)


def test_capabilities_and_sampling():
    model = build().eval()
    for proto in (Encoder, Decoder, Reconstructor, Interpolator):
        assert isinstance(model, proto)
    x = images(2).x
    path = model.interpolate(x[0], x[1], steps=5)
    assert path.shape == (5, *IMAGE.shape)
    with torch.no_grad():
        torch.testing.assert_close(path[0], model.reconstruct(x[:1])[0])
        torch.testing.assert_close(path[-1], model.reconstruct(x[1:])[0])
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    s = model.sample(6, generator=g())
    assert s.shape == (6, *IMAGE.shape) and torch.equal(s, model.sample(6, generator=g()))
    # sample decodes prior draws: the mean sample is decode(z) for z from the same generator.
    with torch.no_grad():
        torch.testing.assert_close(model.sample(6, generator=g(), mean=True), model.decode(model.prior_sample(6, g())))
    assert model.reconstruction_nll(x).shape == (2,)
    assert all(math.isfinite(v) for v in model.reconstruction_nll(x).tolist())

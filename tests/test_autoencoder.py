"""The autoencoder family: the regularisers against their formulas, the corruptions'
statistics, the stacked schedule, training on low-rank data, and the capabilities."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from deepgen.data.dataset import Batch, DataSpec
from deepgen.errors import UserError
from deepgen.models import autoencoder as ae
from deepgen.models.base import Decoder, Encoder, Interpolator, Reconstructor
from deepgen.registry import MODELS

IMAGE = DataSpec(shape=(1, 9, 7), kind="continuous", num_levels=17, name="img")  # odd sizes on purpose
BINARY = DataSpec(shape=(1, 8, 8), kind="binary", name="bin")
REAL = DataSpec(shape=(2,), kind="real", name="points")

SMALL = {"hidden": (24, 12), "channels": (4, 8), "latent_dim": 3}

FAMILY = {
    "ae": (ae.Autoencoder, ae.AEConfig, {}),
    "sparse-ae": (ae.SparseAutoencoder, ae.SparseAEConfig, {}),
    "sparse-ae-kl": (ae.SparseAutoencoder, ae.SparseAEConfig, {"sparsity": "kl"}),
    "denoising-ae": (ae.DenoisingAutoencoder, ae.DenoisingAEConfig, {"corruption": "salt-pepper"}),
    "contractive-ae": (ae.ContractiveAutoencoder, ae.ContractiveAEConfig, {}),
    "stacked-ae": (ae.StackedAutoencoder, ae.StackedAEConfig, {}),
}


def build(key: str, spec: DataSpec, **overrides) -> ae.Autoencoder:
    cls, cfg_cls, extra = FAMILY[key]
    return cls(cfg_cls(**{**SMALL, **extra, **overrides}), spec)


def data(spec: DataSpec, n: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *spec.shape, generator=g)
    if spec.kind == "binary":
        return x.round()
    if spec.kind == "real":
        return torch.randn(n, *spec.shape, generator=g) * 3
    return x


def test_every_model_is_registered_under_its_name():
    for name, cls in [
        ("ae", ae.Autoencoder),
        ("sparse-ae", ae.SparseAutoencoder),
        ("denoising-ae", ae.DenoisingAutoencoder),
        ("contractive-ae", ae.ContractiveAutoencoder),
        ("stacked-ae", ae.StackedAutoencoder),
    ]:
        assert MODELS.get(name) is cls
        assert cls.registered_name == name


# -- contractive: the Jacobian penalty is exact ---------------------------------------


def _randomise(module: nn.Module, std: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)


@pytest.mark.parametrize(("network", "act"), [("mlp", "tanh"), ("mlp", "relu"), ("conv", "elu")])
def test_contractive_penalty_is_the_jacobian_frobenius_norm(network, act):
    torch.manual_seed(0)
    model = build("contractive-ae", IMAGE, network=network, activation=act).double()
    _randomise(model.encoder, 0.3, seed=1)
    x = data(IMAGE, n=4).double()
    got = model.contractive_penalty(x)  # (N,)
    assert got.shape == (4,)
    for i in range(len(x)):
        jac = torch.autograd.functional.jacobian(lambda xi: model.encode(xi[None])[0], x[i])  # (K, *shape)
        assert jac.shape == (3, *IMAGE.shape)
        want = jac.pow(2).sum()
        assert want > 1e-3  # non-trivial
        torch.testing.assert_close(got[i], want, rtol=1e-5, atol=0)


def test_contractive_loss_adds_weighted_mean_penalty_and_differentiates_it():
    torch.manual_seed(0)
    model = build("contractive-ae", IMAGE, contraction=0.7).double()
    _randomise(model.encoder, 0.3, seed=2)
    x = data(IMAGE).double()
    out = model.loss(Batch(x), "main")
    want = 0.7 * model.contractive_penalty(x).mean()
    torch.testing.assert_close(out.logs["penalty"], want)
    torch.testing.assert_close(out.loss, out.logs["recon"] + want)
    # The penalty alone reaches every encoder weight (create_graph=True); biases do not
    # move the Jacobian of a ReLU network almost everywhere.
    model.zero_grad()
    model.penalty(*_input_and_code(model, x)).backward()
    weights = [p for p in model.encoder.parameters() if p.ndim >= 2]
    assert weights and all(p.grad is not None and p.grad.abs().sum() > 0 for p in weights)


def _input_and_code(model: ae.Autoencoder, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().requires_grad_(True)
    return x, model.encode(x)


# -- sparse: L1 and the KL sparsity target ------------------------------------------------


def test_kl_sparsity_matches_closed_form_on_a_hand_made_matrix():
    acts = torch.tensor([[0.1, 0.5, 0.05], [0.3, 0.1, 0.05]])  # rho_hat = (0.2, 0.3, 0.05)
    rho = 0.05

    def kl(r, q):
        return r * math.log(r / q) + (1 - r) * math.log((1 - r) / (1 - q))

    want = kl(rho, 0.2) + kl(rho, 0.3) + kl(rho, 0.05)
    assert ae.kl_sparsity(acts, rho).item() == pytest.approx(want, rel=1e-6)
    assert ae.kl_sparsity(torch.full((4, 5), rho), rho).item() == pytest.approx(0.0, abs=1e-6)


def test_sparse_losses_are_weighted_penalties_on_the_code():
    x = data(IMAGE)
    torch.manual_seed(0)
    kl_model = build("sparse-ae-kl", IMAGE, rho=0.1, beta=2.5)
    code = kl_model.encode(x)
    assert torch.all((code > 0) & (code < 1))  # sigmoid units
    torch.testing.assert_close(kl_model.encode(x), torch.sigmoid(kl_model.encoder(x)))
    out = kl_model.loss(Batch(x), "main")
    torch.testing.assert_close(out.logs["penalty"], 2.5 * ae.kl_sparsity(code, 0.1))

    l1_model = build("sparse-ae", IMAGE, l1_weight=0.3)
    code = l1_model.encode(x)
    torch.testing.assert_close(l1_model.encode(x), l1_model.encoder(x))  # linear code
    out = l1_model.loss(Batch(x), "main")
    torch.testing.assert_close(out.logs["penalty"], 0.3 * code.abs().sum(1).mean())
    torch.testing.assert_close(out.loss, out.logs["recon"] + out.logs["penalty"])


# -- denoising: corruptions and the clean target -----------------------------------------


def test_masking_zeroes_the_expected_fraction():
    x = torch.rand(200, 500) * 0.9 + 0.1  # no zeros before masking
    g = torch.Generator().manual_seed(0)
    y = ae.masking_corruption(x, 0.3, torch.tensor(0.0), torch.tensor(1.0), generator=g)
    masked = y == 0
    assert masked.float().mean().item() == pytest.approx(0.3, abs=0.01)
    assert torch.equal(y[~masked], x[~masked])


def test_salt_and_pepper_sets_the_expected_fraction_to_zero_or_one():
    x = torch.rand(200, 500) * 0.8 + 0.1  # strictly inside (0, 1)
    g = torch.Generator().manual_seed(0)
    y = ae.salt_pepper_corruption(x, 0.2, torch.tensor(0.0), torch.tensor(1.0), generator=g)
    changed = y != x
    assert changed.float().mean().item() == pytest.approx(0.2, abs=0.01)
    assert set(y[changed].unique().tolist()) == {0.0, 1.0}
    assert (y[changed] == 1).float().mean().item() == pytest.approx(0.5, abs=0.02)


def test_gaussian_corruption_has_the_requested_std():
    x = torch.rand(200, 500)
    g = torch.Generator().manual_seed(0)
    d = ae.gaussian_corruption(x, 0.4, torch.tensor(0.0), torch.tensor(1.0), generator=g) - x
    assert d.std().item() == pytest.approx(0.4, rel=0.02)
    assert d.mean().item() == pytest.approx(0.0, abs=0.01)


def test_salt_and_pepper_on_real_data_uses_the_batch_range():
    model = build("denoising-ae", REAL, corruption="salt-pepper", noise=0.5)
    x = data(REAL, n=400)
    y = model.corrupt(x, generator=torch.Generator().manual_seed(0))
    changed = y != x
    assert changed.any()
    lo, hi = x.amin(0).expand_as(x), x.amax(0).expand_as(x)
    assert torch.all((y[changed] == lo[changed]) | (y[changed] == hi[changed]))


def test_corruption_randomness_comes_from_the_generator_or_the_global_rng():
    model = build("denoising-ae", IMAGE, corruption="masking", noise=0.5)
    x = data(IMAGE, n=20) + 0.01
    a = model.corrupt(x, generator=torch.Generator().manual_seed(3))
    b = model.corrupt(x, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, x)
    torch.manual_seed(5)
    c = model.corrupt(x)
    torch.manual_seed(5)
    assert torch.equal(c, model.corrupt(x))


def test_gaussian_corruption_clips_to_the_data_range_only_when_asked():
    x = data(BINARY)
    plain, clipped = (build("denoising-ae", BINARY, corruption="gaussian", noise=0.8, clip=c) for c in (False, True))
    torch.manual_seed(3)
    free = plain.corrupt(x)
    torch.manual_seed(3)
    bounded = clipped.corrupt(x)
    assert free.min() < 0 and free.max() > 1  # the noise as drawn
    torch.testing.assert_close(bounded, free.clamp(0, 1))


@pytest.mark.parametrize("corruption", ["gaussian", "masking", "salt-pepper"])
def test_denoising_loss_reconstructs_the_clean_input(corruption):
    torch.manual_seed(0)
    model = build("denoising-ae", BINARY, corruption=corruption, noise=0.4)
    x = data(BINARY)
    torch.manual_seed(11)
    out = model.loss(Batch(x), "main")
    torch.manual_seed(11)
    noisy = model.corrupt(x)  # the same draw the loss made
    assert not torch.equal(noisy, x)
    params = model.decoder(model.encode(noisy))
    torch.testing.assert_close(out.loss, model.head.nll(params, x).mean())  # clean target
    assert not torch.allclose(out.loss, model.head.nll(params, noisy).mean())
    # denoise() is the reconstruction mean of its input, with no further corruption.
    torch.testing.assert_close(model.denoise(noisy), model.head.mean(params))
    assert torch.equal(model.denoise(x), model.denoise(x))


# -- stacked: the schedule and greedy stages ----------------------------------------------


def test_stacked_phase_windows():
    model = build("stacked-ae", IMAGE, hidden=(16, 8, 6), pretrain_epochs=2)
    phases = model.phases()
    assert [p.name for p in phases] == ["pretrain_0", "pretrain_1", "pretrain_2", "pretrain_3", "finetune"]
    assert [p.epochs for p in phases] == [(0, 2), (2, 4), (4, 6), (6, 8), (8, None)]
    active = [[p.name for p in phases if p.active(e)] for e in range(10)]
    assert active[0] == active[1] == ["pretrain_0"]
    assert active[7] == ["pretrain_3"]
    assert active[8] == active[9] == ["finetune"]
    # The stages partition the parameters; fine-tuning trains them all.
    stage_ids = [id(p) for ph in phases[:-1] for p in ph.parameters]
    assert sorted(stage_ids) == sorted(id(p) for p in model.parameters())
    assert {id(p) for p in phases[-1].parameters} == set(stage_ids)

    only = build("stacked-ae", IMAGE, pretrain_epochs=0).phases()
    assert [(p.name, p.epochs) for p in only] == [("finetune", (0, None))]


@pytest.mark.parametrize("network", ["mlp", "conv"])
def test_pretraining_stage_k_only_updates_stage_k(network):
    torch.manual_seed(0)
    model = build("stacked-ae", IMAGE, network=network)
    x = data(IMAGE)
    phases = model.phases()
    assert len(phases) == 4  # three stages (two hidden / conv stages + the latent one) + finetune
    for phase in phases[:-1]:
        mine = {id(p) for p in phase.parameters}
        before = {id(p): p.detach().clone() for p in model.parameters()}
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)  # every parameter, on purpose
        opt.zero_grad(set_to_none=True)
        model.loss(Batch(x), phase.name).loss.backward()
        opt.step()
        for p in model.parameters():
            if id(p) in mine:
                assert p.grad is not None and not torch.equal(p, before[id(p)])
            else:
                assert p.grad is None and torch.equal(p, before[id(p)])


@pytest.mark.parametrize("network", ["mlp", "conv"])
def test_stacked_stage_losses(network):
    torch.manual_seed(0)
    model = build("stacked-ae", IMAGE, network=network)
    x = data(IMAGE)
    # Stage 0 is scored by the head's NLL of x, later stages by the squared error of the
    # previous stages' (detached) code; fine-tuning by the full NLL through all stages.
    d0, u0 = model.stage(0)
    torch.testing.assert_close(model.loss(Batch(x), "pretrain_0").loss, model.head.nll(u0(d0(x)), x).mean())
    h = model.encoder[0](x)
    d1, u1 = model.stage(1)
    want = 0.5 * (u1(d1(h)) - h).pow(2).flatten(1).sum(1).mean()
    torch.testing.assert_close(model.loss(Batch(x), "pretrain_1").loss, want)
    full = model.head.nll(model.decoder(model.encoder(x)), x).mean()
    torch.testing.assert_close(model.loss(Batch(x), "finetune").loss, full)
    assert model.decoder(model.encoder(x)).shape == (6, 1, *IMAGE.shape)


# -- training and sampling -----------------------------------------------------------------


def test_ae_learns_a_low_rank_dataset():
    g = torch.Generator().manual_seed(0)
    x = torch.sigmoid(torch.randn(512, 2, generator=g) @ torch.randn(2, 20, generator=g))  # rank-2 manifold
    spec = DataSpec(shape=(20,), kind="continuous")
    torch.manual_seed(0)
    model = ae.Autoencoder(ae.AEConfig(hidden=(32,), latent_dim=2, lr=1e-2), spec)
    opt = torch.optim.Adam(model.parameters(), lr=model.config.lr)
    with torch.no_grad():
        mse_before = (model.reconstruct(x) - x).pow(2).mean()
    first = model.loss(Batch(x[:128]), "main").loss.detach()
    for step in range(200):
        batch = x[(step % 4) * 128 : (step % 4 + 1) * 128]
        opt.zero_grad()
        loss = model.loss(Batch(batch), "main").loss
        loss.backward()
        opt.step()
    with torch.no_grad():
        mse_after = (model.reconstruct(x) - x).pow(2).mean()
    assert mse_after < 0.05 * mse_before
    # The NLL's floor is a perfect reconstruction's (the Gaussian's normalising constant).
    floor = model.head.nll(x[:128].unsqueeze(1), x[:128]).mean()
    assert loss.detach() - floor < 0.05 * (first - floor)


def test_code_statistics_follow_the_training_codes():
    torch.manual_seed(0)
    model = build("ae", REAL)
    mu, sigma = model.code_distribution()
    assert torch.equal(mu, torch.zeros(3)) and torch.equal(sigma, torch.eye(3))  # before training
    x = data(REAL, n=64)
    model.loss(Batch(x), "main")  # one update: bias correction gives the batch's own statistics
    code = model.encode(x).detach()
    mu, sigma = model.code_distribution()
    torch.testing.assert_close(mu, code.mean(0))
    torch.testing.assert_close(sigma, torch.cov(code.T))
    model.eval()
    model.loss(Batch(data(REAL, n=64, seed=1)), "main")  # evaluation leaves the fit alone
    torch.testing.assert_close(model.code_distribution()[0], code.mean(0))
    z = model.sample_codes(20000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(z.mean(0), mu, atol=0.05 * sigma.diagonal().sqrt().max().item(), rtol=0)
    torch.testing.assert_close(torch.cov(z.T), sigma, atol=0.05 * sigma.abs().max().item(), rtol=0)


@pytest.mark.parametrize("key", list(FAMILY))
@pytest.mark.parametrize("network", ["mlp", "conv"])
def test_capabilities_shapes_and_kinds(key, network):
    torch.manual_seed(0)
    model = build(key, BINARY, network=network)
    assert all(isinstance(model, p) for p in (Encoder, Decoder, Reconstructor, Interpolator))
    x = data(BINARY)
    for phase in model.phases():  # every phase's parameters get a gradient from its loss
        model.zero_grad(set_to_none=True)
        out = model.loss(Batch(x), phase.name)
        assert out.loss.shape == () and all(v.shape == () for v in out.logs.values())
        out.loss.backward()
        assert all(p.grad is not None for p in phase.parameters)
    g = torch.Generator().manual_seed(0)
    s = model.sample(5, generator=g)
    assert s.shape == (5, *BINARY.shape) and set(s.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(s, model.sample(5, generator=torch.Generator().manual_seed(0)))
    m = model.sample(5, mean=True)
    assert m.shape == (5, *BINARY.shape) and m.min() >= 0 and m.max() <= 1
    z = model.encode(x)
    assert z.shape == (6, 3)
    assert model.decode(z).shape == (6, *BINARY.shape)
    torch.testing.assert_close(model.reconstruct(x), model.decode(z))
    path = model.interpolate(x[0], x[1:2], steps=5)
    assert path.shape == (5, *BINARY.shape)
    torch.testing.assert_close(path[0], model.decode(z[:1])[0])
    torch.testing.assert_close(path[-1], model.decode(z[1:2])[0])


@pytest.mark.parametrize("key", list(FAMILY))
def test_real_and_continuous_data_with_mlp(key):
    torch.manual_seed(0)
    model = build(key, REAL)
    for phase in model.phases():
        out = model.loss(Batch(data(REAL)), phase.name)
        assert torch.isfinite(out.loss)
    assert model.sample(4).shape == (4, 2)
    cont = build(key, IMAGE, likelihood="gaussian")
    s = cont.sample(4)
    assert s.shape == (4, *IMAGE.shape) and s.min() >= 0 and s.max() <= 1


def test_other_likelihood_heads_work():
    torch.manual_seed(0)
    x = (data(IMAGE) * 16).round() / 16
    for head in ["bernoulli", "gaussian-learned", "categorical", "logistic-mixture"]:
        model = build("ae", IMAGE, network="conv", likelihood=head, components=2)
        assert torch.isfinite(model.loss(Batch(x), "main").loss)
        assert model.sample(3).shape == (3, *IMAGE.shape)


@pytest.mark.parametrize("key", list(FAMILY))
def test_deterministic_given_the_seed(key):
    losses = []
    for _ in range(2):
        torch.manual_seed(7)
        model = build(key, IMAGE)
        losses.append(model.loss(Batch(data(IMAGE)), model.phases()[-1].name).loss)
    assert torch.equal(losses[0], losses[1])


@pytest.mark.parametrize(
    ("cfg", "fields"),
    [
        (ae.AEConfig, {"latent_dim": 0}),
        (ae.AEConfig, {"likelihood": "poisson"}),
        (ae.AEConfig, {"activation": "swishy"}),
        (ae.AEConfig, {"sigma": 0.0}),
        (ae.AEConfig, {"channels": ()}),
        (ae.AEConfig, {"network": "rnn"}),
        (ae.SparseAEConfig, {"rho": 1.0}),
        (ae.SparseAEConfig, {"sparsity": "l2"}),
        (ae.DenoisingAEConfig, {"corruption": "masking", "noise": 1.5}),
        (ae.DenoisingAEConfig, {"noise": -0.1}),
        (ae.ContractiveAEConfig, {"contraction": -1.0}),
        (ae.StackedAEConfig, {"pretrain_epochs": -1}),
    ],
)
def test_bad_settings_are_user_errors(cfg, fields):
    with pytest.raises(UserError):
        cfg(**fields)


@pytest.mark.parametrize("key", ["ae", "stacked-ae"])
def test_conv_on_non_images_is_a_user_error(key):
    with pytest.raises(UserError, match="network=mlp"):
        build(key, REAL, network="conv")
    with pytest.raises(UserError, match="too small"):
        build(key, DataSpec(shape=(1, 3, 3), kind="binary"), network="conv", channels=(4, 4, 4))

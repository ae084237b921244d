"""The hinge and least-squares GAN losses and spectral normalisation of D.

The losses against their formulas on known scores, their gradients' signs and minima;
the models' logs; a short run with each new loss moving samples onto the ring. Spectral
normalisation: which layers it wraps, the largest singular value of every D weight after
training, D's Lipschitz bound, the frozen-D generator step (functional_call), unrolling,
packing, conditioning, WGAN-GP's penalty, save/load and an exact resume. On a CUDA
machine: captured SN-GAN steps equal eager ones, also under bf16.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from helpers import assert_same_metrics
from test_gan import NAMES, REAL, SMALL, batch, build  # noqa: F401  (the GAN tests' builders)
from torch import nn

import deepgen
from deepgen.data import DataConfig, ResidentLoader
from deepgen.data.dataset import Batch, DataSpec
from deepgen.errors import UserError
from deepgen.models import create_model, gan
from deepgen.training import TrainConfig, Trainer, load_run, read_metrics, seed_all

IMAGE = DataSpec(shape=(1, 8, 8), kind="continuous", num_levels=17, num_classes=10, name="img")
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")




def train_config(**changes) -> TrainConfig:
    base = TrainConfig(epochs=1000, batch_size=64, device="cpu", progress=False, tensorboard=False, log_every=10)
    return dataclasses.replace(base, **changes)


def grad(f, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(x), x)
    return g


REAL_SCORES = torch.tensor([2.0, 0.5, -1.0])
FAKE_SCORES = torch.tensor([-3.0, 0.0, 1.5, -0.5])

# -- the hinge loss ------------------------------------------------------------------------------


def test_hinge_losses_equal_their_formulas():
    # relu(1 - r) = (0, 0.5, 2): mean 5/6; relu(1 + f) = (0, 1, 2.5, 0.5): mean 1.
    expected = torch.tensor(5 / 6 + 1.0)
    torch.testing.assert_close(gan.hinge_discriminator_loss(REAL_SCORES, FAKE_SCORES), expected)
    torch.testing.assert_close(gan.discriminator_loss(REAL_SCORES, FAKE_SCORES, "hinge"), expected)
    # G: -E D(G(z)) = -(-3 + 0 + 1.5 - 0.5) / 4 = 0.5
    torch.testing.assert_close(gan.hinge_generator_loss(FAKE_SCORES), torch.tensor(0.5))
    torch.testing.assert_close(gan.generator_loss(FAKE_SCORES, "hinge"), torch.tensor(0.5))


def test_hinge_discriminator_loss_is_zero_beyond_the_margins():
    real, fake = torch.tensor([1.0, 3.0, 10.0]), torch.tensor([-1.0, -2.5])
    assert gan.hinge_discriminator_loss(real, fake).item() == 0.0
    # ... with zero gradient there: confidently right scores are left alone.
    assert torch.equal(grad(lambda r: gan.hinge_discriminator_loss(r, fake), real), torch.zeros(3))
    assert torch.equal(grad(lambda f: gan.hinge_discriminator_loss(real, f), fake), torch.zeros(2))
    assert gan.hinge_discriminator_loss(torch.tensor([0.99]), fake).item() > 0
    assert gan.hinge_discriminator_loss(real, torch.tensor([-0.99])).item() > 0


def test_hinge_gradient_signs():
    # Inside the margins, descent raises real scores and lowers fake ones (by 1/N each) ...
    g_real = grad(lambda r: gan.hinge_discriminator_loss(r, FAKE_SCORES), REAL_SCORES)
    g_fake = grad(lambda f: gan.hinge_discriminator_loss(REAL_SCORES, f), FAKE_SCORES)
    torch.testing.assert_close(g_real, torch.tensor([0.0, -1 / 3, -1 / 3]))  # 2.0 is past the margin
    torch.testing.assert_close(g_fake, torch.tensor([0.0, 0.25, 0.25, 0.25]))  # -3.0 is past it
    # ... and G's descent raises every fake score, with no margin.
    torch.testing.assert_close(grad(gan.hinge_generator_loss, FAKE_SCORES), torch.full((4,), -0.25))


# -- the least-squares loss ----------------------------------------------------------------------


def test_least_squares_losses_equal_their_formulas():
    expected_d = 0.5 * ((REAL_SCORES - 1) ** 2).mean() + 0.5 * (FAKE_SCORES**2).mean()
    torch.testing.assert_close(gan.least_squares_discriminator_loss(REAL_SCORES, FAKE_SCORES), expected_d)
    torch.testing.assert_close(gan.discriminator_loss(REAL_SCORES, FAKE_SCORES, "least-squares"), expected_d)
    # (1 + 0.25 + 4) / 3 / 2 + (9 + 0 + 2.25 + 0.25) / 4 / 2 = 0.875 + 1.4375
    torch.testing.assert_close(expected_d, torch.tensor(0.875 + 1.4375))
    expected_g = 0.5 * ((FAKE_SCORES - 1) ** 2).mean()  # (16 + 1 + 0.25 + 2.25) / 8
    torch.testing.assert_close(gan.least_squares_generator_loss(FAKE_SCORES), torch.tensor(19.5 / 8))
    torch.testing.assert_close(gan.generator_loss(FAKE_SCORES, "least-squares"), expected_g)


def test_least_squares_minima_and_gradient_signs():
    # G's loss is least (0, with zero gradient) at D(G(z)) = 1, larger on either side.
    ones = torch.ones(4)
    assert gan.least_squares_generator_loss(ones).item() == 0.0
    assert torch.equal(grad(gan.least_squares_generator_loss, ones), torch.zeros(4))
    for s in (0.0, 0.9, 1.1, 3.0, -2.0):
        assert gan.least_squares_generator_loss(torch.tensor([s])).item() > 0
    # Its gradient (s - 1) / M: descent raises scores below 1 and lowers those above.
    torch.testing.assert_close(grad(gan.least_squares_generator_loss, FAKE_SCORES), (FAKE_SCORES - 1) / 4)
    # D's: least at real = 1 (b), fake = 0 (a); gradients (r - 1) / N and f / M.
    assert gan.least_squares_discriminator_loss(torch.ones(3), torch.zeros(4)).item() == 0.0
    g_real = grad(lambda r: gan.least_squares_discriminator_loss(r, FAKE_SCORES), REAL_SCORES)
    g_fake = grad(lambda f: gan.least_squares_discriminator_loss(REAL_SCORES, f), FAKE_SCORES)
    torch.testing.assert_close(g_real, (REAL_SCORES - 1) / 3)
    torch.testing.assert_close(g_fake, FAKE_SCORES / 4)


def test_unknown_losses_are_refused():
    with pytest.raises(UserError, match="unknown GAN loss 'wasserstein'.*hinge, least-squares"):
        gan.generator_loss(FAKE_SCORES, "wasserstein")
    with pytest.raises(UserError, match="unknown GAN loss"):
        gan.discriminator_loss(REAL_SCORES, FAKE_SCORES, "lsgan")
    with pytest.raises(UserError):
        gan.GANConfig(g_loss="lsgan")
    assert gan.DCGANConfig(g_loss="hinge").g_loss == "hinge"
    # The Wasserstein GANs keep their critic losses: no g_loss setting there.
    assert "g_loss" not in gan.WGANConfig.field_names() and "g_loss" not in gan.WGANGPConfig.field_names()
    assert set(gan.GAN_LOSSES) == {"minimax", "non-saturating", "hinge", "least-squares"}


# -- the models -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["hinge", "least-squares"])
@pytest.mark.parametrize("name", ["gan", "dcgan"])
def test_model_losses_and_logs_are_the_configured_game(name, kind):
    model = build(name, g_loss=kind, d_norm="none", g_norm="none")
    b = batch(REAL)
    torch.manual_seed(4)
    d = model.loss(b, "discriminator")
    torch.manual_seed(4)
    with torch.no_grad():
        fake = model.generate(model.noise(len(b.x)))
    real_out, fake_out = model.D(b.x)[0], model.D(fake)[0]
    torch.testing.assert_close(d.loss, gan.discriminator_loss(real_out, fake_out, kind))
    # Raw scores, logged as such (no sigmoid: they are not logits of a probability).
    assert set(d.logs) == {"score_real", "score_fake"}
    torch.testing.assert_close(d.logs["score_real"], real_out.mean())
    torch.testing.assert_close(d.logs["score_fake"], fake_out.mean())
    torch.manual_seed(5)
    g = model.loss(b, "generator")
    torch.manual_seed(5)
    fake_out = model.D(model.generate(model.noise(len(b.x))))[0]
    torch.testing.assert_close(g.loss, gan.generator_loss(fake_out, kind))
    assert set(g.logs) == {"score_fake"} and all(v.dim() == 0 for v in g.logs.values())
    # The probability games keep their sigmoid means.
    assert set(build(name, g_loss="minimax").loss(b, "discriminator").logs) == {"d_real", "d_fake"}


def _distance_to_ring(model: gan.GAN, modes: torch.Tensor) -> float:
    model.eval()
    x = model.sample(1000, generator=torch.Generator().manual_seed(0))
    model.train()
    return torch.cdist(x, modes).min(dim=1).values.mean().item()


# Ratios after / before over seeds 0-3: hinge 0.28-0.42 (600 steps), least-squares
# 0.28-0.47 (400), hinge + spectral norm with SN-GAN's Adam betas (0, 0.9) 0.32-0.43 (400).
@pytest.mark.parametrize(
    "settings,steps",
    [({"g_loss": "hinge"}, 600), ({"g_loss": "least-squares"}, 400), ({"g_loss": "hinge", "spectral_norm": True, "betas": (0.0, 0.9)}, 400)],
    ids=["hinge", "least-squares", "hinge-sn"],
)
def test_new_losses_move_samples_to_the_ring(settings, steps):
    ds = deepgen.load_dataset(DataConfig(name="ring8", num_samples=2048))
    modes = torch.tensor(ds.meta["modes"], dtype=torch.float32)
    seed_all(0)
    model = create_model("gan", ds, lr=1e-3, noise_dim=8, g_hidden=(64, 64), d_hidden=(64, 64), **settings)
    before = _distance_to_ring(model, modes)  # a blob near the centre: ~0.85
    Trainer(model, ds, train_config(max_steps=steps, batch_size=128, seed=0)).fit()
    after = _distance_to_ring(model, modes)
    assert before > 0.6 and after < 0.6 * before, (before, after)


# -- spectral normalisation -------------------------------------------------------------------------


def _normalised_layers(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, gan.SPECTRAL_LAYERS)]


def _sigma(layer: nn.Module) -> float:
    """The largest singular value of the layer's (normalised) weight, reshaped to 2-D as torch does."""
    w = layer.weight.detach()
    w = w.transpose(0, 1) if isinstance(layer, nn.modules.conv._ConvTransposeNd) else w
    return torch.linalg.matrix_norm(w.flatten(1), ord=2).item()


@pytest.mark.parametrize("spec,net", [(REAL, "mlp"), (IMAGE, "conv")])
def test_spectral_norm_wraps_every_linear_and_conv_layer_of_d_only(spec, net):
    model = build("gan", spec, network=net, spectral_norm=True)
    layers = _normalised_layers(model.D)
    assert layers and all(nn.utils.parametrize.is_parametrized(m, "weight") for m in layers)
    assert any(isinstance(m, nn.Conv2d) for m in layers) == (net == "conv")
    assert not any(nn.utils.parametrize.is_parametrized(m) for m in model.G.modules())
    names = [n for n, _ in model.D.named_parameters()]
    assert sum(n.endswith("parametrizations.weight.original") for n in names) == len(layers)
    state = model.state_dict()
    assert sum(k.endswith("parametrizations.weight.0._u") for k in state) == len(layers)
    assert sum(k.endswith("parametrizations.weight.0._v") for k in state) == len(layers)
    # The phase trains the originals.
    d_phase, _ = model.phases()
    assert {id(p) for p in d_phase.parameters} == {id(p) for p in model.D.parameters()}
    assert not any(nn.utils.parametrize.is_parametrized(m) for m in build("gan", spec, network=net).D.modules())


def test_spectral_norm_keeps_every_d_weight_at_unit_spectral_norm_through_training():
    ds = deepgen.load_dataset(DataConfig(name="digits", max_train=256))
    seed_all(0)
    model = create_model("dcgan", ds, spectral_norm=True, g_loss="hinge", conv_width=8, lr=2e-3)
    originals = {n: p.detach().clone() for n, p in model.D.named_parameters()}
    Trainer(model, ds, train_config(max_steps=30, batch_size=32, seed=0)).fit()
    assert any(not torch.equal(p, originals[n]) for n, p in model.D.named_parameters()), "D did not train"
    layers = _normalised_layers(model.D.eval())  # eval: the stored u, v as they are, no iteration
    raw = [torch.linalg.matrix_norm(m.parametrizations.weight.original.detach().flatten(1), ord=2).item() for m in layers]
    assert max(abs(s - 1) for s in raw) > 0.1  # the originals are not unit-norm themselves
    # One power iteration per forward tracks sigma as the weights move: within 1%.
    sigmas = [_sigma(m) for m in layers]
    assert all(abs(s - 1) < 1e-2 for s in sigmas), sigmas
    # A few more iterations on the final weights (a copy, in training mode) converge u, v.
    d = copy.deepcopy(model.D).train()
    x = torch.zeros(2, 1, 8, 8)  # digits: one channel
    with torch.no_grad():
        for _ in range(20):
            d(x)
    sigmas = [_sigma(m) for m in _normalised_layers(d.eval())]
    assert all(abs(s - 1) < 1e-4 for s in sigmas), sigmas


def test_spectrally_normalised_mlp_d_is_1_lipschitz():
    """Linear layers of spectral norm 1 and LeakyReLU (slope <= 1): ||grad_x D(x)||_2 <= 1."""
    model = build("gan", spectral_norm=True, d_hidden=(32, 32)).eval()
    x = torch.randn(64, 2, requires_grad=True)
    (g,) = torch.autograd.grad(model.D(x)[0].sum(), x)
    norms = g.norm(dim=1)
    assert norms.max() <= 1 + 1e-4 and norms.min() > 0
    plain = build("gan", d_hidden=(32, 32)).eval()  # unnormalised: nothing bounds it
    (g,) = torch.autograd.grad(plain.D(x)[0].sum(), x)
    assert not torch.allclose(g.norm(dim=1), norms)


def _u_buffers(model: gan.GAN) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in model.D.named_buffers() if n.endswith("._u") or n.endswith("._v")}


def test_the_frozen_d_generator_step_with_spectral_norm():
    """G's step through functional_call(D, detached originals): no gradient and no change to
    D's weights; the power iteration advances D's own u, v, deterministically."""
    b = batch(REAL, n=16)
    a, twin = build("gan", spectral_norm=True), build("gan", spectral_norm=True)
    weights = {n: p.detach().clone() for n, p in a.D.named_parameters()}
    u0 = _u_buffers(a)
    for m in (a, twin):
        torch.manual_seed(2)
        m.loss(b, "generator").loss.backward()
    assert all(p.grad is None for p in a.D.parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in a.G.parameters())
    assert all(torch.equal(p, weights[n]) for n, p in a.D.named_parameters())
    u1 = _u_buffers(a)
    assert any(not torch.equal(u0[n], u1[n]) for n in u0)  # one iteration happened
    assert all(torch.equal(u1[n], v) for n, v in _u_buffers(twin).items())  # the same one
    # In eval mode nothing is iterated.
    a.eval()
    with torch.no_grad():
        a.D(b.x)
    assert all(torch.equal(u1[n], v) for n, v in _u_buffers(a).items())


def test_unrolling_with_spectral_norm_leaves_d_as_it_was():
    b = batch(REAL, n=16)
    model = build("gan", spectral_norm=True, d_norm="batch", unrolled_steps=3, unrolled_lr=0.5)
    state = {k: v.clone() for k, v in model.D.state_dict().items()}
    torch.manual_seed(3)
    model.loss(b, "generator").loss.backward()
    unrolled = [p.grad.clone() for p in model.G.parameters()]
    assert all(torch.equal(v, model.D.state_dict()[k]) for k, v in state.items())  # u, v included
    assert all(p.grad is None for p in model.D.parameters())
    plain = build("gan", spectral_norm=True, d_norm="batch")
    torch.manual_seed(3)
    plain.loss(b, "generator").loss.backward()
    assert all(torch.isfinite(g).all() for g in unrolled)
    assert any(not torch.allclose(p.grad, u) for p, u in zip(plain.G.parameters(), unrolled))


@pytest.mark.parametrize("name", NAMES)
def test_spectral_norm_works_with_every_gan_and_remedy(name):
    remedies = [{}, {"pack": 2}, {"minibatch_std": True}, {"conditional": True}, {"unrolled_steps": 2}, {"feature_matching": True}]
    extra = {"g_loss": "hinge"} if name in ("gan", "dcgan") else {}
    for spec, net in [(REAL, "mlp"), (IMAGE, "conv")]:
        for remedy in remedies:
            model = build(name, spec, network=net, spectral_norm=True, **extra, **remedy)
            b = batch(spec, n=8, labels=bool(remedy.get("conditional")))
            for phase in model.phases():
                model.zero_grad(set_to_none=True)
                out = model.loss(b, phase.name)
                out.loss.backward()
                assert torch.isfinite(out.loss), (remedy, phase.name)
                assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in phase.parameters), (remedy, phase.name)
                others = [p for p in model.parameters() if not any(p is q for q in phase.parameters)]
                assert all(p.grad is None for p in others), f"{phase.name} puts gradients on the other network ({remedy})"


def test_gradient_penalty_trains_the_spectrally_normalised_critic():
    model = build("wgan-gp", spectral_norm=True)
    real, fake = torch.randn(8, 2), torch.randn(8, 2)
    gp = model.gradient_penalty(real, fake)
    grads = torch.autograd.grad(gp, list(model.D.parameters()), allow_unused=True)
    originals = [g for (n, _), g in zip(model.D.named_parameters(), grads) if n.endswith("original")]
    assert originals and all(g is not None and torch.isfinite(g).all() for g in originals)
    assert any(g.norm() > 0 for g in originals)
    out = model.loss(Batch(real), "critic")
    torch.testing.assert_close(out.loss, -out.logs["wasserstein"] + out.logs["gp"])


def test_wgan_histograms_show_the_spectrally_normalised_originals():
    model = build("wgan", spectral_norm=True)
    hist = model.histograms()
    layers = _normalised_layers(model.D)
    assert len(hist) == len(layers)
    for values, layer in zip(hist.values(), layers):
        assert torch.equal(values, layer.parametrizations.weight.original)


# -- save/load and resume -------------------------------------------------------------------------

RING = DataConfig(name="ring8", num_samples=256)


def _run(name: str, data: DataConfig, folder, seed: int = 0, model_args: dict | None = None, **train) -> Trainer:
    ds = deepgen.load_dataset(data)
    cfg = TrainConfig(epochs=2, batch_size=32, seed=seed, device="cpu", log_every=1, progress=False, tensorboard=False)
    cfg = dataclasses.replace(cfg, **train)
    seed_all(cfg.seed)
    model = deepgen.create_model(name, ds, **(model_args or {}))
    trainer = Trainer(model, ds, cfg, folder, data_config=data)
    trainer.fit()
    return trainer


def test_save_load_round_trip_of_a_spectral_norm_gan(tmp_path):
    args = {"spectral_norm": True, "g_loss": "hinge", "d_norm": "batch"}
    full = _run("gan", RING, tmp_path / "run", model_args=args, max_steps=6)
    loaded = load_run(tmp_path / "run", model_overrides={})
    assert loaded.model.config.spectral_norm and loaded.model.config.g_loss == "hinge"
    a, b = full.model.eval(), loaded.model.eval()
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(a.sample(50, generator=gen()), b.sample(50, generator=gen()))
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and any(k.endswith("._u") for k in sa)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # D's scores and a training-mode D loss (one power iteration from the saved u, v) agree.
    x = ResidentLoader(full.dataset, 16, "cpu", seed=5).next()
    with torch.no_grad():
        assert torch.equal(a.D(x.x)[0], b.D(x.x)[0])
    losses = []
    for m in (a.train(), b.train()):
        torch.manual_seed(11)
        losses.append(m.loss(x, "discriminator").loss)
    assert torch.equal(losses[0], losses[1])


@pytest.mark.parametrize(
    "name,args",
    [("gan", {"spectral_norm": True, "g_loss": "hinge", "unrolled_steps": 1, "pack": 2}),
     ("wgan-gp", {"spectral_norm": True, "conditional": True}),
     ("gan", {"spectral_norm": True, "g_loss": "least-squares", "ema": 0.9})],
    ids=["gan-hinge-unrolled-pack", "wgan-gp-conditional", "gan-ls-ema"],
)
def test_a_resumed_spectral_norm_run_equals_an_uninterrupted_one(name, args, tmp_path):
    args = dict(args)
    train = {"ema": args.pop("ema")} if "ema" in args else {}
    full = _run(name, RING, tmp_path / "full", model_args=args, **train)
    steps = full.step
    assert steps >= 4
    _run(name, RING, tmp_path / "part", model_args=args, max_steps=steps // 2 + 1, **train)
    resumed = Trainer.resume(tmp_path / "part", max_steps=0)
    resumed.fit()
    assert_same_metrics(tmp_path / "full", tmp_path / "part")
    sa, sb = full.model.state_dict(), resumed.model.state_dict()
    assert any(k.endswith("._u") for k in sa)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{k} differs after resume"
    if full.ema is not None:
        ea, eb = full.ema.model.state_dict(), resumed.ema.model.state_dict()
        assert all(torch.equal(ea[k], eb[k]) for k in ea)


# -- CUDA graphs (on a GPU) --------------------------------------------------------------------------


@CUDA
@pytest.mark.parametrize(
    "name,data,args,bf16",
    [("gan", RING, {"spectral_norm": True, "g_loss": "hinge"}, False),
     ("gan", RING, {"spectral_norm": True, "g_loss": "least-squares", "unrolled_steps": 2}, False),
     ("dcgan", DataConfig(name="digits", max_train=256), {"spectral_norm": True, "g_loss": "hinge"}, False),
     ("wgan-gp", RING, {"spectral_norm": True}, False),
     ("gan", RING, {"spectral_norm": True, "g_loss": "hinge"}, True),
     ("dcgan", DataConfig(name="digits", max_train=256), {"spectral_norm": True}, True)],
    ids=["gan-hinge", "gan-ls-unrolled", "dcgan-hinge", "wgan-gp", "gan-hinge-bf16", "dcgan-bf16"],
)
def test_captured_spectral_norm_steps_equal_eager_steps(name, data, args, bf16, tmp_path):
    """The power iteration's in-place u, v updates are captured with the step: a captured
    run logs what the eager run logs, step by step."""
    run = {"device": "cuda", "max_steps": 12, "bf16": bf16}
    _run(name, data, tmp_path / "eager", model_args=args, **run)
    graph = _run(name, data, tmp_path / "graph", model_args=args, cuda_graph=True, **run)
    assert graph._graphs, "no phase was captured"
    a, b = read_metrics(tmp_path / "eager"), read_metrics(tmp_path / "graph")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    # bf16 values carry 8 significant bits: eager and captured runs may differ by an ulp (~0.4%).
    rel, abs_ = (1e-2, 1e-3) if bf16 else (1e-3, 1e-4)
    for ra, rb in zip(a, b):
        for key, value in ra.items():
            if isinstance(value, float) and key != "seconds" and not key.endswith("_osc"):
                assert rb[key] == pytest.approx(value, rel=rel, abs=abs_), f"step {ra['step']}: {key}"
    # The power iteration stays in float32 under bf16 autocast.
    assert all(b.dtype == torch.float32 for n, b in graph.model.D.named_buffers() if n.endswith("._u"))

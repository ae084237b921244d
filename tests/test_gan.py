"""The GAN family: the losses against their formulas, the gradient penalty on linear critics,
clipping through the real trainer, packing, minibatch std, feature matching, unrolling,
the networks for any image size, and a GAN that learns the ring."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import deepgen
from deepgen.data import DataConfig
from deepgen.data.dataset import Batch, DataSpec
from deepgen.errors import UserError
from deepgen.models import create_model, gan
from deepgen.models.base import HasHistograms
from deepgen.registry import MODELS
from deepgen.training import TrainConfig, Trainer, seed_all

REAL = DataSpec(shape=(2,), kind="real", num_classes=8, name="points")
IMAGE = DataSpec(shape=(1, 8, 8), kind="continuous", num_levels=17, num_classes=10, name="img")
BINARY = DataSpec(shape=(1, 8, 8), kind="binary", name="bin")
SMALL = {"noise_dim": 4, "g_hidden": (16,), "d_hidden": (16, 8), "conv_width": 4}
NAMES = ["gan", "dcgan", "wgan", "wgan-gp"]


def build(name: str, spec: DataSpec = REAL, seed: int = 0, **overrides) -> gan.GAN:
    torch.manual_seed(seed)
    cls = MODELS.get(name)
    return cls(cls.config_class(**{**SMALL, **overrides}), spec)


def batch(spec: DataSpec, n: int = 8, seed: int = 0, labels: bool = False) -> Batch:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *spec.shape, generator=g) if spec.kind == "real" else torch.rand(n, *spec.shape, generator=g)
    if spec.kind == "binary":
        x = x.round()
    y = torch.randint(0, spec.num_classes, (n,), generator=g) if labels else None
    return Batch(x, y)


def train_config(**changes) -> TrainConfig:
    base = TrainConfig(epochs=1000, batch_size=64, device="cpu", progress=False, tensorboard=False, log_every=10)
    return base.replace(**changes)


class LinearCritic(nn.Module):
    """f(x) = w . x on the flattened input: the gradient w.r.t. x is w everywhere."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = x.flatten(1)
        return h @ self.w, h


# -- registration and phases ---------------------------------------------------------------------


def test_models_are_registered_with_their_phases_and_optimisers():
    for name, cls in [("gan", gan.GAN), ("dcgan", gan.DCGAN), ("wgan", gan.WGAN), ("wgan-gp", gan.WGANGP)]:
        assert MODELS.get(name) is cls
        model = build(name)
        d, g = model.phases()
        assert d.name == ("discriminator" if name in ("gan", "dcgan") else "critic") and g.name == "generator"
        assert [id(p) for p in d.parameters] == [id(p) for p in model.D.parameters()]
        assert [id(p) for p in g.parameters] == [id(p) for p in model.G.parameters()]
        assert model.oscillation_keys == (f"{d.name}/loss", "generator/loss")
    d, _ = build("wgan").phases()
    assert (d.optimizer.name, d.optimizer.lr, d.repeats, d.new_batch) == ("rmsprop", 5e-5, 5, True)
    assert d.after_step is not None
    d, _ = build("wgan-gp").phases()
    assert (d.optimizer.name, d.optimizer.lr, tuple(d.optimizer.betas), d.repeats, d.new_batch) == ("adam", 1e-4, (0.0, 0.9), 5, True)
    assert d.after_step is None
    d, _ = build("dcgan").phases()
    assert (d.optimizer.name, d.optimizer.lr, tuple(d.optimizer.betas), d.repeats) == ("adam", 2e-4, (0.5, 0.999), 1)


def test_wgan_gp_critic_has_no_batch_norm_and_refuses_it():
    big = DataSpec(shape=(1, 16, 16), kind="continuous", num_levels=256, name="img16")
    model = build("wgan-gp", big, network="conv")  # two stages: the second is normalised
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.D.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in model.D.modules())  # layer norm over (C, H, W)
    assert any(isinstance(m, nn.LayerNorm) for m in build("wgan-gp", IMAGE).D.modules())
    with pytest.raises(UserError, match="batch norm"):
        gan.WGANGPConfig(d_norm="batch")


def test_histograms_are_the_critic_weights_per_layer():
    model = build("wgan")
    assert isinstance(model, HasHistograms) and not isinstance(build("gan"), HasHistograms)
    hist = model.histograms()
    linears = [m for m in model.D.modules() if isinstance(m, nn.Linear)]
    assert len(hist) == len(linears)
    for values, layer in zip(hist.values(), linears):
        assert torch.equal(values, layer.weight)


# -- the losses against their formulas ---------------------------------------------------------------


def test_gan_losses_equal_their_formulas_on_fixed_outputs():
    real = torch.tensor([2.0, -1.0, 0.5])
    fake = torch.tensor([-3.0, 0.0, 1.5, 4.0])
    d_real, d_fake = torch.sigmoid(real), torch.sigmoid(fake)
    expected_d = -(torch.log(d_real).mean() + torch.log(1 - d_fake).mean())
    torch.testing.assert_close(gan.discriminator_loss(real, fake), expected_d)
    torch.testing.assert_close(gan.generator_loss(fake, "minimax"), torch.log(1 - d_fake).mean())
    torch.testing.assert_close(gan.generator_loss(fake, "non-saturating"), -torch.log(d_fake).mean())
    torch.testing.assert_close(gan.critic_loss(real, fake), fake.mean() - real.mean())
    torch.testing.assert_close(gan.critic_generator_loss(fake), -fake.mean())
    # The minimax loss saturates where D rejects the fakes: its gradient vanishes there,
    # the non-saturating one's does not (Goodfellow et al. 2014, sec. 3).
    rejected = torch.tensor([-8.0], requires_grad=True)
    (g_mm,) = torch.autograd.grad(gan.generator_loss(rejected, "minimax"), rejected)
    (g_ns,) = torch.autograd.grad(gan.generator_loss(rejected, "non-saturating"), rejected)
    assert abs(g_mm.item()) < 1e-3 < abs(g_ns.item())


def test_model_losses_use_the_configured_generator_loss():
    b = batch(REAL)
    torch.manual_seed(5)
    ns = build("gan", g_loss="non-saturating").loss(b, "generator")
    torch.manual_seed(5)
    mm = build("gan", g_loss="minimax").loss(b, "generator")
    # Same weights and noise, so the same D(G(z)) = p: the losses are -log p and log(1 - p) of it.
    assert torch.equal(ns.logs["d_fake"], mm.logs["d_fake"])
    assert ns.loss > 0 > mm.loss


def test_discriminator_logs_probabilities_and_critic_logs_the_wasserstein_estimate():
    out = build("gan").loss(batch(REAL), "discriminator")
    assert 0 <= out.logs["d_real"] <= 1 and 0 <= out.logs["d_fake"] <= 1
    out = build("wgan").loss(batch(REAL), "critic")
    torch.testing.assert_close(out.logs["wasserstein"], out.logs["d_real"] - out.logs["d_fake"])
    torch.testing.assert_close(out.loss, -out.logs["wasserstein"])  # the loss is -(E f(x) - E f(G(z)))
    out = build("wgan-gp").loss(batch(REAL), "critic")
    torch.testing.assert_close(out.loss, -out.logs["wasserstein"] + out.logs["gp"])
    assert all(v.dim() == 0 for v in out.logs.values())


# -- the gradient penalty -------------------------------------------------------------------------------


def _unit(d: int, seed: int = 0) -> torch.Tensor:
    w = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return w / w.norm()


def test_gradient_penalty_vanishes_on_a_unit_norm_linear_critic():
    real, fake = torch.randn(16, 2), torch.randn(16, 2)
    w = _unit(2)
    gp = gan.gradient_penalty(lambda x: x @ w, real, fake, weight=10.0)
    assert gp.dim() == 0 and gp.item() < 1e-8
    gp3 = gan.gradient_penalty(lambda x: x @ (3 * w), real, fake, weight=10.0)
    torch.testing.assert_close(gp3, torch.tensor(10.0 * (3 - 1) ** 2))


def test_model_gradient_penalty_on_a_linear_critic_also_when_packed():
    model = build("wgan-gp")
    real, fake = torch.randn(8, 2), torch.randn(8, 2)
    model.D = LinearCritic(_unit(2))
    assert model.gradient_penalty(real, fake).item() < 1e-8
    model.D = LinearCritic(3 * _unit(2))
    torch.testing.assert_close(model.gradient_penalty(real, fake), torch.tensor(40.0))
    # Packed in pairs, the critic sees 4 inputs; its gradient w.r.t. each pair is w (4-D).
    packed = build("wgan-gp", pack=2)
    packed.D = LinearCritic(2 * _unit(4))
    torch.testing.assert_close(packed.gradient_penalty(real, fake), torch.tensor(10.0))
    # The penalty trains the critic: it has a gradient w.r.t. the critic's weights.
    gp = packed.gradient_penalty(real, fake)
    (grad,) = torch.autograd.grad(gp, packed.D.w)
    assert grad.norm() > 0


# -- weight clipping through the trainer --------------------------------------------------------------


def test_clipping_keeps_every_critic_weight_in_range_through_the_trainer():
    ds = deepgen.load_dataset(DataConfig(name="ring8", num_samples=512))
    seed_all(0)
    model = create_model("wgan", ds, **SMALL)
    c = model.config.clip
    assert max(p.abs().max().item() for p in model.D.parameters()) > c  # not yet clipped
    Trainer(model, ds, train_config(max_steps=3)).fit()
    params = list(model.D.parameters())
    assert all(p.abs().max().item() <= c for p in params)
    # Clipping is active: weights pile up at +-c.
    assert sum((p.abs() == c).sum().item() for p in params) > 0


def test_g_steps_takes_that_many_generator_steps_per_training_step():
    ds = deepgen.load_dataset(DataConfig(name="ring8", num_samples=512))
    seed_all(0)
    model = create_model("gan", ds, g_steps=2, d_steps=3, **SMALL)
    d_phase, g_phase = model.phases()
    assert (d_phase.repeats, g_phase.repeats, g_phase.new_batch) == (3, 2, False)
    trainer = Trainer(model, ds, train_config(max_steps=4))
    trainer.fit()
    d_opt, g_opt = trainer.optimizers
    first = lambda opt: opt.state[opt.param_groups[0]["params"][0]]["step"].item()  # noqa: E731
    assert (first(d_opt), first(g_opt)) == (12, 8)  # 4 steps x (3 D, 2 G) optimizer steps
    with pytest.raises(UserError, match="g_steps must be >= 1"):
        create_model("gan", ds, g_steps=0)


# -- what D sees: packing and minibatch std -----------------------------------------------------------


def test_pack_concatenates_distinct_examples():
    x = torch.arange(10 * 3, dtype=torch.float32).reshape(10, 3)
    packed = gan.pack(x, 4)  # 10 -> truncated to 8 -> 2 packed rows of 4 examples
    assert packed.shape == (2, 12)
    for i in range(2):
        blocks = packed[i].reshape(4, 3)
        assert torch.equal(blocks, x[4 * i : 4 * i + 4])
        assert len({tuple(b.tolist()) for b in blocks}) == 4  # no repeats
    images = torch.randn(6, 3, 5, 4)
    packed = gan.pack(images, 2)  # images are concatenated along channels
    assert packed.shape == (3, 6, 5, 4)
    assert torch.equal(packed[1, :3], images[2]) and torch.equal(packed[1, 3:], images[3])
    assert gan.pack(x, 1) is x
    with pytest.raises(UserError, match="pack=4"):
        gan.pack(x[:3], 4)


def test_packed_model_judges_m_examples_per_output():
    model = build("gan", IMAGE, network="conv", pack=3)
    logits, features = model.discriminate(torch.rand(10, 1, 8, 8))
    assert logits.shape == (3,) and features.shape[0] == 3
    assert model.D.convs[0].in_channels == 3


def test_minibatch_std_equals_the_closed_form():
    h = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    # biased std over the batch: feature 0 -> 1, feature 1 -> 2; their mean -> 1.5
    out = gan.minibatch_stddev(h, eps=0.0)
    assert torch.equal(out, torch.tensor([[1.0, 2.0, 1.5], [3.0, 6.0, 1.5]]))
    maps = torch.randn(5, 2, 3, 3)
    out = gan.minibatch_stddev(maps)
    expected = torch.sqrt(maps.var(dim=0, unbiased=False) + 1e-8).mean()
    assert out.shape == (5, 3, 3, 3)
    torch.testing.assert_close(out[:, 2], expected.expand(5, 3, 3))
    # A collapsed batch (all rows equal) gives ~0: what D uses to spot collapse.
    assert gan.minibatch_stddev(torch.ones(4, 3))[0, 3] < 1e-3


def test_feature_matching_equals_the_closed_form():
    real = torch.tensor([[1.0, 0.0], [3.0, 2.0]])  # mean (2, 1)
    fake = torch.zeros(3, 2)
    torch.testing.assert_close(gan.feature_matching_loss(real, fake), torch.tensor(5.0))
    model = build("gan", feature_matching=True)
    b = batch(REAL)
    torch.manual_seed(1)
    out = model.loss(b, "generator")
    torch.manual_seed(1)
    fake = model.generate(model.noise(len(b.x)))
    expected = gan.feature_matching_loss(model.D(b.x)[1], model.D(fake)[1])
    torch.testing.assert_close(out.loss, expected)


# -- unrolling ------------------------------------------------------------------------------------------------


def _generator_grads(model: gan.GAN, b: Batch) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(3)
    model.loss(b, "generator").loss.backward()
    return [p.grad.clone() for p in model.G.parameters()]


@pytest.mark.parametrize("name", ["gan", "wgan"])
def test_unrolled_generator_gradient_differs_and_is_finite(name):
    b = batch(REAL, n=16)
    plain = _generator_grads(build(name, d_norm="batch"), b)
    model = build(name, d_norm="batch", unrolled_steps=3, unrolled_lr=0.5)
    d_state = {k: v.clone() for k, v in model.D.state_dict().items()}
    unrolled = _generator_grads(model, b)
    assert all(torch.isfinite(g).all() for g in unrolled)
    assert any(not torch.allclose(a, u) for a, u in zip(plain, unrolled))
    # Unrolling leaves D as it was (weights and batch-norm statistics) and gives it no gradient.
    assert all(torch.equal(v, model.D.state_dict()[k]) for k, v in d_state.items())
    assert all(p.grad is None for p in model.D.parameters())


def test_one_unrolled_sgd_step_is_the_formula():
    """k = 1 by hand: G's loss against theta_D - eta grad L_D(theta_D)."""
    model = build("gan", unrolled_steps=1, unrolled_lr=0.1)
    b = batch(REAL)
    torch.manual_seed(3)
    out = model.loss(b, "generator")
    torch.manual_seed(3)
    fake = model.generate(model.noise(len(b.x)))
    names, params = zip(*model.D.named_parameters())
    d_loss = gan.discriminator_loss(model.D(b.x)[0], model.D(fake)[0])
    grads = torch.autograd.grad(d_loss, params)
    stepped = {n: p - 0.1 * g for n, p, g in zip(names, params, grads)}
    logits, _ = torch.func.functional_call(model.D, stepped, (fake,))
    torch.testing.assert_close(out.loss, gan.generator_loss(logits))


# -- networks and data kinds -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape,stages", [((1, 8, 8), 1), ((1, 28, 28), 2), ((3, 28, 28), 2), ((1, 10, 12), 1), ((3, 32, 32), 3)])
def test_dcgan_handles_any_image_size(shape, stages):
    spec = DataSpec(shape=shape, kind="continuous", num_levels=256, name="img")
    model = build("dcgan", spec)
    assert model.network == "conv" and gan.conv_stages(*shape[1:]) == stages
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in model.G.modules()) == stages
    model.eval()
    x = model.sample(3, generator=torch.Generator().manual_seed(0))
    assert x.shape == (3, *shape) and 0 <= x.min() and x.max() <= 1
    out = model.train().loss(batch(spec, n=4), "discriminator")
    assert torch.isfinite(out.loss)


def test_dcgan_uses_mlp_networks_on_points_and_conv_there_is_an_error():
    model = build("dcgan", REAL)
    assert model.network == "mlp" and isinstance(model.D, gan.MLPDiscriminator)
    with pytest.raises(UserError, match="network='conv' needs images"):
        build("dcgan", REAL, network="conv")
    with pytest.raises(UserError, match="at least 8x8"):
        build("gan", DataSpec(shape=(1, 4, 4), kind="continuous", name="tiny"), network="conv")
    with pytest.raises(UserError, match="tokens"):
        build("gan", DataSpec(shape=(5,), kind="tokens", vocab_size=3, name="text"))


def test_sample_kinds_and_binary_threshold():
    model = build("gan", BINARY).eval()
    with torch.no_grad():
        probs = (model.generate(model.noise(6, torch.Generator().manual_seed(0))) + 1) / 2  # G's Bernoulli means
    draw = model.sample(6, generator=torch.Generator().manual_seed(0))
    mean = model.sample(6, generator=torch.Generator().manual_seed(0), mean=True)
    assert set(draw.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(mean, (probs > 0.5).float())
    discrete = DataSpec(shape=(1, 8, 8), kind="discrete", num_levels=17, name="levels")
    x = build("gan", discrete).eval().sample(4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, x.round()) and x.min() >= 0 and x.max() <= 16


def test_conditional_gan_takes_labels():
    model = build("gan", IMAGE, conditional=True, network="conv")
    b = batch(IMAGE, labels=True)
    for phase in ("discriminator", "generator"):
        assert torch.isfinite(model.loss(b, phase).loss)
    model.eval()
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a, b_ = model.sample(4, generator=g(), cond=torch.tensor([0, 1, 2, 3])), model.sample(4, generator=g(), cond=torch.tensor([9, 9, 9, 9]))
    assert a.shape == (4, 1, 8, 8) and not torch.equal(a, b_)  # the label changes the sample
    with pytest.raises(UserError, match="cond="):
        model.sample(4)
    with pytest.raises(UserError, match="conditional=true needs labelled data"):
        build("gan", BINARY, conditional=True)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "remedy",
    [{"minibatch_std": True}, {"pack": 2}, {"feature_matching": True}, {"unrolled_steps": 2}, {"pack": 2, "minibatch_std": True, "conditional": True}],
    ids=["mbstd", "pack", "fm", "unrolled", "all"],
)
def test_remedies_work_with_every_gan(name, remedy):
    for spec, net in [(REAL, "mlp"), (IMAGE, "conv")]:
        model = build(name, spec, network=net, **remedy)
        b = batch(spec, n=8, labels=bool(remedy.get("conditional")))
        for phase in model.phases():
            model.zero_grad(set_to_none=True)
            out = model.loss(b, phase.name)
            out.loss.backward()
            assert torch.isfinite(out.loss)
            assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in phase.parameters)
            others = [p for p in model.parameters() if not any(p is q for q in phase.parameters)]
            assert all(p.grad is None for p in others), f"{phase.name} puts gradients on the other network"


# -- learning --------------------------------------------------------------------------------------------------


def _distance_to_ring(model: gan.GAN, modes: torch.Tensor) -> float:
    model.eval()
    x = model.sample(1000, generator=torch.Generator().manual_seed(0))
    model.train()
    return torch.cdist(x, modes).min(dim=1).values.mean().item()


def test_gan_moves_samples_to_the_ring():
    ds = deepgen.load_dataset(DataConfig(name="ring8", num_samples=2048))
    modes = torch.tensor(ds.meta["modes"], dtype=torch.float32)
    seed_all(0)
    model = create_model("gan", ds, lr=1e-3, noise_dim=8, g_hidden=(64, 64), d_hidden=(64, 64))
    before = _distance_to_ring(model, modes)  # G(z) starts as a blob near the centre: ~0.85
    Trainer(model, ds, train_config(max_steps=400, batch_size=128, seed=0)).fit()
    after = _distance_to_ring(model, modes)  # ~0.37 (seeds 0-4: 0.36-0.47)
    assert before > 0.6 and after < 0.6 * before, (before, after)

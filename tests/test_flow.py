"""The flow family as models: densities that integrate to one, the logit transform's
log-determinant counted, Glow's actnorm initialised from data once (never on resume),
sampling at a temperature, encode/decode/interpolate, training lowers the NLL, and
`deepgen eval --metrics nll` in nats and bits/dim. (Every layer's inverse and
log-determinant: tests/test_flow_layers.py, tests/test_splines.py; every model through the
capability conformance suite: tests/test_capabilities.py.)"""

from __future__ import annotations

import math

import pytest
import torch

import deepgen
from deepgen.data import DataConfig
from deepgen.data.dataset import Batch, DataSpec
from deepgen.errors import UserError
from deepgen.nn import flows as fl
from deepgen.nn.flows import BatchNorm
from deepgen.training import TrainConfig, Trainer, seed_all

FLOWS = ["realnvp", "glow", "maf", "nsf"]
SMALL = {
    "realnvp": {"layers": 4, "hidden": (16,)},
    "glow": {"steps": 3, "hidden": (16,)},
    "maf": {"layers": 3, "hidden": (16,)},
    "nsf": {"layers": 2, "hidden": (16,), "tail_bound": 4.0},
}


def _perturbed(name: str, spec: DataSpec, seed: int = 0, scale: float = 0.2, **kw) -> deepgen.GenerativeModel:
    torch.manual_seed(seed)
    model = deepgen.create_model(name, spec, **{**SMALL[name], **kw}).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model.eval()


def _grid(lo: float, hi: float, n: int) -> tuple[torch.Tensor, float]:
    step = (hi - lo) / n
    c = torch.linspace(lo + step / 2, hi - step / 2, n, dtype=torch.float64)
    xx, yy = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1), step * step


@pytest.mark.parametrize("name", FLOWS)
def test_density_on_the_plane_integrates_to_one(name):
    """Random non-trivial weights: exp(log p) summed over a fine grid of [-9, 9]^2 is 1."""
    model = _perturbed(name, DataSpec((2,), "real"))
    x, area = _grid(-9.0, 9.0, 400)
    with torch.no_grad():
        mass = (model.log_prob(x).exp() * area).sum().item()
    assert mass == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("name", FLOWS)
def test_density_on_the_unit_square_counts_the_logit(name):
    """[0, 1] data goes through y = logit(a + (1 - 2a) x) (RealNVP sec. 4.1), and its
    log-determinant is part of log p: the mass of the unit square under p(x) is the mass
    of the logit's box [logit(a), logit(1 - a)]^2 under the body's density of y. (It is
    below 1 by the base mass outside the box: a sub-normalised density, whose -log p and
    bits/dim are upper bounds, as every flow with this transform.) RealNVP's alpha = 0.05:
    the default 1e-6 puts spikes at the square's edges that a grid cannot integrate."""
    model = _perturbed(name, DataSpec((2,), "continuous"), scale=0.1, logit_alpha=0.05)
    x, area = _grid(0.0, 1.0, 600)
    with torch.no_grad():
        mass_x = (model.log_prob(x).exp() * area).sum().item()
        a = model.config.logit_alpha
        edge = math.log(a / (1 - a))
        y, area_y = _grid(edge, -edge, 600)
        z, log_det = model.body(y)
        mass_y = ((-0.5 * (z * z).sum(1) - math.log(2 * math.pi) + log_det).exp() * area_y).sum().item()
    assert mass_x == pytest.approx(mass_y, abs=3e-3) and 0.5 < mass_x <= 1.0


def test_conditional_densities_integrate_to_one_per_class():
    spec = DataSpec((2,), "real", num_classes=3)
    for name in FLOWS:
        model = _perturbed(name, spec, scale=0.1, conditional=True)
        x, area = _grid(-16.0, 16.0, 500)
        masses = []
        with torch.no_grad():
            for k in range(3):
                masses.append((model.log_prob(x, cond=torch.full((len(x),), k)).exp() * area).sum().item())
        assert masses == pytest.approx([1.0] * 3, abs=3e-3), name
        near = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))  # inside the splines' bounds
        with torch.no_grad():
            a = model.log_prob(near, cond=torch.zeros(5, dtype=torch.long))
            b = model.log_prob(near, cond=torch.ones(5, dtype=torch.long))
        assert not torch.allclose(a, b), f"{name}: the label changes nothing"


def test_the_first_dimension_of_a_conditional_made_sees_the_condition():
    """MADE's first dimension has no hidden unit below it: the context reaches it through
    the unmasked context-to-output map, so in a conditional MADE, MAF layer or
    autoregressive spline its output (and p(x_1 | y)) moves with y; the other dimensions
    stay autoregressive in x."""
    from deepgen.nn.masked import MADE

    torch.manual_seed(0)
    made = MADE(3, (16,), out_per_dim=2, context=2)
    with torch.no_grad():
        for p in made.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(4, 3)
    a, b = made(x, torch.tensor([[1.0, 0.0]] * 4)), made(x, torch.tensor([[0.0, 1.0]] * 4))
    assert not torch.allclose(a[:, 0], b[:, 0])
    x2 = x.clone()
    x2[:, 2] += 1.0  # the last dimension feeds no output
    torch.testing.assert_close(made(x2, torch.tensor([[1.0, 0.0]] * 4)), a)
    layer = fl.MaskedAffineAutoregressive(3, (16,), 2)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    za, _ = layer(x, torch.tensor([[1.0, 0.0]] * 4))
    zb, _ = layer(x, torch.tensor([[0.0, 1.0]] * 4))
    assert not torch.allclose(za[:, 0], zb[:, 0])


def test_image_flows_invert_and_count_every_log_determinant():
    """On 8-bit-like images, log p(x) = log N(z) + log|det|, with the logit's part: the
    figure equals the change of variables computed from autograd's Jacobian."""
    spec = DataSpec((1, 4, 4), "continuous", num_levels=256)
    for name, kw in (("realnvp", {"scales": 2, "couplings": 1, "channels": 4}), ("glow", {"levels": 2, "steps": 1, "channels": 4})):
        torch.manual_seed(0)
        model = deepgen.create_model(name, spec, **kw).double()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        model.eval()
        x = torch.rand(2, 1, 4, 4, dtype=torch.float64) * 0.9 + 0.05
        jac = torch.autograd.functional.jacobian(lambda v, m=model: m(v.reshape(1, 1, 4, 4))[0].reshape(-1), x[0].reshape(-1))
        z, _ = model(x[:1])
        expected = -0.5 * (z * z).sum() - 8 * math.log(2 * math.pi) + torch.linalg.slogdet(jac)[1]
        assert model.log_prob(x[:1]).item() == pytest.approx(expected.item(), rel=1e-9, abs=1e-8), name


def test_glow_actnorm_is_initialised_from_data_once_and_restored_on_resume(tmp_path):
    data = DataConfig(name="digits", max_train=128)
    ds = deepgen.load_dataset(data)
    seed_all(0)
    model = deepgen.create_model("glow", ds, levels=1, steps=2, channels=8)
    cfg = TrainConfig(epochs=1, batch_size=32, device="cpu", progress=False, tensorboard=False, log_every=1, max_steps=2)
    trainer = Trainer(model, ds, cfg, tmp_path / "run", data_config=data)
    trainer.fit()
    norms = [m for m in model.modules() if type(m).__name__ == "ActNorm"]
    assert norms and all(bool(m.initialized) for m in norms)
    # The first actnorm's outputs on the first batch were standardised (before any step):
    fresh = deepgen.create_model("glow", ds, levels=1, steps=2, channels=8)
    batch = Batch(ds.convert(ds.train.x[:32]), ds.train.y[:32])
    torch.manual_seed(5)
    fresh.data_init(batch)
    first = norms[0]
    torch.manual_seed(5)  # the same dequantization noise as data_init drew
    x = deepgen.data.dequantize(batch.x, ds.spec)
    pre, _ = fresh.pre(x, None)
    out, _ = fresh.body.levels[0].layers[1](fresh.body.levels[0].layers[0](pre)[0])
    assert out.mean(dim=(0, 2, 3)).abs().max() < 1e-4 and (out.std(dim=(0, 2, 3), unbiased=False) - 1).abs().max() < 1e-3
    assert first is not fresh.body.levels[0].layers[1]
    # Resume restores the scales: the trainer does not initialise again.
    before = {k: v.clone() for k, v in model.state_dict().items()}
    resumed = Trainer.resume(tmp_path / "run", max_steps=2)
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("name", FLOWS)
def test_sampling_temperature_encode_decode_and_interpolate(name):
    spec = DataSpec((3,), "real")
    model = _perturbed(name, spec)
    gen = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    a = model.sample(500, generator=gen())
    model.config = model.config.replace(temperature=0.5)
    b = model.sample(500, generator=gen())
    assert a.shape == (500, 3) and b.std() < a.std()
    with torch.no_grad():
        z = model.encode(a[:4])
        assert torch.allclose(model.decode(z), a[:4], atol=1e-8)
        path = model.interpolate(a[0], a[1], steps=5)
    assert path.shape == (5, 3) and torch.allclose(path[0], a[0], atol=1e-8) and torch.allclose(path[-1], a[1], atol=1e-8)
    model.config = model.config.replace(temperature=0.0)  # the mode (mean=True no longer means z = 0)
    mode = model.sample(2)
    assert torch.allclose(mode[0], mode[1])


@pytest.mark.parametrize("name", FLOWS)
def test_training_lowers_the_nll_on_a_two_d_mixture(name):
    data = DataConfig(name="ring8", num_samples=512)
    ds = deepgen.load_dataset(data)
    seed_all(0)
    model = deepgen.create_model(name, ds, **SMALL[name], lr=3e-3)
    x = ds.convert(ds.test.x[:256])
    with torch.no_grad():
        before = -model.log_prob(x).mean().item()
    cfg = TrainConfig(epochs=20, batch_size=64, device="cpu", progress=False, tensorboard=False, val_limit=0, log_every=10)
    Trainer(model, ds, cfg, None, data_config=data).fit()
    with torch.no_grad():
        after = -model.log_prob(x).mean().item()
    assert math.isfinite(after) and after < before - 0.3, (before, after)


def test_eval_reports_nats_and_bits_per_dim(tmp_path, capsys):
    from deepgen.cli import main

    run = tmp_path / "run"
    args = ["train", "realnvp", "--data", "digits", "--set", "max_train=128", "--set", "scales=2", "--set", "couplings=1",
            "--set", "channels=8", "--epochs", "1", "--set", "progress=false", "--set", "tensorboard=false", "--out", str(run)]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--metrics", "nll", "--limit", "64", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "nll" in out and "bits/dim" in out
    import json

    figures = json.loads((run / "eval.json").read_text())["nll"]["test"]["values"]
    run_model = deepgen.load_run(run).model
    # bits/dim = (NLL / D - ln(bin width)) / ln 2, D = 64 pixels, 17 levels: the bin width counted.
    assert figures["nll_bin_width"] == pytest.approx(1 / 17)
    assert figures["nll_bpd"] == pytest.approx((figures["nll"] / 64 + math.log(17)) / math.log(2), rel=1e-6)
    assert run_model.likelihood_info().kind == "exact" and not run_model.likelihood_info().discrete


# -- the vector bodies' regularisers: batch norm (norm=) and dropout (dropout=) --------------------


def _log_abs_det(f, x: torch.Tensor) -> torch.Tensor:
    jac = torch.autograd.functional.jacobian(lambda v: f(v).reshape(-1), x, vectorize=True).reshape(x.numel(), x.numel())
    sign, logabs = torch.linalg.slogdet(jac)
    assert sign != 0
    return logabs


def _batchnorm(seed: int = 0) -> BatchNorm:
    """A float64 BatchNorm(5) in eval mode with every parameter and running statistic moved."""
    torch.manual_seed(seed)
    layer = BatchNorm(5).double()
    with torch.no_grad():
        layer.log_gamma.normal_(0, 0.5)
        layer.beta.normal_(0, 0.5)
        layer.running_mean.normal_(0, 1.0)
        layer.running_var.uniform_(0.2, 3.0)
    return layer.eval()


def test_batchnorm_layer_inverts_and_its_log_det_is_the_jacobians():
    """Eval mode (the density the benchmarks report): an elementwise affine map with the
    running statistics; x -> z -> x and z -> x -> z exactly, log_det = autograd's."""
    layer = _batchnorm()
    g = torch.Generator().manual_seed(1)
    x = torch.randn((3, 5), generator=g, dtype=torch.float64) * 1.5 + 0.3
    z, log_det = layer(x)
    assert log_det.shape == (3,) and log_det.dtype == torch.float64 and (z - x).abs().max() > 1e-2
    torch.testing.assert_close(layer.inverse(z), x, rtol=1e-6, atol=1e-6)
    z0 = torch.randn((3, 5), generator=g, dtype=torch.float64)
    torch.testing.assert_close(layer(layer.inverse(z0))[0], z0, rtol=1e-6, atol=1e-6)
    for i in range(3):
        torch.testing.assert_close(log_det[i], _log_abs_det(lambda v: layer(v[None])[0], x[i]), rtol=1e-7, atol=1e-7)
        torch.testing.assert_close(-log_det[i], _log_abs_det(lambda v: layer.inverse(v[None]), z[i]), rtol=1e-7, atol=1e-7)


def test_batchnorm_training_uses_the_batch_and_moves_the_running_statistics():
    layer = _batchnorm().train()
    g = torch.Generator().manual_seed(2)
    x = torch.randn((256, 5), generator=g, dtype=torch.float64) * 3.0 + 2.0
    before_mean, before_var = layer.running_mean.clone(), layer.running_var.clone()
    z, log_det = layer(x)
    # The batch comes out with mean beta and std exp(log_gamma), per feature.
    torch.testing.assert_close(z.mean(0), layer.beta.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(z.std(0, unbiased=False), layer.log_gamma.detach().exp(), rtol=1e-4, atol=1e-4)
    var = x.var(0, unbiased=False)
    torch.testing.assert_close(log_det, (layer.log_gamma.detach() - 0.5 * torch.log(var + layer.eps)).sum().expand(256))
    torch.testing.assert_close(layer.running_mean, 0.9 * before_mean + 0.1 * x.mean(0))
    torch.testing.assert_close(layer.running_var, 0.9 * before_var + 0.1 * var)
    fresh = BatchNorm(5).double().eval()
    torch.testing.assert_close(fresh(x)[0], x, rtol=1e-5, atol=1e-5)  # starts as the identity (up to eps)
    torch.testing.assert_close(fresh.inverse(x), x, rtol=1e-5, atol=1e-5)


VECTOR_OPTIONS = [
    ("maf", {"norm": "batchnorm", "dropout": 0.2}),
    ("maf", {"norm": "actnorm"}),
    ("nsf", {"norm": "batchnorm", "dropout": 0.2}),
    ("nsf", {"norm": "actnorm", "autoregressive": True, "dropout": 0.1}),
    ("realnvp", {"norm": "batchnorm", "dropout": 0.3}),
    ("glow", {"dropout": 0.2}),
]


def _regularised(name: str, spec: DataSpec, options: dict, seed: int = 0) -> deepgen.GenerativeModel:
    """A float64 model with ``options``: one training-mode pass (actnorm initialises, the
    running statistics move), then every parameter and statistic perturbed; eval mode."""
    torch.manual_seed(seed)
    model = deepgen.create_model(name, spec, **{**SMALL[name], **options}).double().train()
    model(torch.randn(64, spec.dim, dtype=torch.float64) * 2 + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        for m in model.modules():
            if isinstance(m, BatchNorm):
                m.running_mean.add_(torch.randn_like(m.running_mean) * 0.3)
                m.running_var.mul_(torch.empty_like(m.running_var).uniform_(0.5, 2.0))
    return model.eval()


@pytest.mark.parametrize("name,options", VECTOR_OPTIONS)
def test_regularised_vector_flows_invert_and_count_every_log_determinant(name, options):
    """With norm layers and dropout the eval-mode model is still one exact bijection:
    x -> z -> x to 1e-5 in float64, and log p(x) = log N(z) + log |det J| of autograd's
    Jacobian (the batch-norm and actnorm layers' log-determinants counted)."""
    spec = DataSpec((4,), "real")
    model = _regularised(name, spec, options)
    if "norm" in options:  # one before every transform
        kind = BatchNorm if options["norm"] == "batchnorm" else fl.ActNorm
        assert sum(isinstance(m, kind) for m in model.modules()) == model.config.layers
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert bool(drops) == bool(options.get("dropout")) and all(d.p == options.get("dropout") for d in drops)
    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 1.5
    with torch.no_grad():
        z, log_det = model(x)
        assert (model.inverse(z) - x).abs().max() < 1e-5
        assert torch.equal(model(x)[0], z)  # no dropout in eval mode
    for i in range(2):
        logabs = _log_abs_det(lambda v: model(v[None])[0], x[i])
        assert log_det[i].item() == pytest.approx(logabs.item(), rel=1e-7, abs=1e-7)
        expected = -0.5 * (z[i] * z[i]).sum() - 2 * math.log(2 * math.pi) + logabs
        assert model.log_prob(x[i : i + 1]).item() == pytest.approx(expected.item(), rel=1e-7, abs=1e-7)


@pytest.mark.parametrize("name,options", [o for o in VECTOR_OPTIONS if o[0] != "glow"][:3])
def test_regularised_densities_on_the_plane_integrate_to_one(name, options):
    model = _regularised(name, DataSpec((2,), "real"), options)
    x, area = _grid(-12.0, 12.0, 400)
    with torch.no_grad():
        mass = (model.log_prob(x).exp() * area).sum().item()
    assert mass == pytest.approx(1.0, abs=3e-3)


def test_dropout_acts_in_training_only():
    model = deepgen.create_model("maf", DataSpec((4,), "real"), layers=2, hidden=(32,), dropout=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    x = torch.randn(8, 4)
    model.train()
    assert not torch.equal(model.log_prob(x), model.log_prob(x))
    model.eval()
    assert torch.equal(model.log_prob(x), model.log_prob(x))


@pytest.mark.parametrize("name", ["realnvp", "maf", "nsf"])
def test_weights_trained_with_dropout_load_without_it(name):
    """Dropout adds no weights and renames none: a state_dict of the flow with dropout
    loads into the same flow without it, and in eval mode both give the same density."""
    spec = DataSpec((4,), "real")
    with_dropout = deepgen.create_model(name, spec, layers=2, hidden=(16, 16), dropout=0.3).eval()
    plain = deepgen.create_model(name, spec, layers=2, hidden=(16, 16)).eval()
    plain.load_state_dict(with_dropout.state_dict())  # strict: same names, same shapes
    x = torch.randn(6, 4)
    torch.testing.assert_close(plain.log_prob(x), with_dropout.log_prob(x))


@pytest.mark.parametrize("name", ["realnvp", "maf", "nsf"])
def test_vector_actnorm_is_initialised_from_data_before_the_first_step(name):
    """norm=actnorm: the trainer's data-dependent initialisation (before the first step, the
    broadcast under torchrun and the EMA copy) gives zero-mean unit-variance outputs of the
    first actnorm on its batch, and the EMA copy starts from those weights."""
    ds = deepgen.load_dataset(DataConfig(name="moons", max_train=512))
    seed_all(0)
    model = deepgen.create_model(name, ds, layers=2, hidden=(16,), norm="actnorm")
    trainer = Trainer(model, ds, TrainConfig(epochs=1, batch_size=256, max_steps=1, ema=0.5, progress=False, tensorboard=False, log_every=1))
    ema = trainer.eval_model  # taken before fit: must stay the live copy
    trainer.fit()
    first = next(m for m in model.modules() if isinstance(m, fl.ActNorm))
    assert bool(first.initialized)
    batch = next(deepgen.data.iterate(ds, "train", 256, torch.device("cpu"), torch.Generator().manual_seed(7), limit=256))
    with torch.no_grad():
        out, _ = first(batch.x)
    # one Adam step moved the weights a little since the initialisation
    assert out.mean(0).abs().max() < 0.05 and (out.std(0, unbiased=False) - 1).abs().max() < 0.05
    assert ema is trainer.eval_model and bool(next(m for m in ema.modules() if isinstance(m, fl.ActNorm)).initialized)


def test_mistakes_are_user_errors():
    with pytest.raises(UserError, match="multiples of 8"):
        deepgen.create_model("glow", DataSpec((1, 28, 28), "continuous", num_levels=256), levels=3)
    with pytest.raises(UserError, match="autoregressive=true"):
        deepgen.create_model("nsf", DataSpec((1,), "real"))
    with pytest.raises(UserError):
        deepgen.create_model("maf", DataSpec((4,), "binary"))
    with pytest.raises(UserError, match="logit_alpha"):
        deepgen.create_model("maf", DataSpec((4,), "real"), logit_alpha=0.7)
    with pytest.raises(UserError, match="norm must be one of"):
        deepgen.create_model("maf", DataSpec((4,), "real"), norm="layernorm")
    with pytest.raises(UserError, match="dropout must be in"):
        deepgen.create_model("nsf", DataSpec((4,), "real"), dropout=1.0)
    with pytest.raises(UserError, match="actnorm in every step"):
        deepgen.create_model("glow", DataSpec((4,), "real"), norm="batchnorm")
    with pytest.raises(UserError, match="size the vector networks"):
        deepgen.create_model("realnvp", DataSpec((1, 8, 8), "continuous", num_levels=256), dropout=0.1)

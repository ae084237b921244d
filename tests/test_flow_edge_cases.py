"""The flows on the cases a demanding user meets and the other flow tests do not name:
RGB, non-square and odd-sized images against every squeeze setting (one clear error naming
what fits), one-dimensional tables, pixels outside [0, 1] (-inf, or a clear error where no
code exists), the logit near 1, the draws of a model in training mode, temperatures 0 and 1
with n = 1, float64 and bf16, a hand-checked nats / bits-per-dim figure, NSF across its tail
bound, a new trainer on a trained flow (actnorm kept), run-folder round trips and the CLI."""

from __future__ import annotations

import math
import re

import pytest
import torch

import deepgen
from deepgen.data import DataConfig
from deepgen.data.dataset import Batch, DataSpec
from deepgen.data.dequantize import dequantize
from deepgen.errors import UserError
from deepgen.nn import flows as fl
from deepgen.training import TrainConfig, Trainer, seed_all

IMAGE = {
    "realnvp": {"scales": 2, "couplings": 1, "channels": 4, "blocks": 1},
    "glow": {"levels": 2, "steps": 1, "channels": 4},
    "maf": {"layers": 2, "hidden": (8,)},
    "nsf": {"layers": 2, "hidden": (8,)},
}
VECTOR = {
    "realnvp": {"layers": 2, "hidden": (8,)},
    "glow": {"steps": 2, "hidden": (8,)},
    "maf": {"layers": 2, "hidden": (8,)},
    "nsf": {"layers": 2, "hidden": (8,), "tail_bound": 2.0},
}


def _perturbed(name: str, spec: DataSpec, settings: dict, scale: float = 0.1, seed: int = 0, **kw) -> deepgen.GenerativeModel:
    """A model with every weight moved (so that no layer is the identity), in eval mode."""
    torch.manual_seed(seed)
    model = deepgen.create_model(name, spec, **{**settings, **kw})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    for m in model.modules():  # as after training: a training-mode pass must not initialise them
        if isinstance(m, fl.ActNorm):
            m.initialized.fill_(True)
    return model.eval()


def _image_spec(shape: tuple[int, int, int], classes: int | None = None) -> DataSpec:
    return DataSpec(shape, "continuous", num_levels=256, num_classes=classes)


# -- images: every squeeze setting on RGB, non-square and odd sizes --------------------------------


@pytest.mark.parametrize(
    ("name", "shape", "settings"),
    [
        ("realnvp", (3, 6, 10), {"scales": 2, "couplings": 1, "channels": 4}),  # RGB, non-square, halves once
        ("realnvp", (3, 7, 5), {"scales": 1, "couplings": 1, "channels": 4}),  # odd: no squeeze
        ("realnvp", (3, 4, 12), {"scales": 3, "couplings": 1, "channels": 4, "blocks": 1}),
        ("glow", (3, 6, 10), {"levels": 1, "steps": 1, "channels": 4}),
        ("glow", (3, 4, 8), {"levels": 2, "steps": 1, "channels": 4}),
        ("glow", (1, 2, 2), {"levels": 1, "steps": 2, "channels": 4}),  # squeezed to 1 x 1
    ],
)
def test_images_of_any_fitting_shape_invert_and_sample(name, shape, settings):
    model = _perturbed(name, _image_spec(shape), settings)
    x = torch.rand(3, *shape) * 0.9 + 0.05
    with torch.no_grad():
        z, log_det = model(x)
        back = model.inverse(z)
        lp = model.log_prob(x)
        samples = model.sample(2, generator=torch.Generator().manual_seed(0))
    d = math.prod(shape)
    assert z.shape == (3, d) and log_det.shape == (3,)
    torch.testing.assert_close(back, x, atol=2e-5, rtol=0)
    expected = -0.5 * (z * z).sum(1) - 0.5 * d * math.log(2 * math.pi) + log_det
    torch.testing.assert_close(lp, expected)
    assert samples.shape == (2, *shape) and bool(((samples >= 0) & (samples <= 1)).all())
    assert torch.equal(samples, (samples * 255).round() / 255)  # on the data's levels


@pytest.mark.parametrize(
    ("name", "shape", "setting", "value", "fits"),
    [
        ("realnvp", (1, 6, 10), "scales", 3, "It takes scales from 1 to 2."),
        ("realnvp", (3, 7, 7), "scales", 2, "It takes scales=1."),
        ("realnvp", (1, 28, 28), "scales", 4, "It takes scales from 1 to 3."),
        ("glow", (1, 6, 10), "levels", 2, "It takes levels=1."),
        ("glow", (1, 28, 20), "levels", 3, "It takes levels from 1 to 2."),
        ("glow", (3, 7, 7), "levels", 1, "no levels fits an odd height or width"),
        ("glow", (3, 1, 8), "levels", 1, "use realnvp with scales=1, or maf or nsf"),
    ],
)
def test_squeezes_that_do_not_fit_are_one_error_naming_what_fits(name, shape, setting, value, fits):
    with pytest.raises(UserError) as err:
        deepgen.create_model(name, _image_spec(shape), **{setting: value})
    message = str(err.value)
    assert fits in message and f"{setting}={value}" in message and f"{shape[1]} x {shape[2]}" in message
    if "takes" in fits:  # the largest value it names does build
        most = int(fits.rstrip(".").split("=")[-1].split()[-1])
        deepgen.create_model(name, _image_spec(shape), **{setting: most, "channels": 4})


# -- tables: one dimension, many dimensions, settings for images ----------------------------------


@pytest.mark.parametrize("name", ["realnvp", "glow"])
def test_couplings_on_one_dimensional_data_are_a_user_error(name):
    with pytest.raises(UserError, match="at least 2; this data has 1.*maf, or nsf with autoregressive=true"):
        deepgen.create_model(name, DataSpec((1,), "real"))


@pytest.mark.parametrize(("name", "kw"), [("maf", {}), ("nsf", {"autoregressive": True})])
def test_one_dimensional_densities_integrate_to_one(name, kw):
    model = _perturbed(name, DataSpec((1,), "real"), VECTOR[name], scale=0.3, **kw).double()
    step = 16 / 4000
    grid = torch.linspace(-8 + step / 2, 8 - step / 2, 4000, dtype=torch.float64).unsqueeze(1)
    with torch.no_grad():
        mass = model.log_prob(grid).exp().sum().item() * step
    assert mass == pytest.approx(1.0, abs=2e-3)


def test_blocks_on_vectors_is_refused():
    with pytest.raises(UserError, match="blocks=2: .*convolutional image networks"):
        deepgen.create_model("realnvp", DataSpec((4,), "real"), blocks=2)


@pytest.mark.parametrize(("name", "spec", "setting"), [
    ("realnvp", DataSpec((4,), "real"), {"scales": 2}),
    ("realnvp", DataSpec((4,), "real"), {"couplings": 1, "channels": 16}),
    ("glow", DataSpec((2,), "real"), {"levels": 3}),
    ("glow", DataSpec((6,), "real"), {"channels": 32}),
    ("realnvp", DataSpec((1, 8, 8), "continuous", num_levels=256), {"layers": 2}),
    ("realnvp", DataSpec((1, 8, 8), "continuous", num_levels=256), {"hidden": (32,)}),
    ("glow", DataSpec((1, 8, 8), "continuous", num_levels=256), {"hidden": (32,)}),
    ("glow", DataSpec((1, 8, 8), "continuous", num_levels=256), {"dropout": 0.2}),
])
def test_settings_of_the_other_kind_of_body_are_refused_not_ignored(name, spec, setting):
    """A multi-scale flow's image settings on a table (or its MLP settings on images) would
    build the very same flow as without them: one error naming them, not a silent no-op."""
    key, value = next(iter(setting.items()))
    with pytest.raises(UserError, match=re.escape(f"{key}={value!r}")):
        deepgen.create_model(name, spec, **setting)
    # the defaults, and settings of the body that is built, are accepted
    deepgen.create_model(name, spec)
    deepgen.create_model(name, spec, steps=2) if name == "glow" else deepgen.create_model(name, spec, **(
        {"layers": 2} if spec.shape == (4,) else {"scales": 2, "couplings": 1, "channels": 8}))


@pytest.mark.parametrize("name", ["realnvp", "glow", "maf", "nsf"])
def test_high_dimensional_tables_invert_with_finite_gradients(name):
    model = _perturbed(name, DataSpec((300,), "real"), VECTOR[name], scale=0.01)
    x = torch.randn(4, 300)
    z, _ = model(x)
    torch.testing.assert_close(model.inverse(z.detach()), x, atol=1e-4, rtol=1e-4)
    model.train()
    model.loss(Batch(x, None)).loss.backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)


# -- values outside [0, 1] ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["realnvp", "glow", "maf", "nsf"])
def test_log_prob_outside_the_unit_box_is_minus_inf(name):
    """The density of [0, 1] data is 0 outside [0, 1]^D: -inf, never NaN, whatever the
    mode; the rows inside keep their values, and gradients stay finite."""
    shape = (1, 4, 4)
    model = _perturbed(name, _image_spec(shape), IMAGE[name])
    x = torch.rand(4, *shape) * 0.9 + 0.05
    with torch.no_grad():
        inside = model.log_prob(x)
    bad = x.clone()
    bad[0, 0, 0, 0] = 1.0 + 1e-3
    bad[1, 0, 2, 3] = -0.5
    for train in (False, True):
        model.train(train)
        w = bad.clone().requires_grad_(True)
        lp = model.log_prob(w)
        assert lp[0].item() == -math.inf and lp[1].item() == -math.inf
        torch.testing.assert_close(lp[2:], inside[2:])
        lp.sum().backward()  # -inf, but no NaN gradient: the rows outside get 0
        assert bool(torch.isfinite(w.grad).all()) and w.grad[:2].abs().max() == 0 and w.grad[2:].abs().max() > 0
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
        model.zero_grad()
    model.eval()
    with pytest.raises(UserError, match="NaN"):
        model.log_prob(x.masked_fill(x > 0.5, float("nan")))


@pytest.mark.parametrize("name", ["glow", "maf"])
def test_codes_of_values_outside_the_unit_box_are_a_user_error(name):
    shape = (1, 4, 4)
    model = _perturbed(name, _image_spec(shape), IMAGE[name])
    x = torch.rand(2, *shape) * 0.5
    x[1, 0, 3, 3] = 1.5
    with pytest.raises(UserError, match=r"encode: .*values from 0(\.\d+)? to 1\.5, which have no code"):
        model.encode(x)
    x[1, 0, 3, 3] = 1.0
    assert bool(torch.isfinite(model.encode(x)).all())  # 0 and 1 themselves have codes
    with pytest.raises(UserError, match="forward: .*no code"):
        model(x - 1.0)
    with pytest.raises(UserError, match="no code"):
        model.interpolate(x[0], x[1] + 2.0, steps=3)
    with pytest.raises(UserError, match=r"inverse takes codes z \(N, 16\)"):
        model.inverse(torch.zeros(2, 15))


def test_the_logit_is_as_exact_near_one_as_near_zero():
    """float32: log(1 - p) from 1 - x, so x and 1 - x give mirrored values near both ends
    (before, 0.013 nats per value off at x = 1), and a tiny alpha stays finite at x = 1."""
    x = torch.tensor([[0.0, 2**-24, 2**-20, 2**-17, 0.25]])  # 1 - x exact in float32
    for alpha in (1e-6, 0.05):
        layer = fl.Logit(alpha)
        y0, ld0 = layer(x)
        y1, ld1 = layer(1 - x)
        ref, ref_ld = layer(1 - x.double())
        torch.testing.assert_close(y1, -y0, atol=1e-5, rtol=0)
        torch.testing.assert_close(ld1, ld0, atol=1e-5, rtol=0)
        torch.testing.assert_close(y1.double(), ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(ld1.double(), ref_ld, atol=1e-5, rtol=0)
    y, ld = fl.Logit(1e-9)(torch.ones(1, 3))
    assert bool(torch.isfinite(y).all()) and bool(torch.isfinite(ld).all())
    assert y[0, 0].item() == pytest.approx(math.log((1 - 1e-9) / 1e-9), rel=1e-6)


# -- the figures: nats and bits/dim by hand -----------------------------------------------------------


def _identity_log_density(y: torch.Tensor, alpha: float) -> torch.Tensor:
    """log p(y) of a flow whose body is the identity (every coupling starts so): the logit
    transform's log-determinant plus log N(logit(p); 0, 1) per value, summed per example."""
    p = alpha + (1 - 2 * alpha) * y.double()
    logit = torch.log(p) - torch.log1p(-p)
    per_value = -0.5 * logit**2 - 0.5 * math.log(2 * math.pi) + math.log(1 - 2 * alpha) - torch.log(p) - torch.log1p(-p)
    return per_value.flatten(1).sum(1)


def test_nats_and_bits_per_dim_agree_with_the_logit_by_hand():
    spec = _image_spec((1, 2, 2))
    model = deepgen.create_model("realnvp", spec, scales=1, couplings=1, channels=4).double()
    alpha = model.config.logit_alpha
    # Every value at 0.5: logit 0, so log p = D (log 4 + log(1 - 2 alpha) - log(2 pi) / 2).
    half = torch.full((1, 1, 2, 2), 0.5, dtype=torch.float64)
    assert model.log_prob(half).item() == pytest.approx(4 * (math.log(4) + math.log(1 - 2 * alpha) - 0.5 * math.log(2 * math.pi)), abs=1e-12)
    # The ends mirror each other (the same density at 0 and at 1, in float32 too).
    ends = torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)])
    torch.testing.assert_close(model.float().log_prob(ends), _identity_log_density(ends, alpha).float(), atol=1e-3, rtol=0)
    model.double()
    # The loss at the same dequantization draws: nats per example and bits/dim with ln 256.
    k = torch.tensor([0.0, 1.0, 128.0, 255.0]).reshape(1, 1, 2, 2).repeat(3, 1, 1, 1) / 255
    torch.manual_seed(3)
    out = model.loss(Batch(k.double(), None))
    torch.manual_seed(3)
    y = dequantize(k.double(), spec)
    assert bool(((y >= k * 255 / 256) & (y < (k * 255 + 1) / 256)).all())  # level k's bin [k/256, (k+1)/256)
    nll = -_identity_log_density(y, alpha).mean().item()
    assert out.logs["nll"].item() == pytest.approx(nll, rel=1e-12)
    assert out.logs["bits_per_dim"].item() == pytest.approx((nll / 4 + math.log(256)) / math.log(2), rel=1e-12)


# -- sampling --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["realnvp", "glow", "maf", "nsf"])
def test_samples_and_interpolations_are_the_eval_map_in_training_mode(name):
    """Dropout acts in training only, so a model left in training mode (a fresh one, or
    after Trainer.fit) still draws the model's samples: the same generator, the same draws
    as in eval mode; the modules' own modes come back afterwards."""
    model = _perturbed(name, DataSpec((3,), "real"), VECTOR[name], scale=0.3, dropout=0.5)
    model.eval()
    expected = model.sample(4, generator=torch.Generator().manual_seed(1))
    x = torch.randn(2, 3)
    model.train()
    model.body.layers[0].eval()  # a mixed mode of the caller's
    for _ in range(2):
        assert torch.equal(model.sample(4, generator=torch.Generator().manual_seed(1)), expected)
        path = model.interpolate(x[0], x[1], steps=3)
        torch.testing.assert_close(path[[0, -1]], x, atol=1e-5, rtol=1e-5)
    assert model.training and not model.body.layers[0].training and model.body.layers[1].training


@pytest.mark.parametrize("name", ["realnvp", "glow"])
def test_temperatures_zero_and_one_with_one_sample_per_class(name):
    spec = _image_spec((3, 4, 4), classes=3)
    model = _perturbed(name, spec, IMAGE[name], conditional=True)
    mode = torch.zeros(1, 48)
    for temperature in (0.0, 1.0):
        model.config = model.config.replace(temperature=temperature)
        for label in range(3):
            one = model.sample(1, cond=label, generator=torch.Generator().manual_seed(2))
            assert one.shape == (1, 3, 4, 4)
            if temperature == 0:  # z = 0: the mode, put on the levels
                expected = (model.decode(mode, cond=torch.tensor([label])).clamp(0, 1) * 256).floor().clamp(max=255) / 255
                torch.testing.assert_close(one, expected)
    model.config = model.config.replace(temperature=0.0)
    rows = model.sample(4, cond=torch.tensor([0, 0, 2, 2]))
    assert torch.equal(rows[0], rows[1]) and torch.equal(rows[2], rows[3]) and not torch.equal(rows[0], rows[2])
    assert model.sample(0, cond=1).shape == (0, 3, 4, 4)


@pytest.mark.parametrize("name", ["realnvp", "glow", "maf", "nsf"])
def test_float64_and_bf16_autocast_give_the_float32_density(name):
    spec = _image_spec((3, 4, 4), classes=2)
    model = _perturbed(name, spec, IMAGE[name], scale=0.05, conditional=True)
    x = torch.rand(3, *spec.shape) * 0.9 + 0.05
    y = torch.tensor([0, 1, 1])
    with torch.no_grad():
        lp = model.log_prob(x, cond=y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lp_bf16 = model.log_prob(x, cond=y)
            samples = model.sample(2, cond=1)
        lp64 = model.double().log_prob(x.double(), cond=y)
        samples64 = model.sample(2, cond=0)
    assert lp_bf16.dtype == torch.float32 and samples.dtype == torch.float32 and bool(torch.isfinite(samples).all())
    assert lp64.dtype == torch.float64 and samples64.dtype == torch.float64
    torch.testing.assert_close(lp_bf16, lp, atol=0.1, rtol=0)
    torch.testing.assert_close(lp64, lp.double(), atol=1e-3, rtol=0)


@pytest.mark.parametrize("autoregressive", [False, True])
def test_nsf_density_is_continuous_across_its_tail_bound(autoregressive):
    """The spline joins the identity tails with slope 1: log p just inside and just outside
    +-B agree, values at +-B invert exactly, and gradients there are finite."""
    model = _perturbed("nsf", DataSpec((2,), "real"), VECTOR["nsf"], scale=0.3, autoregressive=autoregressive).double()
    bound = model.config.tail_bound
    x = torch.tensor([[bound, 0.3], [-bound, -0.2], [0.1, bound], [bound, -bound]], dtype=torch.float64)
    for eps in (1e-7, -1e-7):
        shifted = x + eps * x.sign() * (x.abs() == bound)
        torch.testing.assert_close(model.log_prob(shifted), model.log_prob(x), atol=1e-5, rtol=0)
    z, _ = model(x)
    torch.testing.assert_close(model.inverse(z), x, atol=1e-10, rtol=0)
    w = x.clone().requires_grad_(True)
    model.log_prob(w).sum().backward()
    assert bool(torch.isfinite(w.grad).all())
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)


# -- actnorm: a new trainer on a trained flow ---------------------------------------------------------


def _actnorm_state(model: torch.nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for m in model.modules() if isinstance(m, fl.ActNorm) for t in (m.bias, m.log_scale)]


def test_data_init_keeps_trained_or_loaded_actnorm_and_redoes_a_provisional_one():
    spec = _image_spec((1, 4, 4))
    batch_a = Batch(torch.rand(16, 1, 4, 4), None)
    batch_b = Batch(torch.rand(16, 1, 4, 4) * 0.5, None)
    torch.manual_seed(0)
    model = deepgen.create_model("glow", spec, **IMAGE["glow"])
    reference = deepgen.create_model("glow", spec, **IMAGE["glow"])
    reference.load_state_dict(model.state_dict())
    # A stray training-mode forward (on other data) is provisional: data_init redoes it.
    model.train()
    with torch.no_grad():
        model.log_prob(batch_b.x)
    torch.manual_seed(1)
    model.data_init(batch_a)
    torch.manual_seed(1)
    reference.data_init(batch_a)
    for a, b in zip(_actnorm_state(model), _actnorm_state(reference)):
        torch.testing.assert_close(a, b)
    # A training step makes the values the layer's own: a later data_init keeps them.
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    model.loss(Batch(batch_a.x, None)).loss.backward()
    opt.step()
    trained = _actnorm_state(model)
    model.data_init(batch_b)
    for a, b in zip(_actnorm_state(model), trained):
        assert torch.equal(a, b)
    # So do values loaded from a state dict.
    loaded = deepgen.create_model("glow", spec, **IMAGE["glow"])
    loaded.load_state_dict(model.state_dict())
    loaded.data_init(batch_b)
    for a, b in zip(_actnorm_state(loaded), trained):
        assert torch.equal(a, b)


def test_a_new_trainer_on_a_loaded_flow_starts_from_its_weights(tmp_path):
    """Fine-tuning a run: the new trainer's data_init leaves the trained actnorms alone,
    so the first (almost zero-lr) step leaves the density where it was."""
    data = DataConfig(name="digits", max_train=64)
    ds = deepgen.load_dataset(data)
    seed_all(0)
    model = deepgen.create_model("glow", ds, levels=1, steps=2, channels=4)
    cfg = TrainConfig(epochs=1, batch_size=32, device="cpu", progress=False, tensorboard=False, val_limit=0, log_every=1)
    Trainer(model, ds, cfg, tmp_path / "run", data_config=data).fit()
    x = dequantize(ds.convert(ds.test.x[:16]), ds.spec, torch.Generator().manual_seed(0))
    loaded = deepgen.load_run(tmp_path / "run").model.eval()
    with torch.no_grad():
        before = loaded.log_prob(x)
    tune = TrainConfig(epochs=1, batch_size=32, device="cpu", progress=False, tensorboard=False, val_limit=0, max_steps=1, warmup_steps=10**9)
    Trainer(loaded, ds, tune, None, data_config=data).fit()
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.log_prob(x), before, atol=1e-3, rtol=0)


# -- run folders and the command line -------------------------------------------------------------------


def test_cli_train_eval_sample_with_residual_blocks(tmp_path, capsys):
    """deepgen train realnvp --set blocks=1 writes a run whose model has its residual
    blocks back when loaded, the same density, and eval's bits/dim from its nats."""
    import json

    from deepgen.cli import main

    run = tmp_path / "run"
    args = ["train", "realnvp", "--data", "digits", "--set", "max_train=64", "--set", "scales=2", "--set", "couplings=1",
            "--set", "channels=4", "--set", "blocks=1", "--set", "batch_size=32", "--set", "val_limit=32", "--epochs", "1",
            "--set", "progress=false", "--set", "tensorboard=false", "--set", "picture_samples=4", "--out", str(run)]
    assert main(args) == 0
    loaded = deepgen.load_run(run).model.eval()
    blocks = [m for m in loaded.modules() if type(m).__name__ == "_ResidualBlock"]
    # 4 couplings (scale 1: a checkerboard and a channel one; the last scale: 2 checkerboard), one block each, trained
    assert len(blocks) == 4 and all(b.conv2.weight.abs().sum() > 0 for b in blocks)
    assert main(["eval", str(run), "--metrics", "nll", "--limit", "32", "--quiet"]) == 0
    figures = json.loads((run / "eval.json").read_text())["nll"]["test"]["values"]
    assert figures["nll_bpd"] == pytest.approx((figures["nll"] / 64 + math.log(17)) / math.log(2), rel=1e-6)
    out = tmp_path / "mode.png"
    assert main(["sample", str(run), "--n", "1", "--set", "temperature=0", "--out", str(out)]) == 0
    assert out.stat().st_size > 0
    capsys.readouterr()
    assert main(["train", "glow", "--data", "digits", "--set", "levels=4", "--out", str(tmp_path / "bad")]) == 2
    assert "It takes levels from 1 to 3." in capsys.readouterr().err

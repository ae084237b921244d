"""Session 17's fixes of reported defects, each a case that had no test:

* an actnorm initialised on a batch where a column is constant scaled it by 1 / eps = 1e6
  (and put log 1e6 per such column into every later log-determinant);
* a bf16 (or float16) model's samples of 8-bit data were rounded to levels in the model's
  own dtype, which cannot hold k / 255: the "levels" were off the data's values.
"""

from __future__ import annotations

import math

import pytest
import torch

import deepgen
from deepgen.data.dataset import DataSpec
from deepgen.data.dequantize import nearest_level
from deepgen.nn import flows as fl


def test_actnorm_leaves_a_constant_column_at_scale_one_and_normalises_the_others():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g, dtype=torch.float64) * torch.tensor([2.0, 1.0, 0.5, 3.0], dtype=torch.float64) + 5
    x[:, 1] = 0.0  # all zeros on this batch (a sparse binary column)
    x[:, 2] = 7.25  # a constant far from zero
    layer = fl.ActNorm(4).double()
    layer.initialize(x)
    with torch.no_grad():
        z, log_det = layer(x)
    assert layer.log_scale[1] == 0 and layer.log_scale[2] == 0
    assert torch.allclose(z[:, [1, 2]], torch.zeros(64, 2, dtype=torch.float64))
    for j in (0, 3):
        assert float(z[:, j].mean()) == pytest.approx(0.0, abs=1e-9) and float(z[:, j].std(unbiased=False)) == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(log_det, layer.log_scale.sum().expand(64)) and float(log_det.abs().max()) < 5
    # a later batch where the column varies maps finitely and inverts
    y = torch.randn(8, 4, generator=g, dtype=torch.float64)
    assert torch.allclose(layer.inverse(layer(y)[0]), y, atol=1e-12)


def test_actnorm_on_images_with_a_blank_channel():
    x = torch.rand(16, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    x[:, 0] = 0.5
    layer = fl.ActNorm(3, image=True)
    layer.initialize(x)
    assert layer.log_scale[0] == 0 and bool(torch.isfinite(layer(x)[1]).all())
    assert float(layer.log_scale[1:].detach().abs().max()) > 0.5  # the varying channels are scaled (std about 0.29)


def test_a_tiny_but_real_spread_is_still_normalised():
    x = 1e-3 * torch.randn(256, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    layer = fl.ActNorm(1).double()
    layer.initialize(x)
    assert float(layer(x)[0].detach().std(unbiased=False)) == pytest.approx(1.0, abs=2e-3)  # (eps = 1e-6 of a 1e-3 spread)


EIGHT_BIT = DataSpec((1, 8, 8), "continuous", num_levels=256, name="mnist-like")
LEVELS = torch.arange(256, dtype=torch.float32) / 255


def _on_levels(s: torch.Tensor) -> bool:
    return s.dtype == torch.float32 and torch.equal(s, LEVELS[(s * 255).round().long()])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_nearest_level_of_half_precision_values_is_float32_on_the_datas_levels(dtype):
    x = torch.rand(1000, generator=torch.Generator().manual_seed(3)).to(dtype)
    out = nearest_level(x, EIGHT_BIT)
    assert _on_levels(out)
    assert torch.equal(out, nearest_level(x.float(), EIGHT_BIT))  # the same levels as the float32 values give
    other = DataSpec((1, 8, 8), "continuous", name="no-levels")
    assert nearest_level(x, other).dtype == dtype  # data without levels: untouched


@pytest.mark.parametrize("name", ["dcgan", "ddpm"])
def test_a_bf16_models_samples_of_8_bit_data_are_the_datas_values(name):
    small = {"dcgan": {"noise_dim": 4, "conv_width": 4}, "ddpm": {"channels": 8, "channel_mult": (1, 2), "res_blocks": 1, "heads": 2,
                                                                 "attention": (), "timesteps": 20, "steps": 3}}[name]
    torch.manual_seed(0)
    model = deepgen.create_model(name, EIGHT_BIT, **small).bfloat16().eval()
    s = model.sample(8, generator=torch.Generator().manual_seed(0))
    assert s.shape == (8, 1, 8, 8) and _on_levels(s)


# -- converted (.bfloat16()) VAEs: they crashed (float32 codes into bf16 layers) -------------------

VAE_CASES = [
    (DataSpec((1, 8, 8), "binary"), {}),
    (DataSpec((1, 8, 8), "binary"), {"stochastic_layers": 2, "latent_dim2": 2}),
    (DataSpec((1, 8, 8), "binary"), {"posterior": "iaf"}),
    (DataSpec((1, 8, 8), "discrete", num_levels=8), {"likelihood": "categorical"}),
    (EIGHT_BIT, {"likelihood": "logistic-mixture"}),
]


@pytest.mark.parametrize(("spec", "settings"), VAE_CASES)
def test_a_bf16_vae_scores_like_its_float32_self_and_samples_the_datas_values(spec, settings):
    torch.manual_seed(0)
    model = deepgen.create_model("vae", spec, latent_dim=4, hidden=(32,), **settings).eval()
    half = deepgen.create_model("vae", spec, latent_dim=4, hidden=(32,), **settings)
    half.load_state_dict(model.state_dict())
    half = half.bfloat16().eval()
    levels = spec.num_levels or 2
    x = torch.randint(0, levels, (16, *spec.shape), generator=torch.Generator().manual_seed(1)).float()
    if spec.kind == "continuous":
        x = x / (levels - 1)
    for m in (model, half):
        assert m.log_prob(x, generator=torch.Generator().manual_seed(2)).dtype == torch.float32
    full = model.log_prob(x, generator=torch.Generator().manual_seed(2))
    got = half.log_prob(x, generator=torch.Generator().manual_seed(2))
    # bf16 weights move each term a little; the sums are float32 and close (not off by nats)
    assert float((got - full).abs().max()) < 0.02 * float(full.abs().mean())
    s = half.sample(64, generator=torch.Generator().manual_seed(3))
    assert s.shape == (64, *spec.shape) and torch.isfinite(s.float()).all()
    if spec.num_levels == 256:
        assert _on_levels(s)


def test_a_bf16_categorical_draw_is_not_biased_towards_the_first_values():
    from deepgen.nn.likelihoods import Categorical

    head = Categorical(DataSpec((1,), "discrete", num_levels=64))
    logits = torch.zeros(20000, 64, 1, dtype=torch.bfloat16)  # uniform over 64 values
    k = head.sample(logits, torch.Generator().manual_seed(0)).long().reshape(-1)
    counts = torch.bincount(k, minlength=64).double()
    chi2 = float(((counts - counts.mean()) ** 2 / counts.mean()).sum())
    assert chi2 < 120, chi2  # 63 degrees of freedom: about 63 +- 11; bf16 ties gave over 1,000


def test_levels_and_ids_must_be_whole_numbers():
    from deepgen.errors import UserError

    made = deepgen.create_model("made", DataSpec((4,), "discrete", num_levels=5), hidden=(8,)).eval()
    assert torch.isfinite(made.log_prob(torch.tensor([[0.0, 1, 2, 4]]))).all()
    with pytest.raises(UserError, match="whole numbers.*0.5 away"):
        made.log_prob(torch.tensor([[0.0, 1.5, 2, 4]]))
    text = deepgen.create_model("transformer", DataSpec((6,), "tokens", vocab_size=7), width=8, layers=1, heads=2).eval()
    with pytest.raises(UserError, match="whole numbers"):
        text.log_prob(torch.tensor([[0.0, 1, 2, 3, 4, 5.25]]))
    # binary data keeps its probabilities (soft targets of the VAEs' Bernoulli terms)
    vae = deepgen.create_model("vae", DataSpec((4,), "binary"), latent_dim=2, hidden=(8,)).eval()
    assert torch.isfinite(vae.log_prob(torch.full((2, 4), 0.5))).all()


def test_settings_take_numpy_numbers():
    import numpy as np

    from deepgen.errors import UserError

    model = deepgen.create_model("vae", DataSpec((4,), "real"), latent_dim=np.int64(3), lr=np.float32(1e-3), hidden=np.array([8, 8]))
    c = model.config
    assert (c.latent_dim, c.hidden) == (3, (8, 8)) and type(c.latent_dim) is int and type(c.lr) is float
    with pytest.raises(UserError, match="latent_dim must be an integer"):
        deepgen.create_model("vae", DataSpec((4,), "real"), latent_dim=np.float64(3.5))


def test_kid_of_sets_no_larger_than_a_subset_has_no_spread():
    from deepgen.metrics.sample_quality import kid

    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(300, 8, generator=g), torch.randn(300, 8, generator=g) + 0.3
    mean, std = kid(x, y, subsets=100, subset_size=1000, generator=torch.Generator().manual_seed(0))
    assert std == 0.0 and mean == kid(x, y, subsets=1, subset_size=1000, generator=torch.Generator().manual_seed(5))[0]
    _, spread = kid(x, y, subsets=20, subset_size=100, generator=torch.Generator().manual_seed(0))
    assert spread > 0  # real subsets do vary


def test_the_elbo_of_a_likelihood_that_is_not_normalised_is_not_labelled_a_bound():
    from deepgen.metrics.units import EVAL_LABELS, NOT_NORMALISED_ELBO, eval_figures

    shown = eval_figures({"elbo": -12.5, "elbo_note": "not a normalised likelihood"})
    assert shown[NOT_NORMALISED_ELBO] == 12.5 and EVAL_LABELS["elbo"] not in shown and "bound on" not in NOT_NORMALISED_ELBO.split(":")[0]
    assert eval_figures({"elbo": -12.5})[EVAL_LABELS["elbo"]] == 12.5


def test_a_model_refusing_a_data_kind_says_which_it_takes():
    from deepgen.errors import UserError

    with pytest.raises(UserError, match=r"the made model takes binary, continuous, discrete or tokens data; 't.csv' holds real data\."):
        deepgen.create_model("made", DataSpec((3,), "real", name="t.csv"))


def test_a_tables_nll_is_also_given_in_its_own_units():
    """The model scores the standardised columns z = (x - mean) / std: -log p(x) = -log p(z)
    + sum log std. Checked against a Gaussian whose density in the raw units is known."""
    import numpy as np

    from deepgen.metrics import eval_figures, evaluate

    rng = np.random.default_rng(0)
    scale = np.array([10.0, 0.1, 2.0])
    ds = deepgen.load_dataset((rng.normal(size=(2000, 3)) * scale + 5).astype(np.float32))
    model = deepgen.create_model("maf", ds, hidden=(8,), layers=1).eval()
    with torch.no_grad():  # a MADE that outputs 0: the flow is the identity, p(z) = N(0, I)
        for p in model.parameters():
            p.zero_()
    r = evaluate(model, ds, ["nll"])
    z = torch.as_tensor(ds.test.x, dtype=torch.float64)
    std = torch.as_tensor(ds.state["std"], dtype=torch.float64)
    want_z = float((0.5 * z.pow(2) + 0.5 * math.log(2 * math.pi)).sum(1).mean())
    assert r["nll"] == pytest.approx(want_z, rel=1e-5)
    assert r["nll_original_units"] == pytest.approx(want_z + float(std.log().sum()), rel=1e-5)
    assert "standardised columns" in r["nll_note"] and "nll (nats, the table's own units)" in eval_figures(r)
    images = evaluate(deepgen.create_model("maf", DataSpec((1, 4, 4), "continuous", num_levels=256), hidden=(8,), layers=1).eval(),
                      deepgen.load_dataset((rng.integers(0, 256, size=(64, 4, 4))).astype(np.uint8)), ["nll"])
    assert "nll_original_units" not in images


def test_a_flow_run_saved_with_a_setting_it_ignored_still_loads_and_resumes(tmp_path, capsys):
    """Runs from before the refusal (an image realnvp trained with hidden=32,16, which it never
    read) load, sample and resume: the rebuilt config puts the ignored setting back."""
    import json

    from deepgen.cli import main

    run = tmp_path / "run"
    small = [a for kv in ("max_train=64", "progress=false", "tensorboard=false", "scales=1", "couplings=1", "channels=4")
             for a in ("--set", kv)]
    assert main(["train", "realnvp", "--data", "digits", "--epochs", "1", "--out", str(run), *small]) == 0
    path = run / "config.json"
    cfg = json.loads(path.read_text())
    cfg["model_config"]["hidden"] = [32, 16]  # what the older deepgen saved, and ignored
    path.write_text(json.dumps(cfg))
    assert main(["sample", str(run), "--n", "2", "--out", str(tmp_path / "s.npy")]) == 0
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    # a new run with it is still refused
    assert main(["train", "realnvp", "--data", "digits", "--epochs", "1", "--out", str(tmp_path / "new"), *small,
                 "--set", "hidden=32,16"]) == 2
    assert "size the vector networks" in capsys.readouterr().err

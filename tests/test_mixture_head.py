"""Mixture-density output heads: K per-example weights mixing K factorised components.

p(x | h) = sum_k pi_k(h) prod_d p_k(x_d | h). Checked by enumerating tiny discrete spaces
(the probabilities sum to one, match the formula written out, and make the elements
dependent), by integrating the Gaussian mixtures on a 2-d grid, by reduction to the
factorised heads at K = 1, by chi-square on samples, and by training real models.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from helpers import fit_one_phase
from test_likelihoods import chi_square_ok

import deepgen
from deepgen.cli import main
from deepgen.data.dataset import Batch, DataSpec
from deepgen.errors import UserError
from deepgen.nn.likelihoods import HEADS, MixtureDensity, make_head

MIXTURES = ["mixture-bernoulli", "mixture-gaussian", "mixture-gaussian-learned", "mixture-logistic"]


def random_params(head, n: int, shape: tuple[int, ...], g: torch.Generator, scale: float = 2.0) -> torch.Tensor:
    """Non-trivial parameters (N, P, *shape) in float64: logit channels that vary over positions."""
    return scale * torch.randn(n, head.num_params, *shape, generator=g, dtype=torch.float64)


def grid(levels: list[float], shape: tuple[int, ...]) -> torch.Tensor:
    """Every point of levels^D as data (M, *shape), M = len(levels) ** D."""
    d = math.prod(shape)
    return torch.tensor(list(itertools.product(levels, repeat=d)), dtype=torch.float64).reshape(-1, *shape)


def probs_over(head, params: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """p(x = each point | params) for every row of params: (B, P, *shape), (M, *shape) -> (B, M)."""
    b, m = len(params), len(points)
    p_rep = params.repeat_interleave(m, dim=0)  # (B*M, P, *shape), row b*M + j
    x_rep = points.repeat(b, *[1] * (points.dim() - 1))
    return torch.exp(-head.nll(p_rep, x_rep)).reshape(b, m)


def weights(params: torch.Tensor, k: int) -> torch.Tensor:
    """pi (B, K): the softmax of the first K channels' means over the data positions."""
    return params[:, :k].reshape(len(params), k, -1).mean(dim=2).softmax(dim=1)


# -- normalisation -----------------------------------------------------------------------


def test_mixture_bernoulli_sums_to_one_and_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    shape, k = (1, 2, 2), 3
    head = make_head("mixture-bernoulli", DataSpec(shape=shape, kind="binary"), components=k)
    assert isinstance(head, MixtureDensity) and head.num_params == 2 * k
    params = random_params(head, 5, shape, g)
    points = grid([0.0, 1.0], shape)  # (16, 1, 2, 2)
    p = probs_over(head, params, points)
    torch.testing.assert_close(p.sum(dim=1), torch.ones(5, dtype=torch.float64))
    # The formula written out: sum_k pi_k prod_d q_kd^x (1 - q_kd)^(1 - x).
    q = torch.sigmoid(params[:, k:].reshape(5, k, 1, -1))  # (B, K, 1, D): component k's channel
    x = points.reshape(1, 1, 16, -1)
    expected = (weights(params, k)[:, :, None] * (q**x * (1 - q) ** (1 - x)).prod(dim=-1)).sum(dim=1)
    torch.testing.assert_close(p, expected)


@pytest.mark.parametrize("kind", ["continuous", "discrete"])
@pytest.mark.parametrize("extreme", [False, True])
def test_mixture_logistic_sums_to_one_over_a_tiny_discrete_space(kind, extreme):
    g = torch.Generator().manual_seed(1)
    levels, shape, k = 4, (2,), 3
    spec = DataSpec(shape=shape, kind=kind, num_levels=levels)
    head = make_head("mixture-logistic", spec, components=k)
    assert head.num_params == 3 * k  # K logits + K (mu, log_s)
    params = random_params(head, 6, shape, g)
    if extreme:  # scales down to the floor e^-7 and means far outside [-1, 1]
        params[:, k:] *= 4.0
    values = [float(v) if kind == "discrete" else v / (levels - 1) for v in range(levels)]
    p = probs_over(head, params, grid(values, shape))  # (6, 16)
    assert (p >= 0).all()
    torch.testing.assert_close(p.sum(dim=1), torch.ones(6, dtype=torch.float64), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["mixture-gaussian", "mixture-gaussian-learned"])
def test_mixture_gaussian_density_integrates_to_one_on_a_2d_grid(name):
    g = torch.Generator().manual_seed(2)
    k = 3
    head = make_head(name, DataSpec(shape=(2,), kind="real"), sigma=0.4, components=k)
    params = torch.randn(1, head.num_params, 2, generator=g, dtype=torch.float64)
    if name == "mixture-gaussian-learned":  # log sigmas in about [-1.5, 0]: a wide grid still resolves them
        params[:, k:].reshape(1, k, 2, 2)[:, :, 1] = -1.5 + 1.5 * torch.rand(1, k, 2, generator=g, dtype=torch.float64)
    axis = torch.linspace(-8.0, 8.0, 801, dtype=torch.float64)
    xs = torch.cartesian_prod(axis, axis)  # (801^2, 2)
    density = torch.exp(-head.nll(params.expand(len(xs), -1, -1), xs)).reshape(len(axis), len(axis))
    total = torch.trapezoid(torch.trapezoid(density, axis, dim=1), axis)
    assert total.item() == pytest.approx(1.0, abs=1e-5)


# -- reduction to the factorised heads ------------------------------------------------------


@pytest.mark.parametrize(
    "mixture,factorised,kind,levels",
    [
        ("mixture-bernoulli", "bernoulli", "binary", None),
        ("mixture-bernoulli", "bernoulli", "continuous", None),
        ("mixture-gaussian", "gaussian", "continuous", None),
        ("mixture-gaussian-learned", "gaussian-learned", "real", None),
        ("mixture-logistic", "logistic-mixture", "continuous", 256),
        ("mixture-logistic", "logistic-mixture", "discrete", 17),
    ],
)
def test_one_component_is_the_factorised_head(mixture, factorised, kind, levels):
    g = torch.Generator().manual_seed(3)
    shape = (2, 3)
    spec = DataSpec(shape=shape, kind=kind, num_levels=levels)
    one = make_head(mixture, spec, components=1, sigma=0.3)
    flat = make_head(factorised, spec, components=1, sigma=0.3)
    comp = random_params(flat, 7, shape, g)  # the factorised head's parameters
    if factorised == "logistic-mixture":  # its channels are [logit, mu, log_s]: the logit is inert
        comp = comp[:, 1:]
        flat_params = torch.cat([torch.randn(7, 1, *shape, generator=g, dtype=torch.float64), comp], dim=1)
    else:
        flat_params = comp
    logit = torch.randn(7, 1, *shape, generator=g, dtype=torch.float64)  # any logit: pi = 1
    params = torch.cat([logit, comp], dim=1)
    assert one.num_params == 1 + comp.shape[1]
    x = flat.sample(flat_params, torch.Generator().manual_seed(4))
    torch.testing.assert_close(one.nll(params, x), flat.nll(flat_params, x))
    torch.testing.assert_close(one.mean(params), flat.mean(flat_params))
    assert (one.exact, one.discrete, one.kinds) == (flat.exact, flat.discrete, flat.kinds)


# -- dependence, mean and sampling ----------------------------------------------------------


def test_two_opposite_bernoulli_components_make_the_pixels_dependent():
    head = make_head("mixture-bernoulli", DataSpec(shape=(2,), kind="binary"), components=2)
    strong = 4.0  # component 0: both pixels on with prob sigmoid(4); component 1: both off
    params = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [strong, strong], [-strong, -strong]]], dtype=torch.float64)
    points = grid([0.0, 1.0], (2,))  # 00, 01, 10, 11
    joint = probs_over(head, params, points)[0].reshape(2, 2)  # joint[x1, x2]
    q = torch.sigmoid(torch.tensor(strong, dtype=torch.float64))
    torch.testing.assert_close(joint[1, 1], (q * q + (1 - q) * (1 - q)) / 2)
    p1, p2 = joint.sum(dim=1), joint.sum(dim=0)
    torch.testing.assert_close(p1, torch.full((2,), 0.5, dtype=torch.float64))
    assert joint[1, 1] - p1[1] * p2[1] > 0.2  # p(1, 1) ~ 0.48 against p(1) p(1) = 0.25
    # The factorised head with the same marginals is independent.
    flat = make_head("bernoulli", DataSpec(shape=(2,), kind="binary"))
    indep = probs_over(flat, torch.zeros(1, 1, 2, dtype=torch.float64), points)[0].reshape(2, 2)
    torch.testing.assert_close(indep, torch.outer(indep.sum(dim=1), indep.sum(dim=0)))


@pytest.mark.parametrize("name,kind,levels", [("mixture-bernoulli", "binary", None), ("mixture-logistic", "continuous", 4), ("mixture-logistic", "discrete", 4)])
def test_mean_is_the_expectation_over_the_tiny_space(name, kind, levels):
    g = torch.Generator().manual_seed(5)
    shape = (2,)
    head = make_head(name, DataSpec(shape=shape, kind=kind, num_levels=levels), components=3)
    params = random_params(head, 4, shape, g)
    values = [0.0, 1.0] if levels is None else [float(v) if kind == "discrete" else v / (levels - 1) for v in range(levels)]
    points = grid(values, shape)
    p = probs_over(head, params, points)  # (4, M)
    torch.testing.assert_close(head.mean(params), p @ points, atol=1e-6, rtol=1e-6)


def test_sample_frequencies_match_probabilities():
    g = torch.Generator().manual_seed(6)
    shape, n = (4,), 40000
    head = make_head("mixture-bernoulli", DataSpec(shape=shape, kind="binary"), components=3)
    one = random_params(head, 1, shape, g, scale=1.5)
    points = grid([0.0, 1.0], shape)
    probs = probs_over(head, one, points)[0]  # (16,)
    x = head.sample(one.expand(n, -1, -1), g)  # (n, 4)
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    index = (x * torch.tensor([8.0, 4.0, 2.0, 1.0], dtype=x.dtype)).sum(dim=1).long()  # the row in `points`
    counts = torch.bincount(index, minlength=16).double()
    stat, cutoff = chi_square_ok(counts, probs, n)
    assert stat < cutoff, f"chi-square {stat:.1f} >= {cutoff:.1f}: counts {counts.tolist()} vs probs {probs.tolist()}"


@pytest.mark.parametrize("name,kind,levels", [("mixture-gaussian", "continuous", None), ("mixture-gaussian-learned", "real", None), ("mixture-logistic", "continuous", 256), ("mixture-logistic", "discrete", 17)])
def test_samples_have_the_data_kind_and_dtype(name, kind, levels):
    g = torch.Generator().manual_seed(7)
    shape = (2, 3)
    head = make_head(name, DataSpec(shape=shape, kind=kind, num_levels=levels), components=3)
    params = random_params(head, 50, shape, g)
    x = head.sample(params, g)
    assert x.shape == (50, *shape) and x.dtype == torch.float64 and torch.isfinite(x).all()
    if kind == "continuous":
        assert x.min() >= 0 and x.max() <= 1
    if levels is not None:
        k = x if kind == "discrete" else x * (levels - 1)
        torch.testing.assert_close(k, k.round(), atol=1e-9, rtol=0)
    assert torch.isfinite(head.nll(params, x)).all()
    assert head.nll(params, x).dtype == head.mean(params).dtype == torch.float64


@pytest.mark.parametrize("name,kind,levels", [("mixture-bernoulli", "binary", None), ("mixture-gaussian-learned", "real", None), ("mixture-logistic", "continuous", 256)])
def test_nll_under_bf16_autocast_is_float32(name, kind, levels):
    g = torch.Generator().manual_seed(8)
    shape = (3, 4)
    head = make_head(name, DataSpec(shape=shape, kind=kind, num_levels=levels), components=4)
    params = random_params(head, 6, shape, g).to(torch.bfloat16)
    x = head.sample(params.float(), g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        nll = head.nll(params, x)
    assert nll.dtype == torch.float32
    torch.testing.assert_close(nll, head.nll(params.float(), x))


# -- construction ------------------------------------------------------------------------


def test_flags_kinds_and_errors():
    assert set(MIXTURES) <= set(HEADS)
    binary, pixels = DataSpec(shape=(4,), kind="binary"), DataSpec(shape=(4,), kind="continuous", num_levels=256)
    assert make_head("mixture-bernoulli", binary).exact and make_head("mixture-bernoulli", binary).discrete
    assert not make_head("mixture-bernoulli", pixels).exact  # BCE on [0, 1], as the factorised head
    assert make_head("mixture-gaussian", pixels).exact and not make_head("mixture-gaussian", pixels).discrete
    assert make_head("mixture-logistic", pixels).discrete
    assert make_head("mixture-gaussian", pixels, sigma=0.25).component.sigma == 0.25
    assert make_head("mixture-logistic", pixels, components=7).num_params == 21
    with pytest.raises(UserError, match="does not fit binary"):
        make_head("mixture-gaussian", binary)
    with pytest.raises(UserError, match="quantisation levels"):
        make_head("mixture-logistic", DataSpec(shape=(4,), kind="continuous"))
    with pytest.raises(UserError, match="components >= 1"):
        make_head("mixture-bernoulli", binary, components=0)
    with pytest.raises(UserError, match="mixture-bernoulli"):
        make_head("mixture-bernouli", binary)
    # The autoregressive models need a factorised head: p(x_d | x_<d) per element.
    with pytest.raises(UserError, match="Accepted: auto, bernoulli"):
        deepgen.create_model("made", binary, likelihood="mixture-bernoulli")


# -- through real models ------------------------------------------------------------------

MODEL_CASES = [
    ("mixture-bernoulli", DataSpec(shape=(1, 4, 4), kind="binary")),
    ("mixture-gaussian", DataSpec(shape=(1, 4, 4), kind="continuous", num_levels=256)),
    ("mixture-gaussian-learned", DataSpec(shape=(6,), kind="real")),
    ("mixture-logistic", DataSpec(shape=(1, 4, 4), kind="continuous", num_levels=256)),
]


def tiny_data(spec: DataSpec, g: torch.Generator) -> torch.Tensor:
    x = torch.rand(32, *spec.shape, generator=g)
    if spec.kind == "binary":
        return (x > 0.5).float()
    if spec.num_levels:
        return (x * (spec.num_levels - 1)).round() / (spec.num_levels - 1)
    return 3 * x - 1


@pytest.mark.parametrize("model", ["vae", "ae", "denoising-ae"])
@pytest.mark.parametrize("name,spec", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_models_train_with_the_mixture_heads(model, name, spec):
    g = torch.Generator().manual_seed(9)
    x = tiny_data(spec, g)
    for variant in deepgen.create_model(model, spec).variants(spec):
        torch.manual_seed(0)
        m = deepgen.create_model(model, spec, likelihood=name, components=3, hidden=(16,), latent_dim=2, **variant)
        assert m.head.num_params == 3 * (1 + m.head.component.num_params)
        fit_one_phase(m, x, steps=3, batch=16)
        (phase,) = m.phases()
        loss = m.loss(Batch(x[:16], None), phase.name).loss
        assert torch.isfinite(loss)
        with torch.no_grad():
            assert m.sample(4, generator=torch.Generator().manual_seed(1)).shape == (4, *spec.shape)
            assert torch.isfinite(m.reconstruct(x[:4])).all()


def test_adversarial_autoencoder_takes_a_mixture_head():
    spec = MODEL_CASES[3][1]
    x = tiny_data(spec, torch.Generator().manual_seed(11))
    torch.manual_seed(0)
    m = deepgen.create_model("aae", spec, likelihood="mixture-logistic", components=2, hidden=(16,), latent_dim=2)
    for phase in m.phases():
        out = m.loss(Batch(x[:16], None), phase.name)
        out.loss.backward()
        assert torch.isfinite(out.loss)
    with torch.no_grad():
        assert m.sample(3, generator=torch.Generator().manual_seed(1)).shape == (3, *spec.shape)


def test_vae_log_prob_with_a_mixture_head_is_finite():
    spec = MODEL_CASES[0][1]
    x = tiny_data(spec, torch.Generator().manual_seed(10))
    m = deepgen.create_model("vae", spec, likelihood="mixture-bernoulli", components=3, hidden=(16,), latent_dim=2, iwae_k=4)
    lp = m.log_prob(x[:5], generator=torch.Generator().manual_seed(0))
    assert lp.shape == (5,) and torch.isfinite(lp).all() and (lp < 0).all()
    assert m.likelihood_info().discrete


def test_cli_unknown_head_lists_the_accepted_names(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "vae", "--data", "digits", "--out", str(run), "--set", "likelihood=mixture-gausian"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("deepgen: error: ") and "mixture-gausian" in err[0]
    assert all(n in err[0] for n in MIXTURES), err[0]
    assert "Traceback" not in err[0] and not run.exists()

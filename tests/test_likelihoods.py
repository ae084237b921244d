"""Likelihood heads: each is a normalised distribution of the data's kind.

Normalisation is checked by enumerating a tiny support (discrete heads) or integrating on
a fine grid (Gaussian heads); sampling by the data's kind and by chi-square goodness of fit.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy.stats import chi2

from deepgen.data.dataset import DataSpec
from deepgen.errors import UserError
from deepgen.nn.likelihoods import HEADS, default_head_name, make_head


def spec(kind: str, shape: tuple[int, ...] = (1,), levels: int | None = None) -> DataSpec:
    return DataSpec(shape=shape, kind=kind, num_levels=levels)


def level_values(s: DataSpec) -> torch.Tensor:
    """All L values of one element in model space: (L,) floats."""
    k = torch.arange(s.num_levels, dtype=torch.float64)
    return k if s.kind == "discrete" else k / (s.num_levels - 1)


def probs_over_levels(head, params: torch.Tensor, s: DataSpec) -> torch.Tensor:
    """p(x = each level | params) for one-element data: params (B, P, 1) -> (B, L)."""
    values = level_values(s)
    b, levels = len(params), len(values)
    p_rep = params.repeat_interleave(levels, dim=0)  # (B*L, P, 1), row b*L + l
    x_rep = values.repeat(b).reshape(b * levels, 1)
    return torch.exp(-head.nll(p_rep, x_rep)).reshape(b, levels)


def mixture_params(b: int, k: int, g: torch.Generator, extreme: bool = False) -> torch.Tensor:
    """Random logistic-mixture parameters (B, 3K, 1): logits, means, log-scales."""
    logits = torch.randn(b, k, 1, generator=g, dtype=torch.float64)
    spread = 3.0 if extreme else 1.0
    means = spread * (2 * torch.rand(b, k, 1, generator=g, dtype=torch.float64) - 1)
    lo, hi = (-9.0, 1.0) if extreme else (-4.0, 0.0)
    log_s = lo + (hi - lo) * torch.rand(b, k, 1, generator=g, dtype=torch.float64)
    return torch.cat([logits, means, log_s], dim=1)


# -- normalisation -----------------------------------------------------------------------


def test_bernoulli_sums_to_one_over_all_binary_vectors():
    g = torch.Generator().manual_seed(0)
    s = spec("binary", (3,))
    head = make_head("bernoulli", s)
    logits = 3 * torch.randn(4, 1, 3, generator=g, dtype=torch.float64)  # 4 random distributions
    support = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)), dtype=torch.float64)  # (8, 3)
    total = torch.zeros(4, dtype=torch.float64)
    for x in support:
        total += torch.exp(-head.nll(logits, x.expand(4, 3)))
    torch.testing.assert_close(total, torch.ones(4, dtype=torch.float64))
    assert head.exact


@pytest.mark.parametrize("kind,levels", [("continuous", 256), ("discrete", 256), ("discrete", 17), ("continuous", 2)])
def test_categorical_sums_to_one_over_all_levels(kind, levels):
    g = torch.Generator().manual_seed(1)
    s = spec(kind, levels=levels)
    head = make_head("categorical", s)
    assert head.num_params == levels
    params = 4 * torch.randn(3, levels, 1, generator=g, dtype=torch.float64)
    p = probs_over_levels(head, params, s)
    torch.testing.assert_close(p.sum(dim=1), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(p, params[:, :, 0].softmax(dim=1))


@pytest.mark.parametrize("kind,levels", [("continuous", 256), ("discrete", 256), ("discrete", 17), ("continuous", 4)])
@pytest.mark.parametrize("extreme", [False, True])
def test_logistic_mixture_sums_to_one_over_all_levels(kind, levels, extreme):
    g = torch.Generator().manual_seed(2)
    s = spec(kind, levels=levels)
    head = make_head("logistic-mixture", s, components=3)
    assert head.num_params == 9
    p = probs_over_levels(head, mixture_params(6, 3, g, extreme), s)
    assert (p >= 0).all()
    torch.testing.assert_close(p.sum(dim=1), torch.ones(6, dtype=torch.float64), atol=1e-4, rtol=0)


def test_gaussian_fixed_integrates_to_one():
    s = spec("real")
    sigma = 0.3
    head = make_head("gaussian", s, sigma=sigma)
    mu = 0.7
    grid = torch.linspace(mu - 10 * sigma, mu + 10 * sigma, 20001, dtype=torch.float64)
    params = torch.full((len(grid), 1, 1), mu, dtype=torch.float64)
    density = torch.exp(-head.nll(params, grid[:, None]))
    assert torch.trapezoid(density, grid).item() == pytest.approx(1.0, abs=1e-6)


def test_gaussian_learned_integrates_to_one():
    s = spec("real")
    head = make_head("gaussian-learned", s)
    assert head.num_params == 2
    for mu, log_sigma in [(0.0, 0.0), (-1.5, -1.2), (2.0, 0.8)]:
        sigma = math.exp(log_sigma)
        grid = torch.linspace(mu - 12 * sigma, mu + 12 * sigma, 20001, dtype=torch.float64)
        params = torch.tensor([mu, log_sigma], dtype=torch.float64).expand(len(grid), 2).reshape(-1, 2, 1)
        density = torch.exp(-head.nll(params, grid[:, None]))
        assert torch.trapezoid(density, grid).item() == pytest.approx(1.0, abs=1e-5)


def test_gaussian_nll_with_fixed_sigma_is_scaled_mse_plus_constant():
    g = torch.Generator().manual_seed(3)
    d, sigma = 5, 0.2
    head = make_head("gaussian", spec("continuous", (d,)), sigma=sigma)
    mu = torch.rand(7, 1, d, generator=g, dtype=torch.float64)
    x = torch.rand(7, d, generator=g, dtype=torch.float64)
    mse_term = ((x - mu[:, 0]) ** 2).sum(dim=1) / (2 * sigma**2)
    const = d * (math.log(sigma) + 0.5 * math.log(2 * math.pi))
    torch.testing.assert_close(head.nll(mu, x), mse_term + const)


# -- sampling ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,kind,levels,params_per",
    [
        ("bernoulli", "binary", None, 1),
        ("bernoulli", "continuous", None, 1),
        ("gaussian", "continuous", None, 1),
        ("gaussian", "real", None, 1),
        ("gaussian-learned", "continuous", None, 2),
        ("gaussian-learned", "real", None, 2),
        ("categorical", "continuous", 256, 256),
        ("categorical", "discrete", 17, 17),
        ("logistic-mixture", "continuous", 256, 15),
        ("logistic-mixture", "discrete", 17, 15),
    ],
)
def test_samples_have_the_data_kind(name, kind, levels, params_per):
    g = torch.Generator().manual_seed(4)
    s = spec(kind, (2, 3), levels)
    head = make_head(name, s)
    assert head.num_params == params_per
    params = 3 * torch.randn(50, params_per, 2, 3, generator=g)
    x = head.sample(params, g)
    assert x.shape == (50, 2, 3)
    assert torch.isfinite(x).all()
    assert head.mean(params).shape == (50, 2, 3)
    if kind == "binary":
        assert set(x.unique().tolist()) <= {0.0, 1.0}
    if kind == "continuous":
        assert x.min() >= 0 and x.max() <= 1
    if levels is not None:
        k = x if kind == "discrete" else x * (levels - 1)
        torch.testing.assert_close(k, k.round(), atol=1e-4, rtol=0)
        assert k.min() >= 0 and k.max() <= levels - 1
    # Each sample is a point where the head has a finite NLL.
    assert torch.isfinite(head.nll(params, x)).all()


def chi_square_ok(counts: torch.Tensor, probs: torch.Tensor, n: int) -> tuple[float, float]:
    """Pearson's statistic over bins with expected count >= 5 (the rest pooled), and its 99.9% cut-off."""
    expected = probs * n
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum().reshape(1)])
    exp = torch.cat([expected[big], expected[~big].sum().reshape(1)])
    keep = exp > 0
    stat = (((obs - exp) ** 2)[keep] / exp[keep]).sum().item()
    return stat, chi2.ppf(0.999, int(keep.sum()) - 1)


@pytest.mark.parametrize("name", ["categorical", "logistic-mixture"])
@pytest.mark.parametrize("kind", ["continuous", "discrete"])
def test_sample_frequencies_match_probabilities(name, kind):
    g = torch.Generator().manual_seed(5)
    levels, n = 16, 40000
    s = spec(kind, levels=levels)
    head = make_head(name, s, components=3)
    if name == "categorical":
        one = torch.randn(1, levels, 1, generator=g, dtype=torch.float64)
    else:
        one = mixture_params(1, 3, g)
    probs = probs_over_levels(head, one, s)[0]
    x = head.sample(one.expand(n, *one.shape[1:]), g)[:, 0]  # (n,)
    index = (x if kind == "discrete" else x * (levels - 1)).round().long()
    counts = torch.bincount(index, minlength=levels).double()
    stat, cutoff = chi_square_ok(counts, probs, n)
    assert stat < cutoff, f"chi-square {stat:.1f} >= {cutoff:.1f}: counts {counts.tolist()} vs probs {probs.tolist()}"


def test_bernoulli_sample_frequencies_match_probabilities():
    g = torch.Generator().manual_seed(6)
    head = make_head("bernoulli", spec("binary", (4,)))
    logits = torch.tensor([-2.0, -0.3, 0.5, 3.0])
    n = 40000
    x = head.sample(logits.expand(n, 1, 4), g)
    p = torch.sigmoid(logits)
    se = torch.sqrt(p * (1 - p) / n)
    assert ((x.mean(dim=0) - p).abs() < 4 * se).all()


# -- construction ------------------------------------------------------------------------


def test_default_heads_fit_their_kinds():
    for kind, levels in [("binary", None), ("continuous", 256), ("discrete", 8), ("real", None)]:
        s = spec(kind, levels=levels)
        head = make_head("auto", s)
        assert kind in head.kinds
        assert type(head) is HEADS[default_head_name(s)]


@pytest.mark.parametrize(
    "name,kind,levels",
    [
        ("bernoulli", "real", None),
        ("bernoulli", "discrete", 8),
        ("gaussian", "binary", None),
        ("gaussian-learned", "discrete", 8),
        ("categorical", "binary", None),
        ("categorical", "real", None),
        ("logistic-mixture", "real", None),
        ("categorical", "continuous", None),  # continuous without quantisation levels
        ("logistic-mixture", "continuous", None),
    ],
)
def test_make_head_rejects_mismatched_kinds(name, kind, levels):
    with pytest.raises(UserError):
        make_head(name, spec(kind, levels=levels))


def test_make_head_rejects_unknown_names_and_bad_values():
    with pytest.raises(UserError, match="gaussian"):
        make_head("gausian", spec("real"))
    with pytest.raises(UserError):
        make_head("gaussian", spec("real"), sigma=0.0)
    with pytest.raises(UserError):
        make_head("logistic-mixture", spec("continuous", levels=256), components=0)


def test_exact_and_discrete_flags():
    assert make_head("bernoulli", spec("binary")).exact
    assert not make_head("bernoulli", spec("continuous")).exact  # BCE on [0, 1] is not a density
    assert make_head("gaussian", spec("continuous")).exact
    assert make_head("categorical", spec("continuous", levels=256)).exact
    # discrete: a probability mass over the data's values (bits/dim needs no dequantization term)
    assert make_head("bernoulli", spec("binary")).discrete
    assert not make_head("bernoulli", spec("continuous")).discrete
    assert make_head("categorical", spec("continuous", levels=256)).discrete
    assert make_head("logistic-mixture", spec("discrete", levels=17)).discrete
    assert not make_head("gaussian", spec("continuous")).discrete
    assert not make_head("gaussian-learned", spec("real")).discrete

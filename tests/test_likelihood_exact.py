"""Exactness of the likelihood heads against independent float64 references.

The discretized logistic mixture (Salimans et al. 2017, PixelCNN++, eq. 2) is checked bin by
bin against a plain float64 evaluation of P(k) = sigmoid((x_k + h - mu) / s) - sigmoid((x_k -
h - mu) / s), h = 1 / (L - 1), with open-ended edge bins, at extreme scales and at means on
and beyond both edges of [-1, 1]; its mean against the float64 expectation sum_k P(k)
value(k). Every head is also run on float64 parameters and compared with float32.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from deepgen.data.dataset import DataSpec
from deepgen.nn.likelihoods import make_head

L = 256
LOG_SCALES = [-7.0, -4.0, -1.0, 0.0, 2.0]
LEVEL_100 = 2 * 100 / (L - 1) - 1  # the centre of level 100 in [-1, 1] space
MEANS = [-1.3, -1.0, -0.5, 0.0, 0.37, 1.0, 1.4, LEVEL_100]


def spec(kind: str, levels: int = L, shape: tuple[int, ...] = (1,)) -> DataSpec:
    return DataSpec(shape=shape, kind=kind, num_levels=levels)


def level_values(kind: str, levels: int = L, dtype=torch.float64) -> torch.Tensor:
    """value(k) of every level in model space: (L,)."""
    k = torch.arange(levels, dtype=dtype)
    return k if kind == "discrete" else k / (levels - 1)


# -- float64 reference -------------------------------------------------------------------


def ref_component_log_probs(mu: torch.Tensor, log_s: torch.Tensor, levels: int = L) -> torch.Tensor:
    """log P(k) of single logistics, in float64, written from the definition.

    mu, log_s: (C,) (any dtype; taken exactly as float64) -> (C, L). Bin k is [x_k - h, x_k + h]
    in [-1, 1] space, x_k = -1 + 2k / (L - 1), h = 1 / (L - 1); bin 0 extends to -inf and bin
    L - 1 to +inf. P = sigmoid(b') - sigmoid(a'), a' = (a - mu) / s, b' = (b - mu) / s; above the
    mean the same number is evaluated as sigmoid(-a') - sigmoid(-b') (1 - cdf differences),
    and in logs (log sigmoid(b') + log(1 - exp(log sigmoid(a') - log sigmoid(b')))) so that
    bins whose mass is below float64's range still get a log-probability.
    """
    mu = mu.double()[:, None]
    s = torch.exp(log_s.double().clamp_min(-7.0))[:, None]  # the head's documented clamp
    h = 1.0 / (levels - 1)
    x = -1.0 + 2.0 * torch.arange(levels, dtype=torch.float64) / (levels - 1)
    a = (x - h - mu) / s
    b = (x + h - mu) / s
    above = x > mu
    hi = torch.where(above, -a, b)
    lo = torch.where(above, -b, a)
    ls_hi, ls_lo = F.logsigmoid(hi), F.logsigmoid(lo)
    d = ls_lo - ls_hi
    log_mid = ls_hi + torch.where(
        d > -math.log(2), torch.log(-torch.expm1(d)), torch.log1p(-torch.exp(d))
    )
    log_p = log_mid.clone()
    log_p[:, 0] = F.logsigmoid(b[:, 0])  # P(k = 0) = cdf(b')
    log_p[:, -1] = F.logsigmoid(-a[:, -1])  # P(k = L-1) = 1 - cdf(a')
    return log_p


def ref_component_probs_direct(
    mu: torch.Tensor, log_s: torch.Tensor, levels: int = L
) -> torch.Tensor:
    """P(k) in float64 straight from sigmoid differences (no logs): (C,) -> (C, L)."""
    mu = mu.double()[:, None]
    s = torch.exp(log_s.double().clamp_min(-7.0))[:, None]
    h = 1.0 / (levels - 1)
    x = -1.0 + 2.0 * torch.arange(levels, dtype=torch.float64) / (levels - 1)
    cdf_hi = torch.sigmoid((x + h - mu) / s)
    cdf_lo = torch.sigmoid((x - h - mu) / s)
    cdf_hi[:, -1] = 1.0
    cdf_lo[:, 0] = 0.0
    sf_hi, sf_lo = torch.sigmoid(-(x + h - mu) / s), torch.sigmoid(-(x - h - mu) / s)
    sf_hi[:, -1] = 0.0
    sf_lo[:, 0] = 1.0
    return torch.where(x > mu, sf_lo - sf_hi, cdf_hi - cdf_lo)


def ref_mixture_log_probs(
    logit_pi: torch.Tensor, mu: torch.Tensor, log_s: torch.Tensor, levels: int = L
) -> torch.Tensor:
    """Mixture log P(k): (C, K) parameters -> (C, L), float64."""
    c, k = mu.shape
    comp = ref_component_log_probs(mu.reshape(-1), log_s.reshape(-1), levels).reshape(c, k, levels)
    return torch.logsumexp(comp + F.log_softmax(logit_pi.double(), dim=1)[:, :, None], dim=1)


# -- head evaluation ---------------------------------------------------------------------


def head_log_probs(head, params: torch.Tensor, kind: str, levels: int = L) -> torch.Tensor:
    """log P(k) of every level from ``head.nll``: params (C, 3K) -> (C, L), one element each."""
    c = len(params)
    values = level_values(kind, levels, params.dtype)
    p_rep = params.repeat_interleave(levels, dim=0)[:, :, None]  # (C*L, 3K, 1)
    x_rep = values.repeat(c)[:, None]  # (C*L, 1)
    return -head.nll(p_rep, x_rep).reshape(c, levels)


def single_params(means, log_scales, dtype=torch.float32) -> torch.Tensor:
    """One-component parameters for every (mu, log s) pair: (C, 3) = [logit 0, mu, log s]."""
    rows = [(0.0, m, ls) for ls in log_scales for m in means]
    return torch.tensor(rows, dtype=dtype)


EPS32 = 2.0**-23  # float32 ulp of 1


def log_prob_tolerance(ref: torch.Tensor, log_s: torch.Tensor) -> torch.Tensor:
    """Allowed |delta log P| (= relative error of P) of the float32 head: ref (C, L), log_s (C,).

    In float32, mu itself is only known to an ulp (~1.2e-7 in [-1, 1]) and log P moves by up
    to 1/s per unit of mu (d log P / d a' is O(1), a' = (a - mu) / s): moving mu by one ulp
    moves log P by ~1.3e-4 at s = e^-7, so no float32 evaluation can promise better there;
    a' itself carries an ulp of |a'| ~ |log P| in a tail. The allowance is 2e-6 plus 2 ulps of
    (1/s + |log P|): 2e-6 relative near the mean at log s >= -1, 1e-5 at log s = -4 (the head
    measures < 0.9 ulp of that scale at every bin). Near the mean it is also checked directly.
    """
    inv_s = torch.exp(-log_s.double().clamp_min(-7.0))[:, None]
    return 2e-6 + 2 * EPS32 * (inv_s + ref.abs())


def assert_log_probs_match(
    got: torch.Tensor, ref: torch.Tensor, params: torch.Tensor, log_s: torch.Tensor
) -> None:
    """got, ref: (C, L) log-probabilities; params (C, P) for the message; log_s (C, K)."""
    got = got.double()
    tol = log_prob_tolerance(ref, log_s.double().min(dim=1).values)
    bad = (got - ref).abs() > tol
    if bad.any():
        i, k = bad.nonzero()[0].tolist()
        raise AssertionError(
            f"{int(bad.sum())} bins off; first: params {params[i].tolist()}, level {k}: "
            f"log P {got[i, k].item():.9g} vs reference {ref[i, k].item():.9g} (tolerance {tol[i, k].item():.3g})"
        )


# -- logistic mixture: bin probabilities -------------------------------------------------


def test_reference_is_self_consistent():
    """The log-space float64 reference equals plain sigmoid differences where those are exact."""
    p = single_params(MEANS, LOG_SCALES, torch.float64)
    log_ref = ref_component_log_probs(p[:, 1], p[:, 2])
    direct = ref_component_probs_direct(p[:, 1], p[:, 2])
    ok = direct > 1e-290
    torch.testing.assert_close(log_ref.exp()[ok], direct[ok], rtol=1e-10, atol=0)
    torch.testing.assert_close(
        direct.sum(dim=1), torch.ones(len(p), dtype=torch.float64), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("kind", ["continuous", "discrete"])
def test_every_bin_matches_float64_reference(kind):
    head = make_head("logistic-mixture", spec(kind), components=1)
    params = single_params(MEANS, LOG_SCALES)  # float32, (40, 3)
    got = head_log_probs(head, params, kind)
    ref = ref_component_log_probs(params[:, 1], params[:, 2])
    assert torch.isfinite(got).all()
    assert_log_probs_match(got, ref, params, params[:, 2:])
    # As plain probabilities against plain sigmoid differences, where those are representable.
    direct = ref_component_probs_direct(params[:, 1], params[:, 2])
    ok = direct > 1e-30
    rel = (got.double().exp() / direct - 1).abs()
    assert (rel[ok] <= 1.01 * log_prob_tolerance(ref, params[:, 2])[ok]).all()
    # Near the mean (P > 1e-3) the agreement is tight at every scale: 3e-5 relative even at
    # s = e^-7 (measured 1e-5: half an ulp of mu there), 2e-6 for log s >= -4.
    near = direct > 1e-3
    assert rel[near].max().item() < 3e-5
    assert rel[near & (params[:, 2:] >= -4)].max().item() < 2e-6


@pytest.mark.parametrize("kind", ["continuous", "discrete"])
def test_probabilities_sum_to_one(kind):
    head = make_head("logistic-mixture", spec(kind), components=1)
    params = single_params(MEANS, LOG_SCALES)
    p = head_log_probs(head, params, kind).exp()  # float32 probabilities from the head
    err = (p.double().sum(dim=1) - 1).abs()
    assert err.max().item() < 1e-6, (
        f"worst case {params[err.argmax()].tolist()}: |sum - 1| = {err.max().item():.3g}"
    )


def test_tails_are_symmetric_at_level_100():
    """The audit's case: one component at level 100, log s = -7; P(98) was 8.6x P(102)."""
    head = make_head("logistic-mixture", spec("discrete"), components=1)
    params = torch.tensor([[0.0, LEVEL_100, -7.0]])
    p = head_log_probs(head, params, "discrete").double().exp()[0]
    for d in (1, 2, 3):
        assert p[100 - d].item() == pytest.approx(p[100 + d].item(), rel=1e-4), d
    ref = ref_component_probs_direct(params[:, 1], params[:, 2])[0]
    assert p[102].item() == pytest.approx(ref[102].item(), rel=1e-4)
    assert p[102].item() == pytest.approx(2.4937e-6, rel=1e-3)


@pytest.mark.parametrize("kind,levels", [("continuous", 256), ("discrete", 256), ("discrete", 17)])
def test_random_mixture_matches_float64_reference(kind, levels):
    g = torch.Generator().manual_seed(0)
    c, k = 24, 3
    logit_pi = 2 * torch.randn(c, k, generator=g)
    mu = 2.8 * torch.rand(c, k, generator=g) - 1.4
    log_s = -7.5 + 9.5 * torch.rand(c, k, generator=g)  # [-7.5, 2]: past the clamp too
    params = torch.cat([logit_pi, mu, log_s], dim=1)
    head = make_head("logistic-mixture", spec(kind, levels), components=k)
    got = head_log_probs(head, params, kind, levels)
    ref = ref_mixture_log_probs(logit_pi, mu, log_s, levels)
    assert_log_probs_match(got, ref, params, log_s)
    err = (got.double().exp().sum(dim=1) - 1).abs()
    assert err.max().item() < 1e-6


def test_nll_is_the_sum_over_elements_in_float64():
    """Multi-element data: nll is -sum log P over elements, float64 params agree to 1e-12."""
    g = torch.Generator().manual_seed(1)
    k, shape = 2, (3, 4)
    head = make_head("logistic-mixture", spec("continuous", shape=shape), components=k)
    params = torch.cat(
        [
            torch.randn(5, k, *shape, generator=g),
            2.4 * torch.rand(5, k, *shape, generator=g) - 1.2,
            -7 + 8 * torch.rand(5, k, *shape, generator=g),
        ],
        dim=1,
    ).double()
    x = torch.randint(0, L, (5, *shape), generator=g).double() / (L - 1)
    got = head.nll(params, x)
    flat = params.permute(0, 2, 3, 1).reshape(-1, 3 * k)  # (5*12, 3K)
    ref = ref_mixture_log_probs(flat[:, :k], flat[:, k : 2 * k], flat[:, 2 * k :])  # (60, L)
    idx = (x * (L - 1)).round().long().reshape(-1)
    want = -ref[torch.arange(len(idx)), idx].reshape(5, -1).sum(dim=1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-9)


# -- logistic mixture: gradients ---------------------------------------------------------


def test_nll_gradients_are_finite_at_extremes():
    means = MEANS + [-3.0, 3.0]
    params = single_params(
        means, [-9.0, *LOG_SCALES, 20.0, 120.0]
    )  # clamp, and s so wide w underflows
    params = params.repeat_interleave(L, dim=0).requires_grad_(True)
    x = level_values("continuous", dtype=torch.float32).repeat(len(params) // L)
    nll = make_head("logistic-mixture", spec("continuous"), components=1).nll(
        params[:, :, None], x[:, None]
    )
    assert torch.isfinite(nll).all()
    nll.sum().backward()
    assert torch.isfinite(params.grad).all()


def test_nll_gradient_matches_finite_differences():
    head = make_head("logistic-mixture", spec("discrete", 17), components=2)
    params = torch.tensor(
        [
            [0.3, -0.2, -0.9, 1.3, -6.0, -1.0],
            [0.0, 1.0, 0.35, -0.35, -3.0, 1.5],
            [2.0, -1.0, 0.6, 0.62, -4.5, -4.4],
        ],
        dtype=torch.float64,
    )[:, :, None].requires_grad_(True)
    x = torch.tensor([[3.0], [0.0], [16.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: head.nll(p, x), (params,))


# -- logistic mixture: mean --------------------------------------------------------------


def ref_mean_levels(logit_pi, mu, log_s) -> torch.Tensor:
    """E[k] in levels, float64: (C, K) -> (C,)."""
    p = ref_mixture_log_probs(logit_pi, mu, log_s).exp()
    return (p * torch.arange(L, dtype=torch.float64)).sum(dim=1)


@pytest.mark.parametrize("kind", ["continuous", "discrete"])
def test_mean_is_the_discretized_expectation(kind):
    means = MEANS + [0.95, -0.9]
    log_scales = LOG_SCALES + [math.log(0.1), math.log(0.3)]
    params = single_params(means, log_scales)
    head = make_head("logistic-mixture", spec(kind), components=1)
    got = head.mean(params[:, :, None])[:, 0].double()
    want = ref_mean_levels(params[:, :1], params[:, 1:2], params[:, 2:])
    scale = 1.0 if kind == "discrete" else 1.0 / (L - 1)
    torch.testing.assert_close(got / scale, want, rtol=0, atol=1e-3)


@pytest.mark.parametrize("mu,s,expected", [(0.95, 0.1, 242.5813), (-0.9, 0.3, 33.3486)])
def test_mean_counts_the_edge_bins(mu, s, expected):
    """The audit's cases: (mu + 1) / 2 * 255 was off by +6.0 and -20.6 levels here."""
    head = make_head("logistic-mixture", spec("discrete"), components=1)
    got = head.mean(torch.tensor([[[0.0], [mu], [math.log(s)]]]))[0, 0].item()
    want = ref_mean_levels(
        torch.zeros(1, 1), torch.tensor([[mu]]), torch.tensor([[math.log(s)]])
    ).item()
    assert got == pytest.approx(want, abs=1e-3)
    assert want == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize("levels", [256, 17])
def test_random_mixture_mean_matches_reference(levels):
    g = torch.Generator().manual_seed(2)
    c, k = 32, 3
    logit_pi = 2 * torch.randn(c, k, generator=g)
    mu = 2.8 * torch.rand(c, k, generator=g) - 1.4
    log_s = -7.5 + 9.5 * torch.rand(c, k, generator=g)
    params = torch.cat([logit_pi, mu, log_s], dim=1)[:, :, None]
    head = make_head("logistic-mixture", spec("continuous", levels), components=k)
    p = ref_mixture_log_probs(logit_pi, mu, log_s, levels).exp()
    want = (p * level_values("continuous", levels)).sum(dim=1)
    torch.testing.assert_close(
        head.mean(params)[:, 0].double(), want, rtol=0, atol=1e-3 / (levels - 1)
    )


def test_mean_is_chunked_and_differentiable():
    """gradcheck of the chunked mean (analytic backward), with a chunk smaller than L - 1."""
    import deepgen.nn.likelihoods as lik

    head = make_head("logistic-mixture", spec("continuous", 17, shape=(2,)), components=2)
    g = torch.Generator().manual_seed(3)
    params = (
        torch.cat(
            [
                torch.randn(3, 2, 2, generator=g),
                2.6 * torch.rand(3, 2, 2, generator=g) - 1.3,
                -4 + 4 * torch.rand(3, 2, 2, generator=g),
            ],
            dim=1,
        )
        .double()
        .requires_grad_(True)
    )
    full = head.mean(params)
    old = lik._MEAN_CHUNK_ELEMENTS
    try:
        lik._MEAN_CHUNK_ELEMENTS = 5 * params[:, :2].numel()  # 5 edges per chunk: 4 chunks
        torch.testing.assert_close(head.mean(params), full, rtol=1e-14, atol=1e-14)
        assert torch.autograd.gradcheck(head.mean, (params,))
    finally:
        lik._MEAN_CHUNK_ELEMENTS = old


def test_half_precision_parameters_are_evaluated_in_float32():
    """bf16 autocast hands the head bf16 parameters; nll and mean work on them in float32."""
    head = make_head("logistic-mixture", spec("continuous"), components=1)
    params = single_params(MEANS, [-7.0, -1.0]).bfloat16()
    got = head_log_probs(head, params, "continuous")
    assert got.dtype == torch.float32
    ref = ref_component_log_probs(
        params[:, 1].float(), params[:, 2].float()
    )  # the bf16 values, exactly
    assert_log_probs_match(got, ref, params.float(), params[:, 2:].float())
    mean = head.mean(params[:, :, None])
    assert mean.dtype == torch.float32
    torch.testing.assert_close(mean, head.mean(params.float()[:, :, None]))


# -- every head in float64 ---------------------------------------------------------------

HEAD_CASES = [
    ("bernoulli", "binary", None),
    ("bernoulli", "continuous", None),
    ("gaussian", "continuous", None),
    ("gaussian", "real", None),
    ("gaussian-learned", "continuous", None),
    ("gaussian-learned", "real", None),
    ("categorical", "continuous", 256),
    ("categorical", "discrete", 17),
    ("logistic-mixture", "continuous", 256),
    ("logistic-mixture", "discrete", 17),
]


@pytest.mark.parametrize("name,kind,levels", HEAD_CASES)
def test_heads_run_in_float64_and_match_float32(name, kind, levels):
    g = torch.Generator().manual_seed(4)
    shape = (2, 3)
    s = DataSpec(shape=shape, kind=kind, num_levels=levels)
    head = make_head(name, s, components=3)
    params64 = 2 * torch.randn(8, head.num_params, *shape, generator=g, dtype=torch.float64)
    params32 = params64.float()
    x32 = head.sample(params32, torch.Generator().manual_seed(5))  # data of the right kind
    x64 = x32.double()
    nll64, nll32 = head.nll(params64, x64), head.nll(params32, x32)
    assert nll64.dtype == torch.float64 and nll64.shape == (8,)
    torch.testing.assert_close(nll64.float(), nll32, rtol=2e-5, atol=2e-4)
    mean64, mean32 = head.mean(params64), head.mean(params32)
    assert mean64.dtype == torch.float64 and mean64.shape == (8, *shape)
    torch.testing.assert_close(mean64.float(), mean32, rtol=1e-5, atol=1e-5)
    x = head.sample(params64, torch.Generator().manual_seed(6))
    assert x.dtype == torch.float64 and x.shape == (8, *shape)
    assert torch.isfinite(head.nll(params64, x)).all()
    if levels is not None:
        k = x if kind == "discrete" else x * (levels - 1)
        assert torch.equal(k, k.round()) or torch.allclose(k, k.round(), atol=1e-9, rtol=0)
        assert k.min() >= 0 and k.max() <= levels - 1
    if kind == "binary":
        assert set(x.unique().tolist()) <= {0.0, 1.0}

"""Sample-quality metrics on feature sets whose answers are known.

FID against the closed-form Frechet distance of two Gaussians, KID against the direct
double-sum MMD, precision/recall and density/coverage on mixtures of separated modes
where the generator drops half the modes, and brute-force k-NN references.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from deepgen.errors import UserError
from deepgen.metrics.sample_quality import (
    FeatureStats,
    density_coverage,
    fid,
    fid_torchmetrics,
    frechet_distance,
    gaussian_stats,
    kid,
    load_reference,
    precision_recall,
    save_reference,
)


def _spd(dim: int, gen: torch.Generator) -> torch.Tensor:
    """A well-conditioned, non-diagonal covariance (dim, dim)."""
    a = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    return a @ a.T / dim + 0.5 * torch.eye(dim, dtype=torch.float64)


def _closed_form(m1: torch.Tensor, c1: torch.Tensor, m2: torch.Tensor, c2: torch.Tensor) -> float:
    """Frechet distance of two Gaussians via scipy.linalg.sqrtm (independent of the code under test)."""
    covmean = scipy.linalg.sqrtm(c1.numpy() @ c2.numpy())
    covmean = np.real(covmean)
    return float(((m1 - m2) ** 2).sum()) + float(np.trace(c1.numpy() + c2.numpy() - 2 * covmean))


def _sample(mean: torch.Tensor, cov: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    chol = torch.linalg.cholesky(cov)
    return mean + torch.randn(n, mean.shape[0], generator=gen, dtype=torch.float64) @ chol.T


def _ring(n: int, modes: list[int], gen: torch.Generator, radius: float = 10.0, std: float = 0.2) -> torch.Tensor:
    """n points (n, 2) from a mixture of equal Gaussians on a ring of 10 centres, using ``modes`` only."""
    idx = torch.tensor(modes)[torch.randint(len(modes), (n,), generator=gen)]
    angle = 2 * math.pi * idx.double() / 10
    centres = radius * torch.stack([angle.cos(), angle.sin()], dim=1)
    return centres + std * torch.randn(n, 2, generator=gen, dtype=torch.float64)


# -- FID ------------------------------------------------------------------------------------


def test_frechet_distance_equals_closed_form() -> None:
    gen = torch.Generator().manual_seed(0)
    for dim in (1, 4, 8):
        m1, m2 = torch.randn(dim, generator=gen, dtype=torch.float64), torch.randn(dim, generator=gen, dtype=torch.float64)
        c1, c2 = _spd(dim, gen), _spd(dim, gen)
        assert frechet_distance(m1, c1, m2, c2) == pytest.approx(_closed_form(m1, c1, m2, c2), abs=1e-8, rel=1e-10)
    # Commuting (diagonal) covariances: d^2 = |m1 - m2|^2 + sum (sqrt(a) - sqrt(b))^2.
    a, b = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 9.0])
    m = torch.tensor([0.0, 0.0, 3.0])
    assert frechet_distance(m, a.diag(), torch.zeros(3), b.diag()) == pytest.approx(9.0 + 1 + 1 + 0, abs=1e-12)


def test_fid_of_samples_matches_true_gaussians() -> None:
    gen = torch.Generator().manual_seed(1)
    dim, n = 6, 50_000
    m1, m2 = torch.zeros(dim, dtype=torch.float64), torch.full((dim,), 0.8, dtype=torch.float64)
    c1, c2 = _spd(dim, gen), _spd(dim, gen)
    truth = _closed_form(m1, c1, m2, c2)
    estimate = fid(_sample(m1, c1, n, gen), _sample(m2, c2, n, gen))
    # Sampling error: the cross term 2 (m1-m2).(mu_hat - mu) has sd ~ 2 |m1-m2| sqrt(2 ||C|| / n) ~ 0.04.
    assert estimate == pytest.approx(truth, abs=0.15)
    assert truth > 3.0  # the comparison is not between two near-zero numbers


def test_gaussian_stats_are_mean_and_unbiased_covariance() -> None:
    x = torch.randn(300, 5, generator=torch.Generator().manual_seed(2))
    mu, sigma = gaussian_stats(x)
    assert mu.dtype == sigma.dtype == torch.float64
    np.testing.assert_allclose(mu.numpy(), x.double().numpy().mean(0), atol=1e-12)
    np.testing.assert_allclose(sigma.numpy(), np.cov(x.double().numpy(), rowvar=False), atol=1e-12)


def test_fid_self_is_zero_and_shift_gives_d_squared_times_width() -> None:
    gen = torch.Generator().manual_seed(3)
    dim = 8
    x = _sample(torch.zeros(dim, dtype=torch.float64), _spd(dim, gen), 2000, gen)
    assert abs(fid(x, x)) < 1e-9
    values = [fid(x, x + d) for d in (0.1, 0.5, 1.0, 2.0)]
    assert values == sorted(values)
    for d, v in zip((0.1, 0.5, 1.0, 2.0), values):
        assert v == pytest.approx(d * d * dim, rel=1e-8)


def test_fid_is_stable_when_covariance_is_singular() -> None:
    # Fewer samples than features: both covariances are rank deficient (sqrtm struggles here).
    gen = torch.Generator().manual_seed(4)
    x, y = torch.randn(20, 64, generator=gen), torch.randn(20, 64, generator=gen)
    value = fid(x, y)
    assert math.isfinite(value) and value > 0
    assert abs(fid(x, x)) < 1e-8


def test_fid_torchmetrics_agrees_with_fid() -> None:
    pytest.importorskip("torchmetrics")
    gen = torch.Generator().manual_seed(5)
    for n, m, dim in ((500, 400, 16), (2000, 1500, 64)):
        real = torch.randn(n, dim, generator=gen)
        fake = 1.3 * torch.randn(m, dim, generator=gen) @ _spd(dim, gen).float() + 0.2
        ours, theirs = fid(real, fake), fid_torchmetrics(real, fake)
        assert theirs == pytest.approx(ours, rel=1e-3)


# -- KID ------------------------------------------------------------------------------------


def test_kid_single_subset_equals_direct_unbiased_mmd() -> None:
    gen = torch.Generator().manual_seed(6)
    x, y = torch.randn(15, 3, generator=gen, dtype=torch.float64), torch.randn(15, 3, generator=gen, dtype=torch.float64) + 0.5
    # With subset_size = N = M the one subset is a permutation of all rows; MMD^2_u is permutation invariant.
    mean, std = kid(x, y, subsets=1, subset_size=15, generator=torch.Generator().manual_seed(0))

    def k(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a @ b / 3 + 1) ** 3)

    m = 15
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    assert mean == pytest.approx(xx + yy - 2 * xy, rel=1e-10)
    assert std == 0.0


def test_kid_near_zero_for_same_distribution_and_grows_with_shift() -> None:
    gen = torch.Generator().manual_seed(7)
    dim = 16
    real, fake = torch.randn(3000, dim, generator=gen), torch.randn(3000, dim, generator=gen)
    same, same_std = kid(real, fake, subsets=20, subset_size=500, generator=torch.Generator().manual_seed(0))
    assert abs(same) < 5e-3  # observed |mean| <= 1.5e-3 over seeds; a shift of 0.25 gives ~0.2
    shifted = [kid(real, fake + d, subsets=20, subset_size=500, generator=torch.Generator().manual_seed(0))[0] for d in (0.25, 0.5, 1.0)]
    assert shifted == sorted(shifted)
    assert shifted[0] > 10 * max(abs(same), same_std)


def test_kid_is_reproducible_with_a_generator_and_caps_subset_size() -> None:
    gen = torch.Generator().manual_seed(8)
    x, y = torch.randn(50, 4, generator=gen), torch.randn(40, 4, generator=gen)
    a = kid(x, y, subsets=5, subset_size=1000, generator=torch.Generator().manual_seed(1))
    b = kid(x, y, subsets=5, subset_size=1000, generator=torch.Generator().manual_seed(1))
    assert a == b and all(math.isfinite(v) for v in a)
    # The closed form with m = min(subset_size, N, M) = 40, on the same draws.
    g = torch.Generator().manual_seed(1)
    scores = []
    for _ in range(5):
        xs = x[torch.randperm(50, generator=g)[:40]].double()
        ys = y[torch.randperm(40, generator=g)[:40]].double()
        k = lambda p, q: (p @ q.T / 4 + 1) ** 3  # noqa: E731
        kxx, kyy, kxy = k(xs, xs), k(ys, ys), k(xs, ys)
        m = 40
        scores.append(((kxx.sum() - kxx.trace()) + (kyy.sum() - kyy.trace())) / (m * (m - 1)) - 2 * kxy.sum() / m**2)
    s = torch.stack(scores)
    assert a[0] == pytest.approx(s.mean().item(), rel=1e-6, abs=1e-9)
    assert a[1] == pytest.approx(s.std(unbiased=False).item(), rel=1e-5, abs=1e-9)


# -- precision / recall ------------------------------------------------------------------------


def _brute_force(real: torch.Tensor, fake: torch.Tensor, k: int) -> tuple[float, float, float, float]:
    """Precision, recall, density, coverage from full distance matrices (reference)."""
    r, f = real.double(), fake.double()
    drr, dff, drf = torch.cdist(r, r), torch.cdist(f, f), torch.cdist(r, f)  # (N, N), (M, M), (N, M)
    rad_r = drr.sort(dim=1).values[:, k]  # k-th neighbour, index 0 is the point itself
    rad_f = dff.sort(dim=1).values[:, k]
    precision = (drf <= rad_r[:, None]).any(dim=0).double().mean()
    recall = (drf <= rad_f[None, :]).any(dim=1).double().mean()
    inside = drf < rad_r[:, None]  # (N, M)
    density = inside.sum().double() / (k * f.shape[0])
    coverage = inside.any(dim=1).double().mean()
    return float(precision), float(recall), float(density), float(coverage)


def test_knn_metrics_match_brute_force_for_any_batch_size() -> None:
    gen = torch.Generator().manual_seed(9)
    real, fake = torch.randn(120, 5, generator=gen), 0.8 * torch.randn(90, 5, generator=gen) + 0.3
    for k in (1, 3, 5):
        p, r, d, c = _brute_force(real, fake, k)
        for batch_size in (7, 1024):
            assert precision_recall(real, fake, k=k, batch_size=batch_size) == pytest.approx((p, r), abs=1e-12)
            assert density_coverage(real, fake, k=k, batch_size=batch_size) == pytest.approx((d, c), abs=1e-12)


def test_precision_recall_identical_sets() -> None:
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(10))
    assert precision_recall(x, x) == (1.0, 1.0)


def test_precision_recall_with_dropped_modes_and_off_manifold_noise() -> None:
    gen = torch.Generator().manual_seed(11)
    real = _ring(4000, list(range(10)), gen)
    half = _ring(2000, [0, 1, 2, 3, 4], gen)
    precision, recall = precision_recall(real, half)
    assert precision > 0.95  # ~0.98: a few tail fakes fall outside every real ball
    assert 0.44 < recall <= 0.5 + 0.03  # reals of the 5 dropped modes are never covered
    noise = 15 * (2 * torch.rand(2000, 2, generator=gen, dtype=torch.float64) - 1)  # uniform in [-15, 15]^2
    precision, _ = precision_recall(real, noise)
    assert precision < 0.05


# -- density / coverage ----------------------------------------------------------------------


def test_density_coverage_same_distribution() -> None:
    gen = torch.Generator().manual_seed(12)
    real, fake = torch.randn(4000, 8, generator=gen), torch.randn(4000, 8, generator=gen)
    density, coverage = density_coverage(real, fake, k=5)
    assert density == pytest.approx(1.0, abs=0.1)  # E[density] = 1 (Naeem et al. 2020)
    assert coverage > 0.9  # ~ 1 - 2^-k for N = M


def test_density_coverage_dropped_modes_and_far_fakes() -> None:
    gen = torch.Generator().manual_seed(13)
    real = _ring(4000, list(range(10)), gen)
    _, coverage = density_coverage(real, _ring(2000, [0, 1, 2, 3, 4], gen))
    assert 0.44 < coverage <= 0.53
    assert density_coverage(real, real + 1000.0) == (0.0, 0.0)


# -- errors and cached reference statistics --------------------------------------------------


def test_bad_inputs_raise_user_errors() -> None:
    x = torch.randn(10, 4)
    with pytest.raises(UserError, match="width"):
        fid(x, torch.randn(10, 5))
    with pytest.raises(UserError, match=r"\(N, F\)"):
        precision_recall(torch.randn(10), x)
    with pytest.raises(UserError, match="NaN"):
        kid(x, torch.full((10, 4), float("nan")))
    with pytest.raises(UserError, match="more than k"):
        density_coverage(x[:3], x, k=5)


def test_reference_statistics_round_trip(tmp_path) -> None:
    feats = torch.randn(200, 6, generator=torch.Generator().manual_seed(14))
    path = tmp_path / "ref" / "mnist-test.safetensors"
    saved = save_reference(path, feats, key="sha256:abc/classifier-v1")
    loaded = load_reference(path, key="sha256:abc/classifier-v1")
    assert isinstance(loaded, FeatureStats) and loaded.n == 200 and loaded.key == saved.key
    assert torch.equal(loaded.mu, saved.mu) and torch.equal(loaded.sigma, saved.sigma)
    assert torch.equal(loaded.features, feats)
    assert json.loads(path.with_suffix(".json").read_text())["n"] == 200
    fake = torch.randn(150, 6, generator=torch.Generator().manual_seed(15))
    assert frechet_distance(loaded.mu, loaded.sigma, *gaussian_stats(fake)) == pytest.approx(fid(feats, fake), rel=1e-12)
    assert not [p.name for p in path.parent.iterdir() if ".tmp" in p.name]

    with pytest.raises(UserError, match="recompute"):
        load_reference(path, key="sha256:def/classifier-v1")
    with pytest.raises(UserError, match="no reference statistics"):
        load_reference(tmp_path / "missing.safetensors")
    # A sidecar from another write is detected.
    side = path.with_suffix(".json")
    side.write_text(json.dumps({**json.loads(side.read_text()), "key": "other"}))
    with pytest.raises(UserError, match="different writes"):
        load_reference(path)

"""Sample quality from features: FID, KID, precision/recall, density/coverage.

Pure functions over feature tensors, ``real`` (N, F) and ``fake`` (M, F): the rows are
the feature vectors a fixed network (:mod:`deepgen.metrics.features`, a classifier that
deepgen trains itself) gives to N real and M generated examples. Statistics are computed
in float64 on the device of the inputs. They know nothing of models or datasets.

* FID, the Frechet distance between Gaussians fitted to the two feature sets (Heusel et
  al. 2017, "GANs trained by a two time-scale update rule converge to a local Nash
  equilibrium", eq. 6): :func:`gaussian_stats`, :func:`frechet_distance`, :func:`fid`,
  and :func:`fid_torchmetrics` (the same figure through torchmetrics, as a cross-check).
* KID, the unbiased squared MMD with a cubic polynomial kernel averaged over random
  subsets (Binkowski et al. 2018, "Demystifying MMD GANs", sec. 4 / appendix D):
  :func:`kid`.
* Improved precision and recall from k-NN balls (Kynkaanniemi et al. 2019, "Improved
  precision and recall metric for assessing generative models", sec. 2):
  :func:`precision_recall`.
* Density and coverage (Naeem et al. 2020, "Reliable fidelity and diversity metrics for
  generative models", eqs. 3-4): :func:`density_coverage`.

Pairwise distances are computed in row chunks (``batch_size`` rows against the other set
at a time), so 10k x 10k feature sets need ``batch_size * 10k`` floats, not 10k^2.

Reference statistics of a dataset are costly to recompute; :class:`FeatureStats` with
:func:`save_reference` / :func:`load_reference` caches mu, sigma and the raw features in
a safetensors file plus a JSON sidecar holding the caller's cache ``key``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError

__all__ = [
    "FeatureStats",
    "density_coverage",
    "fid",
    "fid_torchmetrics",
    "frechet_distance",
    "gaussian_stats",
    "kid",
    "load_reference",
    "precision_recall",
    "save_reference",
]


# -- input checks --------------------------------------------------------------------------


def _as_features(x: torch.Tensor, name: str, min_rows: int = 1) -> torch.Tensor:
    """``x`` as a float64 (N, F) tensor, or a UserError naming what is wrong."""
    if not isinstance(x, torch.Tensor):
        raise UserError(f"{name} must be a torch.Tensor of shape (N, F), got {type(x).__name__}")
    if x.dim() != 2:
        raise UserError(f"{name} must have shape (N, F) (one feature vector per row), got {tuple(x.shape)}")
    if x.shape[0] < min_rows:
        raise UserError(f"{name} needs at least {min_rows} rows, got {x.shape[0]}")
    x = x.detach().to(torch.float64)
    if not torch.isfinite(x).all():
        raise UserError(f"{name} contains NaN or infinite values")
    return x


def _pair(real: torch.Tensor, fake: torch.Tensor, min_rows: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    r = _as_features(real, "real features", min_rows)
    f = _as_features(fake, "fake features", min_rows).to(r.device)
    if r.shape[1] != f.shape[1]:
        raise UserError(f"real and fake features differ in width: {r.shape[1]} vs {f.shape[1]}")
    return r, f


# -- FID ------------------------------------------------------------------------------------


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (F,) and covariance (F, F) of ``features`` (N, F), float64.

    The covariance is the unbiased estimate (divides by N - 1), as ``numpy.cov`` in the
    reference FID code (Heusel et al. 2017) and torchmetrics. N >= 2.
    """
    x = _as_features(features, "features", min_rows=2)
    mu = x.mean(dim=0)  # (F,)
    centered = x - mu  # (N, F); centring first avoids E[xx^T] - mu mu^T cancellation
    sigma = centered.T @ centered / (x.shape[0] - 1)  # (F, F)
    return mu, sigma


def _psd_eigenvalues(evals: torch.Tensor) -> torch.Tensor:
    """Eigenvalues (F,) of a PSD matrix with those below rounding level set to 0.

    ``eigh`` returns the zero eigenvalues of a singular covariance (N <= F) as +-1e-16
    times the largest; their square roots (~1e-8 each) would add up to a visible error.
    """
    cutoff = evals.abs().max() * evals.shape[0] * torch.finfo(evals.dtype).eps
    return torch.where(evals > cutoff, evals, torch.zeros_like(evals))


def _sqrt_psd(a: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric PSD matrix (F, F) by eigendecomposition."""
    evals, evecs = torch.linalg.eigh((a + a.T) / 2)
    return (evecs * _psd_eigenvalues(evals).sqrt()) @ evecs.T


def frechet_distance(
    mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor
) -> float:
    """Frechet (2-Wasserstein squared) distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``mu*``: (F,); ``sigma*``: (F, F) symmetric PSD. Heusel et al. 2017, eq. 6:

        d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}).

    ``S1 S2`` is not symmetric, but it is similar to ``S1^{1/2} S2 S1^{1/2}`` (symmetric
    PSD), so ``Tr((S1 S2)^{1/2}) = sum_i sqrt(lambda_i(S1^{1/2} S2 S1^{1/2}))``. Both
    steps use a symmetric eigendecomposition (``eigh``), which is stable where
    ``scipy.linalg.sqrtm`` of the non-symmetric product can return complex parts or
    diverge for singular covariances (N <= F); eigenvalues at rounding level (below
    ``F * eps`` times the largest, negative ones included) are set to 0.
    """
    mu1, mu2 = mu1.detach().double(), mu2.detach().double().to(mu1.device)
    s1, s2 = sigma1.detach().double().to(mu1.device), sigma2.detach().double().to(mu1.device)
    f = mu1.shape[0]
    if mu1.shape != (f,) or mu2.shape != (f,) or s1.shape != (f, f) or s2.shape != (f, f):
        raise UserError(
            "frechet_distance needs mu1, mu2 of shape (F,) and sigma1, sigma2 of shape (F, F), got "
            f"{tuple(mu1.shape)}, {tuple(sigma1.shape)}, {tuple(mu2.shape)}, {tuple(sigma2.shape)}"
        )
    root1 = _sqrt_psd(s1)  # (F, F)
    middle = root1 @ s2 @ root1  # (F, F), symmetric PSD up to rounding
    tr_covmean = _psd_eigenvalues(torch.linalg.eigvalsh((middle + middle.T) / 2)).sqrt().sum()
    diff = mu1 - mu2
    return float(diff @ diff + torch.trace(s1) + torch.trace(s2) - 2 * tr_covmean)


def fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Frechet Inception Distance between feature sets ``real`` (N, F) and ``fake`` (M, F).

    Gaussians are fitted by :func:`gaussian_stats` and compared by
    :func:`frechet_distance` (Heusel et al. 2017, eq. 6). FID is biased upwards for small
    N, M (roughly by O(F / N)); compare figures only at equal sample sizes.
    """
    r, f = _pair(real, fake, min_rows=2)
    return frechet_distance(*gaussian_stats(r), *gaussian_stats(f))


class _GivenFeatures(nn.Module):
    """Identity "feature extractor" for torchmetrics: the "images" already are features.

    torchmetrics' ``FrechetInceptionDistance(feature=module)`` reads ``module.num_features``
    (an int) for the size of its state and calls ``module(imgs)`` in ``update``, expecting
    (B, F) back.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def fid_torchmetrics(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID of ``real`` (N, F) and ``fake`` (M, F) computed by torchmetrics (>= 1.3).

    A cross-check of :func:`fid`: ``torchmetrics.image.fid.FrechetInceptionDistance``
    with an identity feature module (:class:`_GivenFeatures`) and the feature tensors
    passed as its "images". Features are passed as float64 so that torchmetrics returns
    float64. torchmetrics accumulates ``sum x x^T`` and subtracts ``N mu mu^T`` (one pass,
    loses digits when the mean is large against the spread) and takes ``Tr((S1 S2)^{1/2})``
    from the general eigenvalues of ``S1 S2``; :func:`fid` centres first and uses symmetric
    eigendecompositions. torchmetrics is an optional dependency (``deepgen[bench]``).
    """
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise UserError(
            "fid_torchmetrics needs torchmetrics (pip install 'deepgen[bench]'); "
            f"import failed: {e}. Use fid() instead."
        ) from None
    r, f = _pair(real, fake, min_rows=2)
    metric = FrechetInceptionDistance(feature=_GivenFeatures(r.shape[1]), normalize=False).to(r.device)
    metric.set_dtype(torch.float64)
    metric.update(r, real=True)
    metric.update(f, real=False)
    return float(metric.compute())


# -- KID ------------------------------------------------------------------------------------


def kid(
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018, sec. 4 and appendix D): (mean, std).

    ``real`` (N, F), ``fake`` (M, F). For each of ``subsets`` draws, ``m = min(subset_size,
    N, M)`` rows of each set are chosen without replacement and the unbiased estimate of
    the squared MMD with the polynomial kernel ``k(x, y) = (gamma x.y + coef0)^degree``
    (``gamma = 1/F`` by default) is

        MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m-1)) + sum_{i != j} k(y_i, y_j) / (m (m-1))
                  - 2 sum_{i, j} k(x_i, y_j) / m^2.

    Returns the mean and the (population) standard deviation over subsets (exactly 0 when
    N = M <= ``subset_size``: every subset is then the whole of both sets). Unbiased, so
    it can be slightly negative when the two distributions are equal. Subsets are drawn
    from ``generator`` (a CPU generator; the global RNG when None).
    """
    r, f = _pair(real, fake, min_rows=2)
    if subsets < 1:
        raise UserError(f"kid: subsets must be >= 1, got {subsets}")
    if subset_size < 2:
        raise UserError(f"kid: subset_size must be >= 2, got {subset_size}")
    n, m_fake, width = r.shape[0], f.shape[0], r.shape[1]
    m = min(subset_size, n, m_fake)
    g = 1.0 / width if gamma is None else float(gamma)

    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (g * (a @ b.T) + coef0) ** degree  # (m, m)

    # Every subset the whole of both sets (m = N = M): MMD^2_u is invariant to the rows'
    # order, so all draws give one value: computed once, with a std of exactly 0 (not the
    # 1e-16 of summing the same kernel matrices in other orders).
    draws = 1 if m == n == m_fake else subsets
    scores = torch.empty(draws, dtype=torch.float64)
    for s in range(draws):
        x = r[torch.randperm(n, generator=generator)[:m].to(r.device)]  # (m, F)
        y = f[torch.randperm(m_fake, generator=generator)[:m].to(f.device)]  # (m, F)
        kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
        off_xx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
        off_yy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
        scores[s] = off_xx + off_yy - 2 * kxy.mean()
    return float(scores.mean()), float(scores.std(unbiased=False))


# -- k-NN manifold metrics --------------------------------------------------------------------


def _check_knn(name: str, k: int, rows: int, batch_size: int) -> None:
    if k < 1:
        raise UserError(f"{name}: k must be >= 1, got {k}")
    if rows <= k:
        raise UserError(f"{name}: needs more than k={k} rows in each set to find k neighbours, got {rows}")
    if batch_size < 1:
        raise UserError(f"{name}: batch_size must be >= 1, got {batch_size}")


def _knn_radii(x: torch.Tensor, k: int, batch_size: int) -> torch.Tensor:
    """Distance (N,) from each row of ``x`` (N, F) to its k-th nearest other row.

    Each row is at distance 0 from itself, so this is the (k+1)-th smallest distance in
    its row of the distance matrix (a duplicate of a row counts as a neighbour at 0).
    """
    radii = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    for start in range(0, x.shape[0], batch_size):
        d = torch.cdist(x[start : start + batch_size], x)  # (b, N)
        radii[start : start + batch_size] = d.kthvalue(k + 1, dim=1).values
    return radii


def _inside_any_ball(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Bool (P,): is ``points[p]`` within distance ``radii[c]`` of some ``centres[c]``."""
    inside = torch.empty(points.shape[0], dtype=torch.bool, device=points.device)
    for start in range(0, points.shape[0], batch_size):
        d = torch.cdist(points[start : start + batch_size], centres)  # (b, C)
        inside[start : start + batch_size] = (d <= radii).any(dim=1)
    return inside


def precision_recall(
    real: torch.Tensor, fake: torch.Tensor, *, k: int = 3, batch_size: int = 1024
) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019, sec. 2, eqs. 1-2).

    ``real`` (N, F), ``fake`` (M, F). The real manifold is the union of balls around
    each real point with radius the distance to its k-th nearest real neighbour (itself
    excluded); the fake manifold likewise from the fakes. Precision is the fraction of
    fakes inside the real manifold, recall the fraction of reals inside the fake manifold
    (a point on a ball's boundary counts as inside, as in the authors' code). Distances
    are computed ``batch_size`` rows at a time. Both figures are in [0, 1].
    """
    r, f = _pair(real, fake)
    _check_knn("precision_recall", k, min(r.shape[0], f.shape[0]), batch_size)
    real_radii = _knn_radii(r, k, batch_size)  # (N,)
    fake_radii = _knn_radii(f, k, batch_size)  # (M,)
    precision = _inside_any_ball(f, r, real_radii, batch_size).double().mean()
    recall = _inside_any_ball(r, f, fake_radii, batch_size).double().mean()
    return float(precision), float(recall)


def density_coverage(
    real: torch.Tensor, fake: torch.Tensor, *, k: int = 5, batch_size: int = 1024
) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020, eqs. 3-4).

    ``real`` (N, F), ``fake`` (M, F). With ``B_i`` the ball around real point i of radius
    the distance to its k-th nearest real neighbour (itself excluded):

        density  = 1/(k M) sum_j sum_i 1[fake_j in B_i]      (expectation 1 when fake ~ real)
        coverage = 1/N sum_i 1[exists j: fake_j in B_i]      (in [0, 1])

    Membership is strict (distance < radius), as in the authors' ``prdc`` code. Density
    is not bounded by 1: fakes crowded where the reals are dense score above 1.
    """
    r, f = _pair(real, fake)
    _check_knn("density_coverage", k, r.shape[0], batch_size)
    radii = _knn_radii(r, k, batch_size)  # (N,)
    hits = torch.zeros((), dtype=torch.float64, device=r.device)
    covered = torch.zeros((), dtype=torch.float64, device=r.device)
    for start in range(0, r.shape[0], batch_size):
        inside = torch.cdist(r[start : start + batch_size], f) < radii[start : start + batch_size, None]  # (b, M)
        hits += inside.sum()
        covered += inside.any(dim=1).sum()
    return float(hits / (k * f.shape[0])), float(covered / r.shape[0])


# -- cached reference statistics -------------------------------------------------------------

_FORMAT = 1


@dataclass(frozen=True)
class FeatureStats:
    """Reference statistics of one feature set, cached between evaluations.

    ``mu`` (F,) and ``sigma`` (F, F) (float64, from :func:`gaussian_stats`) serve FID;
    ``features`` (N, F) (the raw rows) serve KID, precision/recall and density/coverage.
    ``key`` says what the features were computed from and with (e.g. a dataset checksum
    and the feature network's name); :func:`load_reference` refuses a file whose key is
    not the one expected, so a stale cache is never used silently.
    """

    mu: torch.Tensor
    sigma: torch.Tensor
    features: torch.Tensor
    key: str

    @property
    def n(self) -> int:
        """Number of feature vectors N."""
        return int(self.features.shape[0])

    @classmethod
    def from_features(cls, features: torch.Tensor, key: str) -> FeatureStats:
        """Statistics of ``features`` (N, F), N >= 2."""
        mu, sigma = gaussian_stats(features)
        return cls(mu=mu, sigma=sigma, features=features.detach(), key=key)


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def save_reference(path: str | Path, features: torch.Tensor, *, key: str) -> FeatureStats:
    """Write the statistics of ``features`` (N, F) to ``path`` (safetensors) + JSON sidecar.

    ``path`` (e.g. ``cache/mnist-test.safetensors``) gets ``mu``, ``sigma`` and
    ``features`` (the dtype given; float32 halves the file); ``path.with_suffix(".json")``
    gets ``{"key", "n", "num_features", "format"}``. Both are written atomically (temp
    file + ``os.replace``), and the key and n are also in the safetensors metadata so
    that a tensors file and a sidecar from different writes are detected on load.
    Returns the statistics.
    """
    from ..io import save_tensors, write_json

    path = Path(path)
    stats = FeatureStats.from_features(features, key)
    meta = {"key": key, "n": stats.n, "num_features": int(stats.mu.shape[0]), "format": _FORMAT}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors(
        path,
        {"mu": stats.mu, "sigma": stats.sigma, "features": stats.features},
        metadata={"key": key, "n": str(stats.n)},
    )
    write_json(_sidecar(path), meta)
    return stats


def load_reference(path: str | Path, *, key: str | None = None) -> FeatureStats:
    """Read statistics written by :func:`save_reference`.

    With ``key`` given, a file made for another key raises :class:`UserError` (the cache
    is stale: recompute it). A missing, corrupt or inconsistent pair of files also raises
    UserError.
    """
    import json

    from safetensors import safe_open

    from ..io import read_tensors

    path = Path(path)
    side = _sidecar(path)
    if not path.is_file() or not side.is_file():
        raise UserError(f"no reference statistics at {path} (needs {path.name} and {side.name}); compute them first")
    try:
        meta = json.loads(side.read_text())
        stored_key, n = str(meta["key"]), int(meta["n"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot read {side}: {e}. The file is missing or corrupt.") from None
    tensors = read_tensors(path)
    with safe_open(str(path), framework="pt") as fh:
        file_meta = fh.metadata() or {}
    missing = {"mu", "sigma", "features"} - tensors.keys()
    if missing:
        raise UserError(f"{path} lacks tensors {sorted(missing)}; it is not a reference statistics file")
    stats = FeatureStats(mu=tensors["mu"], sigma=tensors["sigma"], features=tensors["features"], key=stored_key)
    if file_meta.get("key") != stored_key or file_meta.get("n") != str(n) or stats.n != n:
        raise UserError(f"{path} and {side.name} come from different writes; delete both and recompute them")
    if key is not None and stored_key != key:
        raise UserError(f"reference statistics at {path} were computed for {stored_key!r}, not {key!r}; recompute them")
    return stats

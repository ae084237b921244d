"""Mode coverage of generated samples: the VEEGAN / PacGAN protocol.

Two settings with known modes (BENCHMARKS.md, "GAN mode collapse"):

* **2-D Gaussian mixtures** (``ring8``: 8 modes on the unit circle, std 0.01; ``grid25``:
  5x5 modes on {-4,-2,0,2,4}^2, std 0.05), 2,500 generated samples (Srivastava et al.
  2017, "VEEGAN", sec. 5.1; Lin et al. 2018, "PacGAN", sec. 5.1 and Table 1):
  :func:`mode_coverage`.
* **Stacked MNIST** (three MNIST digits as the three channels, 1,000 modes), 26,000
  generated samples, each channel labelled by a pretrained MNIST classifier (Metz et al.
  2017, "Unrolled GANs", sec. 3.3; VEEGAN Table 2; PacGAN Table 2):
  :func:`stacked_mnist_modes`.

The definitions follow the papers and, where the text leaves a detail open, the PacGAN
authors' code (github.com/fjxmlzn/PacGAN: ``synthetic_data_experiments/PacGAN/pacgan/
extensions.py``, ``MetricLogger``; ``stacked_MNIST_experiments/VEEGAN_experiment/
model.py``, ``log_metrics``). The evaluator metric ``modes`` (registered below) draws the
protocol's samples from any model and applies the right one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

from ..data.dataset import Dataset
from ..errors import UserError
from ..models.base import GenerativeModel
from .evaluate import EvalContext, Result, conditional_classes, metric, sample_labels

__all__ = [
    "HQ_THRESHOLD",
    "MIXTURE_SAMPLES",
    "STACKED_MODES",
    "STACKED_SAMPLES",
    "classify_stacked",
    "digit_classifier",
    "expected_hq_fraction",
    "mode_coverage",
    "nearest_modes",
    "stacked_mnist_modes",
]

HQ_THRESHOLD = 3.0  # a sample is high quality within 3 std of its nearest mode (VEEGAN sec. 5.1)
MIXTURE_SAMPLES = 2500  # generated samples on ring8 / grid25 (VEEGAN sec. 5.1, PacGAN sec. 5.1)
STACKED_SAMPLES = 26000  # generated samples on stacked MNIST (VEEGAN / PacGAN Table 2)
STACKED_MODES = 1000  # 10^3 digit triples

ArrayLike = torch.Tensor | np.ndarray | Sequence


def _as_tensor(x: ArrayLike, device: torch.device | None = None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.to(device=device if device is not None else t.device, dtype=torch.float64)


def _kl_to_uniform(counts: torch.Tensor) -> float:
    """KL(p || uniform(K)) in nats for p = counts / counts.sum() over K = len(counts) bins.

    Empty bins contribute 0 (0 log 0 = 0); NaN when every count is 0 (p is undefined).
    Equals log K - H(p).
    """
    total = counts.sum()
    if total <= 0:
        return float("nan")
    p = counts.double() / total  # (K,)
    nz = p[p > 0]
    return float((nz * (nz * len(counts)).log()).sum())


def nearest_modes(samples: ArrayLike, modes: ArrayLike, std: float | ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest mode of each sample and its distance in units of that mode's std.

    ``samples`` (N, D), ``modes`` (M, D), ``std``: one float or (M,) per-mode stds of
    isotropic Gaussians. The distance to mode k is ||x - mu_k|| / std_k (PacGAN's code
    divides by each mode's std before taking the nearest). Returns ``(index (N,) int64,
    distance (N,) float64)`` on the samples' device.
    """
    x = _as_tensor(samples)
    mu = _as_tensor(modes, x.device)
    if x.ndim != 2 or mu.ndim != 2 or x.shape[1] != mu.shape[1]:
        raise ValueError(f"samples (N, D) and modes (M, D) must agree in D; got {tuple(x.shape)} and {tuple(mu.shape)}")
    s = _as_tensor(std, x.device).reshape(-1)  # (1,) or (M,)
    if s.numel() not in (1, len(mu)) or bool((s <= 0).any()):
        raise ValueError(f"std must be one positive number or {len(mu)} of them, got {std!r}")
    d = torch.cdist(x, mu) / s  # (N, M) distances in stds
    dist, index = d.min(dim=1)  # (N,), (N,)
    return index, dist


def mode_coverage(
    samples: ArrayLike,
    modes: ArrayLike,
    std: float | ArrayLike,
    *,
    threshold: float = HQ_THRESHOLD,
) -> dict[str, Any]:
    """Modes captured, high-quality samples and reverse KL of 2-D mixture samples.

    The VEEGAN / PacGAN definitions (VEEGAN sec. 5.1; PacGAN sec. 5.1, Table 1):

    * a sample is **high quality** (HQ) if it lies within ``threshold`` = 3 standard
      deviations of its nearest mode (strictly: distance < 3 std, as PacGAN's code);
    * a mode is **captured** if it is the nearest mode of at least one HQ sample;
    * **reverse KL** = KL(p_gen || p_true) = sum_k p_gen(k) log(p_gen(k) M), where
      p_gen(k) is the fraction of the HQ samples whose nearest mode is k (only HQ samples
      enter the histogram and it is normalised over them, as in PacGAN's ``MetricLogger``,
      whose ``detail_of_coverage`` counts only samples below the threshold) and p_true is
      uniform over the M modes. Empty bins contribute 0 (0 log 0 = 0), so the KL is finite
      and at most log M (every HQ sample at one mode). With no HQ sample p_gen is
      undefined and the KL is NaN.

    ``samples`` (N, D) (numpy or torch, any device), ``modes`` (M, D), ``std``: the
    mixture's std (a float, or (M,) per mode).

    Returns ``{"modes": captured (int), "modes_total": M, "hq_percent": 100 * HQ / N,
    "reverse_kl": nats, "counts": HQ samples per mode (list of M ints)}``.
    """
    index, dist = nearest_modes(samples, modes, std)
    m = len(_as_tensor(modes))
    hq = dist < threshold  # (N,) bool
    counts = torch.bincount(index[hq], minlength=m)  # (M,) HQ samples per mode
    n = len(index)
    return {
        "modes": int((counts > 0).sum()),
        "modes_total": m,
        "hq_percent": 100.0 * float(hq.sum()) / n if n else float("nan"),
        "reverse_kl": _kl_to_uniform(counts),
        "counts": counts.tolist(),
    }


def stacked_mnist_modes(labels: ArrayLike, *, num_modes: int = STACKED_MODES) -> dict[str, Any]:
    """Modes covered and KL to uniform of stacked-MNIST samples (VEEGAN / PacGAN Table 2).

    ``labels`` (N, 3) int: the digit the classifier gives each channel (R, G, B), or (N,)
    int mode codes 100 d_R + 10 d_G + d_B in [0, 1000). The mode of a sample is its digit
    triple; ``modes`` counts the distinct triples among the N samples. ``kl`` =
    KL(p_gen || uniform(1000)) over the 1,000 modes, p_gen the histogram of all N
    samples' triples (every sample enters: the classifier assigns each one a digit);
    empty modes contribute 0 (PacGAN's ``log_metrics`` / ``JSD.KLD`` skip p = 0).

    Returns ``{"modes": distinct triples (int), "modes_total": 1000, "kl": nats}``.
    """
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels).long()
    if y.ndim == 2 and y.shape[1] == 3:
        if len(y) and (int(y.min()) < 0 or int(y.max()) > 9):
            raise ValueError("stacked-MNIST digit labels must be in 0..9")
        codes = y[:, 0] * 100 + y[:, 1] * 10 + y[:, 2]  # (N,)
    elif y.ndim == 1:
        codes = y
    else:
        raise ValueError(f"labels must be (N, 3) digits or (N,) mode codes, got shape {tuple(y.shape)}")
    if len(codes) and (int(codes.min()) < 0 or int(codes.max()) >= num_modes):
        raise ValueError(f"mode codes must be in [0, {num_modes})")
    counts = torch.bincount(codes, minlength=num_modes)  # (1000,)
    return {"modes": int((counts > 0).sum()), "modes_total": num_modes, "kl": _kl_to_uniform(counts)}


# -- the MNIST classifier that labels each channel ---------------------------------------------


class DigitClassifier(Protocol):
    """What the stacked-MNIST count needs: ``logits(x (N, 1, 28, 28) in [0, 1]) -> (N, 10)``."""

    def logits(self, x: torch.Tensor) -> torch.Tensor: ...


_CLASSIFIERS: dict[tuple[str, str], DigitClassifier] = {}


def digit_classifier(dataset: Dataset, device: torch.device | str, *, progress: bool | None = None) -> DigitClassifier:
    """deepgen's own MNIST classifier (:func:`deepgen.metrics.features.mnist_classifier`,
    trained and cached by deepgen), found through the MNIST files ``dataset`` was built
    from, on ``device``. Kept in-process per (source, device). ``progress``: a bar while it
    trains on first use (None = the running :func:`~deepgen.metrics.evaluate`'s switch,
    else when stderr is a terminal)."""
    source = str(dataset.meta.get("source") or "")
    key = (source, str(device))
    if key not in _CLASSIFIERS:
        from .features import mnist_classifier  # imported here: trains on first use

        _CLASSIFIERS[key] = mnist_classifier(data_dir=source or None, device=str(device), progress=progress)
    return _CLASSIFIERS[key]


def classify_stacked(images: torch.Tensor, classifier: DigitClassifier) -> torch.Tensor:
    """Digit of each channel: ``images`` (N, 3, 28, 28) in [0, 1] -> (N, 3) int64.

    Each channel goes through the classifier as a (N, 1, 28, 28) grey image; values are
    clamped to [0, 1] first (a generator's output may overshoot).
    """
    if images.ndim != 4 or images.shape[1:] != (3, 28, 28):
        raise ValueError(f"stacked-MNIST samples must be (N, 3, 28, 28), got {tuple(images.shape)}")
    x = images.float().clamp(0.0, 1.0)
    return torch.stack([classifier.logits(x[:, c : c + 1]).argmax(dim=1) for c in range(3)], dim=1)  # (N, 3)


# -- the evaluator metric ------------------------------------------------------------------------


def _draw(
    model: GenerativeModel, dataset: Dataset, n: int, ctx: EvalContext, shape: tuple[int, ...], fn: Any
) -> list[torch.Tensor]:
    """Draw ``n`` samples in batches of ``ctx.batch_size`` with one ctx generator; return
    ``fn(batch)`` for each batch (``fn`` reduces a (B, *shape) batch on the device).

    A conditional model gets class labels cycling 0, 1, ..., C-1, 0, ... over the whole
    draw (:func:`deepgen.metrics.evaluate.sample_labels`, as the sample-quality metrics),
    so every class has an equal share of the samples.
    """
    classes = conditional_classes(model, dataset)
    gen = ctx.generator()
    out = []
    done = 0
    with ctx.progress_bar(n, "sampling", unit="sample") as bar:
        while done < n:
            b = min(ctx.batch_size, n - done)
            x = model.sample(b, generator=gen, cond=sample_labels(classes, done, b, ctx.device))
            if tuple(x.shape) != (b, *shape):
                raise ValueError(f"{type(model).__name__}.sample({b}) returned shape {tuple(x.shape)}; expected {(b, *shape)}")
            out.append(fn(x))
            done += b
            bar.update(b)
    return out


def _is_stacked(dataset: Dataset) -> bool:
    return dataset.name == "stacked-mnist" or bool(dataset.meta.get("stacked_mnist"))


@metric(
    "modes",
    needs=None,
    description="mode coverage (VEEGAN/PacGAN): ring8/grid25 modes, % high quality, reverse KL; stacked-mnist modes of 1000, KL",
)
def modes_metric(model: GenerativeModel, dataset: Dataset, ctx: EvalContext) -> Result:
    """Mode coverage of the model's samples by the VEEGAN / PacGAN protocol.

    * Datasets whose ``meta`` has ``modes`` and ``mode_std`` (``ring8``, ``grid25``):
      2,500 samples, :func:`mode_coverage`. Keys ``modes``, ``modes_total``,
      ``hq_percent``, ``reverse_kl``, ``modes_samples``.
    * ``stacked-mnist``: 26,000 samples, each channel labelled by deepgen's MNIST
      classifier on ``ctx.device`` (:func:`digit_classifier`), :func:`stacked_mnist_modes`.
      Keys ``modes`` (of 1,000), ``modes_total``, ``kl``, ``modes_samples``.

    Samples are drawn in batches of ``ctx.batch_size`` from one ``ctx.generator()`` (on
    the model's device); a conditional model's samples get class labels in turn (each
    mode's class equally often). ``ctx.limit`` > 0 caps the number of samples below the
    protocol's (quick checks only; ``modes_samples`` reports what was used). The data
    split is not read: the true modes are known.
    """
    meta = dataset.meta
    if "modes" in meta and "mode_std" in meta:
        n = MIXTURE_SAMPLES if ctx.limit <= 0 else min(ctx.limit, MIXTURE_SAMPLES)
        modes = torch.as_tensor(meta["modes"], dtype=torch.float64)  # (M, D)
        parts = _draw(model, dataset, n, ctx, tuple(dataset.spec.shape), lambda x: x.detach().double())
        r = mode_coverage(torch.cat(parts), modes.to(parts[0].device), float(meta["mode_std"]))
        return {
            "modes": r["modes"],
            "modes_total": r["modes_total"],
            "hq_percent": r["hq_percent"],
            "reverse_kl": r["reverse_kl"],
            "modes_samples": n,
        }
    if _is_stacked(dataset):
        n = STACKED_SAMPLES if ctx.limit <= 0 else min(ctx.limit, STACKED_SAMPLES)
        classifier = digit_classifier(dataset, ctx.device)  # its training bar follows evaluate()'s switch
        parts = _draw(model, dataset, n, ctx, (3, 28, 28), lambda x: classify_stacked(x, classifier))
        r = stacked_mnist_modes(torch.cat(parts).cpu())
        return {"modes": r["modes"], "modes_total": r["modes_total"], "kl": r["kl"], "modes_samples": n}
    raise UserError(
        f"metric 'modes' applies to datasets with known modes: ring8 and grid25 (2-D mixtures whose meta gives "
        f"'modes' and 'mode_std') and stacked-mnist (1,000 digit triples); dataset {dataset.name!r} has none."
    )


def expected_hq_fraction(threshold: float = HQ_THRESHOLD, dim: int = 2) -> float:
    """P(||e|| < threshold) for e ~ N(0, I_dim): the HQ fraction of exact samples of a
    well-separated isotropic mixture. For dim 2 (a Rayleigh radius) it is
    1 - exp(-threshold^2 / 2) = 0.98889 at 3 std."""
    if dim != 2:
        raise ValueError("closed form given for dim 2 only")
    return 1.0 - math.exp(-(threshold**2) / 2)

"""Sample quality in the evaluator: ``fid``, ``kid``, ``pr`` and ``dc`` for any model.

Every model can ``sample``, so these metrics need no capability. Real and generated
examples go through the same deepgen feature network (:mod:`deepgen.metrics.features`:
a classifier trained by deepgen for labelled datasets, autoencoder codes otherwise) and
the pure functions of :mod:`deepgen.metrics.sample_quality` compare the two sets.

Protocol: ``n`` = ``limit`` or min(10,000, size of the split) generated samples against
the first ``n`` real examples of the split (Heusel et al. 2017 recommend at least 10,000;
fewer inflate FID). Reference features of the real split are cached on disk, keyed by
the data checksum, the split, ``n``, the seed and the feature network, so the second
evaluation of a dataset computes only the samples' features.
"""

from __future__ import annotations

import hashlib
import weakref
from typing import Any

import torch

from ..data.dataset import Dataset
from ..data.resident import iterate
from ..errors import UserError
from ..models.base import GenerativeModel
from .evaluate import EvalContext, Result, conditional_classes, metric, sample_labels
from .features import RECIPES, FeatureNet, _slug, data_sha256, default_cache_dir, feature_extractor
from .progress import resolve_progress
from .sample_quality import (
    density_coverage,
    fid,
    kid,
    load_reference,
    precision_recall,
    save_reference,
)

DEFAULT_SAMPLES = 10_000

# The last model's sample features: fid, kid, pr and dc requested together sample once.
# Keyed by the model object (a weak reference: a new model at a recycled id() must not
# match), its parameters' in-place version counters (they change with every optimizer
# step), n, seed and device; evaluate() seeds every metric identically.
_SAMPLE_MEMO: dict[tuple, tuple[weakref.ref, torch.Tensor]] = {}
_NETS: dict[tuple, FeatureNet] = {}


def feature_net(dataset: Dataset, ctx: EvalContext) -> FeatureNet:
    """The dataset's feature network on ``ctx.device`` (trained once and cached on disk)."""
    key = (dataset.name, str(ctx.device), ctx.data_dir)
    if key not in _NETS:
        source: str | Dataset = dataset.name if dataset.name in RECIPES else dataset
        _NETS[key] = feature_extractor(source, data_dir=ctx.data_dir, device=ctx.device, progress=ctx.progress)
    return _NETS[key]


def _check_images(dataset: Dataset) -> None:
    if dataset.spec.kind == "tokens":
        raise UserError("sample-quality metrics (fid, kid, pr, dc) compare feature vectors of examples; they do not apply to token data.")


def num_samples(dataset: Dataset, ctx: EvalContext) -> int:
    n = len(dataset.split(ctx.split))
    return min(ctx.limit, n) if ctx.limit > 0 else min(DEFAULT_SAMPLES, n)


@torch.no_grad()
def real_features(dataset: Dataset, ctx: EvalContext, net: FeatureNet, split: str | None = None) -> torch.Tensor:
    """Features (n, F) of the split's first ``n`` examples, cached on disk by data checksum."""
    split = split or ctx.split
    n = num_samples(dataset, ctx)
    data = dataset.split(split)
    checksum = data_sha256(data)[:16]
    key = f"{dataset.name}|{split}|n={n}|seed={ctx.seed}|{checksum}|{net.describe()}"
    name = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = default_cache_dir() / "references" / f"{_slug(dataset.name)}-{split}-{name}.safetensors"
    if path.is_file():
        try:
            return load_reference(path, key=key).features.float().to(ctx.device)
        except UserError:
            pass  # stale or corrupt: recompute below
    gen = torch.Generator(torch.device(ctx.device)).manual_seed(ctx.seed)
    parts = []
    with ctx.progress_bar(n, f"features of the real {split} split", unit="example") as bar:
        for b in iterate(dataset, split, ctx.batch_size, ctx.device, gen, n):
            parts.append(net.features(b.x))
            bar.update(len(b))
    feats = torch.cat(parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_reference(path, feats.float().cpu(), key=key)
    return feats.float()


@torch.no_grad()
def sample_features(model: GenerativeModel, dataset: Dataset, ctx: EvalContext, net: FeatureNet, n: int) -> torch.Tensor:
    """Features (n, F) of ``n`` samples drawn with a generator seeded from ``ctx.seed``."""
    version = sum(p._version for p in model.parameters())
    # The config is part of the key: a sampling setting (steps, sampler, temperature) changed
    # between two evaluations of one model gives other samples, with the same weights.
    key = (id(model), version, repr(getattr(model, "config", None)), n, ctx.seed, str(ctx.device), net.describe())
    if key in _SAMPLE_MEMO and _SAMPLE_MEMO[key][0]() is model:
        return _SAMPLE_MEMO[key][1]
    gen = ctx.generator()
    classes = conditional_classes(model, dataset)  # C for a conditional model (labels cycle 0..C-1), else None
    parts = []
    with ctx.progress_bar(n, "sampling", unit="sample") as bar:
        for start in range(0, n, ctx.batch_size):
            m = min(ctx.batch_size, n - start)
            x = model.sample(m, generator=gen, cond=sample_labels(classes, start, m, ctx.device))
            parts.append(net.features(x.to(ctx.device).float()))
            bar.update(m)
    feats = torch.cat(parts)
    _SAMPLE_MEMO.clear()
    _SAMPLE_MEMO[key] = (weakref.ref(model), feats)
    return feats


def _pair(model: GenerativeModel, dataset: Dataset, ctx: EvalContext) -> tuple[torch.Tensor, torch.Tensor, FeatureNet]:
    _check_images(dataset)
    net = feature_net(dataset, ctx)
    real = real_features(dataset, ctx, net)
    return real, sample_features(model, dataset, ctx, net, len(real)), net


def _kid_generator(ctx: EvalContext) -> torch.Generator:
    return torch.Generator().manual_seed(ctx.seed)


@metric("fid", needs=None, description="Frechet distance of sample vs real features (deepgen's feature network)")
def fid_metric(model: GenerativeModel, dataset: Dataset, ctx: EvalContext) -> Result:
    """FID (Heusel et al. 2017, eq. 6) between samples and the split; ``features`` names the network."""
    real, fake, net = _pair(model, dataset, ctx)
    return {"fid": fid(real, fake), "quality_n": len(real), "features": net.describe()}


@metric("kid", needs=None, description="kernel distance (unbiased MMD^2, cubic kernel) of sample vs real features")
def kid_metric(model: GenerativeModel, dataset: Dataset, ctx: EvalContext) -> Result:
    """KID (Binkowski et al. 2018): mean and std over 100 subsets of up to 1,000."""
    real, fake, net = _pair(model, dataset, ctx)
    mean, std = kid(real, fake, generator=_kid_generator(ctx))
    return {"kid": mean, "kid_std": std, "quality_n": len(real), "features": net.describe()}


@metric("pr", needs=None, description="precision and recall of k-NN feature manifolds (Kynkaanniemi et al. 2019)")
def pr_metric(model: GenerativeModel, dataset: Dataset, ctx: EvalContext) -> Result:
    """Improved precision (samples on the real manifold) and recall (real on the sample manifold), k=3."""
    real, fake, net = _pair(model, dataset, ctx)
    precision, recall = precision_recall(real, fake, k=3)
    return {"precision": precision, "recall": recall, "quality_n": len(real), "features": net.describe()}


@metric("dc", needs=None, description="density and coverage of samples over real k-NN balls (Naeem et al. 2020)")
def dc_metric(model: GenerativeModel, dataset: Dataset, ctx: EvalContext) -> Result:
    """Density (expected 1 for a perfect model) and coverage, k=5."""
    real, fake, net = _pair(model, dataset, ctx)
    density, coverage = density_coverage(real, fake, k=5)
    return {"density": density, "coverage": coverage, "quality_n": len(real), "features": net.describe()}


def real_vs_real(
    dataset: Dataset,
    *,
    device: torch.device | str = "cpu",
    seed: int = 0,
    limit: int = 0,
    data_dir: str | None = None,
    batch_size: int = 500,
    progress: bool | None = None,
) -> dict[str, Any]:
    """The floor: every sample metric of the real training set (its first n) against the test set.

    ``progress``: bars for feature training and extraction (None = when stderr is a terminal)."""
    _check_images(dataset)
    ctx = EvalContext(
        split="test", batch_size=batch_size, limit=limit, device=device, seed=seed, data_dir=data_dir,
        progress=resolve_progress(progress), metric="floor",
    )
    net = feature_net(dataset, ctx)
    test = real_features(dataset, ctx, net, "test")
    train = real_features(dataset, ctx, net, "train")[: len(test)]
    mean, std = kid(test, train, generator=_kid_generator(ctx))
    precision, recall = precision_recall(test, train, k=3)
    density, coverage = density_coverage(test, train, k=5)
    return {
        "fid": fid(test, train), "kid": mean, "kid_std": std, "precision": precision, "recall": recall,
        "density": density, "coverage": coverage, "quality_n": len(test), "features": net.describe(),
    }


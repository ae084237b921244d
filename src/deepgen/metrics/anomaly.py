"""Anomaly detection: the area under the ROC curve of a model's normality scores.

One-class protocol (Ruff et al. 2018, "Deep one-class classification"; the MNIST and
Fashion-MNIST rows of ../shared/BENCHMARKS.md): a model is trained on the examples of one
class (``DataConfig.normal_class``) and scores every test example; the AUROC is the
probability that a normal test example scores as more normal than an anomalous one.

The score, from the model's capabilities: its log-likelihood (or bound) where it has a
normalised ``log_prob``, else minus the squared reconstruction error of ``reconstruct``.
"""

from __future__ import annotations

import torch

from ..data.dataset import Batch, Dataset
from ..errors import UserError
from ..models.base import GenerativeModel, LogProb, Reconstructor
from .evaluate import (
    EvalContext,
    Result,
    _per_example,
    conditional_classes,
    likelihood_of,
    metric,
    scored_inputs,
)


def auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """The area under the ROC curve of ``scores`` (N,) for the binary labels ``positive``
    (N,) bool: P(score of a positive > score of a negative) + P(equal) / 2, the
    Mann-Whitney U statistic over n_pos * n_neg pairs, ties counted half (average ranks),
    as scikit-learn's ``roc_auc_score``."""
    scores, positive = scores.double().flatten(), positive.bool().flatten()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUROC needs both classes; got {n_pos} positive and {n_neg} negative examples")
    order = torch.argsort(scores)
    sorted_scores = scores[order]
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64, device=scores.device)
    # Average ranks within ties: each tied group gets the mean of its positions.
    uniq, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    mean_rank = ends - (counts.double() - 1) / 2
    ranks[order] = mean_rank[inverse]
    u = float(ranks[positive].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


@metric("auroc", needs=None, description="one-class anomaly detection: AUROC of normality scores, normal class = DataConfig.normal_class")
def auroc_metric(model: GenerativeModel, dataset: Dataset, ctx: EvalContext) -> Result:
    """AUROC of the model's normality scores on the split, normal = the dataset's
    ``normal_class`` (``deepgen eval RUN --metrics auroc``; a run trained with
    ``--set normal_class=3`` carries it, or give it at evaluation).

    Keys: ``auroc`` (in [0, 1]; 0.5 is chance), ``auroc_score`` (which score:
    ``log_prob`` or ``reconstruction``), ``auroc_normal_class``, ``auroc_normal`` and
    ``auroc_anomalous`` (how many test examples of each). A conditional model is scored
    given the normal class as every example's label, never the example's own label."""
    c = dataset.config.normal_class if dataset.config is not None else None
    if c is None:
        raise UserError("metric 'auroc' needs a normal class: set normal_class=K (a class of the data) for the run or the evaluation.")
    if dataset.split(ctx.split).y is None:
        raise UserError(f"metric 'auroc' needs labelled {ctx.split} examples to tell normal from anomalous.")
    seen: list[torch.Tensor] = []  # the labels of the scored batches, in their order
    conditional = conditional_classes(model, dataset) is not None

    def given(b: Batch) -> dict[str, torch.Tensor]:
        # A conditional model scores p(x | y = the normal class) for every example: given each
        # example's own label it would be handed the answer (normal or not is the label).
        return {"cond": torch.full_like(b.y, c)} if conditional else {}
    if isinstance(model, LogProb) and likelihood_of(model).normalised:
        inputs = scored_inputs(model, dataset, ctx)
        name = "log_prob"

        def raw(b: Batch) -> torch.Tensor:
            return model.log_prob(inputs(b), **given(b))  # type: ignore[attr-defined]
    elif isinstance(model, Reconstructor):
        name = "reconstruction"

        def raw(b: Batch) -> torch.Tensor:
            err = (model.reconstruct(b.x, **given(b)).float() - b.x.float()).pow(2)  # type: ignore[attr-defined]
            return -err.reshape(len(err), -1).mean(1)
    else:
        label = getattr(model, "registered_name", "") or type(model).__name__
        raise UserError(f"metric 'auroc' scores examples by log_prob or reconstruct; the {label} model has neither.")

    def score(b: Batch) -> torch.Tensor:
        seen.append(b.y)
        return raw(b)

    values = _per_example(model, dataset, ctx, score)
    normal = torch.cat(seen).to(values.device) == c
    if bool(normal.all()) or not bool(normal.any()):
        raise UserError(f"metric 'auroc': the {ctx.split} split has {'only' if bool(normal.all()) else 'no'} examples of class {c}; "
                        "it needs both normal and anomalous ones.")
    return {"auroc": auroc(values, normal), "auroc_score": name, "auroc_normal_class": c,
            "auroc_normal": int(normal.sum()), "auroc_anomalous": int((~normal).sum())}

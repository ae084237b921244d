"""Metrics: pure functions (likelihood, reconstruction), the one evaluator, and the
printed figures' names, signs and units (:mod:`deepgen.metrics.units`).

>>> from deepgen.metrics import evaluate, eval_figures, format_table
>>> print(format_table(eval_figures(evaluate(model, ds, ["elbo", "nll"]))))  # doctest: +SKIP

Code that scores data itself (``deepgen encode`` / ``deepgen score``) uses the
evaluator's helpers, so it sees what the metrics see: :class:`EvalContext` (the batches of
a split), :func:`label_kwargs` (a conditional model's ``cond=``), :func:`scored_inputs`
(the dequantized inputs of a density of quantised data), :func:`likelihood_of` and
:func:`dequantization_width` (what ``log_prob`` is and how bits/dim count).
"""

from __future__ import annotations

from . import anomaly, modes, quality  # noqa: F401  (register the anomaly, modes and sample-quality metrics)
from .evaluate import (
    METRICS,
    EvalContext,
    EvaluationInterrupted,
    check_metrics,
    conditional_classes,
    default_metrics,
    dequantization_width,
    evaluate,
    format_table,
    format_value,
    label_kwargs,
    likelihood_of,
    metric,
    metric_descriptions,
    sample_labels,
    scored_inputs,
)
from .likelihood import bits_per_dim, mean_and_sem
from .progress import progress_bar, resolve_progress
from .reconstruction import bce, mse, psnr
from .units import (
    NEGATIVE_NOTE,
    eval_figures,
    format_logged,
    logged_figures,
    logged_legend,
    logged_unit,
    neg_elbo,
)

__all__ = [
    "METRICS",
    "NEGATIVE_NOTE",
    "EvalContext",
    "EvaluationInterrupted",
    "bce",
    "bits_per_dim",
    "check_metrics",
    "default_metrics",
    "conditional_classes",
    "dequantization_width",
    "eval_figures",
    "evaluate",
    "format_logged",
    "format_table",
    "format_value",
    "label_kwargs",
    "likelihood_of",
    "logged_figures",
    "logged_legend",
    "logged_unit",
    "mean_and_sem",
    "metric",
    "metric_descriptions",
    "mse",
    "neg_elbo",
    "progress_bar",
    "psnr",
    "resolve_progress",
    "sample_labels",
    "scored_inputs",
]

"""Metrics: pure functions (likelihood, reconstruction) and the one evaluator.

>>> from deepgen.metrics import evaluate, format_table
>>> print(format_table(evaluate(model, ds, ["elbo", "nll"])))  # doctest: +SKIP
"""

from __future__ import annotations

from . import modes, quality  # noqa: F401  (register the modes and sample-quality metrics)
from .evaluate import (
    METRICS,
    EvalContext,
    EvaluationInterrupted,
    check_metrics,
    evaluate,
    format_table,
    metric,
    metric_descriptions,
)
from .likelihood import bits_per_dim, mean_and_sem
from .progress import progress_bar, resolve_progress
from .reconstruction import bce, mse, psnr

__all__ = [
    "METRICS",
    "EvalContext",
    "EvaluationInterrupted",
    "bce",
    "bits_per_dim",
    "check_metrics",
    "evaluate",
    "format_table",
    "mean_and_sem",
    "metric",
    "metric_descriptions",
    "mse",
    "progress_bar",
    "psnr",
    "resolve_progress",
]

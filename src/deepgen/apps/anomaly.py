"""Anomaly detection: :class:`AutoencoderOutlierDetector` (PyOD-style)."""

from __future__ import annotations

import inspect
import math
import numbers
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.utils.validation import check_is_fitted

from ..data.dequantize import dequantize, levels_of
from ..errors import UserError
from ..metrics.evaluate import likelihood_of
from ..models.base import GenerativeModel, LogProb, Reconstructor
from ..models.vae import IWAE_ELEMENTS_PER_CALL
from .base import AutoencoderEstimator, models_with

# Outputs (rows x importance samples x data elements) per vmapped scoring call: the VAE's
# own budget per decoder call (2^24 float32 values, 64 MiB).
_ELEMENTS_PER_CALL = IWAE_ELEMENTS_PER_CALL

SCORES = ("reconstruction", "likelihood")


class AutoencoderOutlierDetector(OutlierMixin, AutoencoderEstimator, BaseEstimator):
    """Outliers as examples the model, trained on normal data, explains badly.

    ``score_samples(X)`` (higher = more normal):

    * ``score_type="reconstruction"`` (default): minus the mean squared reconstruction error
      per example, in the model's space (tables standardised with the training rows'
      statistics, images scaled to [0, 1]); any model with ``reconstruct`` (``ae``,
      ``vae``, ``denoising-ae``, ...);
    * ``score_type="likelihood"``: the model's ``log_prob`` in nats (for ``vae`` the IWAE
      bound); models with ``log_prob`` only. Each example is scored as if alone, its random
      draws seeded from ``random_state`` (the same for every example): scores repeat and do
      not depend on the batch. On 8-bit images a density is taken at dequantized pixels
      and counts the bin width (log p(y) - D ln 256), as ``deepgen eval`` does.

    Fitted attributes: those of :class:`~deepgen.apps.base.AutoencoderEstimator`, ``offset_``
    and ``score_type_`` (the score ``offset_`` is of, used until the next ``fit``).

    ``contamination`` (default 0.1, in (0, 0.5]): the expected fraction of outliers.
    ``offset_`` is the training scores' ``contamination`` quantile;
    ``decision_function(X) = score_samples(X) - offset_`` (negative: outlier) and
    ``predict`` gives +1 for inliers and -1 for outliers, so about a ``contamination``
    fraction of the training data is flagged. Images (N, H, W), (N, C, H, W) or
    (N, H, W, C) get convolutional networks when the settings leave ``network`` unset or ``"auto"``.
    Other parameters: see :class:`~deepgen.apps.base.AutoencoderEstimator`.

    The parameter is ``score_type``, not ``score``: scikit-learn (its checks,
    ``GridSearchCV`` without ``scoring``) calls ``estimator.score`` as a method when
    it exists, and a string parameter of that name breaks them.

    scikit-learn's estimator checks: all pass; none is skipped.
    """

    def __init__(
        self,
        model: str = "ae",
        settings: Mapping[str, Any] | None = None,
        score_type: str = "reconstruction",
        contamination: float = 0.1,
        latent_dim: int | None = 10,
        epochs: int = 10,
        batch_size: int = 128,
        lr: float | None = None,
        device: str = "auto",
        random_state: int | None = None,
        verbose: bool = False,
        layout: str = "auto",
    ) -> None:
        self.model = model
        self.settings = settings
        self.score_type = score_type
        self.contamination = contamination
        self.latent_dim = latent_dim
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        self.layout = layout

    def _check_model(self, cls: type[GenerativeModel]) -> None:
        if self.score_type not in SCORES:
            raise UserError(f"unknown score {self.score_type!r}. Accepted: {', '.join(SCORES)}.")
        # numbers.Real: NumPy floats too (np.float32 is no float subclass; GridSearchCV grids hold them).
        if isinstance(self.contamination, bool) or not isinstance(self.contamination, numbers.Real) or not 0 < self.contamination <= 0.5:
            raise ValueError(f"contamination must be in (0, 0.5], got {self.contamination!r}.")
        if self.score_type == "likelihood" and not issubclass(cls, LogProb):
            raise UserError(
                f"score_type='likelihood' needs a model with log_prob; {self.model!r} has none. "
                f"Models with log_prob: {', '.join(models_with(LogProb))}; or use score_type='reconstruction'."
            )
        if self.score_type == "reconstruction" and not issubclass(cls, Reconstructor):
            raise UserError(
                f"score_type='reconstruction' needs a model that reconstructs; {self.model!r} does not. "
                f"Models that do: {', '.join(models_with(Reconstructor))}; or use score_type='likelihood'."
            )

    def fit(self, X: Any, y: Any = None) -> AutoencoderOutlierDetector:
        """Train on normal X (N, F) or images (N, H, W), (N, C, H, W), (N, H, W, C); set ``offset_``. ``y`` is ignored."""
        self._fit_arrays(X)
        # The score offset_ is a quantile of: score_samples keeps to it whatever set_params
        # changes later (a likelihood against a reconstruction offset flagged every row).
        self.score_type_ = self.score_type
        train_scores = self._scores(self._validate_input(X))
        self.offset_ = float(np.percentile(train_scores, 100.0 * float(self.contamination)))
        return self

    def _scores(self, x: np.ndarray) -> np.ndarray:
        if getattr(self, "score_type_", self.score_type) == "reconstruction":  # getattr: estimators pickled before score_type_
            return -self._reconstruction_error(x).astype(np.float64)
        return self._log_probs(x)

    def _log_probs(self, x: np.ndarray) -> np.ndarray:
        """``log_prob`` per example (N,) in nats, float64, each example scored as if alone.

        Random draws (a VAE's importance samples, a diffusion bound's x_t, the dequantization
        noise u) come from a generator seeded with ``seed_`` afresh for every example: the
        same draws for all (common random numbers), so that a score depends on its example
        and ``random_state`` only, never on its batch companions, its position or
        ``batch_size``. Quantised data (8-bit images) is scored as the data layer and the
        evaluator score it: values snapped to their levels k, and for a density (not a
        probability of the levels) taken at y = (k + u) / L and given the bin width, log p(y)
        - D ln L, a bound on the log-probability of the levels (-score / (D ln 2) is bits/dim).
        """
        model, spec = self.model_, self.codec_.spec
        info = likelihood_of(model)
        dequantizing = info.normalised and not info.discrete and spec.bin_width is not None
        takes_generator = "generator" in inspect.signature(model.log_prob).parameters  # type: ignore[attr-defined]
        offset = spec.dim * math.log(spec.bin_width) if dequantizing and spec.bin_width else 0.0
        gen = torch.Generator(model.device)

        def one(x: torch.Tensor) -> torch.Tensor:  # (B, *shape) -> (B,), every draw from ``gen``
            if spec.num_levels is not None:
                x = levels_of(x, spec) / (spec.num_levels - 1)  # on the levels, as the data layer's values
            if dequantizing:
                x = dequantize(x, spec, gen)
            return model.log_prob(x, generator=gen) if takes_generator else model.log_prob(x)  # type: ignore[attr-defined]

        # Rows per vmapped call. Inside vmap the model sees one example, so a model that
        # sizes its own calls by the batch (the VAE decodes about 2^24 outputs at once over
        # its iwae_k importance samples) would size them for one row while all the rows
        # run: the calls take about as many rows as the model's own batched calls would.
        draws = max(1, int(getattr(model.config, "iwae_k", 1) or 1))
        rows_per_call = max(1, _ELEMENTS_PER_CALL // max(1, spec.dim * draws))
        fallback = False

        def vmapped(rows: torch.Tensor) -> torch.Tensor:
            gen.manual_seed(self.seed_)  # every call (and every row in it) the same draws
            with warnings.catch_warnings():  # an op without a batching rule runs row by row, correctly
                warnings.filterwarnings("ignore", message="There is a performance drop")
                return torch.func.vmap(lambda row: one(row[None])[0], randomness="same")(rows)

        def log_prob(batch: torch.Tensor, _: int) -> torch.Tensor:
            nonlocal fallback
            if not (dequantizing or takes_generator):
                return one(batch)  # nothing random: the batch at once
            if not fallback:
                try:  # every row with the draws of one example: vmap draws them once, shared by all rows
                    return torch.cat([vmapped(batch[i:i + rows_per_call]) for i in range(0, len(batch), rows_per_call)])
                except RuntimeError as e:  # an operation vmap cannot batch (never a lack of memory)
                    if isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e):
                        raise
                    warnings.warn(f"{type(model).__name__}.log_prob does not run under torch.func.vmap ({str(e).splitlines()[0]}); "
                                  "scoring one example at a time (the same scores, slower).", RuntimeWarning, stacklevel=2)
                    fallback = True
            rows = []  # one example at a time, the same draws
            for i in range(len(batch)):
                gen.manual_seed(self.seed_)
                rows.append(one(batch[i:i + 1]))
            return torch.cat(rows)

        return self._batched(log_prob, x, self.codec_.to_model).astype(np.float64) + offset

    def score_samples(self, X: Any) -> np.ndarray:
        """Normality score per example (N,): higher = more normal (see the class docstring)."""
        return self._scores(self._validate_input(X))

    def decision_function(self, X: Any) -> np.ndarray:
        """``score_samples(X) - offset_``: negative for outliers."""
        check_is_fitted(self, "offset_")
        return self.score_samples(X) - self.offset_

    def predict(self, X: Any) -> np.ndarray:
        """+1 for inliers, -1 for outliers (decision_function < 0)."""
        return np.where(self.decision_function(X) < 0, -1, 1)

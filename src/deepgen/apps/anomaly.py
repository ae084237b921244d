"""Anomaly detection: :class:`AutoencoderOutlierDetector` (PyOD-style)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.utils.validation import check_is_fitted

from ..errors import UserError
from ..models.base import GenerativeModel, LogProb, Reconstructor
from .base import AutoencoderEstimator, models_with

SCORES = ("reconstruction", "likelihood")


class AutoencoderOutlierDetector(OutlierMixin, AutoencoderEstimator, BaseEstimator):
    """Outliers as examples the model, trained on normal data, explains badly.

    ``score_samples(X)`` (higher = more normal):

    * ``score_type="reconstruction"`` (default): minus the mean squared reconstruction error
      per example, in the model's space (tables standardised with the training rows'
      statistics, images scaled to [0, 1]); any model with ``reconstruct`` (``ae``,
      ``vae``, ``denoising-ae``, ...);
    * ``score_type="likelihood"``: the model's ``log_prob`` in nats (for ``vae`` the IWAE
      bound, drawn with a fixed seed so that scores repeat); models with ``log_prob`` only.

    ``contamination`` (default 0.1, in (0, 0.5]): the expected fraction of outliers.
    ``offset_`` is the training scores' ``contamination`` quantile;
    ``decision_function(X) = score_samples(X) - offset_`` (negative: outlier) and
    ``predict`` gives +1 for inliers and -1 for outliers, so about a ``contamination``
    fraction of the training data is flagged. Images (N, H, W) / (N, C, H, W) get
    convolutional networks when the settings leave ``network`` unset or ``"auto"``.
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

    def _check_model(self, cls: type[GenerativeModel]) -> None:
        if self.score_type not in SCORES:
            raise UserError(f"unknown score {self.score_type!r}. Accepted: {', '.join(SCORES)}.")
        if not isinstance(self.contamination, (int, float)) or not 0 < self.contamination <= 0.5:
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
        """Train on normal X (N, F) or (N, H, W) / (N, C, H, W); set ``offset_``. ``y`` is ignored."""
        self._fit_arrays(X)
        train_scores = self._scores(self.codec_.to_model(self._validate_input(X)))
        self.offset_ = float(np.percentile(train_scores, 100.0 * self.contamination))
        return self

    def _scores(self, x: np.ndarray) -> np.ndarray:
        if self.score_type == "reconstruction":
            return -self._reconstruction_error(x).astype(np.float64)
        device = self.model_.device

        def log_prob(batch: torch.Tensor, i: int) -> torch.Tensor:
            gen = torch.Generator(device).manual_seed(self.seed_ + i)  # repeatable draws
            try:
                return self.model_.log_prob(batch, generator=gen)  # type: ignore[attr-defined]
            except TypeError:  # a log_prob without sampling
                return self.model_.log_prob(batch)  # type: ignore[attr-defined]

        return self._batched(log_prob, x).astype(np.float64)

    def score_samples(self, X: Any) -> np.ndarray:
        """Normality score per example (N,): higher = more normal (see the class docstring)."""
        X = self._validate_input(X)
        return self._scores(self.codec_.to_model(X))

    def decision_function(self, X: Any) -> np.ndarray:
        """``score_samples(X) - offset_``: negative for outliers."""
        check_is_fitted(self, "offset_")
        return self.score_samples(X) - self.offset_

    def predict(self, X: Any) -> np.ndarray:
        """+1 for inliers, -1 for outliers (decision_function < 0)."""
        return np.where(self.decision_function(X) < 0, -1, 1)

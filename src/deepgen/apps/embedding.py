"""Embeddings for downstream tasks: :class:`AutoencoderEmbedding`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_array, check_is_fitted

from ..errors import UserError
from ..models.base import Decoder, Encoder, GenerativeModel
from .base import AutoencoderEstimator, models_with


class AutoencoderEmbedding(ClassNamePrefixFeaturesOutMixin, TransformerMixin, AutoencoderEstimator, BaseEstimator):
    """Codes of a trained autoencoder as features: ``transform(X)`` -> (N, latent_dim).

    ``model``: any registered model with the ``encode`` capability (``ae``, ``vae`` (the
    posterior mean), ``aae``, the other autoencoders...); others are refused, naming those
    that work. ``latent_dim`` (default 10) goes into the model's settings. ``X`` is a
    table (N, F), standardised with the training rows' statistics, or images (N, H, W),
    (N, C, H, W) or (N, H, W, C), scaled to [0, 1] and encoded by a convolutional network when the
    settings leave ``network`` unset or ``"auto"`` (and the images are large enough).

    ``inverse_transform(codes)`` decodes codes (the model's mean output) back into X's
    space, shape and layout (models with the ``decode`` capability): float64, or the
    training dtype for integer images (uint8 pixels come back as uint8, rounded).

    Fitted attributes: ``model_`` (the trained deepgen model, in eval mode), ``codec_``
    (the fitted array conversion), ``n_features_in_``, ``seed_``.

    scikit-learn's estimator checks: all pass; none is skipped. Output is float32
    (``preserves_dtype = ["float32"]``).
    """

    def __init__(
        self,
        model: str = "ae",
        settings: Mapping[str, Any] | None = None,
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
        self.latent_dim = latent_dim
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        self.layout = layout

    def _check_model(self, cls: type[GenerativeModel]) -> None:
        if not issubclass(cls, Encoder):
            raise UserError(
                f"AutoencoderEmbedding needs a model that encodes (the encode capability); {self.model!r} does not. "
                f"Models that do: {', '.join(models_with(Encoder))}."
            )

    def fit(self, X: Any, y: Any = None) -> AutoencoderEmbedding:
        """Train the model on X (N, F) or images (N, H, W), (N, C, H, W), (N, H, W, C); ``y`` is ignored.

        Warns (``ConvergenceWarning``) when the training rows differ but their codes do not:
        a collapsed encoder, whose codes carry nothing for a downstream task."""
        self._fit_arrays(X)
        return self

    def _collapse_outputs(self, x: np.ndarray) -> tuple[str, np.ndarray]:
        return "codes", self._batched(lambda b, _: self.model_.encode(b), x)

    def transform(self, X: Any) -> np.ndarray:
        """Codes (N, latent_dim) float32 of X, batch by batch."""
        X = self._validate_input(X)
        return self._batched(lambda b, _: self.model_.encode(b), X, self.codec_.to_model)

    def inverse_transform(self, X: Any) -> np.ndarray:
        """Codes (N, latent_dim) -> the decoded mean in the training data's space and shape."""
        check_is_fitted(self, "model_")
        if not isinstance(self.model_, Decoder):
            raise UserError(f"the {self.model} model cannot decode codes (no decode capability); inverse_transform needs one.")
        codes = check_array(X, dtype=np.float32)
        if codes.shape[1] != self._n_features_out:
            raise ValueError(f"codes have {codes.shape[1]} features, but the embedding has {self._n_features_out}.")
        dtype = self.codec_.output_dtype(None)
        return self._batched(lambda b, _: self.model_.decode(b), codes, finish=lambda out: self.codec_.from_model(out, dtype))

    @property
    def _n_features_out(self) -> int:
        """Width of the codes (for ``get_feature_names_out``)."""
        # Models without a latent_dim setting (flows, ddpm) encode to the data's own size,
        # flattened (the Encoder contract); latent_dim is None for them, so it cannot say.
        return int(self.model_.config.latent_dim) if hasattr(self.model_.config, "latent_dim") else int(self.model_.spec.dim)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags

    def _more_tags(self) -> dict[str, Any]:  # scikit-learn < 1.6
        return {"preserves_dtype": ["float32"]}

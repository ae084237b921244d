"""Denoising: :class:`AutoencoderDenoiser`."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from functools import partial
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ..errors import UserError
from ..models.base import GenerativeModel, Reconstructor
from .base import AutoencoderEstimator, config_fields, dtype_of

NOISES = ("gaussian", "masking", "salt-pepper")


class AutoencoderDenoiser(OneToOneFeatureMixin, TransformerMixin, AutoencoderEstimator, BaseEstimator):
    """A denoising autoencoder trained on clean data: ``transform(X_noisy)`` -> denoised X.

    ``fit(X_clean)`` trains the registered ``denoising-ae`` (Vincent et al. 2008) to
    reconstruct each clean example from a corrupted copy made afresh at every step.
    ``noise`` picks the corruption and ``noise_level`` its strength, mapped onto the model's
    own settings ``corruption`` and ``noise``:

    * ``"gaussian"``: x + noise_level * eps, eps ~ N(0, 1), in the model's space: images
      scaled to [0, 1], tables in units of each feature's standard deviation;
    * ``"masking"``: each value set to 0 with probability noise_level;
    * ``"salt-pepper"``: a fraction noise_level of values set to the data's min or max.

    ``clip`` (Gaussian noise on images): False (default), the noise is left as drawn, beyond
    the data's range, and ``transform`` passes its noisy images to the model unclipped; True,
    the training corruption is clamped to the data's range (as noisy images saved as 8-bit
    files are) and ``transform`` clips its inputs likewise. Train the way the noisy data was
    made. Tables have no range: ``clip=True`` is refused for them. With masking and
    salt-and-pepper noise, which stay in the range, ``transform`` clips its inputs.

    ``transform`` returns arrays of X's shape and layout, in X's value range (images are
    clipped to the training range; tables are un-standardised), dtype float64 unless X is
    float32, or X's integer dtype for integer images fitted as 8-bit data (uint8 -> uint8,
    rounded).
    ``model`` may be any registered model with the corruption settings (``denoising-ae``).
    Other parameters: see :class:`~deepgen.apps.base.AutoencoderEstimator`.

    scikit-learn's estimator checks: all pass; none is skipped.
    """

    def __init__(
        self,
        model: str = "denoising-ae",
        settings: Mapping[str, Any] | None = None,
        noise: str = "gaussian",
        noise_level: float = 0.25,
        latent_dim: int | None = 32,
        epochs: int = 10,
        batch_size: int = 128,
        lr: float | None = None,
        device: str = "auto",
        random_state: int | None = None,
        verbose: bool = False,
        layout: str = "auto",
        clip: bool = False,
    ) -> None:
        self.model = model
        self.settings = settings
        self.noise = noise
        self.noise_level = noise_level
        self.latent_dim = latent_dim
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        self.layout = layout
        self.clip = clip

    def _check_model(self, cls: type[GenerativeModel]) -> None:
        if self.noise not in NOISES:
            raise UserError(f"unknown noise {self.noise!r}. Accepted: {', '.join(NOISES)}.")
        # Checked here, under this estimator's names: the model calls the level ``noise``
        # (this estimator's name for the kind), so its own message misleads, and float()
        # would turn None into a bare TypeError and "0.3" into 0.3.
        level = self.noise_level
        high = math.inf if self.noise == "gaussian" else 1.0
        if isinstance(level, bool) or not isinstance(level, numbers.Real) or not 0 <= level <= high or math.isnan(level):
            accepted = "a finite number >= 0 (the noise's std)" if self.noise == "gaussian" else "a number in [0, 1] (a fraction of the values)"
            raise UserError(f"noise_level must be {accepted} for noise={self.noise!r}, got {level!r}.")
        if not issubclass(cls, Reconstructor) or "corruption" not in config_fields(self.model):
            raise UserError(
                f"AutoencoderDenoiser needs a model trained on corrupted inputs (settings corruption and noise); "
                f"{self.model!r} has none. Use model='denoising-ae'."
            )

    def _extra_settings(self) -> dict[str, Any]:
        # clip only when asked, so that a user's own model without the setting still fits.
        return {"corruption": self.noise, "noise": float(self.noise_level), **({"clip": True} if self.clip else {})}

    def fit(self, X: Any, y: Any = None) -> AutoencoderDenoiser:
        """Train on clean X (N, F) or images (N, H, W), (N, C, H, W), (N, H, W, C); ``y`` is ignored.

        Warns (``ConvergenceWarning``) when the training examples differ but the model's
        outputs for them do not (a collapsed network, which returns one image for all)."""
        self._fit_arrays(X)
        return self

    def _denoise(self, x: torch.Tensor) -> torch.Tensor:
        """The fitted model's denoised mean of model-space inputs (N, *shape)."""
        model = self.model_
        fn = model.denoise if hasattr(model, "denoise") else model.reconstruct  # type: ignore[attr-defined]
        return fn(x)

    def _collapse_outputs(self, x: np.ndarray) -> tuple[str, np.ndarray]:
        return "outputs", self._batched(lambda b, _: self._denoise(b), x)

    def transform(self, X: Any) -> np.ndarray:
        """The denoised X (the model's reconstruction mean), of X's shape and value range."""
        given = dtype_of(X)
        X = self._validate_input(X)
        dtype = self.codec_.output_dtype(given)
        # As the fitted model was trained (its settings, not this estimator's parameters, which
        # set_params may have changed since): unclipped Gaussian noise reaches it unclipped
        # (session 9: clipping shifted the noise's mean on black pixels and cost up to 3 dB);
        # masking, salt-and-pepper and clipped noise never left the range, so inputs are clipped.
        cfg = self.model_.config
        clip = cfg.corruption != "gaussian" or bool(getattr(cfg, "clip", False))
        return self._batched(lambda b, _: self._denoise(b), X, partial(self.codec_.to_model, clip=clip), lambda out: self.codec_.from_model(out, dtype))

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Tables: the input's feature names (each denoised feature is its input's). Defined so
        that ``set_output`` and ``Pipeline.set_output`` work; images have no feature names."""
        check_is_fitted(self, "model_")
        if self.codec_.image:
            raise ValueError(
                f"feature names are defined for tables (N, F); this denoiser was fitted on images of shape "
                f"{self.codec_.input_shape}, which transform returns as images."
            )
        return super().get_feature_names_out(input_features)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    def _more_tags(self) -> dict[str, Any]:  # scikit-learn < 1.6
        return {"preserves_dtype": ["float64", "float32"]}

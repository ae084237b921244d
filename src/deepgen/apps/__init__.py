"""scikit-learn estimators over the models' capabilities (layer 5; docs/apps.md).

* :class:`AutoencoderEmbedding`: ``transform(X)`` -> codes (N, latent_dim) for downstream tasks;
* :class:`AutoencoderDenoiser`: a denoising autoencoder, ``transform(X_noisy)`` -> denoised X;
* :class:`AutoencoderOutlierDetector`: anomaly scores by reconstruction error or likelihood.

They take tables (N, F) and images (N, H, W), (N, C, H, W) or (N, H, W, C) with C in 1, 3, 4
(integer images 0..255 read as 8-bit data, as the data layer reads them), train with
deepgen's one trainer (no run folder) and follow scikit-learn's conventions (Pipeline,
GridSearchCV, clone, pickle).
"""

from __future__ import annotations

from .anomaly import AutoencoderOutlierDetector
from .denoising import AutoencoderDenoiser
from .embedding import AutoencoderEmbedding

__all__ = ["AutoencoderDenoiser", "AutoencoderEmbedding", "AutoencoderOutlierDetector"]

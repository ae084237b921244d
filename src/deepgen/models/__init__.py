"""Model families. Importing this package registers every family (one file each)."""

from __future__ import annotations

from typing import Any

from ..data.dataset import Dataset, DataSpec
from ..registry import MODELS
from .base import GenerativeModel, LossOutput, ModelConfig, OptimizerSpec, Phase


def _load_families() -> None:
    from . import adversarial_ae, autoencoder, autoregressive, gan, vae  # noqa: F401  (registration by import)


def model_class(name: str) -> type[GenerativeModel]:
    """The class registered as ``name``; an unknown name lists the accepted ones."""
    _load_families()
    return MODELS.get(name)


def model_names() -> list[str]:
    _load_families()
    return MODELS.names()


def create_model(
    name: str,
    data: DataSpec | Dataset,
    config: ModelConfig | None = None,
    **overrides: Any,
) -> GenerativeModel:
    """Build registered model ``name`` for data ``data`` (a spec or a dataset).

    ``config`` defaults to the family's defaults; keyword ``overrides`` replace fields
    (``create_model("vae", ds, latent_dim=2)``).
    """
    cls = model_class(name)
    spec = data.spec if isinstance(data, Dataset) else data
    cfg = config if config is not None else cls.config_class()
    if overrides:
        cfg = cfg.replace(**overrides)
    return cls(cfg, spec)


__all__ = [
    "GenerativeModel",
    "LossOutput",
    "ModelConfig",
    "OptimizerSpec",
    "Phase",
    "create_model",
    "model_class",
    "model_names",
]

"""Model families. Importing this package registers every family (one file each)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..data.dataset import Dataset, DataSpec
from ..registry import MODELS
from .base import GenerativeModel, LossOutput, ModelConfig, OptimizerSpec, Phase
from .networks import Network, network


def _load_families() -> None:
    from . import adversarial_ae, autoencoder, autoregressive, diffusion, flow, gan, vae  # noqa: F401  (registration by import)


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
    (``create_model("vae", ds, latent_dim=2)``). A keyword whose value is a
    :func:`deepgen.network` replaces one of the family's networks by the user's module
    (``create_model("vae", ds, encoder=deepgen.network(MyEncoder, hidden=64))``; the
    family's ``replaceable_networks`` lists the names and what each must map).
    """
    cls = model_class(name)
    spec = data.spec if isinstance(data, Dataset) else data
    networks = {k: v for k, v in overrides.items() if _is_network(v)}
    settings = {k: v for k, v in overrides.items() if k not in networks}
    cfg = config if config is not None else cls.config_class()
    if settings:
        cfg = cfg.replace(**settings)
    if not networks:
        return cls(cfg, spec)
    cls.check_network_names(networks)
    return cls(cfg, spec, networks=networks)  # type: ignore[call-arg]


def _is_network(value: Any) -> bool:
    """A network spec, or a module or module class given where a spec belongs."""
    return isinstance(value, (Network, nn.Module)) or (isinstance(value, type) and issubclass(value, nn.Module))


__all__ = [
    "GenerativeModel",
    "LossOutput",
    "ModelConfig",
    "OptimizerSpec",
    "Network",
    "Phase",
    "create_model",
    "model_class",
    "model_names",
    "network",
]

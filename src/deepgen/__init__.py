"""deepgen: deep generative models with one trainer, one data layer and one evaluator."""

from __future__ import annotations

from . import devices  # noqa: F401, I001  (first: OpenMP's short spin is set before torch loads)
from .data import DataConfig, Dataset, DataSpec, load_dataset
from .errors import UserError
from .models import GenerativeModel, Network, create_model, model_names, network
from .pictures import SamplePictures
from .training import Run, TrainConfig, Trainer, load_run, seed_all
from .version import __version__

__all__ = [
    "DataConfig",
    "DataSpec",
    "Dataset",
    "GenerativeModel",
    "Network",
    "Run",
    "SamplePictures",
    "TrainConfig",
    "Trainer",
    "UserError",
    "__version__",
    "create_model",
    "load_dataset",
    "load_run",
    "model_names",
    "network",
    "seed_all",
]

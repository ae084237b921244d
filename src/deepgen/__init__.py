"""deepgen: deep generative models with one trainer, one data layer and one evaluator."""

from __future__ import annotations

__version__ = "0.1.0"

from .data import DataConfig, Dataset, DataSpec, load_dataset
from .errors import UserError
from .models import GenerativeModel, create_model, model_names
from .training import Run, TrainConfig, Trainer, load_run, seed_all

__all__ = [
    "DataConfig",
    "DataSpec",
    "Dataset",
    "GenerativeModel",
    "Run",
    "TrainConfig",
    "Trainer",
    "UserError",
    "__version__",
    "create_model",
    "load_dataset",
    "load_run",
    "model_names",
    "seed_all",
]

"""deepgen: deep generative models with one trainer, one data layer and one evaluator."""

from __future__ import annotations

__version__ = "0.1.0"

from .data import DataConfig, Dataset, DataSpec, load_dataset
from .errors import UserError
from .models import GenerativeModel, create_model, model_names

__all__ = [
    "DataConfig",
    "DataSpec",
    "Dataset",
    "GenerativeModel",
    "UserError",
    "__version__",
    "create_model",
    "load_dataset",
    "model_names",
]

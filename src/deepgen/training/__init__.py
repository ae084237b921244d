"""Training: the one loop (``Trainer``), its config, and the run folder format."""

from .checkpoint import Run, load_run, read_run_config
from .config import TrainConfig
from .logging import read_metrics
from .trainer import Trainer, TrainResult, fit_together, resolve_device, seed_all

__all__ = ["Run", "TrainConfig", "TrainResult", "Trainer", "fit_together", "load_run", "read_metrics", "read_run_config", "resolve_device", "seed_all"]

"""Timing helpers shared by the speed benchmarks (train_speed.py, gan_speed.py)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from deepgen.training import Trainer, fit_together


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a host clock read after it measures that work)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fit(trainers: Sequence[Trainer], warmup: int, steps: int, device: torch.device) -> float:
    """Seconds that ``steps`` more training steps of every trainer take (``fit_together``),
    after ``warmup`` untimed steps (compilation, CUDA-graph capture, cuDNN autotuning)."""
    for t in trainers:
        t.config = t.config.replace(max_steps=warmup)
    fit_together(trainers)
    sync(device)
    for t in trainers:
        t.config = t.config.replace(max_steps=warmup + steps)
    t0 = time.perf_counter()
    fit_together(trainers)
    sync(device)
    return time.perf_counter() - t0

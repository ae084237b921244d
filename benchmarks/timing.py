"""Timing helpers shared by the speed benchmarks (train_speed.py, gan_speed.py)."""

from __future__ import annotations

import json
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from deepgen.training import Trainer, fit_together


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a host clock read after it measures that work)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, warmup: int, steps: int, device: torch.device) -> float:
    """Seconds that ``steps`` calls of ``step()`` take after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return time.perf_counter() - t0


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


def write_record(path: str, rows: list[dict], hardware: str) -> None:
    """The measured rows as JSON, with the hardware, torch and Python versions and the command."""
    record = {"rows": rows, "hardware": hardware, "torch": torch.__version__, "command": "python " + shlex.join(sys.argv), "python": platform.python_version()}
    Path(path).write_text(json.dumps(record, indent=2))

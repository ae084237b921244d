"""Helpers shared by the benchmarks: timing (train_speed.py, gan_speed.py, ar_train_speed.py)
and keeping the best validation epoch's weights (ar_mnist_nll.py, flow_tables.py)."""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from deepgen.training import TrainConfig, Trainer, fit_together


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a host clock read after it measures that work)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ResidentBatches:
    """Batches of a training set resident on the device, as a hand-written loop draws them:
    a device-side permutation sliced ``batch`` at a time, a new one when it runs out.
    ``next()`` gives the indices (batch,) of the next batch."""

    def __init__(self, n: int, batch: int, device: torch.device) -> None:
        self.n, self.batch, self.device = n, batch, device
        self.perm, self.pos = torch.randperm(n, device=device), 0

    def next(self) -> torch.Tensor:
        if self.pos + self.batch > self.n:
            self.perm, self.pos = torch.randperm(self.n, device=self.device), 0
        index = self.perm[self.pos : self.pos + self.batch]
        self.pos += self.batch
        return index


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


def trainer_rate(model, ds, batch: int, steps: int, warmup: int, device: torch.device, **train) -> float:
    """samples/s of deepgen's trainer on ``model`` (``train``: its settings, e.g. bf16=True,
    cuda_graph=True) over ``steps`` timed steps after ``warmup`` untimed ones."""
    cfg = TrainConfig(epochs=10**6, batch_size=batch, device=str(device), progress=False, tensorboard=False, log_every=100, val_limit=0, **train)
    return steps * batch / time_fit([Trainer(model, ds, cfg, None)], warmup, steps, device)


def guarded(row: dict, key: str, fn, *args, **kwargs) -> None:
    """row[key] = fn(*args, **kwargs), or the error's text in row[key + '_error']: one
    configuration that fails on a machine (a compile error, out of memory) is reported and
    the benchmark's other figures still run."""
    try:
        row[key] = fn(*args, **kwargs)
    except Exception as e:  # reported, not fatal
        row[key + "_error"] = f"{type(e).__name__}: {str(e)[:300]}"
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def write_record(path: str, rows: list[dict], hardware: str, **extra: Any) -> None:
    """The measured rows as JSON, with the hardware, torch and Python versions, the command
    and ``extra`` facts of the run (settings every row shares)."""
    record = {"rows": rows, "hardware": hardware, "torch": torch.__version__, "command": "python " + shlex.join(sys.argv),
              "python": platform.python_version(), **extra}
    Path(path).write_text(json.dumps(record, indent=2))


def resumed(run_dir: str, seconds: float) -> Trainer:
    """The run in ``run_dir`` resumed, allowed ``seconds`` more training in this call:
    ``max_seconds`` counts a run's training time over every call, so this call's budget goes
    on top of what the run has trained (ar_mnist_nll.py, vae_mnist_nll.py, diffusion_quality.py)."""
    trainer = Trainer.resume(run_dir)
    trainer.config = trainer.config.replace(max_seconds=trainer.seconds + seconds)
    return trainer


def timed_continuation(trainer: Trainer, config: TrainConfig, seconds: float) -> tuple[int, float]:
    """Go on training a warmed-up ``trainer`` under ``config`` for ``seconds`` more (its
    ``max_seconds`` counts the trainer's whole time, so the limit is the time so far plus
    ``seconds``); returns (steps taken, seconds they took, device work included). Graph
    capture, compilation and the first steps' one-off costs stay outside the timing
    (ar_mnist_nll.py's and vae_mnist_nll.py's step-rate probes)."""
    start = trainer.step
    trainer.config = config.for_model(type(trainer.model).train_defaults).replace(max_seconds=trainer.seconds + seconds)
    t0 = time.perf_counter()
    trainer.fit()
    sync(trainer.device)
    return trainer.step - start, time.perf_counter() - t0


def common_args(p: argparse.ArgumentParser, tiny: str = "tiny networks and data (CPU smoke test)") -> None:
    """The options every measurement script shares: --data-dir, --device, --seed, --tiny, --out."""
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help=tiny)
    p.add_argument("--out", default=None)


class BestWeights:
    """A trainer callback that keeps a CPU copy of the weights at the epoch with the lowest
    ``val_loss`` (the trainer's validation figure): model selection on held-out data in
    runs without a run folder (checkpointing a large model at each of its sub-second epochs
    would cost more than its training). ``curve``: [epoch, training loss, val_loss] of
    every epoch."""

    def __init__(self) -> None:
        self.best: float | None = None
        self.epoch = 0
        self.state: dict[str, torch.Tensor] | None = None
        self.curve: list[list[float | None]] = []

    def on_epoch_end(self, trainer: Trainer) -> None:
        value = trainer.last.get("val_loss")
        if value is not None:
            self.curve.append([trainer.loader.epochs_done, trainer.last.get("loss"), round(float(value), 4)])
        if value is not None and (self.best is None or value < self.best):
            self.best, self.epoch = float(value), trainer.loader.epochs_done
            # The validated weights: the EMA copy when the run keeps one (Trainer.validate).
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in trainer.eval_model.state_dict().items()}

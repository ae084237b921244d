"""Run logs: ``metrics.jsonl`` (one JSON object per logged step) and TensorBoard scalars."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..io import atomic_path
from .checkpoint import METRICS, TENSORBOARD

if TYPE_CHECKING:
    import torch


class RunLogger:
    """Appends logged values to ``run_dir/metrics.jsonl`` and, when enabled and installed,
    to TensorBoard event files under ``run_dir/tb``.

    ``resume_step``: lines of an earlier attempt logged after this step (written after the
    checkpoint the run resumes from) are dropped, so the log matches the resumed run; so
    are the values a line marks ``interim`` (the validation at the end of a fit that
    stopped mid-epoch, which an uninterrupted run does not have). The log is rewritten
    atomically (a kill leaves the old log or the trimmed one).
    """

    def __init__(self, run_dir: Path | None, tensorboard: bool = True, resume_step: int | None = None) -> None:
        self.path = None if run_dir is None else Path(run_dir) / METRICS
        self.tb = None
        if self.path is None:
            return
        if resume_step is not None and self.path.exists():
            keep = [_without_interim(line) for line in self.path.read_text().splitlines() if _step(line) <= resume_step]
            with atomic_path(self.path) as tmp:
                tmp.write_text("".join(line + "\n" for line in keep))
        elif resume_step is None and self.path.exists():
            self.path.unlink()  # a fresh run in an old folder starts a fresh log
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(run_dir) / TENSORBOARD), purge_step=resume_step)
            except ImportError:
                warnings.warn("tensorboard is not installed: TensorBoard logs are off (pip install tensorboard)", stacklevel=2)

    def log(self, step: int, values: dict[str, float], interim: Sequence[str] = (), **extra: Any) -> None:
        """One record; ``interim``: keys of ``values`` that a resumed run drops from it."""
        record = {"step": step, **extra, **{k: _json_float(v) for k, v in values.items()}}
        if interim:
            record["interim"] = list(interim)
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in values.items():
                if math.isfinite(value):
                    self.tb.add_scalar(key, value, step)

    def histograms(self, step: int, values: dict[str, torch.Tensor]) -> None:
        """Value histograms to TensorBoard (nothing in metrics.jsonl: they are not scalars)."""
        if self.tb is not None:
            import torch

            for key, v in values.items():
                v = v.detach().float().cpu().reshape(-1)
                # A diverged model's NaN weights would make TensorBoard raise before the
                # trainer's NaN guard could stop the run with its message: keep finite values.
                v = v[torch.isfinite(v)]
                if v.numel():
                    self.tb.add_histogram(key, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def _json_float(v: float) -> float | str:
    return v if math.isfinite(v) else str(v)  # JSON has no NaN/Inf


def _without_interim(line: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return line
    if not isinstance(record, dict) or not isinstance(record.get("interim"), list):
        return line
    for key in record.pop("interim"):
        record.pop(key, None)
    return json.dumps(record)


def _step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return 1 << 62


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The logged records of a run, in order."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

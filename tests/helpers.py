"""Small helpers shared by several test files (pytest puts tests/ on the import path)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import torch

from deepgen.data.dataset import Batch
from deepgen.models.base import GenerativeModel
from deepgen.training import checkpoint as ckpt
from deepgen.training import read_metrics


def fit_one_phase(
    model: GenerativeModel,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    steps: int = 200,
    batch: int = 64,
    seed: int = 0,
    lr: float | None = None,
) -> None:
    """Plain Adam on the model's one phase over ``x`` (N, ...) and labels ``y`` (N,) or None,
    random batches drawn with ``seed`` (the trainer's job, reduced to a loop). ``lr``: the
    phase's own when None."""
    (phase,) = model.phases()
    opt = torch.optim.Adam(phase.parameters, lr=phase.optimizer.lr if lr is None else lr)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(x), (batch,), generator=g)
        out = model.loss(Batch(x[idx], None if y is None else y[idx]), phase.name)
        opt.zero_grad()
        out.loss.backward()
        opt.step()


# Logged figures that measure wall-clock time: they differ from run to run.
WALL_CLOCK = ("seconds", "samples_per_s")


def assert_same_metrics(a_dir: Path, b_dir: Path) -> None:
    """Two runs logged the same steps and the same values at each (wall-clock figures aside)."""
    a, b = read_metrics(a_dir), read_metrics(b_dir)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        ra, rb = dict(ra), dict(rb)
        for clock in WALL_CLOCK:
            ra.pop(clock, None), rb.pop(clock, None)
        assert ra == rb, f"step {ra['step']}: {ra} != {rb}"


def to_old_layout(run: Path) -> None:
    """Rewrite a run folder as deepgen wrote it before checkpoints/: real files at the top."""
    ck = ckpt.current_checkpoint(run)
    for name in ckpt.VIEWS:
        view = run / name
        if view.is_symlink():
            view.unlink()
        src = ck.path / name
        if src.is_dir():
            shutil.copytree(src, view)
        elif src.is_file():
            shutil.copy2(src, view)
    shutil.rmtree(run / ckpt.CHECKPOINTS)


ROOT = Path(__file__).resolve().parents[1]


def load_script(folder: str, name: str, prefix: str) -> ModuleType:
    """Import ``ROOT/folder/name.py`` (a benchmark or example script, not a package) as
    module ``prefix_name``, with its folder on ``sys.path`` as when it runs as a script
    (the benchmarks import their shared ``timing`` module)."""
    if str(ROOT / folder) not in sys.path:
        sys.path.append(str(ROOT / folder))
    spec = importlib.util.spec_from_file_location(f"{prefix}_{name}", ROOT / folder / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def perturb(module: torch.nn.Module, std: float, seed: int = 0) -> torch.nn.Module:
    """Add Gaussian noise of ``std`` to every parameter (the zero-initialised ones included),
    so that no layer is the identity: maths tests on random non-trivial weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return module

"""The run folder: one directory per training run, written atomically, loaded without pickle.

::

    run/
      config.json          model name and config, data config, train config, data spec
      model.safetensors    weights (metadata: the step they belong to)
      ema.safetensors      EMA weights, when the run keeps an EMA
      data_state.safetensors  arrays needed to undo preprocessing (a CSV scaler)
      trainer_state/       tensors.safetensors + state.json: optimizers, step, RNG states,
                           data position
      metrics.jsonl        one JSON object per logged step
      samples.png ...      pictures

Every file is written to a temporary name and renamed into place; ``trainer_state`` is
written as a new folder and swapped in. Loading reads safetensors and JSON only, so a run
folder from anywhere cannot execute code.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import __version__
from ..data import DataConfig, Dataset, DataSpec, load_dataset
from ..errors import UserError
from ..models import create_model, model_class
from ..models.base import GenerativeModel, ModelConfig
from .config import TrainConfig

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
EMA_WEIGHTS = "ema.safetensors"
DATA_STATE = "data_state.safetensors"
TRAINER_STATE = "trainer_state"
EVAL = "eval.json"  # figures of `deepgen eval`, merged per metric and split


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temp file in the same folder, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """safetensors file written atomically; tensors are copied to contiguous CPU memory."""
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file(flat, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (no unpickling); a :class:`UserError` when the
    file is missing or corrupt."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}. The file is missing or corrupt.") from None


def step_of(path: Path) -> int | None:
    """The ``step`` recorded in a safetensors file's metadata."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return int(meta["step"]) if "step" in meta else None
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}. The file is missing or corrupt.") from None


# -- config.json ----------------------------------------------------------------------------


def write_run_config(
    run_dir: Path,
    model_name: str,
    model_config: ModelConfig,
    data_config: DataConfig,
    train_config: TrainConfig,
    dataset: Dataset,
) -> None:
    """Write ``config.json`` (model, data and trainer configs, the data spec and meta,
    deepgen's version) atomically, and the dataset's fitted state (a table's scaler) as
    ``data_state.safetensors``: what :func:`load_run` needs to rebuild the run."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(
        run_dir / CONFIG,
        {
            "deepgen_version": __version__,
            "model": model_name,
            "model_config": model_config.to_dict(),
            "data": data_config.to_dict(),
            "train": train_config.to_dict(),
            "spec": dataset.spec.to_dict(),
            "data_meta": dataset.meta,
        },
    )
    if dataset.state:
        save_tensors(run_dir / DATA_STATE, {k: torch.from_numpy(np.asarray(v)) for k, v in dataset.state.items()})


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """``config.json`` of a run folder as a dict, checked for the entries every run has;
    a :class:`UserError` when the folder is not a run or the file is corrupt."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run folder: {CONFIG} is missing (a run folder has {CONFIG} and {WEIGHTS}).")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); the run folder is corrupt.") from None
    for key in ("model", "model_config", "data", "train", "spec"):
        if key not in cfg:
            raise UserError(f"{path} has no {key!r} entry; the run folder is corrupt or from another tool.")
    return cfg


# -- loading a run --------------------------------------------------------------------------


@dataclass
class Run:
    """A loaded run folder: the model (in eval mode) and the configs it was trained with."""

    path: Path
    model_name: str
    model: GenerativeModel
    model_config: ModelConfig
    data_config: DataConfig
    train_config: TrainConfig
    spec: DataSpec
    data_meta: dict[str, Any]
    step: int | None

    def load_dataset(self, **data_overrides: Any) -> Dataset:
        """The dataset the run was trained on (its saved preprocessing state restored)."""
        cfg = self.data_config.replace(**data_overrides) if data_overrides else self.data_config
        ds = load_dataset(cfg)
        if ds.spec.shape != self.spec.shape or ds.spec.kind != self.spec.kind:
            raise UserError(
                f"dataset {cfg.name!r} now has shape {ds.spec.shape} ({ds.spec.kind}) but the run was "
                f"trained on {self.spec.shape} ({self.spec.kind})."
            )
        state_path = self.path / DATA_STATE
        if state_path.is_file():
            ds.state = {k: v.numpy() for k, v in read_tensors(state_path).items()}
        return ds


def load_run(
    run_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    model_overrides: dict[str, str] | None = None,
    use_ema: bool = True,
) -> Run:
    """Load a run folder's model and configs.

    ``model_overrides`` are ``key -> text`` settings applied to the saved model config
    (for evaluation knobs such as ``iwae_k``; a change that alters the parameters fails
    to load with a clear message). ``use_ema``: load the EMA weights when the run has them.
    """
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    cls = model_class(cfg["model"])
    model_config = cls.config_class.from_dict(cfg["model_config"])
    if model_overrides:
        model_config = model_config.with_overrides(model_overrides)
    spec = DataSpec.from_dict(cfg["spec"])
    model = create_model(cfg["model"], spec, model_config)
    weights = run_dir / (EMA_WEIGHTS if use_ema and (run_dir / EMA_WEIGHTS).is_file() else WEIGHTS)
    if not weights.is_file():
        raise UserError(f"{run_dir} has no {WEIGHTS}: the run has not written a checkpoint yet.")
    state = read_tensors(weights)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        # The first line of PyTorch's message is a heading; the next ones name the tensors.
        lines = [ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()] or [str(e)]
        raise UserError(f"the weights in {weights} do not fit the model config: {lines[0]}") from None
    model.to(device).eval()
    return Run(
        path=run_dir,
        model_name=cfg["model"],
        model=model,
        model_config=model_config,
        data_config=DataConfig.from_dict(cfg["data"]),
        train_config=TrainConfig.from_dict(cfg["train"]),
        spec=spec,
        data_meta=cfg.get("data_meta", {}),
        step=step_of(weights),
    )


# -- trainer state --------------------------------------------------------------------------


def _split_state(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace every tensor in a nested dict/list by a reference ``{"__tensor__": key}``."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {str(k): _split_state(v, f"{prefix}.{k}", tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_split_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    return obj


def _join_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        return {k: _join_state(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join_state(v, tensors) for v in obj]
    return obj


def _optimizer_state(sd: dict[str, Any]) -> dict[str, Any]:
    """JSON turned the integer parameter ids of an optimizer state into strings; undo it."""
    sd = dict(sd)
    sd["state"] = {int(k): v for k, v in sd["state"].items()}
    return sd


def save_trainer_state(run_dir: Path, state: dict[str, Any]) -> None:
    """Write ``trainer_state/`` (tensors -> safetensors, the rest -> JSON) and swap it in."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split_state(state, "s", tensors)
    final = run_dir / TRAINER_STATE
    tmp = run_dir / f".{TRAINER_STATE}.tmp"
    old = run_dir / f".{TRAINER_STATE}.old"
    for p in (tmp, old):
        if p.exists():
            shutil.rmtree(p)
    tmp.mkdir()
    save_tensors(tmp / "tensors.safetensors", tensors)
    write_json(tmp / "state.json", skeleton)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def load_trainer_state(run_dir: Path) -> dict[str, Any]:
    folder = run_dir / TRAINER_STATE
    if not (folder / "state.json").is_file():
        raise UserError(f"cannot resume {run_dir}: {TRAINER_STATE}/ is missing (the run never wrote a checkpoint).")
    tensors = read_tensors(folder / "tensors.safetensors")
    try:
        skeleton = json.loads((folder / "state.json").read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{folder / 'state.json'} is corrupt ({e}).") from None
    state = _join_state(skeleton, tensors)
    state["optimizers"] = [_optimizer_state(o) for o in state["optimizers"]]
    return state

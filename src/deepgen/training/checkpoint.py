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
      tb/                  TensorBoard event files
      eval.json            figures of ``deepgen eval``
      report.html          ``deepgen report``'s page
      samples.png ...      pictures (written by the presentation layer: ``deepgen.pictures``
                           during training, ``deepgen.analysis`` after it)

This module owns the format: the file names (:data:`RUN_FILES`), writing and reading each
part, rebuilding the model from ``config.json`` (:func:`build_model`, used by
:func:`load_run` and ``Trainer.resume``) and removing a run that never reached its first
checkpoint (:func:`discard_unfinished`).

Every file is written to a temporary name and renamed into place; ``trainer_state`` is
written as a new folder and swapped in. Loading reads safetensors and JSON only, so a run
folder from anywhere cannot execute code.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import DataConfig, Dataset, DataSpec, load_dataset
from ..errors import UserError
from ..io import read_tensors, save_tensors, tensor_metadata, write_json
from ..models import create_model, model_class
from ..models.base import GenerativeModel, ModelConfig
from ..version import __version__
from .config import TrainConfig

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
EMA_WEIGHTS = "ema.safetensors"
DATA_STATE = "data_state.safetensors"
TRAINER_STATE = "trainer_state"
METRICS = "metrics.jsonl"  # one JSON object per logged step (training.logging)
TENSORBOARD = "tb"  # TensorBoard event files (training.logging)
EVAL = "eval.json"  # figures of `deepgen eval`, merged per metric and split
REPORT = "report.html"  # `deepgen report RUN`'s page, by default
# Pictures: samples during training (deepgen.pictures.SamplePictures), the rest after it
# (deepgen.analysis.write_analysis).
SAMPLES = "samples.png"
SAMPLES_DIR = "samples"  # samples/stepNNNNNNN.png: one copy of samples.png per sample point
HISTOGRAMS = "histograms.png"
RECONSTRUCTIONS = "reconstructions.png"
LATENT = "latent.png"
MANIFOLD = "manifold.png"
INTERPOLATION = "interpolation.png"
PICTURES = (SAMPLES, RECONSTRUCTIONS, MANIFOLD, LATENT, INTERPOLATION, HISTOGRAMS)

# Every name a run folder may hold. Replacing a run (``deepgen train --overwrite``) or
# removing one that never reached a checkpoint deletes exactly these, and nothing else
# the user keeps in the folder.
RUN_FILES = (CONFIG, WEIGHTS, EMA_WEIGHTS, DATA_STATE, TRAINER_STATE, METRICS, TENSORBOARD, EVAL, REPORT, SAMPLES_DIR, *PICTURES)


def is_run(folder: str | Path) -> bool:
    """True when ``folder`` holds a run (its ``config.json``)."""
    return (Path(folder) / CONFIG).is_file()


def has_checkpoint(folder: str | Path) -> bool:
    """True when the run in ``folder`` has written a checkpoint (its weights)."""
    return (Path(folder) / WEIGHTS).is_file()


def remove_run_files(folder: str | Path) -> None:
    """Delete the files of a run in ``folder`` (only the names of :data:`RUN_FILES`)."""
    folder = Path(folder)
    for name in RUN_FILES:
        p = folder / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def discard_unfinished(folder: str | Path, *, created: bool) -> bool:
    """Remove a run that never reached its first checkpoint (it is only half written);
    returns True when something was removed. ``created``: the folder did not exist before
    the run, so it goes entirely; otherwise only the run's files go. A run with a
    checkpoint is kept (it can be resumed)."""
    folder = Path(folder)
    if has_checkpoint(folder) or not folder.is_dir():
        return False
    if created:
        shutil.rmtree(folder, ignore_errors=True)
    else:
        remove_run_files(folder)
    return True


def step_of(path: Path) -> int | None:
    """The ``step`` recorded in a safetensors file's metadata."""
    meta = tensor_metadata(path)
    try:
        return int(meta["step"]) if "step" in meta else None
    except ValueError:
        raise UserError(f"cannot read {path}: its step {meta['step']!r} is not a number. The file is corrupt.") from None


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


def saved_model_config(cfg: Mapping[str, Any], model_overrides: Mapping[str, str] | None = None) -> ModelConfig:
    """The model config saved in ``config.json`` (``cfg``, from :func:`read_run_config`),
    with ``key -> text`` overrides parsed by each field's type (an unknown key is a
    :class:`UserError` listing the accepted ones)."""
    model_config = model_class(cfg["model"]).config_class.from_dict(cfg["model_config"])
    if model_overrides:
        model_config = model_config.with_overrides(dict(model_overrides))
    return model_config


def build_model(
    cfg: Mapping[str, Any], data: DataSpec | Dataset | None = None, model_overrides: Mapping[str, str] | None = None
) -> GenerativeModel:
    """A fresh model as a run folder's ``config.json`` (``cfg``) describes it, for ``data``
    (the dataset or spec it trains on; None: the saved spec), weights not loaded.

    ``model_overrides``: ``key -> text`` changes of the saved model config (sampling and
    evaluation knobs, see :func:`load_run`). The one place a run's model is rebuilt:
    :func:`load_run` and ``Trainer.resume`` both come here.
    """
    spec_or_data = DataSpec.from_dict(cfg["spec"]) if data is None else data
    return create_model(cfg["model"], spec_or_data, saved_model_config(cfg, model_overrides))


def _mismatch(model: GenerativeModel, state: Mapping[str, torch.Tensor]) -> str | None:
    """Load ``state`` into ``model``; None on success, else the first line that says why not."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        # The first line of PyTorch's message is a heading; the next ones name the tensors.
        lines = [ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()] or [str(e)]
        return lines[0].rstrip(".")
    return None


def load_weights(model: GenerativeModel, path: Path) -> None:
    """Load the safetensors weights at ``path`` into ``model``; a :class:`UserError` when
    the file is unreadable or the weights do not fit the model."""
    why = _mismatch(model, read_tensors(path))
    if why is not None:
        raise UserError(f"the weights in {path} do not fit the model config: {why}.")


def load_run(
    run_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    model_overrides: Mapping[str, str] | None = None,
    use_ema: bool = True,
) -> Run:
    """Load a run folder's model and configs.

    ``model_overrides`` are ``key -> text`` settings applied to the saved model config
    (sampling and evaluation knobs such as ``iwae_k``); an unknown key, or a change that
    alters the parameters, is one :class:`UserError`. ``use_ema``: load the EMA weights
    when the run has them.
    """
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    model = build_model(cfg, None, model_overrides)
    weights = run_dir / (EMA_WEIGHTS if use_ema and (run_dir / EMA_WEIGHTS).is_file() else WEIGHTS)
    if not weights.is_file():
        raise UserError(f"{run_dir} has no {WEIGHTS}: the run has not written a checkpoint yet.")
    state = read_tensors(weights)
    why = _mismatch(model, state)
    if why is not None:
        if model_overrides and _mismatch(build_model(cfg), state) is None:  # the saved settings fit: the overrides do not
            raise UserError(
                f"cannot load {run_dir} with {', '.join(sorted(model_overrides))} changed: the change alters the "
                f"model's parameters ({why}). A loaded run may change only settings that leave the parameters "
                "as they are (sampling and evaluation knobs)."
            )
        raise UserError(f"the weights in {weights} do not fit the model config: {why}.")
    model.to(device).eval()
    return Run(
        path=run_dir,
        model_name=cfg["model"],
        model=model,
        model_config=model.config,
        data_config=DataConfig.from_dict(cfg["data"]),
        train_config=TrainConfig.from_dict(cfg["train"]),
        spec=model.spec,
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

"""The run folder: one directory per training run, written atomically, loaded without pickle.

::

    run/
      config.json          model name and config, data config, train config, data spec;
                           "networks": the class ("module:QualName") and constructor
                           arguments of each user network (deepgen.network), if any
      data_state.safetensors  arrays needed to undo preprocessing (a CSV scaler)
      checkpoints/
        step-0000120/      one complete checkpoint, written whole, then renamed into place:
          model.safetensors    weights (metadata: the step they belong to)
          ema.safetensors      EMA weights, when the run keeps an EMA
          trainer_state/       tensors.safetensors + state.json: optimizers, step, RNG
                               states, data position
          manifest.json        step, size and sha256 of each file above, the keep_best
                               figure, and its own sha256
        step-0000160/      the newest complete one is the current checkpoint
      model.safetensors    views of the current checkpoint (symbolic links into
      ema.safetensors        checkpoints/, copies where links are not allowed), for tools
      trainer_state/         and people that look for them; deepgen reads checkpoints/
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

A checkpoint is one transaction (:func:`write_checkpoint`): its files are written into
``checkpoints/step-N.tmp/``, flushed to the disk with the manifest last, and the folder is
renamed to ``step-N``. That rename is the commit: readers take the newest ``step-N``
folder (:func:`current_checkpoint`, the one function that finds it), so a process killed
at any instant leaves the previous checkpoint current and whole, and a killed write leaves
only a ``.tmp`` folder that the next write removes. Older checkpoints are removed after
the new one is current, keeping ``TrainConfig.keep_checkpoints`` of them and, with
``keep_best``, the best by a logged figure. Each file's sha256 is checked when it is read.

Run folders of earlier versions (``model.safetensors`` and ``trainer_state/`` at the top,
no ``checkpoints/``) load and resume as they are; their next checkpoint is written in the
new layout. Every other file is written to a temporary name and renamed into place.
Loading reads safetensors and JSON only: nothing is unpickled and no code is read from
the folder. One exception to "no code runs": a run with user networks names their classes
(``"networks"``), and loading imports those modules from the import path (running their
top-level code, as ``import`` does) and calls the classes with the recorded JSON
arguments once they are checked to be ``nn.Module`` classes. So a run folder with a
``networks`` entry can make deepgen import any installed module: load those only from
people whose code you would import.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import MEMORY, DataConfig, Dataset, DataSpec, load_dataset, load_dataset_from_arrays
from ..errors import UserError
from ..io import file_sha256, fsync_dir, read_tensors, save_tensors, tensor_metadata, write_json
from ..models import create_model, model_class
from ..models.base import GenerativeModel, ModelConfig
from ..models.networks import Network, from_record
from ..version import __version__
from .config import TrainConfig

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
EMA_WEIGHTS = "ema.safetensors"
DATA_STATE = "data_state.safetensors"
DATA_ARRAYS = "data_arrays.npz"  # data given in memory (load_dataset(array)): the arrays, so the run reloads by itself
TRAINER_STATE = "trainer_state"
STATE_JSON = "state.json"  # in trainer_state/: everything but the tensors
STATE_TENSORS = "tensors.safetensors"  # in trainer_state/: the tensors state.json refers to
CHECKPOINTS = "checkpoints"  # checkpoints/step-NNNNNNN/: one complete checkpoint each
MANIFEST = "manifest.json"  # in each checkpoint, written last: step, files and their sha256
CHECKPOINT_FORMAT = 1  # manifest.json's "format"
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
COMPLETIONS = "completions.png"
DENSITY = "density.png"
TEMPERATURES = "temperatures.png"
SAMPLES_TEXT = "samples.txt"  # text samples of token data with a vocabulary
PICTURES = (SAMPLES, RECONSTRUCTIONS, MANIFOLD, LATENT, INTERPOLATION, HISTOGRAMS, COMPLETIONS, DENSITY, TEMPERATURES)

# The files of one checkpoint, relative to its folder; the views at the top of the run
# folder have the names of the first three.
VIEWS = (WEIGHTS, EMA_WEIGHTS, TRAINER_STATE)
STATE_JSON_FILE = f"{TRAINER_STATE}/{STATE_JSON}"
STATE_TENSORS_FILE = f"{TRAINER_STATE}/{STATE_TENSORS}"
CHECKPOINT_FILES = (WEIGHTS, EMA_WEIGHTS, STATE_TENSORS_FILE, STATE_JSON_FILE)
REQUIRED_FILES = (WEIGHTS, STATE_TENSORS_FILE, STATE_JSON_FILE)

# Every name a run folder may hold. Replacing a run (``deepgen train --overwrite``) or
# removing one that never reached a checkpoint deletes exactly these, and nothing else
# the user keeps in the folder.
RUN_FILES = (
    CONFIG, CHECKPOINTS, WEIGHTS, EMA_WEIGHTS, DATA_STATE, DATA_ARRAYS, TRAINER_STATE, METRICS, TENSORBOARD, EVAL, REPORT,
    SAMPLES_DIR, SAMPLES_TEXT, *PICTURES,
)

# A committed checkpoint folder: step-N, or step-N.old (a same-step checkpoint moved aside
# while its replacement is renamed in; it counts only while step-N is absent).
_COMMITTED = re.compile(r"^step-(\d+)(\.old)?$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint of ``step`` (``step-0000123``)."""
    return f"step-{step:07d}"


def is_run(folder: str | Path) -> bool:
    """True when ``folder`` holds a run (its ``config.json``)."""
    return (Path(folder) / CONFIG).is_file()


def has_checkpoint(folder: str | Path) -> bool:
    """True when the run in ``folder`` has written a checkpoint (a committed folder in
    ``checkpoints/``, or the weights of an earlier version's layout)."""
    folder = Path(folder)
    return bool(_committed(folder)) or (folder / WEIGHTS).is_file()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def remove_run_files(folder: str | Path) -> None:
    """Delete the files of a run in ``folder`` (only the names of :data:`RUN_FILES`)."""
    folder = Path(folder)
    for name in RUN_FILES:
        _remove(folder / name)


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


# -- checkpoints ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """One complete checkpoint of a run: its folder, step and manifest.

    ``files`` maps each file (relative to ``path``) to its recorded ``sha256`` and
    ``bytes``; None for a run folder of an earlier version (``path`` is the run folder
    itself, nothing to check against). ``figure``: the ``keep_best`` value recorded with
    it (``{"key": ..., "value": ...}``), if any.
    """

    run_dir: Path
    path: Path
    step: int | None
    files: Mapping[str, Mapping[str, Any]] | None
    figure: Mapping[str, Any] | None = None

    @property
    def legacy(self) -> bool:
        """True for an earlier version's layout (no manifest, no checksums)."""
        return self.files is None

    def has(self, name: str) -> bool:
        return name in self.files if self.files is not None else (self.path / name).is_file()

    def _way_back(self) -> str:
        """How to go back to the previous checkpoint, when one is kept."""
        if self.files is None or self.step is None:
            return ""
        older = [s for s in _committed(self.run_dir) if s < self.step]
        return f" To go back to the checkpoint of step {max(older)}, remove {self.path}." if older else ""

    def _file(self, name: str) -> Path:
        path = self.path / name
        if self.files is not None and not path.is_file():
            folder, _, base = name.rpartition("/")
            where = f"{folder}/ is missing {base}" if folder else f"{base} is missing"
            raise UserError(f"the checkpoint {self.path} is incomplete: {where}. The run folder is corrupt.{self._way_back()}")
        return path

    def read_tensors(self, name: str) -> dict[str, torch.Tensor]:
        """The tensors of one of its files, checked against the manifest's sha256."""
        path = self._file(name)
        try:
            return read_tensors(path, sha256=None if self.files is None else self.files[name]["sha256"])
        except UserError as e:
            raise UserError(f"{e}{self._way_back()}") from None

    def read_json(self, name: str) -> Any:
        """A JSON file of it, checked against the manifest's sha256."""
        path = self._file(name)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise UserError(f"cannot read {path}: {e.strerror or e}. The file is missing or corrupt.") from None
        if self.files is not None and hashlib.sha256(data).hexdigest() != self.files[name]["sha256"]:
            raise UserError(
                f"cannot read {path}: its bytes do not match the sha256 recorded when it was written. "
                f"The file is missing or corrupt.{self._way_back()}"
            )
        try:
            return json.loads(data.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{path} is corrupt ({e}).") from None


def _committed(run_dir: Path) -> dict[int, Path]:
    """step -> folder of every committed checkpoint (``step-N``; ``step-N.old`` where
    ``step-N`` is absent)."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return {}
    found: dict[int, Path] = {}
    for entry in root.iterdir():
        m = _COMMITTED.match(entry.name)
        if m is None or not entry.is_dir():
            continue
        step = int(m.group(1))
        if m.group(2) is None or step not in found:
            found[step] = entry
    return found


def _corrupt_manifest(path: Path, why: str) -> UserError:
    return UserError(
        f"{path} {why}; the checkpoint is corrupt. Remove its folder to go back to an earlier checkpoint, if one is left."
    )


def _manifest_digest(manifest: Mapping[str, Any]) -> str:
    """The sha256 of a manifest's entries but its own ``sha256`` (canonical JSON)."""
    body = {k: v for k, v in manifest.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _read_manifest(run_dir: Path, folder: Path, step: int) -> Checkpoint:
    """The checkpoint in ``folder`` (committed as ``step``), its manifest checked."""
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _corrupt_manifest(path, "is missing") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _corrupt_manifest(path, f"is unreadable ({e})") from None
    if not isinstance(manifest, dict):
        raise _corrupt_manifest(path, "holds no JSON object")
    if manifest.get("sha256") != _manifest_digest(manifest):
        raise _corrupt_manifest(path, "does not match its own sha256 (it was changed after it was written)")
    fmt = manifest.get("format")
    if not isinstance(fmt, int) or isinstance(fmt, bool):
        raise _corrupt_manifest(path, f"has no format number (format: {fmt!r})")
    if fmt > CHECKPOINT_FORMAT:
        raise UserError(f"{path} is of checkpoint format {fmt}, newer than this deepgen ({__version__}) reads; upgrade deepgen.")
    if manifest.get("step") != step or isinstance(manifest.get("step"), bool):
        raise _corrupt_manifest(path, f"records step {manifest.get('step')!r} in the folder of step {step}")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise _corrupt_manifest(path, f"has no files table (files: {files!r})")
    for name, entry in files.items():
        if name not in CHECKPOINT_FILES:
            raise _corrupt_manifest(path, f"lists {name!r}, which is no file of a checkpoint")
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and _SHA256.match(entry["sha256"])):
            raise _corrupt_manifest(path, f"has no sha256 for {name}")
    missing = [n for n in REQUIRED_FILES if n not in files]
    if missing:
        raise _corrupt_manifest(path, f"lists no {', '.join(missing)}")
    figure = manifest.get("figure")
    if figure is not None and not (isinstance(figure, dict) and isinstance(figure.get("key"), str)):
        raise _corrupt_manifest(path, f"has a figure that is no {{key, value}} object ({figure!r})")
    return Checkpoint(run_dir, folder, step, files, figure)


def list_checkpoints(run_dir: str | Path) -> list[Checkpoint]:
    """The run's complete checkpoints in ``checkpoints/``, oldest first (an earlier
    version's layout has none: see :func:`current_checkpoint`)."""
    run_dir = Path(run_dir)
    return [_read_manifest(run_dir, folder, step) for step, folder in sorted(_committed(run_dir).items())]


def current_checkpoint(run_dir: str | Path) -> Checkpoint | None:
    """The checkpoint the run goes on from: the newest committed folder in
    ``checkpoints/`` (its manifest checked), else the top-level weights and
    ``trainer_state/`` of an earlier version's layout; None when the run has written
    no checkpoint. Every reader (``load_run``, ``Trainer.resume``, the CLI) comes here."""
    run_dir = Path(run_dir)
    committed = _committed(run_dir)
    if committed:
        step = max(committed)
        return _read_manifest(run_dir, committed[step], step)
    weights = run_dir / WEIGHTS
    if weights.is_file():
        return Checkpoint(run_dir, run_dir, step_of(weights), None)
    return None


def _figure_value(ck: Checkpoint, key: str) -> float | None:
    fig = ck.figure
    if not fig or fig.get("key") != key:
        return None
    v = fig.get("value")
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _best(checkpoints: list[Checkpoint], key: str, mode: str) -> Checkpoint | None:
    scored = [(v, ck) for ck in checkpoints if (v := _figure_value(ck, key)) is not None]
    if not scored:
        return None
    pick = min if mode == "min" else max
    return pick(scored, key=lambda t: t[0])[1]


def find_checkpoint(run_dir: str | Path, which: str | int = "latest") -> Checkpoint:
    """The checkpoint ``which`` names: ``"latest"`` (the current one), ``"best"`` (the
    best by the run's ``keep_best`` figure) or a step; a :class:`UserError` when there is
    none."""
    run_dir = Path(run_dir)
    if which == "latest":
        ck = current_checkpoint(run_dir)
        if ck is None:
            raise UserError(f"{run_dir} has no checkpoint: the run stopped before writing its first one.")
        return ck
    available = list_checkpoints(run_dir)
    if which == "best":
        cfg = read_run_config(run_dir)
        train = saved_train_config(cfg)
        if not train.keep_best:
            raise UserError(f"{run_dir} keeps no best checkpoint: it was trained without keep_best (e.g. --set keep_best=loss).")
        best = _best(available, train.keep_best, train.best_mode)
        if best is None:
            raise UserError(f"{run_dir} has no checkpoint with a {train.keep_best!r} figure.")
        return best
    if isinstance(which, int) and not isinstance(which, bool):
        for ck in available:
            if ck.step == which:
                return ck
        steps = ", ".join(str(ck.step) for ck in available) or "none"
        raise UserError(f"{run_dir} has no checkpoint of step {which}; it keeps steps {steps}.")
    raise UserError(f"a checkpoint is latest, best or a step number, got {which!r}.")


def _write_view(run_dir: Path, name: str, target: Path | None) -> None:
    """Point the top-level ``name`` at ``target`` (a relative symbolic link, or a copy
    where links are not allowed); remove it when ``target`` is None."""
    view = run_dir / name
    if target is None:
        _remove(view)
        return
    tmp = run_dir / f".{name}.view.tmp"
    _remove(tmp)
    try:
        os.symlink(os.path.relpath(target, run_dir), tmp, target_is_directory=target.is_dir())
    except (OSError, NotImplementedError):
        if target.is_dir():
            shutil.copytree(target, tmp)
        else:
            shutil.copy2(target, tmp)
    if view.is_dir() and not view.is_symlink():  # an earlier version's trainer_state/, or a copy
        old = run_dir / f".{name}.old.tmp"
        _remove(old)
        os.replace(view, old)
        os.replace(tmp, view)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, view)


def _update_views(run_dir: Path, folder: Path) -> None:
    try:
        for name in VIEWS:
            _write_view(run_dir, name, folder / name if (folder / name).exists() else None)
        for leftover in (f".{TRAINER_STATE}.tmp", f".{TRAINER_STATE}.old"):  # an earlier version's swap
            _remove(run_dir / leftover)
    except OSError as e:  # the checkpoint is committed; only the convenience views lag
        warnings.warn(f"could not update the views of the current checkpoint in {run_dir}: {e}", stacklevel=3)


def _prune(run_dir: Path, keep: int, best_key: str, best_mode: str) -> None:
    """Remove committed checkpoints beyond the newest ``keep`` (and the best by
    ``best_key``), shadowed ``.old`` folders and the ``.tmp`` leftovers of killed writes.
    A folder is renamed to ``*.del.tmp`` before it is deleted, so a kill mid-way never
    leaves a partial folder under a committed name."""
    root = run_dir / CHECKPOINTS
    committed = _committed(run_dir)
    steps = sorted(committed)
    kept = {committed[s] for s in steps[-keep:]}
    if best_key:
        readable = []
        for s in steps:
            try:
                readable.append(_read_manifest(run_dir, committed[s], s))
            except UserError:
                pass  # an unreadable manifest is never the best
        best = _best(readable, best_key, best_mode)
        if best is not None:
            kept.add(best.path)
    for entry in sorted(root.iterdir()):
        m = _COMMITTED.match(entry.name)
        if m is not None and entry not in kept:
            doomed = root / f"{entry.name}.del.tmp"
            _remove(doomed)
            os.replace(entry, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
        elif m is None and entry.name.endswith(".tmp"):
            _remove(entry)


def write_checkpoint(
    run_dir: Path,
    step: int,
    weights: Mapping[str, torch.Tensor],
    trainer_state: dict[str, Any],
    *,
    ema: Mapping[str, torch.Tensor] | None = None,
    metadata: dict[str, str] | None = None,
    keep: int = 2,
    figure: Mapping[str, Any] | None = None,
    best_mode: str = "min",
) -> Checkpoint:
    """Write one checkpoint as one transaction and make it the current one.

    Weights, EMA weights and the trainer state (tensors -> safetensors, the rest -> JSON)
    go into ``checkpoints/step-N.tmp/``, each file flushed to the disk, then
    ``manifest.json`` (the step, each file's size and sha256, ``figure``); the rename to
    ``checkpoints/step-N`` commits it. Then the top-level views follow, and checkpoints
    beyond the newest ``keep`` (and the best by ``figure["key"]``) are removed.
    """
    root = run_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    for entry in root.iterdir():  # the leftovers of a write or removal that was killed
        if entry.name.endswith(".tmp"):
            _remove(entry)
    name = checkpoint_name(step)
    tmp = root / f"{name}.tmp"
    tmp.mkdir()
    try:
        save_tensors(tmp / WEIGHTS, dict(weights), metadata, durable=True)
        if ema is not None:
            save_tensors(tmp / EMA_WEIGHTS, dict(ema), metadata, durable=True)
        tensors: dict[str, torch.Tensor] = {}
        skeleton = _split_state(trainer_state, "s", tensors)
        (tmp / TRAINER_STATE).mkdir()
        save_tensors(tmp / STATE_TENSORS_FILE, tensors, durable=True)
        write_json(tmp / STATE_JSON_FILE, skeleton, durable=True)
        files = {
            rel: {"sha256": file_sha256(tmp / rel), "bytes": (tmp / rel).stat().st_size}
            for rel in CHECKPOINT_FILES
            if (tmp / rel).is_file()
        }
        manifest = {
            "format": CHECKPOINT_FORMAT,
            "step": step,
            "deepgen_version": __version__,
            "files": files,
            "figure": None if figure is None else dict(figure),
        }
        manifest["sha256"] = _manifest_digest(manifest)
        write_json(tmp / MANIFEST, manifest, durable=True)
        fsync_dir(tmp / TRAINER_STATE)
        fsync_dir(tmp)
        final = root / name
        if final.exists():  # this step again: the older copy stays loadable as step-N.old
            aside = root / f"{name}.old"
            _remove(aside)
            os.replace(final, aside)
        os.replace(tmp, final)  # the commit
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(root)
    _update_views(run_dir, final)
    _prune(run_dir, keep, "" if figure is None else str(figure.get("key", "")), best_mode)
    return Checkpoint(run_dir, final, step, files, manifest["figure"])


# -- config.json ----------------------------------------------------------------------------


def write_run_config(
    run_dir: Path,
    model_name: str,
    model_config: ModelConfig,
    data_config: DataConfig,
    train_config: TrainConfig,
    dataset: Dataset,
    *,
    networks: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Write ``config.json`` (model, data and trainer configs, the data spec and meta,
    deepgen's version) atomically, and the dataset's fitted state (a table's scaler) as
    ``data_state.safetensors``: what :func:`load_run` needs to rebuild the run.

    ``networks``: the model's ``network_records`` (the class and constructor arguments of
    each user network), kept as ``"networks"`` when there are any."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg: dict[str, Any] = {
        "deepgen_version": __version__,
        "model": model_name,
        "model_config": model_config.to_dict(),
        "data": data_config.to_dict(),
        "train": train_config.to_dict(),
        "spec": dataset.spec.to_dict(),
        "data_meta": dataset.meta,
        "provenance": provenance(),
    }
    if networks:
        cfg["networks"] = {name: dict(record) for name, record in networks.items()}
    write_json(run_dir / CONFIG, cfg)
    if dataset.state:
        save_tensors(run_dir / DATA_STATE, {k: torch.from_numpy(np.asarray(v)) for k, v in dataset.state.items()})
    arrays = dataset.memory_arrays()
    if arrays is not None:  # data given in memory has no file to reload from: keep it in the run
        from ..io import atomic_path

        with atomic_path(run_dir / DATA_ARRAYS) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)


def reload_dataset(run_dir: str | Path, data_config: DataConfig) -> Dataset:
    """The dataset a run was trained on: ``load_dataset(data_config)``, or for data given in
    memory the arrays kept in the run folder (:data:`DATA_ARRAYS`, read without pickle)."""
    if data_config.name != MEMORY:
        return load_dataset(data_config)
    path = Path(run_dir) / DATA_ARRAYS
    if not path.is_file():
        raise UserError(f"{run_dir} was trained on data given in memory, but {DATA_ARRAYS} is missing; the run cannot reload its data.")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}. The file is corrupt.") from None
    return load_dataset_from_arrays(arrays, data_config)


def check_data_state(run_dir: str | Path, ds: Dataset) -> None:
    """The reloaded data's preprocessing state (a table's standardisation mean and std)
    against the one the run saved (:data:`DATA_STATE`): the same, or a :class:`UserError`.
    The splits were standardised with the recomputed statistics, so a run whose statistics
    were computed otherwise (by an older deepgen, or on other rows) would see other inputs
    than it trained on."""
    path = Path(run_dir) / DATA_STATE
    if not path.is_file():
        return
    saved = {k: v.numpy() for k, v in read_tensors(path).items()}
    now = {k: np.asarray(v) for k, v in ds.state.items()}
    same = saved.keys() == now.keys() and all(
        saved[k].shape == now[k].shape and np.allclose(saved[k], now[k], rtol=1e-5, atol=1e-7) for k in saved
    )
    if not same:
        raise UserError(
            f"{run_dir}: the data's preprocessing statistics ({', '.join(sorted(saved))}) computed now differ from the ones "
            "the run saved: the data, its settings or deepgen's standardisation changed since it was trained (since "
            "deepgen 2026-12-01 tables are standardised without their validation rows). Train the run again."
        )
    ds.state = saved


def git_commit(folder: str | Path | None = None) -> str | None:
    """``git rev-parse HEAD`` in ``folder`` (deepgen's source folder by default), with a 2 s
    timeout; None on any failure (no git, not a repository, a slow file system)."""
    import subprocess

    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=str(folder or Path(__file__).resolve().parent),
            capture_output=True, text=True, timeout=2, check=False,
        )
    except Exception:  # noqa: BLE001 - provenance is best effort: no git, no permission, a timeout
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", commit) else None


def provenance() -> dict[str, Any]:
    """Where and how a run was made: the command line, deepgen's version and git commit,
    the host, platform, Python, torch and CUDA devices, and the date (UTC, ISO 8601)."""
    import datetime
    import platform
    import socket
    import sys

    try:
        cuda = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    except Exception:  # noqa: BLE001 - a broken driver makes no run unrecordable
        cuda = []
    try:
        host = socket.gethostname()
    except OSError:
        host = None
    return {
        "argv": list(sys.argv),
        "deepgen_version": __version__,
        "git_commit": git_commit(),
        "hostname": host,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_devices": cuda,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _corrupt_config(path: Path, why: str) -> UserError:
    return UserError(f"{path} {why}; the run folder is corrupt or from another tool.")


# The entries every config.json has, with the JSON type each must be.
_CONFIG_ENTRIES = (("model", str, "a string"), ("model_config", dict, "an object"), ("data", dict, "an object"),
                   ("train", dict, "an object"), ("spec", dict, "an object"))


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """``config.json`` of a run folder as a dict, checked for the entries every run has
    and their JSON types; a :class:`UserError` when the folder is not a run or the file is
    corrupt. (The values inside the configs are checked where they are parsed:
    :func:`saved_model_config`, :func:`saved_train_config`, ...)"""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run folder: {CONFIG} is missing (a run folder has {CONFIG} and {CHECKPOINTS}/).")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); the run folder is corrupt.") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}.") from None
    if not isinstance(cfg, dict):
        raise _corrupt_config(path, f"holds {type(cfg).__name__}, not a JSON object")
    for key, kind, word in _CONFIG_ENTRIES:
        if key not in cfg:
            raise _corrupt_config(path, f"has no {key!r} entry")
        if not isinstance(cfg[key], kind):
            raise _corrupt_config(path, f"has {key!r} = {_short(cfg[key])}, which is not {word}")
    meta = cfg.get("data_meta", {})
    if not isinstance(meta, dict):
        raise _corrupt_config(path, f"has 'data_meta' = {_short(meta)}, which is not an object")
    cfg["data_meta"] = meta
    return cfg


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _parsed(part: str, cls: type[Any], values: Mapping[str, Any]) -> Any:
    """``cls.from_dict(values)`` for a part of config.json; its :class:`UserError` says
    where, and a setting without a default that is missing is one as well."""
    required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    try:
        missing = [name for name in required if name not in values]
        if missing:
            raise UserError(f"{cls.__name__} needs {', '.join(repr(n) for n in missing)}.")
        return cls.from_dict(values)
    except UserError as e:
        raise UserError(f"the run's {CONFIG} has a bad {part!r} entry: {e} The run folder is corrupt or from another version.") from None


def saved_model_config(cfg: Mapping[str, Any], model_overrides: Mapping[str, str] | None = None) -> ModelConfig:
    """The model config saved in ``config.json`` (``cfg``, from :func:`read_run_config`),
    with ``key -> text`` overrides parsed by each field's type. An unknown key, or a change
    of a setting outside the config's ``load_time`` ones (a setting that defines the
    trained model), is a :class:`UserError` listing the accepted ones."""
    try:
        cls = model_class(cfg["model"])
    except UserError as e:
        raise UserError(f"the run's {CONFIG} names a model this deepgen does not have: {e}") from None
    saved = _parsed("model_config", cls.config_class, cfg["model_config"])
    if not model_overrides:
        return saved
    # Refused before the changed config is validated, so that the message is about the
    # change itself, not a consequence of it (timesteps=4 against the saved steps=50).
    parsed = saved.parse_overrides(dict(model_overrides))
    fixed = sorted(k for k, v in parsed.items() if k not in saved.load_time and v != getattr(saved, k))
    if fixed:
        changes = ", ".join(f"{k}={parsed[k]!r} (trained with {getattr(saved, k)!r})" for k in fixed)
        allowed = ", ".join(sorted(saved.load_time)) or "none"
        raise UserError(
            f"cannot change {changes} of a trained {cfg['model']} run: {'it defines' if len(fixed) == 1 else 'they define'} "
            f"the model its weights were trained as. Settings a loaded {cfg['model']} run may change: {allowed}."
        )
    return saved.replace(**parsed)


def saved_train_config(cfg: Mapping[str, Any]) -> TrainConfig:
    """The trainer config saved in ``config.json`` (a :class:`UserError` when it is bad)."""
    return _parsed("train", TrainConfig, cfg["train"])


def saved_data_config(cfg: Mapping[str, Any]) -> DataConfig:
    """The data config saved in ``config.json`` (a :class:`UserError` when it is bad)."""
    return _parsed("data", DataConfig, cfg["data"])


def saved_spec(cfg: Mapping[str, Any]) -> DataSpec:
    """The data spec saved in ``config.json`` (a :class:`UserError` when it is bad)."""
    return _parsed("spec", DataSpec, cfg["spec"])


def saved_networks(cfg: Mapping[str, Any]) -> dict[str, Network]:
    """The user networks recorded in ``config.json`` (``"networks"``; none for most runs),
    their classes imported by name: a :class:`UserError` saying which class cannot be
    imported and how to make it importable."""
    records = cfg.get("networks", {})
    if not isinstance(records, dict):
        raise UserError(f"the run's {CONFIG} has 'networks' = {_short(records)}, which is not an object; the run folder is corrupt.")
    return {name: from_record(name, record) for name, record in records.items()}


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
    checkpoint: Checkpoint | None = None  # the checkpoint its weights came from

    def load_dataset(self, **data_overrides: Any) -> Dataset:
        """The dataset the run was trained on (its saved preprocessing state restored)."""
        cfg = self.data_config.replace(**data_overrides) if data_overrides else self.data_config
        ds = reload_dataset(self.path, cfg)
        if ds.spec.shape != self.spec.shape or ds.spec.kind != self.spec.kind:
            raise UserError(
                f"dataset {cfg.name!r} now has shape {ds.spec.shape} ({ds.spec.kind}) but the run was "
                f"trained on {self.spec.shape} ({self.spec.kind})."
            )
        check_data_state(self.path, ds)
        return ds


def build_model(
    cfg: Mapping[str, Any], data: DataSpec | Dataset | None = None, model_overrides: Mapping[str, str] | None = None
) -> GenerativeModel:
    """A fresh model as a run folder's ``config.json`` (``cfg``) describes it, for ``data``
    (the dataset or spec it trains on; None: the saved spec), weights not loaded.

    ``model_overrides``: ``key -> text`` changes of the saved model config (sampling and
    evaluation knobs, see :func:`load_run`). The one place a run's model is rebuilt:
    :func:`load_run` and ``Trainer.resume`` both come here.
    """
    spec_or_data = saved_spec(cfg) if data is None else data
    spec = spec_or_data.spec if isinstance(spec_or_data, Dataset) else spec_or_data
    config = model_class(cfg["model"]).rebuilt_config(saved_model_config(cfg, model_overrides), spec)
    return create_model(cfg["model"], spec_or_data, config, **saved_networks(cfg))


def same_data(saved: DataSpec, now: DataSpec) -> str | None:
    """None when data of spec ``now`` is what a run trained on data of spec ``saved`` can
    use; else what differs."""
    for key in ("shape", "kind", "num_levels", "vocab_size", "num_classes"):
        if getattr(saved, key) != getattr(now, key):
            return f"{key} {getattr(now, key)!r}, but the run was trained with {getattr(saved, key)!r}"
    return None


def _mismatch(model: GenerativeModel, state: Mapping[str, torch.Tensor]) -> str | None:
    """Load ``state`` into ``model``; None on success, else the first line that says why not."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        # The first line of PyTorch's message is a heading; the next ones name the tensors.
        lines = [ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()] or [str(e)]
        return lines[0].rstrip(".")
    return None


def _no_longer_describes(model: GenerativeModel) -> str:
    """The end of a "weights do not fit" message: what may have changed since."""
    if model.network_records:
        classes = ", ".join(r["class"] for r in model.network_records.values())
        return f"The run's {CONFIG} no longer describes the model they were trained as, or its network classes ({classes}) changed since."
    return f"The run's {CONFIG} no longer describes the model they were trained as."


def load_weights(model: GenerativeModel, checkpoint: Checkpoint, name: str = WEIGHTS) -> None:
    """Load the weights file ``name`` of ``checkpoint`` (checked against its sha256) into
    ``model``; a :class:`UserError` when the file is unreadable or does not fit the model."""
    why = _mismatch(model, checkpoint.read_tensors(name))
    if why is not None:
        raise UserError(f"the weights in {checkpoint.path / name} do not fit the model config: {why}. {_no_longer_describes(model)}")


def load_run(
    run_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    model_overrides: Mapping[str, str] | None = None,
    use_ema: bool = True,
    checkpoint: str | int = "latest",
) -> Run:
    """Load a run folder's model and configs.

    ``model_overrides`` are ``key -> text`` settings applied to the saved model config
    (its ``load_time`` ones: sampling and evaluation knobs such as ``iwae_k``); an unknown
    key, or a change of any other setting, is one :class:`UserError`. ``use_ema``: load the EMA weights
    when the run has them. ``checkpoint``: ``"latest"`` (the current one), ``"best"`` (by
    the run's ``keep_best`` figure) or a step still kept in ``checkpoints/``.
    """
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    data_config = saved_data_config(cfg)
    train_config = saved_train_config(cfg)
    model = build_model(cfg, None, model_overrides)
    for _ in range(3):
        ck = find_checkpoint(run_dir, checkpoint)
        name = EMA_WEIGHTS if use_ema and ck.has(EMA_WEIGHTS) else WEIGHTS
        try:
            state = ck.read_tensors(name)
            break
        except UserError:
            # A run training meanwhile may have made a newer checkpoint current and removed
            # this one between finding and reading it: find the current one again.
            if ck.legacy or ck.path.exists():
                raise
    else:
        raise UserError(f"cannot load {run_dir}: its checkpoints keep changing (is it training with checkpoint_every=1?); try again.")
    why = _mismatch(model, state)
    if why is not None:
        raise UserError(f"the weights in {ck.path / name} do not fit the model config: {why}. {_no_longer_describes(model)}")
    model.to(device).eval()
    return Run(
        path=run_dir,
        model_name=cfg["model"],
        model=model,
        model_config=model.config,
        data_config=data_config,
        train_config=train_config,
        spec=model.spec,
        data_meta=cfg["data_meta"],
        step=ck.step,
        checkpoint=ck,
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


def _join_state(obj: Any, tensors: dict[str, torch.Tensor], where: Path) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            key = obj["__tensor__"]
            if not isinstance(key, str) or key not in tensors:
                raise UserError(f"{where} is corrupt: it refers to a tensor {key!r} that {STATE_TENSORS} does not hold.")
            return tensors[key]
        return {k: _join_state(v, tensors, where) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join_state(v, tensors, where) for v in obj]
    return obj


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_trainer_state(state: Any, where: Path) -> dict[str, Any]:
    """The fields ``Trainer`` restores, present and of their types; one :class:`UserError`
    naming the first that is not."""

    def bad(field: str, why: str) -> UserError:
        return UserError(f"{where} is corrupt: {field} {why}. The checkpoint cannot be resumed.")

    if not isinstance(state, dict):
        raise bad("its content", "is not a JSON object")
    for key in ("step", "seconds", "optimizers", "loader", "rng_cpu"):
        if key not in state:
            raise bad(repr(key), "is missing")
    if not _is_int(state["step"]) or state["step"] < 0:
        raise bad("'step'", f"is {state['step']!r}, not a step number")
    if not _is_number(state["seconds"]) or state["seconds"] < 0:
        raise bad("'seconds'", f"is {state['seconds']!r}, not a number of seconds")
    opts = state["optimizers"]
    if not isinstance(opts, list) or not all(
        isinstance(o, dict) and isinstance(o.get("state"), dict) and isinstance(o.get("param_groups"), list) for o in opts
    ):
        raise bad("'optimizers'", "is not a list of optimizer states")
    for o in opts:
        try:
            o["state"] = {int(k): v for k, v in o["state"].items()}  # JSON made the parameter ids strings
        except ValueError:
            raise bad("'optimizers'", "has a parameter id that is not a number") from None
        if not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in o["param_groups"]):
            raise bad("'optimizers'", "has a parameter group without its parameters")
    if not isinstance(state["loader"], dict):
        raise bad("'loader'", "is not the data position (an object)")
    if not (isinstance(state["rng_cpu"], torch.Tensor) and state["rng_cpu"].dtype == torch.uint8):
        raise bad("'rng_cpu'", "is not a random generator state")
    if "rng_cuda" in state and not (isinstance(state["rng_cuda"], torch.Tensor) and state["rng_cuda"].dtype == torch.uint8):
        raise bad("'rng_cuda'", "is not a random generator state")
    osc = state.get("osc_history", {})
    if not (isinstance(osc, dict) and all(isinstance(v, list) and all(_is_number(x) for x in v) for v in osc.values())):
        raise bad("'osc_history'", "is not lists of numbers")
    if "examples" in state and (not _is_int(state["examples"]) or state["examples"] < 0):
        raise bad("'examples'", f"is {state['examples']!r}, not a number of examples")
    return state


def load_trainer_state(source: Checkpoint | str | Path) -> dict[str, Any]:
    """The trainer state of a checkpoint (or of a run folder's current one): optimizers,
    step, seconds, RNG states, data position, checked for the fields the trainer restores."""
    if isinstance(source, Checkpoint):
        ck = source
    else:
        run_dir = Path(source)
        found = current_checkpoint(run_dir)
        if found is None:
            raise UserError(f"cannot resume {run_dir}: it has no checkpoint (the run stopped before writing its first one).")
        ck = found
    if ck.legacy and not (ck.path / STATE_JSON_FILE).is_file():
        raise UserError(f"cannot resume {ck.run_dir}: {TRAINER_STATE}/ is missing (the run never wrote a complete checkpoint).")
    where = ck.path / STATE_JSON_FILE
    tensors = ck.read_tensors(STATE_TENSORS_FILE)
    state = _check_trainer_state(_join_state(ck.read_json(STATE_JSON_FILE), tensors, where), where)
    if ck.step is not None and state["step"] != ck.step:
        what = f"{WEIGHTS} and {TRAINER_STATE}/" if ck.legacy else f"{MANIFEST} and {STATE_JSON_FILE}"
        raise UserError(f"{ck.path}: {what} are from different steps ({ck.step} and {state['step']}); the checkpoint is incomplete.")
    return state

"""The ``deepgen`` command line: train | sample | eval | encode | score | models | datasets | demo | bench | report.

Every subcommand checks everything it was asked for (names, settings, types, values, the
data's presence) before it writes anything, so a mistake leaves nothing behind. Mistakes
are reported as one line, ``deepgen: error: <message>``, on stderr with exit status 2
and no traceback; Ctrl-C exits with status 130 and keeps the last checkpoint.

>>> main(["models"])  # doctest: +SKIP
0
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import inspect
import io
import json
import re
import shlex
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .config import Config, parse_assignments, split_overrides
from .data import RESUMABLE_DATA, DataConfig, dataset_descriptions, load_dataset
from .devices import configure_threads
from .errors import TrainingDiverged, UserError, closest_names
from .training import checkpoint as ckpt

PROG = "deepgen"



@dataclass(frozen=True)
class Demo:
    """One ``deepgen demo`` job: a model, its data and settings, what to look at after."""

    what: str  # the network trained, said before training ("a VAE with a 2-D latent")
    on: str  # the data, in words
    model: str
    data: str
    model_settings: dict[str, str]
    epochs: int
    look: tuple[tuple[str, str], ...]  # (picture, what it shows)
    train: dict[str, str] = field(default_factory=dict)
    folder_settings: dict[str, str] = field(default_factory=dict)  # --data FOLDER: how its images are read


DEMO_BATCH = 64
DEMOS: dict[str, Demo] = {
    # A 2-D latent VAE on the built-in 8x8 digits: 3750 steps, about 10-20 s on 2 CPU cores
    # (samples are recognisable digits; longer training overfits the 1617 images).
    "digits": Demo(
        "a VAE with a 2-D latent", "the 8x8 digits", "vae", "digits", {"latent_dim": "2", "hidden": "256,128", "lr": "2e-3"}, 150,
        (("samples.png", "new digits drawn from the prior"), ("manifold.png", "the 2-D latent space decoded on a 15x15 grid"),
         ("latent.png", "test digits' codes coloured by class"), ("reconstructions.png", "test digits (top) and their reconstructions"),
         ("interpolation.png", "paths between pairs of digits")),
        # 25 steps per epoch: pictures and checkpoints every epoch would cost more than the steps.
        {"train.sample_every": "500", "train.checkpoint_every": "1000", "train.log_every": "100"},
    ),
    # "Generating faces with a VAE": a convolutional VAE with a 2-D latent on Brendan Frey's
    # 1965 faces (28x20), whose decoded latent grid is Kingma & Welling's (2014) Frey
    # manifold figure; about a minute on 2 CPU cores. The Gaussian decoder's sigma is 0.25,
    # not the default 0.1: with 0.1 the reconstruction term outweighs the KL, the codes
    # gather in islands, and about one prior sample in six decodes to speckle (seen on the
    # samples.png of 60-epoch runs). --data FOLDER trains on any folder of face images,
    # read in grey and resized to 28x20.
    "faces": Demo(
        "a convolutional VAE with a 2-D latent", "Frey faces", "vae", "frey-faces",
        {"network": "conv", "latent_dim": "2", "channels": "32,64", "sigma": "0.25", "lr": "2e-3"}, 60,
        (("samples.png", "new faces drawn from the prior"),
         ("manifold.png", "the latent traversal: a 15x15 grid of decoded codes (Kingma & Welling's Frey manifold)"),
         ("interpolation.png", "paths between pairs of real faces"), ("reconstructions.png", "test faces (top) and their reconstructions")),
        {"train.sample_every": "1000", "train.checkpoint_every": "1000", "train.log_every": "100"},
        {"data.image_size": "28,20", "data.image_channels": "1"},
    ),
}


# -- helpers ---------------------------------------------------------------------------------


def _say(*lines: str) -> None:
    print("\n".join(lines), flush=True)


def _train_shortcuts(args: argparse.Namespace) -> dict[str, str]:
    """``--epochs/--batch-size/--seed/--device`` as prefixed overrides (they win over --set)."""
    out: dict[str, str] = {}
    for flag in ("epochs", "batch_size", "seed", "device"):
        value = getattr(args, flag, None)
        if value is not None:
            out[f"train.{flag}"] = str(value)
    return out


def _overrides(pairs: Sequence[str] | None) -> dict[str, str]:
    return parse_assignments(pairs or [])


def _device(name: str) -> torch.device:
    from .training import resolve_device

    return resolve_device(name)


def _fmt_seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


EVAL_DATA_SETTINGS = ("normal_class",)  # data settings `deepgen eval --set` takes (the others are the model's)


def _model_settings(pairs: Sequence[str] | None) -> dict[str, str]:
    """``--set`` of ``eval`` and ``sample``: model settings, ``model.`` prefix optional."""
    return {k.removeprefix("model."): v for k, v in _overrides(pairs).items()}


def _check_setting_names(sets: dict[str, str], configs: dict[str, Config], model_name: str) -> None:
    """An unknown ``--set`` name: one line naming the closest settings of the model, the
    trainer and the data first, then every accepted name."""
    every = sorted({n for cfg in configs.values() for n in cfg.field_names()} - {"name"})
    for key in sets:
        prefix, dot, rest = key.partition(".")
        if dot and prefix in configs:
            names, bare = [n for n in configs[prefix].field_names() if n != "name"], rest
        else:
            names, bare = every, key
        if bare in names:
            continue
        close = closest_names(bare, names, n=2)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        where = {"model": f"the {model_name} model", "train": "the trainer", "data": "the data"}.get(prefix if dot else "", f"{model_name}, the trainer or the data")
        raise UserError(f"unknown setting {key!r} for {where}.{hint} Accepted: {', '.join(sorted(names))}.")


def _check_run_settings(run_dir: str | Path, sets: dict[str, str], command: str, extra: Sequence[str] = ()) -> None:
    """An unknown ``--set`` name of a command on a trained run (``sample``, ``eval``,
    ``encode``, ``score``): one line naming the settings that command takes of that model,
    as its config declares them (``load_time``; for ``sample`` its ``sampling`` ones), and
    ``extra`` (eval's data settings), instead of every field of the config. Known fields
    pass: ``load_run`` accepts them, or refuses a change of one that defines the trained model."""
    from .models import model_class

    try:
        name = ckpt.read_run_config(run_dir)["model"]
        config_class = model_class(name).config_class
    except UserError:
        return  # not a run, or a model this deepgen lacks: load_run says so
    fields = set(config_class.field_names())
    loadable = sorted(config_class.load_time)
    for key in sets:
        if command == "sample" and key in config_class.load_time and key not in config_class.sampling:
            # An evaluation setting (a VAE's iwae_k): sample never reads it, so the change would do nothing.
            raise UserError(
                f"{key!r} is an evaluation setting of a {name} run ({PROG} eval and score read it); sampling does not. "
                f"Sampling settings: {', '.join(sorted(config_class.sampling)) or 'none'}."
            )
        if key in fields:
            continue
        close = closest_names(key, [*loadable, *extra], n=2)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        if command == "sample":
            sampling = sorted(config_class.sampling)
            takes = (f"Sampling settings of a loaded {name} run: {', '.join(sampling)}" if sampling else
                     f"A loaded {name} run has no sampling settings (its samples follow from the weights, --seed, --cond and --draw)")
            others = [k for k in loadable if k not in sampling]
            if others:
                takes += f"; its evaluation settings (for {PROG} eval and score): {', '.join(others)}"
        else:
            accepted = [*loadable, *(f"{e} (data)" for e in extra)]
            takes = (f"Settings a loaded {name} run takes for {PROG} {command}: {', '.join(accepted)}" if accepted else
                     f"A loaded {name} run takes no settings for {PROG} {command}")
        raise UserError(f"the {name} run has no setting {key!r}.{hint} {takes}.")


def _pictures() -> list[Any]:
    """The callbacks ``train``, ``demo`` and ``bench`` install: the sample pictures."""
    from .pictures import SamplePictures

    return [SamplePictures()]


# -- train -----------------------------------------------------------------------------------


@dataclasses.dataclass
class _TrainPlan:
    """Everything ``train`` checked before writing: the configs, the data, the folder."""

    model_name: str
    model_config: Any
    train_config: Any
    data_config: DataConfig
    dataset: Any
    out: Path
    replace: bool  # an earlier run in ``out`` is replaced
    note: str = ""  # said on stderr before training (an unfinished run is replaced)


def _plan_train(
    model_name: str,
    data: str | None,
    data_dir: str | None,
    sets: dict[str, str],
    shortcuts: dict[str, str],
    out: Path | None,
    overwrite: bool,
) -> _TrainPlan:
    """Check every setting and load the data; write nothing."""
    from .models import model_class
    from .training import TrainConfig

    cls = model_class(model_name)
    if not data:
        raise UserError(
            f"train {model_name} needs --data NAME (a dataset or a path). "
            f"Accepted names: {', '.join(n for n, _ in dataset_descriptions())}."
        )
    if data not in {n for n, _ in dataset_descriptions()} and Path(data).expanduser().exists():
        data = str(Path(data).expanduser().resolve())  # the run works from any folder later
    defaults = {"model": cls.config_class(), "train": TrainConfig(), "data": DataConfig(name=data)}
    _check_setting_names({**sets, **shortcuts}, defaults, model_name)
    routed = split_overrides({**sets, **shortcuts}, defaults)
    data_over = dict(routed["data"])
    if data_dir is not None:
        data_over["data_dir"] = str(Path(data_dir).expanduser().resolve())
    if "name" in data_over:
        raise UserError("choose the dataset with --data, not --set name=...")
    model_config = defaults["model"].with_overrides(routed["model"])
    # The user's settings first, then the model's defaults for what they left unset (a ddpm's
    # EMA): --set ema=0 turns the EMA off, and its warm-up with it.
    train_config = defaults["train"].with_overrides(routed["train"]).for_model(cls.train_defaults)
    data_config = defaults["data"].with_overrides(data_over)
    _device(train_config.device)
    out = out if out is not None else Path("runs") / model_name
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder.")
    replace = out.is_dir() and ckpt.is_run(out)
    note = ""
    if replace and not overwrite:
        if ckpt.has_checkpoint(out):
            raise UserError(
                f"{out} already holds a run. Pass --overwrite to replace it, "
                f"--resume {out} to continue it, or --out to choose another folder."
            )
        # Stopped (killed) before its first checkpoint: nothing there can be resumed.
        note = f"{PROG}: {out} holds a run that stopped before its first checkpoint; starting it again from scratch."
    dataset = load_dataset(data_config)
    return _TrainPlan(model_name, model_config, train_config, data_config, dataset, out, replace, note)


def _run_training(plan: _TrainPlan) -> int:
    """Build the model (seeded), train, write the analysis, print a summary."""
    from .analysis import write_analysis
    from .models import create_model
    from .training import Trainer, seed_all
    from .training.distributed import current_world

    seed_all(plan.train_config.seed)  # the same seed gives the same initial weights
    model = create_model(plan.model_name, plan.dataset, plan.model_config)
    if not current_world().is_main:  # under torchrun: rank 0 owns the run folder
        trainer = Trainer(model, plan.dataset, plan.train_config, plan.out, data_config=plan.data_config)
        return _fit_and_report(trainer, write_analysis)
    created = not plan.out.exists()
    # Built first: the trainer refuses what cannot run (a phase that would never train,
    # devices) before an earlier run in the folder is replaced. It writes nothing yet.
    trainer = Trainer(model, plan.dataset, plan.train_config, plan.out, data_config=plan.data_config, callbacks=_pictures())
    if plan.note:
        print(plan.note, file=sys.stderr)
    if plan.replace:
        ckpt.remove_run_files(plan.out)
    try:
        return _fit_and_report(trainer, write_analysis)
    except BaseException as e:
        # A run that never reached its first checkpoint is only half written: remove it.
        removed = ckpt.discard_unfinished(plan.out, created=created)
        if removed and isinstance(e, TrainingDiverged):
            raise TrainingDiverged(f"{e} ({plan.out} was removed.)") from None
        raise


def _fit(trainer: Any) -> Any:
    """``trainer.fit()``, then stop its loader's worker processes (streamed data), also on errors."""
    try:
        return trainer.fit()
    finally:
        trainer.loader.close()


def _fit_and_report(trainer: Any, write_analysis: Any, resumed_from: int | None = None) -> int:
    if not trainer.world.is_main:  # under torchrun: rank 0 writes the analysis and reports
        _fit(trainer)
        return 0
    out = trainer.run_dir
    try:
        result = _fit(trainer)
    except KeyboardInterrupt:
        if ckpt.has_checkpoint(out):
            print(
                f"\n{PROG}: interrupted; the last checkpoint in {out} is kept. "
                f"Continue with: {PROG} train --resume {out}",
                file=sys.stderr,
            )
            return 130
        print(f"\n{PROG}: interrupted before the first checkpoint; the run folder {out} is not kept.", file=sys.stderr)
        raise
    from .metrics.units import format_logged

    files = write_analysis(out, trainer.eval_model, trainer.dataset, device=trainer.device, seed=trainer.config.seed)
    steps = f"{result.steps}" if resumed_from is None else f"{resumed_from} -> {result.steps}"
    val_split = trainer.dataset.validation_split
    val_n = min(trainer.config.val_limit, len(trainer.dataset.split(val_split)))
    val_examples: int | str = val_n if val_split == "test" else f"the first {val_n} validation examples (held out from training)"
    names = sorted({p.name for p in files} | {p.name for p in out.iterdir() if p.is_file() and not p.name.startswith(".")})
    _say(
        f"run folder: {out}",
        f"steps: {steps} ({result.epochs} epoch{'' if result.epochs == 1 else 's'}) in {_fmt_seconds(result.seconds)}",
        f"last losses: {format_logged(result.last, val_examples=val_examples)}",
        f"files: {', '.join(names)}",
    )
    return 0


def _resume(args: argparse.Namespace) -> int:
    from .analysis import write_analysis
    from .training import TrainConfig, Trainer

    run = Path(args.resume)
    cfg = ckpt.read_run_config(run)
    if args.model is not None and args.model != cfg["model"]:
        raise UserError(f"{run} is a {cfg['model']!r} run, not {args.model!r}; leave out MODEL or name {cfg['model']!r}.")
    for flag, given in (("--data", args.data), ("--data-dir", args.data_dir), ("--out", args.out)):
        if given is not None:
            raise UserError(f"{flag} cannot change on --resume: the run keeps its data and folder.")
    if args.overwrite:
        raise UserError("--overwrite and --resume exclude each other.")
    saved_train = ckpt.saved_train_config(cfg)
    configs = {
        "model": ckpt.saved_model_config(cfg),
        "train": saved_train,
        "data": ckpt.saved_data_config(cfg),
    }
    resume_sets = {**_overrides(args.set), **_train_shortcuts(args)}
    _check_resume_setting_names(resume_sets, configs)
    routed = split_overrides(resume_sets, configs)
    # `workers` changes how fast a streamed folder is decoded, not what is trained.
    new_data = configs["data"].with_overrides({k: v for k, v in routed["data"].items() if k in RESUMABLE_DATA})
    routed["data"] = {k: v for k, v in routed["data"].items() if k not in RESUMABLE_DATA}
    for part in ("model", "data"):
        if routed[part]:
            keys = ", ".join(repr(k) for k in routed[part])
            raise UserError(
                f"{part} setting {keys} cannot change on --resume; only trainer settings may "
                f"({', '.join(TrainConfig.field_names())}, and {', '.join(RESUMABLE_DATA)}). Train a new run to change it."
            )
    new_train = saved_train.with_overrides(routed["train"])
    _device(new_train.device)
    changes = {k: getattr(new_train, k) for k in routed["train"]}
    trainer = Trainer.resume(run, callbacks=_pictures(), data_overrides={k: getattr(new_data, k) for k in RESUMABLE_DATA}, **changes)
    start = trainer.step
    if trainer.finished:
        cfg_t = trainer.config
        if trainer.loader.epochs_done < cfg_t.epochs and not (cfg_t.max_steps and start >= cfg_t.max_steps):
            raise UserError(
                f"{run} has already used its time budget: {trainer.seconds:.1f} s of max_seconds={cfg_t.max_seconds:g}, "
                f"step {start}. Pass --set max_seconds=S with S > {trainer.seconds:.1f} (or 0: no limit) to train longer."
            )
        if cfg_t.max_steps and start >= cfg_t.max_steps:
            raise UserError(
                f"{run} has already finished: step {start} of max_steps={cfg_t.max_steps}. "
                f"Pass --set max_steps=N with N > {start} (or 0: no limit) to train longer."
            )
        raise UserError(
            f"{run} has already finished: {trainer.loader.epochs_done} of {trainer.config.epochs} epochs, "
            f"step {start}. Pass --epochs N with N > {trainer.loader.epochs_done} to train longer."
        )
    return _fit_and_report(trainer, write_analysis, resumed_from=start)


def _check_resume_setting_names(sets: dict[str, str], configs: dict[str, Config]) -> None:
    """An unknown ``--set`` name on ``--resume``: one line naming the settings a resume takes
    (the trainer's, and RESUMABLE_DATA), the closest first. split_overrides' own message
    listed every model and data setting as accepted, though a resume refuses them all."""
    from .training import TrainConfig

    takes = [*TrainConfig.field_names(), *RESUMABLE_DATA]
    for key in sets:
        prefix, dot, rest = key.partition(".")
        known = rest in configs[prefix].field_names() if dot and prefix in configs else any(
            key in cfg.field_names() for cfg in configs.values())
        if known:
            continue  # a model or data setting: refused below, by name, as one that cannot change
        close = closest_names(rest if dot and prefix in configs else key, takes, n=2)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise UserError(
            f"unknown setting {key!r}.{hint} On --resume only trainer settings may change: "
            f"{', '.join(TrainConfig.field_names())}, and the data's {', '.join(RESUMABLE_DATA)}."
        )


def cmd_train(args: argparse.Namespace) -> int:
    """``deepgen train``: a new run, or ``--resume`` an existing one."""
    if args.resume is not None:
        return _resume(args)
    if args.model is None:
        raise UserError("train needs a MODEL (see `deepgen models`), or --resume RUN to continue a run.")
    plan = _plan_train(
        args.model, args.data, args.data_dir, _overrides(args.set), _train_shortcuts(args),
        None if args.out is None else Path(args.out), args.overwrite,
    )
    return _run_training(plan)


# -- sample ----------------------------------------------------------------------------------


def _parse_cond(text: str | None, n: int, model: Any, device: torch.device) -> torch.Tensor | None:
    """``--cond 3`` / ``--cond 0,1,2`` -> labels (n,), repeated cyclically (default: 0..K-1
    in turn); None for an unconditional model. ``-1`` (:data:`NULL_LABEL`, no label: the
    unconditional model) where the model declares ``null_label`` (classifier-free guidance)."""
    from .models.base import NULL_LABEL

    if model.num_classes is None:
        if text is not None:
            raise UserError("--cond is for conditional models; this run's model is unconditional.")
        return None
    k = model.num_classes
    accepted = f"0..{k - 1}" + (f" or {NULL_LABEL} (no label: unconditional samples)" if model.null_label else "")
    if text is None:
        return torch.arange(n, device=device) % k
    try:
        labels = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise UserError(f"--cond expects a label or comma-separated labels in {accepted}, got {text!r}.") from None
    low = NULL_LABEL if model.null_label else 0
    if not labels or any(not low <= c < k for c in labels):
        why = ""
        if NULL_LABEL in labels and not model.null_label:
            why = (f" {NULL_LABEL} (no label: unconditional samples) is accepted only by models trained with label dropout "
                   "for classifier-free guidance; this one was not.")
        raise UserError(f"--cond labels must be in {accepted}, got {text!r}.{why}")
    base = torch.tensor(labels, device=device)
    return base.repeat((n + len(base) - 1) // len(base))[:n]


def _which_checkpoint(text: str) -> str | int:
    """``--checkpoint``: latest, best or a step number."""
    if text in ("latest", "best"):
        return text
    try:
        return int(text)
    except ValueError:
        raise UserError(f"--checkpoint is latest, best or a step number, got {text!r}.") from None


def _is_points(value: Any) -> bool:
    """True for a list of 2-D points (the true modes a 2-D toy's meta records)."""
    return isinstance(value, list) and all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p) for p in value
    )


def cmd_sample(args: argparse.Namespace) -> int:
    """``deepgen sample``: draw from a trained run and write a picture, array or table."""
    from .io import atomic_path
    from .training import load_run
    from .viz import save_samples

    out = Path(args.out)
    suffix = out.suffix.lower()
    if suffix not in (".png", ".npy", ".csv", ".txt"):
        raise UserError(f"--out must end in .png, .npy, .csv or .txt, got {str(out)!r}.")
    if args.n < 1:
        raise UserError(f"--n must be >= 1, got {args.n}.")
    if args.length is not None and args.length < 1:
        raise UserError(f"--length must be >= 1, got {args.length}.")
    device = _device(args.device)
    settings = _model_settings(args.set)
    _check_run_settings(args.run, settings, "sample")
    run = load_run(args.run, device=device, model_overrides=settings or None, checkpoint=_which_checkpoint(args.checkpoint))
    spec = run.spec
    if suffix == ".png" and not (spec.is_image or spec.shape == (2,)):
        raise UserError(f"samples of shape {spec.shape} cannot be drawn as a picture; write .npy or .csv instead.")
    if suffix == ".txt" and spec.kind != "tokens":
        raise UserError(f"--out .txt is for token models (text); this run's data is {spec.kind}. Write .png, .npy or .csv.")
    if args.prompt is not None or args.length is not None:
        return _sample_text(args, run, out, device)
    if args.complete:
        return _sample_completions(args, run, out, device)
    cond = _parse_cond(args.cond, args.n, run.model, device)
    dataset = run.load_dataset() if suffix == ".csv" else None
    gen = torch.Generator(device).manual_seed(args.seed)
    mean = spec.is_image and not args.draw
    # What the samples are, as the model declares it: the mean of an output distribution
    # given a code (a decoder's E[x | z]) only where it has one; otherwise draws (mean=True
    # then at most reads binary pixels at the 0.5 threshold).
    means = mean and run.model.has_output_mean()
    with torch.no_grad():
        samples = run.model.sample(args.n, generator=gen, cond=cond, mean=mean)
    if suffix == ".png":
        modes = run.data_meta.get("modes")
        save_samples(samples, spec, out, reference=modes if _is_points(modes) else None)
    elif suffix == ".npy":
        with atomic_path(out) as tmp, open(tmp, "wb") as f:
            np.save(f, samples.detach().cpu().numpy())
    elif suffix == ".txt":
        _write_text(out, samples.reshape(args.n, -1), run)
    else:
        assert dataset is not None
        values = dataset.to_original(samples.detach().float().cpu()).reshape(args.n, -1).numpy()
        columns = run.data_meta.get("columns")
        if not (isinstance(columns, list) and len(columns) == values.shape[1]):
            columns = [f"x{i}" for i in range(values.shape[1])]
        label_name = str(run.data_meta.get("label_column") or "label")
        header = [str(c) for c in columns] + ([label_name] if cond is not None else [])
        names = run.data_meta.get("label_values")
        labels = None if cond is None else [
            "" if c < 0 else str(names[c]) if isinstance(names, list) and c < len(names) else str(c) for c in cond.cpu().tolist()
        ]  # the null label (-1, unconditional samples): no label
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        for i, row in enumerate(values):
            writer.writerow([repr(float(v)) for v in row] + ([labels[i]] if labels is not None else []))
        with atomic_path(out) as tmp:
            tmp.write_text(buf.getvalue())
    kind = "means of the output distribution" if means else "draws"
    _say(f"wrote {args.n} samples ({kind}) from {run.path} (step {run.step}) to {out}")
    return 0


def _write_text(out: Path, ids: torch.Tensor, run: Any) -> None:
    """Token samples (N, T) as text: decoded with the run's vocabulary, else ids separated by spaces."""
    from .data.text import decode_text
    from .io import atomic_path

    vocab = run.data_meta.get("vocab")
    rows = [decode_text(r, vocab) if isinstance(vocab, str) else " ".join(str(int(v)) for v in r) for r in ids.cpu()]
    body = rows[0] + "\n" if len(rows) == 1 else "".join(f"--- sample {i + 1} ---\n{r}\n\n" for i, r in enumerate(rows))
    with atomic_path(out) as tmp:
        tmp.write_text(body, encoding="utf-8")


def _sample_text(args: argparse.Namespace, run: Any, out: Path, device: torch.device) -> int:
    """``--prompt`` / ``--length``: continue a text prompt with a token model and write .txt."""
    from .data.text import encode_text
    from .models.base import Completion, Continuation

    spec, model = run.spec, run.model
    vocab = run.data_meta.get("vocab")
    if spec.kind != "tokens" or not isinstance(vocab, str):
        raise UserError("--prompt and --length are for models of text (token data with a vocabulary); this run is not one.")
    if out.suffix.lower() != ".txt":
        raise UserError(f"a text continuation is written to a .txt file; got {str(out)!r}.")
    prompt = encode_text(args.prompt or "", vocab)
    context = spec.dim
    length = args.length if args.length is not None else max(context, len(prompt) + 1)
    if len(prompt) > length:
        raise UserError(f"the prompt has {len(prompt)} characters, more than --length {length}.")
    cond = _parse_cond(args.cond, args.n, model, device)
    gen = torch.Generator(device).manual_seed(args.seed)
    ids = prompt.to(device)[None].expand(args.n, -1)
    with torch.no_grad():
        if isinstance(model, Continuation):
            drawn = model.generate_ids(ids, length, generator=gen, cond=cond)
        elif isinstance(model, Completion) and length <= context:
            x = torch.zeros(args.n, context, dtype=torch.long, device=device)
            known = torch.zeros(context, dtype=torch.bool, device=device)
            x[:, : len(prompt)] = ids
            known[: len(prompt)] = True
            drawn = model.complete(x, known, generator=gen, cond=cond)[:, :length]
        else:
            raise UserError(
                f"the {run.model_name} cannot continue text past its {context}-character context; use --length <= {context}."
            )
    _write_text(out, drawn, run)
    _say(f"wrote {args.n} continuation(s) of {len(prompt)} prompt characters to {length} characters from {run.path} to {out}")
    return 0


def _sample_completions(args: argparse.Namespace, run: Any, out: Path, device: torch.device) -> int:
    """``--complete``: the lower half of test images drawn given the upper half, written
    as a picture: the originals (top row) above their completions."""
    from .data import iterate
    from .models.base import Completion
    from .viz import save_image_grid

    spec, model = run.spec, run.model
    if not isinstance(model, Completion) or not spec.is_image:
        raise UserError("--complete needs an image model with the complete capability (made, pixelcnn, transformer on images).")
    if out.suffix.lower() != ".png":
        raise UserError(f"completions are written as a picture (.png); got {str(out)!r}.")
    dataset = run.load_dataset()
    batch = next(iter(iterate(dataset, "test", args.n, device, torch.Generator(device).manual_seed(args.seed), args.n)))
    known = torch.zeros(spec.shape, dtype=torch.bool, device=device)
    known[:, : spec.shape[1] // 2] = True
    cond = batch.y if model.num_classes is not None else None
    with torch.no_grad():
        done = model.complete(batch.x, known, generator=torch.Generator(device).manual_seed(args.seed), cond=cond)
    x = torch.cat([batch.x, done]).float()
    if spec.kind == "discrete" and spec.num_levels:
        x = x / (spec.num_levels - 1)
    save_image_grid(x, out, nrow=len(batch.x))
    _say(f"wrote {len(batch.x)} test images and their completed lower halves from {run.path} to {out}")
    return 0


# -- eval ------------------------------------------------------------------------------------


def _metric_names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UserError("--metrics needs one or more metric names, e.g. --metrics recon,elbo,nll.")
    return list(dict.fromkeys(names))


def _read_eval(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        print(f"{PROG}: warning: {path} was unreadable; starting a new one.", file=sys.stderr)
        return {}
    return data if isinstance(data, dict) else {}


def cmd_eval(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """``deepgen eval``: metrics of a run; print a table and merge them into ``eval.json``."""
    from .io import write_json
    from .metrics import check_metrics, default_metrics, eval_figures, evaluate, format_table
    from .training import load_run

    names = None if args.metrics is None else _metric_names(args.metrics)
    device = _device(args.device)
    if args.limit < 0:
        raise UserError(f"--limit must be >= 0 (0 = the whole split), got {args.limit}.")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}.")
    configure_threads(args.threads)
    settings = _model_settings(args.set)
    # normal_class (the auroc metric's normal class) is a data setting an evaluation may set:
    # the test split keeps every class either way, so the run's data is otherwise the same.
    data_sets = {k.removeprefix("data."): settings.pop(k) for k in list(settings) if k.removeprefix("data.") in EVAL_DATA_SETTINGS}
    _check_run_settings(args.run, settings, "eval", EVAL_DATA_SETTINGS)
    run = load_run(args.run, device=device, model_overrides=settings or None, checkpoint=_which_checkpoint(args.checkpoint))
    names = default_metrics(run.model) if names is None else check_metrics(run.model, names)
    dataset = run.load_dataset(**run.data_config.with_overrides(data_sets).to_dict()) if data_sets else run.load_dataset()
    table: dict[str, Any] = {}
    entries: dict[str, dict[str, Any]] = {}
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    command = shlex.join([PROG, *argv])
    interrupted: str | None = None  # the metric Ctrl-C stopped

    def record(name: str, result: dict[str, Any], seconds: float) -> None:
        values = {k: v for k, v in result.items() if k not in ("split", "n")}
        split, n = result.get("split", args.split), result.get("n")
        if not table:
            table.update({"split": split, "n": n})
        table.update(values)
        table[f"{name}_seconds"] = round(seconds, 3)
        entries[name] = {
            "values": values, "split": split, "n": n, "seconds": round(seconds, 3), "step": run.step,
            "command": command, "settings": settings, "seed": args.seed, "date": when,
        }

    for name in names:
        start = time.perf_counter()
        try:
            result = evaluate(
                run.model, dataset, [name], split=args.split, batch_size=args.batch_size,
                limit=args.limit, seed=args.seed, device=device, data_dir=run.data_config.data_dir,
                progress=False if args.quiet else None,
            )
        except KeyboardInterrupt as e:
            # metrics.evaluate's EvaluationInterrupted carries the metrics it finished.
            partial = getattr(e, "results", None)
            if isinstance(partial, dict) and set(partial) - {"split", "n"}:
                record(name, partial, time.perf_counter() - start)
            interrupted = name
            break
        record(name, result, time.perf_counter() - start)
    path = run.path / ckpt.EVAL
    if entries:
        print(format_table(eval_figures(table)))
        merged = _read_eval(path)
        for name, entry in entries.items():
            by_split = merged.get(name) if isinstance(merged.get(name), dict) else {}
            merged[name] = {**by_split, entry["split"]: entry}
        write_json(path, merged)
    if interrupted is not None:
        kept = f"the finished metrics ({', '.join(entries)}) are in {path}" if entries else "no metric had finished"
        print(f"\n{PROG}: interrupted during {interrupted}; {kept}.", file=sys.stderr)
        return 130
    _say(f"wrote {path}")
    return 0


# -- encode / score --------------------------------------------------------------------------


def _vocab_difference(want: str, got: str) -> str:
    """The end of the refusal of text whose vocabulary ``got`` is not the run's ``want``:
    which characters are extra and which are missing (the first 20 of each)."""
    extra = "".join(c for c in got if c not in want)
    lacking = "".join(c for c in want if c not in got)
    parts = ([f"{extra[:20]!r} are not among them"] if extra else []) + ([f"{lacking[:20]!r} are missing"] if lacking else [])
    parts = parts or ["the same characters in another order, so each id means another character"]
    return (f"; its vocabulary of {len(got)} characters is not the run's {len(want)} (text must use exactly the run's "
            f"characters: {', '.join(parts)})")


def _run_and_data(args: argparse.Namespace) -> tuple[Any, Any, torch.device]:
    """The run (loaded on ``--device``) and the data to read: ``--data`` or the run's own,
    checked against the run's data spec before anything is computed."""
    from .training import load_run

    if args.limit < 0:
        raise UserError(f"--limit must be >= 0 (0 = the whole split), got {args.limit}.")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}.")
    device = _device(args.device)
    configure_threads(args.threads)
    settings = _model_settings(getattr(args, "set", None))
    _check_run_settings(args.run, settings, args.command)
    run = load_run(args.run, device=device, model_overrides=settings or None, checkpoint=_which_checkpoint(args.checkpoint))
    if args.data is None:
        dataset = run.load_dataset()
    else:
        name = args.data
        if name not in {n for n, _ in dataset_descriptions()} and Path(name).expanduser().exists():
            name = str(Path(name).expanduser().resolve())
        over: dict[str, Any] = {"name": name, "validation": 0}  # the run's hold-out size is about its own data
        if args.data_dir is not None:
            over["data_dir"] = str(Path(args.data_dir).expanduser().resolve())
        dataset = run.load_dataset(**over)
    want, got = run.spec, dataset.spec
    # Text: the ids are positions in the vocabulary, so another file's ids mean other
    # characters unless its vocabulary is the run's, character for character.
    want_vocab, got_vocab = run.data_meta.get("vocab"), dataset.meta.get("vocab")
    if (tuple(want.shape), want.kind) != (tuple(got.shape), got.kind) or (
        want.kind in ("discrete", "tokens") and (want.num_levels, want.vocab_size) != (got.num_levels, got.vocab_size)
    ) or (want.kind == "tokens" and want_vocab != got_vocab):
        what = ""
        if want.kind == "tokens" and isinstance(want_vocab, str) and isinstance(got_vocab, str):
            what = _vocab_difference(want_vocab, got_vocab)
        elif want.kind == "discrete" and want.num_levels != got.num_levels:
            what = f"; its values have {got.num_levels} levels, the run's {want.num_levels}"
        raise UserError(
            f"--data {dataset.name!r} does not fit the run {run.path}: its examples are {got.kind} of shape {tuple(got.shape)}, "
            f"the model takes {want.kind} of shape {tuple(want.shape)}{what}."
        )
    return run, dataset, device


def _check_out(out: Path, suffixes: tuple[str, ...]) -> None:
    if out.suffix.lower() not in suffixes:
        raise UserError(f"--out must end in {' or '.join(suffixes)}, got {str(out)!r}.")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; name a file.")


def _save_npy(path: Path, array: np.ndarray) -> None:
    from .io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def cmd_encode(args: argparse.Namespace) -> int:
    """``deepgen encode``: the model's code of every example, as a .npy (N, L)."""
    from .metrics import EvalContext, label_kwargs
    from .models.base import Encoder

    out = Path(args.out)
    _check_out(out, (".npy",))
    run, dataset, device = _run_and_data(args)
    model = run.model
    if not isinstance(model, Encoder):
        raise UserError(f"the {run.model_name} model has no encoder (capability 'encode'); models with one: see `{PROG} models`.")
    ctx = EvalContext(split=args.split, batch_size=args.batch_size, limit=args.limit, device=device, seed=args.seed)
    codes, labels = [], []
    model.eval()
    with torch.no_grad():
        for batch in ctx.batches(dataset):
            z = model.encode(batch.x, **label_kwargs(model, dataset, batch))
            codes.append(z.detach().float().reshape(len(batch), -1).cpu())
            if batch.y is not None:
                labels.append(batch.y.detach().cpu())
    if not codes:
        raise UserError(f"the {args.split} split of {dataset.name!r} has no examples.")
    z_all = torch.cat(codes).numpy()
    label_path = out.with_name(out.name[: -len(out.suffix)] + ".labels.npy")
    if labels:
        _save_npy(label_path, torch.cat(labels).numpy())
    try:
        _save_npy(out, z_all)
    except BaseException:
        if labels:
            label_path.unlink(missing_ok=True)  # no labels without their codes
        raise
    extra = f" and their labels to {label_path}" if labels else ""
    _say(f"wrote the codes of {len(z_all)} {args.split} examples of {dataset.name!r} ({z_all.shape[1]} numbers each) to {out}{extra}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    """``deepgen score``: per-example anomaly scores (NLL or reconstruction error)."""
    from .metrics import (
        EvalContext,
        bits_per_dim,
        dequantization_width,
        label_kwargs,
        likelihood_of,
        scored_inputs,
    )
    from .models.base import LogProb, ReconstructionNLL, Reconstructor

    out = Path(args.out)
    _check_out(out, (".csv", ".npy"))
    run, dataset, device = _run_and_data(args)
    model = run.model
    has_nll, has_recon = isinstance(model, LogProb), isinstance(model, Reconstructor)
    if not (has_nll or has_recon):
        raise UserError(
            f"the {run.model_name} model has neither a likelihood (capability 'log_prob') nor reconstructions "
            "('reconstruct'): it cannot score examples."
        )
    by = args.by or ("nll" if has_nll else "recon")
    if by == "nll" and not has_nll:
        raise UserError(f"the {run.model_name} model has no likelihood (capability 'log_prob'); use --by recon" + ("." if has_recon else " (it cannot reconstruct either)."))
    if by == "recon" and not has_recon:
        raise UserError(f"the {run.model_name} model cannot reconstruct (capability 'reconstruct')" + ("; use --by nll." if has_nll else "."))
    if by == "recon" and dataset.spec.kind == "tokens":
        raise UserError("--by recon compares values element by element; it does not apply to token data. Use --by nll.")
    ctx = EvalContext(split=args.split, batch_size=args.batch_size, limit=args.limit, device=device, seed=args.seed)
    cols: dict[str, list[torch.Tensor]] = {}
    labels: list[torch.Tensor] = []
    model.eval()
    torch.manual_seed(args.seed)  # a VAE's importance samples
    inputs = scored_inputs(model, dataset, ctx) if by == "nll" else (lambda b: b.x)
    head_nll = model.reconstruction_nll if isinstance(model, ReconstructionNLL) else None
    with torch.no_grad():
        for batch in ctx.batches(dataset):
            lab = label_kwargs(model, dataset, batch)
            if by == "nll":
                cols.setdefault("nll_nats", []).append(-model.log_prob(inputs(batch), **lab).detach().double().cpu())
            else:
                x = batch.x.float()
                x_hat = model.reconstruct(batch.x, **lab).float()
                cols.setdefault("recon_mse", []).append(((x - x_hat) ** 2).reshape(len(batch), -1).mean(1).double().cpu())
                if head_nll is not None:
                    cols.setdefault("recon_nll_nats", []).append(head_nll(batch.x, **lab).detach().double().cpu())
            if batch.y is not None:
                labels.append(batch.y.detach().cpu())
    if not cols:
        raise UserError(f"the {args.split} split of {dataset.name!r} has no examples.")
    table = {k: torch.cat(v) for k, v in cols.items()}
    if by == "nll" and likelihood_of(model).normalised:
        table["nll_bpd"] = bits_per_dim(table["nll_nats"], dataset.spec.dim, bin_width=dequantization_width(model, dataset))
    first = next(iter(table.values()))
    n = len(first)
    if out.suffix.lower() == ".npy":
        _save_npy(out, first.numpy())
    else:
        from .io import atomic_path

        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        header = ["index", *(["label"] if labels else []), *table]
        writer.writerow(header)
        y = torch.cat(labels).tolist() if labels else None
        rows = zip(*(t.tolist() for t in table.values()))
        for i, row in enumerate(rows):
            writer.writerow([i, *([y[i]] if y is not None else []), *(repr(float(v)) for v in row)])
        with atomic_path(out) as tmp:
            tmp.write_text(buf.getvalue())
    what = {"nll_nats": "-log p(x) in nats", "recon_mse": "reconstruction mean squared error per element"}[next(iter(table))]
    _say(f"wrote {n} scores ({what}; higher = more anomalous) of the {args.split} examples of {dataset.name!r} to {out}")
    return 0


# -- models / datasets -----------------------------------------------------------------------


def _capabilities_of(cls: type) -> list[str]:
    """Capability names of a model class, by ``isinstance`` on the Protocols (members are
    looked up on the class, so methods and properties count)."""
    from .models.base import CAPABILITIES

    return [name for name, proto in CAPABILITIES.items() if isinstance(cls, proto)]


_FIELD_COMMENT = re.compile(r"^\s*(\w+)\s*:[^#]*#\s*(.+)$")


def _field_comments(config_class: type) -> dict[str, str]:
    """The ``# comment`` written beside each field in the config classes' source."""
    comments: dict[str, str] = {}
    for klass in reversed(config_class.__mro__):
        if not (isinstance(klass, type) and issubclass(klass, Config)):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for line in source.splitlines():
            m = _FIELD_COMMENT.match(line)
            if m:
                comments[m.group(1)] = m.group(2).strip()
    return comments


def _describe_config(config: Config, title: str) -> list[str]:
    rows = config.describe_fields()
    comments = _field_comments(type(config))
    values = [",".join(str(v) for v in d) if isinstance(d, tuple) else str(d) for _, _, d in rows]
    width_n = max(len(n) for n, _, _ in rows)
    width_t = max(len(t) for _, t, _ in rows)
    width_v = max(len(v) for v in values)
    lines = [title]
    for (name, tp, _), value in zip(rows, values):
        note = f"  # {comments[name]}" if name in comments else ""
        lines.append(f"  {name.ljust(width_n)}  {tp.ljust(width_t)}  = {value.ljust(width_v)}{note}".rstrip())
    return lines


# `deepgen models NAME`'s example: it runs as printed in a couple of minutes on 2 CPU cores
# (tests/test_tour.py checks every one; README lists their times). A model without an entry
# gets the generic line of _model_example.
MODEL_EXAMPLES: dict[str, str] = {
    "gan": "train gan --data ring8 --set lr=1e-3 --set minibatch_std=true --epochs 10 --out runs/gan",
    "dcgan": "train dcgan --data digits --epochs 10 --set noise_dim=16 --out runs/dcgan",
    "wgan": "train wgan --data ring8 --epochs 10 --out runs/wgan",
    "wgan-gp": "train wgan-gp --data ring8 --epochs 10 --out runs/wgan-gp",
    "transformer": "train transformer --data digits --set layers=2 --set heads=4 --set width=128 --epochs 5 --out runs/transformer",
    "pixelcnn": "train pixelcnn --data digits --epochs 2 --out runs/pixelcnn",
    "realnvp": "train realnvp --data digits --epochs 10 --out runs/realnvp",
    "glow": "train glow --data digits --set steps=4 --set channels=32 --epochs 10 --out runs/glow",
    "maf": "train maf --data moons --epochs 20 --out runs/maf",
    "nsf": "train nsf --data moons --epochs 20 --out runs/nsf",
    "ddpm": "train ddpm --data digits --set channels=32 --set conditional=true --epochs 20 --out runs/ddpm",
}


def _model_example(name: str, cls: Any) -> str:
    """The example ``deepgen models NAME`` prints: a setting the model really has."""
    if name in MODEL_EXAMPLES:
        return f"{PROG} {MODEL_EXAMPLES[name]}"
    fields = cls.config_class.field_names()
    knob = next((f"--set {k}=8" for k in ("latent_dim", "noise_dim") if k in fields), "")
    return " ".join(p for p in (f"{PROG} train {name} --data digits --epochs 20", knob, f"--out runs/{name}") if p)


def cmd_models(args: argparse.Namespace) -> int:
    """``deepgen models [NAME]``: the registered models, or one model's settings."""
    from .models import model_class, model_names

    if args.name is None:
        names = model_names()
        width = max(len(n) for n in names)
        for name in names:
            cls = model_class(name)
            caps = ", ".join(_capabilities_of(cls)) or "-"
            _say(f"{name.ljust(width)}  {cls.describe()}  [{caps}]")
        return 0
    cls = model_class(args.name)
    doc = inspect.cleandoc(cls.__doc__ or "")
    lines = [f"{args.name}: {doc}" if doc else args.name, ""]
    lines.append(f"capabilities: {', '.join(_capabilities_of(cls)) or 'none beyond sampling'}")
    lines.append("")
    lines += _describe_config(cls.config_class(), "model settings (--set key=value, or model.key=value):")
    sampling = sorted(cls.config_class.sampling)
    evaluation = sorted(cls.config_class.load_time - cls.config_class.sampling)
    lines.append(f"a trained run's sampling settings ({PROG} sample RUN --set): {', '.join(sampling) or 'none'}")
    if evaluation:
        lines.append(f"a trained run's evaluation settings ({PROG} eval RUN --set): {', '.join(evaluation)}")
    lines.append("")
    lines.append(f"Trainer and data settings: {PROG} train --help. Example:")
    lines.append(f"  {_model_example(args.name, cls)}")
    _say(*lines)
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    """``deepgen datasets``: one line per registered dataset."""
    rows = dataset_descriptions()
    width = max(len(n) for n, _ in rows)
    for name, description in rows:
        _say(f"{name.ljust(width)}  {description}")
    _say("", "Also accepted as --data: a folder of PNG/JPEG images, a .npy/.npz array or a .csv table.")
    return 0


# -- bench -----------------------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace) -> int:
    """``deepgen bench``: the cross-family leaderboard."""
    from .bench import run_bench

    if args.budget <= 0:
        raise UserError(f"--budget must be > 0 seconds, got {args.budget}.")
    if args.samples < 10:
        raise UserError(f"--samples must be >= 10, got {args.samples}.")
    # `--models ""` is an empty selection too (refused by select_presets), not the default of all.
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models is not None else None
    out = Path(args.out or f"bench/{args.dataset}")
    record = run_bench(
        args.dataset, budget=args.budget, models=models, device=args.device, data_dir=args.data_dir,
        out=out, seed=args.seed, eval_samples=args.samples, batch_size=args.batch_size,
        progress=False if args.quiet else None, threads=args.threads,
    )
    _say(f"leaderboard: {out / 'leaderboard.md'} ({len(record['rows'])} models)")
    return 0


# -- report ----------------------------------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    """``deepgen report``: one self-contained HTML page about one run or several."""
    from .report import build_report

    out = Path(args.out) if args.out else (Path(args.runs[0]) / ckpt.REPORT if len(args.runs) == 1 else Path(ckpt.REPORT))
    path = build_report(args.runs, out)
    _say(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB; open it in a browser)")
    return 0


# -- demo ------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    """``deepgen demo [digits|faces]``: a small VAE trained on the CPU, its pictures, then what to try next."""
    demo = DEMOS[args.which]
    if args.data is not None and not demo.folder_settings:
        raise UserError(f"--data applies to the faces demo (a folder of face images); the {args.which} demo trains on {demo.data}.")
    if args.data is not None and not Path(args.data).expanduser().is_dir():
        # The demo reads --data as a folder of images (image_size, image_channels); anything
        # else was refused for those two settings, which the user never gave.
        raise UserError(
            f"--data {args.data!r} is not a folder: the {args.which} demo trains on a folder of face images "
            "(PNG/JPEG, sub-folders allowed; read in grey and resized to 28x20). Leave --data out for Frey faces."
        )
    data = demo.data if args.data is None else args.data
    out = Path(args.out or f"runs/{'demo' if args.which == 'digits' else args.which}")
    if out.is_dir() and ckpt.is_run(out):
        try:
            old = json.loads((out / ckpt.CONFIG).read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        old_data = str(old.get("data", {}).get("name", ""))
        is_demo = old.get("model") == demo.model and (old_data == data or Path(old_data).name == Path(data).name)
        if not (is_demo or args.overwrite):
            raise UserError(f"{out} already holds a {old.get('model', 'other')!r} run; pass --overwrite or choose another --out.")
    epochs = demo.epochs if args.epochs is None else args.epochs
    plan = _plan_train(
        demo.model, data, None, dict(demo.model_settings),
        {
            "train.epochs": str(epochs), "train.batch_size": str(DEMO_BATCH),
            "train.device": args.device, "train.progress": "false" if args.quiet else "true",
            # A network this small runs fastest on one thread: more only add synchronisation.
            "train.tensorboard": "false", "train.threads": "1", **demo.train,
            **(demo.folder_settings if args.data is not None else {}),
        },
        out, overwrite=True,
    )
    _say(f"Training {demo.what} on {demo.on if args.data is None else data} ({plan.train_config.epochs} epochs on {args.device}) ...")
    code = _run_training(plan)
    if code != 0:
        return code
    width = max(len(str(out / name)) for name, _ in demo.look)
    _say(
        "",
        "Look at:",
        *(f"  {str(out / name):<{width}}  {what}" for name, what in demo.look),
        "",
        "Next:",
        f"  {PROG} sample {out} --n 100 --out {args.which}.png",
        f"  {PROG} eval {out} --metrics recon,elbo,nll",
        f"  {PROG} report {out}                 # one HTML page: figures, curves, pictures",
        f"  {PROG} train vae --data {data} --set latent_dim=16 --epochs 100 --out runs/vae16",
        f"  {PROG} models vae",
    )
    return 0


# -- the parser ------------------------------------------------------------------------------


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def _parser() -> argparse.ArgumentParser:
    from .training import TrainConfig

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Deep generative models with one trainer, one data layer and one evaluator.",
        epilog=(
            "examples:\n"
            f"  {PROG} demo                      # a 2-D latent VAE on digits in under a minute\n"
            f"  {PROG} models                    # what can be trained\n"
            f"  {PROG} train vae --data digits --epochs 50\n"
            f"  {PROG} sample runs/vae --out samples.png\n"
            f"  {PROG} eval runs/vae --metrics elbo,nll\n"
            f"  {PROG} encode runs/vae --out codes.npy\n"
            f"  {PROG} score runs/vae --out scores.csv   # per-example anomaly scores\n"
            f"  {PROG} report runs/vae runs/vae-beta4 --out compare.html\n"
            f"\nRun `{PROG} COMMAND --help` for a command's options."
        ),
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # train
    wrap = {"width": 78, "subsequent_indent": " " * 11, "break_on_hyphens": False}
    train_fields = textwrap.fill(", ".join(TrainConfig.field_names()), initial_indent="  trainer: ", **wrap)
    data_fields = textwrap.fill(", ".join(n for n in DataConfig.field_names() if n != "name"), initial_indent="  data:    ", **wrap)
    p = sub.add_parser(
        "train",
        help="train a model (or --resume a run)",
        description="Train MODEL on dataset --data and write a run folder (default runs/MODEL).",
        epilog=(
            "examples:\n"
            f"  {PROG} train vae --data digits --epochs 50 --set latent_dim=2\n"
            f"  {PROG} train vae --data mnist --data-dir ~/data --set hidden=512,256 --set beta=4\n"
            f"  {PROG} train ae --data moons --set latent_dim=1 --out runs/moons-ae\n"
            f"  {PROG} train --resume runs/vae --epochs 100      # continue to epoch 100\n"
            "\n"
            "--set key=value sets one of the model's settings (list them with\n"
            f"`{PROG} models MODEL`), the trainer's or the data's; write model.key,\n"
            "train.key or data.key when a name belongs to more than one (data.seed).\n"
            f"{train_fields}\n"
            f"{data_fields}\n"
            "\n"
            "Everything is checked before the run folder is created. A folder that\n"
            "already holds a run needs --overwrite (or --resume to continue it); one\n"
            "whose run stopped before its first checkpoint is started again.\n"
            "On --resume only trainer settings may change. Checkpoints go to\n"
            "RUN/checkpoints/step-N/ (keep_checkpoints of them, and with keep_best=KEY\n"
            "the best by that logged value: sample/eval --checkpoint best)."
        ),
        formatter_class=_Formatter,
    )
    p.add_argument("model", nargs="?", metavar="MODEL", help="registered model name (see `deepgen models`)")
    p.add_argument("--data", metavar="NAME", help="dataset name (see `deepgen datasets`) or a path to user data")
    p.add_argument("--data-dir", metavar="DIR", help="folder searched first for the dataset's files")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="a model, trainer or data setting (repeatable)")
    p.add_argument("--epochs", type=int, metavar="N", help="epochs to train (train.epochs)")
    p.add_argument("--batch-size", type=int, metavar="N", help="examples per batch (train.batch_size)")
    p.add_argument("--seed", type=int, metavar="N", help="seed of the weights, data order and noise (train.seed)")
    p.add_argument("--device", metavar="D", help="auto, cpu, cuda, cuda:N or mps (train.device)")
    p.add_argument("--out", metavar="DIR", help="run folder (default runs/MODEL)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--resume", metavar="RUN", help="continue the run in folder RUN from its last checkpoint")
    p.set_defaults(func=cmd_train)

    # sample
    p = sub.add_parser(
        "sample",
        help="draw samples from a trained run",
        description="Draw N samples from the model in run folder RUN and write them to --out.",
        epilog=(
            "The suffix of --out picks the format:\n"
            "  .png  an image grid (images) or a scatter plot (2-D points)\n"
            "  .npy  the raw array (N, *shape) in the model's space\n"
            "  .csv  one row per sample, in the data's original units (tables)\n"
            "Images of a model with an output distribution given a code (autoencoders,\n"
            "VAEs) are its means E[x | z] unless --draw is given; every other model's\n"
            "samples are draws (GANs, diffusion, flows, autoregressive models).\n"
            "\n"
            "--set changes a sampling setting of the model config (ddpm's sampler, steps,\n"
            "eta, guidance; a temperature, top_k; list them with `deepgen models MODEL`);\n"
            "a setting that defines the trained model cannot change.\n"
            "\n"
            "--cond -1 draws from the unconditional model of a run trained with label\n"
            "dropout for classifier-free guidance (ddpm with conditional=true, p_uncond > 0).\n"
            "\n"
            "examples:\n"
            f"  {PROG} sample runs/vae --n 100 --out samples.png\n"
            f"  {PROG} sample runs/cvae --cond 3 --out threes.png\n"
            f"  {PROG} sample runs/table-vae --n 1000 --out synthetic.csv\n"
            f"  {PROG} sample runs/shakespeare --prompt \"ROMEO:\" --length 500 --n 1 --out poem.txt\n"
            f"  {PROG} sample runs/pixelcnn --complete --n 10 --out completions.png"
        ),
        formatter_class=_Formatter,
    )
    p.add_argument("run", metavar="RUN", help="run folder")
    p.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    p.add_argument("--out", default="samples.png", help="output file: .png, .npy, .csv or .txt (token models) (default samples.png)")
    p.add_argument("--prompt", default=None, help="text models: continue this text (written to a .txt --out)")
    p.add_argument("--length", type=int, default=None, help="text models: characters in all, prompt included (default: the model's context)")
    p.add_argument("--complete", action="store_true", help="image models: draw the lower half of --n test images given the upper half")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling generator (default 0)")
    p.add_argument("--cond", metavar="LABELS", help="conditional models: a label, or labels 0,1,2,... repeated (default: 0..K-1 in turn); "
                   "-1: no label (unconditional samples), for models trained with label dropout (classifier-free guidance)")
    p.add_argument("--draw", action="store_true", help="models with an output distribution given a code (autoencoders, VAEs): draw images "
                   "from it instead of writing its mean; other models' samples are draws either way (GANs and diffusion on "
                   "binary images: each pixel drawn, not thresholded at 0.5)")
    p.add_argument("--device", default="cpu", help="device to sample on (default cpu)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="model setting for sampling (repeatable)")
    p.add_argument("--checkpoint", default="latest", metavar="WHICH", help="latest (default), best (a run trained with keep_best) or a kept step")
    p.set_defaults(func=cmd_sample)

    # eval
    from .metrics import metric_descriptions

    metric_lines = "\n".join(f"  {n:<12} needs {needs:<12} {desc}" for n, needs, desc in metric_descriptions())
    p = sub.add_parser(
        "eval",
        help="evaluate a trained run",
        description="Evaluate the model in run folder RUN; print a table and merge the figures into RUN/eval.json.",
        epilog=(
            f"metrics:\n{metric_lines}\n"
            "\n"
            "--set changes an evaluation knob of the model config (e.g. iwae_k=5000); a\n"
            "setting that changes the parameters cannot load the weights.\n"
            "\n"
            "examples:\n"
            f"  {PROG} eval runs/vae --metrics elbo,nll --set iwae_k=5000 --batch-size 16\n"
            f"  {PROG} eval runs/ae --metrics recon --split train --limit 1000"
        ),
        formatter_class=_Formatter,
    )
    p.add_argument("run", metavar="RUN", help="run folder")
    p.add_argument("--metrics", default=None,
                   help="comma-separated metric names (default: those of recon, elbo and nll the model supports)")
    p.add_argument("--split", default="test", choices=["train", "test", "val"], help="split to evaluate (default test; val: the run's held-out validation split)")
    p.add_argument("--limit", type=int, default=0, help="use the first N examples (default 0 = all)")
    p.add_argument("--batch-size", type=int, default=256, help="examples per model call (default 256)")
    p.add_argument("--seed", type=int, default=0, help="seed of the evaluation's randomness (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="model setting for evaluation, e.g. iwae_k=5000 (repeatable)")
    p.add_argument("--checkpoint", default="latest", metavar="WHICH", help="latest (default), best (a run trained with keep_best) or a kept step")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default 0: deepgen's choice, which does not stall beside busy processes)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_eval)

    # encode / score
    for name, func in (("encode", cmd_encode), ("score", cmd_score)):
        if name == "encode":
            p = sub.add_parser(
                "encode",
                help="the model's code of every example, as a .npy array",
                description="Encode every example of --data (default: the run's own data) with the run's encoder.",
                epilog=(
                    "--out codes.npy gets a float32 array (N, L), one row per example in the split's\n"
                    "order; when the data has labels they go to codes.labels.npy beside it (N,).\n"
                    "\nexamples:\n"
                    f"  {PROG} encode runs/vae --out codes.npy\n"
                    f"  {PROG} encode runs/ae --data mnist --split train --limit 10000 --out train-codes.npy"
                ),
                formatter_class=_Formatter,
            )
            p.add_argument("--out", required=True, help="the .npy file of codes (N, L)")
        else:
            p = sub.add_parser(
                "score",
                help="per-example anomaly scores: NLL or reconstruction error",
                description="Score every example of --data (default: the run's own data); higher = more anomalous.",
                epilog=(
                    "--by nll (the default where the model has a likelihood): -log p(x) in nats\n"
                    "(nll_nats) and bits/dim (nll_bpd); --by recon (the default otherwise): the\n"
                    "mean squared error per element (recon_mse) and, where the model has a\n"
                    "likelihood head, -log p(x | code) in nats (recon_nll_nats).\n"
                    "--out scores.csv: a row per example (index, label if any, the scores);\n"
                    "--out scores.npy: the first score only (nll_nats or recon_mse), shape (N,).\n"
                    "\nexamples:\n"
                    f"  {PROG} score runs/vae --limit 1000 --out scores.csv\n"
                    f"  {PROG} score runs/ae --data my-test.npy --by recon --out scores.npy"
                ),
                formatter_class=_Formatter,
            )
            p.add_argument("--out", required=True, help="scores.csv (every score) or scores.npy (the first)")
            p.add_argument("--by", choices=["nll", "recon"], default=None, help="nll or recon (default nll when the model has one)")
            p.add_argument("--set", action="append", metavar="KEY=VALUE", help="model setting for scoring, e.g. iwae_k=1000 (repeatable)")
        p.add_argument("run", metavar="RUN", help="run folder")
        p.add_argument("--data", metavar="NAME", default=None, help="dataset name or path (default: the run's own data)")
        p.add_argument("--data-dir", metavar="DIR", default=None, help="folder searched first for the dataset's files")
        p.add_argument("--split", default="test", choices=["train", "test", "val"], help="split (default test; val: the run's held-out validation split)")
        p.add_argument("--limit", type=int, default=0, help="the first N examples (default 0 = all)")
        p.add_argument("--batch-size", type=int, default=256, help="examples per model call (default 256)")
        p.add_argument("--seed", type=int, default=0, help="seed of binarization / importance samples (default 0)")
        p.add_argument("--device", default="cpu", help="device (default cpu)")
        p.add_argument("--checkpoint", default="latest", metavar="WHICH", help="latest (default), best or a kept step")
        p.add_argument("--threads", type=int, default=0, help="CPU threads (default 0: deepgen's choice)")
        p.set_defaults(func=func)

    # models
    p = sub.add_parser(
        "models",
        help="list the models, or one model's settings",
        description="List the registered models with their capabilities, or show NAME's settings.",
        epilog=f"examples:\n  {PROG} models\n  {PROG} models vae",
        formatter_class=_Formatter,
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="show this model's settings")
    p.set_defaults(func=cmd_models)

    # datasets
    p = sub.add_parser(
        "datasets",
        help="list the datasets",
        description="List the registered datasets (and the user data formats accepted by --data).",
        epilog=f"example:\n  {PROG} datasets",
        formatter_class=_Formatter,
    )
    p.set_defaults(func=cmd_datasets)

    # demo
    p = sub.add_parser(
        "demo",
        help="train a small VAE on the built-in digits, or on faces (about a minute on a CPU)",
        description=(
            "digits (the default): a VAE with a 2-D latent on the built-in 8x8 digits, in well\n"
            "under a minute. faces: a convolutional VAE with a 2-D latent on Frey faces (or on a\n"
            "folder of face images with --data), about a minute on 2 CPU cores. Both write\n"
            "samples, the decoded 2-D latent grid, reconstructions and interpolations, and\n"
            "print what to try next. Offline, on the CPU."
        ),
        epilog=f"examples:\n  {PROG} demo\n  {PROG} demo --epochs 30 --out runs/quick-demo\n  {PROG} demo faces\n"
               f"  {PROG} demo faces --data ~/photos/faces --out runs/my-faces",
        formatter_class=_Formatter,
    )
    p.add_argument("which", nargs="?", choices=sorted(DEMOS), default="digits", help="digits (default) or faces")
    p.add_argument("--data", default=None, help="faces: a folder of face images instead of Frey faces (read in grey, resized to 28x20)")
    p.add_argument("--out", default=None, help="run folder (default runs/demo, or runs/faces; an earlier demo there is replaced)")
    p.add_argument("--epochs", type=int, default=None, help=f"epochs (default {DEMOS['digits'].epochs} for digits, {DEMOS['faces'].epochs} for faces)")
    p.add_argument("--device", default="cpu", help="device (default cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace another kind of run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo)

    # bench
    p = sub.add_parser(
        "bench",
        help="a cross-family leaderboard: train presets under one time budget each, evaluate alike",
        description=(
            "Train each preset model for the same wall-clock budget on one dataset, evaluate every\n"
            "one with the same metrics (FID, KID, precision/recall, density/coverage on deepgen's\n"
            "own feature network; bits/dim where the family has a likelihood; reconstruction\n"
            "error where it reconstructs), and write leaderboard.md and leaderboard.json with the\n"
            "real train-vs-test figures as the floor, the training time and the hardware."
        ),
        epilog=f"examples:\n  {PROG} bench mnist --budget 120 --device cuda --out bench/mnist\n  {PROG} bench fashion-mnist --models vae,gan",
        formatter_class=_Formatter,
    )
    p.add_argument("dataset", metavar="DATASET", help="mnist or fashion-mnist")
    p.add_argument("--budget", type=float, default=120.0, help="training seconds per model (default 120)")
    p.add_argument("--models", default=None, help="comma-separated preset labels or model names (default: all)")
    p.add_argument("--device", default="auto", help="device (default auto)")
    p.add_argument("--data-dir", default=None, help="folder with the dataset")
    p.add_argument("--out", default=None, help="output folder (default bench/DATASET)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--samples", type=int, default=10000, help="samples per sample-quality metric (default 10000)")
    p.add_argument("--batch-size", type=int, default=128, help="training batch (default 128)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default 0: deepgen's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_bench)

    # report
    p = sub.add_parser(
        "report",
        help="one self-contained HTML page about a run, or comparing several",
        description=(
            "Write an HTML page (pictures embedded, no other files) about each RUN: what was\n"
            "trained, its evaluation figures (eval.json), training curves from metrics.jsonl and\n"
            "every picture in the folder. With several runs, it first compares them: the\n"
            "settings that differ, their figures side by side and their shared curves overlaid."
        ),
        epilog=(
            f"examples:\n  {PROG} report runs/vae                     # writes runs/vae/report.html\n"
            f"  {PROG} report runs/gan runs/pacgan --out compare.html"
        ),
        formatter_class=_Formatter,
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders")
    p.add_argument("--out", default=None, help="the .html file (default RUN/report.html for one run, report.html for several)")
    p.set_defaults(func=cmd_report)
    return parser


_NEGATIVE_LABELS = re.compile(r"^-\d+(\s*,\s*-?\d+)*\s*,?$")  # "-1,3": a --cond list that starts with the null label


def _glue_negative_labels(argv: list[str]) -> list[str]:
    """``--cond -1,3`` as ``--cond=-1,3``: argparse reads a value that starts with "-" as an
    option unless it is one negative number, so a label list that starts with the null
    label (-1) is glued to its flag."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] == "--cond" and i + 1 < len(argv) and _NEGATIVE_LABELS.match(argv[i + 1]):
            out.append(f"--cond={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def _out_of_memory(e: BaseException) -> bool:
    """True for an allocation that failed: Python's MemoryError, torch's OutOfMemoryError (CUDA,
    MPS) and the CPU allocator's RuntimeError ("can't allocate memory")."""
    if isinstance(e, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = _parser()
        args = parser.parse_args(_glue_negative_labels(args_list))
        if args.func is cmd_eval:
            return cmd_eval(args, args_list)
        return int(args.func(args))
    except SystemExit as e:  # argparse: --help (0) and usage errors (2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except (UserError, TrainingDiverged) as e:
        message = " ".join(str(e).split())  # one line
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted.", file=sys.stderr)
        return 130
    except (MemoryError, RuntimeError) as e:
        # More at once than memory holds (`sample --n 100000000`, a huge --batch-size) ended in
        # the allocator's traceback, exit status 1: it is a count the user chose, so it gets one
        # line and status 2. Any other RuntimeError is a bug and keeps its traceback.
        if not _out_of_memory(e):
            raise
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        print(
            f"{PROG}: error: out of memory ({first}). Ask for less at once: a smaller --n (sample), "
            "--batch-size or --limit (eval, encode, score), or a smaller batch_size or model (train).",
            file=sys.stderr,
        )
        return 2
    except OSError as e:
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        hint = ""
        if isinstance(e, (FileExistsError, NotADirectoryError)) and where:
            hint = " (a file stands where a folder is needed: choose another output path)"
        print(f"{PROG}: error: {e.strerror or e}{':' if where else ''}{where}{hint}", file=sys.stderr)
        return 2
    finally:
        dist_module = sys.modules.get("deepgen.training.distributed")
        if dist_module is not None:  # leave the torchrun process group, if training joined one
            dist_module.shutdown()


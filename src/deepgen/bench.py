"""``deepgen bench``: one leaderboard across families, under one time budget per model.

Each preset names a registered model and its settings; every preset trains for the same
wall-clock budget on the same data with the same trainer, then the one evaluator scores
it with the same metrics: sample quality (FID, KID, precision/recall, density/coverage on
deepgen's own feature network) for every model, likelihood in bits/dim where the family
has one, reconstruction error where it has one. The FID between the real training and
test sets on the same features is the floor every figure stands beside.

Presets are data (model name + settings), not code paths: a new family joins the
leaderboard by adding a line here.
"""

from __future__ import annotations

import math
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import torch

from .data import DataConfig, load_dataset
from .devices import configure_threads
from .errors import UserError, did_you_mean
from .io import atomic_path, write_json
from .metrics import evaluate
from .metrics.progress import progress_bar, resolve_progress
from .metrics.units import eval_figures
from .models import create_model, model_class
from .models.base import LogProb, Reconstructor
from .pictures import SamplePictures
from .training import TrainConfig, Trainer, resolve_device, seed_all
from .version import __version__


@dataclass(frozen=True)
class Preset:
    """A leaderboard entry: a label, a registered model, its settings and trainer settings."""

    label: str
    model: str
    settings: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)


# The same presets serve every 28x28 grayscale dataset (MNIST, Fashion-MNIST). Likelihood
# models use the discretized logistic mixture head so that their bits/dim are a
# probability of the 8-bit pixels, comparable with flows and autoregressive models.
IMAGE_PRESETS: tuple[Preset, ...] = (
    Preset("vae-mlp", "vae", {"hidden": (512, 256), "latent_dim": 32, "likelihood": "logistic-mixture"}),
    Preset("vae-conv", "vae", {"network": "conv", "channels": (32, 64), "latent_dim": 32, "likelihood": "logistic-mixture"}),
    Preset("ae-conv", "ae", {"network": "conv", "latent_dim": 32}),
    Preset("denoising-ae-conv", "denoising-ae", {"network": "conv", "latent_dim": 32}),
    Preset("sparse-ae-conv", "sparse-ae", {"network": "conv", "latent_dim": 32}),
    Preset("contractive-ae-mlp", "contractive-ae", {"network": "mlp", "hidden": (512, 256), "latent_dim": 32}),
    Preset("stacked-ae-mlp", "stacked-ae", {"network": "mlp", "hidden": (512, 256), "latent_dim": 32, "pretrain_epochs": 1}),
    Preset("aae-conv", "aae", {"network": "conv", "latent_dim": 16}),
    Preset("gan-mlp", "gan", {"network": "mlp", "noise_dim": 64, "g_hidden": (256, 512), "d_hidden": (512, 256)}),
    Preset("dcgan", "dcgan", {"noise_dim": 100}),
    Preset("wgan-conv", "wgan", {"network": "conv", "noise_dim": 100}),
    Preset("wgan-gp-conv", "wgan-gp", {"network": "conv", "noise_dim": 100}),
    # Autoregressive models: exact probabilities of the 8-bit pixels; sampling takes one
    # network pass per pixel (784), so their sample metrics cost more time than the others'.
    # MADE's output layer has D * P units: a 256-way categorical would make it 100M
    # parameters at hidden 500; the logistic mixture needs 3 per component.
    Preset("made", "made", {"hidden": (500,), "likelihood": "logistic-mixture"}),
    Preset("pixelcnn", "pixelcnn", {"channels": 64, "layers": 8, "likelihood": "logistic-mixture"}),
    Preset("transformer-pixels", "transformer", {"layers": 4, "heads": 4, "width": 256, "dropout": 0.0}),
    # Normalizing flows: exact densities of the dequantized pixels (bits/dim with the bin width).
    Preset("realnvp", "realnvp", {"scales": 3, "couplings": 3, "channels": 64}),
    Preset("glow", "glow", {"levels": 2, "steps": 8, "channels": 128}),
    Preset("maf", "maf", {"layers": 5, "hidden": (1024,)}),
    Preset("nsf", "nsf", {"layers": 5, "hidden": (256, 256)}),
    # Diffusion: samples by DDIM in 50 steps; the bound on every 10th timestep (100
    # network passes per test image instead of 1,000).
    Preset("ddpm", "ddpm", {"channels": 64, "bound_stride": 10}),
)

PRESETS: dict[str, tuple[Preset, ...]] = {"mnist": IMAGE_PRESETS, "fashion-mnist": IMAGE_PRESETS}

QUALITY_METRICS = ["fid", "kid", "pr", "dc"]


def metrics_for(model: torch.nn.Module) -> list[str]:
    """The evaluator metrics a model supports on the leaderboard."""
    names = list(QUALITY_METRICS)
    if isinstance(model, LogProb):
        names.append("nll")
    if isinstance(model, Reconstructor):
        names.append("recon")
    return names


def select_presets(dataset: str, models: Sequence[str] | None) -> list[Preset]:
    if dataset not in PRESETS:
        raise UserError(f"no leaderboard presets for dataset {dataset!r}. {did_you_mean(dataset, list(PRESETS))}")
    presets = list(PRESETS[dataset])
    # Once each: a preset label that is also a model name (dcgan, ddpm) was listed twice.
    known = list(dict.fromkeys([p.label for p in presets] + sorted({p.model for p in presets})))
    if models is not None and not list(models):
        # An empty selection (`--models ,`) ran every preset: the whole leaderboard, not none.
        raise UserError(f"--models needs one or more preset labels or model names for {dataset}, e.g. vae,gan. Accepted: {', '.join(sorted(known))}.")
    if models:
        for m in models:
            if m not in known:
                raise UserError(f"no preset {m!r} for {dataset}. {did_you_mean(m, known)}")
        presets = [p for p in presets if p.label in models or p.model in models]
    return presets


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def run_bench(
    dataset: str,
    *,
    budget: float = 120.0,
    models: Sequence[str] | None = None,
    device: str = "auto",
    data_dir: str | None = None,
    out: str | Path = "bench",
    seed: int = 0,
    eval_samples: int = 10000,
    batch_size: int = 128,
    progress: bool | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Train each preset for ``budget`` seconds, evaluate, and write the leaderboard.

    Writes ``out/leaderboard.md``, ``out/leaderboard.json`` and one run folder per preset
    under ``out/runs/`` (with its sample pictures). Returns the JSON record. The two
    leaderboard files are rewritten (atomically) after each preset, ``"complete": false``
    and a line saying so until the last one: a crash or a kill in a later preset keeps the
    rows already measured.
    ``progress``: a bar of the models done, and the evaluator's bars (None = when stderr
    is a terminal). ``threads``: CPU threads (:func:`deepgen.devices.configure_threads`;
    None or 0 = deepgen's default).
    """
    show = resolve_progress(progress)
    presets = select_presets(dataset, models)
    dev = resolve_device(device)
    if not budget > 0 or not math.isfinite(budget):
        raise UserError(f"the training budget must be a finite number of seconds > 0, got {budget}")
    if eval_samples < 1:
        raise UserError(f"the number of evaluation samples must be >= 1, got {eval_samples}")
    # Every setting is checked before anything is written or trained (a mistake leaves no folder).
    configs = [
        TrainConfig(
            epochs=1_000_000, max_seconds=budget, batch_size=batch_size, seed=seed, device=str(dev),
            progress=False, tensorboard=False, log_every=200, **{**model_class(preset.model).train_defaults, **preset.train},
        )
        for preset in presets
    ]
    configure_threads(threads)
    data_config = DataConfig(name=dataset, data_dir=data_dir)
    ds = load_dataset(data_config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    # leave=True: the bar of models done stays; each model's line prints above it.
    with progress_bar(len(presets), f"bench {dataset}", enabled=show, unit="model", leave=True) as bar:
        bar.set_postfix_str("the floor (real train vs test)")
        floor = evaluate_floor(ds, device=dev, seed=seed, limit=eval_samples, data_dir=data_dir, progress=show)
        for preset, config in zip(presets, configs):
            bar.set_postfix_str(f"{preset.label}: training for {budget:g} s")
            seed_all(seed)
            model = create_model(preset.model, ds, **preset.settings)
            trainer = Trainer(model, ds, config, out / "runs" / preset.label, data_config=data_config, callbacks=[SamplePictures()])
            try:
                result = trainer.fit()
            finally:
                trainer.loader.close()
            names = metrics_for(trainer.eval_model)
            bar.set_postfix_str(f"{preset.label}: evaluating {', '.join(names)}")
            t0 = time.perf_counter()
            figures = evaluate(
                trainer.eval_model, ds, names, limit=eval_samples, seed=seed, device=dev, data_dir=data_dir, progress=show
            )
            rows.append(
                {
                    "label": preset.label,
                    "model": preset.model,
                    "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in preset.settings.items()},
                    "steps": result.steps,
                    "epochs": result.epochs,
                    "train_seconds": round(result.seconds, 1),
                    "eval_seconds": round(time.perf_counter() - t0, 1),
                    **figures,
                }
            )
            # Through the bar (above it when it shows; a plain line on stdout otherwise).
            bar.write(f"{preset.label}: {_row_text(rows[-1])}", file=sys.stdout)
            sys.stdout.flush()
            bar.update(1)
            record = {
                "dataset": dataset,
                "budget_seconds": budget,
                "batch_size": batch_size,
                "seed": seed,
                "eval_samples": eval_samples,
                "floor": floor,
                "rows": rows,
                "complete": len(rows) == len(presets),
                "presets": [p.label for p in presets],
                "hardware": hardware(dev),
                "torch": torch.__version__,
                "deepgen": __version__,
                "date": date.today().isoformat(),
            }
            _write_leaderboard(out, record)
    return record


def _write_leaderboard(out: Path, record: dict[str, Any]) -> None:
    """``leaderboard.json`` and ``leaderboard.md`` of the rows so far, each written atomically."""
    write_json(out / "leaderboard.json", record)
    text = leaderboard_markdown(record)
    if not record.get("complete", True):
        done = {r["label"] for r in record["rows"]}
        text += f"\nPartial: {len(done)} of {len(record['presets'])} presets measured so far; still to run: " + \
            ", ".join(p for p in record["presets"] if p not in done) + ".\n"
    with atomic_path(out / "leaderboard.md") as tmp:
        tmp.write_text(text)


def evaluate_floor(
    ds: Any, *, device: torch.device, seed: int, limit: int, data_dir: str | None, progress: bool | None = False
) -> dict[str, Any]:
    """FID/KID/PR/DC of the real training set against the real test set: the floor."""
    from .metrics.quality import real_vs_real

    return real_vs_real(ds, device=device, seed=seed, limit=limit, data_dir=data_dir, progress=progress)


def _fmt(v: Any, digits: int = 2) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "NaN"  # a diverged model: said, not sorted or printed as a figure
    return f"{v:.{digits}f}" if isinstance(v, float) else ("-" if v is None else str(v))


def _fid_key(row: dict[str, Any]) -> float:
    """Leaderboard order: FID ascending, a row without a finite FID (none, NaN) last."""
    v = row.get("fid")
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else float("inf")


def _row_text(r: dict[str, Any]) -> str:
    keys = ("fid", "kid", "precision", "recall", "density", "coverage", "nll_bpd", "recon_mse")
    return ", ".join(f"{k} {_fmt(r[k], 4)}" for k in keys if k in r)


def leaderboard_markdown(record: dict[str, Any]) -> str:
    """The leaderboard as a Markdown table, FID ascending, with the floor on top."""
    floor = record["floor"]
    head = (
        f"# deepgen leaderboard: {record['dataset']}\n\n"
        f"Each model trained for {record['budget_seconds']:.0f} s (batch {record['batch_size']}, seed {record['seed']}) on "
        f"{record['hardware']}, torch {record['torch']}, deepgen {record['deepgen']}, {record['date']}. "
        f"Sample metrics on {record['eval_samples']:,} samples against the test set, features: {floor.get('features', '?')}. "
        "Lower FID/KID/bits-per-dim is better; higher precision/recall/density/coverage is better.\n\n"
        "| model | FID | KID | precision | recall | density | coverage | NLL bits/dim | recon MSE | steps | train s |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    )
    line = "| {label} | {fid} | {kid} | {precision} | {recall} | {density} | {coverage} | {bpd} | {mse} | {steps} | {secs} |\n"
    body = line.format(
        label="**real train vs test (floor)**", fid=_fmt(floor.get("fid")), kid=_fmt(floor.get("kid"), 4), precision=_fmt(floor.get("precision")),
        recall=_fmt(floor.get("recall")), density=_fmt(floor.get("density")), coverage=_fmt(floor.get("coverage")),
        bpd="-", mse="-", steps="-", secs="-",
    )
    for r in sorted(record["rows"], key=_fid_key):
        body += line.format(
            label=f"{r['label']} (`{r['model']}`)", fid=_fmt(r.get("fid")), kid=_fmt(r.get("kid"), 4), precision=_fmt(r.get("precision")),
            recall=_fmt(r.get("recall")), density=_fmt(r.get("density")), coverage=_fmt(r.get("coverage")),
            bpd=_fmt(r.get("nll_bpd"), 3), mse=_fmt(r.get("recon_mse"), 4), steps=r["steps"], secs=_fmt(r["train_seconds"], 0),
        )
    # Worded as `deepgen eval` prints them: a bound's note says it bounds the NLL of the column.
    notes = {r["label"]: eval_figures({"nll_note": r["nll_note"]})["nll_note"] for r in record["rows"] if "nll_note" in r}
    tail = "".join(f"\n- {label}: likelihood: {note}." for label, note in notes.items())
    return head + body + tail + "\n"


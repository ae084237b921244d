"""GAN mode collapse by the VEEGAN / PacGAN protocol: a vanilla GAN against a remedy.

Reproduces the shape of PacGAN's Tables 1 and 2 (Lin et al. 2018, "PacGAN: the power of
two samples in generative adversarial networks") with deepgen's models, several seeds
each, and prints them beside the published rows of BENCHMARKS.md ("GAN mode collapse"):

* ``ring8`` (8 Gaussians on the unit circle, std 0.01) and ``grid25`` (5x5 Gaussians on
  {-4,-2,0,2,4}^2, std 0.05): modes captured, % high-quality samples (within 3 std of the
  nearest mode) and the reverse KL of the mode histogram, on 2,500 samples (VEEGAN sec.
  5.1). Networks as in PacGAN's code for its 2-D experiments
  (github.com/fjxmlzn/PacGAN, ``synthetic_data_experiments/2D{Ring,Grid}_GAN&PacGAN/
  config.py``, ``pacgan_task.py``): G maps 2-d Gaussian noise through 4 hidden layers of
  400 ReLU units with batch norm; D has 3 hidden layers of 200 units (PacGAN: maxout with
  5 pieces; deepgen's MLP discriminator uses LeakyReLU(0.2), the one deviation); Adam lr
  1e-4, beta1 0.8; batches of 100 (packed) D inputs; 100,000 training points; 400 epochs
  (400,000 steps) in the paper.
* ``stacked-mnist`` (three MNIST digits as channels, 1,000 modes): modes covered and KL
  to uniform over the 1,000 modes of 26,000 samples, each channel labelled by deepgen's
  MNIST classifier (VEEGAN / PacGAN Table 2). ``dcgan`` (Radford et al. 2016; noise 100,
  Adam 2e-4, beta1 0.5, batch 64, as PacGAN's ``stacked_MNIST_experiments/VEEGAN_experiment/
  config.py``, which trains 50 epochs of 128,000 stacks = 100,000 steps and updates G twice
  per D step; ``--settings g_steps=2`` does that, the recorded runs update G once).

The baseline is ``gan`` (non-saturating loss) on the 2-D sets and ``dcgan`` on stacked
MNIST; the remedy is the same model with ``--remedy`` settings (default ``pack=4``:
PacGAN4). With packing, D judges ``batch`` packed inputs per step as in PacGAN's code, so
the packed model draws ``batch * m`` real and fake examples per step (``--no-pack-batch``
keeps the batch at ``batch`` examples instead).

Public API only: ``deepgen.load_dataset``, ``deepgen.create_model``, ``deepgen.Trainer``,
``deepgen.TrainConfig``, ``deepgen.metrics.evaluate(..., ["modes"])``.

The baseline and the remedy both start from the setting's networks (``--arch paper``, the
default: PacGAN's on the 2-D sets) or, on the 2-D sets, from the registered ``gan``'s own
defaults (``--arch deepgen``: 32-d noise, 128-128 MLPs, Adam 2e-4 (0.5, 0.999)), which learn
the modes' widths much faster per step; ``--settings`` changes both runs (model or trainer
keys, as ``deepgen train --set``), ``--remedy`` only the second.

GPU runs recorded in benchmarks/RESULTS.md (one H200; MNIST copied into ``.data/``)::

    python benchmarks/mode_collapse.py --device cuda --datasets ring8 --seeds 5 --arch deepgen \\
        --batch 128 --remedy minibatch_std=true --time-budget 420 --jobs 11
    python benchmarks/mode_collapse.py --device cuda --datasets grid25 --seeds 5 --arch deepgen \\
        --batch 128 --settings cuda_graph=true --remedy pack=4 minibatch_std=true ema=0.999 \\
        --steps 250000 --time-budget 480 --jobs 10 --runs-dir $OUT/mc-runs   # two calls, below
    python benchmarks/mode_collapse.py --data-dir .data --device cuda --datasets stacked-mnist \\
        --seeds 5 --kinds remedy --settings cuda_graph=true --remedy pack=2 ema=0.999 \\
        --steps 100000 --time-budget 500 --jobs 5

``cuda_graph=true`` (TrainConfig) makes each run 6-11x faster alone and 1.5x when 10 share
the GPU; ``--kinds remedy`` (or ``baseline``) trains one half of the table, so fewer runs
share the GPU.

A protocol longer than one call of the device (10 minutes) is split over calls with
``--runs-dir``: each call resumes every run from its checkpoint and trains it on to
``--steps`` or for ``--time-budget`` more seconds. With the device tool, only ``$OUT``
comes back, and only a few files: write the folder there, pack it at the end, unpack what
came back into ``.data/mc-runs`` here, and carry ``.data/mc-runs`` to the next call (the
2-D runs are a few MB)::

    # each call (the first finds no mc-runs to copy)
    [ -d .data/mc-runs ] && cp -r .data/mc-runs $OUT/mc-runs; \\
    python benchmarks/mode_collapse.py --device cuda --datasets grid25 ... --runs-dir $OUT/mc-runs; \\
    rc=$?; tar czf $OUT/mc-runs.tgz -C $OUT mc-runs && rm -rf $OUT/mc-runs; exit $rc
    # here: rm -rf .data/mc-runs && tar xzf <files_at>/mc-runs.tgz -C .data

CPU smoke check (a minute; the figures mean nothing)::

    python benchmarks/mode_collapse.py --data-dir ../shared/data --device cpu --seeds 1 \\
        --datasets ring8,grid25 --steps 200

Prints a Markdown table per dataset (mean ± sample std over seeds) beside the paper rows,
with the command and the hardware, for benchmarks/RESULTS.md; ``--out`` writes every
run's figures as JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any

import torch

import deepgen
from deepgen.bench import hardware
from deepgen.metrics import evaluate
from deepgen.pictures import SamplePictures
from deepgen.training import fit_together

# PacGAN's 2-D networks and optimiser (its config.py / pacgan_task.py, see the docstring).
ARCH_2D: dict[str, Any] = dict(
    noise_dim=2,
    g_hidden=(400, 400, 400, 400),
    g_norm="batch",
    d_hidden=(200, 200, 200),
    d_norm="none",
    lr=1e-4,
    betas=(0.8, 0.999),
)
# DCGAN on stacked MNIST as in PacGAN's VEEGAN-setting experiment (z_dim 100, lr 2e-4, beta1 0.5).
ARCH_STACKED: dict[str, Any] = dict(noise_dim=100, conv_width=64, lr=2e-4, betas=(0.5, 0.999))

SETTINGS: dict[str, dict[str, Any]] = {
    "ring8": dict(model="gan", arch=ARCH_2D, batch=100, steps=400_000, data=dict(num_samples=100_000), eval_batch=2500),
    "grid25": dict(model="gan", arch=ARCH_2D, batch=100, steps=400_000, data=dict(num_samples=100_000), eval_batch=2500),
    "stacked-mnist": dict(model="dcgan", arch=ARCH_STACKED, batch=64, steps=100_000, data={}, eval_batch=1000),
}

# BENCHMARKS.md, "GAN mode collapse": (model, modes, % HQ, reverse KL, source); None = not reported.
PAPER_2D: dict[str, list[tuple[str, float, float, float | None, str]]] = {
    "ring8": [
        ("GAN", 6.3, 98.2, 0.45, "PacGAN, Table 1"),
        ("GAN (VEEGAN's run)", 1, 99.3, None, "VEEGAN, Table 1"),
        ("Unrolled GAN", 7.6, 35.6, None, "VEEGAN, Table 1"),
        ("PacGAN4", 7.8, 95.9, 0.07, "PacGAN, Table 1"),
    ],
    "grid25": [
        ("GAN", 17.3, 94.8, 0.70, "PacGAN, Table 1"),
        ("GAN (VEEGAN's run)", 3.3, 0.5, None, "VEEGAN, Table 1"),
        ("Unrolled GAN", 23.6, 16, None, "VEEGAN, Table 1"),
        ("PacGAN4", 24.8, 93.6, 0.04, "PacGAN, Table 1"),
    ],
}
PAPER_STACKED: list[tuple[str, float, float, str]] = [
    ("DCGAN", 99, 3.4, "VEEGAN, Table 2"),
    ("VEEGAN", 150, 2.95, "VEEGAN, Table 2"),
    ("PacDCGAN2", 1000, 0.06, "PacGAN, Table 2"),
]


class TrainingData(deepgen.GenerativeModel):
    """The real data as a "model": ``sample`` draws training examples uniformly (with the
    generator it is given). Its figures are the metric's floor: what a perfect sampler of
    the training set scores under the same protocol."""

    def __init__(self, ds: deepgen.Dataset) -> None:
        super().__init__(deepgen.models.ModelConfig(), ds.spec)
        self.ds = ds
        self.register_buffer("anchor", torch.zeros(()))  # gives the model a device

    def sample(self, n: int, *, generator: torch.Generator | None = None, cond: torch.Tensor | None = None, mean: bool = False) -> torch.Tensor:
        i = torch.randint(len(self.ds.train), (n,), generator=generator, device=self.anchor.device)
        return self.ds.convert(self.ds.train.x[i.cpu()].to(self.anchor.device))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", default=None, help="folder holding mnist/ (default: $DEEPGEN_DATA, then the user cache)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (with --jobs > 1 on several GPUs, runs go round-robin)")
    p.add_argument("--datasets", default="ring8,grid25,stacked-mnist", help="comma-separated: ring8, grid25, stacked-mnist")
    p.add_argument("--seeds", default="5", help="N (seeds 0..N-1) or a comma-separated list of seeds")
    p.add_argument("--remedy", nargs="+", default=["pack=4"], metavar="KEY=VALUE", help="model (or trainer) settings of the remedy run only (pack=2, minibatch_std=true, unrolled_steps=5, feature_matching=true)")
    p.add_argument("--settings", nargs="+", default=[], metavar="KEY=VALUE", help="model or trainer settings of both runs, as `deepgen train --set` (ema=0.999, schedule=cosine, lr=2e-4, g_hidden=256,256)")
    p.add_argument("--arch", choices=("paper", "deepgen"), default="paper", help="2-D networks: the paper's (PacGAN's G 4x400 with batch norm, 2-d noise; D 3x200) or the registered gan's defaults (32-d noise, 128-128 MLPs, Adam 2e-4 (0.5, 0.999))")
    p.add_argument("--no-pack-batch", action="store_true", help="keep the batch at --batch examples when packing (default: batch packed D inputs, batch*m examples, as PacGAN)")
    p.add_argument("--steps", type=int, default=0, help="training steps per run; 0 = the paper's (400,000 on 2-D, 100,000 on stacked MNIST)")
    p.add_argument("--time-budget", type=float, default=0.0, help="seconds of training per run at most (0 = no limit)")
    p.add_argument("--batch", type=int, default=0, help="D inputs per step; 0 = the paper's (100 on 2-D, 64 on stacked MNIST)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once in separate processes (small 2-D nets are launch-bound: several share a GPU well)")
    p.add_argument("--per-process", type=int, default=1, help="runs trained together in each process, one step of each in turn (fit_together; with cuda_graph=true the GPU never waits for Python between them)")
    p.add_argument("--compile", action="store_true", help="torch.compile the loss (TrainConfig.compile)")
    p.add_argument("--no-data-row", action="store_true", help="skip the row that scores the training data itself")
    p.add_argument("--kinds", default="baseline,remedy", help="which runs to train: baseline, remedy or both (one kind alone halves the runs sharing a GPU)")
    p.add_argument("--runs-dir", default=None, help="keep each run's folder (checkpoint at the end, samples.png) here; a run whose folder exists is resumed and trained on to --steps, so a long protocol can be split over several calls")
    p.add_argument("--out", default=None, help="write every run's figures and the setting as JSON here")
    args = p.parse_args(argv)
    args.dataset_list = [d.strip() for d in args.datasets.split(",") if d.strip()]
    for d in args.dataset_list:
        if d not in SETTINGS:
            p.error(f"unknown dataset {d!r}; accepted: {', '.join(SETTINGS)}")
    if "," in args.seeds:
        args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    else:
        if int(args.seeds) < 1:
            p.error("--seeds must be >= 1")
        args.seed_list = list(range(int(args.seeds)))
    try:
        args.remedy_settings = deepgen.config.parse_assignments(args.remedy)
        args.common_settings = deepgen.config.parse_assignments(args.settings)
        for name in args.dataset_list:  # unknown keys and bad values fail here, not in a worker
            _configs(name, args.arch, {**args.common_settings, **args.remedy_settings})
    except (deepgen.UserError, ValueError) as e:
        p.error(str(e))
    args.kind_list = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not args.kind_list or any(k not in ("baseline", "remedy") for k in args.kind_list):
        p.error(f"--kinds takes baseline, remedy or baseline,remedy; got {args.kinds!r}")
    for name in ("steps", "batch", "jobs", "per_process"):
        if getattr(args, name) < 0 or (name in ("jobs", "per_process") and getattr(args, name) < 1):
            p.error(f"--{name.replace('_', '-')} must be >= {1 if name in ('jobs', 'per_process') else 0}")
    return args



def _configs(name: str, arch: str, overrides: dict[str, str]) -> tuple[deepgen.models.ModelConfig, dict[str, str]]:
    """The model config of one run (the setting's networks, then ``overrides`` routed to the
    model) and the trainer overrides (the keys TrainConfig owns, as text)."""
    s = SETTINGS[name]
    cfg = deepgen.models.model_class(s["model"]).config_class()
    if arch == "paper" or name == "stacked-mnist":
        cfg = cfg.replace(**s["arch"])
    routed = deepgen.config.split_overrides(overrides, {"model": cfg, "train": deepgen.TrainConfig()})
    return cfg.with_overrides(routed["model"]), routed["train"]


def remedy_label(settings: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in settings.items())


# -- one run (in a worker process when --jobs > 1) ----------------------------------------------

_DATA: dict[tuple[str, int, str | None], deepgen.Dataset] = {}


def _dataset(name: str, seed: int, data_dir: str | None) -> deepgen.Dataset:
    key = (name, seed, data_dir)
    if key not in _DATA:
        _DATA.clear()  # one dataset at a time per process: stacked MNIST is 165 MB
        _DATA[key] = deepgen.load_dataset(name, data_dir=data_dir, seed=seed, **SETTINGS[name]["data"])
    return _DATA[key]


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train one model on one seed and score it with the ``modes`` metric; return a record."""
    return run_group([job])[0]


def run_group(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Train the jobs together in this process (``deepgen.training.fit_together``: one step
    of each in turn), then score each."""
    if jobs[0].get("threads"):
        torch.set_num_threads(jobs[0]["threads"])
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    t0 = time.perf_counter()
    built = [_build(job) for job in jobs]
    results = iter(fit_together([b.trainer for b in built if b.trainer is not None]))
    records = []
    for job, b in zip(jobs, built):
        result = None if b.trainer is None else next(results)
        train_seconds = time.perf_counter() - t0 if result is None else result.seconds  # cumulative over resumed calls
        records.append(_score(job, b, result, train_seconds))
    return records


@dataclass
class _Built:
    """One job made ready: its dataset, its trainer (None for the data row, whose sampler is
    the training data), its model config and its batch in examples."""

    ds: deepgen.Dataset
    trainer: deepgen.Trainer | None = None
    sampler: Any = None
    cfg: Any = None
    batch: int | None = None

    @property
    def model(self) -> Any:
        return self.sampler if self.trainer is None else self.trainer.eval_model


def _build(job: dict[str, Any]) -> _Built:
    """The job's dataset and its trainer (a new run, or its folder resumed); for the data
    row, no trainer but the training data as a sampler."""
    name, seed, kind = job["dataset"], job["seed"], job["kind"]
    s = SETTINGS[name]
    ds = _dataset(name, seed, job["data_dir"])
    device = torch.device(job["device"])
    if kind == "data":
        return _Built(ds, sampler=TrainingData(ds).to(device))
    overrides = {**job["settings"], **(job["remedy"] if kind == "remedy" else {})}
    cfg, train_overrides = _configs(name, job["arch"], overrides)  # "key=value" text parsed by each field's type
    pack = int(getattr(cfg, "pack", 1))
    batch = job["batch"] * (pack if job["pack_batch"] else 1)
    run_dir = None if not job["runs_dir"] else os.path.join(job["runs_dir"], f"{name}-{kind}-seed{seed}")
    if run_dir is not None and os.path.isfile(os.path.join(run_dir, "model.safetensors")):  # a checkpoint, not just a started folder
        # Continue a run of an earlier call exactly (weights, optimiser, RNG, data position):
        # long protocols split over several calls of a time-limited machine.
        trainer = deepgen.Trainer.resume(run_dir, device=str(device), max_steps=job["steps"], callbacks=[SamplePictures()])
        budget = trainer.seconds + job["time_budget"] if job["time_budget"] else 0.0
        trainer.config = trainer.config.replace(max_seconds=budget)  # training seconds are cumulative
        return _Built(ds, trainer, cfg=cfg, batch=batch)
    deepgen.seed_all(seed)  # the weights; the trainer seeds data order and noise itself
    model = deepgen.create_model(s["model"], ds, cfg)
    tcfg = deepgen.TrainConfig(
        epochs=1_000_000,  # the run ends at max_steps or max_seconds
        max_steps=job["steps"],
        max_seconds=job["time_budget"],
        batch_size=batch,
        seed=seed,
        device=str(device),
        progress=False,
        tensorboard=False,
        log_every=1000,
        compile=job["compile"],
        # With --runs-dir: one checkpoint and one picture, at the end of this call.
        checkpoint_every=10**9,
        sample_every=10**9,
    ).with_overrides(train_overrides)
    data_config = deepgen.DataConfig(name=name, data_dir=job["data_dir"], seed=seed, **s["data"])
    return _Built(ds, deepgen.Trainer(model, ds, tcfg, run_dir=run_dir, data_config=data_config, callbacks=[SamplePictures()]), cfg=cfg, batch=batch)


def _score(job: dict[str, Any], b: _Built, result: Any, train_seconds: float) -> dict[str, Any]:
    """The ``modes`` figures of one trained model (or of the data), as a record."""
    name, kind = job["dataset"], job["kind"]
    s = SETTINGS[name]
    device = torch.device(job["device"])
    t1 = time.perf_counter()
    figures = evaluate(b.model, b.ds, ["modes"], batch_size=s["eval_batch"], seed=job["seed"])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {
        "dataset": name,
        "kind": kind,
        "seed": job["seed"],
        "model": "data" if kind == "data" else s["model"],
        "settings": {} if b.cfg is None else {k: (list(v) if isinstance(v, tuple) else v) for k, v in b.cfg.to_dict().items()},
        "batch_examples": None if result is None else b.batch,
        "steps": None if result is None else result.steps,
        "train_seconds": round(train_seconds, 2) if result is not None else 0.0,
        "eval_seconds": round(time.perf_counter() - t1, 2),
        "last_logs": {} if result is None else result.last,
        **{k: v for k, v in figures.items() if k not in ("split", "n")},
    }


# -- summary ---------------------------------------------------------------------------------------


def mean_std(values: list[float]) -> tuple[float, float, int]:
    """Mean and sample std (ddof 1; 0 for one value) of the finite values, and how many were finite."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return float("nan"), float("nan"), 0
    m = sum(v) / len(v)
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return m, sd, len(v)


def _pm(values: list[float], digits: int) -> str:
    m, sd, k = mean_std(values)
    if k == 0:
        return "-"
    note = f" ({k} of {len(values)})" if k < len(values) else ""
    return f"{m:.{digits}f} ± {sd:.{digits}f}{note}"


def _label(rec: dict[str, Any], record: dict[str, Any]) -> str:
    if rec["kind"] == "data":
        return "training data (the metric's floor)"
    base = "gan, non-saturating" if rec["model"] == "gan" else rec["model"]
    if rec["dataset"] != "stacked-mnist":
        base += ", PacGAN's nets" if record["arch"] == "paper" else ", gan's default nets"
    if record["settings_label"]:
        base += f", {record['settings_label']}"
    return f"deepgen {base}" + (f" + {record['remedy']}" if rec["kind"] == "remedy" else "")


def _at_once(record: dict[str, Any]) -> str:
    k = record.get("per_process", 1)
    return f"{record['jobs']} run(s) at once" if k == 1 else f"{record['jobs']} process(es) x {k} runs trained together at once"


def markdown(record: dict[str, Any]) -> str:
    """One table per dataset: deepgen rows (mean ± std over seeds), then the paper rows."""
    out = []
    for name in record["datasets"]:
        runs = [r for r in record["runs"] if r["dataset"] == name]
        if not runs:
            continue
        stacked = name == "stacked-mnist"
        total = runs[0]["modes_total"]
        samples = runs[0]["modes_samples"]
        out.append(f"### {name}: {total} modes, {samples:,} samples per evaluation\n")
        if stacked:
            out.append("| model | modes (of 1000) | KL | seeds | steps / run | batch | train time / run | source |")
            out.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
        else:
            out.append(f"| model | modes (of {total}) | % high quality | reverse KL | seeds | steps / run | batch | train time / run | source |")
            out.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for kind in ("data", "baseline", "remedy"):
            group = [r for r in runs if r["kind"] == kind]
            if not group:
                continue
            steps = _pm([r["steps"] for r in group], 0) if kind != "data" else "-"
            secs = _pm([r["train_seconds"] for r in group], 0) + " s" if kind != "data" else "-"
            batch = str(group[0]["batch_examples"]) if kind != "data" else "-"
            seeds = str(len(group))
            label = _label(group[0], record)
            if stacked:
                cells = [_pm([r["modes"] for r in group], 1), _pm([r["kl"] for r in group], 3)]
            else:
                cells = [_pm([r["modes"] for r in group], 1), _pm([r["hq_percent"] for r in group], 1), _pm([r["reverse_kl"] for r in group], 3)]
            out.append(f"| {label} | " + " | ".join(cells) + f" | {seeds} | {steps} | {batch} | {secs} | this run |")
        if stacked:
            for model, modes, kl, source in PAPER_STACKED:
                out.append(f"| {model} | {modes:g} | {kl:g} | | | | | {source} |")
        else:
            for model, modes, hq, kl, source in PAPER_2D[name]:
                out.append(f"| {model} | {modes:g} | {hq:g} | {'-' if kl is None else f'{kl:g}'} | | | | | {source} |")
        out.append("")
    protocol = record["protocol_note"]
    out.append(
        f"Hardware: {record['hardware']}, torch {record['torch']}, {record['date']}. "
        f"Wall time {record['wall_seconds']:.0f} s ({_at_once(record)}). {protocol}\n"
        f"Command: `{record['command']}`"
    )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    command = "python " + shlex.join(sys.argv if argv is None else [sys.argv[0], *argv])
    device = deepgen.training.resolve_device(args.device)
    t_start = time.perf_counter()

    if "stacked-mnist" in args.dataset_list:
        # Train (or load) the MNIST classifier once here, so that parallel workers find it cached.
        from deepgen.metrics import modes

        ds = deepgen.load_dataset("stacked-mnist", data_dir=args.data_dir)
        t0 = time.perf_counter()
        net = modes.digit_classifier(ds, device)
        print(f"MNIST classifier: {net.describe() if hasattr(net, 'describe') else net} ({time.perf_counter() - t0:.1f} s)", flush=True)
        del ds

    gpus = torch.cuda.device_count() if device.type == "cuda" and device.index is None else 1
    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else 0
    jobs: list[dict[str, Any]] = []
    for name in args.dataset_list:
        s = SETTINGS[name]
        kinds = (["data"] if not args.no_data_row else []) + [k for k in ("baseline", "remedy") if k in args.kind_list]
        for kind in kinds:
            for seed in args.seed_list if kind != "data" else args.seed_list[:1]:
                dev = device if gpus <= 1 else torch.device("cuda", len(jobs) % gpus)
                jobs.append(
                    dict(
                        dataset=name,
                        seed=seed,
                        kind=kind,
                        remedy=args.remedy_settings,
                        settings=args.common_settings,
                        arch=args.arch,
                        pack_batch=not args.no_pack_batch,
                        batch=args.batch or s["batch"],
                        steps=args.steps or s["steps"],
                        time_budget=args.time_budget,
                        compile=args.compile,
                        data_dir=args.data_dir,
                        runs_dir=args.runs_dir,
                        device=str(dev),
                        threads=threads,
                    )
                )
    print(f"{len(jobs)} runs on {hardware(device)}, {args.jobs} process(es) at once, up to {args.per_process} run(s) each", flush=True)

    runs: list[dict[str, Any]] = []

    def report(r: dict[str, Any]) -> None:
        figs = f"modes {r['modes']}/{r['modes_total']}" + (
            f", KL {r['kl']:.3f}" if "kl" in r else f", HQ {r['hq_percent']:.1f}%, rev-KL {r['reverse_kl']:.3f}"
        )
        steps = "" if r["steps"] is None else f", {r['steps']} steps in {r['train_seconds']:.0f} s"
        print(f"  {r['dataset']:<13} {r['kind']:<8} seed {r['seed']}: {figs}{steps}", flush=True)
        runs.append(r)

    # --per-process K: K runs of one dataset per worker, trained together (the data row alone).
    groups: list[list[dict[str, Any]]] = []
    for job in jobs:
        last = groups[-1] if groups else None
        if last and len(last) < args.per_process and "data" not in (job["kind"], last[0]["kind"]) and last[0]["dataset"] == job["dataset"]:
            last.append(job)
        else:
            groups.append([job])
    if args.jobs == 1:
        for group in groups:
            for r in run_group(group):
                report(r)
    else:
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
            for records in pool.map(run_group, groups):
                for r in records:
                    report(r)

    record: dict[str, Any] = {
        "benchmark": "mode_collapse",
        "protocol_note": (
            "VEEGAN/PacGAN protocol: 2,500 samples on ring8/grid25 (HQ = within 3 std of the nearest mode; "
            "reverse KL over the HQ samples' mode histogram), 26,000 on stacked-mnist (KL to uniform over 1,000). "
            "Mean ± sample std over seeds."
            + (" NOT the paper's training length: smoke settings." if (args.steps and args.steps < 10000) else "")
        ),
        "datasets": args.dataset_list,
        "seeds": args.seed_list,
        "remedy": remedy_label(args.remedy_settings),
        "settings_label": remedy_label(args.common_settings),
        "arch": args.arch,
        "runs": runs,
        "jobs": args.jobs,
        "per_process": args.per_process,
        "hardware": hardware(device),
        "torch": torch.__version__,
        "deepgen": deepgen.__version__,
        "python": platform.python_version(),
        "date": datetime.date.today().isoformat(),
        "wall_seconds": time.perf_counter() - t_start,
        "command": command,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
    }
    table = markdown(record)
    record["markdown"] = table
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(record, f, indent=2, allow_nan=True)
            f.write("\n")
        print(f"wrote {args.out}", flush=True)
    print("\n" + table)
    return record


if __name__ == "__main__":
    main()

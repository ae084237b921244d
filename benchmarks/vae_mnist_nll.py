"""VAE test NLL on dynamically binarized MNIST, by the protocol of the IWAE paper.

Burda, Grosse & Salakhutdinov 2016, "Importance Weighted Autoencoders", Table 1: a VAE
with one stochastic layer (encoder and decoder each two deterministic layers of 200 tanh
units, 50 Gaussian latent units, Bernoulli decoder), trained with k=1 on dynamically
binarized MNIST, reaches a test NLL of 86.76 nats, estimated by importance sampling with
k=5000 samples per test image (the IWAE bound, their eq. 8) on all 10,000 test images.
The paper trained for 3,280 epochs; this script trains for a few minutes.

Public API only: ``deepgen.load_dataset``, ``deepgen.create_model``,
``deepgen.training.Trainer`` and ``deepgen.metrics.evaluate``.

GPU run (one H200; the data copied into ``.data/`` inside the repo, see README.md)::

    python benchmarks/vae_mnist_nll.py --data-dir .data --device cuda --time-budget 240 --out $OUT/vae_mnist_nll.json

CPU smoke check (a minute)::

    python benchmarks/vae_mnist_nll.py --data-dir ../shared/data --device cpu \\
        --epochs 1 --k 10 --limit-test 200 --max-train 2000

A run longer than one device call: ``--run-dir DIR --total-budget T`` sizes the step
budget (and so the cosine schedule) for T seconds of training but stops this call after
``--time-budget`` seconds, with a checkpoint; ``--resume --run-dir DIR --time-budget B``
continues it for B seconds more on the same schedule. Every call tests the weights it
ends with.

Prints a Markdown row for benchmarks/RESULTS.md and, with ``--out``, writes the figures,
times, hardware, versions and the exact command as JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
from timing import resumed, timed_continuation

import deepgen
from deepgen.bench import hardware
from deepgen.config import parse_assignments
from deepgen.metrics import evaluate
from deepgen.nn.likelihoods import default_head_name
from deepgen.training import TrainConfig, Trainer, resolve_device, seed_all

PAPER_NLL = 86.76  # Burda et al. 2016, Table 1, VAE with 1 stochastic layer, k=5000
# IWAE paper architecture (section 5.1): 784-200-200-50 encoder, mirrored decoder, tanh.
ARCHITECTURE = dict(hidden=(200, 200), activation="tanh", latent_dim=50, likelihood="bernoulli")
PROBE_SECONDS = 3.0  # seconds of training timed to turn --time-budget into a step budget
WARMUP_STEPS = 50  # untimed steps before them


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", default=None, help="folder holding mnist/ (default: $DEEPGEN_DATA, then the user cache)")
    # Defaults: large batches, since the step rate of this small MLP is launch-bound (on an
    # H200 ~365 steps/s at batch 100 or 1000 alike); 1000 epochs take ~3 minutes there.
    p.add_argument("--epochs", type=int, default=1000, help="training epochs (the paper: 3,280)")
    p.add_argument("--batch-size", type=int, default=1000, help="training batch (the paper: 20)")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (the paper: 1e-3, decayed by 10^(-1/7) per stage)")
    p.add_argument("--schedule", choices=("constant", "cosine", "linear", "iwae"), default="cosine",
                   help="lr schedule over the run (iwae: the paper's 3^i-epoch staircase, scaled to the run)")
    p.add_argument("--binarization", choices=("dynamic", "static"), default="dynamic",
                   help="dynamic: each training batch redrawn (the IWAE paper); static: one fixed draw")
    p.add_argument("--settings", nargs="*", default=[], help="vae settings key=value over the paper's architecture (objective=iwae train_k=50, ...)")
    p.add_argument("--train", nargs="*", default=[], help="trainer settings key=value (bf16, cuda_graph, ema, warmup_steps, ...)")
    p.add_argument("--label", default="", help="the model column of the printed row (default: from --settings)")
    p.add_argument("--paper", type=float, default=PAPER_NLL, help="the published figure the row stands beside")
    p.add_argument("--k", type=int, default=5000, help="importance samples per test image for the NLL (the paper: 5000)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--time-budget", type=float, default=0.0, help="seconds of training at most (0 = no limit); set as a step budget so the lr schedule completes")
    p.add_argument("--limit-test", type=int, default=0, help="evaluate the first N test images only (0 = all 10,000)")
    p.add_argument("--max-train", type=int, default=0, help="train on the first N training images only (0 = all 60,000)")
    p.add_argument("--eval-batch", type=int, default=0, help="test images per log_prob call; 0 = 500,000 // k (100 for k=5000)")
    p.add_argument("--iwae-chunk", type=int, default=-1, help="importance samples per decoder call; -1 = all k on a GPU, the model's automatic size on a CPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="torch.compile the loss (TrainConfig.compile)")
    p.add_argument("--run-dir", default=None, help="write the run folder (checkpoint, logs) here; default: write nothing")
    p.add_argument("--total-budget", type=float, default=0.0,
                   help="training seconds the step budget is sized for, over several calls (0 = --time-budget); needs --run-dir")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir for another --time-budget seconds")
    p.add_argument("--out", default=None, help="write the figures and the setting as JSON here")
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "k"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if (args.resume or args.total_budget) and not args.run_dir:
        p.error("--resume and --total-budget continue or write a run folder: give --run-dir")
    if (args.resume or args.total_budget) and args.time_budget <= 0:
        p.error("--resume and --total-budget need --time-budget (this call's training seconds)")
    if args.resume and args.total_budget:
        p.error("--total-budget sizes a new run's schedule; a resumed run keeps its own (give --time-budget only)")
    if args.total_budget and args.total_budget < args.time_budget:
        p.error("--total-budget must be at least --time-budget")
    return args



def build_model(ds: deepgen.Dataset, args: argparse.Namespace, device: torch.device) -> deepgen.GenerativeModel:
    """The IWAE paper's 1-stochastic-layer VAE; ``iwae_k`` only changes evaluation."""
    chunk = args.iwae_chunk
    if chunk < 0:
        # On a GPU decode all k samples of an eval batch in one call: eval_batch * k rows
        # (100 x 5000 x 784 float32 logits = 1.6 GB). On a CPU keep the model's ~64 MiB calls.
        chunk = args.k if device.type == "cuda" else 0
    model = deepgen.create_model("vae", ds, **ARCHITECTURE, lr=args.lr, iwae_k=args.k, iwae_chunk=chunk)
    if args.settings:  # on top of the paper's architecture (a bad key or value: one clear UserError)
        model = deepgen.create_model("vae", ds, model.config.with_overrides(parse_assignments(args.settings)))
    return model


def train_config(args: argparse.Namespace, max_steps: int = 0) -> TrainConfig:
    # max_seconds is a backstop in case the timed step rate was optimistic.
    return TrainConfig(
        max_seconds=1.1 * args.time_budget,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        schedule=args.schedule,
        max_steps=max_steps,
        progress=False,
        tensorboard=False,
        log_every=500,
        compile=args.compile,
    ).with_overrides(parse_assignments(args.train))


def step_budget(ds: deepgen.Dataset, args: argparse.Namespace, device: torch.device, planned: int) -> tuple[int, float]:
    """Steps that fit in ``--time-budget`` seconds, timed on a throwaway copy of the model.

    Returns (max_steps, seconds spent calibrating). Converting time to steps up front lets
    the cosine schedule reach its end instead of being cut off mid-way. The copy first
    takes :data:`WARMUP_STEPS` untimed steps (CUDA context, cuBLAS handles, allocator, the
    CUDA graph's capture or compilation), then the same trainer goes on for
    :data:`PROBE_SECONDS` (epoch-end validations included), and only those steps are timed.
    (Session 9: a second, fresh trainer timed over 300 steps counted its own graph capture
    and turned a 120 s budget into 79 s of training.)
    """
    model = build_model(ds, args, device)
    t0 = time.perf_counter()
    trainer = Trainer(model, ds, train_config(args, max_steps=min(WARMUP_STEPS, planned)).replace(max_seconds=0.0), run_dir=None)
    trainer.fit()
    if trainer.step >= planned:  # the whole run is shorter than the warm-up: no budget needed
        return planned, time.perf_counter() - t0
    steps, seconds = timed_continuation(trainer, train_config(args, max_steps=planned), PROBE_SECONDS)
    rate = steps / max(seconds, 1e-6)
    return max(1, int(0.97 * (args.total_budget or args.time_budget) * rate)), time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    command = "python " + shlex.join(sys.argv if argv is None else [sys.argv[0], *argv])
    device = resolve_device(args.device)
    ds = deepgen.load_dataset("mnist-binarized", data_dir=args.data_dir, binarization=args.binarization, max_train=args.max_train)
    steps_per_epoch = len(ds.train) // min(args.batch_size, len(ds.train))
    planned = args.epochs * steps_per_epoch
    print(f"data: {len(ds.train)} train / {len(ds.test)} test images, {ds.spec.dim} binary pixels; device: {hardware(device)}", flush=True)

    # -- train --------------------------------------------------------------------------
    max_steps, calib_seconds = 0, 0.0
    if args.resume:
        trainer = resumed(args.run_dir, args.time_budget)
    else:
        if args.time_budget > 0:
            budget_steps, calib_seconds = step_budget(ds, args, device, planned)
            if budget_steps < planned:
                max_steps = budget_steps
            total = args.total_budget or args.time_budget
            print(f"time budget {total:.0f} s -> {budget_steps} steps (planned {planned}; timed in {calib_seconds:.1f} s)", flush=True)
        seed_all(args.seed)  # the weights (the trainer seeds data order and noise itself)
        model = build_model(ds, args, device)
        config = train_config(args, max_steps)
        if args.total_budget:  # this call stops at its own budget, a checkpoint written; --resume goes on
            config = config.replace(max_seconds=args.time_budget)
        trainer = Trainer(model, ds, config, run_dir=args.run_dir)
    t_call = time.perf_counter()
    result = trainer.fit()
    call_seconds = time.perf_counter() - t_call
    ds, cfg = trainer.dataset, trainer.config  # a resumed run's own data and settings
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    train_seconds = result.seconds
    print(
        f"trained {result.steps} steps ({result.epochs} epochs) in {train_seconds:.1f} s, "
        f"{result.steps * cfg.batch_size / max(train_seconds, 1e-9):,.0f} images/s; last: "
        + ", ".join(f"{k} {v:.3f}" for k, v in result.last.items()),
        flush=True,
    )

    # -- evaluate: ELBO and the k-sample IWAE bound on the test images ------------------
    # Full fp32 matmuls for the estimate (no TF32), so the figure does not depend on the GPU's math mode.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    k = trainer.eval_model.config.iwae_k  # the run's own (a resumed call's --k is not applied)
    eval_batch = args.eval_batch or max(1, 500_000 // k)
    t0 = time.perf_counter()
    figures = evaluate(trainer.eval_model, ds, ["elbo", "nll"], split="test", batch_size=eval_batch, limit=args.limit_test, seed=args.seed)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    eval_seconds = time.perf_counter() - t0
    print(f"evaluated {figures['n']} test images with k={k} in {eval_seconds:.1f} s", flush=True)

    record: dict[str, Any] = {
        "benchmark": "vae_mnist_nll",
        "protocol": f"IWAE paper (Burda et al. 2016) Table 1: {trainer.data_config.binarization} binarization, test NLL by importance sampling",
        "binarization": trainer.data_config.binarization,
        "model_settings": trainer.eval_model.config.to_dict(),
        "label": args.label or describe(trainer.eval_model),
        "paper_nll": args.paper,
        "nll": figures["nll"],
        "nll_sem": figures["nll_sem"],
        "nll_bpd": figures["nll_bpd"],
        "nll_note": figures["nll_note"],
        "neg_elbo": -figures["elbo"],
        "elbo_sem": figures["elbo_sem"],
        "test_images": figures["n"],
        "k": k,
        "train_images": len(ds.train),
        "steps": result.steps,
        "max_steps": cfg.max_steps,  # the schedule's length (0: the epochs'): steps == max_steps when it has run to its end
        "epochs_completed": result.epochs,
        "train_seconds": round(train_seconds, 2),
        "this_call_seconds": round(call_seconds, 2),
        "resumed": args.resume,
        "calibration_seconds": round(calib_seconds, 2),
        "eval_seconds": round(eval_seconds, 2),
        "eval_batch": eval_batch,
        "architecture": {k: list(v) if isinstance(v, tuple) else v for k, v in ARCHITECTURE.items()},
        # The flags, with the run's own batch, schedule and lr (a resumed call's flags may differ).
        "settings": {**{k: v for k, v in vars(args).items() if k not in ("out",)},
                     "batch_size": cfg.batch_size, "schedule": cfg.schedule, "lr": trainer.eval_model.config.lr},
        "hardware": hardware(device),
        "torch": torch.__version__,
        "deepgen": deepgen.__version__,
        "python": platform.python_version(),
        "date": datetime.date.today().isoformat(),
        "command": command,
    }
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2, allow_nan=True) + "\n")
        print(f"wrote {out}", flush=True)

    print(f"\ntest NLL {record['nll']:.2f} +- {record['nll_sem']:.2f} nats (paper {args.paper}); -ELBO {record['neg_elbo']:.2f}\n")
    print(markdown_row(record))
    return record


def describe(model: deepgen.GenerativeModel) -> str:
    """The model column of a row, from the trained model's settings (not from the flags, so
    a two-layer or mixture-head run is not labelled as the paper's one-layer VAE)."""
    c = model.config
    widths = f"conv {'-'.join(map(str, c.channels))}" if c.network == "conv" else "-".join(map(str, c.hidden))
    layers = f"{widths} {c.activation}, {c.latent_dim} latent"
    if c.stochastic_layers == 2:
        layers += f", then {'-'.join(map(str, c.hidden2))}, {c.latent_dim2} latent"
    likelihood = default_head_name(model.spec) if c.likelihood == "auto" else c.likelihood
    head = likelihood + (f" K={c.components}" if likelihood.startswith("mixture-") else "")
    k = c.train_k or (50 if c.objective == "iwae" else 1)
    objective = "ELBO" if c.objective == "elbo" else f"IWAE k={k}" + (", DReG" if c.estimator == "dreg" else "")
    extras = [f"IAF posterior ({c.iaf_steps} steps)"] if c.posterior == "iaf" else []
    extras += [f"KL warm-up {c.kl_warmup} steps"] if c.kl_warmup else []
    return f"VAE, {c.stochastic_layers} stochastic layer{'s' if c.stochastic_layers > 1 else ''} ({layers}), {head}, {objective}" + "".join(f", {e}" for e in extras)


def markdown_row(r: dict[str, Any]) -> str:
    """A header and one row for benchmarks/RESULTS.md."""
    partial = r["test_images"] < 10000 or r["k"] != 5000
    setting = (
        f"{r['binarization']} binarization; {r['epochs_completed']} epoch(s) / {r['steps']} steps, batch {r['settings']['batch_size']}, "
        f"Adam lr {r['settings']['lr']:g} {r['settings']['schedule']}; NLL k={r['k']} on {r['test_images']:,} test images"
        + (" (NOT the paper's protocol: smoke settings)" if partial else "")
    )
    sem = r["nll_sem"] if math.isfinite(r["nll_sem"]) else float("nan")
    header = "| model | test NLL (nats) | paper | -ELBO | setting | train time | hardware | command |\n| --- | --- | --- | --- | --- | --- | --- | --- |"
    row = (
        f"| {r['label']} | {r['nll']:.2f} ± {sem:.2f} | {r['paper_nll']} | "
        f"{r['neg_elbo']:.2f} | {setting} | {r['train_seconds']:.0f} s (+{r['eval_seconds']:.0f} s eval) | "
        f"{r['hardware']}, torch {r['torch']} | `{r['command']}` |"
    )
    return header + "\n" + row


if __name__ == "__main__":
    main()

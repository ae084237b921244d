"""Exact test NLL of an autoregressive model or a flow on MNIST (nats, bits/dim), beside the published rows.

Trains ``--model`` with the project's trainer, then reports
``deepgen.metrics.evaluate(model, ds, "nll")`` on the test images: the exact -log p(x)
averaged over the test set, in nats and bits/dim.

* The autoregressive models (made, pixelcnn, transformer) on ``mnist-binarized`` (dynamic
  binarization by default, as pytorch-generative's table; ``--binarization static`` for
  the papers' fixed binarization; every test image binarized once, from the evaluation's
  seed).
* The flows (realnvp, glow, maf, nsf) on 8-bit ``mnist`` (the default ``--dataset`` for a
  flow): uniformly dequantized, the logit transform's and the dequantization's
  log-determinants counted, so bits/dim follow ../shared/BENCHMARKS.md's convention
  (-log2 p of the discrete image over 784, from a density on [0, 256)^784; the test
  figure is the dequantized estimate, one noise draw per image from the evaluation's seed).

Model selection never looks at the test set: the last ``--validation`` training images are
held out (the data setting ``validation``), the trainer's ``val_loss`` is computed on them
at each epoch's end, and the weights of the best epoch are the ones tested. Without
``--epochs`` a 20 s throw-away probe measures steps/s and the cosine schedule is sized to
end inside ``--total-budget`` seconds of training (default: ``--time-budget``).

A run longer than one device call: ``--run-dir DIR`` writes the run there (a checkpoint at
each epoch's end, the best one kept); ``--resume`` continues it for another
``--time-budget`` seconds on the same schedule, and every call evaluates the best
checkpoint so far.

Published (../shared/BENCHMARKS.md): pytorch-generative (dynamic) MADE 84.87, PixelCNN 81.45,
ImageGPT 79.17; the PixelCNN paper (static) 81.30; MADE paper (static) 88.04, 32-mask
ensemble 86.64. Flows, MNIST test bits/dim: RealNVP 1.06, Glow 1.05, MAF 1.89, FFJORD 0.99.

The JSON row carries the validation curve (``val_curve``: [epoch, val_loss] per epoch, from
the run folder's metrics.jsonl when there is one).

    python benchmarks/ar_mnist_nll.py --model made --settings "hidden=(8000,)" --train bf16=true cuda_graph=true \\
        schedule=cosine --time-budget 170 --data-dir .data --device cuda --out $OUT/made.json

CPU smoke test (tests/test_benchmark_scripts.py): ``--tiny`` with tiny budgets.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time

import torch
from timing import BestWeights, resumed, timed_continuation

import deepgen
from deepgen.bench import hardware
from deepgen.config import parse_assignments
from deepgen.data import DataConfig, iterate
from deepgen.data.dataset import Dataset
from deepgen.metrics import evaluate
from deepgen.models.base import Completion
from deepgen.training import TrainConfig, Trainer, resolve_device, seed_all
from deepgen.training import checkpoint as ckpt
from deepgen.training.logging import read_metrics
from deepgen.viz import save_image_grid

PUBLISHED = {
    "made": "pytorch-generative 84.87 (dynamic); Germain et al. 88.04 / 86.64 with 32 masks (static)",
    "pixelcnn": "pytorch-generative 81.45 (dynamic); van den Oord et al. 81.30 (static)",
    "transformer": "pytorch-generative ImageGPT 79.17 (dynamic)",
    "realnvp": "Dinh et al. 2017 via Papamakarios et al. 2017: 1.06 bits/dim (8-bit MNIST)",
    "glow": "Kingma & Dhariwal 2018: 1.05 bits/dim (8-bit MNIST)",
    "maf": "Papamakarios et al. 2017: 1.89 bits/dim (8-bit MNIST)",
    "nsf": "FFJORD (Grathwohl et al. 2019) 0.99 bits/dim is the mark to beat (8-bit MNIST)",
}
AUTOREGRESSIVE = ("made", "pixelcnn", "transformer")
TINY = {
    "made": {"hidden": (16,)}, "pixelcnn": {"channels": 8, "layers": 2, "out_hidden": 8}, "transformer": {"layers": 1, "heads": 2, "width": 16},
    "realnvp": {"scales": 2, "couplings": 1, "channels": 8}, "glow": {"levels": 2, "steps": 1, "channels": 8},
    "maf": {"layers": 1, "hidden": (16,)}, "nsf": {"layers": 1, "hidden": (16,)},
}


def build(args, ds: Dataset):
    seed_all(args.seed)
    model = deepgen.create_model(args.model, ds, **(TINY[args.model] if args.tiny else {}))
    if args.settings:
        model = deepgen.create_model(args.model, ds, model.config.with_overrides(parse_assignments(args.settings)))
    return model


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(PUBLISHED), default="made")
    p.add_argument("--settings", nargs="*", default=[], help="model settings key=value")
    p.add_argument("--train", nargs="*", default=[], help="trainer settings key=value (bf16, cuda_graph, schedule...)")
    p.add_argument("--time-budget", type=float, default=400.0, help="training seconds in this call (a hard stop)")
    p.add_argument("--total-budget", type=float, default=0.0, help="training seconds the schedule is sized for, over all calls (0 = --time-budget)")
    p.add_argument("--epochs", type=int, default=0, help="epochs of the lr schedule; 0 = as many as the probe says fit the total budget")
    p.add_argument("--probe-seconds", type=float, default=20.0, help="--epochs 0: seconds of a throw-away run that measures steps/s")
    p.add_argument("--validation", type=int, default=10000, help="last N training images held out for model selection (0 = none: final weights)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--dataset", choices=["mnist-binarized", "mnist"], default=None,
                   help="default: mnist-binarized for the autoregressive models, mnist (8-bit) for the flows")
    p.add_argument("--binarization", choices=["dynamic", "static"], default="dynamic")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit-test", type=int, default=0, help="first N test images (0 = all 10,000)")
    p.add_argument("--max-train", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="a tiny network (CPU smoke test)")
    p.add_argument("--run-dir", default=None, help="write the run here (checkpoints, the best kept), so that --resume can continue it")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir for another --time-budget seconds")
    p.add_argument("--samples", default=None, help="write a grid of 64 samples and 8 lower-half completions (PNG) here")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.resume and not args.run_dir:
        p.error("--resume continues the run in --run-dir: give --run-dir")
    args.dataset = args.dataset or ("mnist-binarized" if args.model in AUTOREGRESSIVE else "mnist")
    return args


WARMUP = 20


def _probe(args, ds: Dataset, base: TrainConfig) -> dict:
    """Steps/s of the training configuration ``base`` after :data:`WARMUP` steps, over
    ``--probe-seconds`` (epoch-end validations included), and the warm-up's seconds."""
    trainer = Trainer(build(args, ds), ds, base.replace(max_steps=WARMUP, max_seconds=0.0), run_dir=None)
    t0 = time.perf_counter()
    trainer.fit()
    warm = time.perf_counter() - t0
    steps, seconds = timed_continuation(trainer, base.replace(max_steps=0), args.probe_seconds)
    return {"warmup_steps": WARMUP, "warmup_seconds": round(warm, 1), "steps": steps, "seconds": round(seconds, 1),
            "steps_per_s": round(steps / max(seconds, 1e-9), 1)}


def fresh_trainer(args, device: torch.device) -> tuple[Trainer, dict | None, BestWeights | None]:
    binary = {"binarization": args.binarization} if args.dataset == "mnist-binarized" else {}
    data = DataConfig(name=args.dataset, data_dir=args.data_dir, max_train=args.max_train, validation=args.validation, **binary)
    ds = deepgen.load_dataset(data)
    base = TrainConfig(
        epochs=10**6, batch_size=args.batch_size, seed=args.seed, device=str(device), max_seconds=args.time_budget,
        progress=False, tensorboard=False, log_every=200, val_limit=args.validation,
    ).with_overrides(parse_assignments(args.train))
    if args.run_dir and args.validation:
        base = base.replace(keep_best="val_loss", keep_checkpoints=1)
    steps_per_epoch = max(1, len(ds.train) // base.batch_size)
    probe, epochs = None, args.epochs
    if not epochs:
        # The schedule must end inside the budget: a throw-away copy takes WARMUP steps
        # (compilation, graph capture, autotuning), then trains for the probe's seconds;
        # steps/s after the warm-up sizes the schedule for the budget less the warm-up.
        try:
            probe = _probe(args, ds, base)
        except Exception as e:  # a fast path that fails here is reported, not fatal: the run goes on without it
            if not (base.cuda_graph or base.compile):
                raise
            print(f"probe failed with cuda_graph/compile ({type(e).__name__}: {e}); training without them", flush=True)
            base = base.replace(cuda_graph=False, compile=False)
            probe = _probe(args, ds, base)
        total = args.total_budget or args.time_budget
        epochs = max(1, int(0.97 * max(total - probe["warmup_seconds"], 1.0) * probe["steps_per_s"] / steps_per_epoch))
    keeper = BestWeights() if args.validation and not args.run_dir else None
    trainer = Trainer(build(args, ds), ds, base.replace(epochs=epochs), run_dir=args.run_dir, data_config=data, callbacks=[keeper] if keeper else [])
    return trainer, probe, keeper


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    device = resolve_device(args.device)
    if args.resume:
        trainer, probe, keeper = resumed(args.run_dir, args.time_budget), None, None
    else:
        trainer, probe, keeper = fresh_trainer(args, device)
    cfg = trainer.config
    t0 = time.perf_counter()
    result = trainer.fit()
    call_s = time.perf_counter() - t0
    model = trainer.eval_model  # the EMA copy when training keeps one (ema=...)
    best_val, best_epoch = None, None
    if keeper is not None and keeper.state is not None:
        model.load_state_dict(keeper.state)
        best_val, best_epoch = keeper.best, keeper.epoch
    elif args.run_dir and cfg.keep_best:
        best = ckpt.find_checkpoint(args.run_dir, "best")
        ckpt.load_weights(model, best, ckpt.EMA_WEIGHTS if trainer.ema is not None and best.has(ckpt.EMA_WEIGHTS) else ckpt.WEIGHTS)
        best_val = (best.figure or {}).get("value")
        best_epoch = None if best.step is None else best.step // max(1, trainer.loader.steps_per_epoch)  # checkpoints at epoch ends
    curve = keeper.curve if keeper is not None else val_curve(args.run_dir)
    full = deepgen.load_dataset(trainer.data_config.replace(validation=0, max_train=0))
    t1 = time.perf_counter()
    r = evaluate(model, full, ["nll"], batch_size=500, limit=args.limit_test, seed=args.seed, device=device)
    row = {
        "model": trainer.model_name, "settings": model.config.to_dict(), "train": cfg.to_dict(), "dataset": trainer.data_config.name,
        "binarization": trainer.data_config.binarization if trainer.data_config.name == "mnist-binarized" else None,
        "nll": r["nll"], "nll_sem": r["nll_sem"], "nll_bpd": r["nll_bpd"], "test_images": r["n"], "note": r["nll_note"],
        "validation_images": trainer.data_config.validation, "best_val_nll": best_val, "best_epoch": best_epoch,
        "steps": result.steps, "epochs": result.epochs, "schedule_epochs": cfg.epochs, "probe": probe, "resumed": args.resume,
        "train_seconds": round(result.seconds, 1), "this_call_seconds": round(call_s, 1), "eval_seconds": round(time.perf_counter() - t1, 1),
        "parameters": sum(q.numel() for q in model.parameters()), "published": PUBLISHED[trainer.model_name],
        "hardware": hardware(device), "torch": torch.__version__, "command": "python " + shlex.join(sys.argv), "val_curve": curve,
    }
    print(json.dumps(row, indent=2), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(row, f, indent=2)
    if args.samples:
        write_samples(model, full, args.samples, device, args.seed)
    return 0


def val_curve(run_dir: str | None) -> list[list[float | None]]:
    """[epoch, training loss, val_loss] at every epoch-end validation in the run folder's
    metrics.jsonl (the training loss: the mean since the previous log point)."""
    if not run_dir:
        return []
    return [[r["epoch"], r.get("loss"), r["val_loss"]] for r in read_metrics(run_dir) if "val_loss" in r]


@torch.no_grad()
def write_samples(model, ds: Dataset, path: str, device: torch.device, seed: int) -> None:
    """64 samples; for a model that completes images, then 8 test images and their upper
    halves completed, side by side."""
    model.eval()
    gen = torch.Generator(device).manual_seed(seed)
    samples = model.sample(64, generator=gen).float().cpu()
    if not isinstance(model, Completion):
        save_image_grid(samples, path, nrow=8)
        return
    x = next(iterate(ds, "test", 8, device, gen, limit=8)).x
    known = torch.zeros_like(x, dtype=torch.bool)
    known[..., : x.shape[-2] // 2, :] = True
    done = model.complete(x, known, generator=gen).float().cpu()
    save_image_grid(torch.cat([samples, x.float().cpu(), done]), path, nrow=8)


if __name__ == "__main__":
    raise SystemExit(main())

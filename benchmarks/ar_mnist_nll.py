"""Exact test NLL of an autoregressive model on binarized MNIST (nats), beside the published rows.

Trains ``--model`` (made, pixelcnn, transformer) on ``mnist-binarized`` (dynamic
binarization by default, as pytorch-generative's table; ``--binarization static`` for the
papers' fixed binarization) for a wall-clock budget with the project's trainer, then
reports ``deepgen.metrics.evaluate(model, ds, "nll")`` on the test images: the exact
-log p(x) averaged over the test set (every image binarized once, from the evaluation's
seed), in nats and bits/dim.

Published (../shared/BENCHMARKS.md): pytorch-generative (dynamic) MADE 84.87, PixelCNN 81.45,
ImageGPT 79.17; the PixelCNN paper (static) 81.30; MADE paper (static) 88.04, 32-mask
ensemble 86.64.

    python benchmarks/ar_mnist_nll.py --model made --settings hidden=(2000,2000) --train cuda_graph=true \\
        --time-budget 400 --data-dir .data --device cuda --out $OUT/made.json

CPU smoke test (tests/test_benchmark_scripts.py): ``--time-budget 2 --limit-test 50 --max-train 500 --tiny``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time

import torch

import deepgen
from deepgen.bench import hardware
from deepgen.config import parse_assignments
from deepgen.metrics import evaluate
from deepgen.training import TrainConfig, Trainer, resolve_device, seed_all

PUBLISHED = {
    "made": "pytorch-generative 84.87 (dynamic); Germain et al. 88.04 / 86.64 with 32 masks (static)",
    "pixelcnn": "pytorch-generative 81.45 (dynamic); van den Oord et al. 81.30 (static)",
    "transformer": "pytorch-generative ImageGPT 79.17 (dynamic)",
}
TINY = {"made": {"hidden": (16,)}, "pixelcnn": {"channels": 8, "layers": 2, "out_hidden": 8}, "transformer": {"layers": 1, "heads": 2, "width": 16}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(PUBLISHED), default="made")
    p.add_argument("--settings", nargs="*", default=[], help="model settings key=value")
    p.add_argument("--train", nargs="*", default=[], help="trainer settings key=value (bf16, cuda_graph, lr schedule...)")
    p.add_argument("--time-budget", type=float, default=400.0, help="training seconds")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--binarization", choices=["dynamic", "static"], default="dynamic")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit-test", type=int, default=0, help="first N test images (0 = all 10,000)")
    p.add_argument("--max-train", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="a tiny network (CPU smoke test)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    ds = deepgen.load_dataset("mnist-binarized", data_dir=args.data_dir, binarization=args.binarization, max_train=args.max_train)
    seed_all(args.seed)
    settings = {**(TINY[args.model] if args.tiny else {})}
    model = deepgen.create_model(args.model, ds, **settings)
    if args.settings:
        model = deepgen.create_model(args.model, ds, model.config.with_overrides(parse_assignments(args.settings)))
    cfg = TrainConfig(
        epochs=10**6, batch_size=args.batch_size, seed=args.seed, device=str(device), max_seconds=args.time_budget,
        progress=False, tensorboard=False, log_every=200,
    ).with_overrides(parse_assignments(args.train))
    t0 = time.perf_counter()
    result = Trainer(model, ds, cfg, run_dir=None).fit()
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    r = evaluate(model, ds, ["nll"], batch_size=500, limit=args.limit_test, seed=args.seed, device=device)
    row = {
        "model": args.model, "settings": model.config.to_dict(), "train": cfg.to_dict(), "binarization": args.binarization,
        "nll": r["nll"], "nll_sem": r["nll_sem"], "nll_bpd": r["nll_bpd"], "test_images": r["n"], "note": r["nll_note"],
        "steps": result.steps, "epochs": result.epochs, "train_seconds": round(train_s, 1), "eval_seconds": round(time.perf_counter() - t1, 1),
        "parameters": sum(q.numel() for q in model.parameters()), "published": PUBLISHED[args.model],
        "hardware": hardware(device), "torch": torch.__version__, "command": "python " + shlex.join(sys.argv),
    }
    print(json.dumps(row, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(row, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

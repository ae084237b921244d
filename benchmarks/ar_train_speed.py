"""Training throughput of the autoregressive models: deepgen's trainer against a plain PyTorch loop, same network.

For each model at its binarized-MNIST benchmark size (``ar_mnist_nll.py``'s settings:
MADE with one hidden layer of 8,000; the Gated PixelCNN with 10 layers of 128 channels;
the Transformer on the 784 pixel tokens, 8 layers of width 256), samples/s of:

* ``plain``: the plainest PyTorch loop over the same module's loss: data resident on the
  GPU, a random permutation sliced per batch, dynamic binarization, fused Adam(W) with the
  model's own settings, fp32, no logging (what a user writes by hand);
* ``deepgen_eager``: the full trainer, fp32 (its overhead against ``plain``);
* ``deepgen_fast``: the trainer's fast path, ``bf16=true cuda_graph=true``;
* with ``--compile``, ``deepgen_compile``: ``bf16=true compile=true`` (fused elementwise
  kernels instead of captured launches).

Every figure is ``--steps`` timed steps after ``--warmup`` untimed ones (capture, cuDNN
autotuning), the device synchronised around the clock.

    python benchmarks/ar_train_speed.py --data-dir .data --device cuda --out $OUT/ar_speed.json

CPU smoke test (tests/test_benchmark_scripts.py): ``--tiny --device cpu``.
"""

from __future__ import annotations

import argparse
import json

import torch
from timing import ResidentBatches, time_steps, trainer_rate, write_record

import deepgen
from deepgen.bench import hardware
from deepgen.data.dataset import Batch
from deepgen.training import resolve_device, seed_all

SIZES = {
    "made": ({"hidden": (8000,)}, 256),
    "pixelcnn": ({"channels": 128, "layers": 10}, 256),
    "transformer": ({"layers": 8, "width": 256, "heads": 8, "dropout": 0.1}, 128),
}
TINY = {
    "made": ({"hidden": (16,)}, 8),
    "pixelcnn": ({"channels": 8, "layers": 2, "out_hidden": 8}, 8),
    "transformer": ({"layers": 1, "heads": 2, "width": 16}, 8),
}


def time_plain(model: deepgen.GenerativeModel, x_u8: torch.Tensor, batch: int, steps: int, warmup: int, device: torch.device) -> float:
    """samples/s of a hand-written loop over ``model.loss`` (fp32, eager, fused Adam(W))."""
    phase = model.phases()[0]
    spec = phase.optimizer
    cls = torch.optim.AdamW if spec.name == "adamw" else torch.optim.Adam
    groups = [{"params": g.params, "weight_decay": spec.weight_decay if g.weight_decay is None else g.weight_decay} for g in phase.groups]
    opt = cls(groups, lr=spec.lr, betas=tuple(spec.betas), eps=spec.eps, fused=device.type == "cuda")
    batches = ResidentBatches(len(x_u8), batch, device)

    def step() -> None:
        x = torch.bernoulli(x_u8[batches.next()].float() / 255)
        loss = model.loss(Batch(x, None)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    return steps * batch / time_steps(step, warmup, steps, device)


def _model(name: str, ds: deepgen.Dataset, settings: dict, device: torch.device) -> deepgen.GenerativeModel:
    seed_all(0)
    return deepgen.create_model(name, ds, **settings).to(device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--models", default="made,pixelcnn,transformer")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--compile", action="store_true", help="also time bf16=true compile=true")
    p.add_argument("--tiny", action="store_true", help="tiny networks and batches (CPU smoke test)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    ds = deepgen.load_dataset("mnist-binarized", data_dir=args.data_dir, max_train=512 if args.tiny else 0)
    x_u8 = ds.train.x.to(device)
    sizes = TINY if args.tiny else SIZES
    fast = device.type == "cuda"
    rows = []
    for name in args.models.split(","):
        settings, batch = sizes[name]
        row = {"model": name, "settings": settings, "batch": batch}
        row["plain"] = time_plain(_model(name, ds, settings, device), x_u8, batch, args.steps, args.warmup, device)
        row["deepgen_eager"] = trainer_rate(_model(name, ds, settings, device), ds, batch, args.steps, args.warmup, device)
        if fast:
            row["deepgen_fast"] = trainer_rate(_model(name, ds, settings, device), ds, batch, args.steps, args.warmup, device, bf16=True, cuda_graph=True)
            if args.compile:
                row["deepgen_compile"] = trainer_rate(_model(name, ds, settings, device), ds, batch, args.steps, args.warmup, device, bf16=True, compile=True)
        row["parameters"] = sum(q.numel() for q in _model(name, ds, settings, device).parameters())
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| model | plain PyTorch, fp32 | deepgen, fp32 | deepgen, bf16 + CUDA graph | speed-up over plain |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        f = r.get("deepgen_fast")
        fast_cols = f"{f:,.0f} | {f / r['plain']:.2f}x" if f else "- | -"
        print(f"| {r['model']} | {r['plain']:,.0f} | {r['deepgen_eager']:,.0f} | {fast_cols} |")
    if args.out:
        write_record(args.out, rows, hardware(device))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

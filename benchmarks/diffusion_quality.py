"""Diffusion sample quality against steps (the DDIM paper's Table 1, in spirit), guidance curves and the bits/dim bound, on MNIST or Fashion-MNIST.

Trains ``ddpm`` (``--settings``; constant lr and the EMA, the model's defaults) for
``--time-budget`` seconds of training, or continues a run folder (``--run-dir`` with
``--resume``: another ``--time-budget`` seconds, for runs longer than one device call;
``--time-budget 0`` evaluates the saved run without training),
then, with the EMA weights:

* FID of ``--samples`` samples (10,000 by default) against the test images, with
  deepgen's own features, for every sampler configuration of ``--grid``
  (``sampler:steps:eta``; default: DDIM at 10 / 20 / 50 / 100 / 1000 steps with eta 0 and
  1, DPM-Solver++ at 10 and 20), with the sampling seconds of each and a grid of 64
  samples per configuration (``--pictures DIR``);
* ``--guidance 0,1,2,4`` (conditional models on MNIST): FID and the accuracy of deepgen's
  MNIST classifier on class-balanced samples, per guidance scale, at ``--guidance-config``;
* ``--bound-stride K``: the variational bound on the test images in bits/dim, on the
  K-strided chain (``--bound-limit`` images).

    python benchmarks/diffusion_quality.py --dataset mnist --time-budget 500 --train bf16=true cuda_graph=true \\
        --data-dir .data --device cuda --run-dir runs/ddpm-mnist --pictures $OUT --out $OUT/ddpm_mnist.json

CPU smoke test (tests/test_benchmark_scripts.py): ``--tiny`` with tiny budgets.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from timing import resumed

import deepgen
from deepgen.bench import hardware
from deepgen.config import parse_assignments
from deepgen.data import DataConfig
from deepgen.metrics import evaluate
from deepgen.metrics.modes import digit_classifier
from deepgen.training import TrainConfig, Trainer, resolve_device, seed_all
from deepgen.viz import save_image_grid

GRID = "ddim:10:0,ddim:20:0,ddim:50:0,ddim:100:0,ddim:1000:0,ddim:10:1,ddim:20:1,ddim:50:1,ddim:100:1,ddim:1000:1,dpm-solver++:10:0,dpm-solver++:20:0"
TINY = {"channels": 8, "channel_mult": (1, 2), "res_blocks": 1, "heads": 2, "timesteps": 20, "steps": 5}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=["mnist", "fashion-mnist"], default="mnist")
    p.add_argument("--settings", nargs="*", default=[], help="model settings key=value")
    p.add_argument("--train", nargs="*", default=[], help="trainer settings key=value (bf16, cuda_graph, compile, batch_size...)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--time-budget", type=float, default=500.0, help="training seconds in this call")
    p.add_argument("--run-dir", default=None)
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir for another --time-budget seconds")
    p.add_argument("--grid", default=GRID, help="sampler:steps:eta, comma-separated")
    p.add_argument("--samples", type=int, default=10_000, help="samples (and test images) per FID")
    p.add_argument("--guidance", default="", help="conditional models: guidance scales, comma-separated")
    p.add_argument("--guidance-config", default="ddim:50:0")
    p.add_argument("--bound-stride", type=int, default=0, help="> 0: the bits/dim bound on that strided chain")
    p.add_argument("--bound-limit", type=int, default=10_000)
    p.add_argument("--pictures", default=None, help="a folder for one 64-sample grid per configuration")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-train", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="a tiny network (CPU smoke test)")
    p.add_argument("--sample-batch", type=int, default=0, help="samples per sampler call for the FID (0: 2,000 on a GPU, the evaluator's 256 elsewhere)")
    p.add_argument("--fast-sampling", action=argparse.BooleanOptionalAction, default=None,
                   help="the denoiser under bf16 autocast and torch.compile while sampling for the FID and guidance rows "
                        "(default: on a GPU); the bound always runs at full precision")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.resume and not args.run_dir:
        p.error("--resume continues the run in --run-dir: give --run-dir")
    return args


def trained(args, device: torch.device) -> Trainer:
    """A trainer that has run this call's budget (a fresh run, or the resumed one)."""
    if args.resume:
        trainer = resumed(args.run_dir, args.time_budget)
    else:
        data = DataConfig(name=args.dataset, data_dir=args.data_dir, max_train=args.max_train)
        ds = deepgen.load_dataset(data)
        seed_all(args.seed)
        model = deepgen.create_model("ddpm", ds, **(TINY if args.tiny else {}))
        if args.settings:
            model = deepgen.create_model("ddpm", ds, model.config.with_overrides(parse_assignments(args.settings)))
        cfg = TrainConfig(epochs=10**6, batch_size=args.batch_size, seed=args.seed, device=str(device), max_seconds=args.time_budget,
                          progress=False, tensorboard=False, log_every=500, val_limit=0, **model.train_defaults)
        trainer = Trainer(model, ds, cfg.with_overrides(parse_assignments(args.train)), run_dir=args.run_dir, data_config=data)
    if not (args.resume and args.time_budget <= 0):  # --resume --time-budget 0: evaluate the saved run as it is
        trainer.fit()
    return trainer


def configs(grid: str, timesteps: int) -> list[dict]:
    out = []
    for item in grid.split(","):
        sampler, steps, eta = item.split(":")
        if int(steps) <= timesteps:
            out.append({"sampler": sampler, "steps": int(steps), "eta": float(eta)})
    return out


class _Bf16Denoiser(torch.nn.Module):
    """The denoiser under bf16 autocast, its output back in float32: the samplers' updates
    and the schedule's coefficients stay at full precision, the network runs in bf16."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, *args, **kwargs):
        with torch.autocast(args[0].device.type, dtype=torch.bfloat16):
            return self.net(*args, **kwargs).float()


@contextmanager
def fast_sampling(model, enabled: bool):
    """Inside: ``model.denoiser`` is the bf16, compiled one (10,000 samples in 50 DDIM steps:
    12.8 s against 33.7 s in fp32 eager on an H200, RESULTS.md); the original after."""
    if not enabled:
        yield
        return
    net = model.denoiser
    model.denoiser = torch.compile(_Bf16Denoiser(net), dynamic=False)
    try:
        yield
    finally:
        model.denoiser = net


def fid_row(model, ds, over: dict, args, device: torch.device, labels: bool = False) -> dict:
    """FID (and its sampling time) of the model under the config overrides ``over``."""
    base = model.config
    model.config = base.replace(**over)
    try:
        t0 = time.perf_counter()
        r = evaluate(model, ds, ["fid"], limit=args.samples, seed=args.seed, device=device, data_dir=args.data_dir, progress=False,
                     batch_size=args.sample_batch)
        row = {**over, "fid": r["fid"], "n": r["quality_n"], "seconds": round(time.perf_counter() - t0, 1)}
        if args.pictures:
            cond = torch.arange(64, device=device) % model.num_classes if model.num_classes and labels else None
            x = model.sample(64, generator=torch.Generator(device).manual_seed(args.seed), cond=cond)
            name = "_".join(f"{k}{v}" for k, v in over.items()).replace("+", "p")
            save_image_grid(x.float().cpu(), str(Path(args.pictures) / f"{args.dataset}_{name}.png"), nrow=8)
        return row
    finally:
        model.config = base


@torch.no_grad()
def guidance_accuracy(model, ds, scale: float, args, device: torch.device) -> float:
    """The MNIST classifier's accuracy on 1,000 class-balanced samples at guidance ``scale``."""
    classifier = digit_classifier(ds, device)
    n = 1000 if not args.tiny else 20
    labels = torch.arange(n, device=device) % model.num_classes
    base = model.config
    model.config = base.replace(guidance=scale)
    try:
        x = torch.cat([model.sample(min(500, n - i), generator=torch.Generator(device).manual_seed(i), cond=labels[i : i + 500])
                       for i in range(0, n, 500)])
    finally:
        model.config = base
    return float((classifier.logits(x.float().clamp(0, 1)).argmax(1) == labels).float().mean())


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    device = resolve_device(args.device)
    trainer = trained(args, device)
    model = trainer.eval_model
    full = deepgen.load_dataset(trainer.data_config.replace(max_train=0))
    model.eval()
    # Printed at once: a call cut off while sampling still leaves what was trained in the log.
    print(json.dumps({"trained_steps": trainer.step, "train_seconds": round(trainer.seconds, 1)}), flush=True)
    if args.pictures:
        Path(args.pictures).mkdir(parents=True, exist_ok=True)
    gpu = device.type == "cuda"
    args.sample_batch = args.sample_batch or (2000 if gpu else 256)
    fast = gpu if args.fast_sampling is None else args.fast_sampling
    rows, guided = [], []
    with fast_sampling(model, fast):
        for over in configs(args.grid, model.config.timesteps):
            rows.append(fid_row(model, full, over, args, device))
            print(json.dumps(rows[-1]), flush=True)
        for g in (float(s) for s in args.guidance.split(",") if s):
            sampler, steps, eta = args.guidance_config.split(":")
            over = {"sampler": sampler, "steps": min(int(steps), model.config.timesteps), "eta": float(eta), "guidance": g}
            row = fid_row(model, full, over, args, device, labels=True)
            if args.dataset == "mnist":
                row["classifier_accuracy"] = guidance_accuracy(model, full, g, args, device)
            guided.append(row)
            print(json.dumps(row), flush=True)
    bound = None
    if args.bound_stride:
        model.config = model.config.replace(bound_stride=args.bound_stride)
        t0 = time.perf_counter()
        r = evaluate(model, full, ["nll"], limit=args.bound_limit, seed=args.seed, device=device, progress=False)
        bound = {"stride": args.bound_stride, "nll": r["nll"], "nll_sem": r["nll_sem"], "nll_bpd": r.get("nll_bpd"),
                 "nll_bpd_sem": r["nll_sem"] / (full.spec.dim * math.log(2)), "n": r["n"], "note": r["nll_note"],
                 "seconds": round(time.perf_counter() - t0, 1)}
        print(json.dumps(bound), flush=True)
    record = {
        "dataset": args.dataset, "settings": model.config.to_dict(), "train": trainer.config.to_dict(), "steps": trainer.step,
        "train_seconds": round(trainer.seconds, 1), "parameters": sum(q.numel() for q in model.parameters()), "fid": rows,
        "guidance": guided, "bound": bound, "fast_sampling": fast, "sample_batch": args.sample_batch, "hardware": hardware(device), "torch": torch.__version__,
        "command": "python " + shlex.join(sys.argv), "resumed": args.resume,
    }
    print("\n| sampler | steps | eta | FID | sampling seconds |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['sampler']} | {r['steps']} | {r['eta']:g} | {r['fid']:.2f} | {r['seconds']} |")
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Tiny Shakespeare, character level: deepgen's Transformer against nanoGPT, same GPU, same call.

nanoGPT's own ``train.py`` with its ``shakespeare_char`` config (6 layers, 6 heads, 384
wide, dropout 0.2, block 256, batch 64, AdamW lr 1e-3 betas (0.9, 0.99), weight decay 0.1,
100 warm-up steps, cosine to 1e-4 at 5000 steps, torch.compile on) runs first as a
subprocess; its "step N: ... val loss X" lines are timed as they arrive, from the moment
the process starts (compile and its evaluations included). Then deepgen trains the same
network with the same recipe through its trainer (``deepgen.create_model("transformer",
...)``), from the moment the script starts building the run, with a callback that scores
the whole validation split (each character once, non-overlapping windows of 256) every
``--eval-every`` steps; that time is counted too.

Reported for each: validation loss (nats per character) against wall-clock seconds and
steps, the first time it is <= the target (1.47 by default), the best validation loss, and
for deepgen a sample of generated text from the best checkpoint. The nanoGPT folder must
be a prepared copy of ../shared/peers/nanogpt (its README says how: ``input.txt`` beside
``data/shakespeare_char/prepare.py``, run it once).

Example (one H200; the command recorded in RESULTS.md):

    python benchmarks/shakespeare.py --data-dir .data --device cuda --nanogpt .peers/nanogpt \\
        --settings bf16=true cuda_graph=true --out $OUT/shakespeare.json

CPU smoke test (tests/test_benchmark_scripts.py): ``--skip-nanogpt --steps 4 --tiny``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

import deepgen
from deepgen.config import parse_assignments
from deepgen.data.text import decode_text, encode_text
from deepgen.training import TrainConfig, Trainer, resolve_device

VAL_LINE = re.compile(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)")


def run_nanogpt(folder: Path, max_iters: int, extra: list[str]) -> dict:
    """nanoGPT's train.py as it ships, timed line by line; its validation curve."""
    cmd = [sys.executable, "train.py", "config/train_shakespeare_char.py", f"--max_iters={max_iters}", *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    curve, log = [], []
    assert proc.stdout is not None
    for line in proc.stdout:
        log.append(line.rstrip())
        m = VAL_LINE.search(line)
        if m:
            curve.append({"seconds": round(time.perf_counter() - t0, 2), "step": int(m.group(1)), "val": float(m.group(3)), "train": float(m.group(2))})
    rc = proc.wait()
    return {"command": " ".join(cmd), "rc": rc, "curve": curve, "log_tail": log[-15:], "seconds": round(time.perf_counter() - t0, 2)}


class Validation:
    """A trainer callback: the whole validation split's loss (nats per character) every N steps."""

    def __init__(self, every: int, t0: float, bf16: bool) -> None:
        self.every, self.t0, self.bf16 = every, t0, bf16
        self.curve: list[dict] = []
        self.best: dict[str, torch.Tensor] | None = None

    @torch.no_grad()
    def score(self, trainer: Trainer) -> float:
        model, ds = trainer.model, trainer.dataset
        was = model.training
        model.eval()
        total, count = 0.0, 0
        x_all = ds.convert(ds.test.x.to(trainer.device))
        for start in range(0, len(x_all), 128):
            x = x_all[start : start + 128]
            with torch.autocast(trainer.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                lp = model.log_prob(x)
            total += float(-lp.double().sum())
            count += x.numel()
        model.train(was)
        return total / count

    def on_step_end(self, trainer: Trainer) -> None:
        if trainer.step % self.every and not trainer.fit_ending:
            return
        val = self.score(trainer)
        row = {"seconds": round(time.perf_counter() - self.t0, 2), "step": trainer.step, "val": round(val, 4)}
        self.curve.append(row)
        print(f"deepgen step {trainer.step}: val {val:.4f} ({row['seconds']} s)", flush=True)
        if all(val <= r["val"] for r in self.curve):
            self.best = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def first_at(curve: list[dict], target: float) -> dict | None:
    return next((r for r in curve if r["val"] <= target), None)


def run_deepgen(args: argparse.Namespace, device: torch.device) -> dict:
    t0 = time.perf_counter()
    ds = deepgen.load_dataset("tinyshakespeare", data_dir=args.data_dir, block_size=args.block)
    model_cfg = {"layers": 2, "heads": 2, "width": 32} if args.tiny else {}
    deepgen.seed_all(args.seed)
    model = deepgen.create_model("transformer", ds, **model_cfg)
    settings = parse_assignments(args.settings)
    train = TrainConfig(
        epochs=10**6, max_steps=args.steps, batch_size=args.batch, seed=args.seed, device=str(device),
        schedule="cosine", warmup_steps=100 if not args.tiny else 1, progress=False, tensorboard=False, log_every=50,
    )
    if "min_lr_ratio" in TrainConfig.field_names():
        train = train.replace(min_lr_ratio=0.1)  # nanoGPT's min_lr = lr / 10
    train = train.with_overrides(settings)
    val = Validation(args.eval_every, t0, train.bf16)
    trainer = Trainer(model, ds, train, run_dir=None, callbacks=[val])
    trainer.fit()
    if val.best is not None:
        model.load_state_dict(val.best)
    model.eval()
    vocab = ds.meta["vocab"]
    prompt = encode_text("ROMEO:", vocab)[None].to(device)
    text = decode_text(model.generate_ids(prompt, args.sample_chars, generator=torch.Generator(device).manual_seed(0))[0], vocab)
    params = sum(p.numel() for p in model.parameters())
    return {"curve": val.curve, "seconds": round(time.perf_counter() - t0, 2), "settings": train.to_dict(), "parameters": params, "sample": text}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--nanogpt", default=None, help="a prepared copy of shared/peers/nanogpt")
    p.add_argument("--skip-nanogpt", action="store_true")
    p.add_argument("--nanogpt-args", nargs="*", default=[], help="extra --key=value arguments for nanoGPT's train.py")
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--nanogpt-steps", type=int, default=2500, help="nanoGPT's max_iters (its schedule still decays over 5000)")
    p.add_argument("--eval-every", type=int, default=125)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--block", type=int, default=256)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--target", type=float, default=1.47)
    p.add_argument("--sample-chars", type=int, default=500)
    p.add_argument("--settings", nargs="*", default=[], help="deepgen trainer settings, e.g. bf16=true cuda_graph=true")
    p.add_argument("--tiny", action="store_true", help="a 2-layer model (CPU smoke test)")
    p.add_argument("--out", default="shakespeare.json")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    record: dict = {"target": args.target, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__}
    if not args.skip_nanogpt:
        if not args.nanogpt:
            p.error("--nanogpt DIR is needed (or --skip-nanogpt)")
        record["nanogpt"] = run_nanogpt(Path(args.nanogpt), args.nanogpt_steps, args.nanogpt_args)
    record["deepgen"] = run_deepgen(args, device)
    for name in ("nanogpt", "deepgen"):
        if name in record:
            curve = record[name]["curve"]
            record[name]["first_at_target"] = first_at(curve, args.target)
            record[name]["best"] = min(curve, key=lambda r: r["val"]) if curve else None
    record["command"] = "python benchmarks/shakespeare.py " + " ".join(argv if argv is not None else sys.argv[1:])
    Path(args.out).write_text(json.dumps(record, indent=2))
    for name in ("nanogpt", "deepgen"):
        if name in record:
            r = record[name]
            print(f"{name}: first <= {args.target} at {r['first_at_target']}; best {r['best']}")
    return 0 if all(math.isfinite(r["val"]) for r in record["deepgen"]["curve"]) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())

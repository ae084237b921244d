"""Data-parallel scaling of ``torchrun --nproc_per_node=N -m deepgen train`` on 1, 2, 4 and 8 GPUs of one host (issue 17).

For each ``--models`` entry and each process count N of ``--ranks`` (those above the
GPUs present are skipped), the CLI trains for ``--steps`` optimizer steps under torchrun
(DDP, data resident per rank, rank 0 writing) and the throughput is the median of the
trainer's own ``samples_per_s`` log points (training examples drawn by all ranks per
second of host time) after the first ``--skip`` of them (warm-up: CUDA context, cuDNN
autotuning, graph capture). Scaling efficiency = samples/s at N / (N x samples/s at 1).

* ``--batch fixed``: the per-GPU batch is fixed (the global batch grows with N; issue 17's
  target: DDPM >= 1.8x on 2, >= 3.5x on 4, >= 7x on 8);
* ``--batch global``: the global batch is fixed at the largest N's (each rank's share
  shrinks with N).

``--variants`` are trainer settings measured one at a time (comma-separated names):
``flat`` (one all-reduce after backward, the default), ``overlap`` (``ddp_overlap=true``:
buckets all-reduced while backward runs), ``overlap-bf16`` (and bfloat16 on the wire),
``graph`` (``cuda_graph=true``: the whole step, all-reduce included, captured).

Models at the sizes of their issues: ``ddpm`` (the diffusion issue's U-Net, 64 channels,
(1, 2, 2), attention at 16x16, on MNIST, 128 a GPU), ``dcgan`` (MNIST, 64 a GPU), ``vae``
(the IWAE paper's MLP on binarized MNIST, 1000 a GPU).

    python benchmarks/ddp_scaling.py --data-dir .data --ranks 1,2,4,8 --out $OUT/ddp.json

CPU smoke test (tests/test_benchmark_scripts.py): ``--tiny`` (two CPU processes over gloo).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from timing import write_record

SRC = Path(__file__).resolve().parents[1] / "src"

# name -> (CLI arguments after "train", per-GPU batch)
MODELS = {
    "ddpm": (["ddpm", "--data", "mnist", "--set", "channels=64", "--set", "channel_mult=1,2,2", "--set", "res_blocks=2", "--set", "attention=1",
              "--set", "heads=4"], 128),
    "dcgan": (["dcgan", "--data", "mnist"], 64),
    "vae": (["vae", "--data", "mnist-binarized", "--set", "hidden=200,200", "--set", "latent_dim=50", "--set", "activation=tanh"], 1000),
}
TINY = {"vae": (["vae", "--data", "digits", "--set", "hidden=16", "--set", "latent_dim=2"], 16)}
VARIANTS = {
    "flat": [],
    "overlap": ["ddp_overlap=true"],
    "overlap-bf16": ["ddp_overlap=true", "ddp_grad_dtype=bfloat16"],
    "graph": ["cuda_graph=true"],
}


def throughput(run: Path, skip: int) -> float:
    """The median ``samples_per_s`` of a run's log points after the first ``skip``."""
    rates = [r["samples_per_s"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "samples_per_s" in r]
    kept = rates[skip:] or rates
    if not kept:
        raise RuntimeError(f"{run}: no samples_per_s in metrics.jsonl")
    return float(statistics.median(kept))


def train(args: argparse.Namespace, cli: list[str], ranks: int, batch: int, settings: list[str], run: Path) -> float:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if args.device == "cpu":
        env["OMP_NUM_THREADS"] = "1"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"] if ranks > 1 else [sys.executable]
    sets = [f"max_steps={args.steps}", f"log_every={args.log_every}", "progress=false", "tensorboard=false", "val_limit=0", *settings]
    cmd = [*launcher, "-m", "deepgen", "train", *cli, "--batch-size", str(batch), "--epochs", "100000", "--device", args.device,
           *(["--data-dir", args.data_dir] if args.data_dir else []), *[a for s in sets for a in ("--set", s)], "--out", str(run)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return throughput(run, args.skip)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="ddpm,dcgan,vae")
    p.add_argument("--ranks", default="1,2,4,8")
    p.add_argument("--batch", choices=("fixed", "global"), default="fixed", help="fixed: the per-GPU batch; global: the global batch")
    p.add_argument("--variants", default="flat,overlap,overlap-bf16")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--skip", type=int, default=2, help="log points dropped as warm-up")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="two CPU processes over gloo, a tiny VAE on digits")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    models = TINY if args.tiny else MODELS
    if args.tiny:
        args.device, args.steps, args.log_every, args.skip, args.ranks, args.models = "cpu", 20, 5, 1, "1,2", "vae"
    available = torch.cuda.device_count() if args.device == "cuda" else 64
    counts = [n for n in map(int, args.ranks.split(",")) if n <= available]
    skipped = [n for n in map(int, args.ranks.split(",")) if n > available]
    if skipped:
        print(f"skipped {skipped}: {available} GPU(s) here", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            cli, per_gpu = models[name]
            for variant in args.variants.split(","):
                base = None
                for n in counts:
                    batch = per_gpu * n if args.batch == "fixed" else per_gpu * max(counts)
                    t0 = time.perf_counter()
                    try:
                        rate = train(args, cli, n, batch, VARIANTS[variant], Path(tmp) / f"{name}-{variant}-{n}")
                    except (RuntimeError, subprocess.TimeoutExpired) as e:
                        rows.append({"model": name, "variant": variant, "ranks": n, "batch": batch, "error": str(e)[-800:]})
                        print(json.dumps(rows[-1]), flush=True)
                        continue
                    base = rate if n == 1 else base
                    speedup = rate / base if base else None
                    rows.append({"model": name, "variant": variant, "ranks": n, "batch": batch, "samples_per_s": round(rate, 1),
                                 "speedup": round(speedup, 3) if speedup else None,
                                 "efficiency": round(speedup / n, 3) if speedup else None, "wall_s": round(time.perf_counter() - t0, 1)})
                    print(json.dumps(rows[-1]), flush=True)
    print("\n| model | variant | GPUs | global batch | samples/s | speedup over 1 | efficiency |\n| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['variant']} | {r['ranks']} | {r['batch']} | failed | - | - |")
        else:
            s = f"{r['speedup']:.2f}x" if r["speedup"] else "-"
            e = f"{100 * r['efficiency']:.0f}%" if r["efficiency"] else "-"
            print(f"| {r['model']} | {r['variant']} | {r['ranks']} | {r['batch']} | {r['samples_per_s']:,.0f} | {s} | {e} |")
    if args.out:
        hardware = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}" if args.device == "cuda" and torch.cuda.is_available() else "CPU"
        write_record(args.out, rows, hardware, batch_mode=args.batch, steps=args.steps)
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())

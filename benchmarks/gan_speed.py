"""GAN training speed: deepgen's trainer eager against the same trainer with ``cuda_graph=true``.

GAN steps are launch-bound on a GPU: many small kernels per phase (WGAN-GP's five critic
steps with a double backward each: about 1,600 launches per generator step), so the
host's launch time, not the GPU, sets the pace. ``TrainConfig.cuda_graph`` captures each
phase's step once and replays it with one launch. The cases are the configurations of
the mode-collapse and WGAN-GP runs in benchmarks/RESULTS.md:

* ``gan-grid25``: ``gan`` with its default nets (32-d noise, 128-128 MLPs) + pack=4 +
  minibatch std on grid25, 512 examples per step (128 packed D inputs);
* ``dcgan-stacked``: ``dcgan`` on stacked MNIST, batch 64 (needs mnist/ in --data-dir);
* ``wgan-gp-mnist``: ``wgan-gp`` with conv nets (noise 100, width 64) on MNIST, batch 64,
  n_critic 5 (needs mnist/).

    python benchmarks/gan_speed.py --data-dir .data --device cuda --steps 500 --out $OUT/gan_speed.json

Prints training steps per second (one step = every phase: n_critic D steps and one G
step) for each case, eager and captured, and their ratio. No peer library is timed: none
of the GAN libraries in BENCHMARKS.md publishes an H200 figure to compare against.
"""

from __future__ import annotations

import argparse
import json

import torch
from timing import time_fit, write_record

import deepgen
from deepgen.training import TrainConfig, Trainer, resolve_device, seed_all

# name -> (model, dataset, model settings, batch size)
CASES: dict[str, tuple[str, str, dict, int]] = {
    "gan-grid25": ("gan", "grid25", {"pack": 4, "minibatch_std": True}, 512),
    "dcgan-stacked": ("dcgan", "stacked-mnist", {}, 64),
    "wgan-gp-mnist": ("wgan-gp", "mnist", {"network": "conv", "noise_dim": 100}, 64),
}


def steps_per_second(case: str, data_dir: str | None, device: torch.device, steps: int, warmup: int, graph: bool, together: int = 1) -> float:
    """Training steps per second (summed over ``together`` runs trained by ``fit_together``)
    after ``warmup`` steps (which include the capture)."""
    model_name, data, settings, batch = CASES[case]
    ds = deepgen.load_dataset(data, data_dir=data_dir)
    cfg = TrainConfig(epochs=100_000, batch_size=batch, device=str(device), progress=False, tensorboard=False, log_every=100, cuda_graph=graph)
    trainers = []
    for seed in range(together):
        seed_all(seed)
        model = deepgen.create_model(model_name, ds, **settings)
        trainers.append(Trainer(model, ds, cfg.replace(seed=seed), None))
    return together * steps / time_fit(trainers, warmup, steps, device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None, help="folder holding mnist/ (default: $DEEPGEN_DATA, then the user cache)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of: {', '.join(CASES)}")
    p.add_argument("--steps", type=int, default=500, help="timed training steps per measurement")
    p.add_argument("--warmup", type=int, default=30, help="untimed steps first (warm-up and capture)")
    p.add_argument("--together", type=int, default=0, help="also time K captured runs trained together in one process (fit_together), summed steps/s")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    cases = args.cases.split(",")
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        p.error(f"unknown case(s) {', '.join(unknown)}; accepted: {', '.join(CASES)}")
    device = resolve_device(args.device)
    if device.type != "cuda":
        p.error("gan_speed.py compares eager with CUDA-graph steps: it needs --device cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    rows = []
    for case in cases:
        eager = steps_per_second(case, args.data_dir, device, args.steps, args.warmup, graph=False)
        graph = steps_per_second(case, args.data_dir, device, args.steps, args.warmup, graph=True)
        rows.append({"case": case, "eager": eager, "cuda_graph": graph})
        if args.together > 1:
            rows[-1]["together"] = steps_per_second(case, args.data_dir, device, args.steps, args.warmup, graph=True, together=args.together)
        print(json.dumps(rows[-1]), flush=True)
    hw = torch.cuda.get_device_name(device)
    print(f"\ntraining steps/s on {hw}, torch {torch.__version__}, {args.steps} timed steps after {args.warmup}")
    print("| case | model | data | batch | eager | cuda_graph=true | speed-up |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        model_name, data, settings, batch = CASES[r["case"]]
        extra = " ".join(f"{k}={v}" for k, v in settings.items())
        print(f"| {r['case']} | {model_name} {extra} | {data} | {batch} | {r['eager']:,.1f} | {r['cuda_graph']:,.1f} | {r['cuda_graph'] / r['eager']:.2f}x |")
    if args.together > 1:
        print(f"\n{args.together} captured runs trained together in one process (fit_together), steps/s summed over the runs:")
        print("| case | one run | together, sum | together, per run | sum / one run |")
        print("| --- | --- | --- | --- | --- |")
        for r in rows:
            print(f"| {r['case']} | {r['cuda_graph']:,.1f} | {r['together']:,.1f} | {r['together'] / args.together:,.1f} | {r['together'] / r['cuda_graph']:.2f}x |")
    if args.out:
        write_record(args.out, rows, hw)


if __name__ == "__main__":
    main()

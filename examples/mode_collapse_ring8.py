"""Mode collapse, a simple example: a vanilla GAN collapses on ``ring8``, and one remedy
fixes it, with the same seeds.

    python examples/mode_collapse_ring8.py                    # 3 seeds, about 3 min on 2 CPU cores
    python examples/mode_collapse_ring8.py --seeds 0,1,2,3,4 --device cuda
    python examples/mode_collapse_ring8.py --remedy pack=4    # another remedy, same baseline

``ring8`` is 8 Gaussians on the unit circle with std 0.01 (the VEEGAN / PacGAN set). Both
runs are the registered ``gan`` with its defaults (non-saturating loss, 32-d noise, MLPs
of 128-128 units, Adam lr 2e-4, betas (0.5, 0.999), one D step per G step), batches of
128, 10,000 steps. The only difference is the remedy: by default the minibatch standard
deviation layer (``minibatch_std=true``, Karras et al. 2018), which lets D see how spread
out a batch is. The same runs from the command line::

    deepgen train gan --data ring8 --seed 0 --epochs 1000 --set max_steps=10000 \\
        --set progress=false --out runs/ring8-vanilla
    deepgen train gan --data ring8 --seed 0 --epochs 1000 --set max_steps=10000 \\
        --set minibatch_std=true --set progress=false --out runs/ring8-mbstd
    deepgen eval runs/ring8-vanilla --metrics modes
    deepgen eval runs/ring8-mbstd --metrics modes

The table gives, per seed and as the mean over seeds, the ``modes`` metric (VEEGAN /
PacGAN protocol, 2,500 samples): modes captured (of 8), % high-quality samples (within
3 std = 0.03 of a mode), the reverse KL of the HQ samples' mode histogram (NaN when no
sample is high quality), and one extra column that needs no threshold: the share of all
samples whose nearest mode is the most popular one (1/8 = 12.5% when the mass is spread
evenly, 100% when G has collapsed onto one mode). A collapsed vanilla GAN puts nearly all
of its samples next to one mode, and that mode moves as training goes on (the D/G chase
of Metz et al. 2017). The collapsed point often sits a little off the mode (0.1 to 0.3
away, more than 3 std), so the vanilla run can also score 0 modes and 0% HQ.

These are CPU figures for a quick look; GAN results vary from seed to seed. The same two
configurations trained longer on the GPU (about 80,000 steps, seeds 0-4, benchmarks/RESULTS.md,
``benchmarks/mode_collapse.py --arch deepgen --batch 128 --remedy minibatch_std=true``):
vanilla 6.6 +- 1.1 modes of 8, reverse KL 0.68; minibatch std 8/8 on every seed, 96.4 +- 0.7%
high quality, reverse KL 0.002.

Public API only: ``deepgen.load_dataset``, ``deepgen.create_model``, ``deepgen.Trainer``,
``deepgen.TrainConfig``, ``deepgen.seed_all``, ``deepgen.metrics.evaluate``.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import torch

import deepgen
from deepgen.metrics import evaluate


def parse_settings(items: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values parsed as bool, int, float, else kept as text."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep:
            raise SystemExit(f"--remedy takes key=value, got {item!r}")
        low = text.strip().lower()
        value: Any
        if low in ("true", "false"):
            value = low == "true"
        else:
            try:
                value = int(text)
            except ValueError:
                try:
                    value = float(text)
                except ValueError:
                    value = text
        out[key.strip()] = value
    return out


def top_mode_share(x: torch.Tensor, modes: torch.Tensor) -> float:
    """Percentage of the samples ``x`` (N, 2) whose nearest mode (of ``modes`` (M, 2)) is the commonest one."""
    nearest = torch.cdist(x.double(), modes.double().to(x.device)).argmin(dim=1)  # (N,)
    counts = torch.bincount(nearest, minlength=len(modes))
    return 100.0 * float(counts.max()) / len(x)


def run(
    ds: deepgen.Dataset, settings: dict[str, Any], seed: int, args: argparse.Namespace
) -> dict[str, float]:
    """Train ``gan`` with ``settings`` on one seed and score it."""
    deepgen.seed_all(seed)  # the weights; the trainer seeds the data order and the noise
    model = deepgen.create_model("gan", ds, **settings)
    config = deepgen.TrainConfig(
        epochs=1_000_000,  # the run ends at max_steps
        max_steps=args.steps,
        batch_size=args.batch_size,
        seed=seed,
        device=args.device,
        progress=False,
        tensorboard=False,
    )
    t0 = time.perf_counter()
    trainer = deepgen.Trainer(model, ds, config, run_dir=None)
    trainer.fit()
    seconds = time.perf_counter() - t0
    model = trainer.eval_model.eval()
    figures = evaluate(model, ds, ["modes"], batch_size=2500, seed=seed)
    with torch.no_grad():
        x = model.sample(
            2500,
            generator=torch.Generator(device=next(model.parameters()).device).manual_seed(seed),
        )
    share = top_mode_share(x.detach(), torch.as_tensor(ds.meta["modes"]))
    return {
        "modes": float(figures["modes"]),
        "hq": float(figures["hq_percent"]),
        "rkl": float(figures["reverse_kl"]),
        "top": share,
        "seconds": seconds,
    }


def fmt(v: float, digits: int) -> str:
    return "nan" if not math.isfinite(v) else f"{v:.{digits}f}"


def mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, auto")
    p.add_argument("--seeds", default="3", help="N (seeds 0..N-1) or a comma-separated list")
    p.add_argument("--steps", type=int, default=10_000, help="training steps per run")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-4, help="Adam lr of G and D (gan's default)")
    p.add_argument(
        "--remedy",
        nargs="+",
        default=["minibatch_std=true"],
        metavar="KEY=VALUE",
        help="gan settings of the remedy run, e.g. minibatch_std=true, pack=4, unrolled_steps=5 unrolled_lr=0.01",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1 is fastest for these small nets)",
    )
    args = p.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    seeds = (
        [int(s) for s in args.seeds.split(",") if s.strip()]
        if "," in args.seeds
        else list(range(int(args.seeds)))
    )

    ds = deepgen.load_dataset("ring8")
    base = {"lr": args.lr}
    remedy = parse_settings(args.remedy)
    label = " ".join(args.remedy)
    configs = [("vanilla gan", base), (f"gan + {label}", {**base, **remedy})]

    print(
        f"ring8, gan (non-saturating), lr {args.lr:g}, batch {args.batch_size}, {args.steps} steps, "
        f"device {args.device}, seeds {seeds}"
    )
    print(
        f"{'run':<34} {'seed':>5} {'modes':>6} {'% HQ':>7} {'rev KL':>7} {'top mode %':>11} {'train s':>8}"
    )
    results: dict[str, list[dict[str, float]]] = {}
    for name, settings in configs:
        results[name] = []
        for seed in seeds:
            r = run(ds, settings, seed, args)
            results[name].append(r)
            print(
                f"{name:<34} {seed:>5} {r['modes']:>6.0f} {fmt(r['hq'], 1):>7} {fmt(r['rkl'], 3):>7} "
                f"{fmt(r['top'], 1):>11} {r['seconds']:>8.1f}",
                flush=True,
            )
    print()
    print("| run | modes (of 8) | % HQ | reverse KL | top mode % | seeds |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, rs in results.items():
        rkls = [r["rkl"] for r in rs]
        n_nan = sum(not math.isfinite(v) for v in rkls)
        note = f" ({n_nan} NaN left out)" if n_nan else ""
        print(
            f"| {name} | {mean([r['modes'] for r in rs]):.1f} | {fmt(mean([r['hq'] for r in rs]), 1)} | "
            f"{fmt(mean(rkls), 3)}{note} | {fmt(mean([r['top'] for r in rs]), 1)} | {len(rs)} |"
        )


if __name__ == "__main__":
    main()

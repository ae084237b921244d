"""Mixture-density output heads beside the factorised heads: a VAE's test NLL with each head, same network, data, training and evaluation.

Issue 15: "its test NLL on binarized MNIST and Frey faces recorded beside the factorised
heads'". Each ``--heads`` entry (``name`` or ``name:K`` for K components) trains the same
MLP VAE (``--hidden``, ``--latent-dim``, tanh) on ``--dataset`` for ``--epochs`` with Adam
and a cosine schedule, then the test NLL is the k-sample importance-weighted bound (IWAE,
Burda et al. 2016) on the test images, in nats per image and bits per dimension (8-bit
data: the heads' probabilities of the 256 levels, or densities of the dequantized data
y = (k + u) / 256, BENCHMARKS.md's convention; deepgen's evaluator applies it).

The mixture-density heads (``mixture-*``) draw K mixture weights per example and make
the pixels of an example dependent given the code; the factorised heads (``bernoulli``,
``gaussian-learned``, ``logistic-mixture`` (per pixel)) do not.

    python benchmarks/vae_heads.py --data-dir ../shared/data --device cpu --dataset frey-faces \\
        --heads gaussian-learned,mixture-gaussian-learned:5,logistic-mixture:1,mixture-logistic:5 --epochs 300
    python benchmarks/vae_heads.py --data-dir ../shared/data --device cpu --dataset mnist-binarized \\
        --heads bernoulli,mixture-bernoulli:5 --epochs 20 --k 1000 --limit-test 2000

CPU smoke test (tests/test_benchmark_scripts.py): ``--tiny``.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from timing import common_args, write_record

import deepgen
from deepgen.bench import hardware
from deepgen.metrics import evaluate
from deepgen.training import TrainConfig, Trainer, resolve_device, seed_all


def head_settings(entry: str) -> dict:
    """``name`` or ``name:K`` -> the VAE settings of that head."""
    name, _, k = entry.partition(":")
    return {"likelihood": name, **({"components": int(k)} if k else {})}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="frey-faces")
    p.add_argument("--heads", default="gaussian-learned,mixture-gaussian-learned:5,logistic-mixture:1,mixture-logistic:5")
    p.add_argument("--hidden", default="200,200")
    p.add_argument("--latent-dim", type=int, default=20)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--k", type=int, default=1000, help="importance samples per test image")
    p.add_argument("--limit-test", type=int, default=0, help="the first N test images (0: all)")
    common_args(p)
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    ds = deepgen.load_dataset(args.dataset, data_dir=args.data_dir, max_train=300 if args.tiny else 0)
    hidden = (16,) if args.tiny else tuple(int(h) for h in args.hidden.split(","))
    epochs, k, limit = (2, 8, 50) if args.tiny else (args.epochs, args.k, args.limit_test)
    rows = []
    for entry in args.heads.split(","):
        seed_all(args.seed)
        model = deepgen.create_model("vae", ds, hidden=hidden, activation="tanh", latent_dim=args.latent_dim, lr=args.lr,
                                     iwae_k=k, **head_settings(entry))
        config = TrainConfig(epochs=epochs, batch_size=args.batch_size, seed=args.seed, device=str(device), schedule="cosine",
                             progress=False, tensorboard=False, log_every=10**6)
        t0 = time.perf_counter()
        trainer = Trainer(model, ds, config, run_dir=None)
        result = trainer.fit()
        train_s = time.perf_counter() - t0
        # The estimate in full float32 (no TF32), so it does not depend on the GPU's math mode.
        torch.backends.cuda.matmul.allow_tf32 = False
        figures = evaluate(trainer.eval_model, ds, ["elbo", "nll"], split="test", batch_size=max(1, 200_000 // k), limit=limit, seed=args.seed)
        rows.append({"dataset": args.dataset, "head": entry, "nll": figures["nll"], "nll_sem": figures["nll_sem"],
                     "nll_bpd": figures.get("nll_bpd"), "neg_elbo": -figures["elbo"], "test_images": figures["n"], "k": k,
                     "epochs": result.epochs, "steps": result.steps, "train_seconds": round(train_s, 1)})
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{args.dataset}: VAE {'-'.join(map(str, hidden))} tanh, {args.latent_dim} latent, {epochs} epochs, batch {args.batch_size}, "
          f"lr {args.lr:g} cosine; NLL = IWAE bound, k={k}, {rows[0]['test_images']} test images")
    # bits/dim is the figure that compares heads: a density head's nats are of the dequantized
    # data y in [0, 1], a discrete head's of the levels; bits/dim x D x ln 2 puts both in
    # nats of the levels (BENCHMARKS.md's convention).
    dim = math.prod(ds.spec.shape)
    print("| head | bits/dim | NLL, nats of the levels per image | the head's own nats (± s.e.) | -ELBO, own nats | train s |\n"
          "| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        bpd = r["nll_bpd"]
        if bpd is None:  # a head without a normalised density (no bits/dim)
            print(f"| {r['head']} | - | - | {r['nll']:.2f} ± {r['nll_sem']:.2f} | {r['neg_elbo']:.2f} | {r['train_seconds']} |")
            continue
        print(f"| {r['head']} | {bpd:.4f} | {bpd * dim * math.log(2):.2f} | {r['nll']:.2f} ± {r['nll_sem']:.2f} | {r['neg_elbo']:.2f} | {r['train_seconds']} |")
    if args.out:
        write_record(args.out, rows, hardware(device))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

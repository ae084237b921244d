"""Tabular and 2-D densities: MAF, NSF and RealNVP against scikit-learn's GaussianMixture, side by side.

Every model sees the same data: each table is split 60/20/20 (train / validation / test,
seeded), standardised with the training split's mean and std (deepgen's table reader);
scikit-learn's digits, whose values are integers 0..16, get uniform noise u ~ U[0, 1) first
(dequantization), as a density of integers is unbounded. The 2-D sets are deepgen's own
(``moons``, ``ring8``, ``grid25``, ``swissroll``), with their test split and a validation
split held out of training. Model selection uses the validation split only:
GaussianMixture's number of components (1, 2, 4, ..., 64; full covariances) and, for the
flows, the epoch with the best validation loss (early stopping). The figure is the mean
test log-likelihood per example, in nats (higher is better).

    python benchmarks/flow_tables.py --out flow_tables.json

CPU smoke test (tests/test_benchmark_scripts.py): ``--tiny``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import time

import numpy as np
import torch
from timing import BestWeights

import deepgen
from deepgen.data.dataset import Dataset
from deepgen.training import TrainConfig, Trainer, seed_all

TABLES = ("wine", "breast-cancer", "digits-64")
PLANES = ("moons", "ring8", "grid25", "swissroll")
FLOWS = {
    "maf": {"layers": 5, "hidden": (128, 128)},
    "nsf": {"layers": 4, "hidden": (128, 128), "bins": 8, "tail_bound": 5.0},
    "realnvp": {"layers": 8, "hidden": (128, 128)},
}
TINY = {"maf": {"layers": 2, "hidden": (8,)}, "nsf": {"layers": 2, "hidden": (8,)}, "realnvp": {"layers": 2, "hidden": (8,)}}


def table(name: str, seed: int) -> Dataset:
    """A scikit-learn table as a deepgen dataset: 20% test, 20% of the rest validation."""
    import sklearn.datasets as skd

    if name == "wine":
        x = skd.load_wine().data
    elif name == "breast-cancer":
        x = skd.load_breast_cancer().data
    elif name == "digits-64":
        x = skd.load_digits().data
        x = x + np.random.default_rng(seed).uniform(size=x.shape)  # dequantize the integer pixels
    else:
        raise ValueError(name)
    x = np.random.default_rng(seed + 1).permutation(x.astype(np.float32))
    n_val = int(round(0.2 * len(x)))
    return deepgen.load_dataset(x, test_fraction=0.2, seed=seed, validation=n_val)


def plane(name: str, seed: int, tiny: bool) -> Dataset:
    n = 2000 if tiny else 20000
    return deepgen.load_dataset(name, num_samples=n, seed=seed, validation=n // 10)


def gmm_row(ds: Dataset, seed: int, tiny: bool) -> dict:
    from sklearn.mixture import GaussianMixture

    tr, va, te = (ds.split(s).x.double().numpy() for s in ("train", "val", "test"))
    best = None
    for k in (1, 2, 4) if tiny else (1, 2, 4, 8, 16, 32, 64):
        if k > len(tr) // 2:
            break
        g = GaussianMixture(k, covariance_type="full", reg_covar=1e-4, random_state=seed, max_iter=500).fit(tr)
        v = g.score(va)  # mean log-likelihood per example
        if best is None or v > best[0]:
            best = (v, k, g)
    v, k, g = best
    return {"model": "gaussian-mixture", "components": k, "val_ll": v, "test_ll": float(g.score(te))}


def flow_row(name: str, ds: Dataset, settings: dict, args) -> dict:
    seed_all(args.seed)
    model = deepgen.create_model(name, ds, **settings)
    n = len(ds.train)
    batch = min(args.batch_size, max(16, n // 4))
    cfg = TrainConfig(
        epochs=args.max_epochs, batch_size=batch, seed=args.seed, device="cpu", progress=False, tensorboard=False,
        log_every=10**6, val_limit=10**6, early_stop=args.patience, grad_clip=5.0, weight_decay=args.weight_decay or None,
    )
    keeper = BestWeights()
    t0 = time.perf_counter()
    result = Trainer(model, ds, cfg, None, data_config=ds.config, callbacks=[keeper]).fit()
    seconds = time.perf_counter() - t0
    if keeper.state is not None:
        model.load_state_dict(keeper.state)
    model.eval()
    with torch.no_grad():
        test = ds.convert(ds.test.x)
        ll = model.log_prob(test).double()
    return {
        "model": name, "settings": settings, "val_ll": None if keeper.best is None else -keeper.best, "test_ll": float(ll.mean()),
        "test_ll_sem": float(ll.std() / math.sqrt(len(ll))), "best_epoch": keeper.epoch, "epochs": result.epochs, "seconds": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default=",".join(TABLES + PLANES))
    p.add_argument("--models", default=",".join(FLOWS))
    p.add_argument("--max-epochs", type=int, default=1000)
    p.add_argument("--patience", type=int, default=30, help="epochs without a better validation loss before stopping")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--hidden", default=None, help="every flow's hidden layers, e.g. 32,32 (default: each flow's own)")
    p.add_argument("--layers", type=int, default=0, help="every flow's layers (0: each flow's own)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="Adam's weight decay (L2) for the flows")
    p.add_argument("--tiny", action="store_true", help="tiny networks and data (CPU smoke test)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.tiny:
        args.max_epochs, args.patience = min(args.max_epochs, 3), 2
    rows = []
    for data in args.datasets.split(","):
        ds = table(data, args.seed) if data in TABLES else plane(data, args.seed, args.tiny)
        info = {"dataset": data, "dim": ds.spec.dim, "train": len(ds.train), "val": len(ds.val), "test": len(ds.test)}
        found = [gmm_row(ds, args.seed, args.tiny)]
        for name in args.models.split(","):
            settings = dict((TINY if args.tiny else FLOWS)[name])
            if args.hidden:
                settings["hidden"] = tuple(int(h) for h in args.hidden.split(","))
            if args.layers:
                settings["layers"] = args.layers
            found.append(flow_row(name, ds, settings, args))
        for r in found:
            rows.append({**info, **r})
            print(json.dumps(rows[-1]), flush=True)
    print("\n| dataset | D | train / val / test | " + " | ".join(["gaussian mixture", *args.models.split(",")]) + " |")
    print("| --- | --- | --- | " + " | ".join(["---"] * (1 + len(args.models.split(",")))) + " |")
    for data in args.datasets.split(","):
        these = [r for r in rows if r["dataset"] == data]
        best = max(r["test_ll"] for r in these)
        cells = []
        for r in these:
            cell = f"{r['test_ll']:.3f}" + (f" (k={r['components']})" if "components" in r else "")
            cells.append(f"**{cell}**" if r["test_ll"] == best else cell)
        r0 = these[0]
        print(f"| {data} | {r0['dim']} | {r0['train']} / {r0['val']} / {r0['test']} | " + " | ".join(cells) + " |")
    if args.out:
        record = {"rows": rows, "hardware": f"CPU ({platform.machine()}, {args.threads} threads)", "torch": torch.__version__,
                  "command": "python " + shlex.join(sys.argv)}
        with open(args.out, "w") as f:
            json.dump(record, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

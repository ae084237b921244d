"""Tabular and 2-D densities: MAF, NSF and RealNVP against scikit-learn's GaussianMixture, side by side.

Every model sees the same data: each table is split 60/20/20 (train / validation / test,
seeded), standardised with the training rows' mean and std (deepgen's table reader; the
validation rows are not part of the fit); scikit-learn's digits, whose values are integers
0..16, get uniform noise u ~ U[0, 1) first (dequantization), as a density of integers is
unbounded. The 2-D sets are deepgen's own (``moons``, ``ring8``, ``grid25``,
``swissroll``), with their test split and a validation split held out of training.

Model selection uses the validation split only, never the test split:

* GaussianMixture: its number of components (1, 2, 4, ..., 64), covariance type (full,
  tied, diag) and reg_covar (1e-6, scikit-learn's default, 1e-4, 1e-3, 1e-2: a floor on every
  variance, which must be able to go below ring8's 1e-4);
* the flows: the epoch with the best validation loss (early stopping), and with ``--grid``
  also their settings, from the small per-flow grid :data:`GRID` (each candidate trained,
  the best on validation tested; the row keeps every candidate's validation figure).

The figure is the mean test log-likelihood per example, in nats (higher is better), with
its standard error over the test examples. Each table's wall time is printed.

    python benchmarks/flow_tables.py --grid --datasets wine,breast-cancer,digits-64 --out tables.json
    python benchmarks/flow_tables.py --grid --datasets moons,ring8,grid25,swissroll --device cuda --max-seconds 25 --out planes.json

CPU smoke test (tests/test_benchmark_scripts.py): ``--tiny`` (with ``--grid``: two tiny candidates).
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
# The validation grid (--grid): per flow, (model settings, training settings) to try; the
# candidate with the best validation log-likelihood is tested (the others' validation
# figures are kept in the row). Tables (106 to 1,079 training rows): the remedies of the
# MAF and NSF papers against overfitting, batch norm before every transform, dropout 0.5
# in the conditioners, small networks, either many layers of one small hidden layer or one
# layer of two wider ones (RealNVP, whose couplings change half the features, gets twice
# the layers); lr 3e-3, batches of 64. They were picked from random searches on the
# validation splits of wine and breast-cancer (benchmarks/RESULTS.md). The 2-D sets (18,000
# training points) do not overfit: each flow's defaults, batches of 512, trained longer.
_SMALL = {"hidden": (32,), "layers": 5, "dropout": 0.5, "norm": "batchnorm"}
_WIDE = {"hidden": (128, 128), "layers": 1, "dropout": 0.5, "norm": "batchnorm"}
_TABLE_TRAIN = {"lr": 3e-3, "batch_size": 64}
GRID: dict[str, dict[str, list[tuple[dict, dict]]]] = {
    "tables": {
        "maf": [(_SMALL, _TABLE_TRAIN), (_WIDE, _TABLE_TRAIN)],
        "nsf": [(_SMALL, _TABLE_TRAIN), (_WIDE, _TABLE_TRAIN)],
        "realnvp": [({**_SMALL, "layers": 10}, _TABLE_TRAIN), ({**_WIDE, "layers": 2}, _TABLE_TRAIN)],
    },
    "planes": {name: [({}, {"batch_size": 512, "max_epochs": 400, "patience": 20})] for name in ("maf", "nsf", "realnvp")},
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
    """GaussianMixture with its number of components k (1, 2, 4, ..., 64, at most half the
    training rows), its covariance type (full, tied, diag) and its covariance
    regularisation reg_covar (1e-6, 1e-4, 1e-3, 1e-2) chosen on the validation split. The
    grid holds scikit-learn's default 1e-6: reg_covar is added to every variance, and ring8's
    modes have variance 1e-4 (std 0.01), so a floor of 1e-4 alone doubled them and cost the
    mixture 0.19 nats per point there (session 17)."""
    from sklearn.mixture import GaussianMixture

    t0 = time.perf_counter()
    tr, va, te = (ds.split(s).x.double().numpy() for s in ("train", "val", "test"))
    best = None
    ks = (1, 2, 4) if tiny else (1, 2, 4, 8, 16, 32, 64)
    for cov in ("full",) if tiny else ("full", "tied", "diag"):
        for reg in (1e-4,) if tiny else (1e-6, 1e-4, 1e-3, 1e-2):
            for k in ks:
                if k > len(tr) // 2:
                    continue
                g = GaussianMixture(k, covariance_type=cov, reg_covar=reg, random_state=seed, max_iter=500).fit(tr)
                v = g.score(va)  # mean log-likelihood per example
                if best is None or v > best[0]:
                    best = (v, k, cov, reg, g)
    v, k, cov, reg, g = best
    ll = g.score_samples(te)
    return {"model": "gaussian-mixture", "components": k, "covariance": cov, "reg_covar": reg, "val_ll": v,
            "test_ll": float(ll.mean()), "test_ll_sem": float(ll.std(ddof=1) / math.sqrt(len(ll))),
            "seconds": round(time.perf_counter() - t0, 1), "_ll": ll}


def train_settings(args, **over) -> dict:
    """The flows' training settings from the command line, with ``over`` replacing some."""
    out = {"lr": args.lr, "weight_decay": args.weight_decay, "batch_size": args.batch_size, "schedule": args.schedule,
           "max_epochs": args.max_epochs, "patience": args.patience, "max_seconds": args.max_seconds}
    return {**out, **over}


def fit_flow(name: str, ds: Dataset, settings: dict, train: dict, args) -> tuple[dict, torch.nn.Module]:
    """Train one flow with early stopping on the validation loss; (row without test figures,
    the model at its best validation epoch, in eval mode)."""
    seed_all(args.seed)
    model = deepgen.create_model(name, ds, **settings, lr=train["lr"])
    n = len(ds.train)
    batch = min(train["batch_size"], max(16, n // 4))
    cfg = TrainConfig(
        epochs=train["max_epochs"], batch_size=batch, seed=args.seed, device=args.device, progress=False, tensorboard=False,
        log_every=10**6, val_limit=10**6, early_stop=train["patience"], grad_clip=5.0, weight_decay=train["weight_decay"] or None,
        schedule=train["schedule"], max_seconds=train["max_seconds"],
    )
    keeper = BestWeights()
    t0 = time.perf_counter()
    result = Trainer(model, ds, cfg, None, data_config=ds.config, callbacks=[keeper]).fit()
    seconds = time.perf_counter() - t0
    if keeper.state is not None:
        model.load_state_dict(keeper.state)
    model.eval()
    row = {
        "model": name, "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}, "training": {**train, "batch_size": batch},
        "val_ll": None if keeper.best is None else -keeper.best, "best_epoch": keeper.epoch, "epochs": result.epochs,
        "seconds": round(seconds, 1),
    }
    return row, model


def test_figures(model: torch.nn.Module, ds: Dataset, device: str) -> dict:
    """Mean test log-likelihood per example (nats) and its standard error."""
    with torch.no_grad():
        test = ds.convert(ds.test.x).to(device)
        ll = torch.cat([model.log_prob(chunk).double().cpu() for chunk in test.split(8192)])
    return {"test_ll": float(ll.mean()), "test_ll_sem": float(ll.std() / math.sqrt(len(ll))), "_ll": ll.numpy()}


def paired(flow_ll: np.ndarray, mixture_ll: np.ndarray) -> dict:
    """The flow's test log-likelihood minus the mixture's, example by example: its mean and
    standard error. Both models score the same test rows, so this error is the one that says
    whether the flow beats the mixture (the rows' own spread, common to both, cancels)."""
    d = flow_ll - mixture_ll
    return {"vs_mixture": float(d.mean()), "vs_mixture_sem": float(d.std(ddof=1) / math.sqrt(len(d)))}


def flow_row(name: str, ds: Dataset, candidates: list[tuple[dict, dict]], args) -> dict:
    """Every candidate (model settings, training settings) trained on the training split;
    the one with the best validation log-likelihood is tested. The others' validation
    figures are kept in the row (``grid``); their test figures are never computed."""
    best, grid, t0 = None, [], time.perf_counter()
    for settings, train in candidates:
        row, model = fit_flow(name, ds, settings, train, args)
        grid.append({k: row[k] for k in ("settings", "training", "val_ll", "best_epoch", "epochs", "seconds")})
        if len(candidates) > 1:
            print(f"  {name} val {row['val_ll']:.3f} {json.dumps(row['settings'])} {json.dumps(row['training'])} "
                  f"best epoch {row['best_epoch']}/{row['epochs']} ({row['seconds']} s)", flush=True)
        if best is None or (row["val_ll"] is not None and row["val_ll"] > best[0]["val_ll"]):
            best = (row, model)
    row, model = best
    out = {**row, **test_figures(model, ds, args.device), "seconds": round(time.perf_counter() - t0, 1)}
    if len(candidates) > 1:
        out["grid"] = grid
    return out


def candidates(name: str, data: str, args) -> list[tuple[dict, dict]]:
    """The (model settings, training settings) a flow is trained with on ``data``: one
    (each flow's defaults, or the command line's overrides), or with ``--grid`` the
    validation grid (:data:`GRID`)."""
    base = dict((TINY if args.tiny else FLOWS)[name])
    over: dict = {}
    if args.hidden:
        over["hidden"] = tuple(int(h) for h in args.hidden.split(","))
    if args.layers:
        over["layers"] = args.layers
    if args.dropout:
        over["dropout"] = args.dropout
    if args.norm != "none":
        over["norm"] = args.norm
    if args.settings:
        import ast

        from deepgen.config import parse_assignments

        for k, v in parse_assignments(args.settings).items():  # numbers and tuples as Python reads them, the rest text
            try:
                over[k] = ast.literal_eval(v) if isinstance(v, str) else v
            except (ValueError, SyntaxError):
                over[k] = v
    if args.tiny and args.grid:  # the smoke test of the grid: two tiny candidates
        return [({**base, **over}, train_settings(args)), ({**base, "dropout": 0.5, "norm": "batchnorm", **over}, train_settings(args))]
    if not args.grid:
        return [({**base, **over}, train_settings(args))]
    grid = GRID["planes" if data in PLANES else "tables"][name]
    return [({**base, **settings, **over}, train_settings(args, **train)) for settings, train in grid]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default=",".join(TABLES + PLANES))
    p.add_argument("--models", default=",".join(FLOWS))
    p.add_argument("--grid", action="store_true", help="choose each flow's settings on the validation split from GRID")
    p.add_argument("--max-epochs", type=int, default=1000)
    p.add_argument("--patience", type=int, default=30, help="epochs without a better validation loss before stopping")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--schedule", default="constant", choices=("constant", "cosine", "linear"), help="lr factor over max-epochs")
    p.add_argument("--max-seconds", type=float, default=0.0, help="cap on each flow fit's training time (0: none); the best epoch so far is tested")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda (the flows; GaussianMixture runs on the CPU)")
    p.add_argument("--hidden", default=None, help="every flow's hidden layers, e.g. 32,32 (default: each flow's own)")
    p.add_argument("--layers", type=int, default=0, help="every flow's layers (0: each flow's own)")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout in every flow's conditioner networks")
    p.add_argument("--norm", default="none", choices=("none", "batchnorm", "actnorm"), help="a normalisation layer before every transform")
    p.add_argument("--weight-decay", type=float, default=0.0, help="Adam's weight decay (L2) for the flows")
    p.add_argument("--settings", nargs="*", default=[], help="every flow's model settings key=value (e.g. bins=16), over its own")
    p.add_argument("--tiny", action="store_true", help="tiny networks and data (CPU smoke test)")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.tiny:
        args.max_epochs, args.patience = min(args.max_epochs, 3), 2
    models = [m for m in args.models.split(",") if m]  # --models "": the mixture alone
    rows, t_all = [], time.perf_counter()
    for data in args.datasets.split(","):
        t0 = time.perf_counter()
        ds = table(data, args.seed) if data in TABLES else plane(data, args.seed, args.tiny)
        info = {"dataset": data, "dim": ds.spec.dim, "train": len(ds.train), "val": len(ds.val), "test": len(ds.test)}
        found = [gmm_row(ds, args.seed, args.tiny)]
        print(json.dumps({**info, **{k: v for k, v in found[-1].items() if k != "_ll"}}), flush=True)
        for name in models:
            found.append(flow_row(name, ds, candidates(name, data, args), args))
            found[-1].update(paired(found[-1]["_ll"], found[0]["_ll"]))
            print(json.dumps({**info, **{k: v for k, v in found[-1].items() if k not in ("grid", "_ll")}}), flush=True)
        rows += [{**info, **{k: v for k, v in r.items() if k != "_ll"}} for r in found]
        print(f"{data}: {time.perf_counter() - t0:.1f} s", flush=True)
    total = time.perf_counter() - t_all
    print(f"total: {total:.1f} s")
    print("\n| dataset | D | train / val / test | " + " | ".join(["gaussian mixture", *models]) + " |")
    print("| --- | --- | --- | " + " | ".join(["---"] * (1 + len(models))) + " |")
    for data in args.datasets.split(","):
        these = [r for r in rows if r["dataset"] == data]
        best = max(r["test_ll"] for r in these)
        cells = []
        for r in these:
            extra = (f" (k={r['components']}, {r['covariance']})" if "components" in r else
                     f" (epoch {r['best_epoch']}/{r['epochs']}; vs mixture {r['vs_mixture']:+.3f} ± {r['vs_mixture_sem']:.3f})")
            cell = f"{r['test_ll']:.2f} ± {r['test_ll_sem']:.2f}{extra}"
            cells.append(f"**{cell}**" if r["test_ll"] == best else cell)
        r0 = these[0]
        print(f"| {data} | {r0['dim']} | {r0['train']} / {r0['val']} / {r0['test']} | " + " | ".join(cells) + " |")
    if args.out:
        device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({platform.machine()}, {args.threads} threads)"
        record = {"rows": rows, "hardware": device, "torch": torch.__version__, "seconds": round(total, 1),
                  "command": "python " + shlex.join(sys.argv)}
        with open(args.out, "w") as f:
            json.dump(record, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

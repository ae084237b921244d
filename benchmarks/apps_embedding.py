"""Autoencoder embeddings as self-supervised pre-training: linear-probe and 5-NN accuracy from 2, 10 and 32-d codes against PCA, on MNIST and Fashion-MNIST.

For each dataset and code size d (``--dims``), each embedding is fitted on the training
images without labels (deepgen's ``AutoencoderEmbedding`` with each ``--models`` entry, and
scikit-learn's PCA), then:

* ``probe``: logistic regression on the codes of the training images, accuracy on the test
  images' codes;
* ``knn``: 5-nearest-neighbour accuracy, the same way;
* with ``--few 100``: both again with only 100 labelled training images per class (the
  embedding still fitted on every training image: the semi-supervised use).

The codes are standardised before both classifiers (a ``StandardScaler`` in the pipeline),
so no embedding gains from its scale. Issue 14's target: the best deepgen embedding beats
PCA by >= 5 points at 10 dimensions on both datasets.

    python benchmarks/apps_embedding.py --data-dir .data --device cuda --out $OUT/embedding.json

CPU smoke test (tests/test_benchmark_scripts.py): ``--tiny``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from timing import common_args, write_record

import deepgen
from deepgen.apps import AutoencoderEmbedding
from deepgen.bench import hardware
from deepgen.training import resolve_device

# name -> (registered model, settings): the embeddings compared with PCA.
MODELS = {
    "ae-conv": ("ae", {"network": "conv", "channels": (32, 64)}),
    "vae-conv": ("vae", {"network": "conv", "channels": (32, 64)}),
    "ae-mlp": ("ae", {"network": "mlp", "hidden": (512, 256)}),
    # Also tried: a wider convolutional AE, and a denoising AE (masking noise; Vincent et al.
    # 2010 found its codes better features than a plain AE's).
    "ae-conv-wide": ("ae", {"network": "conv", "channels": (64, 128)}),
    "dae-conv": ("denoising-ae", {"network": "conv", "channels": (32, 64)}),
}
TINY = {"ae-conv": ("ae", {"network": "conv", "channels": (8, 16)}), "vae-conv": ("vae", {"network": "conv", "channels": (8, 16)}),
        "ae-mlp": ("ae", {"network": "mlp", "hidden": (32,)}), "ae-conv-wide": ("ae", {"network": "conv", "channels": (16, 16)}),
        "dae-conv": ("denoising-ae", {"network": "conv", "channels": (8, 16)})}


def images(name: str, data_dir: str | None, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train (N, 28, 28) float32 in [0, 1], y_train, x_test, y_test) of a registered image dataset."""
    ds = deepgen.load_dataset(name, data_dir=data_dir, max_train=limit)
    def arr(split):
        x = ds.convert(split.x).float().reshape(len(split.x), 28, 28).numpy()
        return x, split.y.numpy()
    xtr, ytr = arr(ds.train)
    xte, yte = arr(ds.test if not limit else ds.test.subset(limit))
    return xtr, ytr, xte, yte


def few_per_class(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Indices of k examples of each class, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.choice(np.flatnonzero(y == c), size=min(k, int((y == c).sum())), replace=False) for c in np.unique(y)])


def scores(ztr: np.ndarray, ytr: np.ndarray, zte: np.ndarray, yte: np.ndarray) -> dict[str, float]:
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(ztr, ytr)
    knn = make_pipeline(StandardScaler(), KNeighborsClassifier(5)).fit(ztr, ytr)
    return {"probe": float(probe.score(zte, yte)), "knn": float(knn.score(zte, yte))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="mnist,fashion-mnist")
    p.add_argument("--dims", default="2,10,32")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--few", type=int, default=100, help="labels per class for the few-label rows (0: none)")
    common_args(p)
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    models = TINY if args.tiny else MODELS
    rows = []
    for name in args.datasets.split(","):
        xtr, ytr, xte, yte = images(name, args.data_dir, 300 if args.tiny else 0)
        few = few_per_class(ytr, args.few, args.seed) if args.few else None
        for d in (int(v) for v in args.dims.split(",")):
            embeddings = {"pca": None, **{m: models[m] for m in args.models.split(",")}}
            for label, spec in embeddings.items():
                t0 = time.perf_counter()
                if spec is None:
                    est = PCA(d, random_state=args.seed).fit(xtr.reshape(len(xtr), -1))
                    ztr, zte = est.transform(xtr.reshape(len(xtr), -1)), est.transform(xte.reshape(len(xte), -1))
                else:
                    model, settings = spec
                    est = AutoencoderEmbedding(model=model, settings=dict(settings), latent_dim=d, epochs=1 if args.tiny else args.epochs,
                                               batch_size=args.batch_size, lr=args.lr, device=str(device), random_state=args.seed).fit(xtr)
                    ztr, zte = est.transform(xtr), est.transform(xte)
                fit_s = time.perf_counter() - t0
                row = {"dataset": name, "dim": d, "embedding": label, **scores(ztr, ytr, zte, yte), "fit_seconds": round(fit_s, 1)}
                if few is not None:
                    few_scores = scores(ztr[few], ytr[few], zte, yte)
                    row.update({"probe_few": few_scores["probe"], "knn_few": few_scores["knn"], "few_per_class": args.few})
                rows.append(row)
                print(json.dumps(row), flush=True)
    print("\n| dataset | d | embedding | linear probe | 5-NN | probe, few labels | 5-NN, few labels |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['dataset']} | {r['dim']} | {r['embedding']} | {100 * r['probe']:.1f} | {100 * r['knn']:.1f} "
              f"| {100 * r.get('probe_few', float('nan')):.1f} | {100 * r.get('knn_few', float('nan')):.1f} |")
    if args.out:
        write_record(args.out, rows, hardware(device), epochs=args.epochs, lr=args.lr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

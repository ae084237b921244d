"""Embeddings for a downstream task: train an autoencoder on the 8x8 digits, encode the
train and test images, and fit a linear probe (logistic regression) on the codes.

    python examples/embed_and_probe.py                 # about 10 s on a laptop CPU
    python examples/embed_and_probe.py --latent-dim 32 --epochs 100

The autoencoder never sees the labels; the probe's accuracy says how much of the class
is linearly readable from the codes. Raw pixels are printed alongside for reference.
"""

from __future__ import annotations

import argparse

import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import deepgen
from deepgen.pictures import SamplePictures


def probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor) -> float:
    """Test accuracy of a standardised logistic regression fitted on (N, D) features."""
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(train_x.numpy(), train_y.numpy())
    return float(clf.score(test_x.numpy(), test_y.numpy()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--out", default="runs/example-ae")
    args = parser.parse_args()

    dataset = deepgen.load_dataset("digits")
    deepgen.seed_all(0)
    model = deepgen.create_model("ae", dataset, latent_dim=args.latent_dim, hidden=(256, 128))
    config = deepgen.TrainConfig(epochs=args.epochs, batch_size=64, device="cpu", tensorboard=False)
    result = deepgen.Trainer(model, dataset, config, run_dir=args.out, callbacks=[SamplePictures()]).fit()
    print(f"autoencoder: {result.steps} steps in {result.seconds:.1f} s")

    run = deepgen.load_run(args.out)
    train_x = dataset.convert(dataset.train.x)  # (N, 1, 8, 8) in [0, 1]
    test_x = dataset.convert(dataset.test.x)
    with torch.no_grad():
        train_codes = run.model.encode(train_x)  # (N, latent_dim)
        test_codes = run.model.encode(test_x)
    train_y, test_y = dataset.train.y, dataset.test.y

    code_acc = probe(train_codes, train_y, test_codes, test_y)
    pixel_acc = probe(train_x.flatten(1), train_y, test_x.flatten(1), test_y)
    print(f"linear probe on {args.latent_dim}-D codes: {code_acc:.3f} test accuracy")
    print(f"linear probe on 64 raw pixels:     {pixel_acc:.3f} test accuracy")


if __name__ == "__main__":
    main()

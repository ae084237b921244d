"""Train a VAE on the built-in 8x8 digits with the Python API, then use the saved run.

    python examples/train_vae.py                      # about 10 s on a laptop CPU
    python examples/train_vae.py --epochs 200 --latent-dim 2 --out runs/vae2

The same as ``deepgen train vae --data digits --epochs 50 --set latent_dim=8``; the run
folder (config, weights, metrics.jsonl, and samples.png from the ``SamplePictures``
callback, which ``deepgen train`` installs itself) can be used by every ``deepgen``
command, e.g. ``deepgen eval runs/example-vae --metrics elbo,nll``.
"""

from __future__ import annotations

import argparse

import torch

import deepgen
from deepgen.pictures import SamplePictures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--latent-dim", type=int, default=8)
    parser.add_argument("--out", default="runs/example-vae")
    args = parser.parse_args()

    dataset = deepgen.load_dataset("digits")  # 1x8x8 images in [0, 1], 10 classes
    print(f"{dataset.name}: {len(dataset.train)} train / {len(dataset.test)} test, spec {dataset.spec.shape}")

    deepgen.seed_all(0)  # the same seed gives the same initial weights
    model = deepgen.create_model("vae", dataset, latent_dim=args.latent_dim, hidden=(256, 128), lr=2e-3)
    config = deepgen.TrainConfig(epochs=args.epochs, batch_size=64, device="cpu", tensorboard=False)
    result = deepgen.Trainer(model, dataset, config, run_dir=args.out, callbacks=[SamplePictures()]).fit()
    losses = ", ".join(f"{k} {v:.3g}" for k, v in result.last.items())
    print(f"trained {result.steps} steps in {result.seconds:.1f} s; last: {losses}")

    # Load the run back, as any later script would, and use the model's capabilities.
    run = deepgen.load_run(args.out)
    test = dataset.convert(dataset.test.x)  # raw uint8 -> model space, (N, 1, 8, 8)
    with torch.no_grad():
        elbo = run.model.elbo(test).mean().item()  # nats per image, a lower bound on log p(x)
        codes = run.model.encode(test)  # (N, latent_dim) posterior means
        samples = run.model.sample(16, generator=torch.Generator().manual_seed(0), mean=True)
    print(f"test ELBO {elbo:.2f} nats per image; codes {tuple(codes.shape)}; samples {tuple(samples.shape)}")
    print(f"pictures: {run.path / 'samples.png'}")


if __name__ == "__main__":
    main()

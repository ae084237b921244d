"""Train a VAE on the built-in 8x8 digits with the Python API, then use the saved run.

    python examples/train_vae.py                      # about 10 s on a laptop CPU
    python examples/train_vae.py --epochs 200 --latent-dim 2 --out runs/vae2

It trains what ``deepgen train vae --data digits --epochs 50 --batch-size 64 --device cpu
--set latent_dim=8 --set hidden=256,128 --set lr=2e-3`` trains; the run folder (config,
weights, metrics.jsonl, and samples.png from the ``SamplePictures`` callback, which
``deepgen train`` installs itself) can be used by every ``deepgen`` command.

The test figures it prints are those of ``deepgen eval RUN --metrics elbo,nll --device
cpu``, to the digit, with the same names and units: -ELBO (an upper bound on -log p(x))
and nll in nats per image, and bits/dim. The loss printed after training is another
figure: the mean over the last training batches (other images, other noise draws).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

import deepgen
from deepgen.metrics import eval_figures, evaluate, format_logged, format_table
from deepgen.pictures import SamplePictures


def train(out: str, *, epochs: int = 50, latent_dim: int = 8, device: str = "cpu", pictures: bool = True) -> Any:
    """Train the VAE into run folder ``out``; print and return the trainer's result."""
    dataset = deepgen.load_dataset("digits")  # 1x8x8 images in [0, 1], 10 classes
    print(f"{dataset.name}: {len(dataset.train)} train / {len(dataset.test)} test, spec {dataset.spec.shape}")
    deepgen.seed_all(0)  # the same seed gives the same initial weights
    model = deepgen.create_model("vae", dataset, latent_dim=latent_dim, hidden=(256, 128), lr=2e-3)
    config = deepgen.TrainConfig(epochs=epochs, batch_size=64, device=device, tensorboard=False)
    callbacks = [SamplePictures()] if pictures else []
    result = deepgen.Trainer(model, dataset, config, run_dir=out, callbacks=callbacks).fit()
    val_examples = min(config.val_limit, len(dataset.test))
    print(f"trained {result.steps} steps in {result.seconds:.1f} s; last: {format_logged(result.last, val_examples=val_examples)}")
    return result


def held_out_figures(run_dir: str, *, device: str = "cpu") -> dict[str, Any]:
    """The run's -ELBO and NLL on the test split, as ``deepgen eval --metrics elbo,nll`` prints them.

    The evaluator's defaults are ``deepgen eval``'s (the whole test split, batches of 256,
    seed 0: the same dequantization and z draws), so the figures are the same numbers.
    Returns ``{printed label: value}`` (:func:`deepgen.metrics.eval_figures`).
    """
    run = deepgen.load_run(run_dir, device=device)
    figures = evaluate(run.model, run.load_dataset(), ["elbo", "nll"], progress=False)
    return eval_figures(figures)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--latent-dim", type=int, default=8)
    parser.add_argument("--out", default="runs/example-vae")
    args = parser.parse_args(argv)

    train(args.out, epochs=args.epochs, latent_dim=args.latent_dim)

    # Load the run back, as any later script would: its test figures, then its capabilities.
    print(f"test figures (as `deepgen eval {args.out} --metrics elbo,nll --device cpu` prints them):")
    print(format_table(held_out_figures(args.out)))
    run = deepgen.load_run(args.out)
    dataset = run.load_dataset()
    test = dataset.convert(dataset.test.x)  # raw levels -> model space, (N, 1, 8, 8)
    with torch.no_grad():
        codes = run.model.encode(test)  # (N, latent_dim) posterior means
        samples = run.model.sample(16, generator=torch.Generator().manual_seed(0), mean=True)
    print(f"codes {tuple(codes.shape)}; samples {tuple(samples.shape)}; pictures: {run.path / 'samples.png'}")


if __name__ == "__main__":
    main()
